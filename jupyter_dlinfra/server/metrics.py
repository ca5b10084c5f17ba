"""Prometheus metrics for ``GET /dlinfra/metrics``, read from the service at scrape time.

Each server gets its own :class:`~prometheus_client.CollectorRegistry` (see :func:`registry_for`),
never the library's global one: two servers in one process (tests) must not share series. The
collector holds no state of its own; it reads the event stream's latest snapshot, which the
handler refreshes first when the ledger or telemetry changed since.

Series (all gauges unless said otherwise):

- ``dlinfra_gpu_utilization_percent``, ``dlinfra_gpu_memory_used_bytes`` per GPU of this node
  (labels ``uuid, index, node, model, simulated``); absent until telemetry sampled the GPU;
- ``dlinfra_gpu_memory_total_bytes`` per GPU of every node of the ledger;
- ``dlinfra_gpu_allocated`` per GPU, 1 when held (the same labels plus ``user``, empty when free);
- ``dlinfra_allocated_gpus{user}``: GPUs each user holds, users holding none are left out;
- ``dlinfra_queue_length``: requests waiting, every node;
- ``dlinfra_queue_wait_seconds{allocation_id, user, node}``: how long each waiting request has
  waited so far, one series per request of the first page (the event stream's, 50 requests in the
  order of service): the requests next in line show their waits directly, which a summary would
  hide, and the series stay bounded when thousands wait;
- ``dlinfra_grant_wait_seconds`` (histogram): waits of the requests granted since this server
  started, immediate grants included (as 0 s), from the ledger's ``granted`` events of every
  server sharing the ledger;
- ``dlinfra_idle_kernels{state}``: this ledger's kernels that hold GPUs, by idle state (active,
  idle, warned, reclaimed, exempt), as judged by the servers sharing the ledger;
- ``dlinfra_idle_events_total{kind, action}`` (counter): idle warnings, keeps and reclaims seen
  since this server started (``action``: the reclaim action; empty for keeps);
- ``dlinfra_telemetry_samples_total`` (counter): telemetry samples taken by this server;
- ``dlinfra_event_snapshots_total`` (counter), ``dlinfra_event_subscribers``: the event stream.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator

from prometheus_client import CollectorRegistry
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from jupyter_dlinfra.server.events import Snapshot
from jupyter_dlinfra.server.service import GpuService

__all__ = ["DLInfraCollector", "registry_for"]

_GPU_LABELS = ["uuid", "index", "node", "model", "simulated"]


class DLInfraCollector(Collector):
    def __init__(self, service: GpuService) -> None:
        self._service = service

    def collect(self) -> Iterator[Metric]:
        service = self._service
        broadcaster = service.events
        snapshot = broadcaster.latest
        if snapshot is not None:
            yield from self._ledger_metrics(snapshot)
        buckets, total = broadcaster.grant_waits.read()
        hist = HistogramMetricFamily(
            "dlinfra_grant_wait_seconds",
            "Seconds granted GPU requests waited in the queue (since this server started).",
        )
        hist.add_metric([], buckets=buckets, sum_value=total)
        yield hist
        idle_events = CounterMetricFamily(
            "dlinfra_idle_events",
            "Idle warnings, keeps and reclaims seen since this server started.",
            labels=["kind", "action"],
        )
        for (kind, action), count in sorted(broadcaster.idle_events.items()):
            idle_events.add_metric([kind, action], count)
        yield idle_events
        yield CounterMetricFamily(
            "dlinfra_telemetry_samples",
            "GPU telemetry samples taken by this server (one per interval, whatever the clients).",
            value=service.sampling_calls,
        )
        yield CounterMetricFamily(
            "dlinfra_event_snapshots",
            "Snapshots built for the event stream (one per change, whatever the subscribers).",
            value=broadcaster.snapshots_built,
        )
        yield GaugeMetricFamily(
            "dlinfra_event_subscribers",
            "Clients connected to the event stream.",
            value=broadcaster.subscribers,
        )

    def _ledger_metrics(self, snapshot: Snapshot) -> Iterator[Metric]:
        util = GaugeMetricFamily(
            "dlinfra_gpu_utilization_percent",
            "GPU utilisation at the latest telemetry sample.",
            labels=_GPU_LABELS,
        )
        used = GaugeMetricFamily(
            "dlinfra_gpu_memory_used_bytes",
            "GPU memory in use at the latest telemetry sample.",
            labels=_GPU_LABELS,
        )
        total = GaugeMetricFamily(
            "dlinfra_gpu_memory_total_bytes", "GPU memory size.", labels=_GPU_LABELS
        )
        allocated = GaugeMetricFamily(
            "dlinfra_gpu_allocated",
            "1 when the ledger has granted the GPU to a kernel, else 0; user: the holder.",
            labels=[*_GPU_LABELS, "user"],
        )
        local = self._service.settings.node
        for gpu in snapshot.gpus:
            labels = [
                gpu.uuid,
                str(gpu.index),
                gpu.node,
                gpu.model,
                "true" if gpu.simulated else "false",
            ]
            sample = snapshot.samples.get(gpu.uuid) if gpu.node == local else None
            if sample is not None:
                util.add_metric(labels, sample.utilization_percent)
                used.add_metric(labels, sample.memory_used_bytes)
            total.add_metric(labels, gpu.memory_bytes)
            holder = snapshot.holders.get(gpu.uuid)
            allocated.add_metric(
                [*labels, holder.user if holder else ""], 1.0 if holder is not None else 0.0
            )
        yield from (util, used, total, allocated)

        per_user = GaugeMetricFamily(
            "dlinfra_allocated_gpus", "GPUs held by each user.", labels=["user"]
        )
        for user, count in sorted(Counter(a.user for a in snapshot.holders.values()).items()):
            per_user.add_metric([user], count)
        yield per_user

        # the count of all that wait: the snapshot lists only the first page of them
        yield GaugeMetricFamily(
            "dlinfra_queue_length",
            "GPU requests waiting in the queue.",
            value=snapshot.queue_length,
        )
        waits = GaugeMetricFamily(
            "dlinfra_queue_wait_seconds",
            f"Seconds each waiting request has waited so far: the first "
            f"{self._service.events.queue_page} in the order of service "
            "(dlinfra_queue_length counts them all).",
            labels=["allocation_id", "user", "node"],
        )
        now = self._service.ledger.clock.now()
        for alloc in snapshot.queue:
            waits.add_metric(
                [str(alloc.id), alloc.user, alloc.node], max(0.0, now - alloc.created_at)
            )
        yield waits

        idle = GaugeMetricFamily(
            "dlinfra_idle_kernels",
            "Kernels holding GPUs, by idle state (active, idle, warned, reclaimed, exempt).",
            labels=["state"],
        )
        for state, count in sorted(Counter(snapshot.idle.values()).items()):
            idle.add_metric([state], count)
        yield idle


def registry_for(service: GpuService) -> CollectorRegistry:
    """A registry of one server's metrics, to be kept by its app (not the global one)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(DLInfraCollector(service))
    return registry
