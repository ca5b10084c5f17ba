"""The ranks of a distributed job on one node: ``python -m jupyter_dlinfra.jobs.ranks JOBDIR``.

What ``torchrun`` is to a script, this is to a notebook job: it starts one in-job runner
(``jupyter_dlinfra.jobs.runner``) per rank of its node, each with the environment of
:func:`jupyter_dlinfra.jobs.shape.rank_env`, watches them, and says how the job ended. The job's
shape comes from ``spec.json`` (``nodes``, ``gpus_per_node``, written at submission); the node's
granted GPUs from ``CUDA_VISIBLE_DEVICES`` (the server's job loop sets it from the ledger's grant,
as for any job).

Files, beside the job's own (see ``runner.py``)::

    ranks/R/        rank R's job.log, kernel.log, executed.ipynb, report.html, status.json
    job.log         this launcher's lines, and rank 0's log as it comes, each line "[rank0]: "
    executed.ipynb  rank 0's, copied when the job ends (it writes the notebook and the report)
    report.html
    status.json     the job's status (the runner's keys, plus ``world_size``, ``failed_rank``
                    and ``ranks``: each rank's state, exit code and error), written last

The ranks stay in this process's process group: a backend that stops the job's group
(``local``'s cancel, its SIGKILL after a grace period) stops every rank with it. When one rank
fails, the others are sent SIGTERM (their runners write what they had and stop their kernels),
then SIGKILL after ``KILL_AFTER_S``; the job fails with the first failing rank and its error.
SIGTERM or SIGINT here cancels the job: every rank is told, and the job ends ``cancelled``.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import importlib.util
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

from jupyter_dlinfra.jobs import nodes
from jupyter_dlinfra.jobs.shape import (
    TORCHRUN,
    Role,
    Shape,
    ShapeError,
    job_shape,
    parse_roles,
    rank_env,
    role_envs,
    roles_gpus,
    roles_world,
)

__all__ = ["KILL_AFTER_S", "main", "rank_dir", "run_ranks", "torchrun_argv"]

#: seconds the other ranks get to stop after one failed (or after a cancel) before SIGKILL
KILL_AFTER_S = 10.0
#: how often the ranks are looked at (s): a failure stops the others within this
_POLL_S = 0.05
#: lines of a failed rank's log copied into job.log
_TAIL_LINES = 20
_EXIT_FAILED = 1
_RUNNER = (sys.executable, "-m", "jupyter_dlinfra.jobs.runner")
_EXIT_USAGE = 2


def rank_dir(jobdir: Path, rank: int) -> Path:
    """Where rank ``rank`` writes its log, outputs and status."""
    return jobdir / "ranks" / str(rank)


def _read_json(path: Path) -> dict[str, Any]:
    return nodes.read_json(path) or {}


class _Log:
    """The job's ``job.log``: this launcher's lines and rank 0's log, flushed at each write."""

    def __init__(self, path: Path) -> None:
        self._file = path.open("a", encoding="utf-8", errors="replace")

    def line(self, text: str) -> None:
        self._file.write(text.rstrip("\n") + "\n")
        self._file.flush()

    def close(self) -> None:
        self._file.close()


class _Follow:
    """Copies the whole lines a rank's log gains into the job's log, prefixed as torchrun does."""

    def __init__(self, path: Path, prefix: str) -> None:
        self.path = path
        self.prefix = prefix
        self._at = 0
        self._partial = b""

    def step(self, log: _Log, *, final: bool = False) -> None:
        try:
            with self.path.open("rb") as f:
                f.seek(self._at)
                data = f.read()
        except OSError:
            return
        self._at += len(data)
        lines = (self._partial + data).split(b"\n")
        # what follows the last newline is a line still being written, until the rank ended
        self._partial = lines.pop()
        if final and self._partial:
            lines.append(self._partial)
            self._partial = b""
        for raw in lines:
            log.line(self.prefix + raw.decode("utf-8", errors="replace"))


@dataclass
class _Rank:
    rank: int
    proc: subprocess.Popen[bytes]
    out: Path
    #: its role and replica ("worker 2"), in a job with roles
    role: str | None = None
    code: int | None = None
    #: sent SIGTERM by this launcher (another rank failed, or a cancel)
    told_to_stop: bool = False


@dataclass
class _Stage:
    """Processes started together: a role's replicas (once the roles it is after are ready),
    or all of a node's ranks (``role`` None)."""

    role: Role | None
    #: (rank, its environment)
    ranks: list[tuple[int, dict[str, str]]]
    started: bool = False


@dataclass
class _Run:
    ranks: list[_Rank] = field(default_factory=list)
    stages: list[_Stage] = field(default_factory=list)
    #: starts one process: (rank, environment, role label)
    start: Callable[[int, dict[str, str], str | None], None] | None = None
    #: roles whose every process is ready
    ready: set[str] = field(default_factory=set)
    #: roles that could never start (what they wait for ended unready)
    never_started: str | None = None
    signum: int | None = None
    #: the first rank that failed on its own (not stopped by this launcher)
    failed: _Rank | None = None
    stop_sent_at: float | None = None

    def handler(self, signum: int, frame: FrameType | None) -> None:
        if self.signum is None:
            self.signum = signum

    def stop_all(self) -> None:
        if self.stop_sent_at is None:
            self.stop_sent_at = time.monotonic()
        for r in self.ranks:
            if r.code is None and not r.told_to_stop:
                r.told_to_stop = True
                with contextlib.suppress(ProcessLookupError):
                    r.proc.send_signal(signal.SIGTERM)

    def kill_late(self, grace: float) -> None:
        if self.stop_sent_at is None or time.monotonic() - self.stop_sent_at < grace:
            return
        for r in self.ranks:
            if r.code is None:
                with contextlib.suppress(ProcessLookupError):
                    r.proc.kill()


def _spec_shape(spec: dict[str, Any]) -> Shape:
    nodes, per_node = spec.get("nodes"), spec.get("gpus_per_node")
    if not isinstance(nodes, int) or not isinstance(per_node, int):
        raise ShapeError("spec.json does not say the job's nodes and gpus_per_node")
    shape = job_shape(gpus=None, nodes=nodes, gpus_per_node=per_node, node_gpus=None)
    assert shape is not None
    return shape


def _rank_error(r: _Rank) -> tuple[str, int | None]:
    """What rank ``r`` says went wrong (its status), else how its process ended."""
    status = _read_json(r.out / "status.json")
    cell = status.get("failed_cell")
    error = status.get("error")
    if error:
        return str(error), cell if isinstance(cell, int) else None
    if r.code is not None and r.code < 0:
        return f"its process was killed by signal {-r.code}", None
    return f"its process exited with code {r.code}", None


def _said(r: _Rank) -> object:
    """The state rank ``r``'s own status gives (None without one)."""
    return _read_json(r.out / "status.json").get("state")


def _tail(path: Path, lines: int) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def run_ranks(
    jobdir: Path,
    *,
    node_rank: int = 0,
    master_addr: str | None = None,
    master_port: int | None = None,
    grace: float = KILL_AFTER_S,
) -> int:
    """Run this node's ranks of the job in ``jobdir`` to their end; the exit code (0 when every
    rank succeeded, 1 when one failed, 128 + the signal when cancelled). Writes this node's
    status last: the job's ``status.json`` for a job of one node, else ``nodes/K/status.json``
    (see ``jobs/nodes.py``: node 0 says where the ranks meet, :func:`nodes.gather` ends).
    ``master_addr``: where rank 0 listens (default: 127.0.0.1 for one node, node 0's host name
    for more)."""
    started = time.time()
    spec = _read_json(jobdir / "spec.json")
    spec_nodes = spec.get("nodes")
    status_path = (
        nodes.node_status_path(jobdir, node_rank)
        if isinstance(spec_nodes, int) and spec_nodes > 1
        else jobdir / "status.json"
    )
    status_path.unlink(missing_ok=True)
    log = _Log(jobdir / "job.log")
    run = _Run()
    # from the start: a node waiting for node 0's address is cancelled as one that runs ranks
    previous = {sig: signal.signal(sig, run.handler) for sig in (signal.SIGTERM, signal.SIGINT)}
    end = functools.partial(_finish, jobdir, status_path, node_rank, log, run, started)
    try:
        run_id = f"job-{spec.get('job_id', jobdir.name)}"
        visible = [g for g in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if g]
        try:
            if "roles" in spec:
                roles = parse_roles(spec["roles"])
                world_size = roles_world(roles)
                stages = _role_stages(jobdir, roles, visible, run_id, log)
            else:
                shape = _spec_shape(spec)
                world_size = shape.world_size
                if not 0 <= node_rank < shape.nodes:
                    raise ShapeError(f"node rank {node_rank} is outside {shape.describe()}")
                if visible and len(visible) != shape.gpus_per_node:
                    raise ShapeError(
                        f"node {node_rank} was granted {len(visible)} GPUs for "
                        f"{shape.gpus_per_node} ranks (CUDA_VISIBLE_DEVICES={','.join(visible)})"
                    )
                if shape.nodes > 1 and node_rank > 0 and master_port is None:
                    log.line(f"--- node {node_rank} waits for node 0's address ---")
                addr, port = _meeting_point(jobdir, shape, node_rank, master_addr, master_port, run)
                log.line(
                    f"--- distributed job: {shape.describe()}; node {node_rank} starts ranks "
                    f"{node_rank * shape.gpus_per_node}.."
                    f"{(node_rank + 1) * shape.gpus_per_node - 1}, rendezvous at {addr}:{port} ---"
                )
                if spec.get("launcher") == TORCHRUN:
                    return _torchrun_node(
                        jobdir, shape, node_rank, (addr, port), run_id, log, run, end, grace
                    )
                envs = [
                    rank_env(
                        shape,
                        node_rank=node_rank,
                        local_rank=local,
                        master_addr=addr,
                        master_port=port,
                        node_gpus=visible,
                        run_id=run_id,
                    )
                    for local in range(shape.gpus_per_node)
                ]
                stages = [_Stage(None, [(int(e["RANK"]), dict(e)) for e in envs])]
        except (ShapeError, nodes.RendezvousTimeout) as err:
            if run.signum is not None:
                return _cancelled(end, run.signum, None)
            return end(state="failed", error=str(err), world_size=None)
        run.stages = stages
        run.start = functools.partial(_start_rank, jobdir, run, log)
        follow = _Follow(rank_dir(jobdir, 0) / "job.log", "[rank0]: ") if node_rank == 0 else None
        _watch(run, log, follow, grace)
        if follow is not None:
            follow.step(log, final=True)
        if run.signum is not None:
            return _cancelled(end, run.signum, world_size)
        if run.failed is not None:
            error, cell = _rank_error(run.failed)
            tail = _tail(run.failed.out / "job.log", _TAIL_LINES)
            if tail:
                log.line(f"--- the last lines of rank {run.failed.rank} ---\n{tail}")
            return end(
                state="failed",
                error=error,
                world_size=world_size,
                failed_cell=cell,
            )
        if run.never_started:
            error = (
                f"role {run.never_started} never started: the roles it starts after ended "
                "before they were ready"
            )
            return end(state="failed", error=error, world_size=world_size)
        return end(state="succeeded", error=None, world_size=world_size)
    finally:
        log.close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def torchrun_argv(
    jobdir: Path, shape: Shape, node_rank: int, endpoint: tuple[str, int], run_id: str
) -> list[str]:
    """One node's ``torchrun``: its workers are in-job runners, each writing to
    ``ranks/$RANK``; node 0's agent holds the static rendezvous at ``endpoint``."""
    addr, port = endpoint
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        f"--nnodes={shape.nodes}",
        f"--node-rank={node_rank}",
        f"--nproc-per-node={shape.gpus_per_node}",
        "--rdzv-backend=static",
        f"--rdzv-endpoint={addr}:{port}",
        f"--rdzv-id={run_id}",
        "--max-restarts=0",
        "-m",
        "jupyter_dlinfra.jobs.runner",
        str(jobdir),
        "--rank-out",
    ]


def _torchrun_node(
    jobdir: Path,
    shape: Shape,
    node_rank: int,
    endpoint: tuple[str, int],
    run_id: str,
    log: _Log,
    run: _Run,
    end: Callable[..., int],
    grace: float,
) -> int:
    """``launcher: torchrun``: this node's ranks are torchrun's workers (its environment, its
    restarts policy, its stopping of the others when one fails); this launcher starts it,
    passes on a cancel, and says how the node's ranks ended from their own status files."""
    world_size = shape.world_size
    if importlib.util.find_spec("torch") is None:
        return end(
            state="failed",
            error=(
                f"launcher torchrun: PyTorch is not installed for {sys.executable}, which runs "
                "the job: install torch there, or leave launcher out (the default starts the "
                "ranks itself, with torchrun's environment)"
            ),
            world_size=None,
        )
    argv = torchrun_argv(jobdir, shape, node_rank, endpoint, run_id)
    log.line(f"--- torchrun: {' '.join(argv[2:])} ---")
    with (jobdir / "job.log").open("ab") as out:
        proc = subprocess.Popen(
            argv, cwd=jobdir, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT
        )
    # while it runs, torchrun is the one process this launcher stops (SIGTERM, then SIGKILL)
    agent = _Rank(rank=-1, proc=proc, out=jobdir)
    run.ranks = [agent]
    follow = _Follow(rank_dir(jobdir, 0) / "job.log", "[rank0]: ") if node_rank == 0 else None
    while agent.code is None:
        if run.signum is not None and run.stop_sent_at is None:
            log.line(f"--- {signal.Signals(run.signum).name}: stopping torchrun ---")
            run.stop_all()
        run.kill_late(grace)
        if follow is not None:
            follow.step(log)
        agent.code = proc.poll()
        if agent.code is None:
            time.sleep(_POLL_S)
    if follow is not None:
        follow.step(log, final=True)
    first = node_rank * shape.gpus_per_node
    said = {
        rank: _read_json(rank_dir(jobdir, rank) / "status.json")
        for rank in range(first, first + shape.gpus_per_node)
    }
    run.ranks = [
        _Rank(
            rank=rank,
            proc=proc,
            out=rank_dir(jobdir, rank),
            code=0 if own.get("state") == "succeeded" else 1,
        )
        for rank, own in said.items()
    ]
    if run.signum is not None:
        return _cancelled(end, run.signum, world_size)
    failed = sorted(
        (r for r in run.ranks if said[r.rank].get("state") == "failed"),
        key=lambda r: float(said[r.rank].get("ended_at") or 0.0),
    )
    if failed:
        run.failed = failed[0]
        error, cell = _rank_error(failed[0])
        return end(state="failed", error=error, world_size=world_size, failed_cell=cell)
    if agent.code != 0:
        return end(
            state="failed", error=f"torchrun exited with code {agent.code}", world_size=world_size
        )
    return end(state="succeeded", error=None, world_size=world_size)


def _cancelled(end: Callable[..., int], signum: int, world_size: int | None) -> int:
    """This node's status when a signal cancelled the job (exit 128 + the signal)."""
    name = signal.Signals(signum).name
    return end(
        state="cancelled", error=f"cancelled by {name}", world_size=world_size, code=128 + signum
    )


def _watch(run: _Run, log: _Log, follow: _Follow | None, grace: float) -> None:
    """Start the stages whose roles may start; until every rank has ended, the first failure
    or a signal stops the others."""
    while True:
        if run.signum is None and run.failed is None:
            _start_ready(run, log)
        waiting = [st for st in run.stages if not st.started]
        running = any(r.code is None for r in run.ranks)
        if not running and (not waiting or run.signum is not None or run.failed is not None):
            return
        if not running and waiting:
            # what they wait for ended before it was ready: they would wait for ever
            names = ", ".join(str(st.role.name) for st in waiting if st.role is not None)
            run.never_started = names
            log.line(f"--- role {names} cannot start: the roles it waits for ended unready ---")
            return
        if run.signum is not None and run.stop_sent_at is None:
            log.line(f"--- {signal.Signals(run.signum).name}: stopping every rank ---")
            run.stop_all()
        for r in run.ranks:
            if r.code is not None:
                continue
            r.code = r.proc.poll()
            if r.code is None:
                continue
            ok = r.code == 0
            if not ok and not r.told_to_stop and _said(r) == "cancelled" and run.signum is None:
                # signalled by someone else (the job's process group was): the job's cancel
                run.signum = signal.SIGTERM
                log.line("--- a rank was cancelled: stopping every rank ---")
                run.stop_all()
            elif not ok and not r.told_to_stop and run.failed is None and run.signum is None:
                run.failed = r
                error, _cell = _rank_error(r)
                log.line(f"--- rank {r.rank} failed: {error}; stopping the other ranks ---")
                run.stop_all()
            elif not r.told_to_stop:
                log.line(f"--- rank {r.rank} {'ended' if ok else 'failed'} (exit {r.code}) ---")
        run.kill_late(grace)
        if follow is not None:
            follow.step(log)
        time.sleep(_POLL_S)


def _start_ready(run: _Run, log: _Log) -> None:
    """Start every stage whose roles it is after are ready (a stage without a role at once)."""
    for stage in run.stages:
        if stage.started:
            continue
        role = stage.role
        if role is not None:
            for name in role.after:
                if name not in run.ready and not _role_ready(run, name):
                    return  # the roles start in their order: the later ones wait too
                run.ready.add(name)
        stage.started = True
        if role is not None and role.after:
            log.line(f"--- role {role.name} starts: {', '.join(role.after)} ready ---")
        for replica, (rank, env) in enumerate(stage.ranks):
            label = None if role is None else f"{role.name} {replica}"
            assert run.start is not None
            run.start(rank, env, label)


def _role_ready(run: _Run, name: str) -> bool:
    """Every process of role ``name`` is ready, as the role says (a port open or a file)."""
    stage = next((st for st in run.stages if st.role is not None and st.role.name == name), None)
    if stage is None or not stage.started or stage.role is None:
        return False
    for _rank, env in stage.ranks:
        if stage.role.ready == "file":
            if not Path(env["DLINFRA_READY_FILE"]).exists():
                return False
        else:
            try:
                with socket.create_connection(
                    (env["MASTER_ADDR"], int(env["DLINFRA_ROLE_PORT"])), timeout=0.2
                ):
                    pass
            except OSError:
                return False
    return True


def _start_rank(
    jobdir: Path, run: _Run, log: _Log, rank: int, extra: dict[str, str], role: str | None
) -> None:
    env = dict(os.environ)
    env.update(extra)
    out = rank_dir(jobdir, rank)
    out.mkdir(parents=True, exist_ok=True)
    with (out / "job.log").open("ab") as rank_log:
        proc = subprocess.Popen(
            [*_RUNNER, str(jobdir), "--out", str(out.relative_to(jobdir))],
            cwd=jobdir,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=rank_log,
            stderr=subprocess.STDOUT,
        )
    run.ranks.append(_Rank(rank=rank, proc=proc, out=out, role=role))
    gpu = env.get("DLINFRA_RANK_GPU") or (env.get("CUDA_VISIBLE_DEVICES") if role else None)
    on = f" on GPU {gpu}" if gpu else ""
    what = f" ({role})" if role else ""
    where = out.relative_to(jobdir)
    log.line(f"--- rank {rank}{what} started{on}: pid {proc.pid}, log {where}/job.log ---")


def _role_stages(
    jobdir: Path, roles: Sequence[Role], visible: list[str], run_id: str, log: _Log
) -> list[_Stage]:
    """A job with roles (on one node): a stage per role, with each process's environment."""
    need = roles_gpus(roles)
    if visible and len(visible) != need:
        raise ShapeError(
            f"the job was granted {len(visible)} GPUs for its roles' {need} "
            f"(CUDA_VISIBLE_DEVICES={','.join(visible)})"
        )
    ready_dir = jobdir / "ready"
    if ready_dir.is_dir():
        shutil.rmtree(ready_dir)
    ready_dir.mkdir()
    host = "127.0.0.1"
    ports = [nodes.free_port(host) for _ in range(roles_world(roles))]
    envs = role_envs(
        roles, host=host, ports=ports, gpus=visible, ready_dir=str(ready_dir), run_id=run_id
    )
    described = ", ".join(
        f"{r.name} x{r.replicas}" + (f" after {'+'.join(r.after)}" if r.after else "")
        for r in roles
    )
    log.line(f"--- job with roles: {described}; rank 0 at {host}:{ports[0]} ---")
    stages = []
    rank = 0
    for role in roles:
        stages.append(_Stage(role, [(rank + i, envs[rank + i]) for i in range(role.replicas)]))
        rank += role.replicas
    return stages


def _meeting_point(
    jobdir: Path, shape: Shape, node_rank: int, addr: str | None, port: int | None, run: _Run
) -> tuple[str, int]:
    """Where rank 0 listens: given, or chosen here (one node), or by node 0 (several; a signal
    ends the wait)."""
    if shape.nodes == 1:
        host = addr or "127.0.0.1"
        return host, port or nodes.free_port(host)
    if addr is not None and port is not None:
        return addr, port
    if node_rank == 0:
        return nodes.publish(jobdir, addr)
    return nodes.wait_for(jobdir, stop=lambda: run.signum is not None)


def _finish(
    jobdir: Path,
    status_path: Path,
    node_rank: int,
    log: _Log,
    run: _Run,
    started: float,
    *,
    state: str,
    error: str | None,
    world_size: int | None,
    failed_cell: int | None = None,
    code: int | None = None,
) -> int:
    """Write this node's status (see :func:`run_ranks`) and the log's last line."""
    if code is None:
        code = 0 if state == "succeeded" else _EXIT_FAILED
    first = rank_dir(jobdir, 0)
    for name in ("executed.ipynb", "report.html"):
        if node_rank == 0 and (first / name).exists():
            try:
                shutil.copyfile(first / name, jobdir / f".{name}.tmp")
                os.replace(jobdir / f".{name}.tmp", jobdir / name)
            except OSError as err:
                log.line(f"--- could not copy rank 0's {name}: {err} ---")
    ranks = []
    for r in run.ranks:
        own = _read_json(r.out / "status.json")
        ranks.append(
            {
                "rank": r.rank,
                "state": own.get("state") or ("succeeded" if r.code == 0 else "failed"),
                "exit_code": r.code,
                "error": own.get("error"),
                "failed_cell": own.get("failed_cell"),
            }
        )
    failed = run.failed
    if failed is not None and error is not None and world_size is not None:
        role = f" ({failed.role})" if failed.role else ""
        error = f"rank {failed.rank} of {world_size}{role}: {error}"
    ended = time.time()
    status = {
        "state": state,
        "failed_cell": failed_cell,
        "error": error,
        "traceback": [],
        "started_at": started,
        "ended_at": ended,
        "runner_pid": os.getpid(),
        "exit_code": code,
        "world_size": world_size,
        "failed_rank": None if failed is None else failed.rank,
        "ranks": ranks,
    }
    status_path.parent.mkdir(parents=True, exist_ok=True)
    nodes.write_atomic(status_path, json.dumps(status, indent=2) + "\n")
    took = ended - started
    if state == "succeeded":
        log.line(f"--- succeeded in {took:.1f} s ---")
    elif state == "cancelled":
        log.line(f"--- {error} after {took:.1f} s ---")
    else:
        where = f" at cell {failed_cell}" if failed_cell is not None else ""
        log.line(f"--- failed{where} after {took:.1f} s: {error} ---")
    return code


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m jupyter_dlinfra.jobs.ranks",
        description="Run one node's ranks of a distributed notebook job (see the module's "
        "docstring).",
    )
    parser.add_argument("jobdir", type=Path, help="the job directory: input.ipynb, spec.json")
    parser.add_argument("--node-rank", type=int, default=None, help="this node's rank (0)")
    parser.add_argument(
        "--slurm",
        action="store_true",
        help="the node's rank from SLURM_NODEID (one task per node, started by srun)",
    )
    parser.add_argument(
        "--gather",
        action="store_true",
        help="after every node's launcher ended: write the job's status from theirs",
    )
    parser.add_argument(
        "--master-addr",
        default=None,
        help="where rank 0 listens (default: 127.0.0.1 on one node, node 0's host name on more)",
    )
    parser.add_argument("--master-port", type=int, default=None, help="default: a free port")
    args = parser.parse_args(argv)
    if not args.jobdir.is_dir():
        print(f"{args.jobdir}: no such job directory", file=sys.stderr)
        return _EXIT_USAGE
    jobdir = args.jobdir.resolve()
    if args.gather:
        spec_nodes = _read_json(jobdir / "spec.json").get("nodes")
        if not isinstance(spec_nodes, int) or spec_nodes < 2:
            # a job of one node: its launcher wrote the job's status itself
            return 0 if _read_json(jobdir / "status.json").get("state") == "succeeded" else 1
        status = nodes.gather(jobdir, spec_nodes)
        log = _Log(jobdir / "job.log")
        try:
            log.line(f"--- the job {status['state']} on {spec_nodes} nodes ---")
        finally:
            log.close()
        return int(status["exit_code"])
    node_rank = args.node_rank
    if args.slurm:
        raw = os.environ.get("SLURM_NODEID")
        if raw is None or not raw.isdigit():
            print("--slurm: SLURM_NODEID is not set (run under srun)", file=sys.stderr)
            return _EXIT_USAGE
        node_rank = int(raw)
    return run_ranks(
        jobdir,
        node_rank=node_rank or 0,
        master_addr=args.master_addr,
        master_port=args.master_port,
    )


if __name__ == "__main__":
    sys.exit(main())
