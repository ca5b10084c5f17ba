"""Usage reports against a history built through the ledger, with figures worked out by hand.

The day starts at D (a UTC midnight); buckets of utilisation are an hour long here. Node a has
four A100s.

- alice holds 2 GPUs from 00:30 to 03:30, busy 50 % (peak 90) in 01:00-02:00, idle 02:00-03:00,
  100 % in 03:00-04:00;
- bob holds 2 GPUs from 00:00 until the idle reclaim takes them at 02:00 (1 %, peak 3, in
  01:00-02:00);
- carol asks for 4 GPUs at 00:40, is granted them at 03:30 (a wait of 2 h 50 min) and holds
  them past the period's end, at 40 % (peak 60) in 03:00-04:00 and 80 % (peak 100) after.

The period is 01:00 to 25:00: alice's and carol's grants cross its edges. Jobs: one of bob's
succeeded, one of carol's failed.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy import delete, update

from jupyter_dlinfra.core.books.idle import IdleBook, UsageBucket
from jupyter_dlinfra.core.books.jobs import JobBook, JobState, NewJob
from jupyter_dlinfra.core.books.reports import UsageReport, usage_report
from jupyter_dlinfra.core.books.usage_hours import UsageHours
from jupyter_dlinfra.core.clock import ManualClock
from jupyter_dlinfra.core.errors import InvalidRequest
from jupyter_dlinfra.core.models import AllocationState
from jupyter_dlinfra.core.store import meta, usage_hours

from .kit import Kit

D = 19676 * 86400.0  # after the kit's clock starts
H = 3600.0
SINCE, UNTIL = D + H, D + 25 * H
BUCKET_S = 3600.0


def _buckets(
    book: IdleBook, kernel: str, user: str, gpus: int, **by_hour: tuple[float, float]
) -> None:
    """One bucket per hour h (``h3=(mean, peak)``): one sample of the mean and one of the peak
    would not give both, so the bucket is written as the reclaim sums it."""
    found = []
    for name, (mean, peak) in by_hour.items():
        b = UsageBucket(
            kernel_id=kernel, bucket=D + int(name[1:]) * H, user=user, path=None, gpus=gpus
        )
        b.util_sum, b.util_max, b.samples = mean * 2, peak, 2
        found.append(b)
    book.record_usage(found)


def at(clock: ManualClock, when: float) -> None:
    clock.advance(when - clock.now())


@pytest.fixture
def history(kit: Kit) -> Iterator[Kit]:
    ledger, clock = kit.ledger, kit.clock
    at(clock, D)
    kit.node("node-a")
    for who in ("alice", "bob", "carol"):
        kit.kernel(f"k-{who}", user=who)
    assert ledger.request(kernel_id="k-bob", count=2).state is AllocationState.GRANTED
    at(clock, D + 1800)
    alice = ledger.request(kernel_id="k-alice", count=2)
    assert alice.state is AllocationState.GRANTED
    at(clock, D + 2400)
    assert ledger.request(kernel_id="k-carol", count=4).state is AllocationState.QUEUED
    at(clock, D + 2 * H)
    ledger.release_kernel("k-bob", reason="reclaimed: idle for 2 hours")
    at(clock, D + 3.5 * H)
    ledger.release(alice.id, reason="released by the user")
    carol = next(a for a in ledger.allocations(user="carol"))
    assert carol.state is AllocationState.GRANTED and carol.granted_at == D + 3.5 * H
    idle = IdleBook(kit.store, clock)
    _buckets(idle, "k-alice", "alice", 2, h0=(0, 0), h1=(50, 90), h2=(0, 2), h3=(100, 100))
    _buckets(idle, "k-bob", "bob", 2, h0=(0, 0), h1=(1, 3))
    _buckets(idle, "k-carol", "carol", 4, h3=(40, 60), **{f"h{h}": (80, 100) for h in range(4, 26)})
    jobs = JobBook(kit.store, clock)
    for user, state in (("bob", JobState.SUCCEEDED), ("carol", JobState.FAILED)):
        job = jobs.create(
            NewJob(
                user=user,
                name="train",
                path="t.ipynb",
                backend="local",
                node="node-a",
                server_id="s",
            ),
            workdir_for=lambda i: f"/tmp/job-{i}",
        )
        jobs.finish(job.id, state, "done")
    at(clock, D + 30 * H)
    yield kit


def _report(kit: Kit, **kw: object) -> UsageReport:
    args: dict[str, object] = {
        "since": SINCE,
        "until": UNTIL,
        "now": kit.clock.now(),
        "bucket_s": BUCKET_S,
        "idle_percent": 5.0,
    }
    args.update(kw)
    return usage_report(kit.store, **args)  # type: ignore[arg-type]


def _hours(seconds: float) -> float:
    return round(seconds / H, 6)


EXPECTED = {
    # user: held, observed, busy, idle, reclaimed GPU-hours
    "carol": (86.0, 86.0, 68.0, 0.0, 0.0),
    "alice": (5.0, 5.0, 2.0, 2.0, 0.0),
    "bob": (2.0, 2.0, 0.02, 2.0, 2.0),
}


def _figures(report: UsageReport) -> dict[str, tuple[float, ...]]:
    return {
        r.key: tuple(_hours(x) for x in (r.held_s, r.observed_s, r.busy_s, r.idle_s, r.reclaimed_s))
        for r in report.rows
    }


def test_a_report_by_user_gives_the_figures_worked_out_by_hand(history: Kit) -> None:
    report = _report(history, by="user", step="day")
    assert [r.key for r in report.rows] == ["carol", "alice", "bob"]  # most GPU-hours first
    assert _figures(report) == EXPECTED
    total = report.total
    assert _hours(total.held_s) == 93.0 and _hours(total.busy_s) == 70.02
    assert _hours(total.idle_s) == 4.0 and _hours(total.reclaimed_s) == 2.0
    # only carol's grant fell in the period: 00:40 to 03:30
    assert {r.key: r.waits for r in report.rows} == {"carol": [10200.0], "alice": [], "bob": []}
    assert {r.key: dict(r.jobs) for r in report.rows} == {
        "carol": {"failed": 1},
        "alice": {},
        "bob": {"succeeded": 1},
    }
    # steps of a day from the period's first day: 01:00-24:00 of day D, then 00:00-01:00
    assert report.starts == [D, D + 24 * H]
    carol = next(r for r in report.rows if r.key == "carol")
    assert [_hours(carol.steps[i].held_s) for i in (0, 1)] == [82.0, 4.0]


def test_rolled_up_hours_give_the_same_report_as_the_raw_records(history: Kit) -> None:
    before = _report(history)
    hours = UsageHours(history.store)
    rolled = 0
    while True:
        done = hours.roll_up(
            history.clock.now(), bucket_s=BUCKET_S, idle_percent=5.0, retention=400 * 86400
        )
        if not done:
            break
        rolled += done
    # from the first grant's hour to the last settled one
    assert rolled == 29
    after = _report(history)
    assert _figures(after) == _figures(before) == EXPECTED
    assert [_hours(s.held_s) for s in after.total.steps.values()] == [
        _hours(s.held_s) for s in before.total.steps.values()
    ]
    # rolled up to 10:00 only: the rest is worked out from the records
    ten = int((D + 10 * H) // H)
    with history.store.write() as tx:
        tx.conn.execute(delete(usage_hours).where(usage_hours.c.hour >= ten))
        tx.conn.execute(update(meta).where(meta.c.key == "usage_hours").values(value=ten))
    assert _figures(_report(history)) == EXPECTED


def test_reports_by_class_model_node_and_group(history: Kit) -> None:
    by_model = _report(history, by="model", step="hour")
    # the jobs asked for no model (and got no GPUs from the ledger): a row of their own
    assert [r.key for r in by_model.rows] == ["NVIDIA A100-SXM4-80GB", "(any)"]
    assert by_model.rows[1].held_s == 0 and dict(by_model.rows[1].jobs) == {
        "succeeded": 1,
        "failed": 1,
    }
    assert len(by_model.starts) == 24
    assert _hours(by_model.rows[0].held_s) == 93.0
    by_node = _report(history, by="node")
    assert [(r.key, _hours(r.held_s)) for r in by_node.rows] == [("node-a", 93.0)]
    by_group = _report(history, by="group")
    assert [r.key for r in by_group.rows] == ["(none)"]
    by_class = _report(history, by="class")
    assert sum(_hours(r.held_s) for r in by_class.rows) == 93.0


def test_one_users_report_holds_only_their_figures(history: Kit) -> None:
    report = _report(history, user="alice")
    assert _figures(report) == {"alice": EXPECTED["alice"]}
    assert _hours(report.total.held_s) == 5.0


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"by": "team"}, "by must be one of"),
        ({"step": "week"}, "step must be one of"),
        ({"since": UNTIL}, "since must come before until"),
        ({"since": D - 500 * 86400}, "400 days at most"),
        ({"since": float("nan")}, "since must come before until"),
        ({"since": UNTIL - 90 * 86400, "step": "hour"}, "ask for step=day"),
    ],
)
def test_bad_report_questions_are_refused_with_the_reason(
    history: Kit, kw: dict[str, object], message: str
) -> None:
    with pytest.raises(InvalidRequest, match=message):
        _report(history, **kw)
