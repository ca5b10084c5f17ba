"""benchmarks/report_scale.py at a tiny size, on a tiny trace: the report's GPU-hours equal the
seeded grants (the script checks it and fails otherwise), and the hour rows stay within their
documented bound."""

from __future__ import annotations

import gzip
import re
from pathlib import Path

import pytest
from bench_module import load_benchmark

bench = load_benchmark("report_scale")


def test_a_small_history_is_reported_exactly_within_the_row_bound(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    trace = tmp_path / "duty.csv.gz"
    with gzip.open(trace, "wt") as f:
        f.write("value,timestamp_anon,container_ip\n")
        for pod, pattern in (("a", (0.0, 0.0, 90.0)), ("b", (40.0,))):
            for minute in range(120):
                f.write(f"{pattern[minute % len(pattern)]},{1000 + 60 * minute}.0,{pod}\n")
    assert bench.main(["--gpus", "16", "--days", "2", "--repeat", "1", "--trace", str(trace)]) == 0
    out = capsys.readouterr().out
    found = re.search(r"^RESULT report_s=([\d.]+) rows=(\d+) bound_rows=(\d+)$", out, re.M)
    assert found is not None, out
    rows, bound = int(found.group(2)), int(found.group(3))
    assert 0 < rows <= bound
    held = re.search(r"GPU-hours held: report ([\d,.]+), seeded ([\d,.]+)", out)
    assert held is not None and held.group(1) == held.group(2)
