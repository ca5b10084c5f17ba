"""A checkpointer without GPUs, for demos and tests: the states move, no memory does.

Every process is taken to hold a CUDA context (``running``) until parked. The durations it reports
are a model, not a measurement::

    park   = 0.5 s + gpu_bytes / (4 GiB/s)
    resume = 0.5 s + gpu_bytes / (6 GiB/s)

(published figures for CUDA checkpointing run roughly from 1 to 15 s, depending on the footprint
and the node's host memory bandwidth); the calls themselves return at once.

Failures are modelled by a JSON control file, re-read whenever it changes (the server names it in
``DLINFRA_SIMULATED_CHECKPOINT_FILE``); pids are strings, ``"*"`` stands for any pid::

    {
      "refuse": {"4242": "NCCL communicators are open"},
      "fail_park": ["4243"],
      "fail_restore": ["4244"],
      "break_restore": ["4246"],
      "stuck_locked": ["4247"],
      "no_cuda": ["4245"]
    }

- ``refuse``: ``refusal`` answers the sentence given;
- ``fail_park``: the checkpoint step fails; the process is unlocked and stays ``running``;
- ``fail_restore``: the restore fails and the process stays ``checkpointed``, so that a later
  resume may succeed (as when the GPU lacks the free memory for it);
- ``break_restore``: the restore fails and leaves the process ``failed``, as the driver does when
  it cannot recover;
- ``stuck_locked``: the checkpoint step fails and so does the unlock after it: the process is
  left ``locked`` (as a server that stopped between the two calls leaves it) until ``unlock``;
- ``no_cuda``: the process has no CUDA context: state ``none``, and parking it fails.

A file that cannot be read or parsed keeps the last good contents (and says so in the log).
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from jupyter_dlinfra.checkpoint.base import GIB, Checkpointer, CheckpointFailed, Toggle

__all__ = ["SIMULATED_CHECKPOINT_FILE_ENV", "SimulatedCheckpointer"]

log = logging.getLogger(__name__)

SIMULATED_CHECKPOINT_FILE_ENV = "DLINFRA_SIMULATED_CHECKPOINT_FILE"

PARK_FIXED_S = 0.5
PARK_BYTES_PER_S = 4 * GIB
RESUME_FIXED_S = 0.5
RESUME_BYTES_PER_S = 6 * GIB
ANY_PID = "*"


@dataclass(frozen=True)
class _Control:
    refuse: Mapping[str, str] = field(default_factory=dict)
    fail_park: frozenset[str] = frozenset()
    fail_restore: frozenset[str] = frozenset()
    break_restore: frozenset[str] = frozenset()
    stuck_locked: frozenset[str] = frozenset()
    no_cuda: frozenset[str] = frozenset()

    @staticmethod
    def parse(doc: Any) -> _Control:
        if not isinstance(doc, dict):
            raise ValueError("the file must hold a JSON object")
        known = {"refuse", "fail_park", "fail_restore", "break_restore", "stuck_locked", "no_cuda"}
        unknown = sorted(set(doc) - known)
        if unknown:
            raise ValueError(
                f"unknown keys {', '.join(unknown)}; known: {', '.join(sorted(known))}"
            )
        refuse = doc.get("refuse") or {}
        if not isinstance(refuse, dict):
            raise ValueError('"refuse" must map pids to reasons')

        def pids(key: str) -> frozenset[str]:
            listed = doc.get(key) or []
            if not isinstance(listed, list):
                raise ValueError(f'"{key}" must be a list of pids')
            return frozenset(str(pid) for pid in listed)

        return _Control(
            refuse={str(pid): str(reason) for pid, reason in refuse.items()},
            fail_park=pids("fail_park"),
            fail_restore=pids("fail_restore"),
            break_restore=pids("break_restore"),
            stuck_locked=pids("stuck_locked"),
            no_cuda=pids("no_cuda"),
        )

    @staticmethod
    def names(pids: frozenset[str], pid: int) -> bool:
        return str(pid) in pids or ANY_PID in pids

    def refusal_for(self, pid: int) -> str | None:
        return self.refuse.get(str(pid), self.refuse.get(ANY_PID))


class SimulatedCheckpointer(Checkpointer):
    """Parks in memory only; labelled simulated everywhere it shows."""

    name = "simulated"
    simulated = True

    def __init__(
        self,
        *,
        control_file: str | Path | None = None,
        available_memory: Callable[[], int] | None = None,
    ) -> None:
        super().__init__(available_memory=available_memory)
        self._control_path = Path(control_file) if control_file else None
        self._control_stamp: tuple[int, int, int] | None = None
        self._control = _Control()
        self._lock = threading.Lock()
        self._states: dict[int, str] = {}
        #: the footprint each parked process had, reported again by its resume
        self._parked_bytes: dict[int, int] = {}
        #: the footprint ``refusal`` was last told of, for a park that is not told again
        self._seen_bytes: dict[int, int] = {}

    def refusal(self, pid: int, cuda_pids: Sequence[int], gpu_bytes: int) -> str | None:
        with self._lock:
            self._seen_bytes[pid] = gpu_bytes
        return super().refusal(pid, cuda_pids, gpu_bytes)

    def _capability_refusal(self, pid: int) -> str | None:
        with self._lock:
            return self._read_control().refusal_for(pid)

    def park(self, pid: int, *, timeout_s: float, gpu_bytes: int | None = None) -> Toggle:
        with self._lock:
            control = self._read_control()
            state = self._state(pid, control)
            if state != "running":
                raise CheckpointFailed(
                    pid,
                    "lock",
                    _illegal(pid, state, "running"),
                    state=state,
                    note="nothing was changed",
                )
            if _Control.names(control.stuck_locked, pid):
                self._states[pid] = "locked"
                raise CheckpointFailed(
                    pid,
                    "checkpoint",
                    "CUDA_ERROR_NOT_SUPPORTED: simulated checkpoint failure (control file)",
                    state="locked",
                    note="unlocking it again failed too (CUDA_ERROR_ILLEGAL_STATE: simulated)",
                )
            if _Control.names(control.fail_park, pid):
                raise CheckpointFailed(
                    pid,
                    "checkpoint",
                    "CUDA_ERROR_NOT_SUPPORTED: simulated checkpoint failure (control file)",
                    state="running",
                    note="the process was unlocked and runs on",
                )
            moved = gpu_bytes if gpu_bytes is not None else self._seen_bytes.get(pid, 0)
            self._states[pid] = "checkpointed"
            self._parked_bytes[pid] = moved
        return Toggle(PARK_FIXED_S + moved / PARK_BYTES_PER_S, moved)

    def resume(self, pid: int, *, timeout_s: float) -> Toggle:
        with self._lock:
            control = self._read_control()
            state = self._state(pid, control)
            if state != "checkpointed":
                raise CheckpointFailed(
                    pid, "restore", _illegal(pid, state, "checkpointed"), state=state
                )
            if _Control.names(control.break_restore, pid):
                self._states[pid] = "failed"
                raise CheckpointFailed(
                    pid,
                    "restore",
                    "CUDA_ERROR_UNKNOWN: simulated unrecoverable restore failure (control file)",
                    state="failed",
                    note="the process cannot use CUDA again and must be ended",
                )
            if _Control.names(control.fail_restore, pid):
                raise CheckpointFailed(
                    pid,
                    "restore",
                    "CUDA_ERROR_OUT_OF_MEMORY: simulated restore failure (control file)",
                    state="checkpointed",
                    note="its GPU state is still held in host memory; resume may be tried again",
                )
            moved = self._parked_bytes.pop(pid, 0)
            self._states[pid] = "running"
        return Toggle(RESUME_FIXED_S + moved / RESUME_BYTES_PER_S, moved)

    def unlock(self, pid: int, *, timeout_s: float = 30.0) -> None:
        with self._lock:
            state = self._state(pid, self._read_control())
            if state == "running":
                return
            if state != "locked":
                raise CheckpointFailed(pid, "unlock", _illegal(pid, state, "locked"), state=state)
            self._states[pid] = "running"

    def state(self, pid: int) -> str:
        with self._lock:
            return self._state(pid, self._read_control())

    def forget(self, pid: int) -> None:
        with self._lock:
            self._states.pop(pid, None)
            self._parked_bytes.pop(pid, None)
            self._seen_bytes.pop(pid, None)

    def _state(self, pid: int, control: _Control) -> str:
        if _Control.names(control.no_cuda, pid):
            return "none"
        return self._states.get(pid, "running")

    def _read_control(self) -> _Control:
        """The control file's contents, re-read when it changed; called holding the lock."""
        path = self._control_path
        if path is None:
            return self._control
        try:
            info = path.stat()
        except OSError:
            self._control_stamp, self._control = None, _Control()
            return self._control
        stamp = (info.st_mtime_ns, info.st_size, info.st_ino)
        if stamp == self._control_stamp:
            return self._control
        self._control_stamp = stamp
        try:
            self._control = _Control.parse(json.loads(path.read_text(encoding="utf-8") or "{}"))
        except (OSError, ValueError, AttributeError) as err:
            log.warning("simulated checkpoint control file %s ignored: %s", path, err)
        return self._control


def _illegal(pid: int, state: str, wanted: str) -> str:
    if state == "none":
        return f"CUDA_ERROR_NOT_INITIALIZED: process {pid} has no CUDA context"
    return f"CUDA_ERROR_ILLEGAL_STATE: process {pid} is {state}, not {wanted}"
