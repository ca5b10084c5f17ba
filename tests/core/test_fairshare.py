"""Fair-share accounting: the closed form of decayed usage against a numeric integration of the
held count, halving per half-life, loading stored usage, the ordering key and SLURM's factor."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jupyter_dlinfra.core.scheduling.fairshare import Account, Standing, decayed, factor

H = 3600.0


def integrate(
    changes: list[tuple[float, int]], until: float, half_life: float, steps: int = 2000
) -> float:
    """Decayed GPU-seconds up to ``until``, numerically: the integral over s of
    held(s) * 2 ** (-(until - s) / half_life), held piecewise constant from ``changes``, by
    Simpson's rule over each stretch where the held count is constant."""
    total = 0.0
    held = 0
    bounds = [t for t, _ in changes] + [until]
    for (start, delta), end in zip(changes, bounds[1:], strict=True):
        held += delta
        if end <= start or held == 0:
            continue
        width = (end - start) / steps

        def weight(s: float) -> float:
            return float(2.0 ** (-(until - s) / half_life))

        inner = sum((4 if i % 2 else 2) * weight(start + i * width) for i in range(1, steps))
        total += held * width / 3 * (weight(start) + inner + weight(end))
    return total


def replay(changes: list[tuple[float, int]], half_life: float) -> Account:
    acc = Account()
    for at, delta in changes:
        acc.change(at, half_life, delta)
    return acc


# -- closed form vs integration -------------------------------------------------------------------


def test_constant_holding_matches_the_integral() -> None:
    acc = Account()
    acc.change(0.0, H, 4)
    for t in (1.0, 60.0, H / 2, H, 3 * H, 20 * H):
        expected = 4 * H / math.log(2) * (1 - 2 ** (-t / H))
        assert acc.usage(t, H) == pytest.approx(expected, rel=1e-12)
    # far out, usage tends to held * half_life / ln 2
    assert acc.usage(200 * H, H) == pytest.approx(4 * H / math.log(2), rel=1e-12)
    # short stretches are nearly GPU-seconds
    assert acc.usage(1.0, H) == pytest.approx(4.0, rel=1e-3)


def test_piecewise_holding_matches_numeric_integration() -> None:
    changes = [(0.0, 2), (900.0, 3), (2000.0, -4), (5000.0, 6), (7000.0, -7), (9000.0, 1)]
    acc = replay(changes, H)
    for until in (9000.0, 9500.0, 12000.0):
        assert acc.usage(until, H) == pytest.approx(integrate(changes, until, H), rel=1e-6)


@settings(max_examples=40, deadline=None)
@given(
    steps=st.lists(
        st.tuples(st.floats(0.0, 3 * H), st.integers(-3, 4)),
        min_size=1,
        max_size=8,
    ),
    tail=st.floats(0.0, 4 * H),
    half_life=st.sampled_from([60.0, 600.0, H, 86400.0]),
)
def test_closed_form_equals_integration(
    steps: list[tuple[float, int]], tail: float, half_life: float
) -> None:
    # gaps become absolute times; the held count never drops below zero
    changes: list[tuple[float, int]] = []
    now = 0.0
    held = 0
    for gap, delta in steps:
        now += gap
        delta = max(delta, -held)
        held += delta
        changes.append((now, delta))
    until = now + tail
    acc = replay(changes, half_life)
    assert acc.held == held
    expected = integrate(changes, until, half_life)
    assert acc.usage(until, half_life) == pytest.approx(expected, rel=1e-6, abs=1e-6)


def test_usage_between_changes_does_not_depend_on_when_it_is_advanced() -> None:
    a = Account()
    a.change(0.0, H, 3)
    b = Account()
    b.change(0.0, H, 3)
    for t in (100.0, 250.0, 1000.0, 2500.0):
        b.advance(t, H)
    assert a.usage(4000.0, H) == pytest.approx(b.usage(4000.0, H), rel=1e-12)


# -- decay ----------------------------------------------------------------------------------------


def test_usage_halves_after_one_half_life() -> None:
    acc = Account(value=1000.0, at=50.0)
    assert acc.usage(50.0, H) == 1000.0
    assert acc.usage(50.0 + H, H) == pytest.approx(500.0)
    assert acc.usage(50.0 + 2 * H, H) == pytest.approx(250.0)
    acc.advance(50.0 + H, H)
    assert acc.value == pytest.approx(500.0)
    assert acc.at == 50.0 + H
    assert acc.usage(50.0 + 2 * H, H) == pytest.approx(250.0)


def test_usage_after_a_holding_ends_halves_per_half_life() -> None:
    acc = Account()
    acc.change(0.0, H, 2)
    acc.change(100.0, H, -2)
    used = acc.usage(100.0, H)
    assert used == pytest.approx(200.0, rel=0.02)  # 200 GPU-seconds, barely decayed
    assert acc.usage(100.0 + H, H) == pytest.approx(used / 2)
    assert acc.usage(100.0 + 3 * H, H) == pytest.approx(used / 8)


def test_time_never_runs_backwards() -> None:
    acc = Account(value=100.0, at=1000.0, held=1)
    assert acc.usage(500.0, H) == 100.0
    acc.advance(500.0, H)
    assert (acc.value, acc.at) == (100.0, 1000.0)


def test_decayed_and_load() -> None:
    assert decayed(800.0, H, H) == pytest.approx(400.0)
    assert decayed(800.0, 0.0, H) == 800.0
    assert decayed(800.0, -H, H) == 800.0  # a future time counts as now
    acc = Account()
    acc.load(800.0, 0.0, H, 2 * H)  # used at 0, loaded at 2H: a quarter left
    assert acc.at == 2 * H
    assert acc.value == pytest.approx(200.0)
    acc.load(100.0, 2 * H, H, 2 * H)
    assert acc.value == pytest.approx(300.0)


# -- ordering key ---------------------------------------------------------------------------------


def test_key_counts_held_gpus_as_one_more_half_life() -> None:
    acc = Account()
    acc.change(0.0, H, 4)
    assert acc.key(0.0, H) == 4 * H
    assert acc.key(600.0, H) == pytest.approx(acc.usage(600.0, H) + 4 * H)
    idle = Account(value=1000.0)
    assert idle.key(H, H) == pytest.approx(500.0)


def test_just_granted_user_goes_behind_at_once() -> None:
    """A user with a long history but nothing held ranks before one who was just granted."""
    heavy_past = Account(value=2 * H, at=0.0)  # two GPU half-lives of use, nothing held
    fresh = Account()
    fresh.change(0.0, H, 4)  # no history, but 4 GPUs granted now
    assert fresh.usage(0.0, H) == 0.0 < heavy_past.usage(0.0, H)
    assert fresh.key(0.0, H) > heavy_past.key(0.0, H)
    # and it stays behind while it holds them
    for t in (60.0, H, 10 * H):
        assert fresh.key(t, H) > heavy_past.key(t, H)


def test_key_orders_by_usage_then_holdings() -> None:
    a = Account(value=100.0)
    b = Account(value=300.0)
    c = Account(value=100.0)
    c.change(0.0, H, 1)
    keys = {n: acc.key(10.0, H) for n, acc in {"a": a, "b": b, "c": c}.items()}
    assert sorted(keys, key=keys.__getitem__) == ["a", "b", "c"]
    # decay keeps the order of accounts that hold nothing
    assert a.key(5 * H, H) < b.key(5 * H, H)
    assert b.key(5 * H, H) / a.key(5 * H, H) == pytest.approx(3.0)


# -- factor and standing --------------------------------------------------------------------------


def test_factor() -> None:
    assert factor(0.0, 0.5) == 1.0
    assert factor(0.5, 0.5) == 0.5
    assert factor(1.0, 0.25) == pytest.approx(2.0**-4)
    assert factor(0.3, 0.0) == 0.0
    assert 0.0 < factor(10.0, 0.1) < 1e-20


def test_standing_json() -> None:
    s = Standing(
        user="bob",
        account="ml",
        usage_gpu_hours=1.23456,
        held=2,
        share=1.0,
        account_share=3.0,
        factor=0.123456,
    )
    assert s.to_json() == {
        "user": "bob",
        "account": "ml",
        "usage_gpu_hours": 1.235,
        "held": 2,
        "share": 1.0,
        "account_share": 3.0,
        "factor": 0.1235,
        "rank": None,
    }
