"""The cluster telemetry contract: GPU inventory and utilisation of many nodes at once.

``TelemetryProvider`` (see ``base.py``) describes the GPUs of the one node a Jupyter server runs on.
A team gateway in cluster mode owns the ledger for every GPU node of a cluster, so it asks one
``ClusterTelemetry`` for all of them. The gateway builds one at start-up and calls it from a worker
thread (never from the event loop), once per interval whatever the number of clients watching:

- ``inventory()`` at start-up and whenever the inventory is re-synchronised into the ledger (the
  reconcile interval): for each node it answers, the caller runs
  ``ledger.sync_inventory(node, gpus)``. A node that was answered before and is missing now must be
  synchronised with an empty list by the caller, so that its GPUs are marked absent;
- ``sample()`` once per telemetry interval, after at least one ``inventory()``;
- ``holders()`` right after ``sample()``: which pod each GPU is used by, as the last ``sample()``
  saw it (no I/O of its own);
- ``close()`` once, when the gateway stops.

Failures are told apart from emptiness. ``inventory()`` raises ``ClusterTelemetryError`` when the
cluster cannot be read: an empty answer would mark every GPU of the team absent. ``sample()``
returns no reading for a GPU it cannot read (never a made-up 0 %, which would look idle to the
reclaimer) and puts the cause into ``reason``.

Implementations must be safe to call from one worker thread at a time; they need not be re-entrant.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass

from jupyter_dlinfra.telemetry.base import GpuDevice, GpuSample, TelemetryProvider

__all__ = ["ClusterProvider", "ClusterTelemetry", "ClusterTelemetryError", "PodRef"]


class ClusterTelemetryError(RuntimeError):
    """A cluster source (the Kubernetes API, Prometheus) could not be read just now.

    The message is a sentence meant for people: what was asked of whom (a URL, an HTTP status) and
    what to check, so that an operator reading the gateway's log or the API can act on it.
    """


@dataclass(frozen=True, kw_only=True)
class PodRef:
    """The Kubernetes pod (and container, where known) that uses a GPU."""

    namespace: str
    pod: str
    container: str | None = None

    def __str__(self) -> str:
        name = f"{self.namespace}/{self.pod}"
        return f"{name} ({self.container})" if self.container else name


class ClusterTelemetry(abc.ABC):
    """A source of the GPU inventory and utilisation of many nodes."""

    #: short name shown in the API (``kubernetes``)
    name: str = "abstract"

    @property
    def simulated(self) -> bool:
        """True when the readings are not from real hardware; every API answer carries it."""
        return False

    @property
    def reason(self) -> str:
        """A sentence for people: where the readings come from, or why some are missing."""
        return ""

    @abc.abstractmethod
    def inventory(self) -> dict[str, list[GpuDevice]]:
        """Node name -> its GPUs ordered by index; GPU UUIDs are unique across the cluster.

        Raises ``ClusterTelemetryError`` when the cluster cannot be read.
        """

    @abc.abstractmethod
    def sample(self) -> list[GpuSample]:
        """At most one reading per GPU of the last ``inventory()``, keyed by the same UUID."""

    def holders(self) -> dict[str, PodRef]:
        """GPU UUID -> the pod that uses it, as the last ``sample()`` saw it; {} when unknown."""
        return {}

    def outside_use(self) -> dict[str, tuple[int, tuple[str, ...]]] | None:
        """Node -> (GPUs that work not started by jupyter-dlinfra asks for there, what it is),
        for the nodes where there is some; None when this source cannot tell."""
        return None

    def close(self) -> None:  # noqa: B027 - optional hook, most sources hold nothing
        """Release what the source holds (HTTP connections, API clients)."""


class ClusterProvider(TelemetryProvider):
    """A cluster's telemetry where one node's provider is expected: the API's ``provider``
    (name, simulated, reason) and the readings. The server syncs the inventory node by node
    from the cluster itself, so ``devices()`` is empty here."""

    def __init__(self, cluster: ClusterTelemetry) -> None:
        self.cluster = cluster
        self.name = cluster.name

    @property
    def simulated(self) -> bool:  # type: ignore[override]
        return self.cluster.simulated

    @property
    def reason(self) -> str:
        return self.cluster.reason

    def devices(self) -> list[GpuDevice]:
        return []

    def sample(self) -> list[GpuSample]:
        return self.cluster.sample()
