"""The telemetry provider contract: what the server asks of a GPU source, and when.

The server builds one provider at start-up and calls it from a worker thread (never from the event
loop), once per sampling interval whatever the number of clients watching:

- ``devices()`` at start-up and whenever the inventory is re-synchronised into the ledger;
- ``note_held(uuids)`` before each ``sample()``, only where ``follows_ledger`` is set: the GPUs
  of this node that the ledger holds;
- ``sample()`` once per telemetry interval;
- ``close()`` once, when the server stops.

Implementations must be safe to call from one worker thread at a time; they need not be re-entrant.
"""

from __future__ import annotations

import abc
from collections.abc import Collection
from dataclasses import dataclass, field

__all__ = ["GpuDevice", "GpuSample", "ProcessUse", "TelemetryProvider"]


@dataclass(frozen=True, kw_only=True)
class GpuDevice:
    """One physical (or simulated) GPU as the inventory sees it."""

    uuid: str
    index: int
    model: str
    memory_total_bytes: int


@dataclass(frozen=True, kw_only=True)
class ProcessUse:
    """GPU memory one operating-system process holds on one GPU."""

    pid: int
    memory_used_bytes: int
    #: the process's owner (an operating-system user name) where it can be told; None where not
    #: (another PID namespace, no permission, the process ended)
    user: str | None = None
    #: False for a process that only draws (a display server): not work the ledger hands out
    compute: bool = True


@dataclass(frozen=True, kw_only=True)
class GpuSample:
    """Live readings of one GPU at one instant (``at``: seconds since the epoch)."""

    uuid: str
    at: float
    utilization_percent: float
    memory_used_bytes: int
    memory_total_bytes: int
    processes: tuple[ProcessUse, ...] = field(default=())


class TelemetryProvider(abc.ABC):
    """A source of GPU inventory and utilisation."""

    #: short name shown in the API (``nvml``, ``simulated``, ``none``)
    name: str = "abstract"
    #: True when the readings are not from real hardware; every API answer carries it
    simulated: bool = False
    #: True for a provider whose readings depend on what the ledger holds (a simulator: real
    #: hardware knows on its own); the server then calls ``note_held`` before each sample
    follows_ledger: bool = False

    @property
    def reason(self) -> str:
        """A sentence for people: why this provider was chosen, or why it reports nothing."""
        return ""

    @abc.abstractmethod
    def devices(self) -> list[GpuDevice]:
        """The GPUs of this node, ordered by index."""

    @abc.abstractmethod
    def sample(self) -> list[GpuSample]:
        """One reading per GPU of ``devices()``."""

    def note_held(self, uuids: Collection[str]) -> None:  # noqa: B027 - see follows_ledger
        """The UUIDs of the GPUs the ledger holds now (any node's; others' are ignored)."""

    def close(self) -> None:  # noqa: B027 - optional hook, most providers hold nothing
        """Release what the provider holds (NVML handles, files)."""
