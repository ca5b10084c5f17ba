"""Answers served from the ledger's memory without waiting (what the gateway's handlers ask on
the event loop): the same as the database's, and none while that memory may be behind it
(another process wrote and the feed has not been caught up with, a write of this process is
under way, no change feed at all)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from jupyter_dlinfra.core.books.ledger import Ledger
from jupyter_dlinfra.core.clock import ManualClock
from jupyter_dlinfra.core.models import Allocation, AllocationState, KernelRecord
from jupyter_dlinfra.core.store import Store

from .kit import A100, DEADLINE_S, make_gpus, until


@pytest.fixture
def ledgers(fresh_postgres_db: str) -> Iterator[tuple[Ledger, Ledger]]:
    """A gateway's ledger (its store listens to the change feed) and another process's."""
    gateway, other = Store(fresh_postgres_db), Store(fresh_postgres_db)
    feed = gateway.start_feed()
    assert feed is not None and feed.listening.wait(DEADLINE_S)
    clock = ManualClock(1000.0)
    try:
        yield Ledger(gateway, clock), Ledger(other, clock)
    finally:
        gateway.dispose()
        other.dispose()


def _kernel(ledger: Ledger, kernel_id: str, user: str) -> None:
    ledger.register_kernel(
        KernelRecord(kernel_id=kernel_id, user=user, node="node-a", server_id="s")
    )


def _one_waiting(ledger: Ledger) -> Allocation:
    """A node of one GPU that k1 holds, k2 waiting for it (returned), k3 registered; the state
    checked against the ledger once."""
    ledger.sync_inventory("node-a", make_gpus("node-a", (1, A100)))
    for kernel_id in ("k1", "k2", "k3"):
        _kernel(ledger, kernel_id, "alice")
    ledger.request(kernel_id="k1", count=1)
    waiting = ledger.request(kernel_id="k2", count=1)
    ledger.queue_length()
    return waiting


def test_memory_answers_are_the_databases(ledgers: tuple[Ledger, Ledger]) -> None:
    ledger, _ = ledgers
    ledger.sync_inventory("node-a", make_gpus("node-a", (2, A100)))
    for kernel_id, user in (("k1", "alice"), ("k2", "alice"), ("k3", "bob")):
        _kernel(ledger, kernel_id, user)
    held = ledger.request(kernel_id="k1", count=2)
    waiting = ledger.request(kernel_id="k2", count=1)
    behind = ledger.request(kernel_id="k3", count=2)
    assert held.state is AllocationState.GRANTED and waiting.state is AllocationState.QUEUED
    ledger.queue_length()  # the state is checked against the ledger once
    kept = ledger.kept_allocation(waiting.id)
    assert kept is not None and kept == ledger.allocation(waiting.id)
    assert kept.position is not None and kept.waiting_reason
    # the database's answers first: a row that a write changed is read (and kept) there
    for user, limit, offset in (("alice", 10, 0), ("alice", 1, 1), ("bob", 10, 0)):
        page = ledger.allocations_page(user=user, limit=limit, offset=offset)
        assert ledger.kept_users_page(user, limit=limit, offset=offset) == page
    for node, limit, offset in ((None, 10, 0), ("node-a", 1, 1)):
        page = ledger.queue_page(node, limit=limit, offset=offset)
        assert ledger.kept_queue_page(node, limit=limit, offset=offset) == page
    served = ledger.kept_queue_page(limit=10)
    assert served is not None and {a.id for a in served[0]} == {waiting.id, behind.id}
    # a granted allocation and its GPUs: from memory once they were read
    ledger.allocation(held.id)
    granted = ledger.kept_allocation(held.id)
    assert granted is not None and granted.gpus == held.gpus
    ledger.gpus_of(held.gpus)
    assert [g.uuid for g in ledger.kept_gpus(held.gpus) or []] == list(held.gpus)
    # a release here shows at once: the rows it changed are read again, not served stale
    ledger.release(held.id, reason="done")
    assert ledger.kept_allocation(held.id) is None
    now_granted = ledger.allocation(waiting.id)
    assert now_granted.state is AllocationState.GRANTED
    kept_now = ledger.kept_allocation(waiting.id)
    assert kept_now is not None and kept_now.state is AllocationState.GRANTED


def test_nothing_is_served_from_memory_that_may_be_behind(
    ledgers: tuple[Ledger, Ledger],
) -> None:
    ledger, other = ledgers
    waiting = _one_waiting(ledger)
    assert ledger.kept_allocation(waiting.id) is not None
    # another process writes: once the feed tells, memory answers nothing until a read checks
    # the ledger again; then they include the other process's request
    late = other.request(kernel_id="k3", count=1)
    until(lambda: ledger.kept_allocation(waiting.id) is None, "the feed tells of the write")
    assert ledger.kept_users_page("alice", limit=10) is None
    assert ledger.kept_queue_page(limit=10) is None
    assert [a.id for a in ledger.queue()] == [waiting.id, late.id]
    assert ledger.kept_allocation(waiting.id) is not None
    assert ledger.kept_queue_page(limit=10) == ledger.queue_page(limit=10)
    # a write of this process under way (it holds the ledger's lock): nothing, without waiting
    holding, release = threading.Event(), threading.Event()

    def writer() -> None:
        with ledger._lock:
            holding.set()
            release.wait(DEADLINE_S)

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        assert holding.wait(DEADLINE_S)
        started = time.monotonic()
        assert ledger.kept_allocation(waiting.id) is None
        assert ledger.kept_users_page("alice", limit=10) is None
        assert time.monotonic() - started < DEADLINE_S / 2
    finally:
        release.set()
        thread.join()
    assert ledger.kept_allocation(waiting.id) is not None


def test_without_a_change_feed_nothing_is_served_from_memory(tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path / 'ledger.db'}")
    try:
        ledger = Ledger(store, ManualClock(1000.0))
        ledger.sync_inventory("node-a", make_gpus("node-a", (1, A100)))
        _kernel(ledger, "k1", "alice")
        _kernel(ledger, "k2", "alice")
        ledger.request(kernel_id="k1", count=1)
        waiting = ledger.request(kernel_id="k2", count=1)
        ledger.queue_length()
        assert ledger.allocation(waiting.id).position == 1
        assert ledger.kept_allocation(waiting.id) is None
        assert ledger.kept_users_page("alice", limit=10) is None
        assert ledger.kept_queue_page(limit=10) is None
    finally:
        store.dispose()


def test_an_answer_asked_during_a_write_is_made_once_it_has_committed(
    ledgers: tuple[Ledger, Ledger], monkeypatch: pytest.MonkeyPatch
) -> None:
    ledger, _ = ledgers
    waiting = _one_waiting(ledger)
    assert not ledger.answer_after_write(lambda: None, lambda _: None), "no write under way"
    inside, go_on = threading.Event(), threading.Event()
    schedule = ledger._schedule

    def slow_pass(*args: object) -> object:
        inside.set()
        go_on.wait(DEADLINE_S)
        return schedule(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(ledger, "_schedule", slow_pass)
    writer = threading.Thread(target=ledger.request, kwargs={"kernel_id": "k3", "count": 1})
    writer.start()
    made: list[object] = []
    try:
        assert inside.wait(DEADLINE_S)
        assert ledger.kept_queue_page(limit=10) is None, "the write holds the state"
        asked = ledger.answer_after_write(lambda: ledger.kept_queue_page(limit=10), made.append)
        assert asked and made == []
    finally:
        go_on.set()
        writer.join()
    # made on the writer's thread once it committed: the new request is in the page
    assert len(made) == 1 and made[0] is not None
    page, total = made[0]  # type: ignore[misc]
    assert total == 2 and page[0].id == waiting.id
    assert (page, total) == ledger.queue_page(limit=10)
