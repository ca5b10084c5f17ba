"""Parking end to end on simulated GPUs with the labelled simulated checkpointer: a real server,
real kernels and a real batch job.

An idle kernel is parked instead of released (reclaim_action 'park'): its variables stay, its
GPUs are lent to a preemptible job, and its next cell takes them back, preempting the job (which
is queued again), with a line that says it is resuming. A kernel the checkpointer refuses falls
back to a release, with the reason; `%gpu park` parks by hand.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from jupyter_dlinfra.testing.server import ServerProcess, wait_until, write_notebook

PARK_POLICY = (
    "--DLInfra.telemetry_interval=0.1",
    "--DLInfra.job_interval=0.2",
    "--DLInfra.idle_after=0.5",
    "--DLInfra.warn_after=0.5",
    "--DLInfra.reclaim_after=1.5",
    "--DLInfra.reclaim_action=park",
)

# the job records each run's GPUs, then runs until the test lets it finish (a file)
TRAIN = (
    "import os\nopen('runs.txt', 'a').write(os.environ['CUDA_VISIBLE_DEVICES'] + '\\n')",
    "import time\n"
    "deadline = time.time() + 120\n"
    "while not os.path.exists('go.txt') and time.time() < deadline:\n"
    "    time.sleep(0.1)\n",
)


def allocation_of(server: ServerProcess, kernel_id: str) -> dict[str, Any]:
    mine = server.get(f"dlinfra/api/allocations?kernel_id={kernel_id}")["allocations"]
    assert len(mine) == 1, mine
    found: dict[str, Any] = mine[0]
    return found


#: what a simulated GPU's kernel holds (the footprint a park copies to the host)
GIB = 1 << 30


def idle(load: Path, *gpus: int) -> None:
    load.write_text(
        json.dumps({str(g): {"utilization_percent": 0, "memory_used_bytes": GIB} for g in gpus})
    )


def test_an_idle_kernel_is_parked_its_gpus_lent_to_a_job_and_taken_back_at_its_next_cell(
    start_server: Callable[..., ServerProcess], tmp_path: Path
) -> None:
    load = tmp_path / "load.json"
    idle(load, 0, 1)
    server = start_server(gpus=2, args=PARK_POLICY, env={"DLINFRA_SIMULATED_LOAD_FILE": str(load)})
    kernel = server.start_kernel()
    assert "Granted 2 GPUs" in kernel.execute("%gpu 2").stdout
    kernel.execute("state = {'weights': [1, 2, 3]}")
    mine = allocation_of(server, kernel.kernel_id)

    def parked() -> Any:
        alloc = allocation_of(server, kernel.kernel_id)
        return alloc if (alloc["park"] or {}).get("state") == "parked" else None

    now = wait_until(parked, timeout=60, what="the idle kernel to be parked")
    assert now["state"] == "granted" and now["park"]["reason"].startswith("parked: idle for")
    assert server.get(f"dlinfra/api/kernels/{kernel.kernel_id}/usage")["held"] == []

    root: Path = server.workdir / "root"
    write_notebook(root / "train.ipynb", *TRAIN)
    job = server.post("dlinfra/api/jobs", {"path": "train.ipynb", "gpus": 2})

    def on_loan() -> Any:
        found = server.get(f"dlinfra/api/jobs/{job['id']}")
        runs = root / "runs.txt"
        return found if found["state"] == "running" and runs.exists() else None

    wait_until(on_loan, timeout=90, what="the job to run on the parked kernel's GPUs")
    (lent,) = (root / "runs.txt").read_text().splitlines()
    assert set(lent.split(",")) == {g["uuid"] for g in mine["gpus"]}

    # the next cell takes them back first, saying so, then runs with its variables intact
    back = kernel.execute("print(sum(state['weights']))", timeout=120)
    assert back.stdout.strip() == "6", back
    shown = "".join(back.displays)
    assert "resumed your GPUs in" in shown, back
    alloc = server.get(f"dlinfra/api/allocations/{mine['id']}")
    assert alloc["state"] == "granted" and alloc["park"] is None
    assert alloc["cuda_visible_devices"] == mine["cuda_visible_devices"]

    def requeued() -> Any:
        found = server.get(f"dlinfra/api/jobs/{job['id']}")
        return found if found["attempts"] >= 1 and found["state"] == "queued" else None

    queued = wait_until(requeued, timeout=60, what="the borrowing job to be queued again")
    assert "resumed" in (queued["reason"] or ""), queued
    (root / "go.txt").write_text("go")


def test_a_kernel_that_cannot_be_parked_is_released_with_the_reason_and_park_by_hand(
    start_server: Callable[..., ServerProcess], tmp_path: Path
) -> None:
    load = tmp_path / "load.json"
    control = tmp_path / "checkpoint.json"
    control.write_text(json.dumps({"refuse": {"*": "NCCL communicators are open"}}))
    load.write_text(json.dumps({"0": {"utilization_percent": 90, "memory_used_bytes": GIB}}))
    server = start_server(
        gpus=1,
        args=PARK_POLICY,
        env={
            "DLINFRA_SIMULATED_LOAD_FILE": str(load),
            "DLINFRA_SIMULATED_CHECKPOINT_FILE": str(control),
        },
    )
    kernel = server.start_kernel()
    assert "Granted 1 GPU" in kernel.execute("%gpu 1").stdout
    refused = kernel.execute("%gpu park")
    assert "not parked: NCCL communicators are open" in refused.stderr, refused

    control.write_text(json.dumps({}))
    by_hand = kernel.execute("%gpu park")
    assert "Parked: the memory of this kernel's 1 GPU" in by_hand.stdout, by_hand
    parked = allocation_of(server, kernel.kernel_id)
    assert parked["park"]["state"] == "parked"
    assert "are parked" in kernel.execute("%gpu").stdout  # a %gpu line does not resume first
    # released from outside while parked: refused, the kernel's CUDA state needs those GPUs
    status, body, _ = server.request("DELETE", f"dlinfra/api/allocations/{parked['id']}")
    assert status == 409 and body["reason"] == "parked", body
    again = kernel.execute("x = 1")
    assert "resumed your GPUs in" in "".join(again.displays), again
    assert allocation_of(server, kernel.kernel_id)["park"] is None
    # parked again, then %gpu release: the GPU state comes back first, then the GPUs go
    assert "Parked" in kernel.execute("%gpu park").stdout
    released = kernel.execute("%gpu release")
    assert "resumed your GPUs in" in "".join(released.displays), released
    assert "Released 1 GPU" in released.stdout, released
    assert "Granted 1 GPU" in kernel.execute("%gpu 1").stdout

    # now refused again, and idle: the reclaim falls back to a release and says why
    control.write_text(json.dumps({"refuse": {"*": "NCCL communicators are open"}}))
    idle(load, 0)

    def released() -> Any:
        found = server.get(f"dlinfra/api/allocations?kernel_id={kernel.kernel_id}&state=all")
        ended = [
            a
            for a in found["allocations"]
            if a["state"] == "released" and a["end_reason"].startswith("reclaimed")
        ]
        return ended or None

    (ended,) = wait_until(released, timeout=60, what="the fallback release")
    assert "could not be parked (NCCL communicators are open)" in ended["end_reason"], ended

    def runs_again() -> Any:
        try:
            return kernel.execute("print('after')", timeout=10)
        except Exception:
            return None

    after = wait_until(runs_again, timeout=60, what="the restarted kernel")
    assert "It could not be parked instead: NCCL communicators are open" in after.stderr, after


def test_a_server_restart_with_a_parked_kernel_loses_nothing(
    start_server: Callable[..., ServerProcess], tmp_path: Path
) -> None:
    """The kernel dies with the server, so its parked grant ends; the job that borrowed its
    GPUs runs on as an ordinary grant across the restart and finishes; nothing stays parked."""
    workdir = tmp_path / "restarting"
    workdir.mkdir()
    load = tmp_path / "load.json"
    load.write_text(json.dumps({"0": {"utilization_percent": 90, "memory_used_bytes": GIB}}))
    env = {"DLINFRA_SIMULATED_LOAD_FILE": str(load)}
    args = ("--DLInfra.job_interval=0.2",)
    server = start_server(gpus=1, args=args, workdir=workdir, env=env)
    kernel = server.start_kernel()
    assert "Granted 1 GPU" in kernel.execute("%gpu 1").stdout
    assert "Parked" in kernel.execute("%gpu park").stdout
    root: Path = server.workdir / "root"
    write_notebook(root / "train.ipynb", *TRAIN)
    job = server.post("dlinfra/api/jobs", {"path": "train.ipynb", "gpus": 1})

    def running() -> Any:
        found = server.get(f"dlinfra/api/jobs/{job['id']}")
        return found if found["state"] == "running" and (root / "runs.txt").exists() else None

    wait_until(running, timeout=90, what="the job to run on the parked kernel's GPU")
    parked = allocation_of(server, kernel.kernel_id)
    server.stop()

    again = start_server(gpus=1, args=args, workdir=workdir, env=env)

    def ended() -> Any:
        found = again.get(f"dlinfra/api/allocations/{parked['id']}")
        return found if found["state"] == "released" else None

    gone = wait_until(ended, timeout=60, what="the dead kernel's parked grant to end")
    assert gone["park"] is None
    (root / "go.txt").write_text("go")

    def finished() -> Any:
        found = again.get(f"dlinfra/api/jobs/{job['id']}")
        return found if found["state"] in ("succeeded", "failed") else None

    done = wait_until(finished, timeout=90, what="the borrowing job to finish")
    assert done["state"] == "succeeded" and done["attempts"] == 0, done
    assert not again.get("dlinfra/api/allocations")["allocations"]
    cluster = again.get("dlinfra/api/cluster")
    assert cluster["free_count"] == cluster["gpu_count"] == 1, cluster


def test_restarting_a_parked_kernel_ends_its_parked_grant(
    start_server: Callable[..., ServerProcess], tmp_path: Path
) -> None:
    """The GPU state waits in the process that the restart ends: nothing is left to resume."""
    load = tmp_path / "load.json"
    load.write_text(json.dumps({"0": {"utilization_percent": 90, "memory_used_bytes": GIB}}))
    server = start_server(gpus=1, env={"DLINFRA_SIMULATED_LOAD_FILE": str(load)})
    kernel = server.start_kernel()
    assert "Granted 1 GPU" in kernel.execute("%gpu 1").stdout
    assert "Parked" in kernel.execute("%gpu park").stdout
    parked = allocation_of(server, kernel.kernel_id)
    server.post(f"api/kernels/{kernel.kernel_id}/restart", {})

    def ended() -> Any:
        found = server.get(f"dlinfra/api/allocations/{parked['id']}")
        return found if found["state"] == "released" else None

    gone = wait_until(ended, timeout=60, what="the parked grant to end with the restart")
    assert gone["park"] is None

    def runs_again() -> Any:
        try:
            return kernel.execute("print('back')", timeout=10)
        except Exception:
            return None

    after = wait_until(runs_again, timeout=60, what="the restarted kernel")
    assert after.stdout.strip() == "back" and "resum" not in "".join(after.displays), after
    cluster = server.get("dlinfra/api/cluster")
    assert cluster["free_count"] == cluster["gpu_count"] == 1, cluster
