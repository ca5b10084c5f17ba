"""Parking this server's kernels: checkpoint an idle kernel's GPU memory to the host and lend its
GPUs; restore it when its next cell runs.

Park, in order: the grant must be a kernel's of this node; the kernel is asked (a silent request,
``kernel_probe.py``) to empty PyTorch's cache and to say what the driver cannot checkpoint
(NCCL, ...); the telemetry's processes give the CUDA processes of its tree and their footprint;
the checkpointer and the host-memory cap may refuse. Only then is ``parking`` written, the
process locked and checkpointed, and ``parked`` written (the GPUs are lent from then on). Any
refusal or failure leaves the grant as it was and says why: the caller (the reclaim loop) falls
back to its other action.

Resume: ``resuming`` is written (loans are preempted); once the pass gave the GPUs back
(``restoring``), the process is restored and ``resumed`` written. A restore that fails ends the
grant and restarts the kernel without GPUs, with the reason kept for its next cell. A server
that starts finishes what one before it left half done (:meth:`Parker.recover`).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import psutil

from jupyter_dlinfra.checkpoint.base import Checkpointer, CheckpointFailed, format_bytes
from jupyter_dlinfra.core.books.parking import ParkBook
from jupyter_dlinfra.core.errors import Conflict, NotFound
from jupyter_dlinfra.core.models import Allocation, AllocationState, KernelRecord
from jupyter_dlinfra.server.calls import LedgerCalls
from jupyter_dlinfra.server.kernel_probe import probe_for_parking
from jupyter_dlinfra.telemetry.base import GpuSample

__all__ = ["ParkOutcome", "ParkSettings", "Parker"]

#: how often a resume looks whether its loans have ended (seconds)
RESUME_POLL_S = 0.25
#: how often a park looks again at a kernel's status that says busy (seconds)
CELL_POLL_S = 0.05


class KernelHands(Protocol):
    """What parking needs of the server's kernel manager."""

    @property
    def kernel_manager(self) -> Any: ...

    def exists(self, kernel_id: str) -> bool: ...

    def executing(self, kernel_id: str) -> bool | None: ...

    def restart(self, kernel_id: str) -> Awaitable[None]: ...


@dataclass(frozen=True, kw_only=True)
class ParkSettings:
    #: bytes of host memory this node keeps for its parked kernels, all together
    host_memory_limit: int
    #: seconds a lock + checkpoint, or a restore + unlock, may take
    timeout_s: float = 300.0
    #: seconds the kernel has to answer the question before a park
    probe_timeout_s: float = 10.0
    #: seconds the kernel's status may still say busy after answering (its idle status comes
    #: on another channel, after the answer) before a running cell is believed
    cell_settle_s: float = 2.0


@dataclass(frozen=True)
class ParkOutcome:
    parked: bool
    #: why it was not parked, in words
    reason: str | None = None
    allocation: Allocation | None = None


class Parker:
    def __init__(
        self,
        *,
        calls: LedgerCalls,
        checkpointer: Checkpointer,
        kernels: KernelHands,
        samples: Callable[[], Mapping[str, GpuSample]],
        settings: ParkSettings,
        node: str,
        log: logging.Logger,
        tell: Callable[[str, str], Awaitable[None]],
    ) -> None:
        """``samples()``: the latest telemetry, by GPU; ``tell(kernel_id, message)``: keep a
        message for the kernel's next cell."""
        self.calls = calls
        self.book = ParkBook(calls.ledger)
        self.checkpointer = checkpointer
        self.kernels = kernels
        self.samples = samples
        self.settings = settings
        self.node = node
        self.log = log
        self.tell = tell
        self._resumes: dict[int, asyncio.Task[Allocation | None]] = {}
        #: one park or resume at a time per kernel
        self._locks: dict[str, asyncio.Lock] = {}

    # -- park ------------------------------------------------------------------------------------

    async def park(
        self, kernel_id: str, *, reason: str, prepared: Mapping[str, Any] | None = None
    ) -> ParkOutcome:
        """Park the kernel's grant, or say why not (nothing changed then). ``prepared``: the
        kernel's own answer to the question a park asks (``%gpu park`` runs in the kernel,
        whose cell waits for this call: it cannot be asked, and no CUDA call runs meanwhile)."""
        async with self._lock(kernel_id):
            try:
                return await self._park(kernel_id, reason, prepared)
            except (NotFound, Conflict) as err:
                return ParkOutcome(False, str(err))

    async def _park(
        self, kernel_id: str, reason: str, prepared: Mapping[str, Any] | None
    ) -> ParkOutcome:
        calls = self.calls
        record: KernelRecord = await calls.call(calls.ledger.kernel, kernel_id)
        alloc = await self._granted(kernel_id, None)
        if alloc is None:
            return ParkOutcome(False, "this kernel holds no GPUs to park")
        why = self._local(record)
        if why is not None:
            return ParkOutcome(False, why, alloc)
        assert record.pid is not None
        if prepared is not None:
            blockers = [str(b) for b in prepared.get("blockers") or ()]
        else:
            if self.kernels.executing(kernel_id):
                return ParkOutcome(
                    False, "a cell is running: a kernel is parked between cells", alloc
                )
            probe = await probe_for_parking(
                self.kernels.kernel_manager, kernel_id, timeout_s=self.settings.probe_timeout_s
            )
            if not probe.ok:
                return ParkOutcome(False, probe.reason, alloc)
            blockers = probe.blockers
        if blockers:
            return ParkOutcome(False, "; ".join(blockers), alloc)
        cuda_pids, footprint, listed = self._footprint(record.pid, alloc.gpus)
        if listed and not cuda_pids:
            return ParkOutcome(
                False,
                "the GPUs' process lists show no process of this kernel (it has no CUDA context, "
                "or this server sees another PID namespace): there is nothing to checkpoint",
                alloc,
            )
        parked = await calls.call(self.book.parked_bytes, self.node)
        limit = self.settings.host_memory_limit
        if parked + footprint > limit:
            return ParkOutcome(
                False,
                f"host memory for parked kernels on {self.node} is capped at "
                f"{format_bytes(limit)} (DLInfra.park_host_memory) and {format_bytes(parked)} "
                f"are taken: this kernel's {format_bytes(footprint)} do not fit",
                alloc,
            )
        refusal = await asyncio.to_thread(
            self.checkpointer.refusal, record.pid, cuda_pids, footprint
        )
        if refusal is not None:
            return ParkOutcome(False, refusal, alloc)
        await calls.mutate(self.book.begin, alloc.id, reason=reason, gpu_bytes=footprint)
        if prepared is None and await self._cell_running(kernel_id):
            # a cell started since the kernel answered: its CUDA calls would wait for a resume
            await calls.mutate(self.book.abandon, alloc.id, why="a cell started")
            return ParkOutcome(False, "a cell started: a kernel is parked between cells", alloc)
        try:
            toggle = await asyncio.to_thread(
                self.checkpointer.park, record.pid, timeout_s=self.settings.timeout_s
            )
        except CheckpointFailed as err:
            await calls.mutate(self.book.abandon, alloc.id, why=str(err))
            return ParkOutcome(False, f"the checkpoint failed: {err}", alloc)
        size = toggle.gpu_bytes or footprint
        done = await calls.mutate(
            self.book.parked, alloc.id, gpu_bytes=size, seconds=toggle.seconds
        )
        self.log.info(
            "dlinfra: parked kernel %s (%s of GPU memory in %.1f s): %s",
            kernel_id,
            format_bytes(size),
            toggle.seconds,
            reason,
        )
        if prepared is None and await self._cell_running(kernel_id):
            # a cell started while the checkpoint ran, after its own look found nothing parked:
            # its CUDA calls wait on the lock, so its GPUs come back now, not at its next cell
            asyncio.get_running_loop().call_soon(self._resume_soon, kernel_id)
        return ParkOutcome(True, None, done)

    async def _cell_running(self, kernel_id: str) -> bool:
        """Whether a cell runs in the kernel, once the status its answer left has settled."""
        deadline = time.monotonic() + self.settings.cell_settle_s
        while self.kernels.executing(kernel_id):
            if time.monotonic() >= deadline:
                return True
            await asyncio.sleep(CELL_POLL_S)
        return False

    def _resume_soon(self, kernel_id: str) -> None:
        task = asyncio.ensure_future(self.resume(kernel_id))
        task.add_done_callback(functools.partial(self._resumed_soon, kernel_id))

    def _resumed_soon(self, kernel_id: str, task: asyncio.Future[Allocation | None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            self.log.error("dlinfra: resuming kernel %s: %s", kernel_id, task.exception())

    def _local(self, record: KernelRecord) -> str | None:
        if record.node != self.node or record.pid is None:
            return (
                "parking needs the kernel's process on this server's machine; kernels in pods "
                "or on other nodes are not parked"
            )
        if not self.kernels.exists(record.kernel_id):
            return "the kernel is not running on this server"
        return None

    def _footprint(self, pid: int, gpus: tuple[str, ...]) -> tuple[list[int], int, bool]:
        """The processes of the kernel's tree that hold memory on its GPUs, how much they hold
        (without per-process readings, as on simulated GPUs: the GPUs' memory in use), and
        whether the GPUs list their processes at all."""
        try:
            root = psutil.Process(pid)
            tree = {pid, *(c.pid for c in root.children(recursive=True))}
        except psutil.Error:
            tree = {pid}
        samples = self.samples()
        pids: set[int] = set()
        total = 0
        seen = False
        for uuid in gpus:
            sample = samples.get(uuid)
            if sample is None:
                continue
            if sample.processes:
                seen = True
                for proc in sample.processes:
                    if proc.pid in tree and proc.compute:
                        pids.add(proc.pid)
                        total += proc.memory_used_bytes
        if not seen:
            total = sum(samples[u].memory_used_bytes for u in gpus if u in samples)
        return sorted(pids), total, seen

    # -- resume ----------------------------------------------------------------------------------

    async def resume(self, kernel_id: str) -> Allocation | None:
        """Start (or follow) the resume of the kernel's parked grant; the grant as it is now,
        None when it has none parked. The restore itself runs in the background once the loans
        on its GPUs ended; the caller polls the allocation."""
        async with self._lock(kernel_id):  # a park under way ends first
            alloc = await self._granted(kernel_id, "parked", "resuming", "restoring")
            if alloc is None:
                return None
            if alloc.park_state == "parked":
                alloc = await self.calls.mutate(self.book.resume, alloc.id)
        task = self._resumes.get(alloc.id)
        if task is None or task.done():
            task = self._resumes[alloc.id] = asyncio.create_task(self._finish(kernel_id, alloc.id))
            task.add_done_callback(functools.partial(self._forget_resume, alloc.id))
        return alloc

    def _forget_resume(self, allocation_id: int, task: asyncio.Task[Allocation | None]) -> None:
        self._resumes.pop(allocation_id, None)
        if not task.cancelled() and task.exception() is not None:
            self.log.error("dlinfra: resuming allocation %s: %s", allocation_id, task.exception())

    async def _finish(self, kernel_id: str, allocation_id: int) -> Allocation | None:
        """Wait for the GPUs to come back, then restore the process."""
        calls = self.calls
        while True:
            alloc: Allocation = await calls.call(calls.ledger.allocation, allocation_id)
            if not alloc.state.active or alloc.park_state is None:
                return alloc
            if alloc.park_state == "restoring":
                break
            await calls.wait_for_change(RESUME_POLL_S)
        async with self._lock(kernel_id):
            return await self._restore(kernel_id, alloc)

    async def _restore(self, kernel_id: str, alloc: Allocation) -> Allocation | None:
        calls = self.calls
        record: KernelRecord = await calls.call(calls.ledger.kernel, kernel_id)
        try:
            if record.pid is None:
                raise CheckpointFailed(0, "restore", "the kernel's process is not known")
            toggle = await asyncio.to_thread(
                self.checkpointer.resume, record.pid, timeout_s=self.settings.timeout_s
            )
        except CheckpointFailed as err:
            self.log.error("dlinfra: resuming kernel %s failed: %s", kernel_id, err)
            ended = await calls.mutate(self.book.restore_failed, alloc.id, why=str(err))
            await self._restart_without_gpus(kernel_id, str(err))
            return ended
        done = await calls.mutate(self.book.resumed, alloc.id, seconds=toggle.seconds)
        self.log.info("dlinfra: resumed kernel %s in %.1f s", kernel_id, toggle.seconds)
        return done

    async def _restart_without_gpus(self, kernel_id: str, why: str) -> None:
        await self.tell(
            kernel_id,
            f"dlinfra: this kernel's parked GPUs could not be restored ({why}). The kernel was "
            "restarted without GPUs and its variables are gone. Ask for GPUs again with %gpu N.",
        )
        try:
            await self.calls.mutate(
                self.calls.ledger.update_kernel, kernel_id, keep_on_restart=False
            )
        except NotFound:
            return
        if self.kernels.exists(kernel_id):
            await self.kernels.restart(kernel_id)

    # -- start-up --------------------------------------------------------------------------------

    async def recover(self, kernel_ids: list[str]) -> None:
        """Finish the parks and resumes a server before this one left half done: a park whose
        process is checkpointed is completed, any other abandoned (the process is unlocked if
        need be); a resume under way is carried on."""
        for alloc in await self.calls.call(self.book.in_progress, kernel_ids):
            lock = self._lock(alloc.kernel_id)
            if lock.locked() or alloc.id in self._resumes:
                continue  # under way in this server
            try:
                if alloc.park_state == "parking":
                    async with lock:
                        await self._recover(alloc)
                else:
                    await self._recover(alloc)
            except Exception:
                self.log.exception("dlinfra: finishing the park of kernel %s", alloc.kernel_id)

    async def _recover(self, alloc: Allocation) -> None:
        calls = self.calls
        alloc = await calls.call(calls.ledger.allocation, alloc.id)  # as it is now
        if alloc.park_state is None or not alloc.state.active:
            return
        record: KernelRecord = await calls.call(calls.ledger.kernel, alloc.kernel_id)
        pid = record.pid
        state = "none" if pid is None else await asyncio.to_thread(self.checkpointer.state, pid)
        if alloc.park_state == "parking":
            if state == "checkpointed":
                await calls.mutate(
                    self.book.parked, alloc.id, gpu_bytes=alloc.park_bytes or 0, seconds=0.0
                )
                return
            if state == "locked" and pid is not None:
                await asyncio.to_thread(self.checkpointer.unlock, pid)
            await calls.mutate(
                self.book.abandon,
                alloc.id,
                why="the park was interrupted before its checkpoint completed (the server or "
                "its database failed)",
            )
        elif alloc.park_state in ("resuming", "restoring"):
            if alloc.park_state == "restoring" and state == "running":
                await calls.mutate(self.book.resumed, alloc.id, seconds=0.0)
                return
            await self.resume(alloc.kernel_id)

    # -- internals -------------------------------------------------------------------------------

    def _lock(self, kernel_id: str) -> asyncio.Lock:
        return self._locks.setdefault(kernel_id, asyncio.Lock())

    async def _granted(self, kernel_id: str, *park_states: str | None) -> Allocation | None:
        """The kernel's grant in one of ``park_states`` (None: not parked)."""
        mine = await self.calls.call(
            self.calls.ledger.allocations, kernel_id=kernel_id, state=AllocationState.GRANTED
        )
        return next((a for a in mine if a.park_state in park_states), None)
