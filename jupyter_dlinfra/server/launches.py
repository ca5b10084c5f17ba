"""The provisioner's port: a kernel's launch, start and end, as the ledger sees them.

The provisioner (or the pod provisioner, through the pod kernels) calls these around each kernel
process: a launch registers the kernel with its token and asks for the GPUs of its kernelspec; a
stop releases them. Kernels authenticate to ``/dlinfra/api`` with that token.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable

from jupyter_dlinfra.core.books.idle import IdleBook
from jupyter_dlinfra.core.books.jobs import JOB_KERNEL_NAME
from jupyter_dlinfra.core.books.ledger import Ledger
from jupyter_dlinfra.core.books.tokens import hash_secret
from jupyter_dlinfra.core.errors import LedgerError, NotFound
from jupyter_dlinfra.core.models import Allocation, AllocationState, KernelCaller, KernelRecord
from jupyter_dlinfra.core.outage import LedgerUnavailable, describe
from jupyter_dlinfra.provisioning import LaunchPlan
from jupyter_dlinfra.server.calls import LedgerCalls
from jupyter_dlinfra.server.liveness import process_alive, process_started_at
from jupyter_dlinfra.server.settings import ServiceSettings

__all__ = ["KernelLaunches", "hash_token"]


def hash_token(token: str) -> str:
    return hash_secret(token)


class KernelLaunches:
    def __init__(
        self,
        *,
        calls: LedgerCalls,
        idle_book: IdleBook,
        settings: ServiceSettings,
        api_url: Callable[[], str],
        log: logging.Logger,
    ) -> None:
        """``api_url()``: where kernels reach this server's API (known once it listens)."""
        self.calls = calls
        self.ledger: Ledger = calls.ledger
        self.idle_book = idle_book
        self.settings = settings
        self._api_url = api_url
        self.log = log

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
            previous: KernelRecord | None = await self.calls.call(self.ledger.kernel, kernel_id)
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
        await self.calls.mutate(self.ledger.register_kernel, record, token_hash=hash_token(token))
        env = {
            "DLINFRA_API_URL": self._api_url(),
            "DLINFRA_KERNEL_ID": kernel_id,
            "DLINFRA_TOKEN": token,
        }
        if previous is not None:
            # said once, at the first execution: why the kernel was restarted without its GPUs
            notice = await self.calls.call(self.idle_book.take_message, kernel_id)
            if notice:
                env["DLINFRA_NOTICE"] = notice
        granted: Allocation | None = None
        summary = "no GPUs at launch"
        if previous is not None and previous.keep_on_restart:
            held = await self.calls.call(self.ledger.allocations, kernel_id=kernel_id)
            granted = next(
                (a for a in held if a.state is AllocationState.GRANTED and a.park_state is None),
                None,
            )
            summary = "GPUs carried over the restart"
        elif gpus > 0:
            try:
                alloc = await self.calls.mutate(
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
        started = await self.calls.call(process_started_at, pid)
        await self.calls.mutate(
            self.ledger.update_kernel, kernel_id, pid=pid, pid_started_at=started
        )

    async def kernel_stopped(
        self, *, kernel_id: str, restart: bool, reason: str, pid: int | None = None
    ) -> None:
        try:
            record = await self.calls.call(self.ledger.kernel, kernel_id)
            if record.server_id != self.settings.server_id or record.kernel_name == JOB_KERNEL_NAME:
                # not ours (a refused launch under a job's or another server's id): keep it
                return
            if (
                pid is not None
                and record.pid not in (None, pid)
                and await self.calls.call(process_alive, record)
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
                await self.calls.mutate(self.ledger.forget_kernel, kernel_id, reason=reason)
                return
            if not record.keep_on_restart:
                await self.calls.mutate(self.ledger.release_kernel, kernel_id, reason=reason)
            else:
                await self._end_parked(kernel_id, reason)
            # launching again from now: until the new process registers, a reconcile (another
            # server's too) must not take the ended one's pid for the kernel and forget it,
            # with the GPUs it carries over
            await self.calls.mutate(
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

    async def _end_parked(self, kernel_id: str, reason: str) -> None:
        """A parked grant's GPU memory lived in the process that ended: nothing to resume."""
        held = await self.calls.call(
            self.ledger.allocations, kernel_id=kernel_id, state=AllocationState.GRANTED
        )
        for alloc in held:
            if alloc.park_state is not None:
                await self.calls.mutate(
                    self.ledger.release,
                    alloc.id,
                    reason=f"its kernel's process ended ({reason}) while its GPU memory was parked",
                )

    async def kernel_for_token(self, token: str) -> KernelCaller | None:
        digest = hash_token(token)
        # every call of a kernel checks its token: from memory when the ledger keeps it
        return self.ledger.cached_caller(digest) or await self.calls.call(
            self.ledger.caller_by_token_hash, digest
        )
