"""The scheduler's value types: the GPUs it hands out, the requests that wait, the grants held,
and what one pass decides. A leaf: it imports nothing of the scheduling engine, so the ranking,
the scheduler, the explanations and the books all build on it without importing each other.
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["Demand", "Grant", "Holding", "Outcome", "Preemption", "Slot", "model_matches"]


def model_matches(wanted: str | None, model: str) -> bool:
    """``--model A100`` matches "NVIDIA A100-SXM4-80GB": people type the short name."""
    return wanted is None or wanted.strip().lower() in model.lower()


@dataclass(frozen=True, kw_only=True)
class Slot:
    """One GPU the scheduler may hand out."""

    uuid: str
    node: str
    model: str
    index: int = 0


@dataclass(frozen=True, kw_only=True)
class Demand:
    """A waiting request."""

    id: int
    user: str
    groups: tuple[str, ...] = ()
    count: int
    model: str | None = None
    #: only GPUs of this node (a kernel's own node); None: any node
    node: str | None = None
    #: nodes a request of any node is not placed on (the cluster could not start it there)
    avoid: frozenset[str] = frozenset()
    #: may span nodes, all or nothing (otherwise packed on one node)
    gang: bool = False
    #: a gang in whole nodes: ``per_node`` GPUs of one model on each of ``count // per_node``
    #: different nodes (a distributed job's ranks, node by node); None: any split
    per_node: int | None = None
    klass: str
    #: "kernel" or "job": only jobs are ever preempted
    kind: str = "kernel"
    submitted_at: float

    @property
    def shape(self) -> tuple[int, int] | None:
        """(nodes, GPUs per node) of a gang in whole nodes; None otherwise."""
        if self.per_node is None:
            return None
        return self.count // self.per_node, self.per_node


@dataclass(frozen=True, kw_only=True)
class Holding:
    """A granted request."""

    id: int
    user: str
    groups: tuple[str, ...] = ()
    klass: str
    kind: str = "kernel"
    gpus: tuple[str, ...]
    granted_at: float
    #: granted beyond a quota: the first to be taken back
    borrowed: bool = False
    #: the request its GPUs are being freed for, once preempted (or the parked grant whose
    #: GPUs it borrows, once that resumes)
    preempted_for: int | None = None
    #: granted on a parked grant's GPUs (see parking.py): taken back when that grant resumes
    on_loan: bool = False


@dataclass(frozen=True)
class Grant:
    request_id: int
    gpus: tuple[str, ...]
    borrowed: bool = False
    on_loan: bool = False


@dataclass(frozen=True)
class Preemption:
    holding_id: int
    request_id: int
    message: str


@dataclass
class Outcome:
    grants: list[Grant] = field(default_factory=list)
    preemptions: list[Preemption] = field(default_factory=list)
    #: requests looked at in this pass (granted or found to wait)
    examined: int = 0
    #: parked grants that hold their GPUs again (their loans ended)
    resumed: list[int] = field(default_factory=list)
