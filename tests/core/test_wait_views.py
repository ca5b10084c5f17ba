"""What waiters are told is worked out for the head of their node's queue only, down to the one
asked about, and is what a whole node's explanation would say, in whatever order they ask."""

from __future__ import annotations

import random
import sqlite3
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from jupyter_dlinfra.core.books import ledger_cache
from jupyter_dlinfra.core.models import Allocation
from jupyter_dlinfra.core.scheduling import explain
from jupyter_dlinfra.core.scheduling.policy import SchedulingPolicy
from jupyter_dlinfra.core.scheduling.scheduler import Scheduler
from jupyter_dlinfra.core.scheduling.types import Demand, Holding, Slot

from .kit import A100, H100, Kit


def _told(a: Allocation) -> tuple[object, ...]:
    return (a.position, a.waiting_code, a.waiting_reason, a.estimated_start, a.estimate_basis)


@pytest.fixture
def crowded(kit: Kit) -> list[int]:
    """One node of 4 A100s and 2 H100s, all held, and 30 requests of several users, sizes,
    models and classes waiting for it; their ids."""
    kit.node("node-a", (4, A100), (2, H100))
    kit.kernel("holder")
    kit.ledger.request(kernel_id="holder", count=6)
    rng = random.Random(11)
    ids = []
    for i in range(30):
        kit.kernel(f"w{i}", user=f"user{rng.randrange(5)}")
        kit.clock.advance(1)
        model = rng.choice((None, None, "A100", "H100")) if i % 3 else None
        count = rng.choice((1, 2) if model == "H100" else (1, 2, 4))
        ids.append(kit.ledger.request(kernel_id=f"w{i}", count=count, model=model).id)
    return ids


@pytest.fixture
def explained(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """How deep each node explanation goes (the length of the queue head it explains), in
    order."""
    depths: list[int] = []
    real = explain.explain_node

    def counting(*args: object, **kwargs: object) -> dict[int, explain.WaitInfo]:
        depths.append(len(kwargs["queue"]))  # type: ignore[arg-type]
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(explain, "explain_node", counting)
    return depths


def test_each_waiter_is_told_what_the_whole_node_explanation_says(
    kit: Kit, crowded: list[int]
) -> None:
    ledger = kit.ledger
    # the whole node at once (the queue's own order) ...
    whole = {a.id: _told(a) for a in ledger.queue(node="node-a")}
    assert sorted(whole) == sorted(crowded)
    assert sorted(p[0] for p in whole.values()) == list(range(1, 31))
    # ... and one by one, deepest first, then at random, on fresh views each time
    for order in (
        sorted(crowded, key=lambda i: -whole[i][0]),
        random.Random(3).sample(crowded, 30),
    ):
        ledger._cache = None  # loaded again: no view kept
        assert {i: _told(ledger.allocation(i)) for i in order} == whole


def test_the_head_of_a_long_node_queue_is_explained_without_the_rest(
    kit: Kit, crowded: list[int], explained: list[int]
) -> None:
    ledger = kit.ledger
    ledger._cache = None  # loaded again: no view kept from the requests
    head = ledger.queue(node="node-a", limit=1)[0]
    assert head.position == 1 and explained == [1]
    # a request deeper down explains down to it, at least twice as deep as before
    tenth = ledger.queue(node="node-a", limit=1, offset=9)[0]
    assert tenth.position == 10 and explained == [1, 10]
    ledger.queue(node="node-a", limit=1, offset=11)
    assert explained == [1, 10, 20]
    # what is explained already is served as it is
    ledger.queue(node="node-a", limit=20)
    assert explained == [1, 10, 20]
    # a change on the node drops its view: the new request is explained down to it, afresh
    kit.kernel("late", user="user0")
    explained.clear()
    late = ledger.request(kernel_id="late", count=1)
    assert late.position is not None and explained == [late.position]


def test_below_the_explained_depth_a_waiter_gets_its_place_and_a_brief_reason(
    kit: Kit, crowded: list[int], explained: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    ledger = kit.ledger
    whole = {a.id: a for a in ledger.queue(node="node-a")}
    explained.clear()
    monkeypatch.setattr(ledger_cache, "EXPLAIN_DEPTH", 5)
    ledger._cache = None
    told = {a.id: a for a in ledger.queue(node="node-a")}
    assert max(explained) == 5  # the replay stops at the head
    for aid, full in whole.items():
        brief = told[aid]
        assert brief.position == full.position  # the place is exact all the same
        if full.position <= 5:
            assert _told(brief) == _told(full)
            continue
        assert brief.estimated_start is None and brief.estimate_basis is None
        assert brief.waiting_code in ("quota", "no_free_gpu", "order"), brief.waiting_code
        if brief.waiting_code != "quota":
            assert f"behind {full.position - 1} requests" in (brief.waiting_reason or "")
        if full.waiting_code == "no_free_gpu":  # every GPU is held: nothing is free for it
            assert brief.waiting_code == "no_free_gpu"
            assert "; held by alice (" in (brief.waiting_reason or "")


def test_a_page_of_the_queue_is_worked_out_once_per_change(
    kit: Kit, crowded: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Many clients ask for the first page after each change: it is worked out once (the order
    walked, the rows read, the waits explained), then again after a change or VIEW_TTL
    (fair-share keys move with time alone)."""
    ledger = kit.ledger
    walks = []
    real = Scheduler.in_order

    def counting(self: Scheduler) -> Iterator[Demand]:
        walks.append(1)
        return real(self)

    monkeypatch.setattr(Scheduler, "in_order", counting)
    first = [a.id for a in ledger.queue(limit=10)]
    rows = ledger._load
    monkeypatch.setattr(ledger, "_load", lambda *a: pytest.fail("the answer is read again"))
    assert [a.id for a in ledger.queue(limit=10)] == first and len(walks) == 1
    monkeypatch.setattr(ledger, "_load", rows)
    assert [a.id for a in ledger.queue(limit=5, offset=5)] == first[5:] and len(walks) == 2
    kit.kernel("late", user="user0")
    late = ledger.request(kernel_id="late", count=1).id
    after = [a.id for a in ledger.queue(limit=50)]
    assert len(walks) == 3 and late in after
    assert [a.id for a in ledger.queue(limit=50)] == after and len(walks) == 3
    kit.clock.advance(ledger_cache.VIEW_TTL)
    assert [a.id for a in ledger.queue(limit=50)] == after and len(walks) == 4


@pytest.mark.parametrize("seed", range(40))
def test_one_model_nodes_are_estimated_as_the_general_replay_does(seed: int) -> None:
    """estimate_node's path for a node of one model gives what the per-model replay gives:
    holdings of all sizes and classes (some being preempted), requests of other models (which
    never start there), requests over quota (which get no estimate), a short horizon."""
    rng = random.Random(seed)
    policy = SchedulingPolicy.from_json({"user_quotas": {"u1": rng.choice([2, 4, 8])}})
    s = Scheduler(policy, now=100.0)
    model = rng.choice([A100, H100])
    s.add_gpus([Slot(uuid=f"n1-{i}", node="n1", model=model, index=i) for i in range(8)])
    s.add_gpus([Slot(uuid=f"n2-{i}", node="n2", model=H100, index=i) for i in range(2)])
    free = [f"n1-{i}" for i in range(8)]
    rng.shuffle(free)
    for hid in range(1, rng.randrange(1, 6)):
        take = [free.pop() for _ in range(min(len(free), rng.choice([1, 1, 2, 4])))]
        if not take:
            break
        klass = rng.choice(["interactive", "batch", "low"])
        s.hold(
            Holding(
                id=hid,
                user=f"u{rng.randrange(4)}",
                groups=(),
                klass=klass,
                kind="kernel",
                gpus=tuple(take),
                granted_at=rng.uniform(0, 100),
            )
        )
        if rng.random() < 0.2:
            s.holdings[hid] = replace(s.holdings[hid], preempted_for=999)
    for rid in range(100, 100 + rng.randrange(1, 25)):
        s.submit(
            Demand(
                id=rid,
                user=f"u{rng.randrange(4)}",
                groups=(),
                count=rng.choice([1, 1, 2, 4, 8]),
                model=rng.choice([None, None, None, "A100", "H100"]),
                node="n1",
                gang=False,
                klass=rng.choice(["interactive", "batch", "low"]),
                kind="kernel",
                submitted_at=rng.uniform(0, 100),
            )
        )
    durations = {"interactive": 3600.0, "batch": rng.uniform(10, 7200), "low": 600.0}

    def args() -> dict[str, object]:
        return {
            "expected_end": lambda h: h.granted_at + durations[h.klass],
            "duration": lambda d: durations[d.klass],
            "assumed": lambda klass: klass == "low",
            "horizon": rng.choice([14 * 86400.0, 5000.0]),
            "queue": s.pinned("n1"),
        }

    chosen = args()
    general = explain._estimate_models(s, "n1", **chosen)  # type: ignore[arg-type]
    assert explain.estimate_node(s, "n1", **chosen) == general  # type: ignore[arg-type]
    assert explain._estimate_one_model(s, "n1", **chosen) == general  # type: ignore[arg-type]


def test_a_requests_wait_is_worked_out_after_its_transaction_commits(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another process may write the ledger file while a queued request's place, reason and
    estimate are worked out: the store's write lock is not held for them."""
    path = tmp_path / "ledger.db"
    kit = Kit.open(f"sqlite:///{path}")
    try:
        kit.node("node-a", (2, A100))
        kit.kernel("holder")
        kit.ledger.request(kernel_id="holder", count=2)
        kit.kernel("waiter")
        locked: list[bool] = []
        explain_wait = ledger_cache.LedgerCache.wait_info

        def wait_info(self: ledger_cache.LedgerCache, allocation_id: int, now: float) -> object:
            other = sqlite3.connect(path, timeout=0, isolation_level=None)
            try:
                other.execute("BEGIN IMMEDIATE")
                other.execute("ROLLBACK")
                locked.append(False)
            except sqlite3.OperationalError:
                locked.append(True)
            finally:
                other.close()
            return explain_wait(self, allocation_id, now)

        monkeypatch.setattr(ledger_cache.LedgerCache, "wait_info", wait_info)
        queued = kit.ledger.request(kernel_id="waiter", count=1)
        assert queued.position == 1 and queued.waiting_code is not None
        assert locked == [False]
    finally:
        kit.close()
