"""Parking on recorded utilisation, and the copy-time models, on small series counted by hand."""

from __future__ import annotations

import math
from collections.abc import Sequence

import pytest

from jupyter_dlinfra.core.park_replay import (
    PUBLISHED_COPY,
    CopyModel,
    MeasuredError,
    ParkReport,
    UserCost,
    fit_copy_model,
    nearest_rank,
    read_measured,
    replay_parks,
)
from jupyter_dlinfra.core.replay import UsageSeries

T = 1_700_000_000.0
H = 3600.0
DAY = 86400.0
#: 1 s + 10 GiB / 10 GiB/s: both copies take 2 s at 10 GiB
TWO_S = CopyModel(fixed_s=1.0, gib_per_s=10.0)


def series(points: Sequence[tuple[float, float]], *, gpus: int = 1) -> UsageSeries:
    return UsageSeries(kernel_id="k1", gpus=gpus, points=tuple((T + s, u) for s, u in points))


def park(
    points: Sequence[tuple[float, float]],
    *,
    gpus: int = 1,
    park_after: float = 60.0,
    any_use: bool = True,
    copy_out: CopyModel = TWO_S,
) -> ParkReport:
    return replay_parks(
        [series(points, gpus=gpus)],
        park_after=park_after,
        idle_util_percent=5.0,
        kernel_gib=10.0,
        park=copy_out,
        resume=TWO_S,
        any_use=any_use,
    )


def test_published_model_spans_the_published_range() -> None:
    assert PUBLISHED_COPY.seconds(1) == pytest.approx(0.5 + 1 / 5.5)
    assert PUBLISHED_COPY.seconds(10) == pytest.approx(2.318, abs=1e-3)
    assert PUBLISHED_COPY.seconds(80) == pytest.approx(15.05, abs=1e-2)
    assert str(PUBLISHED_COPY) == "0.5 s + GiB / 5.5 GiB/s"


def test_parse_copy_model() -> None:
    assert CopyModel.parse("1,2.5") == CopyModel(fixed_s=1.0, gib_per_s=2.5)
    for bad in ("1", "1,2,3", "a,2", "-1,2", "1,0", "1,-2", "nan,2"):
        with pytest.raises(ValueError):
            CopyModel.parse(bad)


def test_fit_through_exact_points() -> None:
    model = fit_copy_model({1.0: 1.4, 6.0: 3.4})
    assert model.fixed_s == pytest.approx(1.0)
    assert model.gib_per_s == pytest.approx(2.5)


def test_fit_is_least_squares() -> None:
    # mean size 2.5, mean time 2; slope (1.5 + 0 + 0 + 1.5) / 5 = 0.6 s/GiB; a = 2 - 1.5
    model = fit_copy_model({1.0: 1.0, 2.0: 2.0, 3.0: 2.0, 4.0: 3.0})
    assert model.fixed_s == pytest.approx(0.5)
    assert model.gib_per_s == pytest.approx(1 / 0.6)


def test_fit_flat_and_refusals() -> None:
    flat = fit_copy_model({1.0: 2.0, 8.0: 2.0})
    assert (flat.fixed_s, flat.gib_per_s) == (2.0, math.inf)
    assert flat.seconds(80) == 2.0
    with pytest.raises(MeasuredError, match="two sizes"):
        fit_copy_model({1.0: 2.0})
    with pytest.raises(MeasuredError, match="shrink"):
        fit_copy_model({1.0: 3.0, 8.0: 2.0})
    # a fitted intercept below zero: no copy takes negative time
    steep = fit_copy_model({2.0: 0.5, 4.0: 1.5})
    assert steep.fixed_s == pytest.approx(-0.5)
    assert steep.seconds(0.5) == 0.0


def test_read_measured() -> None:
    text = (
        "a header line\n"
        "RESULT park_s_1=9 resume_s_1=9\n"
        "RESULT park_s_1=12 park_s_11=32 resume_s_1=1.4 resume_s_6=3.4 resume_s_6_p95=99 gpu=h100\n"
    )
    park_model, resume_model = read_measured(text)
    assert park_model.fixed_s == pytest.approx(10.0)
    assert park_model.gib_per_s == pytest.approx(0.5)
    assert resume_model.fixed_s == pytest.approx(1.0)
    assert resume_model.gib_per_s == pytest.approx(2.5)
    # no park_s_ figures: the resume model serves for both
    only_resume = read_measured("RESULT resume_s_1=1.4 resume_s_6=3.4 park_s_40=skip")
    assert only_resume[0] == only_resume[1]


def test_read_measured_as_park_resume_writes_it() -> None:
    # a size it could not run says skip; 0.5 GiB is written 0p5
    line = (
        "RESULT park_s_0p5=11.000 resume_s_0p5=1.200 park_s_8=26.000 resume_s_8=4.200 "
        "park_s_40=skip resume_s_40=skip identical=1 parked_memory_freed=1"
    )
    park_model, resume_model = read_measured(line)
    assert park_model.fixed_s == pytest.approx(10.0)
    assert park_model.gib_per_s == pytest.approx(0.5)
    assert resume_model.fixed_s == pytest.approx(1.0)
    assert resume_model.gib_per_s == pytest.approx(2.5)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("park_s_1=1 resume_s_1=1", "no line starts with RESULT"),
        ("RESULT park_s_1=1 park_s_2=2", "no resume_s_"),
        ("RESULT resume_s_1=1", "two sizes"),
        ("RESULT resume_s_1=1 resume_s_8=skip", "two sizes"),
        ("RESULT resume_s_1=1 resume_s_2=fast", "not a number"),
        ("RESULT resume_s_1=1 resume_s_2=-1", "not a number"),
        ("RESULT resume_s_1=1 resume_s_2=2 park_s_1=1", "two sizes"),
    ],
)
def test_read_measured_refuses(text: str, message: str) -> None:
    with pytest.raises(MeasuredError, match=message):
        read_measured(text)


def test_nearest_rank() -> None:
    assert nearest_rank([], 95) == 0.0
    assert nearest_rank([3.0], 50) == 3.0
    values = [5.0, 1.0, 4.0, 2.0, 3.0]
    assert nearest_rank(values, 50) == 3.0
    assert nearest_rank(values, 95) == 5.0
    assert nearest_rank(values, 20) == 1.0
    assert nearest_rank(values, 21) == 2.0


def test_user_cost() -> None:
    cost = UserCost(state_lost=0, waits=(2.0, 4.0), kernel_days=0.5)
    assert (cost.returns, cost.returns_per_kernel_day) == (2, 4.0)
    assert (cost.wait_at(50), cost.wait_at(95)) == (2.0, 4.0)
    assert UserCost(state_lost=1, waits=(), kernel_days=0.0).returns_per_kernel_day == 0.0


#: quiet from 60 s, parked at 120 s, free from 122 s, resumed at 300 s
PARKED_ONCE = [(0, 50), (60, 0), (120, 0), (180, 0), (240, 0), (300, 50), (360, 50)]


def test_park_then_resume() -> None:
    report = park(PARKED_ONCE, gpus=2)
    # idle 60..300 = 240 s; free 122..300 = 178 s; two GPUs each
    assert report.replay.idle_gpu_hours == pytest.approx(480 / H)
    assert report.replay.recovered_gpu_hours == pytest.approx(356 / H)
    assert report.replay.held_gpu_hours == pytest.approx(720 / H)
    assert report.replay.kernel_days == pytest.approx(360 / DAY)
    assert (report.replay.reclaims, report.replay.false_reclaims) == (1, 0)
    assert report.cost == UserCost(state_lost=0, waits=(2.0,), kernel_days=360 / DAY)


def test_resume_during_the_copy_out_waits_for_it() -> None:
    # parked at 120 s, but the copy takes 200 s: free at 320 s, after the use at 300 s
    slow = CopyModel(fixed_s=200.0, gib_per_s=math.inf)
    report = park(PARKED_ONCE, copy_out=slow)
    assert report.replay.recovered_gpu_hours == 0.0
    assert report.cost.waits == (20.0 + 2.0,)


def test_never_used_again_stays_parked() -> None:
    points = [(0, 50), (60, 0), (120, 0), (180, 0)]
    report = park(points, park_after=30.0)
    # parked at 90 s, free 92..180 s: the last sample stands for nothing
    assert report.replay.idle_gpu_hours == pytest.approx(120 / H)
    assert report.replay.recovered_gpu_hours == pytest.approx(88 / H)
    assert report.replay.reclaims == 1
    assert report.cost.waits == ()


def test_light_use_wakes_unless_only_busy_samples_do() -> None:
    # 2 % is idle (under 5 %) but not quiet: the GPU is used
    points = [(0, 0), (60, 0), (120, 2), (180, 0), (240, 0), (300, 0), (360, 50), (420, 50)]
    report = park(points)
    # parked at 60 s (free 62), woken at 120; quiet again from 180, parked at 240 (free 242),
    # woken at 360
    assert report.replay.reclaims == 2
    assert report.replay.idle_gpu_hours == pytest.approx(360 / H)
    assert report.replay.recovered_gpu_hours == pytest.approx((58 + 118) / H)
    assert report.cost.waits == (2.0, 2.0)
    lenient = park(points, any_use=False)
    # one park at 60 s, free 62..360
    assert lenient.replay.reclaims == 1
    assert lenient.replay.recovered_gpu_hours == pytest.approx(298 / H)
    assert lenient.cost.waits == (2.0,)


def test_threshold_is_busy_and_park_after_zero_parks_at_once() -> None:
    points = [(0, 5), (60, 0), (120, 5), (180, 5)]
    report = park(points, park_after=0.0, any_use=False)
    # parked at 60 s, free at 62 s, woken at 120 s by 5 %, which is not idle
    assert report.replay.idle_gpu_hours == pytest.approx(60 / H)
    assert report.replay.recovered_gpu_hours == pytest.approx(58 / H)
    assert report.cost.waits == (2.0,)


def test_a_hole_delays_the_park_to_the_next_quiet_sample() -> None:
    # the sample at 0 stands for 300 s (max_gap); 400 s falls in the hole 300..1000
    points = [(0, 0), (1000, 0), (1060, 0), (1120, 50)]
    report = park(points, park_after=400.0)
    assert report.replay.idle_gpu_hours == pytest.approx(420 / H)
    # parked at 1000 s, free 1002..1120
    assert report.replay.recovered_gpu_hours == pytest.approx(118 / H)
    assert report.replay.kernel_days == pytest.approx(420 / DAY)


def test_empty_and_refusals() -> None:
    report = replay_parks([], park_after=60, idle_util_percent=5, kernel_gib=10)
    assert report.replay.recovered_pct == 0.0
    assert report.cost == UserCost(state_lost=0, waits=(), kernel_days=0.0)
    with pytest.raises(ValueError):
        replay_parks([], park_after=-1, idle_util_percent=5, kernel_gib=10)
    with pytest.raises(ValueError):
        replay_parks([], park_after=60, idle_util_percent=5, kernel_gib=-1)
