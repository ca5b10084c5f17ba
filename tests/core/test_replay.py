"""Replaying usage series through the state machine, on small series counted by hand."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from jupyter_dlinfra.core.idle import IdlePolicy, ReclaimPolicy
from jupyter_dlinfra.core.replay import KernelOutcome, ReplayReport, UsageSeries, replay

T = 1_700_000_000.0
H = 3600.0
DAY = 86400.0
#: idle after 60 s, warned at 120 s, reclaimed at 180 s (lead 60 s), under 5 %
POLICY = IdlePolicy(idle_after=60, warn_after=120, reclaim_after=180)


def exact(value: float) -> object:
    return pytest.approx(value, rel=1e-12, abs=1e-15)


def series(
    kernel_id: str,
    points: Sequence[tuple[float, float]],
    *,
    user: str = "alice",
    gpus: int = 1,
    path: str | None = None,
) -> UsageSeries:
    return UsageSeries(
        kernel_id=kernel_id,
        user=user,
        gpus=gpus,
        path=path,
        points=tuple((T + s, u) for s, u in points),
    )


#: idle from 0 s, reclaimed at 180 s, busy again at 300 s (120 s after the reclaim)
BACK_AT_300 = [(0, 0), (60, 0), (120, 0), (180, 0), (240, 0), (300, 50), (360, 50)]
#: idle from 0 s to the end (600 s): reclaimed at 180 s and never busy again
NEVER_BACK = [(float(s), 0.0) for s in range(0, 601, 60)]


def test_reclaim_then_busy_again() -> None:
    report = replay([series("k1", BACK_AT_300, gpus=2, path="a.ipynb")], POLICY)
    # idle: 0..300 s = 300 s; recovered: 180..300 s = 120 s; held: 360 s; all times 2 GPUs
    assert report.kernels == (
        KernelOutcome(
            kernel_id="k1",
            user="alice",
            path="a.ipynb",
            gpus=2,
            warnings=1,
            reclaims=1,
            false_reclaims=1,
            recovered_gpu_hours=exact(240 / H),  # type: ignore[arg-type]
            idle_gpu_hours=exact(600 / H),  # type: ignore[arg-type]
        ),
    )
    assert report.held_gpu_hours == exact(720 / H)
    assert report.idle_gpu_hours == exact(600 / H)
    assert report.recovered_gpu_hours == exact(240 / H)
    assert (report.warnings, report.reclaims, report.false_reclaims) == (1, 1, 1)
    assert report.kernel_days == exact(360 / DAY)
    assert report.recovered_pct == exact(40.0)
    assert report.false_reclaim_pct == exact(100.0)


@pytest.mark.parametrize(("window", "false"), [(119.0, 0), (120.0, 1), (121.0, 1), (0.0, 0)])
def test_false_window(window: float, false: int) -> None:
    report = replay([series("k1", BACK_AT_300)], POLICY, false_window=window)
    assert report.reclaims == 1
    assert report.false_reclaims == false
    # the window changes nothing else
    assert report.recovered_gpu_hours == exact(120 / H)
    assert report.idle_gpu_hours == exact(300 / H)


def test_false_window_defaults_to_reclaim_after() -> None:
    # busy again 200 s after the reclaim: outside 180 s, inside 200 s
    points = [(0, 0), (60, 0), (120, 0), (180, 0), (240, 0), (300, 0), (380, 90)]
    assert replay([series("k1", points)], POLICY).false_reclaims == 0
    policy = IdlePolicy(idle_after=60, warn_after=120, reclaim_after=200)
    # reclaimed at 240 s (the first reading at or after 200 s), busy 140 s later
    report = replay([series("k1", points)], policy)
    assert (report.reclaims, report.false_reclaims) == (1, 1)
    assert replay([series("k1", points)], POLICY, false_window=200).false_reclaims == 1


def test_never_busy_again() -> None:
    report = replay([series("k1", NEVER_BACK)], POLICY)
    assert (report.warnings, report.reclaims, report.false_reclaims) == (1, 1, 0)
    assert report.idle_gpu_hours == exact(600 / H)
    assert report.recovered_gpu_hours == exact(420 / H)
    assert report.held_gpu_hours == exact(600 / H)
    assert report.recovered_pct == exact(70.0)
    assert report.false_reclaim_pct == 0.0


def test_busy_after_reclaim_holds_again_and_can_be_reclaimed_again() -> None:
    points = [
        (0, 0),
        (60, 0),
        (120, 0),
        (180, 0),  # reclaimed
        (240, 0),
        (300, 80),  # busy: holds again, a fresh state
        (360, 0),
        (420, 0),  # idle
        (480, 0),  # warned
        (540, 0),  # reclaimed
        (600, 0),
    ]
    report = replay([series("k1", points)], POLICY, false_window=60)
    assert (report.warnings, report.reclaims, report.false_reclaims) == (2, 2, 0)
    # recovered: 180..300 and 540..600
    assert report.recovered_gpu_hours == exact(180 / H)
    # idle: every step but the busy one (300..360)
    assert report.idle_gpu_hours == exact(540 / H)
    assert report.held_gpu_hours == exact(600 / H)


def test_max_gap_caps_holes() -> None:
    points = [(0, 0), (1000, 0), (1060, 0), (1120, 80)]
    report = replay([series("k1", points)], POLICY, max_gap=300)
    # steps: 300 (capped), 60, 60, 0; warned at 1000 s, reclaimed 60 s later at 1060 s
    assert report.held_gpu_hours == exact(420 / H)
    assert report.idle_gpu_hours == exact(420 / H)
    assert report.recovered_gpu_hours == exact(60 / H)
    assert (report.warnings, report.reclaims, report.false_reclaims) == (1, 1, 1)
    assert report.kernel_days == exact(420 / DAY)
    wide = replay([series("k1", points)], POLICY, max_gap=10_000)
    assert wide.held_gpu_hours == exact(1120 / H)
    assert wide.idle_gpu_hours == exact(1120 / H)
    assert wide.recovered_gpu_hours == exact(60 / H)


def test_busy_kernel_is_never_idle() -> None:
    points = [(float(s), 30.0) for s in range(0, 3601, 60)]
    report = replay([series("k1", points, gpus=4)], POLICY)
    assert report.idle_gpu_hours == 0.0
    assert report.recovered_gpu_hours == 0.0
    assert (report.warnings, report.reclaims, report.false_reclaims) == (0, 0, 0)
    assert report.held_gpu_hours == exact(4.0)
    assert report.recovered_pct == 0.0


def test_threshold_counts_as_busy() -> None:
    points = [(float(s), 5.0) for s in range(0, 601, 60)]
    report = replay([series("k1", points)], POLICY)
    assert report.idle_gpu_hours == 0.0
    assert report.reclaims == 0


def test_warnings_per_kernel_day() -> None:
    # two idle stretches, each warned and then used before the reclaim
    warned_twice = [
        (0, 0),
        (60, 0),
        (120, 0),  # warned
        (150, 90),
        (210, 0),
        (270, 0),
        (330, 0),  # warned
        (360, 90),
    ]
    report = replay(
        [series("k1", warned_twice), series("k2", NEVER_BACK, user="bob", gpus=3)], POLICY
    )
    assert [(k.kernel_id, k.warnings, k.reclaims) for k in report.kernels] == [
        ("k1", 2, 0),
        ("k2", 1, 1),
    ]
    assert report.kernels[0].idle_gpu_hours == exact(300 / H)
    assert report.kernels[1].idle_gpu_hours == exact(1800 / H)
    assert report.kernels[1].recovered_gpu_hours == exact(1260 / H)
    assert report.warnings == 3
    # kernel-days count time, not GPUs: 360 s + 600 s
    assert report.kernel_days == exact(960 / DAY)
    assert report.warnings_per_kernel_day == exact(3 * DAY / 960)
    assert report.held_gpu_hours == exact((360 + 1800) / H)


def test_empty_replay() -> None:
    report = replay([], POLICY)
    assert report == ReplayReport(
        held_gpu_hours=0.0,
        idle_gpu_hours=0.0,
        recovered_gpu_hours=0.0,
        warnings=0,
        reclaims=0,
        false_reclaims=0,
        kernel_days=0.0,
        kernels=(),
    )
    assert report.recovered_pct == 0.0
    assert report.false_reclaim_pct == 0.0
    assert report.warnings_per_kernel_day == 0.0
    one_point = replay([series("k1", [(0, 0)])], POLICY)
    assert one_point.held_gpu_hours == 0.0
    assert one_point.idle_gpu_hours == 0.0


def test_per_user_policy_and_groups() -> None:
    policy = ReclaimPolicy.from_json(
        {
            "idle_after": 60,
            "warn_after": 120,
            "reclaim_after": 180,
            "users": {"bob": {"exempt": True}},
            "groups": {"slow": {"warn_after": 300, "reclaim_after": 1000}},
        }
    )
    asked: list[str] = []

    def groups_of(user: str) -> list[str]:
        asked.append(user)
        return {"carol": ["slow"]}.get(user, [])

    report = replay(
        [
            series("ka", NEVER_BACK, user="alice"),
            series("kb", NEVER_BACK, user="bob"),
            series("kc", NEVER_BACK, user="carol"),
        ],
        policy,
        groups_of=groups_of,
    )
    assert asked == ["alice", "bob", "carol"]
    got = {k.user: (k.warnings, k.reclaims, k.false_reclaims) for k in report.kernels}
    # alice: the default; bob: exempt; carol: warned at 300 s, reclaim not before 1000 s
    assert got == {"alice": (1, 1, 0), "bob": (0, 0, 0), "carol": (1, 0, 0)}
    recovered = {k.user: k.recovered_gpu_hours for k in report.kernels}
    assert recovered == {"alice": exact(420 / H), "bob": 0.0, "carol": 0.0}
    assert report.kernels[2].idle_gpu_hours == exact(600 / H)
    assert (report.warnings, report.reclaims) == (2, 1)
    assert report.recovered_gpu_hours == exact(420 / H)
    assert report.held_gpu_hours == exact(1800 / H)


def test_reclaim_policy_default_matches_idle_policy() -> None:
    rp = ReclaimPolicy(default=POLICY)
    one = [series("k1", BACK_AT_300, gpus=2), series("k2", NEVER_BACK, user="bob")]
    assert replay(one, rp) == replay(one, POLICY)


def test_group_can_change_the_threshold() -> None:
    policy = ReclaimPolicy.from_json(
        {
            "idle_after": 60,
            "warn_after": 120,
            "reclaim_after": 180,
            "groups": {"strict": {"idle_util_percent": 50}},
        }
    )
    points = [(float(s), 20.0) for s in range(0, 601, 60)]
    report = replay(
        [series("k1", points, user="ann"), series("k2", points, user="ben")],
        policy,
        groups_of=lambda user: ["strict"] if user == "ben" else [],
    )
    assert [(k.user, k.reclaims) for k in report.kernels] == [("ann", 0), ("ben", 1)]
    assert report.kernels[0].idle_gpu_hours == 0.0
    assert report.kernels[1].idle_gpu_hours == exact(600 / H)
    assert report.kernels[1].recovered_gpu_hours == exact(420 / H)


def test_exempt_user_idle_time_still_counts_as_idle() -> None:
    """An exempt user's idle GPUs are idle all the same; the policy just recovers none of it.

    Otherwise exempting the idlest users makes a policy look better: the recovered share of the
    idle GPU-hours grows while the same idle GPUs stay held.
    """
    policy = ReclaimPolicy.from_json(
        {
            "idle_after": 60,
            "warn_after": 120,
            "reclaim_after": 180,
            "users": {"bob": {"exempt": True}},
        }
    )
    report = replay(
        [series("ka", NEVER_BACK, user="alice"), series("kb", NEVER_BACK, user="bob")], policy
    )
    bob = report.kernels[1]
    assert bob.recovered_gpu_hours == 0.0
    assert bob.idle_gpu_hours == exact(600 / H)
    assert report.idle_gpu_hours == exact(1200 / H)
    assert report.recovered_pct == exact(35.0)
