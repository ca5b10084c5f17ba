"""Statements run through the driver write what SQLAlchemy Core would write, on both databases,
and refuse at their first use what they cannot run as Core would."""

from __future__ import annotations

import pytest
from sqlalchemy import bindparam, event, insert, select, update

from jupyter_dlinfra.core.driver_sql import DriverStatement
from jupyter_dlinfra.core.models import AllocationState
from jupyter_dlinfra.core.store import Store, allocations, events, fairshare, kernels

UPSERT = DriverStatement(insert(fairshare), ["user", "gpu_seconds", "at"])
#: a value fixed in the statement itself ('granted') beside the caller's
ENDS_GRANTED = DriverStatement(
    update(allocations)
    .where(
        (allocations.c.kernel_id == bindparam("p_kernel"))
        & (allocations.c.state == AllocationState.GRANTED.value)
    )
    .values(end_reason=bindparam("p_why"), borrowed=bindparam("p_borrowed")),
    ["p_kernel", "p_why", "p_borrowed"],
)


def _allocation(kernel: str, state: AllocationState) -> dict[str, object]:
    return {
        "kernel_id": kernel,
        "user": "ada",
        "node": "n1",
        "count": 1,
        "state": state.value,
        "created_at": 1.0,
        "priority_class": "interactive",
        "kind": "kernel",
    }


def test_writes_one_and_many_rows_with_fixed_values_and_plain_types(store_url: str) -> None:
    store = Store(store_url)
    seen: list[str] = []
    event.listen(store.engine, "before_cursor_execute", lambda *a: seen.append(a[2]))
    try:
        with store.write() as tx:
            UPSERT.run(tx.conn, {"user": "ada", "gpu_seconds": 1.5, "at": 2.0})
            UPSERT.run_many(
                tx.conn,
                [
                    {"user": "bob", "gpu_seconds": 0.0, "at": 3.0},
                    {"user": "cy", "at": 4.0, "gpu_seconds": 7},
                ],
            )
            UPSERT.run_many(tx.conn, [])  # nothing to write: no statement at all
            for kernel, state in [("k1", AllocationState.GRANTED), ("k1", AllocationState.QUEUED)]:
                tx.conn.execute(insert(allocations), _allocation(kernel, state))
            ENDS_GRANTED.run(tx.conn, {"p_kernel": "k1", "p_why": "done", "p_borrowed": True})
        with store.read() as conn:
            usage = conn.execute(select(fairshare).order_by(fairshare.c.user)).all()
            rows = conn.execute(
                select(
                    allocations.c.state, allocations.c.end_reason, allocations.c.borrowed
                ).order_by(allocations.c.id)
            ).all()
    finally:
        store.dispose()
    assert [tuple(r) for r in usage] == [("ada", 1.5, 2.0), ("bob", 0.0, 3.0), ("cy", 7.0, 4.0)]
    # only the granted one: the statement's own 'granted' was bound beside the caller's values
    assert [tuple(r) for r in rows] == [("granted", "done", True), ("queued", None, None)]
    # the engine's events see every statement (the statement-count test counts them)
    assert sum(s.startswith("INSERT INTO dlinfra_fairshare") for s in seen) == 2
    assert any(s.startswith("UPDATE dlinfra_allocations") for s in seen)
    # an INSERT on PostgreSQL does not return the new key nobody reads
    assert not any("RETURNING" in s for s in seen if "dlinfra_fairshare" in s)


def test_statements_it_cannot_run_as_core_would_are_refused(tmp_path: object) -> None:
    store = Store(f"sqlite:///{tmp_path}/x.db")
    try:
        with store.write() as tx:
            # kernel_name and keep_on_restart have Python-side defaults: they would go in as NULL
            defaults = DriverStatement(insert(kernels), ["kernel_id", "user", "node"])
            with pytest.raises(ValueError, match="Python-side defaults"):
                defaults.run(tx.conn, {"kernel_id": "k", "user": "u", "node": "n"})
            unbound = DriverStatement(insert(events), ["at", "kind", "nonsense"])
            with pytest.raises(ValueError, match="binds no parameter"):
                unbound.run(tx.conn, {"at": 1.0, "kind": "x", "nonsense": 1})
    finally:
        store.dispose()


def test_a_statement_may_return_one_number_read_once_per_execution(tmp_path: object) -> None:
    store = Store(f"sqlite:///{tmp_path}/x.db")
    try:
        with store.write() as tx:
            numbered = DriverStatement(
                insert(events).returning(events.c.seq),
                ["at", "kind", "detail"],
                returns_number=True,
            )
            first = numbered.run(tx.conn, {"at": 1.0, "kind": "x", "detail": "{}"}).scalar_one()
            second = numbered.run(tx.conn, {"at": 2.0, "kind": "y", "detail": "{}"}).scalar_one()
            assert second == first + 1
            with pytest.raises(ValueError, match="once per row"):
                numbered.run_many(tx.conn, [{"at": 3.0, "kind": "z", "detail": "{}"}])
            # two columns are rows: refused, as without the flag
            rows = DriverStatement(
                insert(events).returning(events.c.seq, events.c.kind),
                ["at", "kind", "detail"],
                returns_number=True,
            )
            with pytest.raises(ValueError, match="returns rows"):
                rows.run(tx.conn, {"at": 4.0, "kind": "w", "detail": "{}"})
    finally:
        store.dispose()
