"""A user's own list of allocations, served from the rows the ledger keeps in memory: every
write that changes a row shows in it, as the tables have it."""

from __future__ import annotations

from typing import Any

import pytest

from jupyter_dlinfra.core.books.ledger import Ledger
from jupyter_dlinfra.core.models import AllocationState
from jupyter_dlinfra.core.store import Store

from .kit import Kit


def mine(kit: Kit, user: str) -> list[tuple[int, str, int | None]]:
    served, total = kit.ledger.allocations_page(user=user, limit=100)
    assert served == kit.ledger.allocations(user=user)
    assert total == len(served)
    return [(a.id, a.state.value, a.preempted_for) for a in served]


def test_a_preemption_and_its_withdrawal_show_in_the_victims_list(kit: Kit) -> None:
    kit.node("node-a", (2, "A100"))
    kit.kernel("job-1", user="bob")
    kit.kernel("nb", user="carol")
    job = kit.ledger.request(kernel_id="job-1", count=2, kind="job", priority_class="batch")
    assert job.state is AllocationState.GRANTED
    assert mine(kit, "bob") == [(job.id, "granted", None)]
    wanted = kit.ledger.request(kernel_id="nb", count=2)
    assert wanted.state is AllocationState.QUEUED
    assert mine(kit, "bob") == [(job.id, "granted", wanted.id)]
    assert mine(kit, "carol") == [(wanted.id, "queued", None)]
    # the request is withdrawn: the job is no longer being preempted
    kit.ledger.release(wanted.id, reason="released by the user")
    assert mine(kit, "bob") == [(job.id, "granted", None)]
    assert mine(kit, "carol") == []


def test_grants_releases_and_new_requests_show_at_once(kit: Kit) -> None:
    kit.node("node-a", (2, "A100"))
    kit.kernel("k1")
    kit.kernel("k2")
    first = kit.ledger.request(kernel_id="k1", count=2)
    second = kit.ledger.request(kernel_id="k2", count=1)
    assert mine(kit, "alice") == [(first.id, "granted", None), (second.id, "queued", None)]
    page, total = kit.ledger.allocations_page(user="alice", limit=1, offset=1)
    assert [a.id for a in page] == [second.id] and total == 2
    assert page[0].position == 1 and page[0].waiting_reason
    kit.ledger.release(first.id, reason="released by the user")
    assert mine(kit, "alice") == [(second.id, "granted", None)]
    assert kit.ledger.allocations_page(user="alice", limit=5)[0][0].gpus
    # another process's write is seen (the state is loaded again)
    store = Store(kit.url)
    try:
        Ledger(store, kit.clock).release(second.id, reason="released by the user")
    finally:
        store.dispose()
    assert mine(kit, "alice") == []


def test_a_read_overtaken_by_a_write_keeps_only_the_rows_that_write_left_alone(
    kit: Kit, monkeypatch: pytest.MonkeyPatch
) -> None:
    kit.node("node-a", (1, "A100"))
    kit.kernel("holder", user="bob")
    kit.kernel("k1")
    kit.kernel("k2")
    held = kit.ledger.request(kernel_id="holder", count=1)
    first = kit.ledger.request(kernel_id="k1", count=1)
    second = kit.ledger.request(kernel_id="k2", count=1)
    cache = kit.ledger._cache
    assert cache is not None
    cache.forget_rows([first.id, second.id])  # both must be read again
    load = kit.ledger._load

    def overtaken(conn: Any, cond: Any) -> Any:
        read = load(conn, cond)
        if overtaken.once:
            overtaken.once = False
            # a write between the read and the keeping of its rows: the grant changes one
            kit.ledger.release(held.id, reason="done")
        return read

    overtaken.once = True  # type: ignore[attr-defined]
    monkeypatch.setattr(kit.ledger, "_load", overtaken)
    served, _ = kit.ledger.allocations_page(user="alice", limit=10)
    assert [a.state for a in served] == [AllocationState.QUEUED, AllocationState.QUEUED]
    assert first.id not in cache.rows, "the row the grant changed was read before it"
    assert second.id in cache.rows, "a row no write touched is kept"
    assert mine(kit, "alice") == [(first.id, "granted", None), (second.id, "queued", None)]


def test_rows_dropped_since_a_count_are_named_while_remembered() -> None:
    from jupyter_dlinfra.core.books import ledger_cache

    cache = ledger_cache.LedgerCache.__new__(ledger_cache.LedgerCache)
    cache.rows, cache.drops = {}, 0
    cache._dropped = ledger_cache.deque(maxlen=3)
    assert cache.dropped_since(0) == set()
    cache.forget_rows([1, 2])
    cache.forget_rows(iter([3]))
    assert cache.dropped_since(0) == {1, 2, 3} and cache.dropped_since(1) == {3}
    for aid in (4, 5, 6):
        cache.forget_rows([aid])
    assert cache.dropped_since(0) is None, "further back than remembered"
    assert cache.dropped_since(3) == {5, 6} and cache.dropped_since(5) == set()
