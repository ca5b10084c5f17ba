"""The ``local`` backend: one detached process per job on this node.

The process gets a session of its own, so stopping the Jupyter server (Ctrl-C signals the
server's process group) does not stop it, and its output goes to the job's log file, not to the
server. The handle keeps the pid and the process's start time, so a restarted server finds the
job again and never mistakes a recycled pid for it. How the job ended comes from the status file
the in-job runner writes (``status.json``); a process that vanished without one is ``LOST``.

GPUs are not placed here: the server's job loop asks the ledger first and passes the granted
UUIDs in ``CUDA_VISIBLE_DEVICES``, so a job and a notebook never hold the same GPU.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import psutil

from jupyter_dlinfra.backends.base import (
    BackendError,
    BackendState,
    BackendStatus,
    JobBackend,
    JobHandle,
    JobLaunch,
)

__all__ = ["LocalBackend", "read_status"]

#: how the in-job runner says the job ended, in the job's directory
STATUS_FILE = "status.json"
#: the handle of a started job, written in its directory at once
_LAUNCHED = "launched.json"
#: a cancelled job that ignores SIGTERM this long gets SIGKILL (seconds)
KILL_AFTER_S = 15.0
_STATES = {
    "succeeded": BackendState.SUCCEEDED,
    "failed": BackendState.FAILED,
    "cancelled": BackendState.CANCELLED,
}


def read_status(workdir: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The runner's ``status.json`` of a job directory, None while there is none."""
    try:
        data = json.loads((Path(workdir) / STATUS_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def status_from_file(workdir: object, unknown: str) -> BackendStatus:
    """How the runner's ``status.json`` in ``workdir`` says a job ended that its scheduler no
    longer knows (``unknown`` says so: "SLURM does not know the job"): its state, exit code and,
    unless it succeeded, its error; LOST, with ``unknown`` and why, without a readable one."""
    if not workdir:
        return BackendStatus(state=BackendState.LOST, reason=unknown)
    path = Path(str(workdir)) / STATUS_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return BackendStatus(
            state=BackendState.LOST, reason=f"{unknown} and there is no {STATUS_FILE}"
        )
    except (OSError, ValueError) as err:
        return BackendStatus(state=BackendState.LOST, reason=f"{unknown}; {path}: {err}")
    if not isinstance(data, dict):
        data = {}
    state = _STATES.get(str(data.get("state", "")).lower())
    if state is None:
        return BackendStatus(
            state=BackendState.LOST,
            reason=f"{unknown}; {STATUS_FILE} says {data.get('state')!r}",
        )
    code = data.get("exit_code")
    reason = data.get("reason") or data.get("error")
    return BackendStatus(
        state=state,
        reason=str(reason) if reason and state is not BackendState.SUCCEEDED else None,
        exit_code=code if isinstance(code, int) and not isinstance(code, bool) else None,
    )


class LocalBackend(JobBackend):
    name = "local"
    places_gpus = False
    rank_nodes = 1
    rank_nodes_why = "runs a job on this node only"
    runs_roles = True

    def __init__(self, *, kill_after: float = KILL_AFTER_S) -> None:
        self.kill_after = kill_after
        # processes started by this server: waited for, so that they do not linger as zombies
        self._children: dict[int, subprocess.Popen[bytes]] = {}
        self._cancelled: dict[int, float] = {}

    def submit(self, launch: JobLaunch) -> JobHandle:
        workdir = Path(launch.workdir)
        log_path = Path(launch.log_path or workdir / "job.log")
        env = dict(os.environ)
        env.update(launch.env)
        try:
            with log_path.open("ab") as log:
                proc = subprocess.Popen(
                    list(launch.argv),
                    cwd=workdir,
                    env=env,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
        except OSError as err:
            raise BackendError(f"could not start the job's process: {err}") from err
        self._children[proc.pid] = proc
        try:
            started = psutil.Process(proc.pid).create_time()
        except psutil.Error:
            started = None
        handle = JobHandle(
            backend=self.name,
            ref=str(proc.pid),
            detail={"pid": proc.pid, "started_at": started, "workdir": str(workdir)},
        )
        # the server records the handle next; if it dies first, recover() finds the job here
        with contextlib.suppress(OSError):
            (workdir / _LAUNCHED).write_text(json.dumps(handle.to_json()), encoding="utf-8")
        return handle

    def recover(self, launch: JobLaunch) -> JobHandle | None:
        try:
            data = json.loads((Path(launch.workdir) / _LAUNCHED).read_text(encoding="utf-8"))
            handle = JobHandle.from_json(data)
        except (OSError, ValueError, KeyError, TypeError):
            return None
        pid = int(handle.detail.get("pid", handle.ref))
        # running, or ended with a status: either way it was started, and must not start again
        if self._alive(pid, handle.detail.get("started_at")) or read_status(launch.workdir):
            return handle
        return None

    def poll(self, handles: Sequence[JobHandle]) -> dict[str, BackendStatus]:
        return {h.ref: self._poll_one(h) for h in handles}

    def _poll_one(self, handle: JobHandle) -> BackendStatus:
        pid = int(handle.detail.get("pid", handle.ref))
        child = self._children.get(pid)
        if child is not None:
            code = child.poll()
            if code is None:
                self._escalate(pid)
                return BackendStatus(state=BackendState.RUNNING)
            del self._children[pid]
            return self._ended(handle, code)
        if self._alive(pid, handle.detail.get("started_at")):
            self._escalate(pid)
            return BackendStatus(state=BackendState.RUNNING)
        return self._ended(handle, None)

    def _ended(self, handle: JobHandle, code: int | None) -> BackendStatus:
        pid = int(handle.detail.get("pid", handle.ref))
        self._cancelled.pop(pid, None)
        status = read_status(str(handle.detail.get("workdir", "")))
        if status is not None and status.get("state") in _STATES:
            state = _STATES[str(status["state"])]
            reason = status.get("error") if state is BackendState.FAILED else None
            return BackendStatus(state=state, reason=reason, exit_code=code)
        if code is not None:
            if code < 0:
                why = f"the job's process was killed by signal {-code}"
            else:
                why = f"the job's process exited with code {code} without a status"
            return BackendStatus(state=BackendState.FAILED, reason=why, exit_code=code)
        return BackendStatus(
            state=BackendState.LOST,
            reason="the job's process is gone and left no status (the node restarted?)",
        )

    @staticmethod
    def _alive(pid: int, started_at: Any) -> bool:
        try:
            proc = psutil.Process(pid)
            if proc.status() == psutil.STATUS_ZOMBIE:
                return False
            created = proc.create_time()
        except psutil.Error:
            return False
        # a recycled pid belongs to a process started later
        return not isinstance(started_at, (int, float)) or abs(created - started_at) <= 2.0

    def cancel(self, handle: JobHandle) -> None:
        pid = int(handle.detail.get("pid", handle.ref))
        if not self._alive(pid, handle.detail.get("started_at")):
            return
        self._cancelled.setdefault(pid, time.monotonic())
        # the runner stops its kernel and writes the partial notebook on SIGTERM
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGTERM)

    def _escalate(self, pid: int) -> None:
        asked = self._cancelled.get(pid)
        if asked is not None and time.monotonic() - asked > self.kill_after:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)

    def close(self) -> None:
        # the jobs keep running; only forget the handles (the server re-attaches by pid)
        self._children.clear()
