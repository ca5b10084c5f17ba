"""The scheduler's state, loaded from the ledger's tables within one transaction."""

from __future__ import annotations

import json
import math
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import replace

from sqlalchemy import Connection, select

from jupyter_dlinfra.core.models import POOL, Allocation, AllocationState
from jupyter_dlinfra.core.scheduling.policy import SchedulingPolicy
from jupyter_dlinfra.core.scheduling.scheduler import Scheduler
from jupyter_dlinfra.core.scheduling.types import Demand, Holding, Slot
from jupyter_dlinfra.core.store import allocations, fairshare, gpus, holdings

__all__ = [
    "DEFAULT_DURATION",
    "GroupsOf",
    "class_of",
    "demand_of",
    "groups_of_row",
    "load_scheduler",
    "names_of_row",
    "recent_spans",
]

GroupsOf = Callable[[str], Iterable[str]]

#: the holding time assumed for a class with no history yet (s)
DEFAULT_DURATION = 3600.0


def class_of(alloc: Allocation, policy: SchedulingPolicy) -> str:
    """The class a request is scheduled in (rows from before classes, or of a removed class)."""
    if alloc.priority_class in policy.class_map:
        return alloc.priority_class  # type: ignore[return-value]
    return policy.job_class if alloc.kind == "job" else policy.kernel_class


def groups_json(groups: Iterable[str]) -> str:
    return json.dumps(sorted(set(groups)))


def names_of_row(raw: str | None) -> tuple[str, ...]:
    """A list of names stored as JSON (a request's avoided nodes, the pods that use a node's
    GPUs); NULL (rows from before schema 10) or anything but a list: none."""
    if not raw:
        return ()
    try:
        parsed = json.loads(raw)
    except ValueError:
        return ()
    return tuple(str(n) for n in parsed) if isinstance(parsed, list) else ()


def groups_of_row(raw: str | None, user: str, groups_of: GroupsOf) -> tuple[str, ...]:
    """The groups a request was made with (stored as JSON), else the user's groups now."""
    if raw:
        try:
            parsed = json.loads(raw)
        except ValueError:
            parsed = None
        if isinstance(parsed, list):
            return tuple(str(g) for g in parsed)
    return tuple(sorted(set(groups_of(user))))


def load_scheduler(
    conn: Connection,
    *,
    policy: SchedulingPolicy,
    now: float,
    groups_of: GroupsOf,
    active: list[Allocation],
    raw_groups: dict[int, str | None],
    recorded: dict[str, tuple[float, float]],
    max_scan: int = 100,
) -> Scheduler:
    """A scheduler holding the ledger's GPUs, grants, waiting requests and fair-share usage
    (``recorded``: each user's stored usage, as :func:`recorded_usage` reads it)."""
    s = Scheduler(policy, now=now, max_scan=max_scan)
    s.add_gpus(
        Slot(uuid=r.uuid, node=r.node, model=r.model, index=r.idx)
        for r in conn.execute(select(gpus).where(gpus.c.present).order_by(gpus.c.node, gpus.c.idx))
    )
    held: dict[int, list[str]] = defaultdict(list)
    # ordered: the same ledger must give the same scheduler (PostgreSQL's row order moves)
    for uuid, aid in conn.execute(
        select(holdings.c.gpu_uuid, holdings.c.allocation_id).order_by(
            holdings.c.allocation_id, holdings.c.gpu_uuid
        )
    ):
        held[aid].append(uuid)
    for alloc in active:
        groups = groups_of_row(raw_groups.get(alloc.id), alloc.user, groups_of)
        klass = class_of(alloc, policy)
        if alloc.state is AllocationState.GRANTED:
            holding = Holding(
                id=alloc.id,
                user=alloc.user,
                groups=groups,
                klass=klass,
                kind=alloc.kind,
                gpus=tuple(held.get(alloc.id, ())),
                granted_at=alloc.granted_at or alloc.created_at,
                borrowed=alloc.borrowed,
                preempted_for=alloc.preempted_for,
                on_loan=alloc.on_loan,
            )
            if alloc.parked:
                # it holds no rows of holdings: its own GPUs are those it was granted
                holding = replace(holding, gpus=alloc.gpus)
                s.parking.restore(holding, resuming=alloc.park_state == "resuming")
            else:
                s.hold(holding)
    for alloc in active:
        if alloc.state is AllocationState.QUEUED:
            s.submit(
                demand_of(
                    alloc, policy, groups_of_row(raw_groups.get(alloc.id), alloc.user, groups_of)
                )
            )
    for user, (gpu_seconds, at) in recorded.items():
        s.load_usage(user, groups_of(user), gpu_seconds, at)
    for h in list(s.holdings.values()):
        # what running grants have used so far counts too (recorded only when they end)
        s.load_usage(h.user, h.groups, running_usage(len(h.gpus), h.granted_at, now, policy), now)
    return s


def recorded_usage(conn: Connection) -> dict[str, tuple[float, float]]:
    """Each user's stored fair-share usage: (decayed GPU-seconds, as of when), by user."""
    rows = conn.execute(select(fairshare).order_by(fairshare.c.user))
    return {r.user: (r.gpu_seconds, r.at) for r in rows}


def running_usage(count: int, granted_at: float, now: float, policy: SchedulingPolicy) -> float:
    """Decayed GPU-seconds a grant of ``count`` GPUs has used from ``granted_at`` to ``now``."""
    elapsed = max(now - granted_at, 0.0)
    h = policy.half_life
    return float(count * h / math.log(2.0) * (1.0 - 2.0 ** (-elapsed / h)))


def demand_of(alloc: Allocation, policy: SchedulingPolicy, groups: tuple[str, ...]) -> Demand:
    return Demand(
        id=alloc.id,
        user=alloc.user,
        groups=groups,
        count=alloc.count,
        model=alloc.model,
        # a request of the pool may take GPUs of any node; the others wait for their kernel's
        node=None if alloc.placement == POOL else alloc.node,
        avoid=frozenset(alloc.avoid),
        gang=alloc.per_node is not None,
        per_node=alloc.per_node,
        klass=class_of(alloc, policy),
        kind=alloc.kind,
        submitted_at=alloc.created_at,
    )


def recent_spans(
    conn: Connection, policy: SchedulingPolicy, sample: int = 200
) -> dict[str, list[float]]:
    """How long the latest released grants of each class were held (s), oldest first."""
    rows = conn.execute(
        select(
            allocations.c.priority_class,
            allocations.c.kind,
            allocations.c.granted_at,
            allocations.c.ended_at,
        )
        .where(
            (allocations.c.state == AllocationState.RELEASED.value)
            & allocations.c.granted_at.is_not(None)
            & allocations.c.ended_at.is_not(None)
        )
        .order_by(allocations.c.id.desc())
        .limit(sample * max(len(policy.classes), 1))
    ).all()
    spans: dict[str, list[float]] = defaultdict(list)
    for r in rows:
        name = (
            r.priority_class
            if r.priority_class in policy.class_map
            else (policy.job_class if r.kind == "job" else policy.kernel_class)
        )
        if len(spans[name]) < sample:
            spans[name].append(max(r.ended_at - r.granted_at, 0.0))
    return {name: found[::-1] for name, found in spans.items()}
