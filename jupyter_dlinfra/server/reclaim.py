"""The reclaim loop: after each telemetry sample, judge this server's kernels and act.

Runs once per sample (the service's telemetry loop calls :meth:`Reclaimer.step`). Each pass:
attribute the sample to this server's kernels; advance their idle states in the store (one
transaction, with events); act on reclaims as the policy says; keep the coaching window and the
downsampled usage history. Only kernels of this server are judged: restarting or shutting one
down needs its kernel manager.
"""

from __future__ import annotations

import logging
import math
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from jupyter_dlinfra.core.books.idle import IdleBook, Reading, StoredPolicy, UsageBucket
from jupyter_dlinfra.core.books.usage_hours import UsageHours
from jupyter_dlinfra.core.errors import NotFound
from jupyter_dlinfra.core.idle import IdlePolicy, Phase, ReclaimAction, ReclaimPolicy, Transition
from jupyter_dlinfra.core.models import AllocationState, KernelRecord
from jupyter_dlinfra.core.outage import database_unavailable
from jupyter_dlinfra.kernel.coaching import CoachingSample, Hint, hints
from jupyter_dlinfra.server.attribution import Attributor, KernelUsage
from jupyter_dlinfra.server.calls import LedgerCalls
from jupyter_dlinfra.server.parking import Parker
from jupyter_dlinfra.server.sampling import Sampler
from jupyter_dlinfra.server.views import duration, iso

__all__ = [
    "Coach",
    "IdleView",
    "KernelControl",
    "PolicySource",
    "ReclaimSettings",
    "Reclaimer",
    "describe_idle",
]


#: how often the hours that ended are rolled up into the reports' history (seconds)
ROLL_UP_EVERY_S = 300.0


class KernelControl(Protocol):
    """What the reclaim loop needs from the server's kernel manager."""

    def executing(self, kernel_id: str) -> bool | None: ...

    def restart(self, kernel_id: str) -> Awaitable[None]: ...

    def shutdown(self, kernel_id: str) -> Awaitable[None]: ...

    def exists(self, kernel_id: str) -> bool: ...


@dataclass(frozen=True, kw_only=True)
class ReclaimSettings:
    #: seconds of usage history per stored row
    usage_bucket: float = 60.0
    #: seconds of usage history kept; 0 keeps none
    usage_retention: float = 7 * 86400.0
    #: seconds of the reports' hourly history kept; 0 keeps none
    report_retention: float = 400 * 86400.0
    #: seconds of samples behind the coaching hints


class PolicySource:
    """The policy in force: the one stored through the API, else the one from configuration."""

    def __init__(
        self,
        book: IdleBook,
        configured: ReclaimPolicy,
        groups_of: Callable[[str], Iterable[str]],
    ) -> None:
        self.book = book
        self.configured = configured
        self.groups_of = groups_of

    def stored(self) -> StoredPolicy | None:
        return self.book.stored_policy()

    def current(self) -> ReclaimPolicy:
        stored = self.book.stored_policy()
        return stored.policy if stored is not None else self.configured

    def for_user(self, user: str, policy: ReclaimPolicy | None = None) -> IdlePolicy | None:
        return (policy or self.current()).for_user(user, self.groups_of(user))


def describe_idle(idle_s: float, policy: IdlePolicy) -> str:
    return f"idle for {duration(idle_s)} (every GPU under {policy.idle_util_percent:g} %)"


class Coach:
    """The recent samples of each kernel of this server that holds GPUs, and their hints."""

    def __init__(self, window: float) -> None:
        #: seconds of samples behind the hints
        self.window = window
        self._windows: dict[str, deque[CoachingSample]] = {}
        #: the latest reading and hints per kernel of this server that holds GPUs
        self.latest: dict[str, tuple[KernelUsage, list[Hint]]] = {}

    def observe(self, usages: list[KernelUsage]) -> None:
        holding = {u.kernel_id: u for u in usages if u.held}
        for kid in [k for k in self._windows if k not in holding]:
            del self._windows[kid]
        self.latest = {}
        for kid, u in holding.items():
            window = self._windows.setdefault(kid, deque())
            window.append(
                CoachingSample(
                    at=u.at,
                    gpu_util=u.gpu_util_mean,
                    memory_share=u.memory_share,
                    cpu_percent=u.cpu_percent or 0.0,
                    executing=u.executing,
                )
            )
            while window and window[0].at < u.at - self.window:
                window.popleft()
            self.latest[kid] = (u, hints(list(window)))


class IdleView:
    """Blocking: the idle states (with their deadlines) and hints, for the event stream."""

    def __init__(self, book: IdleBook, policies: PolicySource, coach: Coach) -> None:
        self.book = book
        self.policies = policies
        self.coach = coach

    def __call__(self, kernels: Mapping[str, KernelRecord]) -> dict[str, Any]:
        policy = self.policies.current()
        idle: dict[str, Any] = {}
        for kernel_id, state in self.book.states().items():
            kernel = kernels.get(kernel_id)
            if kernel is None or state.updated_at == 0.0:
                continue
            idle[kernel_id] = idle_json(state, self.policies.for_user(kernel.user, policy), iso)
        return {"idle": idle, "hints": hints_json(self.coach.latest)}


class Reclaimer:
    def __init__(
        self,
        *,
        calls: LedgerCalls,
        sampler: Sampler,
        book: IdleBook,
        policies: PolicySource,
        coach: Coach,
        control: KernelControl,
        settings: ReclaimSettings,
        server_id: str,
        log: logging.Logger,
        parker: Parker | None = None,
    ) -> None:
        """``sampler``: whose latest sample each pass judges; ``server_id``: this server's, whose
        kernels alone it judges."""
        self.calls = calls
        self.ledger = calls.ledger
        self.sampler = sampler
        self.book = book
        self.policies = policies
        self.coach = coach
        self.control = control
        self.parker = parker
        self.settings = settings
        self.server_id = server_id
        self.log = log
        self._attributor = Attributor()
        self._buckets: dict[str, UsageBucket] = {}
        self._last_prune = 0.0
        self.hours = UsageHours(book.store)
        self._last_roll_up = 0.0
        self._last_hours_prune = 0.0
        #: kernels judged at the last pass (their states must be forgotten when they stop)
        self._judged: set[str] = set()

    @property
    def latest(self) -> dict[str, tuple[KernelUsage, list[Hint]]]:
        """The latest reading and hints per kernel of this server that holds GPUs."""
        return self.coach.latest

    async def step(self) -> list[Transition]:
        calls = self.calls
        usages, mine = await calls.call(self._read)
        policy = await calls.call(self.policies.current)
        owners = {u.kernel_id: u.user for u in usages}

        def policy_for(kernel_id: str) -> IdlePolicy | None:
            return self.policies.for_user(owners.get(kernel_id, ""), policy)

        readings = [
            Reading(
                kernel_id=u.kernel_id,
                utilization=u.held_util_max or 0.0,
                at=u.at,
                allocation_id=u.allocation_id,
            )
            for u in usages
            if u.held and u.held_util_max is not None
        ]
        transitions: list[Transition] = []
        if readings or self._judged:
            # nothing held now and nothing held before: no need to take the write lock
            transitions = await calls.mutate(self.book.observe, readings, policy_for, scope=mine)
        self._judged = {r.kernel_id for r in readings}
        for t in transitions:
            if t.kind == Phase.RECLAIMED.value:
                usage = next(u for u in usages if u.kernel_id == t.kernel_id)
                applied = policy_for(t.kernel_id)
                if applied is not None:
                    try:
                        await self._reclaim(usage, t, applied)
                    except Exception as err:
                        if database_unavailable(err):
                            raise  # the sampling loop waits it out and says so once
                        self.log.exception("dlinfra: reclaiming kernel %s failed", t.kernel_id)
        self.coach.observe(usages)
        await calls.call(self._keep_history, usages)
        return transitions

    async def flush(self) -> None:
        """Write the open usage buckets (the server is stopping)."""
        open_buckets = list(self._buckets.values())
        self._buckets.clear()
        await self.calls.call(self.book.record_usage, open_buckets)

    # -- reading ---------------------------------------------------------------------------------

    def _read(self) -> tuple[list[KernelUsage], set[str]]:
        """This server's kernels that run, with what they hold and use; and the ids of all
        this server's kernels (whose idle states a pass may forget)."""
        ledger = self.ledger
        # this server's kernels, wherever they run (a gateway's pod kernels are on many nodes)
        known = ledger.kernels(server_id=self.server_id)
        kernels = [k for k in known if self.control.exists(k.kernel_id)]
        # their grants only: the queue (thousands, each explained) and the rest of the
        # cluster's grants are none of this server's reclaimer's business
        granted = {
            a.kernel_id: a
            for a in ledger.allocations(state=AllocationState.GRANTED, server_id=self.server_id)
            # a parked kernel's GPUs are not its own now: a borrower's load is not its use
            if not a.parked
        }
        executing = {k.kernel_id: self.control.executing(k.kernel_id) for k in kernels}
        usages = self._attributor.usage(kernels, granted, self.sampler.samples, executing=executing)
        return usages, {k.kernel_id for k in known}

    # -- acting ----------------------------------------------------------------------------------

    async def _reclaim(self, usage: KernelUsage, t: Transition, policy: IdlePolicy) -> None:
        calls = self.calls
        kid = t.kernel_id
        idle_s = float(t.detail.get("idle_s", 0.0))
        count = len(usage.held)
        gpus = "GPU was" if count == 1 else f"{count} GPUs were"
        why = describe_idle(idle_s, policy)
        if policy.action is ReclaimAction.NOTIFY:
            self.log.info("dlinfra: kernel %s would be reclaimed (notify only): %s", kid, why)
            return
        reason = f"reclaimed: {why}"
        fallback = ""
        if policy.action is ReclaimAction.PARK:
            if self.parker is None:
                fallback = "parking is not available on this server"
            else:
                parked = await self.parker.park(kid, reason=f"parked: {why}")
                if parked.parked:
                    return
                fallback = parked.reason or "it could not be parked"
            self.log.info("dlinfra: kernel %s could not be parked (%s): releasing", kid, fallback)
            reason = f"reclaimed: {why}; it could not be parked ({fallback})"
        await calls.mutate(self.ledger.release_kernel, kid, reason=reason)
        if policy.action is ReclaimAction.SHUTDOWN:
            self.log.info("dlinfra: shutting kernel %s down, %s", kid, why)
            if self.control.exists(kid):
                await self.control.shutdown(kid)
            return
        unparked = f" It could not be parked instead: {fallback}." if fallback else ""
        message = (
            f"dlinfra: this kernel's {gpus} reclaimed ({', '.join(usage.held)}): {why}.{unparked} "
            "The kernel was restarted without GPUs (CUDA_VISIBLE_DEVICES is empty) and its "
            "variables are gone. Ask for GPUs again with %gpu N."
        )
        await calls.call(self.book.set_message, kid, message)
        try:
            await calls.mutate(self.ledger.update_kernel, kid, keep_on_restart=False)
        except NotFound:
            return
        self.log.info("dlinfra: restarting kernel %s without GPUs, %s", kid, why)
        if self.control.exists(kid):
            await self.control.restart(kid)

    # -- coaching and history ----------------------------------------------------------------------

    def _keep_history(self, usages: list[KernelUsage]) -> None:
        self._keep_buckets(usages)
        self._roll_up_hours()

    def _roll_up_hours(self) -> None:
        """The reports' hourly history: the hours that ended are rolled up every few minutes
        (whichever server of the ledger gets there first), the oldest dropped hourly."""
        retention = self.settings.report_retention
        now = self.ledger.clock.now()
        if retention <= 0 or now - self._last_roll_up < ROLL_UP_EVERY_S:
            return
        self._last_roll_up = now
        idle_percent = self.policies.current().default.idle_util_percent
        self.hours.roll_up(
            now,
            bucket_s=self.settings.usage_bucket or 60.0,
            idle_percent=idle_percent,
            retention=retention,
        )
        if now - self._last_hours_prune > 3600:
            self._last_hours_prune = now
            self.hours.prune(now - retention)

    def _keep_buckets(self, usages: list[KernelUsage]) -> None:
        if self.settings.usage_retention <= 0 or self.settings.usage_bucket <= 0:
            return
        size = self.settings.usage_bucket
        done: list[UsageBucket] = []
        holding = {u.kernel_id: u for u in usages if u.held and u.held_util_max is not None}
        for kid in [k for k in self._buckets if k not in holding]:
            done.append(self._buckets.pop(kid))
        for kid, u in holding.items():
            start = math.floor(u.at / size) * size
            current = self._buckets.get(kid)
            if current is not None and current.bucket != start:
                done.append(self._buckets.pop(kid))
                current = None
            if current is None:
                current = self._buckets[kid] = UsageBucket(
                    kernel_id=kid, bucket=start, user=u.user, path=u.path, gpus=len(u.held)
                )
            memory = sum(u.memory_used.get(g, 0) for g in u.held)
            current.add(u.held_util_max or 0.0, memory)
        self.book.record_usage(done)
        now = self.ledger.clock.now()
        if now - self._last_prune > 3600:
            self._last_prune = now
            self.book.prune_usage(now - self.settings.usage_retention)


def idle_json(
    state: Any, policy: IdlePolicy | None, iso: Callable[[float | None], str | None]
) -> dict[str, Any]:
    """The idle state of one kernel as the API shows it."""
    if policy is None:
        return {"state": "exempt"}
    return {
        "state": state.phase.value,
        "idle_since": iso(state.idle_since),
        "warned_at": iso(state.warned_at),
        "warn_at": iso(state.warn_at(policy)),
        "reclaim_at": iso(state.reclaim_at(policy)),
        "hold_until": iso(state.hold_until),
        "keeps_left": state.keeps_left(policy),
        "action": policy.action.value,
        "last_util": state.last_util,
    }


def hints_json(found: Mapping[str, tuple[KernelUsage, list[Hint]]]) -> dict[str, Any]:
    return {
        kid: [{"code": h.code, "message": h.message} for h in hs] for kid, (_, hs) in found.items()
    }
