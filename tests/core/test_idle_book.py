"""The idle book on both stores: states with ledger events, keeps, messages, policy, usage."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from sqlalchemy import select

from jupyter_dlinfra.core.books.idle import (
    EVENT_KINDS,
    IdleBook,
    Reading,
    StoredPolicy,
    UsageBucket,
)
from jupyter_dlinfra.core.errors import Conflict, NotFound
from jupyter_dlinfra.core.idle import IdlePolicy, IdleState, Phase, ReclaimPolicy, Transition
from jupyter_dlinfra.core.replay import UsageSeries
from jupyter_dlinfra.core.store import usage

from .kit import Kit

#: idle 60 s, warn 120 s, reclaim 240 s (lead 120 s), keep 300 s, 2 keeps
POLICY = IdlePolicy(
    idle_after=60, warn_after=120, reclaim_after=240, keep_extension=300, max_keeps=2
)


def policy_for(_kernel_id: str) -> IdlePolicy | None:
    return POLICY


@pytest.fixture
def book(kit: Kit) -> IdleBook:
    return IdleBook(kit.store, kit.clock)


def last_seq(kit: Kit) -> int:
    evs = kit.ledger.events(limit=100_000)
    return evs[-1].seq if evs else 0


def read(
    book: IdleBook,
    kernel_id: str,
    util: float,
    at: float,
    allocation_id: int | None = None,
    policy: Callable[[str], IdlePolicy | None] = policy_for,
) -> list[Transition]:
    return book.observe(
        [Reading(kernel_id=kernel_id, utilization=util, at=at, allocation_id=allocation_id)],
        policy,
    )


def test_event_kinds() -> None:
    assert EVENT_KINDS == {
        "idle": "gpu_idle",
        "active": "gpu_active",
        "warned": "idle_warning",
        "kept": "idle_kept",
        "reclaimed": "idle_reclaimed",
    }


# -- observe -----------------------------------------------------------------------------------


def test_observe_writes_states_and_events_in_order(kit: Kit, book: IdleBook) -> None:
    kit.node("node-a")
    kit.kernel("k1")
    alloc = kit.ledger.request(kernel_id="k1", count=1)
    t = kit.clock.now()
    seq = last_seq(kit)

    assert read(book, "k1", 0.0, t, alloc.id) == []
    assert book.state("k1") == IdleState(kernel_id="k1", idle_since=t, last_util=0.0, updated_at=t)
    assert kit.ledger.events(since=seq) == []

    out = read(book, "k1", 1.0, t + 60, alloc.id)
    assert [(x.kind, x.at) for x in out] == [("idle", t + 60)]
    out = read(book, "k1", 0.0, t + 120, alloc.id)
    assert [(x.kind, x.at) for x in out] == [("warned", t + 120)]
    assert book.state("k1").phase is Phase.WARNED
    assert book.state("k1").warned_at == t + 120
    assert read(book, "k1", 0.0, t + 239, alloc.id) == []
    out = read(book, "k1", 0.0, t + 240, alloc.id)
    assert [(x.kind, x.at) for x in out] == [("reclaimed", t + 240)]
    assert book.state("k1") == IdleState(
        kernel_id="k1",
        phase=Phase.RECLAIMED,
        idle_since=t,
        warned_at=t + 120,
        reclaimed_at=t + 240,
        last_util=0.0,
        updated_at=t + 240,
    )
    out = read(book, "k1", 50.0, t + 300, alloc.id)
    assert [(x.kind, x.at) for x in out] == [("active", t + 300)]
    assert book.state("k1") == IdleState(kernel_id="k1", last_util=50.0, updated_at=t + 300)

    evs = kit.ledger.events(since=seq)
    assert [(e.kind, e.at, e.kernel_id, e.allocation_id) for e in evs] == [
        ("gpu_idle", t + 60, "k1", alloc.id),
        ("idle_warning", t + 120, "k1", alloc.id),
        ("idle_reclaimed", t + 240, "k1", alloc.id),
        ("gpu_active", t + 300, "k1", alloc.id),
    ]
    assert [e.detail for e in evs] == [
        {"idle_s": 60.0},
        {"idle_s": 120.0, "reclaim_at": t + 240, "action": "release", "keeps_left": 2},
        {"idle_s": 240.0, "action": "release"},
        {"was": "reclaimed", "idle_s": 300.0},
    ]
    assert [e.seq for e in evs] == sorted(e.seq for e in evs)


def test_observe_several_kernels_in_reading_order(kit: Kit, book: IdleBook) -> None:
    t = kit.clock.now()
    seq = last_seq(kit)
    readings = [Reading(kernel_id=k, utilization=0.0, at=t) for k in ("kb", "ka", "kc")]
    assert book.observe(readings, policy_for) == []
    readings = [
        Reading(kernel_id="kb", utilization=0.0, at=t + 60, allocation_id=7),
        Reading(kernel_id="ka", utilization=0.0, at=t + 60),
        Reading(kernel_id="kc", utilization=90.0, at=t + 60, allocation_id=9),
    ]
    out = book.observe(readings, policy_for)
    assert [(x.kernel_id, x.kind) for x in out] == [("kb", "idle"), ("ka", "idle")]
    evs = kit.ledger.events(since=seq)
    assert [(e.kind, e.kernel_id, e.allocation_id) for e in evs] == [
        ("gpu_idle", "kb", 7),
        ("gpu_idle", "ka", None),
    ]
    states = book.states()
    assert set(states) == {"ka", "kb", "kc"}
    assert states["ka"].phase is Phase.IDLE
    assert states["kb"].phase is Phase.IDLE
    assert states["kc"] == IdleState(kernel_id="kc", last_util=90.0, updated_at=t + 60)
    assert book.states(["ka", "zz"]) == {"ka": states["ka"]}


def test_exempt_kernel_is_active(kit: Kit, book: IdleBook) -> None:
    t = kit.clock.now()
    read(book, "k1", 0.0, t)
    read(book, "k1", 0.0, t + 60)
    assert book.state("k1").phase is Phase.IDLE
    seq = last_seq(kit)
    out = read(book, "k1", 0.0, t + 70, policy=lambda _k: None)
    assert [(x.kind, x.detail) for x in out] == [("active", {"was": "idle", "idle_s": 70.0})]
    assert [e.kind for e in kit.ledger.events(since=seq)] == ["gpu_active"]
    assert book.state("k1") == IdleState(kernel_id="k1", last_util=0.0, updated_at=t + 70)


def test_observe_is_one_transaction(kit: Kit, book: IdleBook) -> None:
    t = kit.clock.now()
    book.observe([Reading(kernel_id=k, utilization=0.0, at=t) for k in ("k1", "k2")], policy_for)
    before_states = book.states()
    seq = last_seq(kit)

    def failing(kernel_id: str) -> IdlePolicy | None:
        if kernel_id == "k2":
            raise RuntimeError("no policy")
        return POLICY

    with pytest.raises(RuntimeError):
        book.observe(
            [Reading(kernel_id=k, utilization=0.0, at=t + 60) for k in ("k1", "k2")], failing
        )
    # k1 went idle in the failed pass: neither its state nor its event was kept
    assert book.states() == before_states
    assert kit.ledger.events(since=seq) == []


def test_unread_kernels_lose_their_state_unless_a_message_waits(kit: Kit, book: IdleBook) -> None:
    t = kit.clock.now()
    book.observe(
        [Reading(kernel_id=k, utilization=0.0, at=t) for k in ("k1", "k2", "k3")], policy_for
    )
    book.observe(
        [Reading(kernel_id=k, utilization=0.0, at=t + 60) for k in ("k1", "k2", "k3")],
        policy_for,
    )
    k3 = book.state("k3")
    assert k3.phase is Phase.IDLE
    book.set_message("k3", "your GPUs were reclaimed")
    seq = last_seq(kit)
    out = read(book, "k1", 0.0, t + 70)
    assert out == []
    assert set(book.states()) == {"k1", "k3"}
    assert book.state("k3") == k3
    assert book.state("k2") == IdleState(kernel_id="k2")
    # forgetting writes no event
    assert kit.ledger.events(since=seq) == []
    # an empty reading forgets every kernel without a message
    book.observe([], policy_for)
    assert set(book.states()) == {"k3"}
    assert book.take_message("k3") == "your GPUs were reclaimed"
    assert book.states() == {}


# -- keep --------------------------------------------------------------------------------------


def test_keep_records_who(kit: Kit, book: IdleBook) -> None:
    t = kit.clock.now()
    for dt in (0, 60, 120):
        read(book, "k1", 0.0, t + dt, allocation_id=3)
    assert book.state("k1").phase is Phase.WARNED
    kit.clock.advance(130)
    seq = last_seq(kit)
    kept = book.keep("k1", POLICY, who="alice")
    assert kept == IdleState(
        kernel_id="k1",
        phase=Phase.IDLE,
        idle_since=t,
        warned_at=None,
        keeps=1,
        hold_until=t + 430,
        last_util=0.0,
        updated_at=t + 130,
    )
    assert book.state("k1") == kept
    evs = kit.ledger.events(since=seq)
    assert [(e.kind, e.at, e.kernel_id, e.allocation_id) for e in evs] == [
        ("idle_kept", t + 130, "k1", None)
    ]
    assert evs[0].detail == {"hold_until": t + 430, "keeps_left": 1, "who": "alice"}

    # the next warning comes lead (120 s) before the hold ends
    assert read(book, "k1", 0.0, t + 309) == []
    out = read(book, "k1", 0.0, t + 310)
    assert [(x.kind, x.detail["reclaim_at"]) for x in out] == [("warned", t + 430)]

    kit.clock.advance(200)
    second = book.keep("k1", POLICY, who="bob")
    assert second.keeps == 2
    assert second.hold_until == t + 630
    assert kit.ledger.events()[-1].detail == {"hold_until": t + 630, "keeps_left": 0, "who": "bob"}
    seq = last_seq(kit)
    with pytest.raises(Conflict):
        book.keep("k1", POLICY, who="alice")
    assert book.state("k1") == second
    assert kit.ledger.events(since=seq) == []


def test_keep_refusals(kit: Kit, book: IdleBook) -> None:
    with pytest.raises(NotFound) as err:
        book.keep("nobody", POLICY, who="alice")
    assert err.value.reason == "no_idle_state"
    t = kit.clock.now()
    read(book, "k1", 0.0, t)  # the stretch starts, not idle yet
    seq = last_seq(kit)
    before = book.state("k1")
    with pytest.raises(Conflict):
        book.keep("k1", POLICY, who="alice")
    read(book, "k1", 0.0, t + 60)
    idle = book.state("k1")
    with pytest.raises(Conflict):
        book.keep("k1", None, who="alice")
    assert book.state("k1") == idle
    assert before.phase is Phase.ACTIVE
    assert [e.kind for e in kit.ledger.events(since=seq)] == ["gpu_idle"]


# -- messages ----------------------------------------------------------------------------------


def test_set_message_and_take_it_once(kit: Kit, book: IdleBook) -> None:
    kit.clock.advance(5)
    now = kit.clock.now()
    book.set_message("k9", "restarted without GPUs")
    assert book.state("k9") == IdleState(kernel_id="k9", updated_at=now)
    assert book.take_message("k9") == "restarted without GPUs"
    assert book.take_message("k9") is None
    assert book.states() == {}
    assert book.take_message("never") is None


def test_message_survives_observe_and_keeps_the_state(kit: Kit, book: IdleBook) -> None:
    t = kit.clock.now()
    for dt in (0, 60, 120, 240):
        read(book, "k1", 0.0, t + dt)
    reclaimed = book.state("k1")
    assert reclaimed.phase is Phase.RECLAIMED
    book.set_message("k1", "first")
    book.set_message("k1", "second")
    assert book.state("k1") == reclaimed
    read(book, "k1", 0.0, t + 300)
    # a reading that changes nothing but the latest utilisation is not written
    assert book.state("k1") == reclaimed
    assert book.take_message("k1") == "second"
    assert book.state("k1") == IdleState(kernel_id="k1")
    assert book.take_message("k1") is None


def test_take_message_without_message_drops_the_state(kit: Kit, book: IdleBook) -> None:
    t = kit.clock.now()
    read(book, "k1", 0.0, t)
    assert book.take_message("k1") is None
    assert book.states() == {}


def test_clear(kit: Kit, book: IdleBook) -> None:
    t = kit.clock.now()
    book.observe([Reading(kernel_id=k, utilization=0.0, at=t) for k in ("k1", "k2")], policy_for)
    book.set_message("k1", "bye")
    book.clear("k1")
    assert set(book.states()) == {"k2"}
    assert book.take_message("k1") is None


# -- the policy --------------------------------------------------------------------------------


def test_no_stored_policy(book: IdleBook) -> None:
    assert book.stored_policy() is None
    assert book.policy_changes() == []


def test_set_policy_audits_each_changed_field(kit: Kit, book: IdleBook) -> None:
    t = kit.clock.now()
    seq = last_seq(kit)
    first = ReclaimPolicy.from_json(
        {
            "warn_after": 900,
            "action": "notify",
            "users": {"bob": {"exempt": True}},
            "groups": {"ml": {"reclaim_after": 7200, "max_keeps": 1}},
        }
    )
    changes = book.set_policy(first, who="admin", previous=ReclaimPolicy())
    expected = [
        ("action", "release", "notify"),
        ("groups.ml.max_keeps", None, 1),
        ("groups.ml.reclaim_after", None, 7200.0),
        ("users.bob.exempt", None, True),
        ("warn_after", 1800.0, 900.0),
    ]
    assert sorted((c.field, c.old, c.new) for c in changes) == expected
    assert {(c.at, c.who) for c in changes} == {(t, "admin")}
    audit = book.policy_changes()
    assert sorted(audit, key=lambda c: c.seq) == sorted(changes, key=lambda c: c.seq)
    assert [c.seq for c in audit] == sorted((c.seq for c in audit), reverse=True)
    assert [c.field for c in sorted(audit, key=lambda c: c.seq)] == [e[0] for e in expected]
    assert book.policy_changes(limit=2) == audit[:2]
    assert book.stored_policy() == StoredPolicy(policy=first, updated_at=t, updated_by="admin")
    evs = kit.ledger.events(since=seq)
    assert [(e.kind, e.detail) for e in evs] == [
        ("policy_changed", {"who": "admin", "fields": [e[0] for e in expected]})
    ]

    # the same policy again: stored, but nothing audited
    kit.clock.advance(10)
    seq = last_seq(kit)
    assert book.set_policy(first, who="carol", previous=first) == []
    assert book.policy_changes() == audit
    assert kit.ledger.events(since=seq) == []
    assert book.stored_policy() == StoredPolicy(policy=first, updated_at=t + 10, updated_by="carol")

    # a second change: one value changes, an override goes
    kit.clock.advance(10)
    second = ReclaimPolicy.from_json(
        {"groups": {"ml": {"reclaim_after": 3000, "max_keeps": 1}}}, base=first
    )
    second = ReclaimPolicy.from_json({"users": {}}, base=second)
    changes = book.set_policy(second, who="dana", previous=first)
    assert sorted((c.field, c.old, c.new, c.who, c.at) for c in changes) == [
        ("groups.ml.reclaim_after", 7200.0, 3000.0, "dana", t + 20),
        ("users.bob.exempt", True, None, "dana", t + 20),
    ]
    assert len(book.policy_changes()) == 7
    assert book.policy_changes()[2:] == audit
    assert book.stored_policy() == StoredPolicy(policy=second, updated_at=t + 20, updated_by="dana")


def test_stored_policy_round_trip(kit: Kit, book: IdleBook) -> None:
    policy = ReclaimPolicy.from_json(
        {
            "idle_util_percent": 2.5,
            "idle_after": 120,
            "warn_after": 600,
            "reclaim_after": 900,
            "action": "shutdown",
            "keep_extension": 1800,
            "max_keeps": 4,
            "users": {"bob": {"exempt": True}, "ann": {"keep_extension": 60}},
            "groups": {"interns": {"reclaim_after": 700}, "staff": {"exempt": True}},
        }
    )
    book.set_policy(policy, who="admin", previous=ReclaimPolicy())
    kit.reopen()
    stored = IdleBook(kit.store, kit.clock).stored_policy()
    assert stored is not None
    assert stored.policy == policy
    assert stored.policy.to_json() == policy.to_json()
    assert stored.updated_by == "admin"
    assert stored.policy.for_user("ann", ["interns"]) == IdlePolicy(
        idle_util_percent=2.5,
        idle_after=120,
        warn_after=600,
        reclaim_after=700,
        action=policy.default.action,
        keep_extension=60,
        max_keeps=4,
    )


# -- usage history -----------------------------------------------------------------------------


def bucket(
    kernel_id: str,
    at: float,
    samples: list[tuple[float, int]],
    *,
    user: str = "alice",
    path: str | None = "nb.ipynb",
    gpus: int = 2,
) -> UsageBucket:
    b = UsageBucket(kernel_id=kernel_id, bucket=at, user=user, path=path, gpus=gpus)
    for util, memory in samples:
        b.add(util, memory)
    return b


def usage_rows(kit: Kit) -> list[tuple[object, ...]]:
    with kit.store.read() as conn:
        rows = conn.execute(select(usage).order_by(usage.c.kernel_id, usage.c.bucket)).all()
    return [
        (
            r.kernel_id,
            r.bucket,
            r.user,
            r.path,
            r.gpus,
            r.util_mean,
            r.util_max,
            r.memory_bytes,
            r.samples,
        )
        for r in rows
    ]


def test_usage_bucket_add() -> None:
    b = bucket("k1", 60.0, [(10.0, 100), (30.0, 300), (20.0, 200)])
    assert (b.util_sum, b.util_max, b.memory_bytes, b.samples) == (60.0, 30.0, 300, 3)
    empty = bucket("k1", 60.0, [])
    assert (empty.util_sum, empty.util_max, empty.memory_bytes, empty.samples) == (0.0, 0.0, 0, 0)


def test_record_usage_merges_a_bucket_written_twice(kit: Kit, book: IdleBook) -> None:
    t = 1_700_000_040.0
    book.record_usage([bucket("k1", t, [(10.0, 100), (30.0, 300), (20.0, 200)])])
    assert usage_rows(kit) == [("k1", t, "alice", "nb.ipynb", 2, 20.0, 30.0, 300, 3)]
    book.record_usage([bucket("k1", t, [(60.0, 50), (0.0, 5 << 30)])])
    # mean over all five samples: (60 + 60) / 5
    assert usage_rows(kit) == [("k1", t, "alice", "nb.ipynb", 2, 24.0, 60.0, 5 << 30, 5)]
    book.record_usage([])
    book.record_usage([bucket("k1", t, [])])
    assert usage_rows(kit) == [("k1", t, "alice", "nb.ipynb", 2, 24.0, 60.0, 5 << 30, 5)]


def test_record_usage_empty_bucket(kit: Kit, book: IdleBook) -> None:
    book.record_usage([bucket("k1", 60.0, [])])
    assert usage_rows(kit) == [("k1", 60.0, "alice", "nb.ipynb", 2, 0.0, 0.0, 0, 0)]


def test_usage_series_since_until_and_prune(kit: Kit, book: IdleBook) -> None:
    t = 1_700_000_000.0
    book.record_usage(
        [
            bucket("k2", t + 60, [(7.0, 1)], user="bob", path=None, gpus=0),
            bucket("k1", t, [(1.0, 1), (3.0, 1)]),
            bucket("k1", t + 60, [(0.0, 1)]),
            bucket("k1", t + 120, [(55.0, 1), (5.0, 1)]),
            bucket("k1", t + 180, [(9.0, 1)]),
        ]
    )
    k1_all = UsageSeries(
        kernel_id="k1",
        user="alice",
        path="nb.ipynb",
        gpus=2,
        points=((t, 3.0), (t + 60, 0.0), (t + 120, 55.0), (t + 180, 9.0)),
    )
    k2 = UsageSeries(kernel_id="k2", user="bob", path=None, gpus=1, points=((t + 60, 7.0),))
    assert book.usage_series(t) == [k1_all, k2]
    assert book.usage_series(t + 60, t + 180) == [
        UsageSeries(
            kernel_id="k1",
            user="alice",
            path="nb.ipynb",
            gpus=2,
            points=((t + 60, 0.0), (t + 120, 55.0)),
        ),
        k2,
    ]
    assert book.usage_series(t + 61, t + 120) == []
    assert book.usage_series(t + 181) == []
    assert book.prune_usage(t + 120) == 3
    assert book.usage_series(0.0) == [
        UsageSeries(
            kernel_id="k1",
            user="alice",
            path="nb.ipynb",
            gpus=2,
            points=((t + 120, 55.0), (t + 180, 9.0)),
        )
    ]
    assert book.prune_usage(t + 120) == 0
