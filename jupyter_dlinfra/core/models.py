"""The ledger's value objects: frozen, keyword-only, free of any storage or web concern."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

__all__ = [
    "POOL",
    "Allocation",
    "AllocationState",
    "Gpu",
    "KernelCaller",
    "KernelRecord",
    "LedgerEvent",
    "OutsideUse",
]

#: the placement of a request that this ledger's scheduler grants on any node with room: work
#: that a cluster runs wherever it is told (a Kubernetes Job or pod admitted by the ledger), not
#: a kernel already running on a node
POOL = "pool"


@dataclass(frozen=True, kw_only=True)
class Gpu:
    uuid: str
    node: str
    index: int
    model: str
    memory_bytes: int
    simulated: bool = False
    #: False once the telemetry provider stops reporting it; it is then never granted again
    present: bool = True


@dataclass(frozen=True, kw_only=True)
class OutsideUse:
    """GPUs of a node used by work the ledger did not admit (a cluster's pods that are not
    ours): never granted while that lasts."""

    node: str
    #: how many GPUs that work asks for on the node
    gpus: int
    #: what uses them, as the cluster names it ("namespace/pod")
    pods: tuple[str, ...] = ()
    #: the node's GPUs the ledger keeps out for it (fewer than ``gpus`` while ours hold the rest)
    taken: tuple[str, ...] = ()


class AllocationState(str, enum.Enum):
    QUEUED = "queued"
    GRANTED = "granted"
    RELEASED = "released"
    CANCELLED = "cancelled"

    @property
    def active(self) -> bool:
        return self in (AllocationState.QUEUED, AllocationState.GRANTED)


@dataclass(frozen=True, kw_only=True)
class Allocation:
    """One request for GPUs by one kernel, through its whole life: queued, granted, then ended."""

    id: int
    kernel_id: str
    user: str
    node: str
    count: int
    model: str | None
    state: AllocationState
    gpus: tuple[str, ...] = ()
    created_at: float
    granted_at: float | None = None
    ended_at: float | None = None
    end_reason: str | None = None
    #: 1-based place among the requests waiting on the same node; None unless queued
    position: int | None = None
    #: why a queued request waits, in words; None unless queued
    waiting_reason: str | None = None
    #: the reason as a code: quota, priority, fair_share, order, no_free_gpu, preempting, starting
    waiting_code: str | None = None
    #: when a queued request may start (an estimate from typical holding times); None unknown
    estimated_start: float | None = None
    #: what that estimate rests on: "history" (recent holding times) or "default" (the default
    #: holding time, for a class without history); None without an estimate
    estimate_basis: str | None = None
    #: the scheduling policy's class (None on rows from before classes: the policy's default)
    priority_class: str | None = None
    #: "kernel" or "job": only jobs are ever preempted
    kind: str = "kernel"
    #: granted beyond a quota (borrowed): taken back first when others wait
    borrowed: bool = False
    #: set once preempted: the request its GPUs are being freed for, and why
    preempted_for: int | None = None
    preempt_reason: str | None = None
    #: who places it: "ledger" (this ledger's scheduler, on its kernel's node), "pool" (this
    #: ledger's scheduler, on any node: ``node`` is its kernel's until granted, then the node of
    #: its GPUs; see POOL) or "cluster" (Kubernetes' scheduler, which the ledger then mirrors:
    #: queued with the cluster's reason until it is placed)
    placement: str = "ledger"
    #: nodes a request of the pool is not granted on: where the cluster could not start it
    #: after an earlier grant (see ``Ledger.hand_back``)
    avoid: tuple[str, ...] = ()
    #: a request of the pool in whole nodes (a distributed job): its GPUs per node, on
    #: ``count // per_node`` different nodes (``node`` is the first of them once granted);
    #: None: one node
    per_node: int | None = None
    #: a kernel's grant whose GPU memory is checkpointed to the host (see core/books/parking.py):
    #: "parking", "parked", "resuming", "restoring"; None when not parked
    park_state: str | None = None
    parked_at: float | None = None
    park_reason: str | None = None
    #: GPU memory the host keeps for it while parked
    park_bytes: int | None = None
    #: granted on a parked grant's GPUs: preempted as soon as that grant resumes
    on_loan: bool = False

    @property
    def parked(self) -> bool:
        """Whether its GPUs are not its own now (lent, or free to lend)."""
        return self.park_state in ("parked", "resuming")


@dataclass(frozen=True, kw_only=True)
class KernelCaller:
    """Who calls with a kernel's token: the kernel it acts for, and its user."""

    kernel_id: str
    user: str


@dataclass(frozen=True, kw_only=True)
class KernelRecord:
    """A kernel the ledger knows: who owns it, and how to tell whether its process still lives."""

    kernel_id: str
    user: str
    node: str
    server_id: str
    kernel_name: str = ""
    path: str | None = None
    pid: int | None = None
    #: the process's start time, so that a recycled pid is not mistaken for the kernel
    pid_started_at: float | None = None
    #: set by a restart that must keep the kernel's GPUs and apply them at the next launch
    keep_on_restart: bool = False
    created_at: float = 0.0
    #: when its current process was asked for: its first launch, or its latest restart
    launched_at: float | None = None


@dataclass(frozen=True, kw_only=True)
class LedgerEvent:
    seq: int
    at: float
    kind: str
    allocation_id: int | None = None
    kernel_id: str | None = None
    detail: dict[str, object] = field(default_factory=dict)
