"""Attribution of GPU use to kernels through real process trees (no server needed)."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from jupyter_dlinfra.core.models import Allocation, AllocationState, KernelRecord
from jupyter_dlinfra.server.attribution import Attributor
from jupyter_dlinfra.telemetry import GpuSample, ProcessUse

SPAWN_CHILD = (
    "import subprocess, sys, time\n"
    "child = subprocess.Popen([sys.executable, '-c', {child!r}])\n"
    "print(child.pid, flush=True)\n"
    "time.sleep(120)\n"
)


@pytest.fixture
def tree() -> Iterator[tuple[int, int]]:
    """A 'kernel' process with one child (a data-loader worker, say) that burns CPU."""
    burn = "import time\nend = time.time() + 120\nwhile time.time() < end: pass\n"
    parent = subprocess.Popen(
        [sys.executable, "-c", SPAWN_CHILD.format(child=burn)], stdout=subprocess.PIPE, text=True
    )
    assert parent.stdout is not None
    child = int(parent.stdout.readline())
    yield parent.pid, child
    subprocess.run(["pkill", "-P", str(parent.pid)], check=False)
    parent.kill()
    parent.wait()


def _kernel(pid: int) -> KernelRecord:
    return KernelRecord(kernel_id="k1", user="alice", node="n", server_id="s", pid=pid)


def _grant(*gpus: str) -> Allocation:
    return Allocation(
        id=7,
        kernel_id="k1",
        user="alice",
        node="n",
        count=len(gpus),
        model=None,
        state=AllocationState.GRANTED,
        gpus=gpus,
        created_at=0.0,
    )


def _sample(uuid: str, util: float, used: int, *procs: tuple[int, int]) -> GpuSample:
    return GpuSample(
        uuid=uuid,
        at=100.0,
        utilization_percent=util,
        memory_used_bytes=used,
        memory_total_bytes=1000,
        processes=tuple(ProcessUse(pid=p, memory_used_bytes=m) for p, m in procs),
    )


def test_child_processes_count_and_other_processes_do_not(tree: tuple[int, int]) -> None:
    parent, child = tree
    samples = {
        # held: the child holds 300 bytes, a stranger 200
        "GPU-a": _sample("GPU-a", 40.0, 500, (child, 300), (999_999_99, 200)),
        # not held, but the kernel itself uses it: it shows, without counting as held
        "GPU-b": _sample("GPU-b", 10.0, 50, (parent, 50)),
        # neither held nor used by the kernel
        "GPU-c": _sample("GPU-c", 99.0, 900, (999_999_98, 900)),
    }
    [usage] = Attributor().usage([_kernel(parent)], {"k1": _grant("GPU-a")}, samples)
    assert usage.held == ("GPU-a",) and usage.allocation_id == 7
    assert usage.utilization == {"GPU-a": 40.0, "GPU-b": 10.0}
    assert usage.memory_used == {"GPU-a": 300, "GPU-b": 50}
    assert usage.held_util_max == 40.0
    assert usage.memory_share == pytest.approx(0.3)
    assert usage.processes == 2 and usage.at == 100.0


def test_without_per_process_readings_a_held_gpu_is_the_kernels(tree: tuple[int, int]) -> None:
    parent, _ = tree
    samples = {"GPU-a": _sample("GPU-a", 0.0, 640), "GPU-b": _sample("GPU-b", 50.0, 10)}
    [usage] = Attributor().usage([_kernel(parent)], {"k1": _grant("GPU-a")}, samples)
    assert usage.memory_used == {"GPU-a": 640} and usage.utilization == {"GPU-a": 0.0}
    assert usage.held_util_max == 0.0


def test_cpu_of_the_whole_tree_is_measured_between_readings(tree: tuple[int, int]) -> None:
    parent, _ = tree
    attributor = Attributor()
    samples = {"GPU-a": _sample("GPU-a", 5.0, 0)}
    deadline = time.monotonic() + 30
    cpu = 0.0
    while time.monotonic() < deadline:
        [usage] = attributor.usage([_kernel(parent)], {"k1": _grant("GPU-a")}, samples)
        cpu = usage.cpu_percent or 0.0
        if cpu > 50:  # the child spins a whole core; the parent sleeps
            break
        time.sleep(0.2)
    assert cpu > 50


def test_a_vanished_kernel_has_no_processes() -> None:
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    samples = {"GPU-a": _sample("GPU-a", 0.0, 0)}
    [usage] = Attributor().usage([_kernel(gone.pid)], {"k1": _grant("GPU-a")}, samples)
    assert usage.processes == 0 and usage.cpu_percent is None
    assert usage.utilization == {"GPU-a": 0.0}
