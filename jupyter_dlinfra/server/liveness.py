"""Is a kernel's process still alive? Decided by pid and process start time, never by pid alone."""

from __future__ import annotations

from collections.abc import Callable

import psutil

from jupyter_dlinfra.core.models import KernelRecord

__all__ = ["OwnerGrace", "pid_alive", "process_alive", "process_started_at"]

#: how far the recorded start time may drift from psutil's reading (clock rounding)
_START_TOLERANCE_S = 2.0


def process_started_at(pid: int) -> float | None:
    try:
        return float(psutil.Process(pid).create_time())
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return None


def process_alive(record: KernelRecord) -> bool:
    """True while the recorded process runs; a recycled pid has another start time."""
    if record.pid is None:
        return False
    return pid_alive(record.pid, record.pid_started_at)


def pid_alive(pid: int, started_at: float | None) -> bool:
    """True while process ``pid`` that started at ``started_at`` runs (None: any start)."""
    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return False
        started = proc.create_time()
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return False
    if started_at is None:
        return True
    return bool(abs(started - started_at) <= _START_TOLERANCE_S)


class OwnerGrace:
    """Another server's kernel found dead is left to that server to report for ``grace`` s.

    Its own server says why the kernel ended ("kernel shut down", "kernel restarted"); a
    reconcile that came between the process's exit and that report would record the end as a
    vanished kernel, and the user would read the wrong reason. A server that crashed never
    reports: its kernels are released once the grace has run out."""

    def __init__(self, grace: float, now: Callable[[], float]) -> None:
        self.grace = grace
        self._now = now
        self._since: dict[str, float] = {}
        self._seen: set[str] = set()

    def over(self, kernel_id: str) -> bool:
        """Whether ``kernel_id``, found dead now, has been dead for the whole grace."""
        now = self._now()
        self._seen.add(kernel_id)
        return now - self._since.setdefault(kernel_id, now) >= self.grace

    def end_pass(self) -> None:
        """Forget the kernels the pass that ends did not find dead (released, or reported)."""
        self._since = {k: t for k, t in self._since.items() if k in self._seen}
        self._seen = set()
