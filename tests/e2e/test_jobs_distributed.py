"""A distributed notebook job through the REST API on the local backend: a real server, its
ledger's grant split among real ranks that find each other over TCP."""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from test_jobs_local import run_cli, wait_state

from jupyter_dlinfra.testing.distributed import ALLREDUCE_CELL, ROLES_CELL, expected_sum
from jupyter_dlinfra.testing.server import (
    ServerProcess,
    wait_for_file,
    wait_until,
    write_notebook,
)

FAST = ("--DLInfra.job_interval=0.2",)


def test_a_notebook_asking_for_ranks_runs_them_together_with_their_logs(
    start_server: Callable[..., ServerProcess],
) -> None:
    server = start_server(gpus=4, args=FAST)
    root = server.workdir / "root"
    # the notebook's own line says the shape: read by the converter, not run in the job
    write_notebook(root / "ddp.ipynb", "%gpu 2 --nodes 1", ALLREDUCE_CELL)
    status, created, _ = server.request("POST", "dlinfra/api/jobs", {"path": "ddp.ipynb"})
    assert status == 201, created
    assert (created["gpus"], created["nodes"], created["gpus_per_node"]) == (2, 1, 2)
    assert created["world_size"] == 2
    done = wait_state(server, created["id"], "succeeded", "failed")
    assert done["state"] == "succeeded", done
    job_id = done["id"]

    granted = None
    for rank in range(2):
        own = server.get(f"dlinfra/api/jobs/{job_id}/log?rank={rank}")
        line = next(x for x in own["text"].splitlines() if x.startswith(f"rank {rank}/2 "))
        # its own rank, both of the grant's GPUs (device LOCAL_RANK is its own), the sum
        assert line.startswith(f"rank {rank}/2 local {rank} node 0 gpus GPU-"), line
        assert line.endswith(f" sum {expected_sum(2)}"), line
        gpus = line.split(" gpus ")[1].split(" sum ")[0]
        assert len(gpus.split(",")) == 2
        assert granted in (None, gpus)
        granted = gpus
        assert own["complete"]
    log = server.get(f"dlinfra/api/jobs/{job_id}/log")["text"]
    assert "distributed job: 1 node x 2 GPUs (2 ranks)" in log
    assert "[rank0]: rank 0/2 local 0" in log
    # rank 0's notebook is the job's
    assert done["outputs"]["notebook"] is not None
    # the one grant went back
    assert not server.get("dlinfra/api/allocations")["allocations"]

    # the command line asks for the same shape, and reads one rank's log
    cli = run_cli(server, "submit", "ddp.ipynb", "--nodes", "1", "--gpus-per-node", "2", "--wait")
    assert cli.returncode == 0, cli.stderr
    submitted = max(j["id"] for j in server.get("dlinfra/api/jobs")["jobs"])
    assert server.get(f"dlinfra/api/jobs/{submitted}")["world_size"] == 2
    rank_log = run_cli(server, "log", str(submitted), "--rank", "1")
    assert rank_log.returncode == 0 and "rank 1/2 local 1" in rank_log.stdout, rank_log

    # run again, it is the same ranks
    again = server.post(f"dlinfra/api/jobs/{job_id}/rerun", {})
    assert (again["nodes"], again["gpus_per_node"], again["world_size"]) == (1, 2, 2), again
    assert wait_state(server, again["id"], "succeeded", "failed")["state"] == "succeeded"

    # what cannot run is refused at submission, with what to ask instead
    for body, message in (
        ({"nodes": 2, "gpus_per_node": 2}, "the local backend runs a job on this node only"),
        ({"gpus": 3, "nodes": 2}, "3 GPUs do not split evenly over 2 nodes"),
        # the notebook says 1 node: 5 GPUs cannot be 1 x 2
        ({"gpus": 5, "gpus_per_node": 2}, "gpus (5) is not nodes x gpus_per_node (1 x 2 = 2)"),
        ({"gpus_per_node": 8}, "8 GPUs per node, but the largest node has 4"),
        ({"nodes": 0}, "nodes"),
        ({"launcher": "mpirun"}, "launcher must be 'torchrun'"),
        # a submission's GPUs without a shape are one process: nothing for torchrun to start
        ({"launcher": "torchrun", "gpus": 2}, "launcher torchrun starts a distributed job's"),
    ):
        status, refused, _ = server.request(
            "POST", "dlinfra/api/jobs", {"path": "ddp.ipynb", **body}
        )
        assert status == 400 and message in refused["message"], (body, refused)
    # one torchrun per node: where PyTorch is not installed the job fails saying so, and a
    # re-run keeps the launcher
    if importlib.util.find_spec("torch") is None:
        torchrun = server.post("dlinfra/api/jobs", {"path": "ddp.ipynb", "launcher": "torchrun"})
        failed = wait_state(server, torchrun["id"], "succeeded", "failed")
        assert "launcher torchrun: PyTorch is not installed" in failed["reason"], failed
        again = server.post(f"dlinfra/api/jobs/{torchrun['id']}/rerun", {})
        spec = json.loads((root / again["workdir"] / "spec.json").read_text())
        assert spec["launcher"] == "torchrun", spec
        wait_state(server, again["id"], "succeeded", "failed")

    # a job with roles: a server, then workers once it listens; refused shapes say why
    write_notebook(root / "ps.ipynb", ROLES_CELL)
    roles = [
        {"name": "server", "replicas": 1},
        {"name": "worker", "replicas": 2, "gpus": 1, "after": "server"},
    ]
    status, ps, _ = server.request("POST", "dlinfra/api/jobs", {"path": "ps.ipynb", "roles": roles})
    assert status == 201, ps
    assert (ps["gpus"], ps["world_size"], [r["name"] for r in ps["roles"]]) == (
        2,
        3,
        ["server", "worker"],
    )
    ended = wait_state(server, ps["id"], "succeeded", "failed")
    assert ended["state"] == "succeeded", ended
    worker = server.get(f"dlinfra/api/jobs/{ps['id']}/log?rank=2")["text"]
    assert "worker 1 rank 2 gpus GPU-" in worker and worker.rstrip().count("total 3") == 1
    for body, message in (
        ({"roles": [{"name": "w", "after": "ps"}]}, "not a role listed before it"),
        ({"roles": [{"name": "w"}], "nodes": 1}, "roles or nodes x gpus_per_node, not both"),
        ({"roles": [{"name": "w", "gpus": 1}], "gpus": 3}, "gpus (3) is not what the roles ask"),
        ({"roles": "server"}, "roles must be a non-empty list"),
    ):
        status, refused, _ = server.request(
            "POST", "dlinfra/api/jobs", {"path": "ps.ipynb", **body}
        )
        assert status == 400 and message in refused["message"], (body, refused)
        assert refused["reason"] == "bad_roles"

    # a one-process job has no ranks to read
    write_notebook(root / "one.ipynb", "print('one')")
    status, one, _ = server.request("POST", "dlinfra/api/jobs", {"path": "one.ipynb"})
    assert status == 201 and one["nodes"] is None and one["world_size"] is None
    status, refused, _ = server.request("GET", f"dlinfra/api/jobs/{one['id']}/log?rank=0")
    assert status == 400 and "has no ranks" in refused["message"]
    status, refused, _ = server.request("GET", f"dlinfra/api/jobs/{job_id}/log?rank=2")
    assert status == 400, refused


def test_no_rank_starts_until_every_gpu_of_the_job_is_granted(
    start_server: Callable[..., ServerProcess], tmp_path: Path
) -> None:
    server = start_server(gpus=4, args=FAST)
    root = server.workdir / "root"
    gate = tmp_path / "gate"
    write_notebook(root / "hold.ipynb", "%gpu 3", wait_for_file(gate))
    write_notebook(root / "ddp.ipynb", "%gpu 2 --nodes 1", ALLREDUCE_CELL)
    holder = server.post("dlinfra/api/jobs", {"path": "hold.ipynb"})
    wait_state(server, holder["id"], "running")
    # one GPU is free, the job needs two: it waits as one request, and no rank runs
    gang = server.post("dlinfra/api/jobs", {"path": "ddp.ipynb"})

    def queued_with_place() -> Any:
        current = server.get(f"dlinfra/api/jobs/{gang['id']}")
        return current if current["position"] == 1 else None

    waiting = wait_until(queued_with_place, timeout=60, what="the job's place in the queue")
    assert waiting["state"] == "queued"
    assert waiting["reason"].startswith("waiting for 2 GPUs at position 1"), waiting
    [request] = [
        a for a in server.get("dlinfra/api/queue")["queue"] if a["kernel_id"] == f"job-{gang['id']}"
    ]
    assert request["count"] == 2  # one request for every rank's GPU
    assert not (root / waiting["workdir"] / "ranks").exists()
    gate.write_text("go")
    assert wait_state(server, holder["id"], "succeeded", "failed")["state"] == "succeeded"
    done = wait_state(server, gang["id"], "succeeded", "failed")
    assert done["state"] == "succeeded", done
    log = server.get(f"dlinfra/api/jobs/{gang['id']}/log")["text"]
    assert "rank 0 started" in log and "rank 1 started" in log
