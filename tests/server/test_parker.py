"""The server's park and resume steps around a real ledger (SQLite) and the simulated
checkpointer: what is refused before anything is locked, a failed restore, and a server that
finishes what one before it left half done."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from jupyter_dlinfra.checkpoint.simulated import SimulatedCheckpointer
from jupyter_dlinfra.core.books.ledger import Ledger
from jupyter_dlinfra.core.books.parking import ParkBook
from jupyter_dlinfra.core.clock import ManualClock
from jupyter_dlinfra.core.models import AllocationState, Gpu, KernelRecord
from jupyter_dlinfra.core.store import Store
from jupyter_dlinfra.server import parking as parking_module
from jupyter_dlinfra.server.kernel_probe import ProbeResult
from jupyter_dlinfra.server.parking import Parker, ParkSettings
from jupyter_dlinfra.telemetry.base import GpuSample, ProcessUse

GIB = 1 << 30
PID = 4242


class Calls:
    """The part of LedgerCalls parking uses, called inline."""

    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger

    async def call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        return fn(*args, **kwargs)

    mutate = call

    async def wait_for_change(self, timeout: float) -> None:
        return None


class Kernels:
    def __init__(self) -> None:
        self.kernel_manager = object()
        self.busy = False
        self.restarted: list[str] = []

    def exists(self, kernel_id: str) -> bool:
        return True

    def executing(self, kernel_id: str) -> bool | None:
        return self.busy

    async def restart(self, kernel_id: str) -> None:
        self.restarted.append(kernel_id)


class Rig:
    def __init__(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        self.store = Store(f"sqlite:///{tmp_path}/ledger.db")
        self.ledger = Ledger(self.store, ManualClock())
        gpus = [
            Gpu(uuid=f"GPU-{i}", node="n1", index=i, model="A100", memory_bytes=80 * GIB)
            for i in range(2)
        ]
        self.ledger.sync_inventory("n1", gpus)
        self.ledger.register_kernel(
            KernelRecord(kernel_id="k1", user="ann", node="n1", server_id="s", pid=PID),
            token_hash="h",
        )
        self.alloc = self.ledger.request(kernel_id="k1", count=2)
        self.control = tmp_path / "checkpoint.json"
        self.checkpointer = SimulatedCheckpointer(
            control_file=self.control, available_memory=lambda: 64 * GIB
        )
        self.kernels = Kernels()
        self.samples: dict[str, GpuSample] = {
            u: GpuSample(
                uuid=u,
                at=0.0,
                utilization_percent=0.0,
                memory_used_bytes=GIB,
                memory_total_bytes=80 * GIB,
            )
            for u in self.alloc.gpus
        }
        self.told: list[tuple[str, str]] = []
        self.blockers: list[str] = []
        monkeypatch.setattr(parking_module, "probe_for_parking", self._probe)
        self.parker = self.make()

    async def _probe(self, _km: Any, _kid: str, *, timeout_s: float) -> ProbeResult:
        return ProbeResult(ok=True, blockers=list(self.blockers))

    async def _tell(self, kernel_id: str, message: str) -> None:
        self.told.append((kernel_id, message))

    def make(self, limit: int = 8 * GIB) -> Parker:
        return Parker(
            calls=Calls(self.ledger),  # type: ignore[arg-type]
            checkpointer=self.checkpointer,
            kernels=self.kernels,
            samples=lambda: self.samples,
            # the fake kernel's status is what the test sets: nothing to settle
            settings=ParkSettings(host_memory_limit=limit, cell_settle_s=0.0),
            node="n1",
            log=logging.getLogger("test"),
            tell=self._tell,
        )

    def control_file(self, **doc: Any) -> None:
        self.control.write_text(json.dumps(doc))


@pytest.fixture
def rig(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Rig:
    return Rig(tmp_path, monkeypatch)


async def test_a_park_writes_its_steps_and_the_resume_restores(rig: Rig) -> None:
    done = await rig.parker.park("k1", reason="parked: test")
    assert done.parked and done.allocation is not None
    assert done.allocation.park_state == "parked" and done.allocation.park_bytes == 2 * GIB
    assert rig.checkpointer.state(PID) == "checkpointed"
    resumed = await rig.parker.resume("k1")
    assert resumed is not None
    task = rig.parker._resumes.get(rig.alloc.id)
    if task is not None:
        await task
    assert rig.ledger.allocation(rig.alloc.id).park_state is None
    assert rig.checkpointer.state(PID) == "running"
    assert await rig.parker.resume("k1") is None  # nothing parked any more


@pytest.mark.parametrize(
    ("setup", "why"),
    [
        (lambda r: setattr(r.kernels, "busy", True), "a cell is running"),
        (lambda r: r.blockers.append("NCCL communicators are open"), "NCCL communicators"),
        (lambda r: r.control_file(refuse={"*": "driver too old"}), "driver too old"),
        (
            lambda r: r.samples.update(
                {u: _with_process(r.samples[u], PID + 1) for u in r.alloc.gpus}
            ),
            "no process of this kernel",
        ),
        (
            lambda r: r.samples.update(
                {u: _with_processes(r.samples[u], PID, PID + 1) for u in r.alloc.gpus}
            ),
            "",
        ),
    ],
)
async def test_refusals_come_before_anything_is_locked(
    rig: Rig, setup: Callable[[Rig], None], why: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    if not why:
        # a child of the kernel holds a CUDA context: the checkpointer refuses
        monkeypatch.setattr(parking_module.psutil, "Process", _FakeProcess)
        why = "child"
    setup(rig)
    outcome = await rig.parker.park("k1", reason="parked: test")
    assert not outcome.parked and why in (outcome.reason or ""), outcome.reason
    assert rig.checkpointer.state(PID) == "running"
    alloc = rig.ledger.allocation(rig.alloc.id)
    assert alloc.park_state is None and rig.ledger.held_on("n1") == set(alloc.gpus)


async def test_the_host_memory_cap_counts_what_is_parked_already(rig: Rig) -> None:
    small = rig.make(limit=GIB)
    outcome = await small.park("k1", reason="parked: test")
    assert not outcome.parked
    assert "capped at 1.0 GiB (DLInfra.park_host_memory)" in (outcome.reason or ""), outcome


async def test_a_failed_checkpoint_leaves_the_grant_as_it_was_and_says_why(rig: Rig) -> None:
    rig.control_file(fail_park=["*"])
    outcome = await rig.parker.park("k1", reason="parked: test")
    assert not outcome.parked and "the checkpoint failed" in (outcome.reason or "")
    assert rig.ledger.allocation(rig.alloc.id).park_state is None
    failed = [e for e in rig.ledger.events() if e.kind == "park_failed"]
    assert "simulated checkpoint failure" in str(failed[-1].detail["reason"])


async def test_a_failed_restore_ends_the_grant_and_restarts_the_kernel_without_gpus(
    rig: Rig,
) -> None:
    await rig.parker.park("k1", reason="parked: test")
    rig.control_file(break_restore=["*"])
    await rig.parker.resume("k1")
    task = rig.parker._resumes.get(rig.alloc.id)
    if task is not None:
        await task
    alloc = rig.ledger.allocation(rig.alloc.id)
    assert alloc.state is AllocationState.RELEASED
    assert "resuming its parked GPUs failed" in (alloc.end_reason or "")
    assert rig.kernels.restarted == ["k1"]
    assert "could not be restored" in rig.told[-1][1]
    assert rig.ledger.held_on("n1") == set()


async def test_a_new_server_completes_a_park_whose_process_was_checkpointed(rig: Rig) -> None:
    book = ParkBook(rig.ledger)
    book.begin(rig.alloc.id, reason="parked: test", gpu_bytes=2 * GIB)
    rig.checkpointer.park(PID, timeout_s=1.0)  # the old server died right after this
    await rig.make().recover(["k1"])
    alloc = rig.ledger.allocation(rig.alloc.id)
    assert alloc.park_state == "parked" and alloc.park_bytes == 2 * GIB


async def test_a_new_server_abandons_a_park_that_did_not_happen_and_unlocks(rig: Rig) -> None:
    book = ParkBook(rig.ledger)
    book.begin(rig.alloc.id, reason="parked: test", gpu_bytes=2 * GIB)
    rig.control_file(stuck_locked=["*"])
    with pytest.raises(Exception, match="simulated checkpoint failure"):
        rig.checkpointer.park(PID, timeout_s=1.0)
    assert rig.checkpointer.state(PID) == "locked"
    rig.control_file()
    await rig.make().recover(["k1"])
    assert rig.checkpointer.state(PID) == "running"
    alloc = rig.ledger.allocation(rig.alloc.id)
    assert alloc.park_state is None and rig.ledger.held_on("n1") == set(alloc.gpus)


async def test_a_new_server_carries_a_resume_on(rig: Rig) -> None:
    await rig.parker.park("k1", reason="parked: test")
    ParkBook(rig.ledger).resume(rig.alloc.id)  # the old server died before the restore
    parker = rig.make()
    await parker.recover(["k1"])
    task = parker._resumes.get(rig.alloc.id)
    if task is not None:
        await task
    assert rig.ledger.allocation(rig.alloc.id).park_state is None
    assert rig.checkpointer.state(PID) == "running"


def _with_process(sample: GpuSample, pid: int) -> GpuSample:
    return _with_processes(sample, pid)


def _with_processes(sample: GpuSample, *pids: int) -> GpuSample:
    return GpuSample(
        uuid=sample.uuid,
        at=sample.at,
        utilization_percent=sample.utilization_percent,
        memory_used_bytes=sample.memory_used_bytes,
        memory_total_bytes=sample.memory_total_bytes,
        processes=tuple(ProcessUse(pid=p, memory_used_bytes=GIB // 2) for p in pids),
    )


class _Proc:
    def __init__(self, pid: int) -> None:
        self.pid = pid


class _FakeProcess:
    """The kernel's process, whose one child is PID + 1."""

    def __init__(self, pid: int) -> None:
        self.pid = pid

    def children(self, recursive: bool = False) -> list[_Proc]:
        return [_Proc(PID + 1)]


class _StartsACell(SimulatedCheckpointer):
    """A cell starts in the kernel while its checkpoint runs."""

    def __init__(self, kernels: Kernels, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.kernels = kernels

    def park(self, pid: int, *, timeout_s: float, gpu_bytes: int | None = None) -> Any:
        done = super().park(pid, timeout_s=timeout_s, gpu_bytes=gpu_bytes)
        self.kernels.busy = True
        return done


async def test_a_cell_started_during_the_checkpoint_gets_its_gpus_back_at_once(
    rig: Rig,
) -> None:
    import asyncio

    rig.checkpointer = _StartsACell(rig.kernels, available_memory=lambda: 64 * GIB)
    parker = rig.make()
    outcome = await parker.park("k1", reason="parked: test")
    assert outcome.parked
    for _ in range(50):  # the resume runs on the event loop, soon after
        await asyncio.sleep(0)
        task = parker._resumes.get(rig.alloc.id)
        if task is not None:
            await task
            break
    assert rig.ledger.allocation(rig.alloc.id).park_state is None
    assert rig.checkpointer.state(PID) == "running"
