"""Preemption end to end: a notebook's interactive request stops a low-priority job on the same
GPUs; the job is queued again, and finishes once the notebook gives the GPUs back."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from jupyter_dlinfra.testing.server import ServerProcess, wait_until, write_notebook

FAST = ("--DLInfra.job_interval=0.2",)

# each run records its GPUs, then waits for the test's go-ahead (a file) before it finishes
TRAIN = (
    "import os\nopen('attempts.txt', 'a').write(os.environ['CUDA_VISIBLE_DEVICES'] + '\\n')",
    "import time\n"
    "deadline = time.time() + 120\n"
    "while not os.path.exists('go.txt') and time.time() < deadline:\n"
    "    time.sleep(0.1)\n"
    "print('finished' if os.path.exists('go.txt') else 'gave up')",
)


def job(server: ServerProcess, job_id: int) -> dict[str, Any]:
    found: dict[str, Any] = server.get(f"dlinfra/api/jobs/{job_id}")
    return found


def test_an_interactive_request_preempts_a_low_job_which_requeues_and_later_finishes(
    start_server: Callable[..., ServerProcess],
) -> None:
    server = start_server(gpus=2, args=FAST)
    root: Path = server.workdir / "root"
    write_notebook(root / "train.ipynb", *TRAIN)
    created = server.post(
        "dlinfra/api/jobs", {"path": "train.ipynb", "gpus": 2, "priority_class": "low"}
    )
    assert created["priority_class"] == "low" and created["attempts"] == 0

    def started_once() -> Any:
        current = job(server, created["id"])
        marks = root / "attempts.txt"
        ran = marks.exists() and len(marks.read_text().splitlines()) == 1
        return current if current["state"] == "running" and ran else None

    wait_until(started_once, timeout=90, what="the job's first run to hold both GPUs")
    (first_gpus,) = (root / "attempts.txt").read_text().splitlines()

    # the notebook asks for both GPUs: its request waits while the job is stopped for it
    kernel = server.start_kernel()
    out = kernel.execute("%gpu 2 --no-wait").stdout
    assert "Queued at position 1 (interactive)" in out, out
    assert "being stopped for it" in out, out
    (mine,) = server.get(f"dlinfra/api/allocations?kernel_id={kernel.kernel_id}")["allocations"]

    def granted() -> Any:
        current = server.get(f"dlinfra/api/allocations/{mine['id']}")
        return current if current["state"] == "granted" else None

    alloc = wait_until(granted, timeout=60, what="the notebook's GPUs after the preemption")
    assert ",".join(g["uuid"] for g in alloc["gpus"]) == first_gpus

    # the job was not lost: it waits again, saying why, with its attempt counted
    def waits_again() -> Any:
        current = job(server, created["id"])
        waiting = (current["reason"] or "").startswith("waiting for 2 GPUs at position 1")
        return current if waiting else None

    requeued = wait_until(waits_again, timeout=30, what="the job to wait for its GPUs again")
    assert requeued["state"] == "queued" and requeued["attempts"] == 1, requeued
    assert requeued["reason"].endswith("(preempted 1 time)"), requeued["reason"]
    log = server.get(f"dlinfra/api/jobs/{created['id']}/log")["text"]
    assert "--- preempted for request" in log and "(attempt 2) ---" in log, log

    # the notebook gives its GPUs back: the job runs again from its snapshot and finishes
    (root / "go.txt").write_text("go")
    assert "Released" in kernel.execute("%gpu release").stdout

    def ended() -> Any:
        current = job(server, created["id"])
        return current if current["state"] in ("succeeded", "failed", "cancelled") else None

    done = wait_until(ended, timeout=90, what="the requeued job to finish")
    assert done["state"] == "succeeded", done
    assert done["attempts"] == 1
    assert (root / "attempts.txt").read_text().splitlines() == [first_gpus, first_gpus]
    executed = server.get(f"dlinfra/api/jobs/{created['id']}/output?format=notebook")
    assert "finished" in "".join(executed["cells"][1]["outputs"][0]["text"])
