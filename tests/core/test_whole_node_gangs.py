"""Gangs in whole nodes (a distributed job's ``nodes x gpus_per_node``): the same GPUs on each
of that many different nodes, all or nothing, in the queue's order, with reservations,
preemption, the pool's backfill and a reason that says what it waits for."""

from __future__ import annotations

from typing import Any

import pytest

from jupyter_dlinfra.core.errors import InvalidRequest
from jupyter_dlinfra.core.scheduling.explain_pool import estimate_pool, explain_pool
from jupyter_dlinfra.core.scheduling.policy import SchedulingPolicy
from jupyter_dlinfra.core.scheduling.scheduler import Scheduler
from jupyter_dlinfra.core.scheduling.types import Demand

from .test_scheduler import BATCH, H100, LOW, gpus, granted, hold, make, preempted


def shaped(s: Scheduler, rid: int, user: str, nodes: int, per_node: int, **kw: Any) -> Demand:
    demand = Demand(
        id=rid,
        user=user,
        count=nodes * per_node,
        gang=True,
        per_node=per_node,
        klass=kw.pop("klass", BATCH),
        kind="job",
        submitted_at=kw.pop("at", 0.0),
        **kw,
    )
    s.submit(demand)
    return demand


def per_node(s: Scheduler, uuids: tuple[str, ...]) -> dict[str, int]:
    found: dict[str, int] = {}
    for uuid in uuids:
        node = s.node_of([uuid])
        assert node is not None
        found[node] = found.get(node, 0) + 1
    return found


def test_whole_nodes_take_the_same_gpus_on_different_nodes_best_fit() -> None:
    s = make({"n1": 8, "n2": 8, "n3": 4, "n4": 8})
    hold(s, 10, "k", ("n4-0", "n4-1", "n4-2", "n4-3", "n4-4"))  # n4: 3 free, too few
    hold(s, 11, "k", ("n2-0",))  # n2: 7 free, the best fit after n3
    shaped(s, 1, "a", 2, 4)
    (grant,) = s.schedule(1.0).grants
    # n3's 4 are a whole fit, then n2 (7 free) before n1 (8 free); never 8 on one node
    assert per_node(s, grant.gpus) == {"n3": 4, "n2": 4}


def test_a_node_with_room_for_the_whole_gang_still_gets_one_share() -> None:
    s = make({"n1": 16, "n2": 2})
    shaped(s, 1, "a", 2, 4)
    assert s.schedule(1.0).grants == []  # n2 is too small: no 8 on n1
    s.add_gpus(gpus("n3", 4))
    (grant,) = s.schedule(2.0).grants
    assert per_node(s, grant.gpus) == {"n1": 4, "n3": 4}


@pytest.mark.parametrize("reservations", [0, 16])
def test_whole_nodes_are_all_or_nothing(reservations: int) -> None:
    s = make({"n1": 4, "n2": 4, "n3": 4}, reservations=reservations)
    hold(s, 10, "k", ("n1-0",))
    hold(s, 11, "k", ("n2-0",))
    shaped(s, 1, "a", 2, 4)
    assert s.schedule(1.0).grants == []
    assert s.free_total == 10  # nothing taken for half a gang
    s.release(10)
    (grant,) = s.schedule(2.0).grants
    assert per_node(s, grant.gpus) == {"n1": 4, "n3": 4}


def test_a_waiting_gang_keeps_whole_nodes_from_smaller_requests_behind_it() -> None:
    s = make({"n1": 4, "n2": 4}, reservations=4)
    hold(s, 10, "k", ("n1-0",))
    shaped(s, 1, "a", 2, 4, at=0.0)
    s.submit(Demand(id=2, user="b", count=2, klass=BATCH, kind="job", submitted_at=1.0))
    assert s.schedule(2.0).grants == []  # b's 2 would break n2 up
    s.release(10)
    assert per_node(s, granted(s.schedule(3.0))[1]) == {"n1": 4, "n2": 4}


def test_whole_nodes_deep_in_the_queue_are_served_when_they_fit() -> None:
    """Beyond the scan limit, the pool's backfill still finds a gang that fits (its group
    counts nodes with room, not GPUs in all)."""
    s = Scheduler(SchedulingPolicy.from_json({"reservations": 0}), max_scan=1)
    for node in ("n1", "n2", "n3"):
        s.add_gpus(gpus(node, 2))
    s.add_gpus(gpus("h", 2, H100))
    hold(s, 10, "k", ("n1-0", "n1-1", "n2-0", "n2-1", "n3-0", "n3-1"))
    hold(s, 11, "k", ("h-0", "h-1"))
    for rid in range(1, 6):  # ahead of it, waiting for the H100s that stay held
        s.submit(
            Demand(
                id=rid,
                user=f"u{rid}",
                count=2,
                model="H100",
                klass=BATCH,
                kind="job",
                submitted_at=float(rid),
            )
        )
    shaped(s, 9, "g", 2, 2, at=9.0)
    assert s.schedule(10.0).grants == []
    s.release(10)
    out = s.schedule(11.0)
    assert 9 in granted(out) and s.unserved() == []


def test_whole_nodes_preempt_on_as_many_nodes_as_they_need() -> None:
    s = make({"n1": 4, "n2": 4, "n3": 4})
    hold(s, 10, "x", ("n1-0", "n1-1"), klass=LOW, kind="job", at=0.0)
    hold(s, 11, "y", ("n2-0", "n2-1", "n2-2", "n2-3"), klass=LOW, kind="job", at=1.0)
    hold(s, 12, "z", ("n3-0", "n3-1", "n3-2", "n3-3"), klass="interactive", at=1.0)
    shaped(s, 1, "a", 2, 4, at=2.0)
    # n1 needs x's 2, n2 needs y's 4; z is a kernel of a higher class: never a victim
    assert sorted(preempted(s.schedule(3.0))) == [(10, 1), (11, 1)]
    s.release(10)
    s.release(11)
    assert per_node(s, granted(s.schedule(4.0))[1]) == {"n1": 4, "n2": 4}


def test_no_preemption_for_half_a_gang() -> None:
    s = make({"n1": 4, "n2": 4})
    hold(s, 10, "x", ("n1-0",), klass=LOW, kind="job")
    hold(s, 11, "y", ("n2-0",), klass="interactive")
    shaped(s, 1, "a", 2, 4, at=2.0)
    assert preempted(s.schedule(3.0)) == []


def test_check_says_how_many_nodes_are_big_enough() -> None:
    s = make({"n1": 8, "n2": 4})
    d = Demand(id=1, user="a", count=16, gang=True, per_node=8, klass=BATCH, submitted_at=0.0)
    assert s.check(d) == "2 nodes of 8 GPUs of one model asked for, and 1 node here has that many"
    d = Demand(id=2, user="a", count=8, gang=True, per_node=4, klass=BATCH, submitted_at=0.0)
    assert s.check(d) is None


@pytest.mark.parametrize(
    "fields",
    [
        {"count": 6, "per_node": 4, "gang": True},  # does not divide
        {"count": 8, "per_node": 4, "gang": False},  # whole nodes are a gang
        {"count": 8, "per_node": 4, "gang": True, "node": "n1"},  # and of any node
    ],
)
def test_a_malformed_shape_is_refused(fields: dict[str, Any]) -> None:
    s = make({"n1": 8})
    with pytest.raises(InvalidRequest, match="whole nodes"):
        s.submit(Demand(id=1, user="a", klass=BATCH, submitted_at=0.0, **fields))


def test_the_pool_view_tells_a_gang_what_it_waits_for_and_when() -> None:
    s = make({"n1": 4, "n2": 4, "n3": 4})
    hold(s, 10, "x", ("n1-0", "n1-1", "n1-2", "n1-3"), at=0.0)
    hold(s, 11, "y", ("n2-0", "n2-1"), at=0.0)
    d = shaped(s, 1, "a", 2, 4, at=1.0)
    s.schedule(2.0)
    ends = {10: 100.0, 11: 50.0}
    view = explain_pool(s, [d], expected_end=lambda h: ends[h.id], duration=lambda d: 10.0)[1]
    assert view.code == "no_free_gpu"
    assert "2 nodes with 4 free GPUs each: 1 node has" in view.reason, view.reason
    # n2's 2 come back at 50: n2 and n3 then have 4 free each
    starts = estimate_pool(s, [d], lambda h: ends[h.id], lambda d: 10.0)
    assert starts[1].at == 50.0
