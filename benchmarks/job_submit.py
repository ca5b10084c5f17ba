"""Submitting a notebook as a job: time to its first line of output, and conversion time.

Three measures, each beside a baseline measured in the same run:

- ``local``: a real ``jupyter server`` (SQLite ledger, 2 simulated GPUs, default settings) gets
  ``POST /dlinfra/api/jobs`` for a notebook whose first cell prints; the clock stops when that
  line appears in the job's log, read through ``GET jobs/{id}/log``. The baseline runs the same
  job directory with ``python -m jupyter_dlinfra.jobs.runner`` directly (no server, no queue),
  timed to the same line in its log: the ratio is what submission through the server costs.
- ``slurm``: the same through a real single-node SLURM (``scripts/slurm-up.sh``, fake GPUs)
  with ``backend: slurm``; reported as ``nan`` with the reason when SLURM cannot run here.
- ``convert``: ``read_notebook`` + ``prepare`` (``%gpu`` neutralised, parameters injected, script
  exported) of a 200-cell notebook, against nbconvert's ``PythonExporter`` alone on the same
  notebook (the export that conversion must do anyway).

Usage: ``.venv/bin/python benchmarks/job_submit.py [--rounds N] [--no-slurm]``. The last line
printed starts with ``RESULT``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import nbformat
from nbconvert import PythonExporter

from jupyter_dlinfra.jobs.convert import prepare, read_notebook
from jupyter_dlinfra.testing.server import (
    ServerProcess,
    notebook_json,
    wait_until,
    write_job_dir,
    write_notebook,
)

REPO = Path(__file__).resolve().parents[1]
MARK = "first line of the job"
CELLS = (f"print({MARK!r}, flush=True)", "x = sum(range(1000))", "print(x)")


def _first_output(server: ServerProcess, backend: str) -> float:
    start = time.perf_counter()
    job = server.post("dlinfra/api/jobs", {"path": "bench.ipynb", "backend": backend})

    def seen() -> bool:
        log = server.get(f"dlinfra/api/jobs/{job['id']}/log")
        return MARK in log["text"]

    wait_until(seen, timeout=120, interval=0.01, what=f"the {backend} job's first output")
    elapsed = time.perf_counter() - start
    wait_until(
        lambda: server.get(f"dlinfra/api/jobs/{job['id']}")["state"] not in ("queued", "running"),
        timeout=120,
        what="the job's end",
    )
    return elapsed


def _direct_first_output(workdir: Path) -> float:
    """The baseline: the runner alone on a prepared job directory, no server."""
    jobdir = workdir / f"direct-{time.monotonic_ns()}"
    write_job_dir(jobdir, *CELLS, spec={"cwd": str(jobdir)})
    log = jobdir / "job.log"
    start = time.perf_counter()
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "jupyter_dlinfra.jobs.runner", str(jobdir)],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    wait_until(
        lambda: log.exists() and MARK in log.read_text(errors="replace"),
        timeout=120,
        interval=0.01,
        what="the direct run's first output",
    )
    elapsed = time.perf_counter() - start
    proc.wait(timeout=120)
    return elapsed


def bench_local(rounds: int, workdir: Path) -> tuple[float, float]:
    server = ServerProcess(
        workdir / "local", db_url=f"sqlite:///{workdir}/local.sqlite", simulated_gpus=2
    )
    (workdir / "local").mkdir()
    server.start()
    try:
        write_notebook(server.workdir / "root" / "bench.ipynb", *CELLS)
        _first_output(server, "local")  # warm-up: imports, caches
        ours = [_first_output(server, "local") for _ in range(rounds)]
        direct = [_direct_first_output(workdir) for _ in range(rounds)]
    finally:
        server.stop()
    return statistics.median(ours), statistics.median(direct)


def bench_slurm(rounds: int, workdir: Path) -> tuple[float, str]:
    if shutil.which("slurmctld") is None or os.geteuid() != 0:
        return math.nan, "SLURM is not installed here or not root (make test installs it)"
    cluster = Path(tempfile.mkdtemp(prefix="dlinfra-bench-slurm-", dir="/tmp"))
    env = {**os.environ, "SLURM_TEST_DIR": str(cluster), "NGPU": "2"}
    up = subprocess.run(
        ["bash", str(REPO / "scripts" / "slurm-up.sh")],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    try:
        if up.returncode != 0:
            return math.nan, f"slurm-up.sh failed: {up.stderr.strip()[-300:]}"
        conf = str(cluster / "etc" / "slurm.conf")
        server = ServerProcess(
            workdir / "slurm",
            db_url=f"sqlite:///{workdir}/slurm.sqlite",
            simulated_gpus=2,
            extra_args=("--DLInfra.job_backends=local", "--DLInfra.job_backends=slurm"),
            env={"SLURM_CONF": conf},
        )
        (workdir / "slurm").mkdir()
        server.start()
        try:
            write_notebook(server.workdir / "root" / "bench.ipynb", *CELLS)
            _first_output(server, "slurm")
            return statistics.median(_first_output(server, "slurm") for _ in range(rounds)), ""
        finally:
            server.stop()
    finally:
        subprocess.run(
            ["bash", str(REPO / "scripts" / "slurm-down.sh")],
            env=env,
            capture_output=True,
            timeout=120,
            check=False,
        )
        shutil.rmtree(cluster, ignore_errors=True)


def bench_convert(rounds: int) -> tuple[float, float]:
    cells: list[Any] = ["%gpu 2", ("lr = 0.1\nepochs = 3", ["parameters"])]
    cells += [
        f"def step_{i}(x):\n    return x * {i} + lr\nprint(step_{i}({i}))" for i in range(198)
    ]
    raw = json.dumps(notebook_json(*cells))
    exporter = PythonExporter()
    ours, baseline = [], []
    for _ in range(rounds):
        start = time.perf_counter()
        notebook = read_notebook(raw, max_bytes=2**24)
        ready = prepare(notebook, parameters={"lr": 0.5}, max_parameter_bytes=2**16)
        ours.append(time.perf_counter() - start)
        assert ready.gpus == 2 and "lr = 0.5" in ready.script
        start = time.perf_counter()
        exporter.from_notebook_node(nbformat.reads(raw, as_version=4))
        baseline.append(time.perf_counter() - start)
    return statistics.median(ours), statistics.median(baseline)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--no-slurm", action="store_true")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="dlinfra-bench-jobs-") as tmp:
        workdir = Path(tmp)
        convert, export = bench_convert(max(args.rounds, 10))
        print(f"convert 200 cells: {convert:.4f} s (nbconvert export alone {export:.4f} s)")
        local, direct = bench_local(args.rounds, workdir)
        print(f"local: first output {local:.3f} s after POST (runner alone: {direct:.3f} s)")
        if args.no_slurm:
            slurm, why = math.nan, "--no-slurm"
        else:
            slurm, why = bench_slurm(args.rounds, workdir)
        print(f"slurm: first output {slurm:.3f} s after POST" + (f" ({why})" if why else ""))
    print(
        f"RESULT local_first_output_s={local:.3f} slurm_first_output_s={slurm:.3f} "
        f"convert_200_cells_s={convert:.4f} local_over_direct={local / direct:.2f} "
        f"convert_over_export={convert / export:.2f} direct_first_output_s={direct:.3f} "
        f"rounds={args.rounds}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
