"""benchmarks/gateway_kernel_start.py: run for real with tiny parameters; no assertion on speed.

The run starts its own Kubernetes control plane, so it needs the binaries that
``scripts/k8s/build.sh`` builds: without them the benchmark exits with an error and this test
fails (it never skips), as the other Kubernetes tests do.
"""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import pytest
from bench_module import BENCHMARKS, load_benchmark

bench = load_benchmark("gateway_kernel_start")

ROOT = BENCHMARKS.parent


def _fields(line: str) -> dict[str, float]:
    assert line.startswith("RESULT gateway_start_ratio="), line
    pairs = [item.split("=", 1) for item in line.split()[1:]]
    assert all(len(pair) == 2 for pair in pairs), line
    return {key: float(value) for key, value in pairs}


@pytest.mark.timeout(900)
def test_a_tiny_run_prints_the_result_line(tmp_path: Path) -> None:
    missing = bench.missing_k8s_binaries()
    assert not missing, f"Kubernetes binaries missing (run scripts/k8s/build.sh): {missing}"
    proc = subprocess.run(
        [
            sys.executable,
            str(BENCHMARKS / "gateway_kernel_start.py"),
            "--rounds=2",
            "--k8s-rounds=1",
            "--warmup=0",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=840,
    )
    assert proc.returncode == 0, f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr[-6000:]}"
    lines = proc.stdout.strip().splitlines()
    assert "gateway (person -> gateway)" in proc.stdout
    assert "GPU pod bound (pod_bind_s)" in proc.stdout
    fields = _fields(lines[-1])
    assert list(fields)[:2] == ["gateway_start_ratio", "pod_bind_s"]
    assert math.isfinite(fields["pod_bind_s"]) and fields["pod_bind_s"] > 0
    assert math.isfinite(fields["grant_s"]) and fields["grant_s"] > 0
    assert math.isfinite(fields["gateway_start_ratio"]) and fields["gateway_start_ratio"] > 0
    assert (fields["rounds"], fields["k8s_rounds"]) == (2, 1)


def test_without_kubernetes_the_pod_figures_are_nan() -> None:
    start = bench.StartResult(rounds=2, warmup=0, local=[1.0, 3.0], gateway=[2.0, 4.0])
    out = bench.report(start, None, skipped_why="--skip-k8s")
    assert "skipped (--skip-k8s)" in out
    fields = _fields(out.splitlines()[-1])
    assert fields["gateway_start_ratio"] == 1.5
    assert fields["paired_diff_ms"] == 1000.0
    assert math.isnan(fields["pod_bind_s"]) and math.isnan(fields["grant_s"])
    assert fields["k8s_rounds"] == 0


def test_percentile() -> None:
    assert math.isnan(bench.percentile([], 90))
    assert bench.percentile([5.0], 90) == 5.0
    assert bench.percentile([float(v) for v in range(11)], 90) == pytest.approx(9.0)
    assert bench.percentile([1.0, 2.0], 90) == pytest.approx(1.9)
