"""A request and a release execute a fixed number of SQL statements, whatever the queue's length,
and on SQLite the database does the same work (its virtual machine's steps): the scheduling state
is in memory, and a pass writes only what it decided (no N+1 queries, no reading of the queue)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from sqlalchemy import event

from jupyter_dlinfra.core.models import AllocationState

from .kit import A100, Kit

#: what one request or one release (with the grants of its pass) may execute, at most
MOST = 40


#: SQLite virtual machine instructions per tick of the work counter
STEPS = 100


@contextmanager
def counted(kit: Kit) -> Iterator[list[str]]:
    """Every statement executed within, and on SQLite one ``"step"`` per STEPS instructions its
    virtual machine ran for them."""
    statements: list[str] = []

    def count(conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        statements.append(statement)
        raw = conn.connection.dbapi_connection
        if kit.ledger.store.is_sqlite and raw is not None:
            raw.set_progress_handler(lambda: statements.append("step") and 0, STEPS)

    engine = kit.ledger.store.engine
    event.listen(engine, "before_cursor_execute", count)
    try:
        yield statements
    finally:
        event.remove(engine, "before_cursor_execute", count)
        with engine.connect() as conn:
            raw = conn.connection.dbapi_connection
            if kit.ledger.store.is_sqlite and raw is not None:
                raw.set_progress_handler(None, STEPS)


def _split(found: list[str]) -> tuple[int, int]:
    steps = found.count("step")
    return len(found) - steps, steps


def _costs(kit: Kit, node: str, waiting: int) -> tuple[tuple[int, int], tuple[int, int]]:
    """Statements of a request that queues and of a release that grants four 1-GPU requests
    (a grant writes its rows and event: the same number of grants in every run), with ``waiting``
    requests already queued on ``node`` (and as many on another node)."""
    kit.node(node, (4, A100))
    kit.node(f"{node}-other", (4, A100))
    kit.kernel(f"{node}-holder", node=node)
    held = kit.ledger.request(kernel_id=f"{node}-holder", count=4)
    kit.kernel(f"{node}-other-holder", node=f"{node}-other")
    kit.ledger.request(kernel_id=f"{node}-other-holder", count=4)
    for i in range(waiting):
        for where in (node, f"{node}-other"):
            kit.kernel(f"{where}-w{i}", node=where, user=f"user{i % 7}")
            kit.ledger.request(kernel_id=f"{where}-w{i}", count=1)
    kit.kernel(f"{node}-last", node=node, user="late")
    kit.ledger.queue_length()  # the state is in memory before anything is counted
    with counted(kit) as asked:
        queued = kit.ledger.request(kernel_id=f"{node}-last", count=1)
    assert queued.state is AllocationState.QUEUED
    # a kernel that holds nothing: the state in memory says so, no allocation row is read
    reads = [q for q in asked if q.lstrip().upper().startswith("SELECT")]
    assert not [q for q in reads if "FROM dlinfra_allocations" in " ".join(q.split())], reads
    with counted(kit) as released:
        kit.ledger.release(held.id, reason="done")
    granted = [e for e in kit.ledger.events()[-6:] if e.kind == "granted"]
    assert granted, "the release granted nothing: the figure would not count a pass's writes"
    return _split(asked), _split(released)


def test_a_request_and_a_release_cost_the_same_statements_whatever_waits(kit: Kit) -> None:
    short = _costs(kit, "node-a", 3)
    long = _costs(kit, "node-b", 60)
    for what, few, many in zip(("request", "release"), short, long, strict=True):
        assert few[0] == many[0], f"{what}: {few[0]} statements with 3 waiting, {many[0]} with 60"
        assert many[0] <= MOST, f"{what}: {many[0]} statements"
        # the same work, but for a B-tree a level deeper here and there
        assert many[1] <= 1.5 * few[1] + 5, f"{what}: {few[1]} x{STEPS} steps, then {many[1]}"


def _quota_block_cost(kit: Kit, grants: int) -> tuple[int, int]:
    """Statements (and SQLite steps) of a gateway's quota check before it creates a GPU pod, with
    ``grants`` kernels of others holding a GPU each elsewhere in the cluster."""
    kit.node(f"busy-{grants}", (grants, A100))
    for i in range(grants):
        kit.kernel(f"g{grants}-{i}", node=f"busy-{grants}", user=f"other{i % 9}")
        kit.ledger.request(kernel_id=f"g{grants}-{i}", count=1)
    kit.kernel(f"pod-{grants}", node="gateway", user="alice")
    placed = kit.ledger.request_placed(kernel_id=f"pod-{grants}", count=1, reason="creating")
    kit.ledger.queue_length()  # the state is in memory before anything is counted
    with counted(kit) as asked:
        kit.ledger.cluster_quota_block("alice", 2, placed=[placed.id])
    return _split(asked)


def test_a_pod_quota_check_costs_the_placed_requests_not_the_clusters_grants(kit: Kit) -> None:
    few = _quota_block_cost(kit, 2)
    many = _quota_block_cost(kit, 200)
    assert few[0] == many[0], f"{few[0]} statements with 2 grants, {many[0]} with 200"
    assert many[1] <= 1.5 * few[1] + 5, f"{few[1]} x{STEPS} steps with 2 grants, then {many[1]}"


def test_on_postgresql_a_change_writes_its_row_and_its_event_in_one_statement(kit: Kit) -> None:
    if kit.ledger.store.is_sqlite:
        pytest.skip("SQLite cannot write in a WITH: two statements there, in the process")
    kit.node("node-c", (1, A100))
    kit.kernel("c-holder", node="node-c")
    kit.ledger.request(kernel_id="c-holder", count=1)
    kit.kernel("c-waiter", node="node-c", user="late")
    kit.ledger.queue_length()
    with counted(kit) as asked:
        waiting = kit.ledger.request(kernel_id="c-waiter", count=1)
    with counted(kit) as cancelled:
        kit.ledger.release(waiting.id, reason="changed my mind")
    for what, seen in (("request", asked), ("cancel", cancelled)):
        alone = [s for s in seen if s.lstrip().startswith("INSERT INTO dlinfra_events")]
        assert alone == [], f"{what}: its event went in a statement of its own"
    kinds = [(e.kind, e.allocation_id) for e in kit.ledger.events()[-2:]]
    assert kinds == [("requested", waiting.id), ("cancelled", waiting.id)]
    stored = kit.ledger.allocation(waiting.id)
    assert stored.state.value == "cancelled" and stored.end_reason == "changed my mind"
