"""Requests of the pool (``anywhere``): the ledger's scheduler grants them on any node with room,
in the policy's order, and tells them where they stand cluster-wide. This is how the ledger admits
work a cluster starts where it is told (Kubernetes Jobs and pods), through the public Ledger API
on SQLite and PostgreSQL."""

from __future__ import annotations

import pytest

from jupyter_dlinfra.core.books import ledger_cache
from jupyter_dlinfra.core.errors import InvalidRequest, Unsatisfiable
from jupyter_dlinfra.core.models import POOL, AllocationState
from jupyter_dlinfra.core.scheduling.policy import SchedulingPolicy

from .kit import A100, H100, Kit


@pytest.fixture
def cluster(kit: Kit) -> Kit:
    """Two nodes of four A100s and one of two H100s; the server's own node has no GPUs."""
    kit.node("node-a")
    kit.node("node-b")
    kit.node("node-h", (2, H100))
    return kit


def ask(kit: Kit, name: str, count: int, *, user: str = "alice", **extra: object) -> object:
    kit.kernel(name, node="gateway", user=user)
    return kit.ledger.request(kernel_id=name, count=count, anywhere=True, **extra)  # type: ignore[arg-type]


def test_a_pool_request_is_granted_on_a_node_with_room_and_says_which(cluster: Kit) -> None:
    ledger = cluster.ledger
    first = ask(cluster, "job-1", 3)
    assert first.state is AllocationState.GRANTED and first.placement == POOL
    node = first.node
    assert node in ("node-a", "node-b") and len(first.gpus) == 3
    assert all(u.startswith(f"GPU-{node}-") for u in first.gpus)
    # best fit: a 1-GPU request goes where one GPU is left, not to an empty node
    second = ask(cluster, "job-2", 1)
    assert second.node == node
    # the model asked for decides the nodes
    third = ask(cluster, "job-3", 2, model="H100")
    assert third.node == "node-h" and third.state is AllocationState.GRANTED
    # the row and the kernel record say where it runs
    assert ledger.allocation(third.id).node == "node-h"
    assert ledger.kernel("job-3").node == "node-h"
    granted = [e for e in ledger.events() if e.kind == "granted" and e.allocation_id == third.id]
    assert granted[0].detail["node"] == "node-h"


def test_a_request_no_node_can_hold_is_refused_plainly(cluster: Kit) -> None:
    with pytest.raises(Unsatisfiable, match="the largest node has 4") as too_many:
        ask(cluster, "job-1", 5)
    assert too_many.value.reason == "too_many"
    with pytest.raises(Unsatisfiable, match="no node has GPUs of model 'V100'"):
        ask(cluster, "job-2", 1, model="V100")
    with pytest.raises(InvalidRequest, match="not both"):
        cluster.kernel("k", node="gateway")
        cluster.ledger.request(kernel_id="k", count=1, anywhere=True, cluster_reason="Pending")


def test_waiting_pool_requests_are_told_their_place_reason_and_start(cluster: Kit) -> None:
    ledger, clock = cluster.ledger, cluster.clock
    holders = [ask(cluster, f"hold-{i}", 4, user="carol") for i in range(2)]
    assert {h.node for h in holders} == {"node-a", "node-b"}
    ask(cluster, "big", 4, model="A100")
    ask(cluster, "small", 1, user="bob", model="A100")
    big, small = (ledger.allocations(kernel_id=k)[0] for k in ("big", "small"))
    assert big.state is small.state is AllocationState.QUEUED
    assert (big.position, small.position) == (1, 2)
    assert big.waiting_code == "no_free_gpu"
    assert big.waiting_reason is not None and big.waiting_reason.startswith(
        "waiting for 4 GPUs of model 'A100' on one node: at most 0 free on a node (0 of 8 free"
    )
    # with no history the default holding time (an hour) is assumed, and said
    assert big.estimated_start is not None and big.estimate_basis == "default"
    assert big.estimated_start >= clock.now() + 3600 - 1
    # a node comes free: the head of the queue takes it, the one behind moves up
    clock.advance(60)
    ledger.release(holders[0].id, reason="done")
    now_big = ledger.allocation(big.id)
    now_small = ledger.allocation(small.id)
    assert now_big.state is AllocationState.GRANTED and now_big.node == holders[0].node
    assert now_small.state is AllocationState.QUEUED and now_small.position == 1


def test_pool_requests_follow_the_policys_order_not_arrival(cluster: Kit) -> None:
    ledger = cluster.ledger
    ledger.set_scheduling_policy(SchedulingPolicy(fair_share=True, preemption=False), who="admin")
    hold = [ask(cluster, f"hold-{i}", 4, user="carol") for i in range(2)]
    # alice used GPUs recently; bob never did: bob's later request goes first
    cluster.kernel("past", node="gateway", user="alice")
    past = ledger.request(kernel_id="past", count=2, model="H100", anywhere=True)
    cluster.clock.advance(3600)
    ledger.release(past.id, reason="done")
    alice = ask(cluster, "alice-1", 4, user="alice")
    bob = ask(cluster, "bob-1", 4, user="bob")
    assert (ledger.allocation(bob.id).position, ledger.allocation(alice.id).position) == (1, 2)
    assert ledger.allocation(alice.id).waiting_code in ("no_free_gpu", "fair_share")
    ledger.release(hold[0].id, reason="done")
    assert ledger.allocation(bob.id).state is AllocationState.GRANTED
    assert ledger.allocation(alice.id).state is AllocationState.QUEUED


def test_pool_requests_survive_a_restart_of_the_ledger(cluster: Kit) -> None:
    ask(cluster, "hold-a", 4)
    ask(cluster, "hold-b", 4)
    waiting = ask(cluster, "later", 3)
    assert waiting.state is AllocationState.QUEUED
    kit = cluster.reopen()
    again = kit.ledger.allocation(waiting.id)
    assert again.state is AllocationState.QUEUED and again.placement == POOL
    assert again.position == 1 and again.waiting_code == "no_free_gpu"
    # loaded as a request of the pool: granted on whichever node frees room
    holder = next(
        a for a in kit.ledger.allocations(state=AllocationState.GRANTED) if a.node == "node-b"
    )
    kit.ledger.release(holder.id, reason="done")
    granted = kit.ledger.allocation(waiting.id)
    assert granted.state is AllocationState.GRANTED and granted.node == "node-b"
    assert A100 in {g.model for g in kit.ledger.gpus_of(granted.gpus)}


def test_below_the_explained_head_a_pool_request_is_told_its_place_in_brief(
    cluster: Kit, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ledger_cache, "EXPLAIN_DEPTH", 2)
    for i in range(2):
        ask(cluster, f"hold-{i}", 4, user="carol", model="A100")
    waiting = [ask(cluster, f"wait-{i}", 4, model="A100") for i in range(4)]
    ledger = cluster.ledger
    places = [ledger.allocation(a.id) for a in waiting]
    assert [a.position for a in places] == [1, 2, 3, 4]
    assert [a.estimated_start is not None for a in places] == [True, True, False, False]
    assert places[3].waiting_code == "order"
    assert places[3].waiting_reason == "behind 3 requests for GPUs of any node"
    # the queue's page says the same places
    assert [a.position for a in ledger.queue()] == [1, 2, 3, 4]


def test_a_grant_the_cluster_could_not_start_is_handed_back_and_avoids_that_node(
    cluster: Kit,
) -> None:
    """A pod that never bound on its granted node: the grant is released and asked again at
    the same place in the order, never on that node again while another can hold it."""
    ledger, clock = cluster.ledger, cluster.clock
    first = ask(cluster, "job-1", 4, model="A100")
    ahead = first.node
    other = "node-b" if ahead == "node-a" else "node-a"
    carol = ask(cluster, "carol-1", 4, user="carol", model="A100")
    assert carol.node == other
    clock.advance(30)
    later = ask(cluster, "later", 4, user="bob", model="A100")
    assert later.state is AllocationState.QUEUED and later.position == 1
    clock.advance(120)
    again = ledger.hand_back(first.id, reason="its pod never bound on " + ahead)
    # released, and asked again ahead of the later request (its place is its first request's)
    assert ledger.allocation(first.id).state is AllocationState.RELEASED
    assert again.id != first.id and again.kernel_id == "job-1"
    assert again.state is AllocationState.QUEUED and again.avoid == (ahead,)
    assert again.created_at == first.created_at and again.position == 1
    assert again.waiting_reason is not None and f"not on {ahead}" in again.waiting_reason
    # the freed node goes to the request behind it, not back to the one that could not use it
    assert ledger.allocation(later.id).state is AllocationState.GRANTED
    assert ledger.allocation(later.id).node == ahead
    told = [e for e in ledger.events() if e.kind == "requested" and e.allocation_id == again.id]
    assert told[0].detail["handed_back"] == first.id and told[0].detail["avoid"] == [ahead]
    # the avoided node is remembered across a restart of the ledger
    kit = cluster.reopen()
    assert kit.ledger.allocation(again.id).avoid == (ahead,)
    kit.ledger.release(kit.ledger.allocation(later.id).id, reason="done")
    assert kit.ledger.allocation(again.id).state is AllocationState.QUEUED
    kit.ledger.release(carol.id, reason="done")
    moved = kit.ledger.allocation(again.id)
    assert moved.state is AllocationState.GRANTED and moved.node == other
    # handed back from the only other node too: it may come back to the first, not to the last
    last = kit.ledger.hand_back(moved.id, reason="its pod never bound on " + other)
    assert last.avoid == (other,)
    assert last.state is AllocationState.GRANTED and last.node == ahead


def test_only_a_granted_pool_request_is_handed_back(cluster: Kit) -> None:
    ledger = cluster.ledger
    cluster.kernel("pinned", node="node-a")
    pinned = ledger.request(kernel_id="pinned", count=1)
    assert ledger.hand_back(pinned.id, reason="x").id == pinned.id
    assert ledger.allocation(pinned.id).state is AllocationState.GRANTED
    mine = ask(cluster, "job-1", 1)
    ledger.release(mine.id, reason="done")
    assert ledger.hand_back(mine.id, reason="x").state is AllocationState.RELEASED
    # a node of a model it does not ask for is never a reason to keep avoiding
    h = ask(cluster, "h", 2, model="H100")
    back = ledger.hand_back(h.id, reason="x")
    assert back.avoid == () and back.state is AllocationState.GRANTED and back.node == "node-h"


def test_gpus_others_pods_use_are_never_granted_while_they_do(cluster: Kit) -> None:
    """What the cluster runs besides the work the ledger admitted takes GPUs out of its nodes:
    at once as far as they are free, else as the ledger's grants there end."""
    ledger = cluster.ledger
    ours = ask(cluster, "ours", 2, model="A100")
    node = ours.node
    other = "node-b" if node == "node-a" else "node-a"
    ask(cluster, "carol", 4, user="carol", model="A100")  # fills the other A100 node
    version = cluster.store.version()
    assert ledger.sync_outside({node: (3, ["team-x/train-0", "team-x/train-1"])}) is True
    # two of the node's GPUs were free: both are kept out now, the third once ours ends
    seen = ledger.outside()[node]
    assert (seen.gpus, len(seen.taken)) == (3, 2)
    assert seen.pods == ("team-x/train-0", "team-x/train-1")
    assert not set(seen.taken) & set(ours.gpus)
    told = [e for e in ledger.events() if e.kind == "outside_use"]
    assert told[-1].detail == {"node": node, "gpus": 3, "pods": list(seen.pods)}
    # the same picture again writes nothing
    version = cluster.store.version()
    assert ledger.sync_outside({node: (3, ["team-x/train-1", "team-x/train-0"])}) is False
    assert cluster.store.version() == version
    # no A100 is free for the ledger: a request of the pool and one pinned to the node wait
    waiting = ask(cluster, "waiting", 1, model="A100")
    assert waiting.state is AllocationState.QUEUED
    assert (
        waiting.waiting_reason is not None and "at most 0 free on a node" in waiting.waiting_reason
    )
    ledger.release(ours.id, reason="done")
    assert len(ledger.outside()[node].taken) == 3
    granted = ledger.allocation(waiting.id)
    assert granted.state is AllocationState.GRANTED and granted.node == node
    assert not set(granted.gpus) & set(ledger.outside()[node].taken)
    # kept across a restart of the ledger
    kit = cluster.reopen()
    again = kit.ledger.outside()[node]
    assert (again.gpus, again.pods, len(again.taken)) == (3, seen.pods, 3)
    # the others' pods end: their GPUs are the ledger's again, and waiting work takes them
    later = ask(kit, "later", 3, model="A100")
    assert later.state is AllocationState.QUEUED
    assert kit.ledger.sync_outside({other: (0, [])}) is True
    assert kit.ledger.outside() == {}
    back = kit.ledger.allocation(later.id)
    assert back.state is AllocationState.GRANTED and back.node == node


def test_whole_nodes_are_granted_together_and_wait_as_one_request(cluster: Kit) -> None:
    """A distributed job's request (``per_node``): the same GPUs on different nodes, all at
    once; while it waits, one place and a reason about nodes; kept across a restart."""
    ledger = cluster.ledger
    gang = ask(cluster, "job-1", 4, per_node=2)
    assert gang.state is AllocationState.GRANTED and gang.per_node == 2
    on = {g.node for g in ledger.gpus_of(gang.gpus)}
    # best fit, node by node: the H100 node's 2 and 2 of an A100 node's 4
    assert len(on) == 2 and "node-h" in on and gang.node in on
    # a gang of 2 x 3 waits, holding nothing: one A100 node has 4 free, the other 2
    big = ask(cluster, "job-2", 6, per_node=3, user="bob")
    assert big.state is AllocationState.QUEUED and big.gpus == ()
    assert big.position == 1 and big.waiting_code == "no_free_gpu"
    assert big.waiting_reason == (
        "waiting for 2 nodes with 3 free GPUs each: 1 node has that many free (6 of 10 free in all)"
    )
    kit = cluster.reopen()
    kept = kit.ledger.allocation(big.id)
    assert kept.per_node == 3 and kept.state is AllocationState.QUEUED
    kit.ledger.release(gang.id, reason="done")
    granted = kit.ledger.allocation(big.id)
    assert granted.state is AllocationState.GRANTED
    per_node: dict[str, int] = {}
    for g in kit.ledger.gpus_of(granted.gpus):
        per_node[g.node] = per_node.get(g.node, 0) + 1
    assert sorted(per_node.values()) == [3, 3]


def test_whole_nodes_that_cannot_exist_are_refused_with_what_there_is(cluster: Kit) -> None:
    with pytest.raises(
        Unsatisfiable, match=r"asked for 3 nodes of 2 GPUs of model 'A100' but only 2 nodes have 2$"
    ):
        ask(cluster, "job-1", 6, per_node=2, model="A100")
    with pytest.raises(Unsatisfiable, match="the largest node has 4"):
        ask(cluster, "job-2", 10, per_node=5)
    with pytest.raises(InvalidRequest, match="do not split into whole nodes of 4"):
        ask(cluster, "job-3", 6, per_node=4)
    cluster.kernel("mine", node="node-a")
    with pytest.raises(InvalidRequest, match="whole nodes are asked of the pool"):
        cluster.ledger.request(kernel_id="mine", count=4, per_node=2)
