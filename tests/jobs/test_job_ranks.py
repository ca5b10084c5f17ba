"""A distributed job's ranks on one node (``jobs/ranks.py``): real runner processes, real
kernels, a real rendezvous over TCP at the launcher's MASTER_ADDR:MASTER_PORT."""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import nbformat
import psutil
import pytest

from jupyter_dlinfra.jobs.ranks import torchrun_argv
from jupyter_dlinfra.jobs.shape import Shape
from jupyter_dlinfra.testing.distributed import ALLREDUCE_CELL, ROLES_CELL, expected_sum

GPUS = ["GPU-a", "GPU-b", "GPU-c"]


def job_dir(
    tmp_path: Path,
    *cells: str,
    ranks: int = 3,
    nodes: int = 1,
    roles: Any = None,
    launcher: str | None = None,
) -> Path:
    nb = nbformat.v4.new_notebook()  # type: ignore[no-untyped-call]
    nb.cells = [nbformat.v4.new_code_cell(c) for c in cells]  # type: ignore[no-untyped-call]
    nbformat.write(nb, tmp_path / "input.ipynb")  # type: ignore[no-untyped-call]
    spec = {
        "cwd": ".",
        "kernel_name": "python3",
        "job_id": 7,
        "nodes": nodes,
        "gpus_per_node": ranks,
        **({} if roles is None else {"roles": roles}),
        **({} if launcher is None else {"launcher": launcher}),
    }
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    return tmp_path


def launch(jobdir: Path, gpus: list[str], *args: str) -> subprocess.Popen[bytes]:
    env = dict(os.environ, CUDA_VISIBLE_DEVICES=",".join(gpus))
    # its own session, as the local backend starts a job: a cancel signals the whole group
    return subprocess.Popen(
        [sys.executable, "-m", "jupyter_dlinfra.jobs.ranks", str(jobdir), *args],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )


def status(path: Path) -> dict[str, Any]:
    found: dict[str, Any] = json.loads((path / "status.json").read_text())
    return found


def wait_for(check: Any, what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def descendants(proc: subprocess.Popen[bytes]) -> list[psutil.Process]:
    """The launcher's ranks and their kernels (kernels have sessions of their own: only their
    parents tie them to the job)."""
    return psutil.Process(proc.pid).children(recursive=True)


def none_left(processes: list[psutil.Process]) -> None:
    def gone() -> bool:
        alive = []
        for p in processes:
            try:
                if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                    alive.append(p)
            except psutil.Error:
                continue
        return not alive

    wait_for(gone, "the ranks and their kernels to end", timeout=30)


def running_cell(jobdir: Path, rank: int, cell: int) -> bool:
    path = jobdir / "ranks" / str(rank) / "job.log"
    return path.exists() and f"--- cell {cell} ---" in path.read_text()


def test_the_ranks_find_each_other_and_rank_0_writes_the_notebook(tmp_path: Path) -> None:
    jobdir = job_dir(tmp_path, ALLREDUCE_CELL)
    proc = launch(jobdir, GPUS)
    assert proc.wait(timeout=120) == 0
    done = status(jobdir)
    assert done["state"] == "succeeded" and done["world_size"] == 3
    assert [(r["rank"], r["state"]) for r in done["ranks"]] == [
        (0, "succeeded"),
        (1, "succeeded"),
        (2, "succeeded"),
    ]
    for rank in range(3):
        own = (jobdir / "ranks" / str(rank) / "job.log").read_text()
        # its own rank, the same world, every GPU of the node, and the sum over all ranks
        line = f"rank {rank}/3 local {rank} node 0 gpus {','.join(GPUS)} sum {expected_sum(3)}"
        assert line in own, own
    log = (jobdir / "job.log").read_text()
    assert "distributed job: 1 node x 3 GPUs (3 ranks)" in log
    assert "rank 1 started on GPU GPU-b" in log
    # rank 0's log as it came, prefixed as torchrun does
    assert "[rank0]: rank 0/3 local 0 node 0 gpus GPU-a,GPU-b,GPU-c sum 6" in log
    assert log.rstrip().endswith("---") and "succeeded in" in log.splitlines()[-1]
    executed = nbformat.read(jobdir / "executed.ipynb", as_version=4)  # type: ignore[no-untyped-call]
    assert "rank 0/3" in "".join(o.get("text", "") for o in executed.cells[0].outputs)
    assert (jobdir / "report.html").exists()


def test_one_failing_rank_fails_the_job_and_stops_the_others(tmp_path: Path) -> None:
    jobdir = job_dir(
        tmp_path,
        "import os, time",
        # rank 1 fails; the others would go on for ten minutes
        "if os.environ['RANK'] == '1':\n    1 / 0\ntime.sleep(600)",
        ranks=2,
    )
    proc = launch(jobdir, GPUS[:2])
    wait_for(lambda: running_cell(jobdir, 0, 2), "rank 0 to run its long cell", timeout=90)
    started = descendants(proc)
    assert proc.wait(timeout=120) == 1
    done = status(jobdir)
    assert done["state"] == "failed" and done["failed_rank"] == 1 and done["failed_cell"] == 2
    assert done["error"] == "rank 1 of 2: ZeroDivisionError: division by zero"
    by_rank = {r["rank"]: r["state"] for r in done["ranks"]}
    assert by_rank == {0: "cancelled", 1: "failed"}
    log = (jobdir / "job.log").read_text()
    assert "rank 1 failed: ZeroDivisionError: division by zero; stopping the other ranks" in log
    assert "--- the last lines of rank 1 ---" in log
    none_left(started)


def test_a_cancel_stops_every_rank(tmp_path: Path) -> None:
    jobdir = job_dir(
        tmp_path, "import time\nprint('working', flush=True)\ntime.sleep(600)", ranks=2
    )
    proc = launch(jobdir, GPUS[:2])

    def all_working() -> bool:
        logs = [jobdir / "ranks" / str(r) / "job.log" for r in range(2)]
        return all(p.exists() and "working" in p.read_text() for p in logs)

    wait_for(all_working, "both ranks to run their cell", timeout=90)
    started = descendants(proc)
    assert len(started) >= 4  # two runners, two kernels
    os.killpg(proc.pid, signal.SIGTERM)  # what the local backend's cancel does
    assert proc.wait(timeout=60) == 128 + signal.SIGTERM
    done = status(jobdir)
    assert done["state"] == "cancelled" and done["error"] == "cancelled by SIGTERM"
    assert {r["state"] for r in done["ranks"]} == {"cancelled"}
    none_left(started)


def test_a_grant_that_does_not_match_the_ranks_fails_before_starting_any(tmp_path: Path) -> None:
    jobdir = job_dir(tmp_path, "print('never')", ranks=3)
    proc = launch(jobdir, GPUS[:2])
    assert proc.wait(timeout=60) == 1
    done = status(jobdir)
    assert done["state"] == "failed"
    assert done["error"] == (
        "node 0 was granted 2 GPUs for 3 ranks (CUDA_VISIBLE_DEVICES=GPU-a,GPU-b)"
    )
    assert not (jobdir / "ranks").exists()


def gather(jobdir: Path) -> int:
    return subprocess.run(
        [sys.executable, "-m", "jupyter_dlinfra.jobs.ranks", str(jobdir), "--gather"],
        check=False,
        timeout=60,
    ).returncode


def test_two_nodes_ranks_meet_where_node_0_says_and_the_job_is_gathered(tmp_path: Path) -> None:
    # two launchers, as srun starts one per node, sharing the job's directory; node 0 says
    # where rank 0 listens (rendezvous.json), node 1's ranks find it there
    jobdir = job_dir(tmp_path, ALLREDUCE_CELL, ranks=2, nodes=2)
    second = launch(jobdir, ["GPU-c", "GPU-d"], "--node-rank", "1")
    first = launch(jobdir, ["GPU-a", "GPU-b"], "--node-rank", "0", "--master-addr", "127.0.0.1")
    assert first.wait(timeout=120) == 0 and second.wait(timeout=120) == 0
    assert not (jobdir / "status.json").exists()  # the nodes' own statuses only, so far
    assert gather(jobdir) == 0
    done = status(jobdir)
    assert done["state"] == "succeeded" and done["world_size"] == 4 and done["nodes"] == 2
    assert [r["rank"] for r in done["ranks"]] == [0, 1, 2, 3]
    for rank, (node, gpus) in enumerate(
        [(0, "GPU-a,GPU-b"), (0, "GPU-a,GPU-b"), (1, "GPU-c,GPU-d"), (1, "GPU-c,GPU-d")]
    ):
        own = (jobdir / "ranks" / str(rank) / "job.log").read_text()
        line = f"rank {rank}/4 local {rank % 2} node {node} gpus {gpus} sum {expected_sum(4)}"
        assert line in own, own
    assert (jobdir / "executed.ipynb").exists()  # rank 0's, copied by node 0


def test_across_nodes_the_rank_that_failed_decides_not_the_nodes_stopped_for_it(
    tmp_path: Path,
) -> None:
    jobdir = job_dir(
        tmp_path,
        "import os, time",
        "if os.environ['RANK'] == '3':\n    raise RuntimeError('out of memory')\ntime.sleep(600)",
        ranks=2,
        nodes=2,
    )
    first = launch(jobdir, ["GPU-a", "GPU-b"], "--node-rank", "0", "--master-addr", "127.0.0.1")
    second = launch(jobdir, ["GPU-c", "GPU-d"], "--node-rank", "1")
    assert second.wait(timeout=120) == 1
    # what srun --kill-on-bad-exit does to the other nodes' tasks
    os.killpg(first.pid, signal.SIGTERM)
    assert first.wait(timeout=60) == 128 + signal.SIGTERM
    assert gather(jobdir) == 1
    done = status(jobdir)
    assert done["state"] == "failed" and done["failed_rank"] == 3 and done["failed_cell"] == 2
    assert done["error"] == "rank 3 of 4: RuntimeError: out of memory"
    assert {r["rank"]: r["state"] for r in done["ranks"]} == {
        0: "cancelled",
        1: "cancelled",
        2: "cancelled",
        3: "failed",
    }


def test_roles_start_in_order_and_see_each_others_addresses(tmp_path: Path) -> None:
    roles = [
        {"name": "server", "replicas": 1, "gpus": 0, "ready": "port"},
        {"name": "worker", "replicas": 2, "gpus": 1, "after": ["server"]},
    ]
    jobdir = job_dir(tmp_path, ROLES_CELL, roles=roles)
    proc = launch(jobdir, ["GPU-a", "GPU-b"])
    assert proc.wait(timeout=120) == 0, (jobdir / "job.log").read_text()
    done = status(jobdir)
    assert done["state"] == "succeeded" and done["world_size"] == 3
    # workers connect once, without retrying: they started after the server listened
    assert "server rank 0 total 3" in (jobdir / "ranks" / "0" / "job.log").read_text()
    for replica, gpu in enumerate(["GPU-a", "GPU-b"]):
        own = (jobdir / "ranks" / str(replica + 1) / "job.log").read_text()
        assert f"worker {replica} rank {replica + 1} gpus {gpu} total 3" in own, own
    log = (jobdir / "job.log").read_text()
    assert "job with roles: server x1, worker x2 after server" in log
    assert log.index("rank 0 (server 0) started") < log.index("role worker starts: server ready")
    assert log.index("role worker starts: server ready") < log.index("rank 1 (worker 0) started")


def test_a_role_waiting_for_one_that_ended_unready_fails_the_job(tmp_path: Path) -> None:
    roles = [
        {"name": "prep", "ready": "file"},  # never writes its ready file
        {"name": "train", "after": "prep"},
    ]
    jobdir = job_dir(tmp_path, "print('prepared, but not ready')", roles=roles)
    proc = launch(jobdir, [])
    assert proc.wait(timeout=120) == 1
    done = status(jobdir)
    assert done["state"] == "failed"
    assert done["error"] == (
        "role train never started: the roles it starts after ended before they were ready"
    )
    assert not (jobdir / "ranks" / "1").exists()


def test_a_role_ready_by_its_file_lets_the_next_start(tmp_path: Path) -> None:
    roles = [{"name": "prep", "ready": "file"}, {"name": "train", "after": "prep"}]
    cell = (
        "import os, time\n"
        "if os.environ['ROLE_NAME'] == 'prep':\n"
        "    open(os.environ['DLINFRA_READY_FILE'], 'w').close()\n"
        "    time.sleep(1)\n"
        "print(os.environ['ROLE_NAME'], 'done')"
    )
    jobdir = job_dir(tmp_path, cell, roles=roles)
    proc = launch(jobdir, [])
    assert proc.wait(timeout=120) == 0, (jobdir / "job.log").read_text()
    assert "train done" in (jobdir / "ranks" / "1" / "job.log").read_text()
    assert "role train starts: prep ready" in (jobdir / "job.log").read_text()


def test_rank_0s_log_is_copied_line_by_line_blank_lines_and_last_words_included(
    tmp_path: Path,
) -> None:
    from jupyter_dlinfra.jobs.ranks import _Follow, _Log

    source = tmp_path / "rank.log"
    log = _Log(tmp_path / "job.log")
    follow = _Follow(source, "[rank0]: ")
    source.write_text("one\n\ntw")
    follow.step(log)  # "tw" is a line still being written
    with source.open("a") as f:
        f.write("o\nthree")
    follow.step(log, final=True)  # the rank ended: its unfinished line is copied too
    log.close()
    assert (tmp_path / "job.log").read_text().splitlines() == [
        "[rank0]: one",
        "[rank0]: ",
        "[rank0]: two",
        "[rank0]: three",
    ]


def test_a_node_waiting_for_node_0_is_cancelled_at_once(tmp_path: Path) -> None:
    jobdir = job_dir(tmp_path, "print('never')", ranks=1, nodes=2)
    second = launch(jobdir, ["GPU-b"], "--node-rank", "1")  # node 0 never comes

    def waiting() -> bool:
        log = jobdir / "job.log"
        return log.exists() and "node 1 waits for node 0's address" in log.read_text()

    wait_for(waiting, "node 1 to wait for node 0", timeout=30)
    os.killpg(second.pid, signal.SIGTERM)
    assert second.wait(timeout=30) == 128 + signal.SIGTERM
    own = json.loads((jobdir / "nodes" / "1" / "status.json").read_text())
    assert own["state"] == "cancelled" and own["error"] == "cancelled by SIGTERM"


def test_torchrun_is_one_per_node_with_a_static_rendezvous_at_node_0() -> None:
    argv = torchrun_argv(Path("/jobs/7"), Shape(2, 4), 1, ("10.0.0.5", 29500), "job-7")
    assert argv[1:] == [
        "-m",
        "torch.distributed.run",
        "--nnodes=2",
        "--node-rank=1",
        "--nproc-per-node=4",
        "--rdzv-backend=static",
        "--rdzv-endpoint=10.0.0.5:29500",
        "--rdzv-id=job-7",
        "--max-restarts=0",
        "-m",
        "jupyter_dlinfra.jobs.runner",
        "/jobs/7",
        "--rank-out",
    ]


def test_launcher_torchrun_without_pytorch_fails_saying_what_to_do(tmp_path: Path) -> None:
    if importlib.util.find_spec("torch") is not None:
        pytest.skip("PyTorch is installed here: the next test runs torchrun itself")
    jobdir = job_dir(tmp_path, ALLREDUCE_CELL, ranks=2, launcher="torchrun")
    proc = launch(jobdir, GPUS[:2])
    assert proc.wait(timeout=60) == 1
    done = status(jobdir)
    assert done["state"] == "failed", done
    assert done["error"].startswith("launcher torchrun: PyTorch is not installed for "), done
    assert "leave launcher out" in done["error"]
    assert not (jobdir / "ranks").exists()  # nothing started


def test_launcher_torchrun_runs_the_ranks_as_its_workers(tmp_path: Path) -> None:
    """Where PyTorch is installed (a GPU machine's image): torchrun's workers are the job's
    runners, each with torchrun's own RANK and rendezvous, meeting through TCP."""
    pytest.importorskip("torch")
    jobdir = job_dir(tmp_path, ALLREDUCE_CELL, ranks=2, launcher="torchrun")
    proc = launch(jobdir, GPUS[:2])
    assert proc.wait(timeout=180) == 0, (jobdir / "job.log").read_text()
    done = status(jobdir)
    assert done["state"] == "succeeded" and [r["state"] for r in done["ranks"]] == [
        "succeeded",
        "succeeded",
    ]
    for rank in range(2):
        own = (jobdir / "ranks" / str(rank) / "job.log").read_text()
        assert f"rank {rank}/2 local {rank} node 0 " in own and f"sum {expected_sum(2)}" in own
    assert "torchrun: torch.distributed.run --nnodes=1" in (jobdir / "job.log").read_text()
