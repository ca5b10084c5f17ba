"""Notebooks as batch jobs on the local backend, end to end: real servers, real job processes."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil

from jupyter_dlinfra.testing.server import ServerProcess, wait_until, write_notebook

FAST = ("--DLInfra.job_interval=0.2",)


def root_of(server: ServerProcess) -> Path:
    return server.workdir / "root"


def job(server: ServerProcess, job_id: int) -> dict[str, Any]:
    found: dict[str, Any] = server.get(f"dlinfra/api/jobs/{job_id}")
    return found


def wait_state(server: ServerProcess, job_id: int, *states: str, timeout: float = 90) -> Any:
    def reached() -> Any:
        current = job(server, job_id)
        return current if current["state"] in states else None

    return wait_until(reached, timeout=timeout, what=f"job {job_id} to be {' or '.join(states)}")


def test_a_notebook_prints_writes_a_file_reads_a_parameter_and_its_outputs_come_back(
    start_server: Callable[..., ServerProcess],
) -> None:
    server = start_server(gpus=2, args=FAST)
    write_notebook(
        root_of(server) / "exp" / "train.ipynb",
        "%gpu 1",
        ("lr = 0.1\nepochs = 1", ["parameters"]),
        "print(f'training with lr={lr} for {epochs} epochs')",
        "import os\nprint('visible', os.environ.get('CUDA_VISIBLE_DEVICES'))",
        "open('result.txt', 'w').write(str(lr * 2))",
    )
    status, created, headers = server.request(
        "POST", "dlinfra/api/jobs", {"path": "exp/train.ipynb", "parameters": {"lr": 0.5}}
    )
    assert status == 201, created
    assert headers["Location"].endswith(f"/dlinfra/api/jobs/{created['id']}")
    assert created["gpus"] == 1 and created["state"] == "queued"
    done = wait_state(server, created["id"], "succeeded", "failed")
    assert done["state"] == "succeeded", done
    assert done["duration_s"] > 0 and done["reason"] is None

    log = server.get(f"dlinfra/api/jobs/{created['id']}/log")
    assert "training with lr=0.5 for 1 epochs" in log["text"], log["text"]
    gpu_line = next(line for line in log["text"].splitlines() if line.startswith("visible "))
    assert gpu_line.startswith("visible GPU-")  # the ledger's grant, applied at launch
    # the file is written next to the notebook, as when the notebook runs interactively
    assert (root_of(server) / "exp" / "result.txt").read_text() == "1.0"
    # the GPUs went back to the ledger
    assert not server.get("dlinfra/api/allocations")["allocations"]

    outputs = done["outputs"]
    executed = json.loads((root_of(server) / outputs["notebook"]).read_text())
    printed = "".join(
        "".join(o.get("text", "")) for c in executed["cells"] for o in c.get("outputs", [])
    )
    assert "training with lr=0.5" in printed
    assert (root_of(server) / outputs["html"]).read_text().lstrip().lower().startswith("<!doctype")
    served = server.get(f"dlinfra/api/jobs/{created['id']}/output?format=notebook")
    # cell 3: the parameters cell is followed by the injected one
    assert served["cells"][2]["metadata"]["tags"] == ["injected-parameters"]
    assert "".join(served["cells"][3]["outputs"][0]["text"]).startswith("training with lr=0.5")
    req = urllib.request.Request(
        server.url + f"dlinfra/api/jobs/{created['id']}/output?format=html",
        headers={"Authorization": f"token {server.token}"},
    )
    with urllib.request.urlopen(req, timeout=30) as resp:
        assert resp.headers["Content-Type"].startswith("text/html")


def test_a_chain_whose_first_job_fails_cancels_the_second_with_a_reason(
    start_server: Callable[..., ServerProcess],
) -> None:
    server = start_server(gpus=1, args=FAST)
    write_notebook(root_of(server) / "bad.ipynb", "x = 1", "1 / 0", "print('never')")
    write_notebook(root_of(server) / "next.ipynb", "print('after')")
    first = server.post("dlinfra/api/jobs", {"path": "bad.ipynb"})
    second = server.post("dlinfra/api/jobs", {"path": "next.ipynb", "after": [first["id"]]})
    assert second["reason"] == f"waiting for job {first['id']}"
    failed = wait_state(server, first["id"], "failed", "succeeded")
    assert failed["state"] == "failed" and failed["failed_cell"] == 2
    assert "ZeroDivisionError" in failed["error"] and "cell 2" in failed["reason"]
    cancelled = wait_state(server, second["id"], "cancelled", "succeeded", "failed")
    assert cancelled["state"] == "cancelled"
    assert cancelled["reason"] == f"job {first['id']} it runs after failed"
    # the failed job's executed notebook stops at the failing cell
    executed = server.get(f"dlinfra/api/jobs/{first['id']}/output?format=notebook")
    assert executed["cells"][2].get("outputs", []) == []


def test_a_job_waits_for_gpus_held_by_a_notebook_and_starts_when_they_free(
    start_server: Callable[..., ServerProcess],
) -> None:
    server = start_server(gpus=2, args=FAST)
    kernel = server.start_kernel()
    assert "Granted 2 GPUs" in kernel.execute("%gpu 2").stdout
    write_notebook(root_of(server) / "wait.ipynb", "print('ran')")
    created = server.post("dlinfra/api/jobs", {"path": "wait.ipynb", "gpus": 1})

    def waiting() -> Any:
        current = job(server, created["id"])
        return current if "position 1" in (current["reason"] or "") else None

    queued = wait_until(waiting, timeout=30, what="the job to queue for GPUs")
    assert queued["state"] == "queued" and "waiting for 1 GPU" in queued["reason"]
    kernel.execute("%gpu release")
    assert wait_state(server, created["id"], "succeeded", "failed")["state"] == "succeeded"


def test_stopping_and_starting_the_server_mid_job_loses_nothing(
    start_server: Callable[..., ServerProcess], tmp_path: Path
) -> None:
    workdir = tmp_path / "restarting"
    workdir.mkdir()
    server = start_server(gpus=1, args=FAST, workdir=workdir)
    write_notebook(
        root_of(server) / "long.ipynb",
        "%gpu 1",
        "import time\nfor i in range(6):\n    print('step', i, flush=True)\n    time.sleep(1)",
    )
    created = server.post("dlinfra/api/jobs", {"path": "long.ipynb"})
    running = wait_state(server, created["id"], "running")
    assert running["allocation_id"] is not None
    server.stop()
    pid = _job_pid(workdir, created["id"])
    assert psutil.pid_exists(pid), "the job must outlive the server"
    wait_until(lambda: not _alive(pid), timeout=60, what="the job to finish on its own")

    again = start_server(gpus=1, args=FAST, workdir=workdir)
    done = wait_state(again, created["id"], "succeeded", "failed")
    assert done["state"] == "succeeded", done
    assert "step 5" in again.get(f"dlinfra/api/jobs/{created['id']}/log")["text"]
    assert not again.get("dlinfra/api/allocations")["allocations"]


def test_cancel_stops_a_running_job_and_a_queued_one(
    start_server: Callable[..., ServerProcess],
) -> None:
    server = start_server(gpus=1, args=FAST)
    write_notebook(root_of(server) / "forever.ipynb", "import time\ntime.sleep(600)")
    running = server.post("dlinfra/api/jobs", {"path": "forever.ipynb", "gpus": 1})
    queued = server.post("dlinfra/api/jobs", {"path": "forever.ipynb", "gpus": 1})
    wait_state(server, running["id"], "running")
    cancelled = server.delete(f"dlinfra/api/jobs/{queued['id']}")
    assert cancelled["state"] == "cancelled" and cancelled["reason"].startswith("cancelled by")
    server.delete(f"dlinfra/api/jobs/{running['id']}")
    ended = wait_state(server, running["id"], "cancelled", "failed", "succeeded", timeout=60)
    assert ended["state"] == "cancelled", (
        ended,
        server.get(f"dlinfra/api/jobs/{running['id']}/log"),
    )
    assert ended["reason"].startswith("cancelled by")
    assert not server.get("dlinfra/api/allocations")["allocations"]


def test_the_command_line_submits_and_follows_a_job(
    start_server: Callable[..., ServerProcess],
) -> None:
    server = start_server(gpus=1, args=FAST)
    notebook = write_notebook(
        root_of(server) / "cli.ipynb", ("n = 1", ["parameters"]), "print('n is', n * 10)"
    )
    result = run_cli(
        server,
        "submit",
        str(notebook.relative_to(root_of(server))),
        "--gpus",
        "0",
        "-p",
        "n=4",
        "--wait",
    )
    assert result.returncode == 0, result.stderr
    assert "n is 40" in result.stdout and "succeeded" in result.stdout


def run_cli(server: ServerProcess, *args: str) -> subprocess.CompletedProcess[str]:
    """``jupyter dlinfra ARGS`` against ``server``, from its root."""
    command = ["jupyter_dlinfra.cli", "--url", server.url, "--token", server.token]
    return subprocess.run(
        [sys.executable, "-m", *command, *args],
        cwd=root_of(server),
        capture_output=True,
        text=True,
        timeout=120,
    )


def _job_pid(workdir: Path, job_id: int) -> int:
    for proc in psutil.process_iter(["cmdline"]):
        cmd = proc.info["cmdline"] or []
        if "jupyter_dlinfra.jobs.runner" in cmd and any(f"/{job_id}-" in c for c in cmd):
            return int(proc.pid)
    raise AssertionError(f"no runner process for job {job_id}")


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def test_a_second_server_adopts_jobs_only_once_their_server_is_gone(
    start_server: Callable[..., ServerProcess], tmp_path: Path
) -> None:
    gate = tmp_path / "gate"
    first = start_server(gpus=1, args=FAST)
    write_notebook(
        root_of(first) / "gated.ipynb",
        f"import os, time\nwhile not os.path.exists({str(gate)!r}):\n    time.sleep(0.1)",
    )
    created = first.post("dlinfra/api/jobs", {"path": "gated.ipynb", "gpus": 1})
    wait_state(first, created["id"], "running")
    second = start_server(gpus=1, args=FAST)  # same user, node and ledger
    settled = wait_until(
        lambda: second.get(f"dlinfra/api/jobs/{created['id']}"), timeout=10, what="a look"
    )
    # both servers answer for the job; the first, alive, keeps watching it
    assert settled["state"] == "running"
    first.stop()
    gate.write_text("go")
    done = wait_state(second, created["id"], "succeeded", "failed")
    assert done["state"] == "succeeded", done
    wait_until(
        lambda: not second.get("dlinfra/api/allocations")["allocations"],
        timeout=10,
        what="the job's GPUs to go back",
    )
