"""A distributed job across nodes: where its ranks meet, and how the job ended over all nodes.

Each node of the job runs its own launcher (``jobs/ranks.py``, started by ``srun`` on SLURM);
they share the job's directory (a cluster's jobs need shared storage, see docs/jobs.md):

- ``rendezvous.json``: node 0's launcher picks the address its rank 0 listens at (its host name
  and a free port) and writes it; the other nodes' launchers wait for it (up to
  ``RENDEZVOUS_WAIT_S``) and give it to their ranks as ``MASTER_ADDR``/``MASTER_PORT``. The
  batch script removes it before ``srun``: a file left by an earlier attempt never speaks for
  this one (:func:`clear`).
- ``nodes/K/status.json``: how node K's ranks ended (the launcher's status, see ``ranks.py``);
  :func:`gather` makes the job's ``status.json`` from them once every node's launcher ended:
  the first rank that failed on its own decides, a node stopped because another failed does
  not (``srun --kill-on-bad-exit`` stops the others).

Standard library only: it runs where the job runs.
"""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = [
    "RENDEZVOUS_FILE",
    "RENDEZVOUS_WAIT_S",
    "RendezvousTimeout",
    "clear",
    "free_port",
    "gather",
    "node_status_path",
    "publish",
    "read_json",
    "wait_for",
    "write_atomic",
]

RENDEZVOUS_FILE = "rendezvous.json"
#: how long a node waits for node 0's address (its launcher may start later: srun starts the
#: nodes' tasks one by one, and a shared file system shows a new file after a moment)
RENDEZVOUS_WAIT_S = 120.0
_POLL_S = 0.05


class RendezvousTimeout(Exception):
    pass


def node_status_path(jobdir: Path, node_rank: int) -> Path:
    return jobdir / "nodes" / str(node_rank) / "status.json"


def write_atomic(path: Path, text: str) -> None:
    """Readers on any node see the old file or the whole new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def read_json(path: Path) -> dict[str, Any] | None:
    """A JSON object from ``path``; None while it is missing or not one."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def clear(jobdir: Path) -> None:
    """Before the nodes start: nothing of an earlier attempt is read as this one's."""
    (jobdir / RENDEZVOUS_FILE).unlink(missing_ok=True)
    (jobdir / "status.json").unlink(missing_ok=True)
    nodes = jobdir / "nodes"
    if nodes.is_dir():
        for status in nodes.glob("*/status.json"):
            status.unlink(missing_ok=True)


def free_port(host: str) -> int:
    """A port free on ``host`` now (``""``: on every address); rank 0 binds it a moment later,
    as torchrun's c10d store does."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def publish(jobdir: Path, addr: str | None = None) -> tuple[str, int]:
    """Node 0: the address its rank 0 will listen at, written for the other nodes."""
    host = addr or socket.gethostname()
    port = free_port("")
    write_atomic(jobdir / RENDEZVOUS_FILE, json.dumps({"addr": host, "port": port}) + "\n")
    return host, port


def wait_for(
    jobdir: Path, *, timeout: float = RENDEZVOUS_WAIT_S, stop: Callable[[], bool] = lambda: False
) -> tuple[str, int]:
    """Another node: node 0's address, once it has written it (:class:`RendezvousTimeout` after
    ``timeout``, or as soon as ``stop()`` says so)."""
    deadline = time.monotonic() + timeout
    while True:
        if stop():
            raise RendezvousTimeout("stopped while waiting for node 0's address")
        found = read_json(jobdir / RENDEZVOUS_FILE)
        if found and isinstance(found.get("addr"), str) and isinstance(found.get("port"), int):
            return found["addr"], found["port"]
        if time.monotonic() > deadline:
            raise RendezvousTimeout(
                f"node 0 did not say where its ranks meet within {timeout:.0f} s "
                f"({RENDEZVOUS_FILE} in the job directory, which every node must share)"
            )
        time.sleep(_POLL_S)


def gather(jobdir: Path, nodes: int) -> dict[str, Any]:
    """The job's status from its nodes' (written as the job's ``status.json``, and returned)."""
    found = {k: read_json(node_status_path(jobdir, k)) for k in range(nodes)}
    missing = sorted(k for k, status in found.items() if status is None)
    present = [s for s in found.values() if s is not None]
    ranks = sorted((r for s in present for r in s.get("ranks") or []), key=lambda r: r["rank"])
    failed = [s for s in present if s.get("state") == "failed" and s.get("failed_rank") is not None]
    # the first rank that failed on its own: the others were stopped because of it
    failed.sort(key=lambda s: float(s.get("ended_at") or 0.0))
    setup = [s for s in present if s.get("state") == "failed" and s.get("failed_rank") is None]
    if failed:
        first = failed[0]
        state, error, cell = "failed", first.get("error"), first.get("failed_cell")
        failed_rank = first.get("failed_rank")
    elif setup:
        state, error, cell, failed_rank = "failed", setup[0].get("error"), None, None
    elif missing:
        state, cell, failed_rank = "failed", None, None
        error = (
            f"node{'s' if len(missing) > 1 else ''} {', '.join(map(str, missing))} left no status"
        )
    elif any(s.get("state") == "cancelled" for s in present):
        cancelled = next(s for s in present if s.get("state") == "cancelled")
        state, error, cell, failed_rank = "cancelled", cancelled.get("error"), None, None
    else:
        state, error, cell, failed_rank = "succeeded", None, None, None
    started = [float(s["started_at"]) for s in present if s.get("started_at") is not None]
    status = {
        "state": state,
        "failed_cell": cell,
        "error": error,
        "traceback": [],
        "started_at": min(started) if started else None,
        "ended_at": time.time(),
        "runner_pid": os.getpid(),
        "exit_code": 0 if state == "succeeded" else 1,
        "world_size": next((s.get("world_size") for s in present if s.get("world_size")), None),
        "failed_rank": failed_rank,
        "nodes": nodes,
        "ranks": ranks,
    }
    write_atomic(jobdir / "status.json", json.dumps(status, indent=2) + "\n")
    return status
