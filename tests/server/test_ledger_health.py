"""Periodic work while the ledger's database is away: said once each way, retried with backoff.

Time is injected: the loops sleep through a fake that records each wait and moves a ManualClock,
so an outage of minutes takes no real time.
"""

from __future__ import annotations

import asyncio
import logging

import pytest
from sqlalchemy import exc as sa_exc

from jupyter_dlinfra.core.clock import ManualClock
from jupyter_dlinfra.core.outage import LedgerUnavailable
from jupyter_dlinfra.server.ledger_health import LedgerHealth, run_every


class _Stop(Exception):
    """Ends a loop under test from its fake sleep."""


class FakeTime:
    """A sleep that returns at once, records its waits, moves the clock, and ends the loop
    after ``limit`` waits."""

    def __init__(self, clock: ManualClock, limit: int) -> None:
        self.clock = clock
        self.limit = limit
        self.waits: list[float] = []

    async def sleep(self, seconds: float) -> None:
        if len(self.waits) == self.limit:
            raise _Stop
        self.waits.append(seconds)
        self.clock.advance(seconds)
        await asyncio.sleep(0)


def _away() -> sa_exc.OperationalError:
    refused = Exception('connection to server at "127.0.0.1", port 5432 failed: refused\nIs it up?')
    return sa_exc.OperationalError("SELECT 1", {}, refused)


class Steps:
    """A step that fails as scripted: "away" (database), "bug" (anything else), "ok"."""

    def __init__(self, *script: str) -> None:
        self.script = list(script)
        self.calls = 0

    async def __call__(self) -> None:
        outcome = self.script[self.calls] if self.calls < len(self.script) else "ok"
        self.calls += 1
        if outcome == "away":
            raise LedgerUnavailable.from_error(_away()) from _away()
        if outcome == "bug":
            raise RuntimeError("a bug in the step")


@pytest.fixture
def log() -> logging.Logger:
    return logging.getLogger("test.ledger_health")


async def test_an_outage_is_logged_once_each_way_and_retried_with_capped_backoff(
    log: logging.Logger, caplog: pytest.LogCaptureFixture
) -> None:
    clock = ManualClock()
    changes: list[bool] = []
    health = LedgerHealth(log=log, clock=clock, on_change=changes.append)
    time = FakeTime(clock, limit=11)
    step = Steps(*["away"] * 7)
    with caplog.at_level(logging.DEBUG, logger=log.name), pytest.raises(_Stop):
        await run_every(step, 0.2, name="watch", health=health, log=log, sleep=time.sleep)
    # the interval, then 1, 2, 4 ... up to 30 s while away, then the interval again
    assert time.waits == [0.2, 1, 2, 4, 8, 16, 30, 30, 0.2, 0.2, 0.2]
    assert step.calls == 11
    said = [(r.levelno, r.getMessage()) for r in caplog.records if r.levelno > logging.DEBUG]
    assert said == [
        (
            logging.ERROR,
            "dlinfra: the GPU ledger's database does not answer (connection to server at "
            '"127.0.0.1", port 5432 failed: refused; seen by watch): API calls answer 503 and '
            "periodic work retries with backoff until it is back",
        ),
        (
            logging.WARNING,
            "dlinfra: the GPU ledger's database answers again after 91 s (seen by watch); "
            "periodic work resumes",
        ),
    ]
    assert not any(r.exc_info for r in caplog.records), "no traceback for an outage"
    assert changes == [False, True]
    assert health.available


async def test_a_failure_that_is_not_an_outage_keeps_its_traceback_and_the_pace(
    log: logging.Logger, caplog: pytest.LogCaptureFixture
) -> None:
    clock = ManualClock()
    health = LedgerHealth(log=log, clock=clock)
    time = FakeTime(clock, limit=4)
    with caplog.at_level(logging.INFO, logger=log.name), pytest.raises(_Stop):
        await run_every(
            Steps("bug", "bug"), 2.0, name="sample", health=health, log=log, sleep=time.sleep
        )
    assert time.waits == [2.0, 2.0, 2.0, 2.0]
    failures = [r for r in caplog.records if r.exc_info]
    assert [r.getMessage() for r in failures] == ["dlinfra: periodic sample failed"] * 2
    assert health.available


async def test_a_loop_waiting_out_an_outage_resumes_as_soon_as_another_finds_it_back(
    log: logging.Logger,
) -> None:
    health = LedgerHealth(log=log, clock=ManualClock())
    forever = asyncio.Event()

    async def sleep_forever(_seconds: float) -> None:
        await forever.wait()

    health.failed(_away(), where="jobs")
    waiting = asyncio.ensure_future(health.pause(30.0, sleep_forever))
    await asyncio.sleep(0)
    assert not waiting.done()
    health.recovered(where="the event stream")
    await asyncio.wait_for(waiting, timeout=10)


async def test_slower_loops_back_off_from_their_own_interval(log: logging.Logger) -> None:
    clock = ManualClock()
    health = LedgerHealth(log=log, clock=clock)
    time = FakeTime(clock, limit=4)
    with pytest.raises(_Stop):
        await run_every(
            Steps(*["away"] * 9), 45.0, name="reconcile", health=health, log=log, sleep=time.sleep
        )
    assert time.waits == [45.0, 45.0, 45.0, 45.0]


async def test_a_broken_announcement_does_not_stop_the_loop(
    log: logging.Logger, caplog: pytest.LogCaptureFixture
) -> None:
    def announce(_available: bool) -> None:
        raise RuntimeError("no subscribers")

    clock = ManualClock()
    health = LedgerHealth(log=log, clock=clock, on_change=announce)
    time = FakeTime(clock, limit=3)
    with caplog.at_level(logging.INFO, logger=log.name), pytest.raises(_Stop):
        await run_every(
            Steps("away"), 1.0, name="jobs", health=health, log=log, sleep=time.sleep, at_once=True
        )
    assert time.waits == [0.0, 1.0, 1.0]
    assert health.available
