"""One per server process: the ledger, telemetry and the kernels of this server, kept in step.

Handlers and the provisioner call in here; nothing in here knows about HTTP. The service runs the
periodic loops (watching the ledger, sampling and judging idleness, reconciling, jobs) over parts
built before it (:mod:`jupyter_dlinfra.server.wiring`): the ledger calls and event stream
(:mod:`.calls`), the GPUs' readings (:mod:`.sampling`), the provisioner's port (:mod:`.launches`),
the reclaim loop (:mod:`.reclaim`) and the job loop (:mod:`.job_service`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from jupyter_dlinfra.core.books.idle import IdleBook
from jupyter_dlinfra.core.books.jobs import JOB_KERNEL_NAME
from jupyter_dlinfra.core.books.ledger import Ledger, LedgerChange
from jupyter_dlinfra.core.models import Allocation, KernelCaller, KernelRecord
from jupyter_dlinfra.core.outage import LedgerUnavailable, database_unavailable, describe
from jupyter_dlinfra.provisioning import LaunchPlan
from jupyter_dlinfra.server.calls import LedgerCalls
from jupyter_dlinfra.server.events import Broadcaster
from jupyter_dlinfra.server.job_service import JobService
from jupyter_dlinfra.server.launches import KernelLaunches
from jupyter_dlinfra.server.ledger_health import LedgerHealth, run_every
from jupyter_dlinfra.server.liveness import OwnerGrace, process_alive
from jupyter_dlinfra.server.reclaim import Reclaimer
from jupyter_dlinfra.server.sampling import Sampler
from jupyter_dlinfra.server.settings import ServiceSettings
from jupyter_dlinfra.telemetry import GpuSample, TelemetryProvider
from jupyter_dlinfra.telemetry.cluster import ClusterTelemetry

__all__ = ["GpuService", "ServiceSettings"]

T = TypeVar("T")


class GpuService:
    def __init__(
        self,
        *,
        calls: LedgerCalls,
        sampler: Sampler,
        launches: KernelLaunches,
        idle_book: IdleBook,
        reclaimer: Reclaimer,
        jobs: JobService | None,
        settings: ServiceSettings,
        local_kernel_exists: Callable[[str], bool],
        log: logging.Logger,
    ) -> None:
        """``jobs``: None where job submission is off; ``local_kernel_exists(kernel_id)``:
        whether this server's kernel manager runs that kernel."""
        self.calls = calls
        self.ledger: Ledger = calls.ledger
        self.sampler = sampler
        self.launches = launches
        self.idle_book = idle_book
        #: judges this server's kernels after each sample
        self.reclaimer = reclaimer
        #: starts and watches batch jobs
        self.jobs = jobs
        self.settings = settings
        self._local_kernel_exists = local_kernel_exists
        self.log = log
        self._seen_version = -1
        #: how long another server's dead kernel is left to that server to report
        self.owner_grace = OwnerGrace(settings.owner_report_grace, lambda: self.ledger.clock.now())
        self._tasks: list[asyncio.Task[None]] = []
        self._stopped = False
        self._jobs_lock = asyncio.Lock()

    # -- the parts, as the handlers and the metrics read them ---------------------------------

    @property
    def events(self) -> Broadcaster:
        return self.calls.events

    @property
    def health(self) -> LedgerHealth:
        """Whether the ledger's database answers, as the loops last found it."""
        return self.calls.health

    @property
    def provider(self) -> TelemetryProvider:
        return self.sampler.provider

    @property
    def cluster(self) -> ClusterTelemetry | None:
        """A gateway's cluster-wide GPU inventory and utilisation (Kubernetes)."""
        return self.sampler.cluster

    @property
    def samples(self) -> dict[str, GpuSample]:
        return self.sampler.samples

    @property
    def sampling_calls(self) -> int:
        """How many times the GPUs were sampled: once per interval, whatever the clients."""
        return self.sampler.sampling_calls

    # -- running blocking work -----------------------------------------------------------------

    async def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run ``fn`` on the pool; a database that does not answer raises LedgerUnavailable."""
        return await self.calls.call(fn, *args, **kwargs)

    async def mutate(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Like :meth:`call`, for ledger writes: waiters in this process hear of it at once."""
        return await self.calls.mutate(fn, *args, **kwargs)

    async def change(self, change: LedgerChange) -> Allocation:
        """A request or a release, on the ledger's writing thread (``LedgerCalls.change``)."""
        return await self.calls.change(change)

    async def from_memory(self, answer: Callable[[], T | None]) -> T | None:
        """An answer from the ledger's memory, on the event loop (``LedgerCalls.from_memory``);
        None: ask the pool."""
        return await self.calls.from_memory(answer)

    async def wait_for_change(self, timeout: float) -> None:
        """Return after the next ledger change (in any process sharing the store) or ``timeout``."""
        await self.calls.wait_for_change(timeout)

    # -- lifecycle -------------------------------------------------------------------------------

    def prepare(self) -> None:
        """Blocking start-up work, done before the server answers its first request."""
        if self.jobs is not None:
            self.jobs.start()
        try:
            self.sampler.sync_inventory()
        except Exception as err:  # a cluster API that is down now must not stop the gateway
            if self.cluster is None:
                raise
            self.log.error("dlinfra: could not read the cluster's GPUs yet: %s", err)
        # a server that starts has no earlier look: what it finds dead has most likely been dead
        # since its server went away, which is why this server is started again
        self._reconcile(wait_for_owners=False)
        self.sampler.sample()
        self._seen_version = self.ledger.version()
        self.events.prime()

    async def start(self) -> None:
        """Start the periodic loops (once the event loop runs)."""
        self._tasks = [
            asyncio.create_task(self._every(self.settings.watch_interval, self._watch)),
            asyncio.create_task(self._every(self.settings.telemetry_interval, self.sample)),
            asyncio.create_task(self._every(self.settings.reconcile_interval, self._maintain)),
            asyncio.create_task(self._every(self.settings.job_interval, self.jobs_pass)),
        ]
        self.events.start()

    async def stop_loops(self) -> None:
        """Cancel the periodic loops; the service still answers calls. Idempotent."""
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []

    async def stop(self) -> None:
        """End the event streams and the loops, then release the provider. Idempotent."""
        if self._stopped:
            return
        self._stopped = True
        await self.events.close()
        await self.stop_loops()
        try:
            await self.reclaimer.flush()
        except LedgerUnavailable as err:
            self.log.warning("dlinfra: could not write the last usage history: %s", err)
        except Exception:
            self.log.exception("dlinfra: could not write the last usage history")
        if self.jobs is not None:
            # the jobs keep running: the next server re-attaches to them
            try:
                await self.call(self.jobs.close)
            except LedgerUnavailable as err:
                # as after a crash: the next server adopts this one's jobs
                self.log.warning(
                    "dlinfra: stopping while the ledger's database is away (%s): this server's "
                    "queued jobs keep their GPU requests until another server adopts them",
                    describe(err),
                )
        await self.call(self.sampler.close_provider)
        if self.cluster is not None:
            await self.call(self.sampler.close_cluster)
        self.calls.shutdown()

    async def _every(self, interval: float, step: Callable[[], Awaitable[None]]) -> None:
        if interval <= 0:
            return
        # a failing pass must not end the loop; a database that is away is waited out
        await run_every(
            step, interval, name=step.__name__.lstrip("_"), health=self.health, log=self.log
        )

    async def _watch(self) -> None:
        version = await self.call(self.ledger.version)
        if version != self._seen_version:
            self._seen_version = version
            self.calls.notify()

    async def jobs_call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run a job-changing call between passes of the job loop, never during one."""
        async with self._jobs_lock:
            return await self.mutate(fn, *args, **kwargs)

    async def jobs_pass(self) -> None:
        """Start what may start, poll what runs (blocking work, off the event loop)."""
        if self.jobs is None:
            return
        # one pass at a time: two could start the same queued job twice
        async with self._jobs_lock:
            await self.mutate(self.jobs.step)

    async def _maintain(self) -> None:
        await self.sync_inventory()
        await self.reconcile()
        parker = self.reclaimer.parker
        if parker is not None:
            # a park or resume that a failure (the database, the server) left half done
            mine = await self.call(self.ledger.kernels, server_id=self.settings.server_id)
            await parker.recover([k.kernel_id for k in mine])

    async def sync_inventory(self) -> None:
        await self.mutate(self.sampler.sync_inventory)

    async def sample(self) -> None:
        """Read the GPUs once, then let the reclaim loop judge this server's kernels."""
        await self.call(self.sampler.sample)
        try:
            await self.reclaimer.step()
        except Exception as err:  # judging idleness must never stop the sampling
            if database_unavailable(err):
                raise  # the loop waits it out, and says so once
            self.log.exception("dlinfra: the idle-reclaim pass failed")
        self.events.poke()

    async def reconcile(self) -> list[str]:
        """Forget this node's kernels whose processes are gone; their GPUs go to the queue."""
        return await self.mutate(self._reconcile)

    def _reconcile(self, *, wait_for_owners: bool = True) -> list[str]:
        # a gateway's pod kernels run on every node of the cluster
        node = None if self.cluster is not None else self.settings.node

        def alive(record: KernelRecord) -> bool:
            return self._kernel_alive(record, wait_for_owners=wait_for_owners)

        try:
            dead = self.ledger.reconcile(node, alive, reason="kernel no longer exists")
        finally:
            self.owner_grace.end_pass()
        for kernel_id in dead:
            self.log.info("dlinfra: released the GPUs of vanished kernel %s", kernel_id)
        return dead

    def _kernel_alive(self, record: KernelRecord, *, wait_for_owners: bool = True) -> bool:
        if record.kernel_name == JOB_KERNEL_NAME:
            # a job's GPUs are held while the job lives, whichever server watches it
            return self.jobs.holder_alive(record) if self.jobs is not None else True
        if record.server_id == self.settings.server_id and self._local_kernel_exists(
            record.kernel_id
        ):
            return True
        if record.pid is None:
            # registered in pre_launch (its first launch or a restart), before the kernel
            # manager lists it or its pid is known
            launched = record.launched_at or record.created_at
            return self.ledger.clock.now() - launched < self.settings.launch_grace
        if process_alive(record):
            return True
        if record.server_id == self.settings.server_id or not wait_for_owners:
            return False
        return not self.owner_grace.over(record.kernel_id)

    # -- the provisioner's port (kept in :mod:`.launches`) ------------------------------------

    async def kernel_launching(
        self,
        *,
        kernel_id: str,
        kernel_name: str,
        path: str | None,
        gpus: int,
        model: str | None,
        owner: str | None = None,
    ) -> LaunchPlan:
        return await self.launches.kernel_launching(
            kernel_id=kernel_id,
            kernel_name=kernel_name,
            path=path,
            gpus=gpus,
            model=model,
            owner=owner,
        )

    async def kernel_started(self, *, kernel_id: str, pid: int) -> None:
        await self.launches.kernel_started(kernel_id=kernel_id, pid=pid)

    async def kernel_stopped(
        self, *, kernel_id: str, restart: bool, reason: str, pid: int | None = None
    ) -> None:
        await self.launches.kernel_stopped(
            kernel_id=kernel_id, restart=restart, reason=reason, pid=pid
        )

    # -- authentication of kernels -------------------------------------------------------------

    async def kernel_for_token(self, token: str) -> KernelCaller | None:
        return await self.launches.kernel_for_token(token)
