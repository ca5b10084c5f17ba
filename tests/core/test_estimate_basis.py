"""An estimated start says what it rests on: recent holding times, or the default one."""

from __future__ import annotations

from jupyter_dlinfra.core.scheduling.explain import DEFAULT, HISTORY, estimate_starts
from jupyter_dlinfra.core.scheduling.types import Demand, Holding

from .test_scheduler import BATCH, INTERACTIVE, ask, hold, make

#: interactive grants have a history (10 min); batch ones none: the default hour is assumed
TYPICAL = {INTERACTIVE: 600.0, BATCH: 3600.0}


def test_a_start_after_a_holding_of_assumed_length_says_so() -> None:
    # no preemption: the job ends when its own holding time says
    s = make({"n1": 2}, preemption=False)
    hold(s, 1, "ana", ("n1-0",), klass=INTERACTIVE)
    hold(s, 2, "li", ("n1-1",), klass=BATCH, kind="job")
    one = ask(s, 3, "bob", 1, at=1.0)
    both = ask(s, 4, "eve", 2, at=2.0)
    s.schedule(10.0)
    assert set(s.demands) == {one.id, both.id}

    def end(h: Holding) -> float:
        return h.granted_at + TYPICAL[h.klass]

    def lasts(d: Demand) -> float:
        return TYPICAL[d.klass]

    starts = estimate_starts(s, end, lasts, assumed=lambda klass: klass == BATCH)
    # bob's GPU is the interactive one: its end comes from history
    assert (starts[one.id].at, starts[one.id].basis) == (600.0, HISTORY)
    # eve needs the batch job's GPU too, whose end is the default hour
    assert (starts[both.id].at, starts[both.id].basis) == (3600.0, DEFAULT)

    # with history for every class, no estimate rests on a default
    starts = estimate_starts(s, end, lasts)
    assert {e.basis for e in starts.values()} == {HISTORY}
