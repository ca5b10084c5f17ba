"""A pass after a walk that decided nothing, when only requests of lower classes came since, does
not walk again: it looks at their nodes (step 5) and decides what a walk would."""

from __future__ import annotations

import copy

import pytest

from jupyter_dlinfra.core.scheduling.scheduler import Scheduler
from jupyter_dlinfra.core.scheduling.types import Outcome
from tests.core.test_scheduler import BATCH, INTERACTIVE, ask, granted, hold, job, make


def blocked_head() -> Scheduler:
    """n1 has 2 of its 4 GPUs free, kept for a 4-GPU request of u1 (the one reservation);
    u2's 4-GPU request on the full n2 ends the walk; n3 has 2 free GPUs. Each group is a
    fair-share account."""
    shares = {f"g{i}": 1.0 for i in range(10)}
    s = make({"n1": 4, "n2": 4, "n3": 4}, reservations=1, preemption=False, group_shares=shares)
    hold(s, 100, "u9", ("n1-0", "n1-1"), groups=("g9",))
    hold(s, 101, "u9", tuple(f"n2-{i}" for i in range(4)), groups=("g9",))
    hold(s, 102, "u9", ("n3-0", "n3-1"), groups=("g9",))
    ask(s, 1, "u1", 4, node="n1", groups=("g1",), at=1.0)
    ask(s, 2, "u2", 4, node="n2", groups=("g2",), at=2.0)
    ask(s, 3, "u3", 4, node="n2", groups=("g3",), at=3.0)
    out = s.schedule(10.2)
    assert not out.grants and not out.preemptions
    assert s.reserved == {1: ("n1-2", "n1-3")}
    return s


def walked(s: Scheduler, now: float) -> Outcome:
    """What a pass that walks decides (on a copy)."""
    twin = copy.deepcopy(s)
    twin.walk_next()
    return twin.schedule(now)


def test_a_lower_class_request_is_granted_on_its_node_without_a_walk() -> None:
    s = blocked_head()
    assert s.settled
    job(s, 4, "u4", 2, node="n3", groups=("g4",), at=11.0)
    assert s.settled
    expected = walked(s, 10.5)
    out = s.schedule(10.5)
    assert granted(out) == {4: ("n3-2", "n3-3")} == granted(expected)
    assert out.examined == 0  # no walk
    # u4 is none of the users, accounts or groups the walk saw: it would see the same
    assert s.settled


def test_a_settled_pass_keeps_what_the_last_walk_set_aside() -> None:
    s = blocked_head()
    job(s, 4, "u4", 1, node="n1", groups=("g4",), at=11.0)
    assert s.settled
    out = s.schedule(10.5)
    assert not out.grants  # n1's free GPUs are kept for u1
    assert s.reserved == {1: ("n1-2", "n1-3")}
    assert s.unserved() == []


@pytest.mark.parametrize(
    ("user", "group"),
    [
        ("u2", "g2"),  # seen by the walk, asking again in a lower class: its key grows
        ("u5", "g2"),  # in the account of a user the walk saw: the account's key grows
        ("u5", "g1"),  # a member of a group the walk saw: that group's quota fills
    ],
)
def test_a_grant_to_someone_the_walk_saw_makes_the_next_pass_walk(user: str, group: str) -> None:
    s = blocked_head()
    job(s, 4, user, 2, node="n3", groups=(group,), at=11.0)
    assert s.settled
    out = s.schedule(10.5)
    assert granted(out) == {4: ("n3-2", "n3-3")}
    assert not s.settled


def test_changes_that_can_move_the_head_make_the_next_pass_walk() -> None:
    # a request of the class the walk stopped in may rank before where it stopped
    s = blocked_head()
    ask(s, 4, "u4", 1, node="n2", klass=INTERACTIVE, at=11.0)
    assert not s.settled
    # a request for any node (it may take GPUs anywhere)
    s = blocked_head()
    job(s, 4, "u4", 1, klass=BATCH, at=11.0)
    assert not s.settled
    # a release, a withdrawal, GPUs coming or going
    for change in (
        lambda s: s.release(101),
        lambda s: s.withdraw(3),
        lambda s: s.remove_gpu("n3-3"),
        lambda s: s.set_outside("n3", 1),
    ):
        s = blocked_head()
        change(s)
        assert not s.settled
        assert s.schedule(10.5).examined > 0
    # the next step of order keys (fair-share usage decays with time)
    s = blocked_head()
    job(s, 4, "u4", 1, node="n2", groups=("g4",), at=11.0)
    s.now = 11.5
    assert not s.settled
    assert s.schedule(11.5).examined > 0


def test_a_walk_that_saw_every_request_does_not_settle() -> None:
    s = make({"n1": 2}, preemption=False)
    hold(s, 100, "u9", ("n1-0",))
    ask(s, 1, "u1", 2, node="n1")
    s.schedule(1.0)
    assert not s.settled  # a new request would be looked at: the walk ran out of requests


def test_a_grant_that_a_seen_request_could_preempt_makes_the_next_pass_walk() -> None:
    def seen_n1_n2() -> Scheduler:
        """As blocked_head, with preemption on and 2 free GPUs on n2 (10 others ask for 4
        there; u9's kernels cannot be preempted) and on n3."""
        shares = {f"g{i}": 1.0 for i in range(10)}
        s = make({"n1": 4, "n2": 4, "n3": 4}, reservations=1, group_shares=shares)
        hold(s, 100, "u9", ("n1-0", "n1-1"), groups=("g9",))
        hold(s, 101, "u9", ("n2-0", "n2-1"), groups=("g9",))
        hold(s, 102, "u9", ("n3-0", "n3-1"), groups=("g9",))
        ask(s, 1, "u1", 4, node="n1", groups=("g1",), at=1.0)
        # a walk with preemption on looks for 8 blocked requests that may preempt
        for rid in range(2, 12):
            ask(s, rid, f"w{rid}", 4, node="n2", groups=(f"h{rid}",), at=float(rid))
        out = s.schedule(10.2)
        assert not out.grants and not out.preemptions and s.settled
        return s

    # a batch job (preemptible) granted on n2, where interactive requests the walk saw wait
    s = seen_n1_n2()
    job(s, 40, "u4", 2, node="n2", groups=("g4",), at=11.0)
    assert granted(s.schedule(10.5)) == {40: ("n2-2", "n2-3")}
    assert not s.settled
    # the same on n3, where no request the walk saw waits
    s = seen_n1_n2()
    job(s, 40, "u4", 2, node="n3", groups=("g4",), at=11.0)
    assert granted(s.schedule(10.5)) == {40: ("n3-2", "n3-3")}
    assert s.settled
