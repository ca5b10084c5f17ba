"""The in-memory scheduler, one rule at a time: priority tiers, fair share, quotas, borrowing,
preemption, reservations, starvation, placement (models, pinned nodes, best fit, gangs), check(),
inventory changes, policy changes and withdrawal. Time is the ``now`` argument: no sleeps."""

from __future__ import annotations

from typing import Any

import pytest

from jupyter_dlinfra.core.errors import Conflict, InvalidRequest, NotFound
from jupyter_dlinfra.core.idle import PolicyError
from jupyter_dlinfra.core.scheduling.policy import SchedulingPolicy
from jupyter_dlinfra.core.scheduling.scheduler import Scheduler
from jupyter_dlinfra.core.scheduling.types import Demand, Grant, Holding, Outcome, Slot

A100 = "NVIDIA A100-SXM4-80GB"
H100 = "NVIDIA H100 80GB HBM3"

#: interactive 100 (not preemptible), batch 50 and low 10 (preemptible): the default classes
INTERACTIVE, BATCH, LOW = "interactive", "batch", "low"


# -- builders -------------------------------------------------------------------------------------


def gpus(node: str, count: int, model: str = A100, first: int = 0) -> list[Slot]:
    return [
        Slot(uuid=f"{node}-{i}", node=node, model=model, index=i)
        for i in range(first, first + count)
    ]


def make(nodes: dict[str, int] | None = None, **policy: Any) -> Scheduler:
    """A scheduler with ``nodes`` (name -> number of A100s) under a policy document."""
    s = Scheduler(SchedulingPolicy.from_json(policy))
    for node, count in (nodes if nodes is not None else {"n1": 4}).items():
        s.add_gpus(gpus(node, count))
    return s


def ask(
    s: Scheduler,
    rid: int,
    user: str,
    count: int = 1,
    *,
    at: float = 0.0,
    klass: str = INTERACTIVE,
    kind: str = "kernel",
    groups: tuple[str, ...] = (),
    model: str | None = None,
    node: str | None = None,
    gang: bool = False,
) -> Demand:
    demand = Demand(
        id=rid,
        user=user,
        groups=groups,
        count=count,
        model=model,
        node=node,
        gang=gang,
        klass=klass,
        kind=kind,
        submitted_at=at,
    )
    s.submit(demand)
    return demand


def job(
    s: Scheduler, rid: int, user: str, count: int = 1, *, klass: str = BATCH, **kw: Any
) -> Demand:
    return ask(s, rid, user, count, klass=klass, kind="job", **kw)


def hold(
    s: Scheduler,
    hid: int,
    user: str,
    held: tuple[str, ...],
    *,
    klass: str = INTERACTIVE,
    kind: str = "kernel",
    at: float = 0.0,
    groups: tuple[str, ...] = (),
    borrowed: bool = False,
) -> Holding:
    holding = Holding(
        id=hid,
        user=user,
        groups=groups,
        klass=klass,
        kind=kind,
        gpus=held,
        granted_at=at,
        borrowed=borrowed,
    )
    s.hold(holding)
    return holding


def granted(out: Outcome) -> dict[int, tuple[str, ...]]:
    return {g.request_id: g.gpus for g in out.grants}


def preempted(out: Outcome) -> list[tuple[int, int]]:
    """(holding, request) pairs."""
    return [(p.holding_id, p.request_id) for p in out.preemptions]


def nodes_of(grant: tuple[str, ...]) -> set[str]:
    return {uuid.rsplit("-", 1)[0] for uuid in grant}


def model_of(s: Scheduler, uuid: str) -> str:
    return s._pool_of[uuid].model


# -- priority classes -----------------------------------------------------------------------------


def test_classes_are_strict_tiers() -> None:
    """A higher class goes first whatever its age and its user's usage."""
    s = make({"n1": 1})
    s.load_usage("heavy", (), 1e9, 0.0)
    job(s, 1, "light", klass=LOW, at=0.0)
    job(s, 2, "light2", klass=BATCH, at=1.0)
    ask(s, 3, "heavy", klass=INTERACTIVE, at=2.0)
    order = []
    for t in (10.0, 11.0, 12.0):
        out = s.schedule(t)
        assert len(out.grants) == 1
        order.append(out.grants[0].request_id)
        s.release(out.grants[0].request_id)
    assert order == [3, 2, 1]


def test_a_lower_class_waits_behind_a_blocked_higher_one_only_for_its_gpus() -> None:
    """Tiers order who is looked at first; a lower class still gets GPUs the higher can't use."""
    s = make({"n1": 4, "n2": 1})
    hold(s, 10, "k", ("n1-0", "n1-1"))
    ask(s, 1, "a", 4, at=0.0)  # blocked, keeps n1's free GPUs
    job(s, 2, "b", 1, klass=LOW, at=1.0)
    out = s.schedule(2.0)
    assert granted(out) == {2: ("n2-0",)}


# -- fair share -----------------------------------------------------------------------------------


def test_fair_share_orders_users_by_usage() -> None:
    s = make({"n1": 1})
    s.load_usage("a", (), 1000.0, 0.0)
    s.load_usage("b", (), 10.0, 0.0)
    ask(s, 1, "a", at=0.0)
    ask(s, 2, "b", at=1.0)
    assert granted(s.schedule(2.0)) == {2: ("n1-0",)}


@pytest.mark.parametrize(
    ("user_shares", "winner"),
    [({}, 2), ({"a": 20}, 1), ({"b": 20}, 2), ({"a": 5, "b": 0.4}, 1)],
)
def test_user_shares_divide_usage(user_shares: dict[str, float], winner: int) -> None:
    # a: 1000 GPU-s, b: 100 GPU-s
    s = make({"n1": 1}, user_shares=user_shares)
    s.load_usage("a", (), 1000.0, 0.0)
    s.load_usage("b", (), 100.0, 0.0)
    ask(s, 1, "a", at=0.0)
    ask(s, 2, "b", at=1.0)
    assert set(granted(s.schedule(2.0))) == {winner}


def test_group_shares_rank_accounts_before_users() -> None:
    """Account g1 (share 3) used 300 -> 100 per share; g2 (share 1) used 150 -> 150.
    a (g1) has used the most of anyone but goes first; then c before b within g2."""
    s = make({"n1": 1}, group_shares={"g1": 3, "g2": 1})
    s.load_usage("a", ("g1",), 300.0, 0.0)
    s.load_usage("b", ("g2",), 150.0, 0.0)
    s.load_usage("c", ("g2",), 0.0, 0.0)
    ask(s, 1, "b", at=0.0, groups=("g2",))
    ask(s, 2, "c", at=1.0, groups=("g2",))
    ask(s, 3, "a", at=2.0, groups=("g1",))
    order = []
    for t in (3.0, 4.0, 5.0):
        out = s.schedule(t)
        assert len(out.grants) == 1
        order.append(out.grants[0].request_id)
        s.release(out.grants[0].request_id)
    assert order == [3, 2, 1]


def test_without_group_shares_users_compete_in_one_account() -> None:
    s = make({"n1": 1})
    s.load_usage("a", ("g1",), 300.0, 0.0)
    s.load_usage("c", ("g2",), 0.0, 0.0)
    ask(s, 1, "a", at=0.0, groups=("g1",))
    ask(s, 2, "c", at=1.0, groups=("g2",))
    assert set(granted(s.schedule(2.0))) == {2}


def test_account_is_the_first_group_with_a_share() -> None:
    """d is in g1 and g2; g1 has no share, so its account is g2 (heavily used)."""
    s = make({"n1": 1}, group_shares={"g2": 1, "g3": 1})
    s.load_usage("x", ("g2",), 5000.0, 0.0)
    s.load_usage("y", ("g3",), 10.0, 0.0)
    ask(s, 1, "d", at=0.0, groups=("g1", "g2"))
    ask(s, 2, "y", at=1.0, groups=("g3",))
    assert set(granted(s.schedule(2.0))) == {2}


@pytest.mark.parametrize(("half_life", "winner"), [(1000.0, 2), (1e9, 1)])
def test_usage_decays_with_half_life(half_life: float, winner: int) -> None:
    """a used 1000 GPU-s two half-lives ago (250 now); b used 600 just now."""
    s = make({"n1": 1}, half_life=half_life)
    s.load_usage("a", (), 1000.0, 0.0)
    s.schedule(2000.0)
    s.load_usage("b", (), 600.0, 2000.0)
    ask(s, 1, "b", at=2000.0)
    ask(s, 2, "a", at=2001.0)
    assert set(granted(s.schedule(2002.0))) == {winner}


def test_usage_of_holdings_is_charged_and_decays() -> None:
    s = make({"n1": 2}, half_life=1000.0)
    ask(s, 1, "a", 2, at=0.0)
    assert set(granted(s.schedule(0.0))) == {1}
    s.schedule(100.0)
    s.release(1)
    used = s.users["a"].usage(100.0, 1000.0)
    assert used == pytest.approx(200.0, rel=0.05)
    assert s.users["a"].held == 0
    assert s.users["a"].usage(1100.0, 1000.0) == pytest.approx(used / 2)
    assert s.accounts[""].usage(1100.0, 1000.0) == pytest.approx(used / 2)


def test_just_granted_user_goes_behind_within_a_pass() -> None:
    s = make({"n1": 2})
    ask(s, 1, "a", at=0.0)
    ask(s, 2, "a", at=1.0)
    ask(s, 3, "b", at=2.0)
    out = s.schedule(3.0)
    assert [g.request_id for g in out.grants] == [1, 3]
    assert 2 in s.demands


def test_just_granted_user_goes_behind_at_once() -> None:
    """b has used 5000 GPU-s, a nothing; a is granted 3 GPUs and at once ranks behind b."""
    s = make({"n1": 4})
    s.load_usage("b", (), 5000.0, 0.0)
    ask(s, 1, "a", 3, at=0.0)
    assert set(granted(s.schedule(0.0))) == {1}
    ask(s, 2, "a", 1, at=0.5)
    ask(s, 3, "b", 1, at=1.0)
    assert set(granted(s.schedule(1.0))) == {3}


def test_fair_share_keys_are_worked_out_once_per_step_and_again_after_a_change(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Passes within one second reuse the keys (as of the end of that second); a grant or a
    release makes its user's key again at once, and the next second all of them."""
    from jupyter_dlinfra.core.scheduling import fairshare

    worked: list[float] = []
    key = fairshare.Account.key

    def counting(self: fairshare.Account, now: float, half_life: float) -> float:
        worked.append(now)
        return key(self, now, half_life)

    monkeypatch.setattr(fairshare.Account, "key", counting)
    s = make({"n1": 2})
    hold(s, 100, "a", ("n1-0", "n1-1"), at=0.0)
    ask(s, 1, "b", at=0.1)
    ask(s, 2, "c", at=0.2)
    worked.clear()
    s.schedule(5.1)
    assert worked and set(worked) == {6.0}
    worked.clear()
    s.schedule(5.7)
    assert worked == []
    s.release(100)  # a's and its account's keys change; b and c wait for the GPUs
    assert set(granted(s.schedule(5.8))) == {1, 2}
    assert worked and set(worked) == {6.0}
    ask(s, 3, "b", at=5.9)
    worked.clear()
    s.schedule(6.5)
    assert worked and set(worked) == {7.0}


def test_fair_share_off_is_first_come_first_served() -> None:
    s = make({"n1": 1}, fair_share=False, group_shares={"g1": 1, "g2": 100})
    s.load_usage("a", ("g1",), 1e6, 0.0)
    ask(s, 1, "a", at=0.0, groups=("g1",))
    ask(s, 2, "b", at=1.0, groups=("g2",))
    ask(s, 3, "c", at=2.0)
    ask(s, 4, "a", at=3.0, groups=("g1",))
    order = []
    for t in (4.0, 5.0, 6.0, 7.0):
        out = s.schedule(t)
        order.append(out.grants[0].request_id)
        s.release(out.grants[0].request_id)
    assert order == [1, 2, 3, 4]


def test_fair_share_off_keeps_class_tiers() -> None:
    s = make({"n1": 1}, fair_share=False)
    job(s, 1, "a", klass=LOW, at=0.0)
    ask(s, 2, "b", at=5.0)
    assert set(granted(s.schedule(6.0))) == {2}


# -- quotas ---------------------------------------------------------------------------------------


def test_default_user_quota() -> None:
    s = make({"n1": 8}, default_user_quota=2)
    ask(s, 1, "a", 2, at=0.0)
    ask(s, 2, "a", 1, at=1.0)
    ask(s, 3, "b", 2, at=2.0)
    ask(s, 4, "c", 3, at=3.0)  # more than the quota on its own
    out = s.schedule(4.0)
    assert set(granted(out)) == {1, 3}
    reason = s.over_quota(s.demands[2])
    assert reason is not None and "quota of 2" in reason and "holds 2" in reason
    assert s.over_quota(s.demands[4]) is not None
    # it stays over quota however often it is looked at
    assert granted(s.schedule(5.0)) == {}
    s.release(1)
    assert set(granted(s.schedule(6.0))) == {2}


def test_user_quotas_override_the_default() -> None:
    s = make({"n1": 8}, default_user_quota=1, user_quotas={"a": 3, "z": 0})
    ask(s, 1, "a", 3, at=0.0)
    ask(s, 2, "b", 2, at=1.0)
    ask(s, 3, "z", 1, at=2.0)
    ask(s, 4, "b", 1, at=3.0)
    assert set(granted(s.schedule(4.0))) == {1, 4}
    assert set(s.demands) == {2, 3}


def test_group_quota() -> None:
    s = make({"n1": 8}, group_quotas={"ml": 3})
    ask(s, 1, "a", 2, at=0.0, groups=("ml",))
    ask(s, 2, "b", 2, at=1.0, groups=("ml",))
    ask(s, 3, "b", 1, at=2.0, groups=("ml",))
    ask(s, 4, "c", 3, at=3.0, groups=("cv",))
    ask(s, 5, "d", 1, at=4.0, groups=("cv", "ml"))
    assert set(granted(s.schedule(5.0))) == {1, 3, 4}
    reason = s.over_quota(s.demands[2])
    assert reason is not None and "group ml" in reason
    assert s.held_by_group["ml"] == 3
    assert s.held_by_group["cv"] == 3


def test_quotas_bind_preemptible_classes_too_when_borrowing_is_off() -> None:
    s = make({"n1": 8}, default_user_quota=1, borrowing=False)
    job(s, 1, "a", 2, at=0.0)
    assert granted(s.schedule(1.0)) == {}


# -- borrowing ------------------------------------------------------------------------------------


def test_over_quota_preemptible_job_borrows_free_gpus() -> None:
    s = make({"n1": 4}, default_user_quota=1)
    job(s, 1, "a", 3, at=0.0)
    ask(s, 2, "b", 3, at=1.0)  # interactive: never borrows
    out = s.schedule(2.0)
    assert out.grants == [Grant(1, ("n1-0", "n1-1", "n1-2"), True)]
    assert s.holdings[1].borrowed is True
    assert 2 in s.demands


def test_kernels_never_borrow() -> None:
    """A kernel could never be taken back, so even in a preemptible class it does not borrow."""
    s = make({"n1": 4}, default_user_quota=1)
    ask(s, 1, "a", 2, klass=BATCH, kind="kernel", at=0.0)
    assert s.schedule(1.0).grants == []


def test_a_user_at_quota_still_borrows_for_a_later_job() -> None:
    """a's quota is full; its kernel request of class batch may not borrow, but its job of the
    same class, queued behind it, may."""
    s = make({"n1": 4}, default_user_quota=1)
    hold(s, 10, "a", ("n1-0",))
    ask(s, 1, "a", 1, klass=BATCH, kind="kernel", at=0.0)
    job(s, 2, "a", 1, at=1.0)
    assert s.schedule(2.0).grants == [Grant(2, ("n1-1",), True)]


def test_borrowing_off() -> None:
    s = make({"n1": 4}, default_user_quota=1, borrowing=False)
    job(s, 1, "a", 3, at=0.0)
    assert granted(s.schedule(1.0)) == {}


def test_borrowing_only_of_gpus_nobody_within_quota_wanted() -> None:
    """a ranks first but is over quota: b and c, within quota, are served before it borrows."""
    s = make({"n1": 4}, default_user_quota=2)
    job(s, 1, "a", 3, at=0.0)
    job(s, 2, "b", 2, at=1.0)
    job(s, 3, "c", 2, at=2.0)
    out = s.schedule(3.0)
    assert set(granted(out)) == {2, 3}
    assert all(not g.borrowed for g in out.grants)


@pytest.mark.parametrize(("reservations", "borrows"), [(16, False), (0, True)])
def test_borrowing_does_not_take_what_a_blocked_request_keeps(
    reservations: int, borrows: bool
) -> None:
    s = make({"n1": 4}, default_user_quota=1, user_quotas={"b": 8}, reservations=reservations)
    hold(s, 10, "k", ("n1-0", "n1-1"))
    ask(s, 1, "b", 4, at=0.0)  # within quota, blocked: keeps n1-2, n1-3
    job(s, 2, "a", 2, at=1.0)  # over quota
    out = s.schedule(2.0)
    assert out.grants == ([Grant(2, ("n1-2", "n1-3"), True)] if borrows else [])


def test_borrowed_gpus_count_against_the_quota() -> None:
    s = make({"n1": 4}, default_user_quota=2)
    job(s, 1, "a", 3, at=0.0)
    assert granted(s.schedule(1.0)) == {1: ("n1-0", "n1-1", "n1-2")}
    ask(s, 2, "a", 1, at=2.0)
    assert granted(s.schedule(3.0)) == {}
    assert s.over_quota(s.demands[2]) is not None


def test_borrowed_gpus_are_taken_back_for_a_request_within_quota() -> None:
    s = make({"n1": 2}, default_user_quota=1)
    job(s, 1, "a", 2, at=0.0)
    assert s.schedule(1.0).grants == [Grant(1, ("n1-0", "n1-1"), True)]
    ask(s, 2, "b", 1, at=2.0)
    out = s.schedule(3.0)
    assert preempted(out) == [(1, 2)]
    assert "borrowed" in out.preemptions[0].message
    assert granted(out) == {}
    s.release(1)
    assert granted(s.schedule(4.0)) == {2: ("n1-0",)}


@pytest.mark.parametrize("borrowed", [True, False])
def test_a_borrowed_job_is_preempted_even_for_its_own_class(borrowed: bool) -> None:
    s = make({"n1": 1}, default_user_quota=1)
    hold(s, 10, "a", ("n1-0",), klass=BATCH, kind="job", borrowed=borrowed)
    job(s, 1, "b", 1, at=1.0)
    assert preempted(s.schedule(2.0)) == ([(10, 1)] if borrowed else [])


def test_borrowed_holdings_are_taken_back_first() -> None:
    """A borrowed batch job goes before a lower-class, more recent job that is within quota."""
    s = make({"n1": 2})
    hold(s, 10, "x", ("n1-0",), klass=BATCH, kind="job", at=0.0, borrowed=True)
    hold(s, 11, "y", ("n1-1",), klass=LOW, kind="job", at=5.0)
    ask(s, 1, "z", 1, at=6.0)
    out = s.schedule(7.0)
    assert preempted(out) == [(10, 1)]
    assert "borrowed" in out.preemptions[0].message
    assert s.holdings[10].preempted_for == 1
    assert s.holdings[11].preempted_for is None


def test_an_over_quota_request_does_not_preempt() -> None:
    s = make({"n1": 2}, default_user_quota=1)
    hold(s, 10, "x", ("n1-0", "n1-1"), klass=LOW, kind="job")
    ask(s, 1, "a", 2, at=1.0)
    out = s.schedule(2.0)
    assert out.preemptions == []


def test_no_preemption_for_a_request_the_pass_put_over_quota() -> None:
    """Request 1 is blocked (its node is full); later in the same pass a's request 2 is granted
    elsewhere and fills a's quota. Request 1 is now over quota: stopping a job for it would
    free GPUs it may not take."""
    s = make({"n1": 2, "n2": 2}, default_user_quota=2)
    hold(s, 10, "x", ("n1-0", "n1-1"), klass=LOW, kind="job")
    ask(s, 1, "a", 2, at=0.0, node="n1")
    ask(s, 2, "a", 2, at=1.0)
    out = s.schedule(2.0)
    assert granted(out) == {2: ("n2-0", "n2-1")}
    assert s.over_quota(s.demands[1]) is not None
    assert out.preemptions == []
    assert s.holdings[10].preempted_for is None


# -- preemption -----------------------------------------------------------------------------------


def test_lower_class_job_is_preempted_and_its_gpus_go_to_the_request() -> None:
    s = make({"n1": 2})
    hold(s, 10, "x", ("n1-0", "n1-1"), klass=LOW, kind="job")
    ask(s, 1, "a", 2, at=1.0)
    out = s.schedule(2.0)
    assert out.grants == []
    assert preempted(out) == [(10, 1)]
    message = out.preemptions[0].message
    assert "request 1" in message and "low" in message and "interactive" in message
    # the victim keeps its GPUs until it releases them
    victim = s.holder("n1-0")
    assert victim is not None and victim.id == 10 and victim.preempted_for == 1
    assert s.pending[1] == 2
    assert s.schedule(3.0).grants == []
    assert s.holder("n1-1") is not None
    s.release(10)
    assert granted(s.schedule(4.0)) == {1: ("n1-0", "n1-1")}
    assert 1 not in s.pending


@pytest.mark.parametrize(
    ("klass", "borrowed"), [(LOW, False), (BATCH, False), (BATCH, True), (INTERACTIVE, False)]
)
def test_kernels_are_never_preempted(klass: str, borrowed: bool) -> None:
    s = make({"n1": 1})
    hold(s, 10, "x", ("n1-0",), klass=klass, kind="kernel", borrowed=borrowed)
    ask(s, 1, "a", 1, at=1.0)
    assert s.schedule(2.0).preemptions == []
    assert s.holdings[10].preempted_for is None


def test_jobs_of_a_class_that_is_not_preemptible_are_not_preempted() -> None:
    s = make(
        {"n1": 1},
        classes={
            "interactive": {"priority": 100},
            "prod": {"priority": 60},
            "batch": {"priority": 50, "preemptible": True},
        },
    )
    hold(s, 10, "x", ("n1-0",), klass="prod", kind="job")
    ask(s, 1, "a", 1, at=1.0)
    assert s.schedule(2.0).preemptions == []


@pytest.mark.parametrize(
    ("victim", "wanted", "expected"),
    [(BATCH, BATCH, False), (LOW, BATCH, True), (BATCH, LOW, False), (LOW, LOW, False)],
)
def test_only_lower_classes_are_preempted(victim: str, wanted: str, expected: bool) -> None:
    s = make({"n1": 1})
    hold(s, 10, "x", ("n1-0",), klass=victim, kind="job")
    job(s, 1, "a", 1, klass=wanted, at=1.0)
    assert preempted(s.schedule(2.0)) == ([(10, 1)] if expected else [])


def test_preemption_off() -> None:
    s = make({"n1": 1}, preemption=False)
    hold(s, 10, "x", ("n1-0",), klass=LOW, kind="job")
    ask(s, 1, "a", 1, at=1.0)
    assert s.schedule(2.0).preemptions == []


def test_lowest_class_is_preempted_first() -> None:
    s = make({"n1": 3})
    hold(s, 10, "x", ("n1-0",), klass=LOW, kind="job", at=0.0)
    hold(s, 11, "x", ("n1-1",), klass=LOW, kind="job", at=50.0)
    hold(s, 12, "y", ("n1-2",), klass=BATCH, kind="job", at=100.0)
    ask(s, 1, "a", 1, at=101.0)
    first = preempted(s.schedule(102.0))
    assert len(first) == 1 and first[0][0] in (10, 11)
    ask(s, 2, "b", 1, at=103.0)
    second = preempted(s.schedule(104.0))
    assert len(second) == 1 and {first[0][0], second[0][0]} == {10, 11}
    ask(s, 3, "c", 1, at=105.0)
    assert preempted(s.schedule(106.0)) == [(12, 3)]


def assert_victims_free_enough_on_one_node(s: Scheduler, out: Outcome, count: int) -> None:
    """The request's victims are on one node, their GPUs and its free GPUs are enough, and
    none of them is superfluous: without the last one chosen it would not be enough."""
    victims = [s.holdings[p.holding_id] for p in out.preemptions]
    nodes = {n for h in victims for n in nodes_of(h.gpus)}
    assert len(nodes) == 1, victims
    (node,) = nodes
    free = sum(1 for u in (f"{node}-{i}" for i in range(8)) if u in s._pool_of and not s.holder(u))
    freed = sum(len(h.gpus) for h in victims)
    assert free + freed >= count
    assert free + freed - len(victims[-1].gpus) < count


def test_preempts_on_one_node_that_frees_enough() -> None:
    s = make({"n1": 2, "n2": 2, "n3": 2})
    hold(s, 10, "x", ("n1-0",), klass=LOW, kind="job", at=1.0)
    hold(s, 11, "x", ("n1-1",), klass=LOW, kind="job", at=2.0)
    hold(s, 12, "y", ("n2-0", "n2-1"), klass=LOW, kind="job", at=3.0)
    hold(s, 13, "z", ("n3-0",), kind="kernel")  # n3: one free GPU, one kernel
    hold(s, 14, "w", ("n3-1",), klass=LOW, kind="job", at=4.0)
    ask(s, 1, "a", 2, at=5.0)
    out = s.schedule(6.0)
    assert out.preemptions
    assert_victims_free_enough_on_one_node(s, out, 2)
    victims = [p.holding_id for p in out.preemptions]
    s.release(victims[0])
    for v in victims[1:]:
        assert s.schedule(7.0).grants == []
        s.release(v)
    (grant,) = s.schedule(8.0).grants
    assert grant.request_id == 1


def test_prefers_the_node_with_borrowed_victims() -> None:
    s = make({"n1": 2, "n2": 2})
    hold(s, 10, "x", ("n1-0", "n1-1"), klass=LOW, kind="job", at=1.0)
    hold(s, 11, "y", ("n2-0",), klass=BATCH, kind="job", at=2.0, borrowed=True)
    hold(s, 12, "y", ("n2-1",), klass=BATCH, kind="job", at=3.0, borrowed=True)
    ask(s, 1, "a", 2, at=4.0)
    assert sorted(preempted(s.schedule(5.0))) == [(11, 1), (12, 1)]


def test_counts_free_gpus_before_choosing_victims() -> None:
    """n1 has one free GPU: one 1-GPU victim there is enough for a 2-GPU request."""
    s = make({"n1": 2, "n2": 2})
    hold(s, 10, "x", ("n1-0",), klass=LOW, kind="job", at=1.0)
    hold(s, 11, "y", ("n2-0", "n2-1"), klass=LOW, kind="job", at=9.0)
    ask(s, 1, "a", 2, at=10.0)
    assert preempted(s.schedule(11.0)) == [(10, 1)]
    s.release(10)
    assert granted(s.schedule(12.0)) == {1: ("n1-0", "n1-1")}


def test_no_double_preemption_for_the_same_request() -> None:
    s = make({"n1": 2, "n2": 2})
    hold(s, 10, "x", ("n1-0", "n1-1"), klass=LOW, kind="job", at=1.0)
    hold(s, 11, "y", ("n2-0", "n2-1"), klass=LOW, kind="job", at=1.0)
    ask(s, 1, "a", 2, at=2.0)
    first = preempted(s.schedule(3.0))
    assert len(first) == 1 and first[0][1] == 1
    victim = first[0][0]
    for t in (4.0, 5.0, 100.0, 10_000.0):
        assert s.schedule(t).preemptions == []
    s.release(victim)
    out = s.schedule(10_001.0)
    assert set(granted(out)) == {1}
    assert out.preemptions == []
    other = 11 if victim == 10 else 10
    assert s.holdings[other].preempted_for is None


def test_two_requests_do_not_count_the_same_free_gpus() -> None:
    """Each blocked request gets its own victims in one pass."""
    s = make({"n1": 2})
    hold(s, 10, "x", ("n1-0",), klass=LOW, kind="job", at=1.0)
    hold(s, 11, "y", ("n1-1",), klass=LOW, kind="job", at=2.0)
    ask(s, 1, "a", 1, at=3.0)
    ask(s, 2, "b", 1, at=4.0)
    out = s.schedule(5.0)
    assert sorted(p.holding_id for p in out.preemptions) == [10, 11]
    assert sorted(p.request_id for p in out.preemptions) == [1, 2]


def test_partially_released_victims_keep_the_nomination() -> None:
    s = make({"n1": 2})
    hold(s, 10, "x", ("n1-0",), klass=LOW, kind="job", at=1.0)
    hold(s, 11, "x", ("n1-1",), klass=LOW, kind="job", at=2.0)
    ask(s, 1, "a", 2, at=3.0)
    assert sorted(preempted(s.schedule(4.0))) == [(10, 1), (11, 1)]
    s.release(11)
    assert s.pending[1] == 1
    job(s, 2, "b", 1, at=5.0)  # a lower class: behind request 1, it must not take n1-1
    out = s.schedule(6.0)
    assert out.grants == []
    assert all(p.request_id != 1 for p in out.preemptions)
    s.release(10)
    assert granted(s.schedule(7.0)).get(1) == ("n1-0", "n1-1")


def test_preempted_gpus_go_to_the_request_not_a_lower_class() -> None:
    s = make({"n1": 2})
    hold(s, 10, "x", ("n1-0", "n1-1"), klass=LOW, kind="job")
    ask(s, 1, "a", 2, at=1.0)
    assert preempted(s.schedule(2.0)) == [(10, 1)]
    job(s, 2, "b", 1, klass=BATCH, at=3.0)
    s.schedule(4.0)
    s.release(10)
    out = s.schedule(5.0)
    assert granted(out) == {1: ("n1-0", "n1-1")}


def test_preempted_gpus_go_to_the_request_not_a_later_one_of_its_class() -> None:
    """The GPUs freed by preemption are nominated for request 1: a request of the same class
    that arrives while the victim stops, from a user with less usage, does not take them (it
    would make request 1 preempt again, and a second job lose its work for nothing)."""
    s = make({"n1": 2, "n2": 2})
    hold(s, 10, "x", ("n1-0", "n1-1"), klass=LOW, kind="job", at=0.0)
    hold(s, 11, "y", ("n2-0", "n2-1"), klass=LOW, kind="job", at=0.0)
    s.load_usage("a", (), 1000.0, 0.0)
    ask(s, 1, "a", 2, at=1.0)
    out = s.schedule(2.0)
    assert len(out.preemptions) == 1
    victim = out.preemptions[0].holding_id
    freed = s.holdings[victim].gpus
    ask(s, 2, "b", 2, at=3.0)  # b: no usage, ranks before a
    s.schedule(4.0)
    s.release(victim)
    out = s.schedule(5.0)
    assert granted(out).get(1) == freed


def test_preemption_works_with_pure_backfill() -> None:
    """``reservations`` 0 stops blocked requests from keeping free GPUs; it does not switch
    preemption off (that is ``preemption``)."""
    s = make({"n1": 2}, reservations=0)
    hold(s, 10, "x", ("n1-0", "n1-1"), klass=LOW, kind="job")
    ask(s, 1, "a", 2, at=1.0)
    assert preempted(s.schedule(2.0)) == [(10, 1)]


def test_pinned_request_preempts_on_its_own_node() -> None:
    s = make({"n1": 1, "n2": 1})
    hold(s, 10, "x", ("n1-0",), klass=LOW, kind="job", at=0.0)
    hold(s, 11, "y", ("n2-0",), klass=LOW, kind="job", at=9.0)  # the more recent
    ask(s, 1, "a", 1, at=10.0, node="n1")
    assert preempted(s.schedule(11.0)) == [(10, 1)]
    s.release(10)
    assert granted(s.schedule(12.0)) == {1: ("n1-0",)}


@pytest.mark.parametrize("first", [10, 11])
def test_gang_request_preempts_across_nodes(first: int) -> None:
    s = make({"n1": 2, "n2": 2})
    hold(s, 10, "x", ("n1-0", "n1-1"), klass=LOW, kind="job", at=0.0)
    hold(s, 11, "y", ("n2-0", "n2-1"), klass=LOW, kind="job", at=1.0)
    job(s, 1, "a", 3, at=2.0, gang=True)
    assert sorted(preempted(s.schedule(3.0))) == [(10, 1), (11, 1)]
    # whichever victim stops first, a lower class must not take the GPUs it freed
    s.release(first)
    job(s, 2, "b", 1, klass=LOW, at=3.5)
    assert s.schedule(4.0).grants == []
    s.release(21 - first)
    out = s.schedule(5.0)
    assert len(set(granted(out)[1])) == 3
    assert nodes_of(granted(out)[1]) == {"n1", "n2"}


def test_preemption_only_for_gpus_of_the_wanted_model() -> None:
    s = Scheduler(SchedulingPolicy())
    s.add_gpus(gpus("n1", 1, A100))
    s.add_gpus(gpus("n2", 1, H100))
    hold(s, 10, "x", ("n1-0",), klass=LOW, kind="job")
    hold(s, 11, "y", ("n2-0",), klass=LOW, kind="job")
    ask(s, 1, "a", 1, at=1.0, model="H100")
    assert preempted(s.schedule(2.0)) == [(11, 1)]


def test_victim_choice_is_reproducible() -> None:
    """The same state and the same requests preempt the same holdings, every time (not
    depending on where objects happen to lie in memory). Job 10 is a gang on n1 and n2."""
    seen = set()
    ballast = []
    for i in range(40):
        ballast.append([object() for _ in range(i % 7)])
        s = make({"n1": 3, "n2": 3})
        hold(s, 10, "x", ("n1-0", "n2-0"), klass=LOW, kind="job")
        hold(s, 11, "y", ("n1-2",), klass=LOW, kind="job")
        hold(s, 12, "z", ("n2-2",), klass=LOW, kind="job")
        ask(s, 1, "a", 2, at=0.0)
        ask(s, 2, "b", 2, at=1.0)
        seen.add(tuple(sorted(preempted(s.schedule(2.0)))))
    assert len(seen) == 1, seen


# -- reservations ---------------------------------------------------------------------------------


def test_blocked_large_request_keeps_the_free_gpus() -> None:
    s = make({"n1": 4})
    hold(s, 10, "k", ("n1-0", "n1-1"))
    ask(s, 1, "a", 4, at=1.0)
    ask(s, 2, "b", 1, at=2.0)
    for t in (3.0, 4.0, 5.0):
        out = s.schedule(t)
        assert out.grants == []
        assert s.free_total == 2  # kept only during the pass
    s.release(10)
    assert granted(s.schedule(6.0)) == {1: ("n1-0", "n1-1", "n1-2", "n1-3")}
    assert 2 in s.demands


def test_reservations_zero_is_pure_backfill() -> None:
    s = make({"n1": 4}, reservations=0)
    hold(s, 10, "k", ("n1-0", "n1-1"))
    ask(s, 1, "a", 4, at=1.0)
    ask(s, 2, "b", 1, at=2.0)
    assert set(granted(s.schedule(3.0))) == {2}


@pytest.mark.parametrize(("reservations", "backfilled"), [(1, True), (2, False)])
def test_reservations_limit_the_blocked_requests_that_keep_gpus(
    reservations: int, backfilled: bool
) -> None:
    s = make({"n1": 4, "n2": 4}, reservations=reservations)
    hold(s, 10, "k", ("n1-0", "n1-1"))
    hold(s, 11, "k", ("n2-0", "n2-1"))
    ask(s, 1, "a", 4, at=1.0)
    ask(s, 2, "c", 4, at=2.0)
    ask(s, 3, "b", 1, at=3.0)
    out = s.schedule(4.0)
    assert set(granted(out)) == ({3} if backfilled else set())


def test_small_requests_use_gpus_a_blocked_request_cannot_use() -> None:
    s = make({"n1": 4, "n2": 2})
    hold(s, 10, "k", ("n1-0", "n1-1"))
    hold(s, 11, "k", ("n2-0",))
    ask(s, 1, "a", 4, at=1.0)
    ask(s, 2, "b", 1, at=2.0)
    assert granted(s.schedule(3.0)) == {2: ("n2-1",)}


def test_reservation_is_kept_on_a_node_where_the_request_fits() -> None:
    """n2 has more free GPUs but only 3 in all: a 4-GPU request can only ever run on n1, so
    that is where it keeps GPUs; b's small request goes to n2 rather than delay a."""
    s = make({"n1": 4, "n2": 3})
    hold(s, 10, "k", ("n1-0", "n1-1"))
    ask(s, 1, "a", 4, at=1.0)
    ask(s, 2, "b", 1, at=2.0)
    out = s.schedule(3.0)
    assert nodes_of(granted(out).get(2, ())) <= {"n2"}
    s.release(10)
    assert granted(s.schedule(4.0)).get(1) == ("n1-0", "n1-1", "n1-2", "n1-3")


def test_a_request_made_impossible_keeps_no_gpus() -> None:
    """A GPU went away: a's 4-GPU request can no longer run anywhere (check() says so). It must
    not keep n1's GPUs from b, whose kernel can only run there."""
    s = make({"n1": 4, "n2": 2})
    ask(s, 1, "a", 4, at=0.0, kind="job", klass=BATCH)
    hold(s, 10, "k", ("n1-1",))
    s.remove_gpu("n1-0")
    assert s.check(s.demands[1]) is not None
    ask(s, 2, "b", 1, at=1.0, node="n1", klass=BATCH)
    assert set(granted(s.schedule(2.0))) == {2}


# -- starvation -----------------------------------------------------------------------------------


@pytest.mark.parametrize(("limit", "winner"), [(100.0, 1), (0.0, 2)])
def test_starvation_limit_promotes_an_old_request(limit: float, winner: int) -> None:
    s = make({"n1": 1}, starvation_limit=limit)
    hold(s, 10, "k", ("n1-0",))
    s.load_usage("a", (), 1e6, 0.0)
    ask(s, 1, "a", at=0.0)
    ask(s, 2, "b", at=150.0)
    assert s.schedule(160.0).grants == []
    s.release(10)
    assert set(granted(s.schedule(200.0))) == {winner}


def test_starved_requests_go_oldest_first() -> None:
    s = make({"n1": 1}, starvation_limit=100.0)
    s.load_usage("a", (), 1e6, 0.0)
    s.load_usage("b", (), 1e3, 0.0)
    ask(s, 1, "b", at=10.0)
    ask(s, 2, "a", at=5.0)
    ask(s, 3, "c", at=500.0)
    assert set(granted(s.schedule(600.0))) == {2}


def test_starvation_limit_stays_within_the_class() -> None:
    s = make({"n1": 1}, starvation_limit=100.0)
    job(s, 1, "a", klass=LOW, at=0.0)
    ask(s, 2, "b", at=999.0)
    assert set(granted(s.schedule(1000.0))) == {2}


# -- models ---------------------------------------------------------------------------------------


def two_models() -> Scheduler:
    s = Scheduler(SchedulingPolicy())
    s.add_gpus(gpus("n1", 2, A100))
    s.add_gpus(gpus("n2", 2, H100))
    s.add_gpus([*gpus("m", 2, A100), *gpus("m", 2, H100, first=2)])
    return s


@pytest.mark.parametrize(
    ("model", "node"), [("A100", "n1"), ("a100", "n1"), (" A100-SXM4 ", "n1"), ("H100", "n2")]
)
def test_model_is_a_case_insensitive_substring(model: str, node: str) -> None:
    s = two_models()
    ask(s, 1, "a", 2, model=model)
    (grant,) = s.schedule(1.0).grants
    assert nodes_of(grant.gpus) in ({node}, {"m"})
    assert all(model.strip().lower() in model_of(s, u).lower() for u in grant.gpus)


def test_model_constraint_on_a_mixed_node() -> None:
    s = two_models()
    hold(s, 10, "k", ("n2-0",))
    ask(s, 1, "a", 2, model="H100")
    assert granted(s.schedule(1.0)) == {1: ("m-2", "m-3")}
    ask(s, 2, "b", 1, model="H100")
    assert granted(s.schedule(2.0)) == {2: ("n2-1",)}
    ask(s, 3, "c", 1, model="H100")
    assert granted(s.schedule(3.0)) == {}


def test_gpu_count_by_model_and_node() -> None:
    s = two_models()
    assert s.gpu_count() == 8
    assert s.gpu_count("A100") == 4
    assert s.gpu_count("h100", node="m") == 2
    assert s.gpu_count(node="m") == 4
    assert s.gpu_count("V100") == 0
    assert s.gpu_count(node="nope") == 0


# -- pinned nodes ---------------------------------------------------------------------------------


def test_pinned_request_uses_only_its_node() -> None:
    s = make({"n1": 2, "n2": 4})
    ask(s, 1, "a", 2, node="n2")
    assert nodes_of(granted(s.schedule(1.0))[1]) == {"n2"}
    hold(s, 10, "k", ("n1-0", "n1-1"))
    ask(s, 2, "b", 1, node="n1", at=2.0)
    assert granted(s.schedule(3.0)) == {}
    s.release(10)
    assert granted(s.schedule(4.0)) == {2: ("n1-0",)}


def test_pinned_request_may_use_several_models_of_its_node() -> None:
    s = two_models()
    ask(s, 1, "a", 4, node="m")
    assert sorted(granted(s.schedule(1.0))[1]) == ["m-0", "m-1", "m-2", "m-3"]


# -- best fit -------------------------------------------------------------------------------------


def test_best_fit_packs_the_node_with_fewest_free_gpus() -> None:
    s = make({"n1": 4, "n2": 4, "n3": 4})
    hold(s, 10, "k", ("n2-0", "n2-1"))
    hold(s, 11, "k", ("n3-0", "n3-1", "n3-2"))
    ask(s, 1, "a", 2, at=1.0)
    assert nodes_of(granted(s.schedule(2.0))[1]) == {"n2"}
    ask(s, 2, "b", 1, at=3.0)
    assert granted(s.schedule(4.0)) == {2: ("n3-3",)}
    ask(s, 3, "c", 4, at=5.0)
    assert nodes_of(granted(s.schedule(6.0))[3]) == {"n1"}


def test_gpus_are_taken_in_index_order() -> None:
    s = make({"n1": 4})
    hold(s, 10, "k", ("n1-1",))
    ask(s, 1, "a", 2)
    assert granted(s.schedule(1.0)) == {1: ("n1-0", "n1-2")}


def test_a_request_that_is_not_a_gang_never_spans_nodes() -> None:
    s = make({"n1": 4, "n2": 4})
    hold(s, 10, "k", ("n1-0", "n1-1"))
    hold(s, 11, "k", ("n2-0", "n2-1"))
    d = ask(s, 1, "a", 3)
    assert s.check(d) is None
    assert s.schedule(1.0).grants == []


# -- gangs ----------------------------------------------------------------------------------------


def test_gang_spans_nodes_fullest_first() -> None:
    s = make({"n1": 4, "n2": 4, "n3": 2})
    hold(s, 10, "k", ("n1-0",))
    job(s, 1, "a", 6, gang=True)
    (grant,) = s.schedule(1.0).grants
    assert len(set(grant.gpus)) == 6
    assert sorted(grant.gpus) == ["n1-1", "n1-2", "n2-0", "n2-1", "n2-2", "n2-3"]


def test_gang_that_fits_one_node_is_packed_there() -> None:
    s = make({"n1": 4, "n2": 4, "n3": 2})
    hold(s, 10, "k", ("n1-0",))
    job(s, 1, "a", 2, gang=True)
    assert nodes_of(granted(s.schedule(1.0))[1]) == {"n3"}


@pytest.mark.parametrize("reservations", [0, 16])
def test_gang_is_all_or_nothing(reservations: int) -> None:
    s = make({"n1": 4, "n2": 4}, reservations=reservations)
    hold(s, 10, "k", ("n1-0", "n1-1", "n1-2"))
    job(s, 1, "a", 6, gang=True)
    out = s.schedule(1.0)
    assert out.grants == []
    assert s.free_total == 5
    assert all(s.holder(u) is None for u in ("n1-3", "n2-0", "n2-1", "n2-2", "n2-3"))
    s.release(10)
    assert len(granted(s.schedule(2.0))[1]) == 6


def test_blocked_gang_keeps_gpus_on_several_nodes() -> None:
    s = make({"n1": 4, "n2": 4})
    hold(s, 10, "k", ("n1-0", "n1-1", "n1-2"))
    job(s, 1, "a", 6, gang=True, at=0.0)
    ask(s, 2, "b", 1, at=1.0, klass=BATCH)
    assert s.schedule(2.0).grants == []


# -- check() --------------------------------------------------------------------------------------


def test_check_explains_impossible_requests() -> None:
    s = two_models()
    d = Demand(id=1, user="a", count=2, klass=INTERACTIVE, submitted_at=0.0)
    assert s.check(d) is None
    # no such model
    why = s.check(Demand(id=1, user="a", count=1, model="V100", klass=BATCH, submitted_at=0.0))
    assert why == f"no GPU of model 'V100' here; models: {A100}, {H100}"
    # larger than any node
    why = s.check(Demand(id=1, user="a", count=3, model="A100", klass=BATCH, submitted_at=0.0))
    assert why is not None
    assert "no node has 3 GPUs of model 'A100'" in why and "the largest has 2" in why
    assert "gang" in why
    # gangs: larger than the cluster
    gang = Demand(id=1, user="a", count=4, gang=True, model="H100", klass=BATCH, submitted_at=0)
    assert s.check(gang) is None
    gang = Demand(id=1, user="a", count=5, gang=True, model="H100", klass=BATCH, submitted_at=0)
    assert s.check(gang) == "the cluster has 4 GPU(s) of model 'H100', fewer than 5"
    gang = Demand(id=1, user="a", count=9, gang=True, klass=BATCH, submitted_at=0)
    assert s.check(gang) == "the cluster has 8 GPU(s), fewer than 9"
    # pinned: the node's own GPUs
    pinned = Demand(id=1, user="a", count=4, node="m", klass=INTERACTIVE, submitted_at=0)
    assert s.check(pinned) is None
    pinned = Demand(id=1, user="a", count=3, node="n1", klass=INTERACTIVE, submitted_at=0)
    assert s.check(pinned) == "node n1 has 2 GPU(s), fewer than 3"
    pinned = Demand(
        id=1, user="a", count=1, node="n1", model="H100", klass=INTERACTIVE, submitted_at=0
    )
    assert s.check(pinned) == "node n1 has 0 GPU(s) of model 'H100', fewer than 1"
    pinned = Demand(id=1, user="a", count=1, node="nope", klass=INTERACTIVE, submitted_at=0)
    assert s.check(pinned) == "node nope has 0 GPU(s), fewer than 1"
    # no GPUs at all
    empty = Scheduler(SchedulingPolicy())
    why = empty.check(d)
    assert why == "there are no GPUs here"


def test_check_ignores_who_holds_what() -> None:
    s = make({"n1": 2})
    hold(s, 10, "k", ("n1-0", "n1-1"))
    assert s.check(Demand(id=1, user="a", count=2, klass=INTERACTIVE, submitted_at=0)) is None


# -- inventory ------------------------------------------------------------------------------------


def test_removed_free_gpu_is_never_handed_out() -> None:
    s = make({"n1": 2})
    s.remove_gpu("n1-1")
    assert s.gpu_count() == 1
    assert s.free_total == 1
    ask(s, 1, "a", 1, at=0.0)
    ask(s, 2, "b", 1, at=1.0)
    assert granted(s.schedule(2.0)) == {1: ("n1-0",)}
    assert s.schedule(3.0).grants == []
    two = Demand(id=3, user="c", count=2, klass=INTERACTIVE, submitted_at=0)
    assert s.check(two) is not None
    s.remove_gpu("n1-1")  # again: nothing happens
    s.remove_gpu("unknown")


def test_removed_held_gpu_stays_with_its_holder_until_released() -> None:
    s = make({"n1": 2})
    hold(s, 10, "k", ("n1-0", "n1-1"))
    s.remove_gpu("n1-0")
    holder = s.holder("n1-0")
    assert holder is not None and holder.id == 10
    assert s.gpu_count() == 1
    s.release(10)
    assert s.free_total == 1
    assert s.holder("n1-0") is None
    ask(s, 1, "a", 1)
    assert granted(s.schedule(1.0)) == {1: ("n1-1",)}
    ask(s, 2, "b", 1)
    assert s.schedule(2.0).grants == []


def test_gpu_added_back_while_held_is_not_free() -> None:
    s = make({"n1": 2})
    hold(s, 10, "k", ("n1-0",))
    s.remove_gpu("n1-0")
    s.add_gpus(gpus("n1", 1))
    assert s.free_total == 1
    s.release(10)
    assert s.free_total == 2


def test_release_of_a_preemptible_job_on_a_removed_gpu_then_preempting() -> None:
    """A preemptible job whose GPU went away is released; a later pass that looks for victims
    must not trip over it."""
    s = make({"n1": 2})
    hold(s, 10, "x", ("n1-0",), klass=LOW, kind="job")
    hold(s, 11, "k", ("n1-1",))
    s.remove_gpu("n1-0")
    s.release(10)
    ask(s, 1, "a", 1, at=1.0)
    out = s.schedule(2.0)
    assert out.grants == [] and out.preemptions == []


# -- set_policy -----------------------------------------------------------------------------------


def test_set_policy_re_ranks_fair_share_off() -> None:
    s = make({"n1": 1})
    hold(s, 10, "k", ("n1-0",))
    s.load_usage("a", (), 1e6, 0.0)
    ask(s, 1, "a", at=0.0)
    ask(s, 2, "b", at=1.0)
    s.schedule(2.0)
    s.set_policy(SchedulingPolicy(fair_share=False))
    s.release(10)
    assert set(granted(s.schedule(3.0))) == {1}


def test_set_policy_re_ranks_class_priorities() -> None:
    s = make({"n1": 1})
    hold(s, 10, "k", ("n1-0",))
    job(s, 1, "a", klass=LOW, at=0.0)
    job(s, 2, "b", klass=BATCH, at=1.0)
    s.schedule(2.0)
    s.set_policy(
        SchedulingPolicy.from_json(
            {
                "classes": {
                    "interactive": {"priority": 100},
                    "batch": {"priority": 10, "preemptible": True},
                    "low": {"priority": 50, "preemptible": True},
                }
            }
        )
    )
    s.release(10)
    assert set(granted(s.schedule(3.0))) == {1}


def test_set_policy_removed_class_falls_back() -> None:
    s = make({"n1": 1})
    hold(s, 10, "k", ("n1-0",))
    job(s, 1, "a", klass=LOW, at=0.0)
    ask(s, 2, "b", klass=LOW, at=1.0)  # a kernel in a class that is going away
    s.set_policy(
        SchedulingPolicy.from_json(
            {
                "classes": {
                    "interactive": {"priority": 100},
                    "batch": {"priority": 50, "preemptible": True},
                }
            }
        )
    )
    assert s.demands[1].klass == BATCH
    assert s.demands[2].klass == INTERACTIVE
    s.release(10)
    assert set(granted(s.schedule(2.0))) == {2}


def test_set_policy_applies_new_quotas() -> None:
    s = make({"n1": 4})
    hold(s, 10, "a", ("n1-0", "n1-1"))
    ask(s, 1, "a", 2, at=0.0)
    s.set_policy(SchedulingPolicy(default_user_quota=2))
    assert s.schedule(1.0).grants == []
    s.set_policy(SchedulingPolicy(default_user_quota=4))
    assert set(granted(s.schedule(2.0))) == {1}


@pytest.mark.parametrize("preemptible", [True, False])
def test_set_policy_re_indexes_preemptible_holdings(preemptible: bool) -> None:
    s = make({"n1": 1})
    hold(s, 10, "x", ("n1-0",), klass=BATCH, kind="job")
    s.set_policy(
        SchedulingPolicy.from_json(
            {
                "classes": {
                    "interactive": {"priority": 100},
                    "batch": {"priority": 50, "preemptible": preemptible},
                }
            }
        )
    )
    ask(s, 1, "a", 1, at=1.0)
    assert preempted(s.schedule(2.0)) == ([(10, 1)] if preemptible else [])


def test_set_policy_re_ranks_group_shares() -> None:
    s = make({"n1": 1}, group_shares={"g1": 1, "g2": 1})
    hold(s, 10, "k", ("n1-0",))
    s.load_usage("a", ("g1",), 300.0, 0.0)
    s.load_usage("b", ("g2",), 100.0, 0.0)
    ask(s, 1, "b", at=0.0, groups=("g2",))
    ask(s, 2, "a", at=1.0, groups=("g1",))
    s.schedule(1.0)
    s.set_policy(SchedulingPolicy(group_shares={"g1": 10.0, "g2": 1.0}))
    s.release(10)
    assert set(granted(s.schedule(2.0))) == {2}


# -- withdraw -------------------------------------------------------------------------------------


def test_withdrawn_request_is_never_granted() -> None:
    s = make({"n1": 1})
    ask(s, 1, "a", at=0.0)
    ask(s, 2, "b", at=1.0)
    assert s.withdraw(1).id == 1
    assert granted(s.schedule(2.0)) == {2: ("n1-0",)}
    with pytest.raises(NotFound):
        s.withdraw(1)
    with pytest.raises(NotFound):
        s.withdraw(2)  # granted: no longer waiting


def test_withdrawing_a_blocked_request_frees_what_it_kept() -> None:
    s = make({"n1": 4})
    hold(s, 10, "k", ("n1-0", "n1-1"))
    ask(s, 1, "a", 4, at=0.0)
    ask(s, 2, "b", 1, at=1.0)
    assert s.schedule(2.0).grants == []
    s.withdraw(1)
    assert set(granted(s.schedule(3.0))) == {2}


def test_withdrawing_a_request_drops_its_nomination() -> None:
    """A preempted holding refers to a request that is waiting or was granted, never to one
    that was withdrawn."""
    s = make({"n1": 2})
    hold(s, 10, "x", ("n1-0", "n1-1"), klass=LOW, kind="job")
    ask(s, 1, "a", 2, at=1.0)
    assert preempted(s.schedule(2.0)) == [(10, 1)]
    s.withdraw(1)
    assert s.holdings[10].preempted_for is None
    assert 1 not in s.pending


def test_a_reused_request_id_is_judged_by_its_new_submission_time() -> None:
    """A request granted (or withdrawn) long ago and queued again under the same id (a
    requeued job) is not "starving" because of its first submission."""
    s = make({"n1": 1}, starvation_limit=100.0)
    s.load_usage("a", (), 1e6, 0.0)
    ask(s, 1, "a", at=0.0)
    assert set(granted(s.schedule(0.0))) == {1}
    s.schedule(10.0)
    s.release(1)
    hold(s, 10, "k", ("n1-0",))
    ask(s, 1, "a", at=500.0)
    ask(s, 2, "b", at=501.0)
    s.schedule(540.0)
    s.release(10)
    # neither has waited 100 s: fair share decides, and a has used far more
    assert set(granted(s.schedule(550.0))) == {2}


def test_a_request_withdrawn_and_queued_again_is_looked_at_once_per_pass() -> None:
    s = make({"n1": 4, "n2": 1}, starvation_limit=10.0)
    hold(s, 10, "k", ("n1-0", "n1-1"))
    ask(s, 1, "a", 4, at=0.0)
    s.withdraw(1)
    ask(s, 1, "a", 4, at=0.0)
    out = s.schedule(100.0)
    assert out.examined == 1


# -- errors and the pass itself -------------------------------------------------------------------


def test_submit_errors() -> None:
    s = make({"n1": 1})
    with pytest.raises(InvalidRequest):
        ask(s, 1, "a", 0)
    with pytest.raises(InvalidRequest):
        ask(s, 1, "a", -2)
    with pytest.raises(PolicyError) as err:
        ask(s, 1, "a", 1, klass="gold")
    assert err.value.field == "class"
    assert s.demands == {}
    ask(s, 1, "a", 1)
    with pytest.raises(Conflict):
        ask(s, 1, "b", 1)


def test_hold_and_release_errors() -> None:
    s = make({"n1": 2})
    hold(s, 10, "k", ("n1-0",))
    with pytest.raises(Conflict):
        hold(s, 10, "k", ("n1-1",))
    with pytest.raises(Conflict):
        hold(s, 11, "k", ("n1-0",))
    assert set(s.holdings) == {10}
    with pytest.raises(NotFound):
        s.release(99)
    assert s.release(10).id == 10
    with pytest.raises(NotFound):
        s.release(10)
    assert s.free_total == 2


def test_grants_are_applied_when_returned() -> None:
    s = make({"n1": 2})
    ask(s, 1, "a", 2, klass=BATCH, kind="job", groups=("ml",))
    out = s.schedule(5.0)
    assert out.grants == [Grant(1, ("n1-0", "n1-1"), False)]
    assert out.examined == 1
    assert 1 not in s.demands
    assert s.holdings[1] == Holding(
        id=1,
        user="a",
        groups=("ml",),
        klass=BATCH,
        kind="job",
        gpus=("n1-0", "n1-1"),
        granted_at=5.0,
    )
    assert s.free_total == 0
    assert s.users["a"].held == 2
    assert s.held_by_group["ml"] == 2


def test_time_does_not_run_backwards() -> None:
    s = make({"n1": 1})
    s.schedule(100.0)
    ask(s, 1, "a")
    s.schedule(50.0)
    assert s.now == 100.0
    assert s.holdings[1].granted_at == 100.0


def test_pass_stops_when_nothing_is_free_and_nobody_can_preempt() -> None:
    s = make({"n1": 1})
    hold(s, 10, "k", ("n1-0",))
    for i in range(5):
        ask(s, i + 1, f"u{i}", at=float(i))
    out = s.schedule(10.0)
    assert out == Outcome(examined=0)


def test_a_full_group_does_not_use_up_the_scan_depth() -> None:
    """Group ml is at its quota: u2's requests all wait over quota. They must not use up the
    pass's scan depth so that c, within quota, is never looked at while GPUs sit idle (a full
    user quota is already passed over this way)."""
    s = Scheduler(SchedulingPolicy(group_quotas={"ml": 2}), max_scan=3)
    s.add_gpus(gpus("n1", 6))
    hold(s, 10, "u1", ("n1-0", "n1-1"), groups=("ml",))
    s.load_usage("c", (), 1000.0, 0.0)
    for i in range(3):
        ask(s, i + 1, "u2", 1, at=float(i), groups=("ml",))
    ask(s, 9, "c", 1, at=5.0)
    assert set(granted(s.schedule(6.0))) == {9}


def test_max_scan_bounds_the_walk_and_step_5_serves_the_pool_beyond_it() -> None:
    s = Scheduler(SchedulingPolicy(reservations=0), max_scan=3)
    s.add_gpus(gpus("n1", 2))
    hold(s, 10, "k", ("n1-0",))
    for i in range(10):
        ask(s, i + 1, f"u{i}", 2, at=float(i))
    ask(s, 11, "late", 1, at=100.0)
    out = s.schedule(200.0)
    assert out.examined == 3
    # the free GPU does not idle: the group of 1-GPU requests offers "late"
    assert granted(out) == {11: ("n1-1",)}
    assert s.unserved() == []


def test_empty_scheduler() -> None:
    s = Scheduler(SchedulingPolicy())
    assert s.schedule(1.0) == Outcome()
    assert s.free_total == 0
    assert s.gpu_count() == 0
    d = Demand(id=1, user="a", count=1, klass=INTERACTIVE, submitted_at=0)
    assert s.check(d) is not None
    s.submit(d)
    assert s.schedule(2.0).grants == []
