"""Parked grants in the scheduler: their GPUs are lent only to preemptible jobs, taken back at
once when the kernel resumes, and never seen free by anything else."""

from __future__ import annotations

import copy

import pytest

from jupyter_dlinfra.core.errors import Conflict, NotFound
from jupyter_dlinfra.core.scheduling.policy import SchedulingPolicy

from .test_scheduler import BATCH, INTERACTIVE, ask, granted, hold, job, make, preempted

N1 = ("n1-0", "n1-1")


def parked_scheduler(**policy: object):  # type: ignore[no-untyped-def]
    s = make({"n1": 2}, **policy)
    hold(s, 1, "ann", N1)
    s.park(1)
    return s


def test_a_parked_grants_gpus_are_lent_to_a_preemptible_job_and_nothing_else() -> None:
    s = parked_scheduler()
    ask(s, 2, "bob", 1, node="n1")  # a kernel: never lent parked GPUs
    job(s, 3, "cat", 2, klass=INTERACTIVE, node="n1")  # a job of a class nobody preempts
    out = s.schedule(1.0)
    assert granted(out) == {}
    assert s.free_total == 0  # the pools never count them free
    job(s, 4, "dan", 2, node="n1")  # batch: preemptible
    out = s.schedule(2.0)
    assert granted(out) == {4: N1}
    assert out.grants[0].on_loan
    assert s.holdings[4].on_loan


def test_a_pool_job_borrows_parked_gpus_of_any_node_and_gangs_do_not() -> None:
    s = parked_scheduler()
    job(s, 5, "eve", 2, gang=True)
    job(s, 6, "fay", 1)
    out = s.schedule(1.0)
    assert granted(out) == {6: ("n1-0",)}


def test_resume_with_nothing_lent_holds_the_gpus_again_at_once() -> None:
    s = parked_scheduler()
    done, preemptions = s.resume(1)
    assert done and preemptions == []
    assert s.holdings[1].gpus == N1
    assert s.holder("n1-0") is not None and s.holder("n1-0").id == 1  # type: ignore[union-attr]
    job(s, 4, "dan", 2, node="n1")
    assert granted(s.schedule(1.0)) == {}  # nothing lendable any more


def test_resume_preempts_the_loan_then_completes_in_the_pass_after_it_ended() -> None:
    s = parked_scheduler()
    job(s, 4, "dan", 2, node="n1")
    s.schedule(1.0)
    done, preemptions = s.resume(1)
    assert not done
    assert [(p.holding_id, p.request_id) for p in preemptions] == [(4, 1)]
    assert "resumed" in preemptions[0].message
    job(s, 7, "gil", 1, node="n1")
    out = s.schedule(2.0)
    assert out.resumed == [] and granted(out) == {}  # the loan still runs
    s.release(4)
    out = s.schedule(3.0)
    assert out.resumed == [1]
    assert granted(out) == {}  # nothing is lent on a grant that resumed
    assert s.holdings[1].gpus == N1
    assert 1 not in s.parking.parked


def test_gpus_freed_by_a_loan_while_resuming_are_not_lent_again() -> None:
    s = make({"n1": 4})
    hold(s, 1, "ann", N1)
    s.park(1)
    job(s, 4, "dan", 1, node="n1")
    job(s, 5, "eve", 1, node="n1")
    hold(s, 9, "zed", ("n1-2", "n1-3"))
    assert set(granted(s.schedule(1.0))) == {4, 5}
    _, preemptions = s.resume(1)
    assert sorted(p.holding_id for p in preemptions) == [4, 5]
    s.release(4)
    job(s, 6, "fay", 1, node="n1")
    out = s.schedule(2.0)
    assert granted(out) == {} and out.resumed == []
    s.release(5)
    assert s.schedule(3.0).resumed == [1]


def test_a_loans_end_makes_its_gpus_lendable_again() -> None:
    s = parked_scheduler()
    job(s, 4, "dan", 2, node="n1")
    s.schedule(1.0)
    job(s, 5, "eve", 1, node="n1")
    assert granted(s.schedule(2.0)) == {}
    s.release(4)
    assert granted(s.schedule(3.0)) == {5: ("n1-0",)}
    assert s.free_total == 0


def test_a_parked_grant_keeps_its_quota_charge() -> None:
    s = make({"n1": 4}, user_quotas={"ann": 2})
    hold(s, 1, "ann", N1)
    s.park(1)
    ask(s, 2, "ann", 1, node="n1")
    out = s.schedule(1.0)
    assert granted(out) == {}
    assert s.over_quota(s.demands[2]) is not None


def test_releasing_a_parked_grant_frees_what_is_not_lent_and_the_loan_keeps_the_rest() -> None:
    s = parked_scheduler()
    job(s, 4, "dan", 1, node="n1")
    s.schedule(1.0)
    s.release(1)
    assert s.users["ann"].held == 0
    assert s.free_total == 1
    ask(s, 2, "bob", 1, node="n1")
    assert granted(s.schedule(2.0)) == {2: ("n1-1",)}
    s.release(4)
    assert s.free_total == 1  # the loan's GPU is everyone's now


def test_loans_are_not_victims_of_ordinary_preemption() -> None:
    s = parked_scheduler(preemption=True)
    job(s, 4, "dan", 2, node="n1")
    s.schedule(1.0)
    ask(s, 2, "bob", 2, node="n1")  # an interactive kernel, blocked
    assert preempted(s.schedule(2.0)) == []


def test_park_refuses_what_cannot_be_parked() -> None:
    s = parked_scheduler()
    with pytest.raises(NotFound):
        s.park(1)  # already parked
    with pytest.raises(NotFound):
        s.resume(42)
    job(s, 4, "dan", 2, node="n1")
    s.schedule(1.0)
    with pytest.raises(Conflict):
        s.park(4)  # a loan


def test_a_parked_state_copies_and_restores() -> None:
    s = parked_scheduler()
    job(s, 4, "dan", 1, node="n1")
    s.schedule(1.0)
    probe = copy.deepcopy(s)
    assert probe.resume(1)[0] is False
    assert s.parking.resuming == set()

    again = make({"n1": 2})
    # a loan loaded before the grant it borrows from, then the parked grant
    hold(again, 4, "dan", ("n1-0",), klass=BATCH, kind="job")
    again.parking.restore(s.parking.parked[1], resuming=False)
    assert again.parking.lendable == {"n1": ["n1-1"]}
    assert again.users["ann"].held == 2
    assert again.free_total == 0


def test_pool_requests_that_may_borrow_are_kept_only_while_they_wait() -> None:
    s = make({"n1": 2})
    job(s, 5, "eve", 1)
    ask(s, 6, "fay", 1)  # a kernel of the pool: never a borrower
    assert list(s.parking._pool_borrowers) == [5]
    s.schedule(1.0)  # granted from the free GPUs
    assert s.parking._pool_borrowers == {}
    job(s, 7, "gil", 1)
    s.withdraw(7)
    assert s.parking._pool_borrowers == {}


def test_a_new_policy_decides_again_who_may_borrow() -> None:
    s = parked_scheduler()
    job(s, 8, "hal", 1, node="n1", klass="low")
    policy = s.policy.to_json()
    policy["classes"]["low"]["preemptible"] = False
    policy["classes"]["batch"]["preemptible"] = False
    s.set_policy(SchedulingPolicy.from_json(policy))
    assert granted(s.schedule(1.0)) == {}
