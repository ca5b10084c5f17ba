"""Requests a cluster's scheduler places (a gateway's pod kernels): the ledger mirrors them."""

from __future__ import annotations

import pytest

from jupyter_dlinfra.core.books.ledger import QUOTA_WAIT
from jupyter_dlinfra.core.errors import Conflict, InvalidRequest
from jupyter_dlinfra.core.models import AllocationState
from jupyter_dlinfra.core.scheduling.policy import SchedulingPolicy

from .kit import Kit

GRANTED = AllocationState.GRANTED
QUEUED = AllocationState.QUEUED

INSUFFICIENT = "0/2 nodes are available: 2 Insufficient nvidia.com/gpu."


def test_a_placed_request_waits_with_the_clusters_reason_even_if_gpus_are_free(kit: Kit) -> None:
    kit.node("node-a")
    kit.kernel("k1", node="gateway")
    alloc = kit.ledger.request_placed(kernel_id="k1", count=2, reason="creating a pod")
    # the ledger does not grant it from its own inventory: Kubernetes places it
    assert alloc.state is QUEUED
    assert alloc.placement == "cluster"
    assert alloc.waiting_code == "cluster"
    assert alloc.waiting_reason == "creating a pod"
    assert alloc.position == 1
    assert kit.ledger.note_placement(alloc.id, INSUFFICIENT) is True
    assert kit.ledger.note_placement(alloc.id, INSUFFICIENT) is False  # unchanged: no write
    (queued,) = kit.ledger.queue()
    assert queued.id == alloc.id and queued.waiting_reason == INSUFFICIENT


def test_a_request_larger_than_any_node_is_recorded_not_refused(kit: Kit) -> None:
    kit.node("node-a")
    kit.kernel("k1", node="gateway")
    alloc = kit.ledger.request_placed(kernel_id="k1", count=64, reason="creating a pod")
    assert alloc.state is QUEUED and alloc.count == 64


def test_grant_placed_holds_the_named_gpus_on_the_pods_node(kit: Kit) -> None:
    devices = kit.node("node-a")
    kit.kernel("k1", node="gateway")
    alloc = kit.ledger.request_placed(kernel_id="k1", count=2, reason="creating a pod")
    # the user's own list shows it waiting (kept in memory from here on)
    assert [a.state for a in kit.ledger.allocations_page(user="alice", limit=5)[0]] == [QUEUED]
    kit.clock.advance(3)
    granted = kit.ledger.grant_placed(
        alloc.id, node="node-a", gpu_uuids=[devices[2].uuid, devices[3].uuid]
    )
    assert granted.state is GRANTED
    assert kit.ledger.allocations_page(user="alice", limit=5)[0] == [granted]
    assert granted.node == "node-a"
    assert set(granted.gpus) == {devices[2].uuid, devices[3].uuid}
    assert granted.granted_at == kit.clock.now()
    # the kernel now lives where its pod runs, and the GPUs are held for everyone to see
    assert kit.ledger.kernel("k1").node == "node-a"
    assert set(kit.ledger.holders()) == {devices[2].uuid, devices[3].uuid}
    # granting again changes nothing
    assert kit.ledger.grant_placed(alloc.id, node="node-a") == granted


def test_grant_placed_picks_free_gpus_when_the_cluster_does_not_say_which(kit: Kit) -> None:
    devices = kit.node("node-a")
    kit.kernel("k1")
    kit.kernel("k2", node="gateway")
    mine = kit.ledger.request(kernel_id="k1", count=1)
    placed = kit.ledger.request_placed(kernel_id="k2", count=2, reason="creating a pod")
    granted = kit.ledger.grant_placed(placed.id, node="node-a", gpu_uuids=[mine.gpus[0]])
    # a GPU the ledger already gave away is never handed out twice
    assert mine.gpus[0] not in granted.gpus
    assert set(granted.gpus) == {devices[1].uuid, devices[2].uuid}


def test_placed_requests_do_not_block_the_ledgers_own_queue(kit: Kit) -> None:
    kit.node("node-a")
    kit.kernel("pod", node="gateway")
    kit.kernel("local")
    kit.ledger.request_placed(kernel_id="pod", count=4, reason="creating a pod")
    local = kit.ledger.request(kernel_id="local", count=4)
    assert local.state is GRANTED


def test_a_kernel_has_one_placed_request_at_a_time(kit: Kit) -> None:
    kit.node("node-a")
    kit.kernel("k1", node="gateway")
    first = kit.ledger.request_placed(kernel_id="k1", count=2, reason="creating a pod")
    again = kit.ledger.request_placed(kernel_id="k1", count=2, reason="creating a pod")
    assert again.id == first.id
    with pytest.raises(Conflict):
        kit.ledger.request_placed(kernel_id="k1", count=1, reason="creating a pod")
    with pytest.raises(InvalidRequest):
        kit.ledger.request_placed(kernel_id="k1", count=0, reason="x")


def test_releasing_a_placed_request_ends_it(kit: Kit) -> None:
    kit.node("node-a")
    kit.kernel("k1", node="gateway")
    alloc = kit.ledger.request_placed(kernel_id="k1", count=2, reason="creating a pod")
    ended = kit.ledger.release(alloc.id, reason="the GPU pod ended")
    assert ended.state is AllocationState.CANCELLED
    assert kit.ledger.queue() == []
    # a note after the end changes nothing
    assert kit.ledger.note_placement(alloc.id, INSUFFICIENT) is False


def test_quota_block_counts_grants_and_the_placed_requests_whose_pods_exist(kit: Kit) -> None:
    kit.node("node-a", (8, "A100"))
    kit.ledger.set_scheduling_policy(
        SchedulingPolicy(user_quotas={"alice": 3}, group_quotas={"ml": 4}), who="admin"
    )
    kit.ledger.groups_of = lambda user: ["ml"] if user in ("alice", "bob") else []
    for kernel_id, user in (("a1", "alice"), ("a2", "alice"), ("b1", "bob"), ("c1", "carol")):
        kit.kernel(kernel_id, node="gateway", user=user)
    block = kit.ledger.cluster_quota_block
    assert block("alice", 3) is None
    assert block("alice", 4) == "alice holds 0 GPU(s) of a quota of 3"
    first = kit.ledger.request_placed(kernel_id="a1", count=2, reason="creating a pod")
    # its pod exists (placed), or it is granted: either way it counts
    assert block("alice", 2, placed=[first.id]) == "alice holds 2 GPU(s) of a quota of 3"
    assert block("alice", 2) is None  # not placed, not granted: it counts for nothing yet
    kit.ledger.grant_placed(first.id, node="node-a")
    assert block("alice", 1) is None
    assert block("alice", 2) == "alice holds 2 GPU(s) of a quota of 3"
    # the group counts its members: alice's 2 and bob's request
    assert block("bob", 2) is None
    assert block("bob", 3) == "group ml holds 2 GPU(s) of a quota of 4"
    # carol has no quota and no group
    assert block("carol", 8) is None


def test_a_placed_request_held_back_by_a_quota_waits_with_the_code_quota(kit: Kit) -> None:
    kit.node("node-a")
    kit.kernel("k1", node="gateway")
    alloc = kit.ledger.request_placed(
        kernel_id="k1", count=2, reason=QUOTA_WAIT + "alice holds 2 GPU(s) of a quota of 2"
    )
    assert (alloc.waiting_code, alloc.waiting_reason) == (
        "quota",
        "over quota: alice holds 2 GPU(s) of a quota of 2",
    )
    kit.ledger.note_placement(alloc.id, "creating a pod with 2 GPUs")
    assert kit.ledger.allocation(alloc.id).waiting_code == "cluster"
