"""The checkpointer contract: park a process's GPU state in host memory, and bring it back.

Parking rests on CUDA checkpointing (NVIDIA driver 570 or later): the driver locks the process's
CUDA calls, copies its GPU memory into host memory and releases every GPU resource, while the
process itself keeps running on the CPU; resuming brings the GPU state back at the same virtual
addresses, on the same GPU. A checkpointer acts on another process by its pid.

The caller asks ``refusal`` first, with what it measured (the CUDA processes of the kernel's
process tree and their GPU footprint, from NVML), and parks only when it answers None. ``park``
and ``resume`` block for as long as the driver works: call them from a worker thread.

States, as ``state`` names them: ``running`` (CUDA calls go through), ``locked`` (CUDA calls
block, GPU memory still on the GPU), ``checkpointed`` (parked: GPU memory in host memory),
``failed`` (the driver gave up during a checkpoint or restore; only ending the process helps) and
``none`` (the process has no CUDA context, or does not exist). Newer drivers also report
``checkpointing`` and ``restoring`` while a call is under way.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import psutil

__all__ = [
    "GIB",
    "HOST_MEMORY_MARGIN_BYTES",
    "HOST_MEMORY_MARGIN_FRACTION",
    "STATES",
    "CheckpointFailed",
    "Checkpointer",
    "ParkRefused",
    "Toggle",
    "format_bytes",
    "host_memory_needed",
    "host_memory_refusal",
    "process_tree_refusal",
    "system_available_memory",
]

GIB = 1 << 30
#: every state ``Checkpointer.state`` may answer (the last two only while a call is under way)
STATES = ("running", "locked", "checkpointed", "failed", "none", "checkpointing", "restoring")
# A parked process's GPU memory lands in pageable host memory that the driver allocates while it
# copies. The margin covers what the footprint NVML reports leaves out (the driver's own staging
# and bookkeeping during the copy, and the CUDA context's host-side state, which grows with the
# footprint: hence a fraction) and leaves the node, kernels and server included, a gibibyte to go
# on with (hence the fixed part): running out of host memory mid-checkpoint would bring the OOM
# killer to a process whose GPU state exists nowhere else.
HOST_MEMORY_MARGIN_FRACTION = 0.10
HOST_MEMORY_MARGIN_BYTES = GIB


class ParkRefused(Exception):
    """A process that cannot be parked; ``reason`` is a sentence a person can act on."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class CheckpointFailed(Exception):
    """A driver call of a park or resume failed.

    ``step`` is the call that failed (``lock``, ``checkpoint``, ``restore``, ``unlock``, ``state``
    or ``helper`` where the call could not be made at all), ``error`` the driver's word for it
    (``CUDA_ERROR_NOT_READY: ...``) and ``state`` the process's state afterwards, as the driver
    reports it, where known.
    """

    def __init__(
        self, pid: int, step: str, error: str, *, state: str | None = None, note: str = ""
    ) -> None:
        self.pid = pid
        self.step = step
        self.error = error
        self.state = state
        message = f"{step} of process {pid} failed: {error}"
        if note:
            message += f"; {note}"
        if state is not None:
            message += f" (its CUDA state is now {state})"
        super().__init__(message)

    @property
    def error_name(self) -> str:
        """``CUDA_ERROR_NOT_READY`` out of ``CUDA_ERROR_NOT_READY: ...``."""
        return self.error.split(":", 1)[0].strip()


@dataclass(frozen=True)
class Toggle:
    """What one park or resume took: wall seconds of the driver's work, and the bytes it moved."""

    seconds: float
    gpu_bytes: int


def format_bytes(count: int) -> str:
    """``41.2 GiB``, ``512 MiB``: sizes as the refusals say them."""
    if abs(count) >= GIB:
        return f"{count / GIB:.1f} GiB"
    return f"{count / (1 << 20):.0f} MiB"


def host_memory_needed(gpu_bytes: int) -> int:
    """Host memory that parking ``gpu_bytes`` of GPU memory asks to be available first."""
    return int(gpu_bytes * (1 + HOST_MEMORY_MARGIN_FRACTION)) + HOST_MEMORY_MARGIN_BYTES


def system_available_memory() -> int:
    """Host memory the kernel can hand out without swapping (``MemAvailable``)."""
    return int(psutil.virtual_memory().available)


def process_tree_refusal(pid: int, cuda_pids: Sequence[int]) -> str | None:
    """Why a kernel whose process tree has CUDA contexts outside ``pid`` cannot be parked.

    The driver checkpoints one process; a context in a child (a DataLoader worker, a
    multiprocessing pool) would go on holding its GPU memory, or be left running against a parked
    parent.
    """
    others = sorted({int(other) for other in cuda_pids if int(other) != pid})
    if not others:
        return None
    listed = ", ".join(str(other) for other in others)
    return (
        f"CUDA in child processes (pids {listed}) cannot be checkpointed: only the kernel's own "
        f"process (pid {pid}) can be parked. End those processes (for example DataLoader workers "
        "or multiprocessing pools that use the GPU) and try again."
    )


def host_memory_refusal(gpu_bytes: int, available_bytes: int) -> str | None:
    """Why ``gpu_bytes`` of GPU memory will not fit in the host memory available."""
    needed = host_memory_needed(gpu_bytes)
    if available_bytes > needed:
        return None
    return (
        f"host memory is short: parking {format_bytes(gpu_bytes)} of GPU memory needs "
        f"{format_bytes(needed)} available (a 10 % + 1 GiB margin included), and this node has "
        f"{format_bytes(available_bytes)}. Free host memory, or release the GPUs instead."
    )


class Checkpointer(abc.ABC):
    """Parks and resumes processes' GPU state; safe to call from several threads."""

    #: short name shown in the API (``cuda``, ``simulated``)
    name: str = "abstract"
    #: True when no GPU state really moves; every API answer should carry it
    simulated: bool = False

    def __init__(self, *, available_memory: Callable[[], int] | None = None) -> None:
        self._available_memory = available_memory or system_available_memory

    def refusal(self, pid: int, cuda_pids: Sequence[int], gpu_bytes: int) -> str | None:
        """Why ``pid`` cannot be parked now, as a sentence for people; None when it can.

        ``cuda_pids`` are the processes of the kernel's process tree that hold a CUDA context
        (as NVML lists them) and ``gpu_bytes`` their GPU footprint. Nothing is locked or changed:
        this is the check made before ``park``.
        """
        return (
            self._capability_refusal(pid)
            or process_tree_refusal(pid, cuda_pids)
            or host_memory_refusal(gpu_bytes, self._available_memory())
        )

    def check(self, pid: int, cuda_pids: Sequence[int], gpu_bytes: int) -> None:
        """``refusal`` as an exception: raises ParkRefused with the reason."""
        reason = self.refusal(pid, cuda_pids, gpu_bytes)
        if reason is not None:
            raise ParkRefused(reason)

    @abc.abstractmethod
    def _capability_refusal(self, pid: int) -> str | None:
        """What this node or this process lacks for checkpointing at all (driver, API)."""

    @abc.abstractmethod
    def park(self, pid: int, *, timeout_s: float, gpu_bytes: int | None = None) -> Toggle:
        """Lock ``pid``'s CUDA calls (waiting at most ``timeout_s`` for its GPU work to end),
        then checkpoint its GPU memory into host memory.

        ``gpu_bytes`` is the footprint the caller measured; None lets the checkpointer find it.
        Raises CheckpointFailed when the lock fails (the process runs on untouched) or the
        checkpoint fails (the process is unlocked again, so that it runs on, where the driver
        allows).
        """

    @abc.abstractmethod
    def resume(self, pid: int, *, timeout_s: float) -> Toggle:
        """Restore ``pid``'s GPU memory from host memory, then unlock its CUDA calls.

        Raises CheckpointFailed when either fails; the process is left as the driver reports it
        (``CheckpointFailed.state``).
        """

    @abc.abstractmethod
    def unlock(self, pid: int, *, timeout_s: float = 30.0) -> None:
        """Let a ``locked`` process make CUDA calls again: one left so by a park cut short
        between its lock and its checkpoint (a server that stopped), or by a failed unlock.

        A ``running`` process is left as it is; any other state raises CheckpointFailed.
        """

    @abc.abstractmethod
    def state(self, pid: int) -> str:
        """``pid``'s CUDA state: one of ``STATES``."""

    def forget(self, pid: int) -> None:  # noqa: B027 - a hook that most checkpointers leave empty
        """``pid`` ended: drop whatever is remembered of it."""
