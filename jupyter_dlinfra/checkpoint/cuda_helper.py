"""The short-lived process that makes the CUDA checkpoint driver calls for the server.

``python -m jupyter_dlinfra.checkpoint.cuda_helper OP [PID] [--timeout-ms N] [--measure]``

- ``version``: what this node offers: the NVIDIA driver's version (NVML), the CUDA version its
  driver supports, the cuda-bindings version and whether it has the checkpoint API;
- ``state PID``: the process's CUDA state (``none`` for a process without CUDA);
- ``park PID --timeout-ms N``: lock (waiting at most N ms for the process's GPU work to end), then
  checkpoint; a failed checkpoint is followed by an unlock, so that the process runs on;
- ``resume PID``: restore, then unlock (a process left locked by an earlier resume whose unlock
  failed is only unlocked);
- ``unlock PID``: unlock a process left locked (a running one is left alone).

It prints one JSON line and exits 0 when ``ok`` is true, 1 otherwise::

    {"ok": true, "op": "park", "pid": 4242, "seconds": 3.1, "state": "checkpointed", ...}
    {"ok": false, "op": "park", "step": "lock", "error": "CUDA_ERROR_NOT_READY: ...", ...}

Errors carry the CUDA error's name first; where no driver call could be made the name is one of
ours: ``NO_CUDA_BINDINGS``, ``NO_DRIVER``, ``NO_CHECKPOINT_API``, ``NO_CUDA`` (the process has no
CUDA context), ``HELPER_ERROR``.

The calls are made from here rather than from the server so that the server never loads the
CUDA driver (nor risks a context of its own on the GPUs it hands out) and so that a driver fault
or hang ends this process, not the server. ``cuda.core.checkpoint.Process`` makes the calls
where cuda-core 1.0 or later is installed, else ``cuda.bindings.driver`` directly; the state is
always read through cuda.bindings, which names all of the driver's states (cuda.core raises for
the transient ones that newer drivers report).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol

__all__ = ["CudaCallError", "main", "park", "resume", "run", "state", "unlock", "version"]

#: the driver's process states by their enum names' endings
_STATE_NAMES = ("RUNNING", "LOCKED", "CHECKPOINTED", "FAILED", "CHECKPOINTING", "RESTORING")
#: what cuda.bindings must offer for checkpointing (12.8 and later, 13.0.2 and later)
REQUIRED_SYMBOLS = (
    "cuCheckpointProcessLock",
    "cuCheckpointProcessCheckpoint",
    "cuCheckpointProcessRestore",
    "cuCheckpointProcessUnlock",
    "cuCheckpointProcessGetState",
    "CUcheckpointLockArgs",
    "CUprocessState",
)
# Errors with which the driver answers a query about a process that holds no CUDA context (once
# this process's own cuInit went through, so that "not initialised" speaks of the target).
_NO_CONTEXT_ERRORS = frozenset({"CUDA_ERROR_NOT_INITIALIZED", "CUDA_ERROR_INVALID_VALUE"})
PACKAGE_HINT = "pip install 'jupyter-dlinfra[cuda]'"


class CudaCallError(Exception):
    """A driver call that did not return CUDA_SUCCESS, or could not be made."""

    def __init__(self, name: str, message: str) -> None:
        super().__init__(f"{name}: {message}")
        self.name = name
        self.message = message


class Api(Protocol):
    """The five checkpoint calls, whichever package makes them."""

    name: str

    def state(self, pid: int) -> str: ...

    def lock(self, pid: int, timeout_ms: int) -> None: ...

    def checkpoint(self, pid: int) -> None: ...

    def restore(self, pid: int) -> None: ...

    def unlock(self, pid: int) -> None: ...


class BindingsApi:
    """``cuda.bindings.driver`` called directly: each call returns ``(CUresult, *values)``."""

    name = "cuda.bindings"

    def __init__(self, driver: Any) -> None:
        self._driver = driver
        self._states: dict[int, str] = {}
        for suffix in _STATE_NAMES:
            member = getattr(driver.CUprocessState, f"CU_PROCESS_STATE_{suffix}", None)
            if member is not None:
                self._states[int(member)] = suffix.lower()

    def init(self) -> None:
        """``cuInit(0)``: no context is created, so no GPU memory is taken."""
        self._check(_guarded(lambda: self._driver.cuInit(0)))

    def state(self, pid: int) -> str:
        value = self._check(_guarded(lambda: self._driver.cuCheckpointProcessGetState(pid)))
        return self._states.get(int(value), f"unknown ({int(value)})")

    def lock(self, pid: int, timeout_ms: int) -> None:
        args = self._driver.CUcheckpointLockArgs()
        args.timeoutMs = timeout_ms
        self._check(_guarded(lambda: self._driver.cuCheckpointProcessLock(pid, args)))

    def checkpoint(self, pid: int) -> None:
        self._check(_guarded(lambda: self._driver.cuCheckpointProcessCheckpoint(pid, None)))

    def restore(self, pid: int) -> None:
        self._check(_guarded(lambda: self._driver.cuCheckpointProcessRestore(pid, None)))

    def unlock(self, pid: int) -> None:
        self._check(_guarded(lambda: self._driver.cuCheckpointProcessUnlock(pid, None)))

    def _check(self, result: Any) -> Any:
        err = result[0]
        if err == self._driver.CUresult.CUDA_SUCCESS:
            return result[1] if len(result) > 1 else None
        raise CudaCallError(*self.describe(err))

    def describe(self, err: Any) -> tuple[str, str]:
        """The error's enum name and the driver's sentence for it."""
        name = getattr(err, "name", None) or f"CUresult {int(err)}"
        message = "no description from the driver"
        try:
            got, text = self._driver.cuGetErrorName(err)
            if got == self._driver.CUresult.CUDA_SUCCESS and text:
                name = _text(text)
            got, text = self._driver.cuGetErrorString(err)
            if got == self._driver.CUresult.CUDA_SUCCESS and text:
                message = _text(text)
        except Exception:  # the name alone still says what failed
            pass
        return name, message


class CoreApi(BindingsApi):
    """``cuda.core.checkpoint.Process`` for the four calls that change state."""

    name = "cuda.core"

    def __init__(self, driver: Any, process: Callable[[int], Any]) -> None:
        super().__init__(driver)
        self._process = process

    def lock(self, pid: int, timeout_ms: int) -> None:
        _core_call(lambda: self._process(pid).lock(timeout_ms=timeout_ms))

    def checkpoint(self, pid: int) -> None:
        _core_call(lambda: self._process(pid).checkpoint())

    def restore(self, pid: int) -> None:
        _core_call(lambda: self._process(pid).restore())

    def unlock(self, pid: int) -> None:
        _core_call(lambda: self._process(pid).unlock())


def _guarded(call: Callable[[], Any]) -> Any:
    """Run a cuda.bindings call; a driver library that cannot be loaded becomes NO_DRIVER."""
    try:
        return call()
    except CudaCallError:
        raise
    except Exception as err:  # the bindings raise RuntimeError subclasses of their own
        raise CudaCallError("NO_DRIVER", _no_driver_message(err)) from err


def _core_call(call: Callable[[], Any]) -> None:
    """Run a cuda.core call; its CUDAError says ``CUDA_ERROR_NAME: explanation``."""
    try:
        call()
    except Exception as err:  # cuda.core raises CUDAError and RuntimeError
        text = str(err)
        name, _, rest = text.partition(":")
        if name.startswith("CUDA_ERROR_") and rest:
            raise CudaCallError(name, rest.strip()) from err
        if type(err).__name__ == "DynamicLibNotFoundError":
            raise CudaCallError("NO_DRIVER", _no_driver_message(err)) from err
        if "not supported by the installed NVIDIA driver" in text:
            raise CudaCallError("NO_CHECKPOINT_API", text) from err
        raise CudaCallError("CUDA_ERROR_UNKNOWN", f"{type(err).__name__}: {text}") from err


def _no_driver_message(err: BaseException) -> str:
    return f"no NVIDIA driver on this node (the CUDA driver library could not be used: {err})"


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def load_api() -> BindingsApi:
    """The API this node's packages offer, with the driver initialised."""
    driver = import_driver()
    missing = [symbol for symbol in REQUIRED_SYMBOLS if not hasattr(driver, symbol)]
    if missing:
        raise CudaCallError(
            "NO_CHECKPOINT_API",
            f"cuda-bindings {_bindings_version()} lacks {', '.join(missing)}: CUDA "
            f"checkpointing needs cuda-bindings 12.8 or later ({PACKAGE_HINT})",
        )
    process = _core_process()
    api = CoreApi(driver, process) if process is not None else BindingsApi(driver)
    api.init()
    return api


def import_driver() -> Any:
    try:
        return importlib.import_module("cuda.bindings.driver")
    except ImportError as err:
        raise CudaCallError(
            "NO_CUDA_BINDINGS",
            f"CUDA checkpointing needs the cuda-bindings package ({PACKAGE_HINT}); "
            f"{sys.executable} does not have it ({err})",
        ) from err


def _core_process() -> Callable[[int], Any] | None:
    try:
        module = importlib.import_module("cuda.core.checkpoint")
    except Exception:  # cuda-core absent, too old, or broken: the bindings will do
        return None
    process = getattr(module, "Process", None)
    return process if callable(process) else None


def _bindings_version() -> str | None:
    try:
        return str(importlib.import_module("cuda.bindings").__version__)
    except Exception:  # absent or without a version: said as unknown
        return None


def _process_exists(pid: int) -> bool:
    return os.path.exists(f"/proc/{pid}") if sys.platform.startswith("linux") else True


def process_gpu_bytes(pid: int) -> int | None:
    """GPU memory NVML counts for ``pid`` over all GPUs; None where NVML cannot tell."""
    try:
        import pynvml

        pynvml.nvmlInit()
    except Exception:  # no NVML: the footprint stays unknown
        return None
    try:
        total = 0
        for index in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            for proc in pynvml.nvmlDeviceGetComputeRunningProcesses(handle):
                if proc.pid == pid and proc.usedGpuMemory:
                    total += int(proc.usedGpuMemory)
        return total
    except Exception:  # a partial reading is no reading
        return None
    finally:
        # nothing depends on a clean shutdown
        with contextlib.suppress(Exception):
            pynvml.nvmlShutdown()


# -- the operations ---------------------------------------------------------------------------


def version() -> dict[str, Any]:
    """Facts about this node; always ``ok``: the server turns them into a refusal or none."""
    facts: dict[str, Any] = {
        "ok": True,
        "op": "version",
        "platform": sys.platform,
        "python": sys.executable,
        "driver_version": None,
        "nvml_error": None,
        "bindings_version": None,
        "bindings_error": None,
        "checkpoint_symbols": False,
        "cuda_version": None,
        "cuda_error": None,
        "api": None,
    }
    try:
        import pynvml

        pynvml.nvmlInit()
        try:
            facts["driver_version"] = _text(pynvml.nvmlSystemGetDriverVersion())
        finally:
            pynvml.nvmlShutdown()
    except Exception as err:  # NVML's absence is one of the facts
        facts["nvml_error"] = f"{type(err).__name__}: {err}"
    try:
        driver = import_driver()
    except CudaCallError as err:
        facts["bindings_error"] = str(err)
        return facts
    facts["bindings_version"] = _bindings_version()
    facts["checkpoint_symbols"] = all(hasattr(driver, symbol) for symbol in REQUIRED_SYMBOLS)
    try:
        result, cuda_version = driver.cuDriverGetVersion()
        if result == driver.CUresult.CUDA_SUCCESS:
            facts["cuda_version"] = int(cuda_version)
        else:
            facts["cuda_error"] = "{}: {}".format(*BindingsApi(driver).describe(result))
    except Exception as err:  # no libcuda: the bindings raise on first use
        facts["cuda_error"] = _no_driver_message(err)
    if facts["checkpoint_symbols"]:
        facts["api"] = "cuda.core" if _core_process() is not None else "cuda.bindings"
    return facts


def state(api: Api, pid: int) -> str:
    """``pid``'s CUDA state, ``none`` for a process without a CUDA context or without a process."""
    if not _process_exists(pid):
        return "none"
    try:
        return api.state(pid)
    except CudaCallError as err:
        if err.name in _NO_CONTEXT_ERRORS:
            return "none"
        raise


def _state_quietly(api: Api, pid: int) -> str | None:
    try:
        return state(api, pid)
    except CudaCallError:
        return None


def park(api: Api, pid: int, *, timeout_ms: int, measure: bool = False) -> dict[str, Any]:
    """Lock, then checkpoint; unlock again when the checkpoint fails."""
    before = state(api, pid)
    if before == "none":
        return _failure("park", pid, "lock", _no_cuda(pid), state="none")
    if before != "running":
        return _failure("park", pid, "lock", _illegal(pid, before, "running"), state=before)
    gpu_bytes = process_gpu_bytes(pid) if measure else None
    started = time.perf_counter()
    try:
        # 0 would mean "wait for ever" to the driver
        api.lock(pid, max(1, timeout_ms))
    except CudaCallError as err:
        return _failure(
            "park",
            pid,
            "lock",
            str(err),
            state=_state_quietly(api, pid),
            note="nothing was checkpointed",
        )
    try:
        api.checkpoint(pid)
    except CudaCallError as err:
        try:
            api.unlock(pid)
            note = "the process was unlocked and runs on"
        except CudaCallError as unlock_err:
            note = f"unlocking it again failed too ({unlock_err})"
        return _failure(
            "park", pid, "checkpoint", str(err), state=_state_quietly(api, pid), note=note
        )
    seconds = time.perf_counter() - started
    return {
        "ok": True,
        "op": "park",
        "pid": pid,
        "api": api.name,
        "seconds": seconds,
        "state": _state_quietly(api, pid),
        "gpu_bytes": gpu_bytes,
    }


def resume(api: Api, pid: int, *, measure: bool = False) -> dict[str, Any]:
    """Restore, then unlock; a process already restored but left locked is only unlocked."""
    before = state(api, pid)
    if before == "none":
        return _failure("resume", pid, "restore", _no_cuda(pid), state="none")
    if before not in ("checkpointed", "locked"):
        return _failure(
            "resume", pid, "restore", _illegal(pid, before, "checkpointed"), state=before
        )
    started = time.perf_counter()
    if before == "checkpointed":
        try:
            api.restore(pid)
        except CudaCallError as err:
            return _failure("resume", pid, "restore", str(err), state=_state_quietly(api, pid))
    try:
        api.unlock(pid)
    except CudaCallError as err:
        return _failure(
            "resume",
            pid,
            "unlock",
            str(err),
            state=_state_quietly(api, pid),
            note="its GPU memory is back, but its CUDA calls stay blocked",
        )
    seconds = time.perf_counter() - started
    return {
        "ok": True,
        "op": "resume",
        "pid": pid,
        "api": api.name,
        "seconds": seconds,
        "state": _state_quietly(api, pid),
        "gpu_bytes": process_gpu_bytes(pid) if measure else None,
    }


def unlock(api: Api, pid: int) -> dict[str, Any]:
    """Unlock a locked process; a running one needs nothing."""
    before = state(api, pid)
    if before not in ("locked", "running"):
        return _failure("unlock", pid, "unlock", _illegal(pid, before, "locked"), state=before)
    if before == "locked":
        try:
            api.unlock(pid)
        except CudaCallError as err:
            return _failure("unlock", pid, "unlock", str(err), state=_state_quietly(api, pid))
    return {"ok": True, "op": "unlock", "pid": pid, "api": api.name, "state": "running"}


def _no_cuda(pid: int) -> str:
    return f"NO_CUDA: process {pid} has no CUDA context (or no longer exists)"


def _illegal(pid: int, current: str, wanted: str) -> str:
    return f"CUDA_ERROR_ILLEGAL_STATE: process {pid} is {current}, not {wanted}"


def _failure(
    op: str, pid: int, step: str, error: str, *, state: str | None, note: str = ""
) -> dict[str, Any]:
    return {
        "ok": False,
        "op": op,
        "pid": pid,
        "step": step,
        "error": error,
        "code": error.split(":", 1)[0],
        "state": state,
        "note": note,
    }


def run(args: argparse.Namespace, load: Callable[[], Api] = load_api) -> dict[str, Any]:
    """One operation's answer; ``load`` supplies the API (tests pass a stand-in)."""
    if args.op == "version":
        return version()
    if args.pid is None:
        raise SystemExit(f"{args.op} needs a pid")
    pid = int(args.pid)
    try:
        api = load()
        if args.op == "state":
            return {
                "ok": True,
                "op": "state",
                "pid": pid,
                "api": api.name,
                "state": state(api, pid),
            }
        if args.op == "park":
            return park(api, pid, timeout_ms=args.timeout_ms, measure=args.measure)
        if args.op == "unlock":
            return unlock(api, pid)
        return resume(api, pid, measure=args.measure)
    except CudaCallError as err:
        step = "state" if args.op == "state" else "init"
        return _failure(args.op, pid, step, str(err), state=None)


def parser() -> argparse.ArgumentParser:
    made = argparse.ArgumentParser(
        prog="python -m jupyter_dlinfra.checkpoint.cuda_helper",
        description="Make one CUDA checkpoint driver call sequence and print one JSON line.",
    )
    made.add_argument("op", choices=("version", "state", "park", "resume", "unlock"))
    made.add_argument("pid", nargs="?", type=int)
    made.add_argument(
        "--timeout-ms", type=int, default=10_000, help="park: how long the lock may wait"
    )
    made.add_argument(
        "--measure", action="store_true", help="report the process's GPU memory (NVML)"
    )
    return made


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        answer = run(args)
    except SystemExit:
        raise
    except Exception as err:  # the server reads JSON, never a traceback
        answer = {
            "ok": False,
            "op": args.op,
            "step": "helper",
            "code": "HELPER_ERROR",
            "error": f"HELPER_ERROR: {type(err).__name__}: {err}",
            "state": None,
        }
    print(json.dumps(answer), flush=True)
    return 0 if answer.get("ok") else 1


if __name__ == "__main__":
    sys.exit(main())
