"""The real checkpointer: CUDA checkpointing through the NVIDIA driver (570 or later).

Every driver call is made by a short-lived helper process (``cuda_helper``), one per operation,
so that this process never loads CUDA and a driver that faults or hangs costs a helper, not the
server. A helper that outlives its time is killed; the process it worked on is then left as the
driver has it, which ``CheckpointFailed.state`` tells where a fresh helper can still read it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from jupyter_dlinfra.checkpoint.base import GIB, Checkpointer, CheckpointFailed, Toggle

__all__ = [
    "HELPER_MODULE",
    "MIN_CUDA_VERSION",
    "MIN_DRIVER_MAJOR",
    "CudaCheckpointer",
    "capability_refusal",
    "parse_helper_output",
]

HELPER_MODULE = "jupyter_dlinfra.checkpoint.cuda_helper"
#: the first NVIDIA driver branch whose driver API has the checkpoint calls
MIN_DRIVER_MAJOR = 570
#: the same, as ``cuDriverGetVersion`` says it (CUDA 12.8), for nodes where NVML cannot tell
MIN_CUDA_VERSION = 12080
PACKAGE_HINT = "pip install 'jupyter-dlinfra[cuda]'"
# Beyond the lock's own wait, a helper gets a fixed allowance for starting (its interpreter,
# cuda-bindings) and for the driver's bookkeeping, and time for the copy at a floor rate: a copy
# slower than half a gibibyte a second is taken for a hung driver.
HELPER_GRACE_S = 60.0
COPY_S_PER_GIB = 2.0
#: the copy allowance where the footprint is not known: a whole 141 GB GPU's worth
UNKNOWN_FOOTPRINT_BYTES = 141 * 10**9
STATE_TIMEOUT_S = 30.0
VERSION_TIMEOUT_S = 60.0


def capability_refusal(facts: Mapping[str, Any]) -> str | None:
    """What the helper's ``version`` facts say this node lacks for checkpointing, or None."""
    if not facts.get("ok", False):
        return (
            "the CUDA checkpoint helper could not tell what this node offers: "
            f"{facts.get('error', 'no answer')}"
        )
    platform = str(facts.get("platform", sys.platform))
    if not platform.startswith("linux"):
        return f"CUDA checkpointing works on Linux only; this node runs {platform}"
    driver_version = facts.get("driver_version")
    cuda_version = facts.get("cuda_version")
    if facts.get("bindings_version") is None and facts.get("bindings_error"):
        if driver_version is None:
            return (
                f"no NVIDIA driver on this node (NVML: {facts.get('nvml_error')}); CUDA "
                f"checkpointing needs driver {MIN_DRIVER_MAJOR} or later and the cuda-bindings "
                f"package ({PACKAGE_HINT})"
            )
        return (
            f"CUDA checkpointing needs the cuda-bindings package ({PACKAGE_HINT}), "
            f"which {facts.get('python', 'this server')} does not have"
        )
    if cuda_version is None:
        return str(facts.get("cuda_error") or "no NVIDIA driver on this node")
    if driver_version is not None:
        major = _leading_int(str(driver_version))
        if major is not None and major < MIN_DRIVER_MAJOR:
            return (
                f"CUDA checkpointing needs NVIDIA driver {MIN_DRIVER_MAJOR} or later; "
                f"this node has {driver_version}"
            )
    if int(cuda_version) < MIN_CUDA_VERSION:
        return (
            f"CUDA checkpointing needs NVIDIA driver {MIN_DRIVER_MAJOR} or later (CUDA 12.8); "
            f"this node's driver supports CUDA {_cuda_text(int(cuda_version))}"
        )
    bindings = str(facts.get("bindings_version") or "unknown")
    if not facts.get("checkpoint_symbols", False) or not _bindings_support(bindings):
        return (
            f"CUDA checkpointing needs cuda-bindings 12.8 or later (13.0.2 or later in the 13 "
            f"series); this node has {bindings} (pip install -U 'jupyter-dlinfra[cuda]')"
        )
    bindings_major = _leading_int(bindings)
    if bindings_major is not None and bindings_major > int(cuda_version) // 1000:
        return (
            f"cuda-bindings {bindings} is built for CUDA {bindings_major}, and this node's driver "
            f"supports CUDA {_cuda_text(int(cuda_version))}: install a matching one "
            f"(pip install 'cuda-bindings>=12.8,<{int(cuda_version) // 1000 + 1}') "
            "or upgrade the driver"
        )
    return None


def _leading_int(text: str) -> int | None:
    head = text.strip().split(".", 1)[0]
    return int(head) if head.isdigit() else None


def _version_tuple(text: str) -> tuple[int, ...]:
    parts: list[int] = []
    for piece in text.split("."):
        digits = ""
        for char in piece:
            if not char.isdigit():
                break
            digits += char
        if not digits:
            break
        parts.append(int(digits))
    return tuple(parts)


def _bindings_support(version: str) -> bool:
    """cuda-bindings 12.8 and later have the checkpoint calls, except 13.0.0 and 13.0.1."""
    found = _version_tuple(version)
    if len(found) < 2:
        return True  # unknown: the symbols' presence decides
    padded = (*found, 0, 0)[:3]
    if padded[0] == 12:
        return padded >= (12, 8, 0)
    if padded[0] == 13:
        return padded >= (13, 0, 2)
    return padded[0] > 13


def _cuda_text(version: int) -> str:
    return f"{version // 1000}.{version % 1000 // 10}"


def parse_helper_output(stdout: str, stderr: str, returncode: int) -> dict[str, Any]:
    """The helper's JSON answer (its last line), or a failure saying why there is none."""
    for line in reversed(stdout.strip().splitlines()):
        try:
            answer = json.loads(line)
        except ValueError:
            continue
        if isinstance(answer, dict) and "ok" in answer:
            return answer
    tail = " ".join(stderr.strip().splitlines()[-3:]) or "no output"
    return {
        "ok": False,
        "step": "helper",
        "code": "HELPER_ERROR",
        "error": f"HELPER_ERROR: the helper exited with status {returncode} without an answer: "
        f"{tail}",
        "state": None,
    }


class CudaCheckpointer(Checkpointer):
    """Parks with the NVIDIA driver's checkpoint calls, made by a helper process per operation."""

    name = "cuda"
    simulated = False

    def __init__(
        self,
        *,
        available_memory: Callable[[], int] | None = None,
        python: str | None = None,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(available_memory=available_memory)
        self._python = python or sys.executable
        base = dict(os.environ if environ is None else environ)
        # the helper acts on other processes' GPUs: a mask meant for the server (often empty, so
        # that it never takes a GPU) would make the helper's cuInit find no device
        base.pop("CUDA_VISIBLE_DEVICES", None)
        self._environ = base
        self._facts: dict[str, Any] | None = None
        # apart from the other lock: the first answer takes a helper's start, which parks and
        # resumes already under way need not wait for
        self._facts_lock = threading.Lock()
        self._lock = threading.Lock()
        self._pid_locks: dict[int, threading.Lock] = {}
        self._parked_bytes: dict[int, int] = {}

    # -- what this node offers --------------------------------------------------------------

    def facts(self) -> dict[str, Any]:
        """The helper's ``version`` answer, asked once: the driver does not change under us."""
        with self._facts_lock:
            if self._facts is None:
                self._facts = self._run(["version"], VERSION_TIMEOUT_S)
            return dict(self._facts)

    def _capability_refusal(self, pid: int) -> str | None:
        return capability_refusal(self.facts())

    # -- the operations ---------------------------------------------------------------------

    def park(self, pid: int, *, timeout_s: float, gpu_bytes: int | None = None) -> Toggle:
        args = ["park", str(pid), "--timeout-ms", str(max(1, round(timeout_s * 1000)))]
        if gpu_bytes is None:
            args.append("--measure")
        with self._pid_lock(pid):
            answer = self._run(args, timeout_s + self._allowance(gpu_bytes), pid=pid)
            if not answer.get("ok"):
                raise _failed(pid, answer)
            measured = answer.get("gpu_bytes")
            moved = gpu_bytes if gpu_bytes is not None else int(measured or 0)
            with self._lock:
                self._parked_bytes[pid] = moved
        return Toggle(float(answer.get("seconds", 0.0)), moved)

    def resume(self, pid: int, *, timeout_s: float) -> Toggle:
        with self._lock:
            known = self._parked_bytes.get(pid)
        args = ["resume", str(pid)]
        if known is None:
            args.append("--measure")
        with self._pid_lock(pid):
            answer = self._run(args, timeout_s + self._allowance(known), pid=pid)
            if not answer.get("ok"):
                raise _failed(pid, answer)
            with self._lock:
                self._parked_bytes.pop(pid, None)
        moved = known if known is not None else int(answer.get("gpu_bytes") or 0)
        return Toggle(float(answer.get("seconds", 0.0)), moved)

    def unlock(self, pid: int, *, timeout_s: float = 30.0) -> None:
        with self._pid_lock(pid):
            answer = self._run(["unlock", str(pid)], timeout_s + HELPER_GRACE_S, pid=pid)
        if not answer.get("ok"):
            raise _failed(pid, answer)

    def state(self, pid: int) -> str:
        answer = self._run(["state", str(pid)], STATE_TIMEOUT_S)
        if not answer.get("ok"):
            raise _failed(pid, answer)
        return str(answer["state"])

    def forget(self, pid: int) -> None:
        with self._lock:
            self._parked_bytes.pop(pid, None)
            self._pid_locks.pop(pid, None)

    # -- the helper -------------------------------------------------------------------------

    def _pid_lock(self, pid: int) -> threading.Lock:
        """One operation at a time on one process: two helpers racing would leave it halfway."""
        with self._lock:
            return self._pid_locks.setdefault(pid, threading.Lock())

    @staticmethod
    def _allowance(gpu_bytes: int | None) -> float:
        footprint = UNKNOWN_FOOTPRINT_BYTES if gpu_bytes is None else gpu_bytes
        return HELPER_GRACE_S + COPY_S_PER_GIB * footprint / GIB

    def _run(
        self, args: Sequence[str], timeout_s: float, *, pid: int | None = None
    ) -> dict[str, Any]:
        command = [self._python, "-m", HELPER_MODULE, *args]
        try:
            done = subprocess.run(
                command,
                capture_output=True,
                text=True,
                timeout=timeout_s,
                env=self._environ,
                check=False,
            )
        except subprocess.TimeoutExpired:
            after = self._state_after_timeout(pid) if pid is not None else None
            return {
                "ok": False,
                "step": args[0],
                "code": "HELPER_TIMEOUT",
                "error": f"HELPER_TIMEOUT: the driver did not finish {args[0]} in "
                f"{timeout_s:.0f} s, and its helper was killed",
                "state": after,
            }
        except OSError as err:
            return {
                "ok": False,
                "step": "helper",
                "code": "HELPER_ERROR",
                "error": f"HELPER_ERROR: the helper could not be started: {err}",
                "state": None,
            }
        return parse_helper_output(done.stdout, done.stderr, done.returncode)

    def _state_after_timeout(self, pid: int) -> str | None:
        answer = self._run(["state", str(pid)], STATE_TIMEOUT_S)
        return str(answer["state"]) if answer.get("ok") else None


def _failed(pid: int, answer: Mapping[str, Any]) -> CheckpointFailed:
    state = answer.get("state")
    return CheckpointFailed(
        pid,
        str(answer.get("step", "helper")),
        str(answer.get("error", "HELPER_ERROR: no error given")),
        state=None if state is None else str(state),
        note=str(answer.get("note") or ""),
    )
