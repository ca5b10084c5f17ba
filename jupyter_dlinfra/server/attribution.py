"""Which kernel uses what: GPU utilisation, GPU memory and CPU per kernel, through process trees.

A kernel's GPUs are those the ledger granted it plus any GPU on which a process of its tree
(the kernel and all its descendants, such as data-loader workers) holds memory. A held GPU is
the kernel's alone, so the device's utilisation is the kernel's; memory is the sum of what the
tree's processes hold, or the device's whole use when the provider cannot tell processes apart.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import psutil

from jupyter_dlinfra.core.models import Allocation, KernelRecord
from jupyter_dlinfra.telemetry import GpuSample

__all__ = ["Attributor", "KernelUsage"]


@dataclass(frozen=True, kw_only=True)
class KernelUsage:
    kernel_id: str
    user: str
    path: str | None
    at: float
    allocation_id: int | None
    #: the GPUs the ledger granted the kernel
    held: tuple[str, ...]
    #: utilisation (%) of each GPU the kernel uses, held or not
    utilization: Mapping[str, float] = field(default_factory=dict)
    #: GPU memory (bytes) the kernel's processes use, per GPU
    memory_used: Mapping[str, int] = field(default_factory=dict)
    memory_total: Mapping[str, int] = field(default_factory=dict)
    #: CPU of the whole process tree, % of one core; None until two readings exist
    cpu_percent: float | None = None
    processes: int = 0
    executing: bool | None = None

    @property
    def held_util_max(self) -> float | None:
        values = [self.utilization[u] for u in self.held if u in self.utilization]
        return max(values) if values else None

    @property
    def gpu_util_mean(self) -> float:
        values = [self.utilization[u] for u in self.held if u in self.utilization]
        return sum(values) / len(values) if values else 0.0

    @property
    def memory_share(self) -> float:
        total = sum(self.memory_total.get(u, 0) for u in self.held)
        used = sum(self.memory_used.get(u, 0) for u in self.held)
        return used / total if total else 0.0


class Attributor:
    """Keeps psutil handles between samples, so CPU use is measured over each interval."""

    def __init__(self) -> None:
        self._procs: dict[int, psutil.Process] = {}

    def tree(self, pid: int) -> list[psutil.Process]:
        """The process and its descendants, reusing handles so cpu_percent has a baseline."""
        try:
            root = self._handle(pid)
            children = root.children(recursive=True)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            return []
        return [root, *(self._handle(c.pid, c) for c in children)]

    def _handle(self, pid: int, proc: psutil.Process | None = None) -> psutil.Process:
        cached = self._procs.get(pid)
        if cached is not None and cached.is_running():
            return cached
        fresh = proc or psutil.Process(pid)
        # the first call only sets the baseline of the interval measure
        with contextlib.suppress(psutil.Error):
            fresh.cpu_percent(None)
        self._procs[pid] = fresh
        return fresh

    def usage(
        self,
        kernels: Iterable[KernelRecord],
        granted: Mapping[str, Allocation],
        samples: Mapping[str, GpuSample],
        *,
        executing: Mapping[str, bool | None] | None = None,
    ) -> list[KernelUsage]:
        """One reading per kernel of ``kernels`` (blocking: reads /proc)."""
        seen: set[int] = set()
        found = []
        for kernel in kernels:
            alloc = granted.get(kernel.kernel_id)
            held = alloc.gpus if alloc is not None else ()
            procs = self.tree(kernel.pid) if kernel.pid else []
            pids = {p.pid for p in procs}
            seen |= pids
            cpu = 0.0
            measured = False
            for proc in procs:
                with contextlib.suppress(psutil.Error):
                    cpu += proc.cpu_percent(None)
                    measured = True
            utilization: dict[str, float] = {}
            memory: dict[str, int] = {}
            total: dict[str, int] = {}
            for uuid, sample in samples.items():
                mine = [p for p in sample.processes if p.pid in pids]
                if uuid not in held and not mine:
                    continue
                utilization[uuid] = sample.utilization_percent
                total[uuid] = sample.memory_total_bytes
                if mine:
                    memory[uuid] = sum(p.memory_used_bytes for p in mine)
                elif uuid in held and not sample.processes:
                    # no per-process readings (simulated, or not allowed): the device is ours
                    memory[uuid] = sample.memory_used_bytes
                else:
                    memory[uuid] = 0
            at = max((s.at for s in samples.values()), default=0.0)
            found.append(
                KernelUsage(
                    kernel_id=kernel.kernel_id,
                    user=kernel.user,
                    path=kernel.path,
                    at=at,
                    allocation_id=alloc.id if alloc is not None else None,
                    held=tuple(held),
                    utilization=utilization,
                    memory_used=memory,
                    memory_total=total,
                    cpu_percent=cpu if measured else None,
                    processes=len(procs),
                    executing=(executing or {}).get(kernel.kernel_id),
                )
            )
        for pid in [p for p in self._procs if p not in seen]:
            del self._procs[pid]
        return found
