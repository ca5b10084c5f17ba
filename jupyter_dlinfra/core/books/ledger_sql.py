"""The statements of the ledger's hot paths (a request, a release, a pass), built once.

Building a SQLAlchemy statement and deriving its cache key costs about three times what executing
the compiled statement costs (some 140 against 45 microseconds on SQLite): a change executes a
dozen of them, so they are built here at import, with bound parameters, and executed with the
values of each call. SQLAlchemy memoises a statement object's cache key, so each is compiled once
per dialect and then only executed. Parameter names carry a ``p_`` prefix: SQLAlchemy reserves
a column's own name for the values of an INSERT or UPDATE. The writes, which bind plain values
and return nothing, go through the driver (:class:`DriverStatement`, ``core/driver_sql.py``):
``sql.GRANT.run(conn, rows)``.
"""

from __future__ import annotations

from sqlalchemy import CTE, Insert, bindparam, delete, insert, select, update

from jupyter_dlinfra.core.driver_sql import DriverStatement
from jupyter_dlinfra.core.models import AllocationState
from jupyter_dlinfra.core.store import (
    allocation_gpus,
    allocations,
    events,
    fairshare,
    gpus,
    holdings,
    kernels,
)

__all__ = [
    "ACTIVE",
    "ACTIVE_OF_KERNEL",
    "ALLOCATION",
    "DELETE_HOLDINGS",
    "END_ALLOCATION",
    "END_WITH_EVENT",
    "EVENT_FIELDS",
    "GPUS_OF_ALLOCATION",
    "GPUS_OF_ALLOCATIONS",
    "GRANT",
    "INSERT_ALLOCATION",
    "INSERT_ALLOCATION_GPUS",
    "INSERT_FAIRSHARE",
    "INSERT_HOLDINGS",
    "INSERT_REQUEST_WITH_EVENT",
    "KERNEL",
    "MARK_PREEMPTED",
    "PLACE_KERNEL",
    "PLACE_ON_NODE",
    "UNMARK_PREEMPTED",
    "UPDATE_FAIRSHARE",
]

#: the states of an allocation that counts (queued or granted), as stored
ACTIVE = (AllocationState.QUEUED.value, AllocationState.GRANTED.value)

KERNEL = select(kernels).where(kernels.c.kernel_id == bindparam("p_kernel"))

ALLOCATION = select(allocations).where(allocations.c.id == bindparam("p_id"))
ACTIVE_OF_KERNEL = (
    select(allocations)
    .where((allocations.c.kernel_id == bindparam("p_kernel")) & allocations.c.state.in_(ACTIVE))
    .order_by(allocations.c.id)
)
#: the GPUs of some allocations, in the order of their index on the node
GPUS_OF_ALLOCATIONS = (
    select(allocation_gpus.c.allocation_id, allocation_gpus.c.gpu_uuid)
    .join(gpus, gpus.c.uuid == allocation_gpus.c.gpu_uuid)
    .where(allocation_gpus.c.allocation_id.in_(bindparam("p_ids", expanding=True)))
    .order_by(gpus.c.idx)
)

#: the same for one allocation (a release's): an expanding IN costs a rendering per call
GPUS_OF_ALLOCATION = (
    select(allocation_gpus.c.allocation_id, allocation_gpus.c.gpu_uuid)
    .join(gpus, gpus.c.uuid == allocation_gpus.c.gpu_uuid)
    .where(allocation_gpus.c.allocation_id == bindparam("p_id"))
    .order_by(gpus.c.idx)
)

INSERT_ALLOCATION = insert(allocations)
INSERT_HOLDINGS = DriverStatement(insert(holdings), ["gpu_uuid", "allocation_id"])
INSERT_ALLOCATION_GPUS = DriverStatement(insert(allocation_gpus), ["allocation_id", "gpu_uuid"])
#: executed once per pass with every grant's values (executemany)
GRANT = DriverStatement(
    update(allocations)
    .where(allocations.c.id == bindparam("p_id"))
    .values(
        state=AllocationState.GRANTED.value,
        granted_at=bindparam("p_at"),
        borrowed=bindparam("p_borrowed"),
    ),
    ["p_id", "p_at", "p_borrowed"],
)
#: where a request of the pool was granted: the node of its GPUs, for it and its kernel record
PLACE_ON_NODE = DriverStatement(
    update(allocations)
    .where(allocations.c.id == bindparam("p_id"))
    .values(node=bindparam("p_node")),
    ["p_id", "p_node"],
)
PLACE_KERNEL = DriverStatement(
    update(kernels)
    .where(kernels.c.kernel_id == bindparam("p_kernel"))
    .values(node=bindparam("p_node")),
    ["p_kernel", "p_node"],
)
END_ALLOCATION = DriverStatement(
    update(allocations)
    .where(allocations.c.id == bindparam("p_id"))
    .values(state=bindparam("p_state"), ended_at=bindparam("p_at"), end_reason=bindparam("p_why")),
    ["p_id", "p_state", "p_at", "p_why"],
)

# PostgreSQL: a change's row and its event in one statement (a WITH that writes), one round trip
# where a loaded writer waits for the interpreter's lock after each. SQLite cannot write in a
# WITH; it runs in the process, and keeps the two statements.
#: what a change written WITH_EVENT binds for its event (``Ledger._event_fields``)
EVENT_FIELDS = ["p_event_at", "p_kind", "p_kernel", "p_detail"]


def _with_event(change: CTE) -> Insert:
    """The event of ``change`` (a CTE returning the allocation's id), written by the same
    statement."""
    return insert(events).from_select(
        ["at", "kind", "allocation_id", "kernel_id", "detail"],
        select(
            bindparam("p_event_at", type_=events.c.at.type),
            bindparam("p_kind", type_=events.c.kind.type),
            change.c.id,
            bindparam("p_kernel", type_=events.c.kernel_id.type),
            bindparam("p_detail", type_=events.c.detail.type),
        ),
    )


_REQUEST_COLUMNS = [
    "kernel_id",
    "user",
    "node",
    "count",
    "model",
    "state",
    "created_at",
    "priority_class",
    "kind",
    "groups",
    "borrowed",
    "placement",
    "cluster_reason",
    "avoid_nodes",
    "per_node",
]
#: a queued request and its event; returns the request's id
INSERT_REQUEST_WITH_EVENT = DriverStatement(
    _with_event(
        insert(allocations)
        .values({c: bindparam(c, type_=allocations.c[c].type) for c in _REQUEST_COLUMNS})
        .returning(allocations.c.id)
        .cte("asked")
    ).returning(events.c.allocation_id),
    [*_REQUEST_COLUMNS, *EVENT_FIELDS],
    returns_number=True,
)
#: END_ALLOCATION and its event
END_WITH_EVENT = DriverStatement(
    _with_event(
        update(allocations)
        .where(allocations.c.id == bindparam("p_id"))
        .values(
            state=bindparam("p_state"), ended_at=bindparam("p_at"), end_reason=bindparam("p_why")
        )
        .returning(allocations.c.id)
        .cte("ended")
    ),
    ["p_id", "p_state", "p_at", "p_why", *EVENT_FIELDS],
)
DELETE_HOLDINGS = DriverStatement(
    delete(holdings).where(holdings.c.allocation_id == bindparam("p_id")), ["p_id"]
)
MARK_PREEMPTED = DriverStatement(
    update(allocations)
    .where(allocations.c.id == bindparam("p_id"))
    .values(preempted_for=bindparam("p_for"), preempt_reason=bindparam("p_why")),
    ["p_id", "p_for", "p_why"],
)
#: what was being preempted for a request that is cancelled is no longer wanted
UNMARK_PREEMPTED = DriverStatement(
    update(allocations)
    .where(
        (allocations.c.preempted_for == bindparam("p_for"))
        & (allocations.c.state == AllocationState.GRANTED.value)
    )
    .values(preempted_for=None, preempt_reason=None),
    ["p_for"],
)

INSERT_FAIRSHARE = DriverStatement(insert(fairshare), ["user", "gpu_seconds", "at"])
UPDATE_FAIRSHARE = DriverStatement(
    update(fairshare)
    .where(fairshare.c.user == bindparam("p_user"))
    .values(gpu_seconds=bindparam("p_seconds"), at=bindparam("p_at")),
    ["p_user", "p_seconds", "p_at"],
)
