"""Is a kernel's process still alive? Decided by pid and process start time, never by pid alone."""

from __future__ import annotations

import psutil

from jupyter_dlinfra.core.models import KernelRecord

__all__ = ["pid_alive", "process_alive", "process_started_at"]

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
