"""Is a kernel's process still alive? Decided by pid and process start time, never by pid alone."""

from __future__ import annotations

import psutil

from ..core import KernelRecord

__all__ = ["process_alive", "process_started_at"]

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
    try:
        proc = psutil.Process(record.pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return False
        started = proc.create_time()
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return False
    if record.pid_started_at is None:
        return True
    return bool(abs(started - record.pid_started_at) <= _START_TOLERANCE_S)
