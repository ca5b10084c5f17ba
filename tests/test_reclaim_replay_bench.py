"""benchmarks/reclaim_replay.py on a small synthetic trace whose figures are worked out by hand.

Three pods, a sample every 60 s from T0, written in the trace's own format (interleaved by time).
Policy: idle under 5 % for 60 s, warn at 120 s, reclaim at 300 s; false window 300 s; the culler
checks every 300 s from T0 + 300 with timeout 300 s (culls when idle for *more* than 300 s).

a: 50 % for t < 600, 0 % for 600 <= t < 2400, 50 % from 2400 to 3600 (the last sample).
   idle 1800 s. ours: warned at 720, reclaimed at 900 (600 + 300, and 720 + the 180 s lead),
   recovers 900..2400 = 1500 s; busy again 1500 s later: not false.
   culler: activity at 0, 600, 2400. 900 - 600 = 300 is not > 300; culled at 1200 (idle),
   recovers 1200..2400 = 1200 s, busy again 1200 s later: not false. Busy from 2400 with no
   transition: culled at 3000 and at 3600 while busy: 2 false culls.
   oracle: the stretch 600..2400 lasts 1800 > 300 s: 1800 s.
b: 80 % for t < 300, 0 % for 300 <= t < 900, 80 % from 900 to 1200.
   idle 600 s. ours: warned at 420, reclaimed at 600, recovers 600..900 = 300 s; busy again
   300 s later, within the window: false. culler: activity at 300 and 900, checks at 600 and
   1200 see exactly 300 s: no cull. oracle: 900 - 300 = 600 > 300 s: 600 s.
c: 2 % (under the threshold, yet the GPU is not at 0: a cell runs) at 0..600, no samples until
   1500 (a hole: sample 600 stands for max_gap = 300 s), 2 % at 1500..1800, 50 % at 1860, 1920.
   idle 600 + 300 + 300 + 60 = 1260 s. ours: warned at 120, reclaimed at 300, recovers
   300 + 300 + 300 + 60 = 960 s. culler: no transition ever; culled at 600 (idle), recovers
   600..900 (the rest of the sample) + 1500..1860 = 660 s; busy again 1260 s later: not false.
   oracle: the whole stretch, 1260 s.

Totals: idle 3660 s; ours 2760 s, 3 reclaims, 1 false, 3 warnings; culler 1860 s, 4 culls,
2 false; oracle 3660 s, 3 reclaims. Spans 3600 + 1200 + 1320 = 6120 s.

Park, 120 s after a run of quiet samples starts, every kernel 10 GiB; copy out 10 s + 10 GiB /
0.5 GiB/s = 30 s, resume 1 s + 10 GiB / 2.5 GiB/s = 5 s:

a: quiet (0 %) from 600: parked at 720, free from 750; recovers 750..2400 = 1650 s; resumed at
   2400, waits 5 s.
b: quiet from 300: parked at 420, free from 450; recovers 450..900 = 450 s; resumed at 900, 5 s.
c: never reads 0 % (2 % is light use, and a parked kernel can run nothing): never parked.
   Totals: 2100 of 3660 s (57.38 %), 2 parks, 2 resumes of 5 s, 2 / (6120 / 86400) = 28.24
   resumes per kernel-day, no state lost.
Woken only by busy samples (quiet = under 5 %), c parks too: idle from 0, parked at 120, free
   from 150, recovers 150..600, 600..900 (the sample before the hole) and 1500..1860: 1110 s;
   resumed at 1860. Totals 3210 s (87.70 %), 3 parks, 3 resumes.
Parked 580 s into the quiet: a at 1180 (inside sample 1140), free from 1210, recovers
   1210..2400 = 1190 s; b at 880, free from 910, but used again at 900: recovers nothing and its
   cell waits the copy's last 10 s and the 5 s resume: waits 5 and 15 s, p50 5, p95 15.
Woken only by busy samples, parked 1000 s into the quiet: c's park instant falls in the hole
   (sample 600 stands for 600..900): parked at the next quiet sample, 1500, free from 1530,
   recovers 1530..1860 = 330 s; a at 1600, free from 1630, recovers 770 s; b's quiet lasts only
   600 s.

What users paid, re-running a notebook after a lost state costing 100 s: ours loses state at
every reclaim (3), and each comes back (a at 2400, b at 900, c at 1860): 3 waits of 100 s. The
culler loses state at every cull (4): a comes back at 2400, and its busy culls at 3000 and 3600
are restarted at once; c comes back at 1860: 4 waits of 100 s. Costed by busy time since the
kernel last started instead: ours a 600 s (0..600), b 300 s (0..300), c 0 (never at 5 %): p50
300, p95 600.
"""

from __future__ import annotations

import gzip
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from bench_module import load_benchmark

from jupyter_dlinfra.core.idle import IdlePolicy
from jupyter_dlinfra.core.park_replay import ParkReport

T0 = 1_662_858_720.0
POLICY = IdlePolicy(idle_util_percent=5.0, idle_after=60.0, warn_after=120.0, reclaim_after=300.0)
H = 3600.0


bench = load_benchmark("reclaim_replay")


def _pod_a(t: int) -> float:
    return 0.0 if 600 <= t < 2400 else 50.0


def _pod_b(t: int) -> float:
    return 0.0 if 300 <= t < 900 else 80.0


def _pod_c(t: int) -> float:
    return 50.0 if t >= 1860 else 2.0


SAMPLES = {
    "a": [(t, _pod_a(t)) for t in range(0, 3601, 60)],
    "b": [(t, _pod_b(t)) for t in range(0, 1201, 60)],
    "c": [(t, _pod_c(t)) for t in range(0, 1921, 60) if not 600 < t < 1500],
}


@pytest.fixture
def trace(tmp_path: Path) -> Path:
    rows = sorted((t, pod, v) for pod, points in SAMPLES.items() for t, v in points)
    path = tmp_path / "duty-cycle.csv.gz"
    with gzip.open(path, "wt", newline="") as f:
        f.write("value,timestamp_anon,container_ip\n")
        for t, pod, v in rows:
            f.write(f"{v:.1f},{T0 + t:.1f},{pod}\n")
    return path


def test_load_groups_by_pod_in_time_order(trace: Path) -> None:
    series = bench.load_trace(trace)
    assert [s.kernel_id for s in series] == ["a", "b", "c"]
    assert [len(s.points) for s in series] == [61, 21, 19]
    assert all(s.gpus == 1 for s in series)
    assert series[2].points[10:12] == [(T0 + 600, 2.0), (T0 + 1500, 2.0)]
    assert [s.kernel_id for s in bench.load_trace(trace, limit_pods=2)] == ["a", "b"]


def test_figures_match_the_hand_count(trace: Path) -> None:
    c = bench.compare(bench.load_trace(trace), POLICY, false_window=300.0)
    ours, base, oracle = c.ours, c.baseline, c.oracle

    for report in (ours, base, oracle):
        assert report.idle_gpu_hours == pytest.approx(3660 / H)
        assert report.kernel_days == pytest.approx(6120 / 86400)
    assert [k.idle_gpu_hours * H for k in base.kernels] == pytest.approx([1800, 600, 1260])

    assert [k.recovered_gpu_hours * H for k in ours.kernels] == pytest.approx([1500, 300, 960])
    assert [(k.reclaims, k.false_reclaims) for k in ours.kernels] == [(1, 0), (1, 1), (1, 0)]
    assert ours.warnings == 3

    assert [k.recovered_gpu_hours * H for k in base.kernels] == pytest.approx([1200, 0, 660])
    assert [(k.reclaims, k.false_reclaims) for k in base.kernels] == [(3, 2), (0, 0), (1, 0)]
    assert base.warnings == 0

    assert [k.recovered_gpu_hours * H for k in oracle.kernels] == pytest.approx([1800, 600, 1260])
    assert (oracle.reclaims, oracle.false_reclaims) == (3, 0)

    assert ours.recovered_pct == pytest.approx(100 * 2760 / 3660)
    assert ours.false_reclaim_pct == pytest.approx(100 / 3)
    assert base.recovered_pct == pytest.approx(100 * 1860 / 3660)
    assert base.false_reclaim_pct == pytest.approx(50.0)
    assert oracle.recovered_pct == pytest.approx(100.0)


def test_the_false_window_bounds_the_oracle(trace: Path) -> None:
    series = bench.load_trace(trace)
    # b's stretch lasts exactly 600 s to busy again: false at a 600 s window (busy *within* it)
    at_600 = bench.oracle_bound(series, idle_util_percent=5.0, false_window=600.0)
    assert at_600.recovered_gpu_hours * H == pytest.approx(1800 + 1260)
    assert at_600.reclaims == 2
    # nothing lasts more than 1860 s: only a (1800 s) and c (1860 s) count at 1800 s
    at_1800 = bench.oracle_bound(series, idle_util_percent=5.0, false_window=1800.0)
    assert at_1800.recovered_gpu_hours * H == pytest.approx(1260)


def test_the_culler_grid_and_timeout(trace: Path) -> None:
    series = bench.load_trace(trace)
    # a timeout of 299 s: b's checks at 600 and 1200 now see 300 s > 299 s of quiet
    short = bench.culler_baseline(
        series[1:2], timeout=299.0, idle_util_percent=5.0, false_window=300.0
    )
    # 600: idle, culled, recovers 600..900, busy again 300 s later (false); 1200: busy (false)
    assert (short.reclaims, short.false_reclaims) == (2, 2)
    assert short.recovered_gpu_hours * H == pytest.approx(300)


def test_main_prints_the_result_line(trace: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["--trace", str(trace), "--idle-after", "60", "--warn-after", "120"]
    argv += ["--reclaim-after", "300", "--false-window", "300"]
    assert bench.main(argv) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last.startswith("RESULT recovered_pct=")
    fields = dict(kv.split("=") for kv in last.split()[1:])
    assert fields["recovered_pct"] == "75.41"
    assert fields["false_reclaim_pct"] == "33.33"
    assert fields["baseline_recovered_pct"] == "50.82"
    assert fields["baseline_false_reclaim_pct"] == "50.00"
    assert fields["oracle_recovered_pct"] == "100.00"


def test_missing_trace_exits_2(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("DLINFRA_TRACE_DIR", str(tmp_path / "nowhere"))
    assert bench.default_trace_path() == tmp_path / "nowhere" / bench.TRACE_NAME
    assert bench.main([]) == 2
    assert "trace not found" in capsys.readouterr().err


#: copy out 30 s and resume 5 s at 10 GiB
PARK = bench.ParkSettings(
    park_after=120.0,
    kernel_gib=10.0,
    park=bench.CopyModel(fixed_s=10.0, gib_per_s=0.5),
    resume=bench.CopyModel(fixed_s=1.0, gib_per_s=2.5),
)


def _park(trace: Path, **changes: Any) -> ParkReport:
    settings = replace(PARK, **changes)
    report: ParkReport = bench.park_run(bench.load_trace(trace), settings, idle_util_percent=5.0)
    return report


def test_park_figures_match_the_hand_count(trace: Path) -> None:
    c = bench.compare(bench.load_trace(trace), POLICY, false_window=300.0, settings=PARK)
    park = c.park
    assert park.replay.idle_gpu_hours == pytest.approx(3660 / H)
    assert [k.recovered_gpu_hours * H for k in park.replay.kernels] == pytest.approx([1650, 450, 0])
    assert [(k.reclaims, k.false_reclaims) for k in park.replay.kernels] == [(1, 0), (1, 0), (0, 0)]
    assert park.replay.recovered_pct == pytest.approx(100 * 2100 / 3660)
    assert park.cost.waits == pytest.approx((5.0, 5.0))
    assert park.cost.state_lost == 0
    assert park.cost.returns_per_kernel_day == pytest.approx(2 * 86400 / 6120)
    # the other rules are untouched by the park
    assert c.ours.recovered_pct == pytest.approx(100 * 2760 / 3660)
    assert c.baseline.recovered_pct == pytest.approx(100 * 1860 / 3660)

    busy = _park(trace, any_use=False)
    assert [k.recovered_gpu_hours * H for k in busy.replay.kernels] == pytest.approx(
        [1650, 450, 1110]
    )
    assert busy.replay.reclaims == 3
    assert busy.cost.waits == pytest.approx((5.0, 5.0, 5.0))


def test_a_park_still_copying_makes_the_cell_wait(trace: Path) -> None:
    late = _park(trace, park_after=580.0)
    assert [k.recovered_gpu_hours * H for k in late.replay.kernels] == pytest.approx([1190, 0, 0])
    assert late.cost.waits == pytest.approx((5.0, 15.0))
    assert (late.cost.wait_at(50), late.cost.wait_at(95)) == pytest.approx((5.0, 15.0))


def test_a_park_due_in_a_hole_waits_for_the_next_sample(trace: Path) -> None:
    holey = _park(trace, park_after=1000.0, any_use=False)
    assert [k.recovered_gpu_hours * H for k in holey.replay.kernels] == pytest.approx([770, 0, 330])
    assert holey.replay.reclaims == 2


def test_what_release_and_the_culler_cost(trace: Path) -> None:
    series = bench.load_trace(trace)
    c = bench.compare(series, POLICY, false_window=300.0, settings=PARK, rerun_s=100.0)
    assert (c.ours_cost.state_lost, c.ours_cost.waits) == (3, (100.0, 100.0, 100.0))
    # every reclaim that replay counts is a lost state here
    assert c.ours_cost.state_lost == c.ours.reclaims
    assert (c.baseline_cost.state_lost, c.baseline_cost.waits) == (4, (100.0,) * 4)
    assert c.ours_cost.returns_per_kernel_day == pytest.approx(3 * 86400 / 6120)

    by_busy = bench.release_costs(series, POLICY, rerun_s=None)
    assert by_busy.waits == (600.0, 300.0, 0.0)
    assert (by_busy.wait_at(50), by_busy.wait_at(95)) == (300.0, 600.0)


def test_a_cull_inside_a_sample_costs_the_busy_time_until_it(trace: Path) -> None:
    """Pod a alone, the culler's checks at T0 + 30 + k * 300 (timeout 300 s, window 300 s).

    Activity at 0, 600 (cell ends), 2400 (starts). 330: 330 s quiet, busy: culled (false), 30 s
    into sample 300, after 300 s of busy samples: waits 330 s at once. 930: 330 s since 600,
    idle: culled, recovers 930..2400 = 1470 s, built 270 s since the restart (the last 30 s of
    sample 300 and samples 360..540); back at 2400 (not false), waits 270 s. 2730: busy, culled
    (false), 330 s built (2400..2730); 3030: exactly 300 s, kept; 3330: culled (false), 600 s
    built (2730..3330).
    """
    series = bench.load_trace(trace)[:1]
    report, cost = bench.culler_run(
        series,
        timeout=300.0,
        idle_util_percent=5.0,
        false_window=300.0,
        first_check=T0 + 30,
        rerun_s=None,
    )
    assert (report.reclaims, report.false_reclaims) == (4, 3)
    assert report.recovered_gpu_hours * H == pytest.approx(1470)
    assert cost.state_lost == 4
    assert cost.waits == pytest.approx((330.0, 270.0, 330.0, 600.0))
    assert (cost.wait_at(50), cost.wait_at(95)) == pytest.approx((330.0, 600.0))


def test_main_prints_the_park_figures(
    trace: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["--trace", str(trace), "--idle-after", "60", "--warn-after", "120"]
    argv += ["--reclaim-after", "300", "--false-window", "300", "--park-after", "120"]
    argv += ["--kernel-gib", "10", "--rerun-s", "100"]
    measured = tmp_path / "park_resume.txt"
    # park 10 s + 2 s/GiB, resume 1 s + 0.4 s/GiB: the models above, fitted exactly
    measured.write_text(
        "RESULT park_s_1=12 resume_s_1=1.4 park_s_11=32 resume_s_6=3.4 gpu=h100\n",
        encoding="utf-8",
    )
    by_hand = [*argv, "--park-model", "10,0.5", "--resume-model", "1,2.5"]
    outputs = []
    for args in (by_hand, [*argv, "--measured", str(measured)]):
        assert bench.main(args) == 0
        outputs.append(capsys.readouterr().out)
    last = outputs[1].strip().splitlines()[-1]
    fields = dict(kv.split("=") for kv in last.split()[1:])
    assert fields["recovered_pct"] == "75.41"
    assert fields["baseline_recovered_pct"] == "50.82"
    assert fields["oracle_recovered_pct"] == "100.00"
    assert fields["park_recovered_pct"] == "57.38"
    assert fields["park_resume_p50_s"] == "5.00"
    assert fields["park_resume_p95_s"] == "5.00"
    assert fields["park_resumes_per_kernel_day"] == "28.24"
    assert fields["park_state_lost"] == "0"
    assert fields["release_state_lost"] == "3"
    assert fields["culler_state_lost"] == "4"
    assert fields["park_after_s"] == "120"
    assert outputs[0].strip().splitlines()[-1] == last
    assert "fitted to" in outputs[1]


def test_main_refuses_bad_measurements(
    trace: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    measured = tmp_path / "park_resume.txt"
    measured.write_text("RESULT resume_s_1=1.4\n", encoding="utf-8")
    assert bench.main(["--trace", str(trace), "--measured", str(measured)]) == 2
    assert "two sizes" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        bench.main(["--trace", str(trace), "--resume-model", "1"])
