"""Checkpointers: the simulated one's state machine and failures, the checks shared by both, and
the real one's helper as far as a machine without GPUs can take it."""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from jupyter_dlinfra.checkpoint import (
    CheckpointFailed,
    CudaCheckpointer,
    ParkRefused,
    SimulatedCheckpointer,
    Toggle,
    capability_refusal,
    cuda_helper,
    host_memory_needed,
    host_memory_refusal,
    process_tree_refusal,
)
from jupyter_dlinfra.checkpoint.cuda import parse_helper_output

GIB = 1 << 30
REPO = Path(__file__).resolve().parents[2]
PLENTY = 512 * GIB


def plenty() -> int:
    return PLENTY


def simulated(
    control: Path | None = None, memory: Callable[[], int] = plenty
) -> SimulatedCheckpointer:
    return SimulatedCheckpointer(control_file=control, available_memory=memory)


def write_control(path: Path, doc: dict[str, Any], *, stamp: int) -> None:
    """Write the control file with an mtime of its own, as a later edit would have."""
    path.write_text(json.dumps(doc), encoding="utf-8")
    os.utime(path, ns=(stamp, stamp))


# -- the simulated checkpointer's state machine -------------------------------------------------


def test_park_then_resume_moves_the_state_and_reports_the_modelled_times() -> None:
    cp = simulated()
    assert cp.simulated and cp.name == "simulated"
    assert cp.state(4242) == "running"
    parked = cp.park(4242, timeout_s=5, gpu_bytes=8 * GIB)
    assert parked == Toggle(seconds=0.5 + 8 / 4, gpu_bytes=8 * GIB)
    assert cp.state(4242) == "checkpointed"
    assert cp.state(4243) == "running"  # one process's park leaves others alone
    resumed = cp.resume(4242, timeout_s=5)
    assert resumed == Toggle(seconds=0.5 + 8 / 6, gpu_bytes=8 * GIB)
    assert cp.state(4242) == "running"


def test_park_without_a_footprint_uses_the_one_the_refusal_was_told() -> None:
    cp = simulated()
    assert cp.refusal(7, [7], 2 * GIB) is None
    assert cp.park(7, timeout_s=1).gpu_bytes == 2 * GIB
    assert cp.park(8, timeout_s=1).gpu_bytes == 0


def test_resuming_a_running_process_fails_clearly_and_changes_nothing() -> None:
    cp = simulated()
    with pytest.raises(CheckpointFailed) as caught:
        cp.resume(4242, timeout_s=1)
    failure = caught.value
    assert failure.step == "restore"
    assert failure.error_name == "CUDA_ERROR_ILLEGAL_STATE"
    assert failure.state == "running"
    assert "is running, not checkpointed" in str(failure)
    assert cp.state(4242) == "running"


def test_parking_twice_fails_clearly_and_the_process_stays_parked() -> None:
    cp = simulated()
    cp.park(4242, timeout_s=1, gpu_bytes=GIB)
    with pytest.raises(CheckpointFailed) as caught:
        cp.park(4242, timeout_s=1, gpu_bytes=GIB)
    assert caught.value.step == "lock"
    assert "is checkpointed, not running" in str(caught.value)
    assert cp.state(4242) == "checkpointed"
    assert cp.resume(4242, timeout_s=1).gpu_bytes == GIB


def test_forget_drops_a_process() -> None:
    cp = simulated()
    cp.park(4242, timeout_s=1, gpu_bytes=GIB)
    cp.forget(4242)
    assert cp.state(4242) == "running"


# -- failures modelled by the control file -------------------------------------------------------


def test_the_control_file_refuses_named_pids_and_any_pid(tmp_path: Path) -> None:
    control = tmp_path / "control.json"
    write_control(control, {"refuse": {"4242": "NCCL communicators are open"}}, stamp=10**18)
    cp = simulated(control)
    assert cp.refusal(4242, [4242], GIB) == "NCCL communicators are open"
    assert cp.refusal(4243, [4243], GIB) is None
    with pytest.raises(ParkRefused) as caught:
        cp.check(4242, [4242], GIB)
    assert caught.value.reason == "NCCL communicators are open"
    write_control(control, {"refuse": {"*": "CUDA IPC handles are open"}}, stamp=2 * 10**18)
    assert cp.refusal(4243, [4243], GIB) == "CUDA IPC handles are open"


def test_a_failing_park_leaves_the_process_running(tmp_path: Path) -> None:
    control = tmp_path / "control.json"
    write_control(control, {"fail_park": ["4243"]}, stamp=10**18)
    cp = simulated(control)
    with pytest.raises(CheckpointFailed) as caught:
        cp.park(4243, timeout_s=1, gpu_bytes=GIB)
    assert caught.value.step == "checkpoint"
    assert caught.value.state == "running"
    assert "unlocked and runs on" in str(caught.value)
    assert cp.state(4243) == "running"


def test_a_failing_restore_keeps_the_process_parked_until_it_can_resume(tmp_path: Path) -> None:
    control = tmp_path / "control.json"
    write_control(control, {"fail_restore": ["4244"]}, stamp=10**18)
    cp = simulated(control)
    cp.park(4244, timeout_s=1, gpu_bytes=4 * GIB)
    with pytest.raises(CheckpointFailed) as caught:
        cp.resume(4244, timeout_s=1)
    assert caught.value.step == "restore"
    assert caught.value.state == "checkpointed"
    assert cp.state(4244) == "checkpointed"
    write_control(control, {}, stamp=2 * 10**18)
    assert cp.resume(4244, timeout_s=1).gpu_bytes == 4 * GIB
    assert cp.state(4244) == "running"


def test_a_broken_restore_leaves_the_process_failed(tmp_path: Path) -> None:
    control = tmp_path / "control.json"
    write_control(control, {"break_restore": ["*"]}, stamp=10**18)
    cp = simulated(control)
    cp.park(4246, timeout_s=1, gpu_bytes=GIB)
    with pytest.raises(CheckpointFailed) as caught:
        cp.resume(4246, timeout_s=1)
    assert caught.value.state == "failed"
    assert cp.state(4246) == "failed"
    with pytest.raises(CheckpointFailed):
        cp.park(4246, timeout_s=1)


def test_a_process_left_locked_runs_again_once_unlocked(tmp_path: Path) -> None:
    control = tmp_path / "control.json"
    write_control(control, {"stuck_locked": ["4247"]}, stamp=10**18)
    cp = simulated(control)
    with pytest.raises(CheckpointFailed) as caught:
        cp.park(4247, timeout_s=1, gpu_bytes=GIB)
    assert caught.value.state == "locked"
    assert cp.state(4247) == "locked"
    with pytest.raises(CheckpointFailed):
        cp.resume(4247, timeout_s=1)
    cp.unlock(4247)
    assert cp.state(4247) == "running"
    cp.unlock(4247)  # a running process needs nothing
    cp.park(4248, timeout_s=1)
    with pytest.raises(CheckpointFailed) as refused:
        cp.unlock(4248)
    assert refused.value.step == "unlock" and refused.value.state == "checkpointed"


def test_a_process_without_cuda_has_state_none_and_cannot_be_parked(tmp_path: Path) -> None:
    control = tmp_path / "control.json"
    write_control(control, {"no_cuda": [4245]}, stamp=10**18)
    cp = simulated(control)
    assert cp.state(4245) == "none"
    with pytest.raises(CheckpointFailed) as caught:
        cp.park(4245, timeout_s=1)
    assert "no CUDA context" in str(caught.value)


def test_the_control_file_is_read_again_when_it_changes_and_kept_when_broken(
    tmp_path: Path,
) -> None:
    control = tmp_path / "control.json"
    cp = simulated(control)
    assert cp.refusal(1, [1], GIB) is None  # no file yet: nothing refused
    write_control(control, {"refuse": {"1": "first"}}, stamp=10**18)
    assert cp.refusal(1, [1], GIB) == "first"
    write_control(control, {"refuse": {"1": "second"}}, stamp=2 * 10**18)
    assert cp.refusal(1, [1], GIB) == "second"
    control.write_text("{not json", encoding="utf-8")
    os.utime(control, ns=(3 * 10**18, 3 * 10**18))
    assert cp.refusal(1, [1], GIB) == "second"  # the last good contents hold
    write_control(control, {"refuse": {"1": "third"}, "surprise": 1}, stamp=4 * 10**18)
    assert cp.refusal(1, [1], GIB) == "second"  # unknown keys are refused, not ignored
    control.unlink()
    assert cp.refusal(1, [1], GIB) is None


# -- the checks both checkpointers make ----------------------------------------------------------


def test_cuda_in_child_processes_is_refused_by_name() -> None:
    assert process_tree_refusal(100, [100]) is None
    assert process_tree_refusal(100, []) is None
    reason = process_tree_refusal(100, [100, 102, 101, 102])
    assert reason is not None
    assert reason.startswith("CUDA in child processes (pids 101, 102) cannot be checkpointed")
    assert simulated().refusal(100, [100, 101], GIB) == process_tree_refusal(100, [101])


def test_host_memory_must_exceed_the_footprint_and_its_margin() -> None:
    gpu = 40 * GIB
    needed = host_memory_needed(gpu)
    assert needed == int(gpu * 1.1) + GIB
    assert host_memory_refusal(gpu, needed + 1) is None
    reason = host_memory_refusal(gpu, needed)
    assert reason is not None
    assert "host memory is short" in reason
    assert "40.0 GiB" in reason and "45.0 GiB" in reason
    short = simulated(memory=lambda: 20 * GIB)
    assert short.refusal(1, [1], gpu) == host_memory_refusal(gpu, 20 * GIB)
    assert short.refusal(1, [1], 10 * GIB) is None


def test_a_refusal_comes_before_the_shared_checks(tmp_path: Path) -> None:
    control = tmp_path / "control.json"
    write_control(control, {"refuse": {"*": "driver too old"}}, stamp=10**18)
    assert simulated(control, memory=lambda: 0).refusal(1, [1, 2], GIB) == "driver too old"


# -- the real checkpointer on a machine without a driver -----------------------------------------


def test_the_real_checkpointer_refuses_here_with_a_reason_and_no_exception() -> None:
    cp = CudaCheckpointer(available_memory=plenty)
    assert not cp.simulated and cp.name == "cuda"
    reason = cp.refusal(os.getpid(), [os.getpid()], GIB)
    assert reason is not None
    assert "no NVIDIA driver on this node" in reason or "cuda-bindings" in reason
    with pytest.raises(ParkRefused):
        cp.check(os.getpid(), [os.getpid()], GIB)


def test_the_helper_answers_in_json_without_cuda_bindings() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "jupyter_dlinfra.checkpoint.cuda_helper", "state", "1"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
        check=False,
    )
    lines = done.stdout.strip().splitlines()
    assert len(lines) == 1, done.stdout + done.stderr
    answer = json.loads(lines[0])
    assert "Traceback" not in done.stderr
    if importlib.util.find_spec("cuda") is None:
        assert done.returncode == 1
        assert answer["ok"] is False
        assert answer["code"] == "NO_CUDA_BINDINGS"
        assert answer["error"].startswith("NO_CUDA_BINDINGS: CUDA checkpointing needs the ")
        assert "pip install 'jupyter-dlinfra[cuda]'" in answer["error"]
    else:  # the extra installed: without a driver it says so; with one, pid 1 has no CUDA
        assert answer.get("code") == "NO_DRIVER" or answer.get("state") == "none", answer


def test_the_real_checkpointer_raises_checkpoint_failed_from_the_helpers_answer() -> None:
    cp = CudaCheckpointer()
    with pytest.raises(CheckpointFailed) as caught:
        cp.park(1, timeout_s=1, gpu_bytes=GIB)
    assert caught.value.step in ("init", "lock")
    assert caught.value.error_name in ("NO_CUDA_BINDINGS", "NO_DRIVER", "NO_CUDA")


FAKE_HELPER = """#!/bin/sh
# stands in for "python -m jupyter_dlinfra.checkpoint.cuda_helper OP PID ...": $3 is the op
echo "$* CUDA_VISIBLE_DEVICES=${CUDA_VISIBLE_DEVICES-unset}" >> "$0.calls"
case "$3" in
  version) echo '{"ok": true, "platform": "linux", "driver_version": "580.65.06", '\
'"bindings_version": "13.0.3", "checkpoint_symbols": true, "cuda_version": 13000}' ;;
  park) echo '{"ok": true, "seconds": 2.5, "state": "checkpointed", "gpu_bytes": 3}' ;;
  resume) echo '{"ok": true, "seconds": 1.5, "state": "running", "gpu_bytes": 4}' ;;
  unlock) echo '{"ok": true, "state": "running"}' ;;
  state) echo '{"ok": false, "step": "state", "error": "CUDA_ERROR_UNKNOWN: bad", "state": null}'
    exit 1 ;;
esac
"""


def test_the_real_checkpointer_passes_the_helpers_answers_on(tmp_path: Path) -> None:
    python = tmp_path / "python"
    python.write_text(FAKE_HELPER, encoding="utf-8")
    python.chmod(0o755)
    cp = CudaCheckpointer(
        available_memory=plenty, python=str(python), environ={"CUDA_VISIBLE_DEVICES": ""}
    )
    assert cp.refusal(42, [42], GIB) is None
    assert cp.refusal(42, [42], GIB) is None  # the driver's facts are asked once
    assert cp.facts()["driver_version"] == "580.65.06"
    assert cp.park(42, timeout_s=2.5, gpu_bytes=8 * GIB) == Toggle(2.5, 8 * GIB)
    assert cp.resume(42, timeout_s=5) == Toggle(1.5, 8 * GIB)  # what the park moved
    assert cp.park(43, timeout_s=1) == Toggle(2.5, 3)  # the helper measured it
    cp.unlock(43)
    with pytest.raises(CheckpointFailed) as caught:
        cp.state(42)
    assert caught.value.step == "state" and caught.value.error_name == "CUDA_ERROR_UNKNOWN"
    calls = (tmp_path / "python.calls").read_text(encoding="utf-8").splitlines()
    module = "-m jupyter_dlinfra.checkpoint.cuda_helper"
    assert calls == [
        f"{module} version CUDA_VISIBLE_DEVICES=unset",
        f"{module} park 42 --timeout-ms 2500 CUDA_VISIBLE_DEVICES=unset",
        f"{module} resume 42 CUDA_VISIBLE_DEVICES=unset",
        f"{module} park 43 --timeout-ms 1000 --measure CUDA_VISIBLE_DEVICES=unset",
        f"{module} unlock 43 CUDA_VISIBLE_DEVICES=unset",
        f"{module} state 42 CUDA_VISIBLE_DEVICES=unset",
    ]


def test_capability_refusals_say_what_to_do() -> None:
    ready = {
        "ok": True,
        "platform": "linux",
        "python": "/venv/bin/python",
        "driver_version": "580.65.06",
        "bindings_version": "13.0.3",
        "checkpoint_symbols": True,
        "cuda_version": 13000,
    }
    assert capability_refusal(ready) is None
    assert capability_refusal({**ready, "driver_version": "535.104.05", "cuda_version": 12020}) == (
        "CUDA checkpointing needs NVIDIA driver 570 or later; this node has 535.104.05"
    )
    unknown_driver = {**ready, "driver_version": None, "cuda_version": 12040}
    assert "supports CUDA 12.4" in str(capability_refusal(unknown_driver))
    no_bindings = {**ready, "bindings_version": None, "bindings_error": "NO_CUDA_BINDINGS: ..."}
    assert capability_refusal(no_bindings) == (
        "CUDA checkpointing needs the cuda-bindings package (pip install "
        "'jupyter-dlinfra[cuda]'), which /venv/bin/python does not have"
    )
    no_driver = {
        **no_bindings,
        "driver_version": None,
        "nvml_error": "NVML Shared Library Not Found",
    }
    assert str(capability_refusal(no_driver)).startswith("no NVIDIA driver on this node")
    old_bindings = {**ready, "bindings_version": "13.0.1"}
    assert "cuda-bindings 12.8 or later" in str(capability_refusal(old_bindings))
    assert "cuda-bindings 12.8 or later" in str(
        capability_refusal({**ready, "checkpoint_symbols": False})
    )
    ahead = {**ready, "driver_version": "575.51", "cuda_version": 12090}
    assert "cuda-bindings>=12.8,<13" in str(capability_refusal(ahead))
    assert capability_refusal({**ahead, "bindings_version": "12.9.4"}) is None
    assert "Linux only" in str(capability_refusal({**ready, "platform": "darwin"}))
    assert "could not tell" in str(capability_refusal({"ok": False, "error": "HELPER_TIMEOUT: x"}))


def test_a_helper_without_an_answer_is_reported_with_its_stderr() -> None:
    answer = parse_helper_output("", "Segmentation fault\n", -11)
    assert answer["ok"] is False and answer["code"] == "HELPER_ERROR"
    assert "status -11" in answer["error"] and "Segmentation fault" in answer["error"]
    good = parse_helper_output('noise\n{"ok": true, "state": "running"}\n', "", 0)
    assert good == {"ok": True, "state": "running"}


# -- the helper's sequences against a driver that answers as cuda.bindings does -----------------


class FakeEnum(int):
    """An enum member as cuda.bindings returns it: an int with a name."""

    def __new__(cls, value: int, name: str) -> FakeEnum:
        made = super().__new__(cls, value)
        made.name = name  # type: ignore[attr-defined]
        return made


class FakeDriver:
    """``cuda.bindings.driver`` for one process: calls return ``(CUresult, *values)``."""

    class CUresult:
        CUDA_SUCCESS = FakeEnum(0, "CUDA_SUCCESS")
        CUDA_ERROR_INVALID_VALUE = FakeEnum(1, "CUDA_ERROR_INVALID_VALUE")
        CUDA_ERROR_NOT_INITIALIZED = FakeEnum(3, "CUDA_ERROR_NOT_INITIALIZED")
        CUDA_ERROR_NOT_READY = FakeEnum(600, "CUDA_ERROR_NOT_READY")
        CUDA_ERROR_NOT_SUPPORTED = FakeEnum(801, "CUDA_ERROR_NOT_SUPPORTED")
        CUDA_ERROR_ILLEGAL_STATE = FakeEnum(401, "CUDA_ERROR_ILLEGAL_STATE")

    class CUprocessState:
        CU_PROCESS_STATE_RUNNING = FakeEnum(0, "CU_PROCESS_STATE_RUNNING")
        CU_PROCESS_STATE_LOCKED = FakeEnum(1, "CU_PROCESS_STATE_LOCKED")
        CU_PROCESS_STATE_CHECKPOINTED = FakeEnum(2, "CU_PROCESS_STATE_CHECKPOINTED")
        CU_PROCESS_STATE_FAILED = FakeEnum(3, "CU_PROCESS_STATE_FAILED")

    class CUcheckpointLockArgs:
        timeoutMs = 0

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.current = 0  # running
        self.calls: list[tuple[Any, ...]] = []
        self.fail: dict[str, FakeEnum] = {}

    def _answer(self, call: str, pid: int, then: int | None) -> tuple[Any, ...]:
        if pid != self.pid:
            return (self.CUresult.CUDA_ERROR_INVALID_VALUE,)
        if call in self.fail:
            return (self.fail[call],)
        if then is not None:
            self.current = then
        return (self.CUresult.CUDA_SUCCESS,)

    def cuInit(self, flags: int) -> tuple[Any, ...]:
        self.calls.append(("init", flags))
        return (self.CUresult.CUDA_SUCCESS,)

    def cuCheckpointProcessGetState(self, pid: int) -> tuple[Any, ...]:
        if pid != self.pid:
            return (self.CUresult.CUDA_ERROR_NOT_INITIALIZED, None)
        return (self.CUresult.CUDA_SUCCESS, FakeEnum(self.current, "state"))

    def cuCheckpointProcessLock(self, pid: int, args: Any) -> tuple[Any, ...]:
        self.calls.append(("lock", pid, args.timeoutMs))
        return self._answer("lock", pid, 1)

    def cuCheckpointProcessCheckpoint(self, pid: int, args: Any) -> tuple[Any, ...]:
        self.calls.append(("checkpoint", pid, args))
        return self._answer("checkpoint", pid, 2)

    def cuCheckpointProcessRestore(self, pid: int, args: Any) -> tuple[Any, ...]:
        self.calls.append(("restore", pid, args))
        return self._answer("restore", pid, 1)

    def cuCheckpointProcessUnlock(self, pid: int, args: Any) -> tuple[Any, ...]:
        self.calls.append(("unlock", pid, args))
        return self._answer("unlock", pid, 0)

    def cuGetErrorName(self, err: Any) -> tuple[Any, bytes]:
        return (self.CUresult.CUDA_SUCCESS, err.name.encode())

    def cuGetErrorString(self, err: Any) -> tuple[Any, bytes]:
        return (self.CUresult.CUDA_SUCCESS, b"described by the driver")


@pytest.fixture
def fake() -> tuple[FakeDriver, cuda_helper.BindingsApi]:
    # the helper's own process stands in for the target: /proc knows it
    driver = FakeDriver(os.getpid())
    api = cuda_helper.BindingsApi(driver)
    api.init()
    return driver, api


def test_the_helper_parks_and_resumes_with_the_bindings_calls(
    fake: tuple[FakeDriver, cuda_helper.BindingsApi],
) -> None:
    driver, api = fake
    pid = driver.pid
    parked = cuda_helper.park(api, pid, timeout_ms=0)
    assert parked["ok"] and parked["state"] == "checkpointed"
    assert ("lock", pid, 1) in driver.calls  # a timeout of 0 would wait for ever
    resumed = cuda_helper.resume(api, pid)
    assert resumed["ok"] and resumed["state"] == "running"
    assert [call[0] for call in driver.calls] == ["init", "lock", "checkpoint", "restore", "unlock"]


def test_a_failed_checkpoint_is_unlocked_so_the_process_runs_on(
    fake: tuple[FakeDriver, cuda_helper.BindingsApi],
) -> None:
    driver, api = fake
    driver.fail["checkpoint"] = FakeDriver.CUresult.CUDA_ERROR_NOT_SUPPORTED
    answer = cuda_helper.park(api, driver.pid, timeout_ms=5000)
    assert answer["ok"] is False and answer["step"] == "checkpoint"
    assert answer["error"] == "CUDA_ERROR_NOT_SUPPORTED: described by the driver"
    assert answer["state"] == "running"
    assert "unlocked" in answer["note"]
    assert [call[0] for call in driver.calls][-1] == "unlock"


def test_a_lock_that_times_out_touches_nothing_more(
    fake: tuple[FakeDriver, cuda_helper.BindingsApi],
) -> None:
    driver, api = fake
    driver.fail["lock"] = FakeDriver.CUresult.CUDA_ERROR_NOT_READY
    answer = cuda_helper.park(api, driver.pid, timeout_ms=5000)
    assert answer["step"] == "lock" and answer["code"] == "CUDA_ERROR_NOT_READY"
    assert answer["state"] == "running"
    assert [call[0] for call in driver.calls] == ["init", "lock"]


def test_a_resume_whose_unlock_failed_before_only_unlocks(
    fake: tuple[FakeDriver, cuda_helper.BindingsApi],
) -> None:
    driver, api = fake
    cuda_helper.park(api, driver.pid, timeout_ms=100)
    driver.fail["unlock"] = FakeDriver.CUresult.CUDA_ERROR_ILLEGAL_STATE
    first = cuda_helper.resume(api, driver.pid)
    assert first["step"] == "unlock" and first["state"] == "locked"
    del driver.fail["unlock"]
    second = cuda_helper.resume(api, driver.pid)
    assert second["ok"] and second["state"] == "running"
    assert [call[0] for call in driver.calls].count("restore") == 1


def test_the_helper_unlocks_a_locked_process_and_leaves_a_running_one(
    fake: tuple[FakeDriver, cuda_helper.BindingsApi],
) -> None:
    driver, api = fake
    assert cuda_helper.unlock(api, driver.pid)["ok"]
    assert [call[0] for call in driver.calls] == ["init"]
    driver.fail["checkpoint"] = FakeDriver.CUresult.CUDA_ERROR_NOT_SUPPORTED
    driver.fail["unlock"] = FakeDriver.CUresult.CUDA_ERROR_ILLEGAL_STATE
    answer = cuda_helper.park(api, driver.pid, timeout_ms=10)
    assert answer["state"] == "locked" and "unlocking it again failed too" in answer["note"]
    del driver.fail["unlock"]
    assert cuda_helper.unlock(api, driver.pid) == {
        "ok": True,
        "op": "unlock",
        "pid": driver.pid,
        "api": "cuda.bindings",
        "state": "running",
    }
    assert cuda_helper.state(api, driver.pid) == "running"


def test_the_helper_refuses_what_the_state_forbids(
    fake: tuple[FakeDriver, cuda_helper.BindingsApi],
) -> None:
    driver, api = fake
    assert cuda_helper.resume(api, driver.pid)["code"] == "CUDA_ERROR_ILLEGAL_STATE"
    other = driver.pid + 10**7  # no such process
    assert cuda_helper.state(api, other) == "none"
    assert cuda_helper.park(api, other, timeout_ms=1)["code"] == "NO_CUDA"
    assert [call[0] for call in driver.calls] == ["init"]


def test_a_driver_that_cannot_be_loaded_is_an_answer_too() -> None:
    def broken() -> cuda_helper.Api:
        raise cuda_helper.CudaCallError("NO_DRIVER", "no NVIDIA driver on this node")

    args = argparse.Namespace(op="park", pid=5, timeout_ms=10, measure=False)
    answer = cuda_helper.run(args, load=broken)
    assert answer["ok"] is False and answer["step"] == "init" and answer["code"] == "NO_DRIVER"


# -- the hardware benchmark, here ----------------------------------------------------------------


def test_the_benchmark_exits_2_with_one_line_here() -> None:
    done = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "park_resume.py"), "--sizes-gib", "1"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
        check=False,
    )
    assert done.returncode == 2, done.stdout + done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("park_resume: cannot run here: ")
    assert "Traceback" not in done.stdout + done.stderr
