"""A pass leaves no GPU idle that a waiting request pinned to its node may take, whatever the
scan limit, and the queue's order of service is the merge of the ranking's queues."""

from __future__ import annotations

import random
from dataclasses import replace

from jupyter_dlinfra.core.scheduling.scheduler import Scheduler
from jupyter_dlinfra.core.scheduling.types import Demand

from .test_scheduler import BATCH, INTERACTIVE, LOW, ask, granted, hold, make


def _full(nodes: int, per_node: int, **policy: object) -> Scheduler:
    s = make({f"n{i}": per_node for i in range(nodes)}, **policy)
    for i in range(nodes):
        hold(s, 100_000 + i, f"holder{i}", tuple(f"n{i}-{g}" for g in range(per_node)))
    return s


def test_a_release_beyond_the_scan_limit_is_taken_by_what_waits_there() -> None:
    s = _full(3, 2, reservations=0)
    s.max_scan = 1
    ask(s, 1, "ana", 2, at=1.0, node="n0")
    ask(s, 2, "bob", 2, at=2.0, node="n1")
    late = ask(s, 3, "eve", 1, at=3.0, node="n2")
    assert s.schedule(10.0).grants == []
    s.release(100_002)  # n2's holder: the pass looks at ana's request first, then stops
    out = s.schedule(11.0)
    assert [g.request_id for g in out.grants] == [late.id]
    assert s.unserved() == []


def test_what_a_pass_reserves_stays_kept_and_is_not_unserved() -> None:
    s = _full(1, 4, reservations=1)
    big = ask(s, 1, "ana", 4, at=1.0, node="n0")
    small = ask(s, 2, "bob", 1, at=2.0, node="n0")
    s.release(100_000)
    out = s.schedule(10.0)
    assert [g.request_id for g in out.grants] == [big.id]
    assert small.id in s.demands and s.unserved() == []


def test_at_scale_every_release_is_served_on_its_node() -> None:
    rng = random.Random(7)
    s = _full(64, 8, reservations=16)
    for rid in range(1, 2001):
        node = f"n{rng.randrange(64)}"
        ask(s, rid, f"u{rng.randrange(40)}", rng.choice((1, 1, 2, 4, 8)), at=rid, node=node)
    s.schedule(3000.0)
    for step in range(30):
        holder = rng.choice(sorted(s.holdings))
        s.release(holder)
        s.schedule(3001.0 + step)
        assert s.unserved() == [], f"after releasing {holder}"


def test_in_order_is_the_order_of_service() -> None:
    rng = random.Random(3)
    s = make({"n0": 8, "n1": 8}, starvation_limit=500.0)
    for rid in range(1, 400):
        klass = rng.choice((INTERACTIVE, BATCH, LOW))
        kind = "kernel" if klass == INTERACTIVE else "job"
        ask(
            s,
            rid,
            f"u{rng.randrange(12)}",
            rng.choice((1, 2)),
            at=rng.uniform(0, 1000),
            klass=klass,
            kind=kind,
            groups=(f"g{rng.randrange(3)}",),
            node=rng.choice(("n0", "n1")),
        )
    s.schedule(1000.0)  # grants, so that fair share tells users apart
    s.now = 1200.0  # some requests are past the starvation limit now, some not
    assert [d.id for d in s.in_order()] == [
        d.id for d in sorted(s.demands.values(), key=s.order_key)
    ]
    for node in ("n0", "n1"):  # and a node's queue, as explanations and step 5 read it
        assert [d.id for d in s.pinned(node)] == [
            d.id for d in sorted(s.demands.values(), key=s.order_key) if d.node == node
        ]


def test_a_quota_freed_elsewhere_lets_a_waiter_take_its_idle_gpu() -> None:
    s = make({"n0": 2, "n1": 1, "n2": 2}, reservations=0, group_quotas={"g": 2})
    s.max_scan = 1
    hold(s, 100, "ana", ("n0-0", "n0-1"), groups=("g",))
    hold(s, 101, "carl", ("n2-0", "n2-1"))
    # a higher class, blocked: the pass stops after it
    ahead = ask(s, 1, "carl", 2, at=1.0, node="n2", klass=INTERACTIVE)
    waiter = ask(s, 2, "bob", 1, at=2.0, node="n1", groups=("g",), klass=BATCH)
    s.schedule(10.0)
    assert {ahead.id, waiter.id} <= set(s.demands)  # n1's GPU is free, but g is at its quota
    s.release(100)  # on n0: n1 changed nothing, but bob's group is within its quota now
    out = s.schedule(11.0)
    assert waiter.id in [g.request_id for g in out.grants]
    assert s.unserved() == []


def test_a_pass_over_pinned_requests_costs_its_reservations_not_the_scan_depth() -> None:
    """Every waiting request is pinned: beyond its reservations a pass stops at the first one it
    cannot serve (step 5 serves the nodes that changed), so it looks at some twenty requests
    instead of max_scan more; a queue with an unpinned request is still scanned to max_scan."""
    rng = random.Random(5)
    s = make({f"n{i}": 8 for i in range(64)}, reservations=4, preemption=False)
    for i in range(64):  # one GPU free on each node, too few for anyone waiting
        hold(s, 100_000 + i, f"holder{i}", tuple(f"n{i}-{g}" for g in range(7)))
    for rid in range(1, 1001):
        node = f"n{rng.randrange(64)}"
        ask(s, rid, f"u{rng.randrange(40)}", rng.choice((2, 4)), at=rid, node=node)
    assert s.max_scan == 100
    out = s.schedule(2000.0)
    assert out.grants == [] and out.examined == 4 + 1
    s.release(100_007)  # n7's holder: what waits there is served all the same
    out = s.schedule(2001.0)
    assert out.grants and {g.gpus[0].split("-")[0] for g in out.grants} == {"n7"}
    assert s.unserved() == []
    ask(s, 5000, "anywhere", 8, at=2002.0)  # not pinned: it may fit wherever GPUs free up
    assert s.schedule(2003.0).examined == 4 + 100


# -- the pool's requests (any node) beyond the scan limit ----------------------------------------


def test_a_pool_request_beyond_the_scan_limit_takes_the_gpus_it_fits() -> None:
    """Deep in a queue of 8-GPU requests that fit nowhere, the 1- and 2-GPU requests of the pool
    that fit are granted, in the order of service, whatever the scan limit; and the step looks
    at the groups that fit, not at the queue."""
    s = _full(4, 8, reservations=0, preemption=False, fair_share=False)
    s.max_scan = 5
    for rid in range(1, 2001):
        ask(s, rid, f"u{rid % 50}", 8, at=float(rid))
    two = ask(s, 3000, "ana", 2, at=3000.0)
    one = ask(s, 3001, "bob", 1, at=3001.0)
    later = ask(s, 3002, "carl", 1, at=3002.0)
    assert s.schedule(4000.0).grants == []
    s.release(100_001)  # n1's holder
    hold(s, 200, "dave", tuple(f"n1-{i}" for i in range(5)))  # 3 of n1's 8 stay free
    looked = _count_calls(s, "over_quota")
    out = s.schedule(4002.0)
    assert len(looked) < 20, len(looked)  # the walk's 5, the groups' offers: not 2,000
    # 3 free: ana's 2 (older) and bob's 1; carl's 1 finds nothing left
    assert [g.request_id for g in out.grants] == [two.id, one.id]
    assert later.id in s.demands and s.unserved() == []


def test_in_the_pool_step_a_user_at_quota_is_passed_over_and_borrowers_come_last() -> None:
    def one_free(borrowing: bool) -> Scheduler:
        """Blocked 4-GPU requests ahead; ana holds her quota of 2; one GPU of n0 is free."""
        s = _full(
            2,
            4,
            reservations=0,
            preemption=False,
            fair_share=False,
            default_user_quota=2,
            borrowing=borrowing,
        )
        s.max_scan = 1
        for rid in range(1, 50):
            ask(s, rid, f"w{rid}", 4, at=float(rid))
        s.release(100_000)
        hold(s, 400, "ana", ("n0-0", "n0-1"))
        hold(s, 401, "ed", ("n0-2",))
        return s

    s = one_free(borrowing=True)
    over = ask(s, 100, "ana", 1, at=100.0, klass=BATCH, kind="job")
    lender = ask(s, 101, "bob", 3, at=101.0, klass=BATCH, kind="job")  # over his quota of 2
    within = ask(s, 102, "carl", 1, at=102.0, klass=BATCH, kind="job")
    out = s.schedule(200.0)
    # carl, within quota, before ana (at quota: may only borrow, and comes first among those)
    assert {g.request_id: g.borrowed for g in out.grants} == {within.id: False}
    assert over.id in s.demands and lender.id in s.demands
    # without carl the free GPU is lent to ana's job, the first borrower that fits
    s = one_free(borrowing=True)
    over = ask(s, 100, "ana", 1, at=100.0, klass=BATCH, kind="job")
    out = s.schedule(200.0)
    assert {g.request_id: g.borrowed for g in out.grants} == {over.id: True}
    # and not with borrowing off
    s = one_free(borrowing=False)
    over = ask(s, 100, "ana", 1, at=100.0, klass=BATCH, kind="job")
    assert s.schedule(200.0).grants == [] and s.unserved() == []


def test_the_pool_step_leaves_what_a_pass_reserved() -> None:
    """ana's 4-GPU request keeps n0's free GPUs; bob's 1-GPU request, beyond the scan, does not
    take them, but takes n1's free one."""
    s = _full(2, 4, reservations=1, preemption=False, fair_share=False)
    s.max_scan = 1
    big = ask(s, 1, "ana", 4, at=1.0)
    ask(s, 3, "cy", 4, at=1.5)  # blocked too: the walk stops there
    small = ask(s, 2, "bob", 1, at=2.0)
    s.release(100_000)
    hold(s, 500, "ed", ("n0-0",))  # n0 has 3 free: kept for ana
    s.release(100_001)
    hold(s, 501, "ed", ("n1-0", "n1-1", "n1-2"))  # n1 has 1 free
    out = s.schedule(10.0)
    assert out.examined == 2  # ana, cy
    assert [g.request_id for g in out.grants] == [small.id]
    assert set(out.grants[0].gpus) == {"n1-3"}
    assert s.reserved == {big.id: ("n0-1", "n0-2", "n0-3")}
    assert s.unserved() == []


def _count_calls(s: Scheduler, name: str) -> list[int]:
    """Count the calls of one of ``s``'s methods (a list that grows by one per call)."""
    calls: list[int] = []
    method = getattr(s, name)

    def counted(*args: object, **kwargs: object) -> object:
        calls.append(1)
        return method(*args, **kwargs)

    setattr(s, name, counted)
    return calls


def test_gpus_kept_for_a_request_and_given_back_go_to_one_ahead_of_it_in_the_same_pass() -> None:
    """n2's free GPU is kept for bob's request (a preemption there is under way for it), so
    ana's 2-GPU gang, walked first, finds one GPU and reserves it; when the walk reaches bob,
    the kept GPU is his to try, does not fit him, and is free again: ana gets both at once."""
    s = make({"n2": 2, "n3": 1}, reservations=1, fair_share=False)
    s.submit(
        Demand(id=2, user="bob", count=2, klass=BATCH, kind="job", submitted_at=1.0, node=None)
    )
    hold(s, 50, "vic", ("n2-0",), klass=LOW, kind="job")
    s.holdings[50] = replace(s.holdings[50], preempted_for=2)
    s.pending[2] += 1
    s._nominated[2] = [s._pool_of["n2-0"].id]
    ana = ask(s, 1, "ana", 2, at=2.0, klass=INTERACTIVE, kind="job", gang=True)
    out = s.schedule(10.0)
    assert granted(out) == {ana.id: ("n2-1", "n3-0")}
    assert 2 in s.demands and s.unserved() == []
