"""A user's own list of allocations, served from the rows the ledger keeps in memory: every
write that changes a row shows in it, as the tables have it."""

from __future__ import annotations

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
