"""The injected clocks."""

from __future__ import annotations

import time

import pytest

from jupyter_dlinfra.core.clock import Clock, ManualClock, SystemClock


def test_manual_clock_starts_where_told() -> None:
    assert ManualClock().now() == 1_700_000_000.0
    assert ManualClock(start=5.0).now() == 5.0


def test_manual_clock_moves_only_when_advanced() -> None:
    clock = ManualClock(start=100.0)
    assert clock.now() == clock.now() == 100.0
    clock.advance(2.5)
    assert clock.now() == 102.5
    clock.advance(0)
    assert clock.now() == 102.5
    clock.advance(1e6)
    assert clock.now() == 1_000_102.5


@pytest.mark.parametrize("seconds", [-1, -0.001])
def test_manual_clock_cannot_go_backwards(seconds: float) -> None:
    clock = ManualClock(start=100.0)
    with pytest.raises(ValueError, match="backwards"):
        clock.advance(seconds)
    assert clock.now() == 100.0


def test_system_clock_is_wall_time() -> None:
    before = time.time()
    now = SystemClock().now()
    after = time.time()
    assert before <= now <= after


def test_both_satisfy_the_protocol() -> None:
    clocks: list[Clock] = [ManualClock(), SystemClock()]
    assert all(isinstance(c.now(), float) for c in clocks)
