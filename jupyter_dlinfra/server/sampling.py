"""This server's view of the GPUs: their inventory in the ledger, and the latest sample.

A personal server reads its own node's GPUs; a gateway on Kubernetes reads the whole cluster
(its inventory from the nodes, utilisation from DCGM). Everything here blocks (NVML, the cluster
API, the ledger): the service runs it on its pool.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from jupyter_dlinfra.core.books.ledger import Ledger
from jupyter_dlinfra.core.models import Gpu
from jupyter_dlinfra.telemetry import GpuDevice, GpuSample, TelemetryProvider
from jupyter_dlinfra.telemetry.cluster import ClusterTelemetry

__all__ = ["Sampler"]


class Sampler:
    def __init__(
        self,
        *,
        ledger: Ledger,
        provider: TelemetryProvider,
        cluster: ClusterTelemetry | None,
        node: str,
        log: logging.Logger,
    ) -> None:
        """``cluster``: a gateway's cluster-wide inventory and utilisation (Kubernetes); then
        ``provider`` is the cluster's too, and this node's own GPUs are not read."""
        self.ledger = ledger
        self.provider = provider
        self.cluster = cluster
        self.node = node
        self.log = log
        self.samples: dict[str, GpuSample] = {}
        #: how many times sample() ran: once per interval, whatever the clients
        self.sampling_calls = 0
        self._cluster_nodes: set[str] = set()

    def sync_inventory(self) -> None:
        if self.cluster is None:
            self._sync_node(self.node, self.provider.devices(), self.provider.simulated)
            return
        # a gateway on Kubernetes: every GPU node of the cluster; a node gone from it (or
        # cordoned) has its GPUs marked absent
        inventory = self.cluster.inventory()
        for gone in self._cluster_nodes - set(inventory):
            self.ledger.sync_inventory(gone, [])
        self._cluster_nodes = set(inventory)
        for node, found in inventory.items():
            self._sync_node(node, found, self.cluster.simulated)
        # GPUs that pods we did not create use there are not the ledger's to admit work on
        use = self.cluster.outside_use()
        if use is not None:
            self.ledger.sync_outside({n: u for n, u in use.items() if n in inventory})

    def _sync_node(self, node: str, devices: Sequence[GpuDevice], simulated: bool) -> None:
        gpus = [
            Gpu(
                uuid=d.uuid,
                node=node,
                index=d.index,
                model=d.model,
                memory_bytes=d.memory_total_bytes,
                simulated=simulated,
            )
            for d in devices
        ]
        self.ledger.sync_inventory(node, gpus)

    def sample(self) -> None:
        # only the sampling loop (or start-up) runs this, one call at a time
        self.sampling_calls += 1
        if self.cluster is None and self.provider.follows_ledger:
            # a simulator's GPUs work while someone holds them and idle otherwise; a ledger
            # that does not answer now leaves it with the holders it last heard of
            try:
                self.provider.note_held(self.ledger.held_on(self.node))
            except Exception:
                self.log.debug("dlinfra: no holders for the simulated GPUs", exc_info=True)
        source = self.cluster if self.cluster is not None else self.provider
        self.samples = {s.uuid: s for s in source.sample()}

    def close_provider(self) -> None:
        self.provider.close()

    def close_cluster(self) -> None:
        if self.cluster is not None:
            self.cluster.close()
