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
"""

from __future__ import annotations

import gzip
from pathlib import Path

import pytest
from bench_module import load_benchmark

from jupyter_dlinfra.core.idle import IdlePolicy

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
