"""One per server process: the ledger, telemetry and the kernels of this server, kept in step.

Handlers and the provisioner call in here; nothing in here knows about HTTP. Ledger and telemetry
calls block (SQLite locks, NVML), so they run on a small thread pool, never on the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import Awaitable, Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any, TypeVar

from jupyter_dlinfra.core.books.idle import IdleBook
from jupyter_dlinfra.core.books.jobs import JOB_KERNEL_NAME
from jupyter_dlinfra.core.books.ledger import Ledger
from jupyter_dlinfra.core.books.tokens import hash_secret
from jupyter_dlinfra.core.errors import LedgerError, NotFound
from jupyter_dlinfra.core.models import Allocation, AllocationState, Gpu, KernelRecord
from jupyter_dlinfra.core.outage import LedgerUnavailable, database_unavailable, describe
from jupyter_dlinfra.provisioning import LaunchPlan
from jupyter_dlinfra.server.events import Broadcaster
from jupyter_dlinfra.server.ledger_health import LedgerHealth, run_every
from jupyter_dlinfra.server.liveness import process_alive, process_started_at
from jupyter_dlinfra.telemetry import GpuDevice, GpuSample, TelemetryProvider
from jupyter_dlinfra.telemetry.cluster import ClusterTelemetry

if TYPE_CHECKING:
    from jupyter_dlinfra.server.job_service import JobService
    from jupyter_dlinfra.server.reclaim import Reclaimer

__all__ = ["GpuService", "ServiceSettings", "hash_token"]

T = TypeVar("T")


def hash_token(token: str) -> str:
    return hash_secret(token)


@dataclass(frozen=True, kw_only=True)
class ServiceSettings:
    node: str
    user: str
    server_id: str
    #: a team gateway: callers are told apart by their tokens, not all taken as ``user``
    multi_user: bool = False
    telemetry_interval: float = 2.0
    reconcile_interval: float = 30.0
    watch_interval: float = 0.2
    #: a kernel of another server with no pid yet counts as alive for this long (seconds)
    launch_grace: float = 300.0
    hide_unallocated_gpus: bool = True
    #: changes closer together than this share one event-stream snapshot (seconds)
    events_debounce: float = 0.05
    #: an idle event stream gets a keepalive comment this often (seconds)
    events_keepalive: float = 15.0
    #: how often batch jobs are started and polled (seconds); 0: never
    job_interval: float = 1.0


class GpuService:
    def __init__(
        self,
        *,
        ledger: Ledger,
        provider: TelemetryProvider,
        settings: ServiceSettings,
        api_url: Callable[[], str],
        local_kernel_exists: Callable[[str], bool],
        log: logging.Logger,
    ) -> None:
        self.ledger = ledger
        self.provider = provider
        self.settings = settings
        self._api_url = api_url
        self._local_kernel_exists = local_kernel_exists
        self.log = log
        self.samples: dict[str, GpuSample] = {}
        self._executor = ThreadPoolExecutor(max_workers=4, thread_name_prefix="dlinfra")
        self._tick = asyncio.Event()
        self._seen_version = -1
        self._tasks: list[asyncio.Task[None]] = []
        self._stopped = False
        #: how many times provider.sample() ran: once per interval, whatever the clients
        self.sampling_calls = 0
        self.events = Broadcaster(
            self, debounce=settings.events_debounce, keepalive=settings.events_keepalive
        )
        #: whether the ledger's database answers, as the loops last found it
        self.health = LedgerHealth(log=log, clock=ledger.clock, on_change=self._announce_health)
        self.idle_book = IdleBook(ledger.store, ledger.clock)
        #: judges this server's kernels after each sample; set by the extension app
        self.reclaimer: Reclaimer | None = None
        #: starts and watches batch jobs; set by the extension app
        self.jobs: JobService | None = None
        #: a gateway's cluster-wide GPU inventory and utilisation (Kubernetes); set by the app
        self.cluster: ClusterTelemetry | None = None
        self._cluster_nodes: set[str] = set()
        self._jobs_lock = asyncio.Lock()

    # -- running blocking work -----------------------------------------------------------------

    async def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run ``fn`` on the pool; a database that does not answer raises LedgerUnavailable."""
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._executor, partial(fn, *args, **kwargs))
        except LedgerUnavailable:
            raise
        except Exception as err:
            # one domain error for every caller: handlers answer 503, loops back off
            if database_unavailable(err):
                raise LedgerUnavailable.from_error(err) from err
            raise

    async def mutate(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Like :meth:`call`, for ledger writes: waiters in this process hear of it at once."""
        try:
            return await self.call(fn, *args, **kwargs)
        finally:
            self._notify()

    def _notify(self) -> None:
        tick, self._tick = self._tick, asyncio.Event()
        tick.set()
        self.events.poke()

    async def wait_for_change(self, timeout: float) -> None:
        """Return after the next ledger change (in any process sharing the store) or ``timeout``."""
        tick = self._tick
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(tick.wait(), timeout)

    # -- lifecycle -------------------------------------------------------------------------------

    def prepare(self) -> None:
        """Blocking start-up work, done before the server answers its first request."""
        if self.jobs is not None:
            self.jobs.start()
        try:
            self._sync_inventory()
        except Exception as err:  # a cluster API that is down now must not stop the gateway
            if self.cluster is None:
                raise
            self.log.error("dlinfra: could not read the cluster's GPUs yet: %s", err)
        self._reconcile()
        self._sample()
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
        if self.reclaimer is not None:
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
        await self.call(self.provider.close)
        if self.cluster is not None:
            await self.call(self.cluster.close)
        self._executor.shutdown(wait=True)

    async def _every(self, interval: float, step: Callable[[], Awaitable[None]]) -> None:
        if interval <= 0:
            return
        # a failing pass must not end the loop; a database that is away is waited out
        await run_every(
            step, interval, name=step.__name__.lstrip("_"), health=self.health, log=self.log
        )

    def _announce_health(self, available: bool) -> None:
        """Tell the event stream's clients, who would otherwise see the view stop moving."""
        if available:
            self.events.publish_notice(
                "ledger_available", "info", "The GPU ledger's database answers again."
            )
            self.events.poke()
            return
        self.events.publish_notice(
            "ledger_unavailable",
            "error",
            "The GPU ledger's database is unreachable: GPU requests, releases and jobs fail "
            "until it is back, and this view is not updated. The server retries by itself.",
        )

    async def _watch(self) -> None:
        version = await self.call(self.ledger.version)
        if version != self._seen_version:
            self._seen_version = version
            self._notify()

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

    async def sync_inventory(self) -> None:
        await self.mutate(self._sync_inventory)

    def _sync_inventory(self) -> None:
        if self.cluster is None:
            self._sync_node(self.settings.node, self.provider.devices(), self.provider.simulated)
            return
        # a gateway on Kubernetes: every GPU node of the cluster; a node gone from it (or
        # cordoned) has its GPUs marked absent
        inventory = self.cluster.inventory()
        for gone in self._cluster_nodes - set(inventory):
            self.ledger.sync_inventory(gone, [])
        self._cluster_nodes = set(inventory)
        for node, found in inventory.items():
            self._sync_node(node, found, self.cluster.simulated)

    def _sync_node(self, node: str, devices: Sequence[GpuDevice], simulated: bool) -> None:
        gpus = [
            Gpu(
                uuid=d.uuid,
                node=node,
                index=d.index,
                model=d.model,
                memory_bytes=d.memory_total_bytes,
                simulated=simulated,
            )
            for d in devices
        ]
        self.ledger.sync_inventory(node, gpus)

    async def sample(self) -> None:
        """Read the GPUs once, then let the reclaim loop judge this server's kernels."""
        await self.call(self._sample)
        if self.reclaimer is not None:
            try:
                await self.reclaimer.step()
            except Exception as err:  # judging idleness must never stop the sampling
                if database_unavailable(err):
                    raise  # the loop waits it out, and says so once
                self.log.exception("dlinfra: the idle-reclaim pass failed")
        self.events.poke()

    def _sample(self) -> None:
        # only the sampling loop (or start-up) runs this, one call at a time
        self.sampling_calls += 1
        if self.cluster is None and self.provider.follows_ledger:
            # a simulator's GPUs work while someone holds them and idle otherwise; a ledger
            # that does not answer now leaves it with the holders it last heard of
            try:
                self.provider.note_held(self.ledger.holders().keys())
            except Exception:
                self.log.debug("dlinfra: no holders for the simulated GPUs", exc_info=True)
        source = self.cluster if self.cluster is not None else self.provider
        self.samples = {s.uuid: s for s in source.sample()}

    async def reconcile(self) -> list[str]:
        """Forget this node's kernels whose processes are gone; their GPUs go to the queue."""
        return await self.mutate(self._reconcile)

    def _reconcile(self) -> list[str]:
        # a gateway's pod kernels run on every node of the cluster
        node = None if self.cluster is not None else self.settings.node
        dead = self.ledger.reconcile(node, self._kernel_alive, reason="kernel no longer exists")
        for kernel_id in dead:
            self.log.info("dlinfra: released the GPUs of vanished kernel %s", kernel_id)
        return dead

    def _kernel_alive(self, record: KernelRecord) -> bool:
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
        return process_alive(record)

    # -- the provisioner's port --------------------------------------------------------------

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
        token = secrets.token_urlsafe(32)
        if kernel_id.startswith("job-"):
            # clients choose kernel ids: this one would take over a job's GPUs
            raise PermissionError(f"kernel id {kernel_id!r} is reserved for batch jobs")
        try:
            previous: KernelRecord | None = await self.call(self.ledger.kernel, kernel_id)
        except NotFound:
            previous = None
        user = owner or self.settings.user
        if owner is None and previous is not None and self.settings.multi_user:
            # a restart (by its owner, an admin or the reclaim loop) keeps the kernel's owner
            user = previous.user
        if previous is not None and (
            previous.user != user or previous.kernel_name == JOB_KERNEL_NAME
        ):
            raise PermissionError(
                f"kernel id {kernel_id!r} belongs to {previous.user} in the GPU ledger"
            )
        record = KernelRecord(
            kernel_id=kernel_id,
            user=user,
            node=self.settings.node,
            server_id=self.settings.server_id,
            kernel_name=kernel_name,
            path=path,
        )
        await self.mutate(self.ledger.register_kernel, record, token_hash=hash_token(token))
        env = {
            "DLINFRA_API_URL": self._api_url(),
            "DLINFRA_KERNEL_ID": kernel_id,
            "DLINFRA_TOKEN": token,
        }
        if previous is not None:
            # said once, at the first execution: why the kernel was restarted without its GPUs
            notice = await self.call(self.idle_book.take_message, kernel_id)
            if notice:
                env["DLINFRA_NOTICE"] = notice
        granted: Allocation | None = None
        summary = "no GPUs at launch"
        if previous is not None and previous.keep_on_restart:
            held = await self.call(self.ledger.allocations, kernel_id=kernel_id)
            granted = next((a for a in held if a.state is AllocationState.GRANTED), None)
            summary = "GPUs carried over the restart"
        elif gpus > 0:
            try:
                alloc = await self.mutate(
                    self.ledger.request, kernel_id=kernel_id, count=gpus, model=model
                )
            except LedgerError as err:
                env["DLINFRA_LAUNCH_ERROR"] = f"could not request {gpus} GPU(s) at launch: {err}"
                summary = env["DLINFRA_LAUNCH_ERROR"]
            else:
                if alloc.state is AllocationState.GRANTED:
                    granted = alloc
                else:
                    env["DLINFRA_PENDING_ALLOCATION"] = str(alloc.id)
                    summary = f"queued for {gpus} GPU(s) at position {alloc.position}"
        if granted is not None:
            env["CUDA_VISIBLE_DEVICES"] = ",".join(granted.gpus)
            env["DLINFRA_ALLOCATION"] = str(granted.id)
            summary = f"launched with GPUs {env['CUDA_VISIBLE_DEVICES']}"
        elif self.settings.hide_unallocated_gpus:
            # a kernel sees only GPUs the ledger gave it; an empty list hides all of them
            env["CUDA_VISIBLE_DEVICES"] = ""
        return LaunchPlan(env=env, summary=summary)

    async def kernel_started(self, *, kernel_id: str, pid: int) -> None:
        started = await self.call(process_started_at, pid)
        await self.mutate(self.ledger.update_kernel, kernel_id, pid=pid, pid_started_at=started)

    async def kernel_stopped(
        self, *, kernel_id: str, restart: bool, reason: str, pid: int | None = None
    ) -> None:
        try:
            record = await self.call(self.ledger.kernel, kernel_id)
            if record.server_id != self.settings.server_id or record.kernel_name == JOB_KERNEL_NAME:
                # not ours (a refused launch under a job's or another server's id): keep it
                return
            if (
                pid is not None
                and record.pid not in (None, pid)
                and await self.call(process_alive, record)
            ):
                # a process of this kernel that is not its current one: the current one may
                # hold the GPUs in CUDA_VISIBLE_DEVICES, so they stay in the ledger
                self.log.warning(
                    "dlinfra: process %s of kernel %s ended (%s) while its process %s runs; "
                    "its GPUs stay with the running process",
                    pid,
                    kernel_id,
                    reason,
                    record.pid,
                )
                return
            if not restart:
                await self.mutate(self.ledger.forget_kernel, kernel_id, reason=reason)
                return
            if not record.keep_on_restart:
                await self.mutate(self.ledger.release_kernel, kernel_id, reason=reason)
            # launching again from now: until the new process registers, a reconcile (another
            # server's too) must not take the ended one's pid for the kernel and forget it,
            # with the GPUs it carries over
            await self.mutate(
                self.ledger.update_kernel,
                kernel_id,
                pid=None,
                pid_started_at=None,
                launched_at=self.ledger.clock.now(),
            )
        except NotFound:
            pass
        except LedgerUnavailable as err:
            # reconciling releases them once the database is back and the kernel is gone
            self.log.warning(
                "dlinfra: could not release the GPUs of kernel %s (%s) now: %s",
                kernel_id,
                reason,
                describe(err),
            )
        except Exception:  # releasing must never break a kernel shutdown
            self.log.exception("dlinfra: could not release the GPUs of kernel %s", kernel_id)

    def idle_view(self, kernels: Mapping[str, KernelRecord]) -> dict[str, Any]:
        """Blocking: the idle states (with their deadlines) and hints, for the event stream."""
        from jupyter_dlinfra.server.reclaim import hints_json, idle_json
        from jupyter_dlinfra.server.views import iso

        reclaimer = self.reclaimer
        if reclaimer is None:
            return {"idle": {}, "hints": {}}
        policy = reclaimer.policies.current()
        idle: dict[str, Any] = {}
        for kernel_id, state in self.idle_book.states().items():
            kernel = kernels.get(kernel_id)
            if kernel is None or state.updated_at == 0.0:
                continue
            idle[kernel_id] = idle_json(
                state, reclaimer.policies.for_user(kernel.user, policy), iso
            )
        return {"idle": idle, "hints": hints_json(reclaimer.latest)}

    # -- authentication of kernels -------------------------------------------------------------

    async def kernel_for_token(self, token: str) -> KernelRecord | None:
        return await self.call(self.ledger.kernel_by_token_hash, hash_token(token))
