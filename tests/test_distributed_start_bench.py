"""benchmarks/distributed_start.py: run for real with tiny parameters; no assertion on speed."""

from __future__ import annotations

import math
import subprocess
import sys

import pytest
from bench_module import BENCHMARKS


@pytest.mark.timeout(600)
def test_a_tiny_run_prints_the_result_line() -> None:
    proc = subprocess.run(
        [
            sys.executable,
            str(BENCHMARKS / "distributed_start.py"),
            "--rounds=1",
            "--ranks=2",
            "--k8s-rounds=1",
        ],
        cwd=BENCHMARKS.parent,
        capture_output=True,
        text=True,
        timeout=540,
    )
    assert proc.returncode == 0, f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr[-6000:]}"
    last = proc.stdout.strip().splitlines()[-1]
    assert last.startswith("RESULT start_s_2="), last
    fields = {k: float(v) for k, v in (item.split("=", 1) for item in last.split()[1:])}
    # the local half, then the same ranks through a gateway on a real control plane (2 x 1)
    assert list(fields) == ["start_s_2", "by_hand_s_2", "overhead_ratio", "k8s_start_s_2"]
    assert "2   2 x 1" in proc.stdout
    assert all(math.isfinite(v) and v > 0 for v in fields.values()), fields
    assert fields["overhead_ratio"] == pytest.approx(
        fields["start_s_2"] / fields["by_hand_s_2"], rel=0.01
    )
