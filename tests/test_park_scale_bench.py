"""benchmarks/park_scale.py at a tiny size: each round parks a kernel's grant, lends its GPUs to
the waiting jobs of its node, resumes it and ends with the grant as it was; the run ends with
its RESULT line. No timing is asserted."""

from __future__ import annotations

import re

import pytest
from bench_module import load_benchmark

bench = load_benchmark("park_scale")


def test_a_small_run_parks_lends_resumes_and_prints_its_result(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert bench.main(["--sizes", "2x0,2x40", "--rounds", "4"]) == 0
    out = capsys.readouterr().out
    last = out.strip().splitlines()[-1]
    assert re.fullmatch(
        r"RESULT park_p99_ms=[\d.]+ resume_p99_ms=[\d.]+ park_p50_ms=[\d.]+ "
        r"resume_p50_ms=[\d.]+ release_p50_ms=[\d.]+ growth=[\d.]+ lent=\d+",
        last,
    ), last
    lent = int(last.rsplit("lent=", 1)[1])
    assert lent >= 1, out  # with jobs waiting on full nodes, a parked grant's GPUs are lent
