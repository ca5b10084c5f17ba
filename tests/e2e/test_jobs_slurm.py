"""Notebooks as batch jobs on SLURM, end to end: a real server submitting to a real SLURM."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import psutil
from slurm_cluster import SlurmCluster
from test_jobs_local import root_of, run_cli, wait_state

from jupyter_dlinfra.testing.distributed import ALLREDUCE_CELL, ROLES_CELL, expected_sum
from jupyter_dlinfra.testing.server import ServerProcess, wait_for_file, wait_until, write_notebook

SLURM = (
    "--DLInfra.job_interval=0.2",
    "--DLInfra.job_backends=local",
    "--DLInfra.job_backends=slurm",
)


def slurm_server(
    start_server: Callable[..., ServerProcess], cluster: SlurmCluster, **kw: Any
) -> ServerProcess:
    return start_server(gpus=1, args=SLURM, env=dict(cluster.env), **kw)


def test_a_notebook_runs_on_slurm_and_its_outputs_come_back(
    start_server: Callable[..., ServerProcess], slurm_cluster: SlurmCluster
) -> None:
    server = slurm_server(start_server, slurm_cluster)
    backends = server.get("dlinfra/api/backends")
    assert {b["name"]: b["available"] for b in backends["backends"]} == {
        "local": True,
        "slurm": True,
    }
    write_notebook(
        root_of(server) / "train.ipynb",
        "%gpu 2",
        ("lr = 0.1", ["parameters"]),
        "import os\nprint('slurm job', os.environ.get('SLURM_JOB_ID'), 'lr', lr)",
        "print('gpus', os.environ.get('CUDA_VISIBLE_DEVICES'))",
        "open('slurm-result.txt', 'w').write(str(lr))",
    )
    created = server.post(
        "dlinfra/api/jobs", {"path": "train.ipynb", "backend": "slurm", "parameters": {"lr": 3}}
    )
    assert created["backend"] == "slurm" and created["gpus"] == 2
    done = wait_state(server, created["id"], "succeeded", "failed", "cancelled")
    assert done["state"] == "succeeded", (done, slurm_cluster.log_tail())
    log = server.get(f"dlinfra/api/jobs/{created['id']}/log")["text"]
    assert "lr 3" in log and "slurm job " in log
    # SLURM placed the GPUs: two of its GRES, not the ledger's
    assert "gpus 0,1" in log
    assert (root_of(server) / "slurm-result.txt").read_text() == "3"
    executed = json.loads((root_of(server) / done["outputs"]["notebook"]).read_text())
    assert executed["cells"][-2]["outputs"]
    assert not server.get("dlinfra/api/allocations")["allocations"]


def test_on_slurm_a_failed_parent_cancels_its_chain(
    start_server: Callable[..., ServerProcess], slurm_cluster: SlurmCluster
) -> None:
    server = slurm_server(start_server, slurm_cluster)
    write_notebook(root_of(server) / "bad.ipynb", "raise SystemExit('no data')")
    write_notebook(root_of(server) / "next.ipynb", "print('after')")
    first = server.post("dlinfra/api/jobs", {"path": "bad.ipynb", "backend": "slurm"})
    second = server.post(
        "dlinfra/api/jobs", {"path": "next.ipynb", "backend": "slurm", "after": [first["id"]]}
    )
    failed = wait_state(server, first["id"], "failed", "succeeded")
    assert failed["state"] == "failed" and failed["failed_cell"] == 1
    cancelled = wait_state(server, second["id"], "cancelled", "succeeded", "failed")
    assert cancelled["state"] == "cancelled", cancelled
    assert cancelled["reason"] == f"job {first['id']} it runs after failed"
    # SLURM itself holds no trace of the child running
    assert "after" not in server.get(f"dlinfra/api/jobs/{second['id']}/log")["text"]


def test_on_slurm_a_job_waits_for_gpus_then_runs_and_cancel_works(
    start_server: Callable[..., ServerProcess], slurm_cluster: SlurmCluster, tmp_path: Path
) -> None:
    # jobs get a time limit, so that SLURM's backfill plans when the waiting one starts
    workdir = tmp_path / "limited"
    (workdir / "config").mkdir(parents=True)
    (workdir / "config" / "jupyter_server_config.json").write_text(
        json.dumps({"DLInfra": {"backend_options": {"slurm": {"time_limit": "10"}}}})
    )
    server = slurm_server(start_server, slurm_cluster, workdir=workdir)
    gate = tmp_path / "gate"
    write_notebook(
        root_of(server) / "hold.ipynb",
        wait_for_file(gate),
    )
    write_notebook(root_of(server) / "small.ipynb", "print('small ran')")
    big = server.post(
        "dlinfra/api/jobs", {"path": "hold.ipynb", "backend": "slurm", "gpus": slurm_cluster.ngpu}
    )
    wait_state(server, big["id"], "running")
    small = server.post("dlinfra/api/jobs", {"path": "small.ipynb", "backend": "slurm", "gpus": 2})

    def planned() -> Any:
        current = server.get(f"dlinfra/api/jobs/{small['id']}")
        # SLURM's reason is "None" until its scheduler has looked at the job
        planned = current["estimated_start"] and "Resources" in (current["reason"] or "")
        return current if planned and current["position"] else None

    waiting = wait_until(planned, timeout=60, what="SLURM to hold and plan the small job")
    # SLURM's own answer: its place among the partition's pending jobs, its reason, its plan
    assert waiting["state"] == "queued" and (waiting["position"], waiting["queue_length"]) == (1, 1)
    assert waiting["reason"] == "queued in slurm at position 1 of 1: Resources"
    planned_at = datetime.fromisoformat(waiting["estimated_start"].replace("Z", "+00:00"))
    started_at = datetime.fromisoformat(
        server.get(f"dlinfra/api/jobs/{big['id']}")["started_at"].replace("Z", "+00:00")
    )
    # the big job's 10 minutes, from when SLURM started it (the ledger saw it a poll later)
    assert 0 < (planned_at - started_at).total_seconds() <= 600
    listed = run_cli(server, "jobs")
    assert listed.returncode == 0, listed.stderr
    line = next(x for x in listed.stdout.splitlines() if x.split()[0] == str(small["id"]))
    assert "queued in slurm at position 1 of 1: Resources (estimated start at " in line
    gate.write_text("go")
    assert wait_state(server, big["id"], "succeeded", "failed")["state"] == "succeeded"
    ran = wait_state(server, small["id"], "succeeded", "failed")
    assert ran["state"] == "succeeded"
    # no longer waiting: no place, no estimate
    assert (ran["position"], ran["queue_length"], ran["estimated_start"]) == (None, None, None)

    gate.unlink()
    again = server.post("dlinfra/api/jobs", {"path": "hold.ipynb", "backend": "slurm"})
    wait_state(server, again["id"], "running")
    server.delete(f"dlinfra/api/jobs/{again['id']}")
    ended = wait_state(server, again["id"], "cancelled", "failed", "succeeded", timeout=60)
    assert ended["state"] == "cancelled" and ended["reason"].startswith("cancelled by"), ended


def test_a_slurm_job_outlives_a_server_restart(
    start_server: Callable[..., ServerProcess], slurm_cluster: SlurmCluster, tmp_path: Path
) -> None:
    workdir = tmp_path / "restarting"
    workdir.mkdir()
    gate = tmp_path / "gate"
    server = slurm_server(start_server, slurm_cluster, workdir=workdir)
    write_notebook(
        root_of(server) / "wait.ipynb",
        f"import os, time\nwhile not os.path.exists({str(gate)!r}):\n    time.sleep(0.2)\n"
        "print('released')",
    )
    created = server.post("dlinfra/api/jobs", {"path": "wait.ipynb", "backend": "slurm"})
    wait_state(server, created["id"], "running")
    server.stop()
    gate.write_text("go")
    wait_until(
        lambda: not slurm_cluster.job_ids(), timeout=60, what="the SLURM job to end on its own"
    )
    again = slurm_server(start_server, slurm_cluster, workdir=workdir)
    done = wait_state(again, created["id"], "succeeded", "failed")
    assert done["state"] == "succeeded", done
    assert "released" in again.get(f"dlinfra/api/jobs/{created['id']}/log")["text"]


def test_a_distributed_job_on_slurm_runs_its_ranks_with_srun_and_a_cancel_stops_them(
    start_server: Callable[..., ServerProcess], slurm_cluster: SlurmCluster, tmp_path: Path
) -> None:
    server = slurm_server(start_server, slurm_cluster)
    write_notebook(root_of(server) / "ddp.ipynb", "%gpu 2 --nodes 1", ALLREDUCE_CELL)
    created = server.post("dlinfra/api/jobs", {"path": "ddp.ipynb", "backend": "slurm"})
    assert (created["nodes"], created["gpus_per_node"], created["world_size"]) == (1, 2, 2)
    done = wait_state(server, created["id"], "succeeded", "failed", "cancelled")
    assert done["state"] == "succeeded", (done, slurm_cluster.log_tail())
    script = (root_of(server) / created["workdir"] / "job.sbatch").read_text()
    assert "#SBATCH --nodes=1\n#SBATCH --ntasks-per-node=1\n#SBATCH --gres=gpu:2\n" in script
    for rank in range(2):
        own = server.get(f"dlinfra/api/jobs/{created['id']}/log?rank={rank}")["text"]
        # SLURM's two GRES for the node, seen by both ranks; each takes device LOCAL_RANK
        assert f"rank {rank}/2 local {rank} node 0 gpus 0,1 sum {expected_sum(2)}" in own, own
    log = server.get(f"dlinfra/api/jobs/{created['id']}/log")["text"]
    assert "distributed job: 1 node x 2 GPUs (2 ranks)" in log and "[rank0]: rank 0/2" in log

    # scancel reaches the node's launcher through srun: every rank stops
    write_notebook(
        root_of(server) / "long.ipynb",
        "%gpu 2 --nodes 1",
        "import time\nprint('working', flush=True)\ntime.sleep(600)",
    )
    long = server.post("dlinfra/api/jobs", {"path": "long.ipynb", "backend": "slurm"})
    workdir = root_of(server) / long["workdir"]

    def working() -> bool:
        logs = [workdir / "ranks" / str(r) / "job.log" for r in range(2)]
        return all(p.exists() and "working" in p.read_text() for p in logs)

    wait_until(working, timeout=90, what="both ranks of the SLURM job to run")
    server.delete(f"dlinfra/api/jobs/{long['id']}")
    ended = wait_state(server, long["id"], "cancelled", "failed", "succeeded", timeout=90)
    assert ended["state"] == "cancelled", ended

    def runners_gone() -> bool:
        return not any(
            str(workdir) in " ".join(p.info["cmdline"] or [])
            for p in psutil.process_iter(["cmdline"])
        )

    wait_until(runners_gone, timeout=60, what="the ranks' runners to end")

    # roles: the worker starts once the server's port is open, in the SLURM allocation, each
    # worker with its own one of SLURM's GRES
    write_notebook(root_of(server) / "ps.ipynb", ROLES_CELL)
    roles = [
        {"name": "server", "replicas": 1},
        {"name": "worker", "replicas": 2, "gpus": 1, "after": "server"},
    ]
    ps = server.post("dlinfra/api/jobs", {"path": "ps.ipynb", "backend": "slurm", "roles": roles})
    assert (ps["gpus"], ps["world_size"]) == (2, 3)
    ended = wait_state(server, ps["id"], "succeeded", "failed", "cancelled")
    assert ended["state"] == "succeeded", (ended, slurm_cluster.log_tail())
    worker = server.get(f"dlinfra/api/jobs/{ps['id']}/log?rank=2")["text"]
    assert "worker 1 rank 2 gpus 1 " in worker and worker.rstrip().count("total 3") == 1, worker


HOST_CELL = "import os, socket\nprint('rank', os.environ['RANK'], 'host', socket.gethostname())"


def test_a_job_of_two_nodes_runs_on_two_slurm_nodes_whose_ranks_meet_and_cancel_stops_all(
    start_server: Callable[..., ServerProcess], slurm_two_nodes: SlurmCluster
) -> None:
    """Two real slurmd (each in its own network namespace and host name): the batch job has
    both nodes, srun starts a launcher on each, the 4 ranks meet over TCP at node 0's address;
    a cancel stops every rank on both nodes."""
    assert slurm_two_nodes.nodes == ("dln1", "dln2")
    server = slurm_server(start_server, slurm_two_nodes)
    root = root_of(server)
    write_notebook(root / "ddp.ipynb", "%gpu 4 --nodes 2", HOST_CELL, ALLREDUCE_CELL)
    created = server.post("dlinfra/api/jobs", {"path": "ddp.ipynb", "backend": "slurm"})
    assert (created["nodes"], created["gpus_per_node"], created["world_size"]) == (2, 2, 4)
    done = wait_state(server, created["id"], "succeeded", "failed", "cancelled")
    log = server.get(f"dlinfra/api/jobs/{created['id']}/log")["text"]
    assert done["state"] == "succeeded", (done, log, slurm_two_nodes.log_tail())
    hosts = {}
    for rank in range(4):
        own = server.get(f"dlinfra/api/jobs/{created['id']}/log?rank={rank}")["text"]
        hosts[rank] = next(x for x in own.splitlines() if x.startswith(f"rank {rank} host "))
        line = next(x for x in own.splitlines() if x.startswith(f"rank {rank}/4 "))
        # each node's GPUs are SLURM's GRES of that node
        assert line.startswith(f"rank {rank}/4 local {rank % 2} node {rank // 2} gpus 0,1 ")
        assert line.endswith(f" sum {expected_sum(4)}"), line
    # ranks 0-1 on the first node, 2-3 on the second
    assert [h.split()[-1] for _, h in sorted(hosts.items())] == ["dln1", "dln1", "dln2", "dln2"]
    assert "the job succeeded on 2 nodes" in log, log

    # a rank of the second node fails: srun stops the first node's, the job fails with it
    write_notebook(
        root / "bad.ipynb",
        "%gpu 4 --nodes 2",
        "import os\nif os.environ['RANK'] == '3': raise RuntimeError('rank three broke')",
        ALLREDUCE_CELL,
    )
    bad = server.post("dlinfra/api/jobs", {"path": "bad.ipynb", "backend": "slurm"})
    failed = wait_state(server, bad["id"], "succeeded", "failed", "cancelled")
    assert failed["state"] == "failed", failed
    assert "rank 3 of 4" in failed["reason"] and "rank three broke" in failed["reason"], failed

    # more GPUs than a node has (2, as sinfo says) are whole nodes, or refused
    write_notebook(
        root / "long.ipynb", "import time\nprint('working', flush=True)\ntime.sleep(600)"
    )
    status, refused, _ = server.request(
        "POST", "dlinfra/api/jobs", {"path": "long.ipynb", "backend": "slurm", "gpus": 3}
    )
    assert status == 400 and "3 GPUs are more than one node has (2)" in refused["message"]
    waiting = server.post("dlinfra/api/jobs", {"path": "long.ipynb", "backend": "slurm", "gpus": 4})
    assert (waiting["nodes"], waiting["gpus_per_node"]) == (2, 2), waiting

    # scancel reaches both nodes' launchers through srun: every rank stops
    jobdir = root / waiting["workdir"]

    def working() -> bool:
        logs = [jobdir / "ranks" / str(r) / "job.log" for r in range(4)]
        return all(p.exists() and "working" in p.read_text() for p in logs)

    wait_until(working, timeout=120, interval=0.3, what="every rank to run on both nodes")
    server.delete(f"dlinfra/api/jobs/{waiting['id']}")
    final = wait_state(server, waiting["id"], "succeeded", "failed", "cancelled")
    assert final["state"] == "cancelled", final
    wait_until(
        lambda: (
            not [
                p
                for p in psutil.process_iter(["cmdline"])
                if str(jobdir) in " ".join(p.info["cmdline"] or [])
            ]
        ),
        timeout=60,
        interval=0.3,
        what="every rank's process to end",
    )
