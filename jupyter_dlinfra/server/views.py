"""JSON shapes of the API (the OpenAPI document in ``api/openapi.yaml`` describes them)."""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime, timezone
from typing import Any

from jupyter_dlinfra.core.books.ledger_state import DEFAULT_DURATION
from jupyter_dlinfra.core.models import Allocation, Gpu, KernelRecord, OutsideUse
from jupyter_dlinfra.core.scheduling.explain import DEFAULT, HISTORY
from jupyter_dlinfra.telemetry import GpuSample, TelemetryProvider

__all__ = [
    "allocation_json",
    "cluster_fields",
    "cluster_json",
    "duration",
    "estimate_note",
    "gpu_json",
    "iso",
    "outside_by_gpu",
    "outside_ledger",
    "shown_gpus",
]


def iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return _iso(ts)


@functools.lru_cache(maxsize=1 << 16)
def _iso(ts: float) -> str:
    # the same allocations' times are shown again and again (sidebars, queue pages)
    return datetime.fromtimestamp(ts, tz=timezone.utc).isoformat().replace("+00:00", "Z")


def duration(seconds: float) -> str:
    """A span of time for people: "45 s", "12 min", "2.5 h"."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def estimate_note(basis: str | None) -> str | None:
    """What an estimated start rests on, in words that follow it ("~12 min, from ...")."""
    if basis == HISTORY:
        return "from recent holding times"
    if basis == DEFAULT:
        hours = DEFAULT_DURATION / 3600
        span = f"{hours:g} h" if hours.is_integer() else duration(DEFAULT_DURATION)
        return f"assuming the default holding time of {span} (no history yet)"
    return None


def _gpu_brief(uuid: str, gpus: Mapping[str, Gpu]) -> dict[str, Any]:
    gpu = gpus.get(uuid)
    if gpu is None:
        return {"uuid": uuid, "index": None, "model": None, "simulated": False}
    return {"uuid": uuid, "index": gpu.index, "model": gpu.model, "simulated": gpu.simulated}


def shown_gpus(allocations: Iterable[Allocation]) -> set[str]:
    """The UUIDs of the GPUs that :func:`allocation_json` describes for these allocations: the
    only GPU rows an answer about them needs (none for a request that waits)."""
    return {uuid for alloc in allocations for uuid in alloc.gpus}


def allocation_json(
    alloc: Allocation,
    gpus: Mapping[str, Gpu],
    samples: Mapping[str, GpuSample] | None = None,
    *,
    simulated: bool = False,
) -> dict[str, Any]:
    """``gpus`` needs only the GPUs of :func:`shown_gpus` (others are not looked at);
    ``simulated`` marks the answer even before any GPU is held (a queued request). The answer
    for the same allocation object (with, for a grant, the same GPU rows and ``samples``) is
    made once and shared: callers must not change it."""
    # what the view shows besides the allocation: its GPUs' rows and their latest samples,
    # none for one that holds no GPU. The same objects give the same view: the ledger hands
    # out the same allocation while nothing about it changes, GPU rows are kept until they
    # change, and a sampling replaces the whole mapping
    held = alloc.gpus
    parts = (alloc, simulated, samples if held else None, *(gpus.get(uuid) for uuid in held))
    kept = _VIEWS.get(alloc.id)
    if (
        kept is not None
        and len(kept[0]) == len(parts)
        and all(a is b for a, b in zip(kept[0], parts, strict=True))
    ):
        return kept[1]
    if len(_VIEWS) >= _VIEWS_KEPT:
        _VIEWS.clear()
    made = _allocation_json(alloc, gpus, samples, simulated=simulated)
    _VIEWS[alloc.id] = (parts, made)
    return made


#: allocation id -> (what its view was made of, the view): sidebars and queue pages show the
#: same requests and grants again and again (a grant's, between two samplings, unchanged)
_VIEWS: dict[int, tuple[tuple[object, ...], dict[str, Any]]] = {}
_VIEWS_KEPT = 50_000


def _allocation_json(
    alloc: Allocation,
    gpus: Mapping[str, Gpu],
    samples: Mapping[str, GpuSample] | None = None,
    *,
    simulated: bool = False,
) -> dict[str, Any]:
    held = [_gpu_brief(u, gpus) for u in alloc.gpus]
    if samples is not None:
        for entry in held:
            entry.update(_metrics(samples.get(entry["uuid"])))
    return {
        "id": alloc.id,
        "kernel_id": alloc.kernel_id,
        "user": alloc.user,
        "node": alloc.node,
        "count": alloc.count,
        "model": alloc.model,
        "state": alloc.state.value,
        "gpus": held,
        "cuda_visible_devices": ",".join(alloc.gpus),
        "created_at": iso(alloc.created_at),
        "granted_at": iso(alloc.granted_at),
        "ended_at": iso(alloc.ended_at),
        "end_reason": alloc.end_reason,
        "position": alloc.position,
        "waiting_reason": alloc.waiting_reason,
        "waiting_code": alloc.waiting_code,
        "estimated_start": iso(alloc.estimated_start),
        "estimate_basis": alloc.estimate_basis,
        "estimate_note": estimate_note(alloc.estimate_basis),
        "priority_class": alloc.priority_class,
        "kind": alloc.kind,
        "borrowed": alloc.borrowed,
        "preempted_for": alloc.preempted_for,
        "preempt_reason": alloc.preempt_reason,
        "placement": alloc.placement,
        "avoid": list(alloc.avoid),
        "park": park_json(alloc),
        "on_loan": alloc.on_loan,
        "simulated": simulated or any(e["simulated"] for e in held),
    }


def park_json(alloc: Allocation) -> dict[str, Any] | None:
    """A parked grant's state (its GPUs lent while its kernel's memory waits in host memory)."""
    if alloc.park_state is None or not alloc.state.active:
        return None  # an ended grant keeps its last park state in its row, as history
    return {
        "state": alloc.park_state,
        "since": iso(alloc.parked_at),
        "reason": alloc.park_reason,
        "bytes": alloc.park_bytes,
    }


def _metrics(sample: GpuSample | None) -> dict[str, Any]:
    if sample is None:
        return {"utilization_percent": None, "memory_used_bytes": None, "sampled_at": None}
    return {
        "utilization_percent": round(sample.utilization_percent, 1),
        "memory_used_bytes": sample.memory_used_bytes,
        "sampled_at": iso(sample.at),
    }


#: a GPU nobody holds that is this busy (percent) runs someone's work outside the ledger, even
#: where its processes cannot be listed (another PID namespace); the idle threshold's default
BUSY_PERCENT = 5.0


def outside_ledger(
    sample: GpuSample | None, pods: Sequence[str] | None = None
) -> dict[str, Any] | None:
    """What runs on a GPU that the ledger says is free (someone bypassing it), or that it keeps
    out for ``pods`` the cluster runs besides the work it admitted; None: nothing.

    A display server drawing on it does not count: only compute processes, or utilisation.
    """
    working = [p for p in sample.processes if p.compute] if sample is not None else []
    busy = sample is not None and sample.utilization_percent >= BUSY_PERCENT
    if not working and not busy and not pods:
        return None
    return {
        "processes": [
            {"pid": p.pid, "user": p.user, "memory_used_bytes": p.memory_used_bytes}
            for p in working
        ],
        "users": sorted({p.user for p in working if p.user}),
        "pods": list(pods or ()),
    }


def outside_by_gpu(use: Mapping[str, OutsideUse]) -> dict[str, tuple[str, ...]]:
    """GPU UUID -> the pods the ledger keeps it out for (see ``Ledger.outside``)."""
    return {uuid: u.pods for u in use.values() for uuid in u.taken}


def gpu_json(
    gpu: Gpu,
    holder: Allocation | None,
    kernels: Mapping[str, KernelRecord],
    sample: GpuSample | None,
    outside_pods: Sequence[str] | None = None,
    parked: Allocation | None = None,
) -> dict[str, Any]:
    """One GPU as the cluster view shows it (``sample``: None where this server does not
    measure the GPU's node; ``outside_pods``: the cluster's pods it is kept out for;
    ``parked``: the parked grant it returns to, lent to ``holder`` or free to lend)."""
    return {
        "uuid": gpu.uuid,
        "index": gpu.index,
        "model": gpu.model,
        "memory_total_bytes": gpu.memory_bytes,
        "simulated": gpu.simulated,
        "holder": _holder_json(holder, kernels),
        "parked_for": _holder_json(parked, kernels),
        **_metrics(sample),
        "outside_ledger": (
            outside_ledger(sample, outside_pods) if holder is None and parked is None else None
        ),
    }


def _holder_json(
    holder: Allocation | None, kernels: Mapping[str, KernelRecord]
) -> dict[str, Any] | None:
    if holder is None:
        return None
    kernel = kernels.get(holder.kernel_id)
    return {
        "allocation_id": holder.id,
        "kernel_id": holder.kernel_id,
        "user": holder.user,
        "kernel_name": kernel.kernel_name if kernel else None,
        "path": kernel.path if kernel else None,
        "since": iso(holder.granted_at),
    }


def cluster_fields(
    *,
    gpu_count: int,
    free_count: int,
    provider: TelemetryProvider,
    simulated: bool,
    queue_length: int,
) -> dict[str, Any]:
    """The cluster view's fields but its nodes (what a delta of the event stream repeats)."""
    return {
        "provider": {
            "name": provider.name,
            "simulated": provider.simulated,
            "reason": provider.reason,
        },
        "simulated": simulated,
        "gpu_count": gpu_count,
        "free_count": free_count,
        "queue_length": queue_length,
    }


def cluster_json(
    *,
    gpus: Sequence[Gpu],
    holders: Mapping[str, Allocation],
    kernels: Mapping[str, KernelRecord],
    samples: Mapping[str, GpuSample],
    provider: TelemetryProvider,
    local_node: str,
    queue_length: int,
    outside: Mapping[str, Sequence[str]] | None = None,
    parked: Mapping[str, Allocation] | None = None,
) -> dict[str, Any]:
    nodes: dict[str, list[dict[str, Any]]] = {}
    kept_out = outside or {}
    parked = parked or {}
    for gpu in gpus:
        sample = samples.get(gpu.uuid) if gpu.node == local_node else None
        entry = gpu_json(
            gpu,
            holders.get(gpu.uuid),
            kernels,
            sample,
            kept_out.get(gpu.uuid),
            parked.get(gpu.uuid),
        )
        nodes.setdefault(gpu.node, []).append(entry)
    return {
        **cluster_fields(
            gpu_count=len(gpus),
            # a parked grant's GPU is free only to the jobs that may borrow it
            free_count=sum(1 for g in gpus if g.uuid not in holders and g.uuid not in parked),
            provider=provider,
            simulated=provider.simulated or any(g.simulated for g in gpus),
            queue_length=queue_length,
        ),
        "nodes": [{"name": name, "gpus": entries} for name, entries in sorted(nodes.items())],
    }
