"""An estimated start says what it rests on, and follows the node's queue in its order."""

from __future__ import annotations

from jupyter_dlinfra.core.scheduling.explain import DEFAULT, HISTORY, estimate_node
from jupyter_dlinfra.core.scheduling.types import Demand, Holding

from .test_scheduler import BATCH, INTERACTIVE, ask, hold, make

#: interactive grants have a history (10 min); batch ones none: the default hour is assumed
TYPICAL = {INTERACTIVE: 600.0, BATCH: 3600.0}


def end(h: Holding) -> float:
    return h.granted_at + TYPICAL[h.klass]


def lasts(d: Demand) -> float:
    return TYPICAL[d.klass]


def test_a_start_after_a_holding_of_assumed_length_says_so() -> None:
    # no preemption: the job ends when its own holding time says
    s = make({"n1": 2}, preemption=False)
    hold(s, 1, "ana", ("n1-0",), klass=INTERACTIVE)
    hold(s, 2, "li", ("n1-1",), klass=BATCH, kind="job")
    one = ask(s, 3, "bob", 1, at=1.0, node="n1")
    both = ask(s, 4, "eve", 2, at=2.0, node="n1")
    s.schedule(10.0)
    assert set(s.demands) == {one.id, both.id}

    starts = estimate_node(s, "n1", end, lasts, assumed=lambda klass: klass == BATCH)
    # bob's GPU is the interactive one: its end comes from history
    assert (starts[one.id].at, starts[one.id].basis) == (600.0, HISTORY)
    # eve needs the batch job's GPU too, whose end is the default hour
    assert (starts[both.id].at, starts[both.id].basis) == (3600.0, DEFAULT)

    # with history for every class, no estimate rests on a default
    starts = estimate_node(s, "n1", end, lasts)
    assert {e.basis for e in starts.values()} == {HISTORY}


def test_the_node_queue_starts_in_order_and_other_nodes_do_not_count() -> None:
    s = make({"n1": 2, "n2": 2}, preemption=False)
    hold(s, 1, "ana", ("n1-0", "n1-1"), klass=INTERACTIVE)
    # n2's GPUs are free, but the requests are pinned to n1: only n1's holding matters
    first = ask(s, 3, "bob", 2, at=1.0, node="n1")
    second = ask(s, 4, "eve", 1, at=2.0, node="n1")
    s.schedule(10.0)
    starts = estimate_node(s, "n1", end, lasts)
    # bob gets both GPUs when ana's grant ends; eve's one comes when bob's ends
    assert starts[first.id].at == 600.0
    assert starts[second.id].at == 600.0 + TYPICAL[INTERACTIVE]
    assert estimate_node(s, "n2", end, lasts) == {}


def test_a_request_held_back_by_its_quota_gets_no_estimate() -> None:
    s = make({"n1": 2}, preemption=False, user_quotas={"bob": 1})
    hold(s, 1, "bob", ("n1-0",), klass=INTERACTIVE)
    over = ask(s, 3, "bob", 1, at=1.0, node="n1")
    s.schedule(10.0)
    assert over.id in s.demands  # one GPU is free, but bob's quota is full
    assert over.id not in estimate_node(s, "n1", end, lasts)
