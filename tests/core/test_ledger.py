"""The store contract: every test runs against SQLite and against a real PostgreSQL."""

from __future__ import annotations

from dataclasses import replace

import pytest

from jupyter_dlinfra.core.books.ledger import Ledger
from jupyter_dlinfra.core.books.ledger_cache import LedgerCache
from jupyter_dlinfra.core.errors import (
    Conflict,
    InvalidRequest,
    LedgerError,
    NotFound,
    Unsatisfiable,
)
from jupyter_dlinfra.core.models import AllocationState, KernelRecord
from jupyter_dlinfra.core.scheduling import explain
from jupyter_dlinfra.core.store import LEDGER_VERSION, read_counter

from .kit import A100, H100, Kit, make_gpus

GRANTED = AllocationState.GRANTED
QUEUED = AllocationState.QUEUED
RELEASED = AllocationState.RELEASED
CANCELLED = AllocationState.CANCELLED


# -- granting ---------------------------------------------------------------------------------


def test_grant_at_once(kit: Kit) -> None:
    devices = kit.node("node-a")
    kit.kernel("k1")
    kit.clock.advance(5)
    alloc = kit.ledger.request(kernel_id="k1", count=2)
    assert alloc.state is GRANTED
    assert alloc.kernel_id == "k1"
    assert alloc.user == "alice"
    assert alloc.node == "node-a"
    assert alloc.count == 2
    assert alloc.model is None
    assert alloc.gpus == (devices[0].uuid, devices[1].uuid)
    assert alloc.created_at == alloc.granted_at == kit.clock.now()
    assert alloc.ended_at is None
    assert alloc.position is None
    assert alloc.waiting_reason is None
    assert kit.ledger.allocation(alloc.id) == alloc
    assert kit.ledger.queue() == []


def test_two_kernels_get_disjoint_gpus(kit: Kit) -> None:
    devices = kit.node("node-a")
    kit.kernel("k1")
    kit.kernel("k2", user="bob")
    a = kit.ledger.request(kernel_id="k1", count=2)
    b = kit.ledger.request(kernel_id="k2", count=2)
    assert a.state is GRANTED
    assert b.state is GRANTED
    assert not set(a.gpus) & set(b.gpus)
    assert set(a.gpus) | set(b.gpus) == {g.uuid for g in devices}
    holders = kit.ledger.holders()
    assert {uuid: h.id for uuid, h in holders.items()} == {
        **dict.fromkeys(a.gpus, a.id),
        **dict.fromkeys(b.gpus, b.id),
    }
    assert holders[b.gpus[0]].user == "bob"


def test_queue_when_full_has_position_and_reason(kit: Kit) -> None:
    kit.node("node-a")
    kit.kernel("k1", user="alice")
    kit.kernel("k2", user="bob")
    kit.kernel("k3", user="carol")
    first = kit.ledger.request(kernel_id="k1", count=4)
    assert first.state is GRANTED

    waiting = kit.ledger.request(kernel_id="k2", count=2)
    assert waiting.state is QUEUED
    assert waiting.gpus == ()
    assert waiting.granted_at is None
    assert waiting.position == 1
    assert waiting.waiting_reason is not None
    assert "2 GPUs" in waiting.waiting_reason
    assert "0 of 4 free" in waiting.waiting_reason
    assert "alice (4)" in waiting.waiting_reason

    second = kit.ledger.request(kernel_id="k3", count=1)
    assert second.state is QUEUED
    assert second.position == 2
    assert second.waiting_reason is not None
    assert "1 GPU " in second.waiting_reason
    assert "alice" in second.waiting_reason

    queue = kit.ledger.queue()
    assert [(a.id, a.position) for a in queue] == [(waiting.id, 1), (second.id, 2)]
    assert kit.ledger.queue_length() == 2
    assert kit.ledger.queue("node-a") == queue
    assert kit.ledger.queue("node-b") == []
    # the same view through allocations() and allocation()
    by_id = {a.id: a for a in kit.ledger.allocations()}
    assert by_id[waiting.id].position == 1
    assert by_id[first.id].position is None
    assert kit.ledger.allocation(second.id).position == 2


def test_fifo_head_of_line_blocks_rivals_but_not_other_models_or_nodes(kit: Kit) -> None:
    kit.node("node-a", (4, A100), (2, H100))
    kit.node("node-b", (2, A100))
    for kid in ("k1", "k2", "k3", "k4"):
        kit.kernel(kid, user=f"user-{kid}")
    kit.kernel("kb", node="node-b")

    holder = kit.ledger.request(kernel_id="k1", count=2, model="A100")
    big = kit.ledger.request(kernel_id="k2", count=4, model="A100")
    assert holder.state is GRANTED
    assert big.state is QUEUED

    # two A100s are free, but they are kept for the head of the line
    small = kit.ledger.request(kernel_id="k3", count=1, model="A100")
    assert small.state is QUEUED
    assert small.position == 2
    assert small.waiting_reason is not None
    assert "2 of 4 free" in small.waiting_reason
    assert "2 kept for earlier requests" in small.waiting_reason

    # another model on the same node goes ahead (case-insensitive substring match) ...
    other_model = kit.ledger.request(kernel_id="k4", count=1, model="h100")
    assert other_model.state is GRANTED
    assert other_model.gpus == ("GPU-node-a-4",)
    # ... and so does a request on another node
    other_node = kit.ledger.request(kernel_id="kb", count=2, model="a100")
    assert other_node.state is GRANTED
    assert set(other_node.gpus) == {"GPU-node-b-0", "GPU-node-b-1"}

    # when the holder leaves, the head gets all four; the small request keeps waiting
    kit.ledger.release(holder.id, reason="done")
    assert kit.ledger.allocation(big.id).state is GRANTED
    assert len(kit.ledger.allocation(big.id).gpus) == 4
    still = kit.ledger.allocation(small.id)
    assert still.state is QUEUED
    assert still.position == 1


def test_release_grants_the_waiting_head_in_the_same_transaction(kit: Kit) -> None:
    kit.node("node-a")
    kit.kernel("k1")
    kit.kernel("k2", user="bob")
    first = kit.ledger.request(kernel_id="k1", count=4)
    kit.clock.advance(10)
    waiting = kit.ledger.request(kernel_id="k2", count=3)
    assert waiting.state is QUEUED
    asked_at = kit.clock.now()

    kit.clock.advance(30.5)
    before = kit.ledger.version()
    seq = kit.ledger.events()[-1].seq
    released = kit.ledger.release(first.id, reason="user")
    assert kit.ledger.version() == before + 1  # one transaction: release and grant together

    assert released.state is RELEASED
    assert released.ended_at == kit.clock.now()
    assert released.end_reason == "user"
    granted = kit.ledger.allocation(waiting.id)
    assert granted.state is GRANTED
    assert granted.position is None
    assert granted.created_at == asked_at
    assert granted.granted_at == asked_at + 30.5
    assert len(granted.gpus) == 3

    new_events = kit.ledger.events(since=seq)
    assert [e.kind for e in new_events] == ["released", "granted"]
    assert new_events[0].allocation_id == first.id
    assert new_events[1].allocation_id == waiting.id
    assert new_events[1].kernel_id == "k2"
    assert new_events[1].detail["waited_s"] == pytest.approx(30.5)
    assert new_events[1].detail["gpus"] == list(granted.gpus)
    assert all(e.at == kit.clock.now() for e in new_events)


def test_release_is_idempotent(kit: Kit) -> None:
    kit.node("node-a")
    kit.kernel("k1")
    alloc = kit.ledger.request(kernel_id="k1", count=1)
    kit.clock.advance(1)
    once = kit.ledger.release(alloc.id, reason="first")
    version = kit.ledger.version()
    kit.clock.advance(1)
    twice = kit.ledger.release(alloc.id, reason="second")
    assert twice == once
    assert twice.state is RELEASED
    assert twice.end_reason == "first"
    assert kit.ledger.version() == version
    assert [e.kind for e in kit.ledger.events()].count("released") == 1
    assert kit.ledger.holders() == {}


def test_a_release_its_check_refuses_writes_nothing(kit: Kit) -> None:
    kit.node("node-a")
    kit.kernel("k1")
    kit.kernel("k2")
    held = kit.ledger.request(kernel_id="k1", count=4)
    waiting = kit.ledger.request(kernel_id="k2", count=1)
    version, events = kit.ledger.version(), len(kit.ledger.events())
    seen = []

    class Refused(Exception):
        pass

    def refuse(alloc: object) -> None:
        seen.append(alloc)
        raise Refused

    with pytest.raises(Refused):
        kit.ledger.release(held.id, reason="not yours", check=refuse)
    assert seen == [held]  # the allocation as the release read it
    assert kit.ledger.version() == version and len(kit.ledger.events()) == events
    assert kit.ledger.allocation(held.id).state is GRANTED
    assert kit.ledger.allocation(waiting.id).state is QUEUED
    # the state in memory was kept as it was: the next release grants the waiting request
    kit.ledger.release(held.id, reason="done", check=seen.append)
    assert kit.ledger.allocation(waiting.id).state is GRANTED


def test_a_kernel_that_held_and_released_asks_again_as_new(kit: Kit) -> None:
    """The ledger knows in memory which kernels hold or wait: one that released everything is
    served a new request, one that holds is told so (its allocation, or a conflict)."""
    kit.node("node-a")
    kit.kernel("k1")
    first = kit.ledger.request(kernel_id="k1", count=1)
    assert kit.ledger.request(kernel_id="k1", count=1).id == first.id
    with pytest.raises(Conflict):
        kit.ledger.request(kernel_id="k1", count=2)
    kit.ledger.release(first.id, reason="done")
    again = kit.ledger.request(kernel_id="k1", count=2)
    assert again.id != first.id and again.state is GRANTED
    with pytest.raises(Conflict):
        kit.ledger.request(kernel_id="k1", count=1)


def test_cancel_a_queued_request(kit: Kit) -> None:
    kit.node("node-a")
    for kid in ("k1", "k2", "k3"):
        kit.kernel(kid)
    kit.ledger.request(kernel_id="k1", count=4)
    a = kit.ledger.request(kernel_id="k2", count=1)
    b = kit.ledger.request(kernel_id="k3", count=1)
    assert (a.position, b.position) == (1, 2)

    kit.clock.advance(3)
    cancelled = kit.ledger.release(a.id, reason="changed my mind")
    assert cancelled.state is CANCELLED
    assert cancelled.gpus == ()
    assert cancelled.granted_at is None
    assert cancelled.ended_at == kit.clock.now()
    assert cancelled.end_reason == "changed my mind"
    assert cancelled.position is None
    assert cancelled.waiting_reason is None
    assert [(q.id, q.position) for q in kit.ledger.queue()] == [(b.id, 1)]
    assert kit.ledger.events()[-1].kind == "cancelled"
    # the kernel may ask again after cancelling
    again = kit.ledger.request(kernel_id="k2", count=2)
    assert again.id != a.id
    assert again.position == 2


def test_release_kernel(kit: Kit) -> None:
    kit.node("node-a")
    kit.kernel("k1")
    kit.kernel("k2")
    mine = kit.ledger.request(kernel_id="k1", count=3)
    theirs = kit.ledger.request(kernel_id="k2", count=2)
    assert theirs.state is QUEUED

    ended = kit.ledger.release_kernel("k1", reason="kernel restarted")
    assert [(a.id, a.state, a.end_reason) for a in ended] == [
        (mine.id, RELEASED, "kernel restarted")
    ]
    assert kit.ledger.kernel("k1").kernel_id == "k1"  # the kernel itself stays
    assert kit.ledger.allocation(theirs.id).state is GRANTED
    assert kit.ledger.release_kernel("k1", reason="again") == []
    assert kit.ledger.allocations(kernel_id="k1") == []
    assert [a.id for a in kit.ledger.allocations(kernel_id="k1", active=False)] == [mine.id]


def test_forget_kernel_ends_allocations_and_deletes_the_kernel(kit: Kit) -> None:
    kit.node("node-a")
    kit.kernel("k1")
    kit.kernel("k2")
    mine = kit.ledger.request(kernel_id="k1", count=4)
    theirs = kit.ledger.request(kernel_id="k2", count=4)

    ended = kit.ledger.forget_kernel("k1", reason="kernel died")
    assert [(a.id, a.state) for a in ended] == [(mine.id, RELEASED)]
    with pytest.raises(NotFound):
        kit.ledger.kernel("k1")
    assert kit.ledger.kernel_by_token_hash("hash-k1") is None
    assert kit.ledger.kernel_by_token_hash("hash-k2") is not None
    assert [k.kernel_id for k in kit.ledger.kernels()] == ["k2"]
    history = kit.ledger.allocation(mine.id)
    assert history.state is RELEASED
    assert history.end_reason == "kernel died"
    assert kit.ledger.allocation(theirs.id).state is GRANTED
    kinds = [e.kind for e in kit.ledger.events()]
    assert kinds[-3:] == ["released", "kernel_forgotten", "granted"]
    with pytest.raises(NotFound):
        kit.ledger.request(kernel_id="k1", count=1)


def test_forget_a_queued_kernel_cancels_its_request(kit: Kit) -> None:
    kit.node("node-a")
    kit.kernel("k1")
    kit.kernel("k2")
    kit.ledger.request(kernel_id="k1", count=4)
    waiting = kit.ledger.request(kernel_id="k2", count=1)
    ended = kit.ledger.forget_kernel("k2", reason="gone")
    assert [(a.id, a.state) for a in ended] == [(waiting.id, CANCELLED)]
    assert kit.ledger.queue() == []


def test_reconcile_releases_dead_kernels_and_serves_the_queue(kit: Kit) -> None:
    kit.node("node-a")
    kit.node("node-b", (1, A100))
    kit.kernel("dead", pid=101)
    kit.kernel("alive", pid=102)
    kit.kernel("other-node", node="node-b", pid=103)
    held = kit.ledger.request(kernel_id="dead", count=4)
    waiting = kit.ledger.request(kernel_id="alive", count=2)
    kit.ledger.request(kernel_id="other-node", count=1)
    assert waiting.state is QUEUED

    asked: list[KernelRecord] = []

    def is_alive(record: KernelRecord) -> bool:
        asked.append(record)
        return record.pid != 101

    gone = kit.ledger.reconcile("node-a", is_alive, reason="process vanished")
    assert gone == ["dead"]
    assert sorted(k.kernel_id for k in asked) == ["alive", "dead"]  # only node-a's kernels
    assert kit.ledger.allocation(held.id).state is RELEASED
    assert kit.ledger.allocation(held.id).end_reason == "process vanished"
    assert kit.ledger.allocation(waiting.id).state is GRANTED
    assert sorted(k.kernel_id for k in kit.ledger.kernels()) == ["alive", "other-node"]
    assert kit.ledger.reconcile("node-a", is_alive, reason="again") == []


def test_reconcile_leaves_a_kernel_its_server_relaunched_while_it_was_judged(kit: Kit) -> None:
    # found by the crash soak (seed 1313): another server's reconcile judged a restarting
    # kernel by its old, dead process and then forgot the record its restart had just written
    kit.node("node-a")
    kit.kernel("restarting", pid=101)
    held = kit.ledger.request(kernel_id="restarting", count=1)
    kit.ledger.update_kernel("restarting", keep_on_restart=True)

    def is_alive(record: KernelRecord) -> bool:
        # the old process is gone, and meanwhile its server launches the kernel again
        relaunch = replace(record, pid=None, keep_on_restart=False)
        kit.ledger.register_kernel(relaunch, token_hash="hash-relaunched")
        return False

    assert kit.ledger.reconcile("node-a", is_alive, reason="process vanished") == []
    assert kit.ledger.kernel_by_token_hash("hash-relaunched") is not None
    assert kit.ledger.allocation(held.id).state is GRANTED
    # judged again on its new record, as the next pass does
    gone = kit.ledger.reconcile("node-a", lambda record: False, reason="process vanished")
    assert gone == ["restarting"]


def test_sync_inventory_marks_a_vanished_gpu_absent(kit: Kit) -> None:
    devices = kit.node("node-a")
    for kid in ("k1", "k2", "k3"):
        kit.kernel(kid)
    held = kit.ledger.request(kernel_id="k1", count=2)
    assert held.gpus == (devices[0].uuid, devices[1].uuid)
    lost = devices[1].uuid

    kit.ledger.sync_inventory("node-a", [d for d in devices if d.uuid != lost])
    assert lost not in {g.uuid for g in kit.ledger.gpus("node-a")}
    absent = {g.uuid: g for g in kit.ledger.gpus("node-a", include_absent=True)}
    assert absent[lost].present is False
    assert kit.ledger.events()[-1].kind == "gpu_lost"
    assert kit.ledger.events()[-1].detail == {"gpu": lost, "node": "node-a"}
    # the existing grant still shows it
    assert kit.ledger.allocation(held.id).gpus == held.gpus
    assert kit.ledger.holders()[lost].id == held.id

    with pytest.raises(Unsatisfiable) as err:
        kit.ledger.request(kernel_id="k2", count=4)
    assert err.value.reason == "too_many"

    kit.ledger.release(held.id, reason="done")
    got = kit.ledger.request(kernel_id="k2", count=3)
    assert got.state is GRANTED
    assert lost not in got.gpus
    late = kit.ledger.request(kernel_id="k3", count=1)
    assert late.state is QUEUED  # the vanished GPU is free but never granted

    # a second sync with the same devices changes nothing
    version = kit.ledger.version()
    kit.ledger.sync_inventory("node-a", [d for d in devices if d.uuid != lost])
    assert kit.ledger.version() == version


def test_sync_inventory_adds_gpus_and_serves_the_queue(kit: Kit) -> None:
    kit.node("node-a", (1, A100))
    kit.kernel("k1")
    kit.kernel("k2")
    kit.ledger.request(kernel_id="k1", count=1)
    waiting = kit.ledger.request(kernel_id="k2", count=1)
    assert waiting.state is QUEUED
    kit.node("node-a", (2, A100))
    assert kit.ledger.allocation(waiting.id).gpus == ("GPU-node-a-1",)


def test_sync_inventory_rejects_gpus_of_another_node(kit: Kit) -> None:
    with pytest.raises(InvalidRequest):
        kit.ledger.sync_inventory("node-a", make_gpus("node-b", (1, A100)))
    assert kit.ledger.gpus(include_absent=True) == []


# -- errors -----------------------------------------------------------------------------------


def test_same_request_again_returns_the_existing_allocation(kit: Kit) -> None:
    kit.node("node-a")
    kit.kernel("k1")
    kit.kernel("k2")
    first = kit.ledger.request(kernel_id="k1", count=2, model="A100")
    version = kit.ledger.version()
    again = kit.ledger.request(kernel_id="k1", count=2, model=" A100 ")
    assert again == first
    assert kit.ledger.version() == version
    queued = kit.ledger.request(kernel_id="k2", count=3)
    assert kit.ledger.request(kernel_id="k2", count=3) == queued


def test_conflict_when_asking_for_a_different_count(kit: Kit) -> None:
    kit.node("node-a")
    kit.kernel("k1")
    kit.kernel("k2")
    held = kit.ledger.request(kernel_id="k1", count=2)
    version = kit.ledger.version()
    with pytest.raises(Conflict) as err:
        kit.ledger.request(kernel_id="k1", count=3)
    assert err.value.reason == "already_allocated"
    assert "holds 2 GPUs" in err.value.message
    with pytest.raises(Conflict):
        kit.ledger.request(kernel_id="k1", count=2, model="A100")  # another model
    waiting = kit.ledger.request(kernel_id="k2", count=4)
    assert waiting.state is QUEUED
    with pytest.raises(Conflict) as err:
        kit.ledger.request(kernel_id="k2", count=1)
    assert "is waiting for 4 GPUs" in err.value.message
    assert kit.ledger.version() == version + 1  # only k2's request changed anything
    assert [a.id for a in kit.ledger.allocations()] == [held.id, waiting.id]


@pytest.mark.parametrize(
    ("setup", "count", "model", "reason"),
    [
        ("none", 1, None, "no_gpus"),
        ("other-node", 1, None, "no_gpus"),
        ("all-absent", 1, None, "no_gpus"),
        ("mixed", 1, "V100", "unknown_model"),
        ("mixed", 7, None, "too_many"),
        ("mixed", 3, "H100", "too_many"),
        ("mixed", 5, "a100", "too_many"),
    ],
)
def test_unsatisfiable(kit: Kit, setup: str, count: int, model: str | None, reason: str) -> None:
    if setup == "mixed":
        kit.node("node-a", (4, A100), (2, H100))
    elif setup == "other-node":
        kit.node("node-b")
    elif setup == "all-absent":
        kit.node("node-a")
        kit.ledger.sync_inventory("node-a", [])
    kit.kernel("k1")
    version = kit.ledger.version()
    with pytest.raises(Unsatisfiable) as err:
        kit.ledger.request(kernel_id="k1", count=count, model=model)
    assert err.value.reason == reason
    assert isinstance(err.value, InvalidRequest)
    assert kit.ledger.version() == version
    assert kit.ledger.allocations(active=False) == []


@pytest.mark.parametrize("count", [0, -1, True, False, 1.5, "2", None])
def test_invalid_count(kit: Kit, count: object) -> None:
    kit.node("node-a")
    kit.kernel("k1")
    version = kit.ledger.version()
    with pytest.raises(InvalidRequest) as err:
        kit.ledger.request(kernel_id="k1", count=count)  # type: ignore[arg-type]
    assert not isinstance(err.value, Unsatisfiable)
    assert err.value.reason == "invalid"
    assert kit.ledger.version() == version
    assert kit.ledger.allocations(active=False) == []


@pytest.mark.parametrize("model", ["", "   "])
def test_invalid_model(kit: Kit, model: str) -> None:
    kit.node("node-a")
    kit.kernel("k1")
    with pytest.raises(InvalidRequest):
        kit.ledger.request(kernel_id="k1", count=1, model=model)


def test_not_found(kit: Kit) -> None:
    kit.node("node-a")
    with pytest.raises(NotFound) as err:
        kit.ledger.request(kernel_id="nobody", count=1)
    assert err.value.reason == "no_kernel"
    with pytest.raises(NotFound) as err:
        kit.ledger.kernel("nobody")
    assert err.value.reason == "no_kernel"
    with pytest.raises(NotFound) as err:
        kit.ledger.allocation(999)
    assert err.value.reason == "no_allocation"
    with pytest.raises(NotFound) as err:
        kit.ledger.release(999, reason="x")
    assert err.value.reason == "no_allocation"
    with pytest.raises(NotFound):
        kit.ledger.update_kernel("nobody", pid=1)
    assert isinstance(err.value, LedgerError)


# -- nodes, persistence, versions and events --------------------------------------------------


def test_a_kernel_never_gets_gpus_of_another_node(kit: Kit) -> None:
    kit.node("node-a", (2, A100))
    kit.node("node-b", (4, A100))
    for kid in ("a1", "a2", "a3"):
        kit.kernel(kid, node="node-a")
    kit.kernel("b1", node="node-b")
    kit.kernel("b2", node="node-b")

    a1 = kit.ledger.request(kernel_id="a1", count=2)
    assert set(a1.gpus) == {"GPU-node-a-0", "GPU-node-a-1"}
    a2 = kit.ledger.request(kernel_id="a2", count=1)
    assert a2.state is QUEUED  # although node-b has four free GPUs
    with pytest.raises(Unsatisfiable) as err:
        kit.ledger.request(kernel_id="a3", count=3)
    assert err.value.reason == "too_many"

    b1 = kit.ledger.request(kernel_id="b1", count=4)
    assert b1.node == "node-b"
    assert all(g.startswith("GPU-node-b-") for g in b1.gpus)
    b2 = kit.ledger.request(kernel_id="b2", count=1)
    assert (a2.position, b2.position) == (1, 1)  # positions count per node

    kit.ledger.release(b1.id, reason="done")
    assert kit.ledger.allocation(a2.id).state is QUEUED
    assert kit.ledger.allocation(b2.id).gpus == ("GPU-node-b-0",)
    kit.ledger.release(a1.id, reason="done")
    assert kit.ledger.allocation(a2.id).gpus == ("GPU-node-a-0",)


def test_everything_survives_reopening_the_store(kit: Kit) -> None:
    kit.node("node-a")
    kit.node("node-b", (2, H100))
    kit.kernel("k1", pid=10, pid_started_at=123.5, kernel_name="python3-4gpu", path="a.ipynb")
    kit.kernel("k2", user="bob", keep_on_restart=True)
    kit.kernel("k3", user="carol")
    kit.kernel("k4", user="dave")
    kit.kernel("kb", node="node-b")
    granted = kit.ledger.request(kernel_id="k1", count=3)
    kit.clock.advance(1)
    q1 = kit.ledger.request(kernel_id="k2", count=2)
    kit.clock.advance(1)
    q2 = kit.ledger.request(kernel_id="k3", count=1)
    q3 = kit.ledger.request(kernel_id="k4", count=4)
    on_b = kit.ledger.request(kernel_id="kb", count=1, model="H100")
    done = kit.ledger.release(on_b.id, reason="finished")
    kit.ledger.sync_inventory("node-b", make_gpus("node-b", (1, H100)))

    def snapshot() -> dict[str, object]:
        return {
            "allocations": kit.ledger.allocations(active=False),
            "queue": kit.ledger.queue(),
            "kernels": kit.ledger.kernels(),
            "gpus": kit.ledger.gpus(include_absent=True),
            "holders": kit.ledger.holders(),
            "events": kit.ledger.events(),
            "version": kit.ledger.version(),
        }

    before = snapshot()
    assert [(a.id, a.position) for a in before["queue"]] == [(q1.id, 1), (q2.id, 2), (q3.id, 3)]

    kit.reopen()
    after = snapshot()
    assert after == before
    k1 = kit.ledger.kernel("k1")
    assert (k1.pid, k1.pid_started_at, k1.kernel_name, k1.path) == (
        10,
        123.5,
        "python3-4gpu",
        "a.ipynb",
    )
    assert kit.ledger.kernel("k2").keep_on_restart is True
    assert kit.ledger.kernel_by_token_hash("hash-k3") == kit.ledger.kernel("k3")
    assert kit.ledger.allocation(done.id).state is RELEASED

    # the reopened ledger carries on where the old one stopped, in the same order
    kit.ledger.release(granted.id, reason="done")
    assert kit.ledger.allocation(q1.id).state is GRANTED
    assert kit.ledger.allocation(q2.id).state is GRANTED
    assert [(a.id, a.position) for a in kit.ledger.queue()] == [(q3.id, 1)]


def test_version_grows_with_changes_but_not_with_reads(kit: Kit) -> None:
    v0 = kit.ledger.version()
    kit.node("node-a")
    v1 = kit.ledger.version()
    assert v1 > v0
    kit.kernel("k1")
    v2 = kit.ledger.version()
    assert v2 > v1

    alloc = kit.ledger.request(kernel_id="k1", count=1)
    v3 = kit.ledger.version()
    assert v3 > v2
    # reads of every kind
    kit.ledger.gpus()
    kit.ledger.gpus("node-a", include_absent=True)
    kit.ledger.holders()
    kit.ledger.kernel("k1")
    kit.ledger.kernels()
    kit.ledger.kernel_by_token_hash("hash-k1")
    kit.ledger.allocation(alloc.id)
    kit.ledger.allocations(active=False)
    kit.ledger.queue()
    kit.ledger.events()
    kit.clock.advance(100)
    assert kit.ledger.version() == v3
    # failed writes change nothing either
    with pytest.raises(Conflict):
        kit.ledger.request(kernel_id="k1", count=2)
    with pytest.raises(NotFound):
        kit.ledger.request(kernel_id="nobody", count=1)
    assert kit.ledger.version() == v3

    kit.ledger.update_kernel("k1", pid=42)
    v4 = kit.ledger.version()
    assert v4 > v3
    kit.ledger.release(alloc.id, reason="done")
    assert kit.ledger.version() > v4


def test_events_are_recorded_in_order(kit: Kit) -> None:
    kit.node("node-a", (2, A100))
    kit.kernel("k1")
    kit.kernel("k2")
    kit.clock.advance(1)
    a = kit.ledger.request(kernel_id="k1", count=2)
    kit.clock.advance(1)
    b = kit.ledger.request(kernel_id="k2", count=1)
    kit.clock.advance(1)
    kit.ledger.release(a.id, reason="done")
    kit.clock.advance(1)
    kit.ledger.forget_kernel("k2", reason="gone")

    evs = kit.ledger.events()
    assert [e.seq for e in evs] == sorted(e.seq for e in evs)
    assert len({e.seq for e in evs}) == len(evs)
    assert [e.at for e in evs] == sorted(e.at for e in evs)
    assert [(e.kind, e.allocation_id, e.kernel_id) for e in evs] == [
        ("gpu_seen", None, None),
        ("gpu_seen", None, None),
        ("kernel_registered", None, "k1"),
        ("kernel_registered", None, "k2"),
        ("requested", a.id, "k1"),
        ("granted", a.id, "k1"),
        ("requested", b.id, "k2"),
        ("released", a.id, "k1"),
        ("granted", b.id, "k2"),
        ("released", b.id, "k2"),
        ("kernel_forgotten", None, "k2"),
    ]
    assert evs[4].detail == {"count": 2, "model": None, "priority_class": "interactive"}
    assert evs[5].detail == {"gpus": list(a.gpus), "waited_s": 0.0, "at_once": True}
    assert evs[7].detail == {"reason": "done", "gpus": list(a.gpus)}
    assert evs[8].detail["waited_s"] == pytest.approx(1.0)
    assert evs[10].detail == {"reason": "gone"}
    # paging
    assert kit.ledger.events(since=evs[5].seq, limit=2) == evs[6:8]
    assert kit.ledger.events(since=evs[-1].seq) == []


# -- inventory changes under waiting and holding requests ---------------------------------------


def test_a_request_made_unsatisfiable_by_a_lost_gpu_does_not_block_the_node(kit: Kit) -> None:
    devices = kit.node("node-a")
    for kid in ("k1", "k2", "k3"):
        kit.kernel(kid)
    small = kit.ledger.request(kernel_id="k1", count=1)
    big = kit.ledger.request(kernel_id="k2", count=4)
    assert big.state is QUEUED
    kit.ledger.sync_inventory("node-a", devices[:3])  # now at most 3 GPUs: k2 can never run
    ended = kit.ledger.allocation(big.id)
    assert ended.state is AllocationState.CANCELLED
    assert ended.end_reason is not None and "node-a has 3 GPU(s)" in ended.end_reason
    kit.ledger.release(small.id, reason="done")
    late = kit.ledger.request(kernel_id="k3", count=1)
    assert late.state is GRANTED  # 3 of 3 GPUs are free


def test_repeating_a_request_after_a_gpu_vanished_returns_the_existing_allocation(
    kit: Kit,
) -> None:
    devices = kit.node("node-a")
    kit.kernel("k1")
    held = kit.ledger.request(kernel_id="k1", count=4)
    kit.ledger.sync_inventory("node-a", devices[:3])
    assert kit.ledger.request(kernel_id="k1", count=4).id == held.id


def test_repeating_a_request_ignores_the_case_of_the_model(kit: Kit) -> None:
    kit.node("node-a")
    kit.kernel("k1")
    held = kit.ledger.request(kernel_id="k1", count=1, model=kit.ledger.gpus()[0].model.upper())
    again = kit.ledger.request(
        kernel_id="k1", count=1, model=held.model.lower() if held.model else None
    )
    assert again.id == held.id


def test_a_gpu_that_moves_to_another_node_is_moved_not_duplicated(kit: Kit) -> None:
    devices = kit.node("node-a")
    moved = [replace(devices[0], node="node-b")]
    kit.ledger.sync_inventory("node-b", moved)
    by_uuid = {g.uuid: g for g in kit.ledger.gpus()}
    assert by_uuid[devices[0].uuid].node == "node-b"
    assert len(kit.ledger.gpus(include_absent=True)) == len(devices)


def _one_holds_two_wait(kit: Kit) -> None:
    """k1 holds node-a's 2 GPUs; k2 and k3 wait for them."""
    kit.node("node-a", (2, A100))
    for name in ("k1", "k2", "k3"):
        kit.kernel(name, user=name)
        kit.ledger.request(kernel_id=name, count=2)


def test_queue_length_counts_without_explaining_the_queue(
    kit: Kit, monkeypatch: pytest.MonkeyPatch
) -> None:
    _one_holds_two_wait(kit)
    kit.ledger.release(kit.ledger.allocations(kernel_id="k3")[0].id, reason="cancelled")
    assert kit.ledger.queue_length() == 1

    def no_view(*args: object) -> None:
        raise AssertionError("the queue was explained to count it")

    monkeypatch.setattr(LedgerCache, "_explain", no_view)
    monkeypatch.setattr(explain, "explain_node", no_view)
    assert kit.ledger.queue_length() == 1


def test_granted_allocations_are_listed_without_explaining_the_queue(
    kit: Kit, monkeypatch: pytest.MonkeyPatch
) -> None:
    _one_holds_two_wait(kit)

    def no_view(*args: object) -> None:
        raise AssertionError("the queue was explained to list grants")

    monkeypatch.setattr(LedgerCache, "_explain", no_view)
    granted = kit.ledger.allocations(state=AllocationState.GRANTED)
    assert [a.kernel_id for a in granted] == ["k1"]
    assert [k.kernel_id for k in kit.ledger.kernels(server_id="srv-1")] == ["k1", "k2", "k3"]
    assert kit.ledger.kernels(server_id="another") == []


def test_a_reader_older_than_the_state_keeps_it(kit: Kit, monkeypatch: pytest.MonkeyPatch) -> None:
    """A read whose snapshot began before a write of this process committed (SQLite) must not
    load the older state: the next write would load it again."""
    kit.node("node-a", (2, A100))
    kit.kernel("k1")
    kit.kernel("k2", user="bob")
    kit.ledger.request(kernel_id="k1", count=2)
    loads: list[int] = []
    real = Ledger._load_state

    def counted(self: Ledger, conn: object, version: int) -> object:
        loads.append(version)
        return real(self, conn, version)  # type: ignore[arg-type]

    monkeypatch.setattr(Ledger, "_load_state", counted)
    with kit.ledger.store.read() as conn:
        read_counter(conn, LEDGER_VERSION)  # the snapshot begins
        kit.ledger.request(kernel_id="k2", count=1)
        kit.ledger._state(conn)
    kit.ledger.request(kernel_id="k1", count=2)  # the same again: no change, no load
    assert loads == []
