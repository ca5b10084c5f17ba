"""The token bucket that bounds the event streams' fan-out: a second's worth of burst, then the
rate; a clock given, never read."""

from __future__ import annotations

import pytest

from jupyter_dlinfra.server.token_bucket import TokenBucket


def test_a_full_bucket_lets_a_seconds_worth_go_at_once_then_the_rate() -> None:
    bucket = TokenBucket(100.0, now=0.0)
    for _ in range(4):  # 4 x 25 = the second's worth
        assert bucket.delay(0.0, 25) == 0.0
        bucket.spend(0.0, 25)
    assert bucket.delay(0.0, 25) == pytest.approx(0.25)
    assert bucket.delay(0.1, 25) == pytest.approx(0.15)  # refilled meanwhile
    assert bucket.delay(0.25, 25) == 0.0
    bucket.spend(0.25, 25)
    # idle for long: full again, never more than a second's worth
    assert bucket.delay(60.0, 100) == 0.0
    assert bucket.delay(60.0, 101) == 0.0  # a cost above the bucket waits for a full one
    bucket.spend(60.0, 150)
    assert bucket.delay(60.0, 10) == pytest.approx(0.6)  # and its debt is paid first


def test_a_rate_of_zero_never_holds_anything_back() -> None:
    bucket = TokenBucket(0.0, now=0.0)
    bucket.spend(0.0, 10**9)
    assert bucket.delay(0.0, 10**9) == 0.0


def test_a_negative_rate_is_refused() -> None:
    with pytest.raises(ValueError, match="0 or more"):
        TokenBucket(-1.0, now=0.0)
