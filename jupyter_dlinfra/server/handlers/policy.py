"""REST handlers of idle reclaim: the policy, its dry run, keeping GPUs, a kernel's usage."""

from __future__ import annotations

import math
from typing import Any

from jupyter_dlinfra.core.idle import Phase, ReclaimPolicy
from jupyter_dlinfra.core.models import AllocationState
from jupyter_dlinfra.core.replay import replay
from jupyter_dlinfra.server.errors import ApiError
from jupyter_dlinfra.server.handlers.base import DLInfraHandler, authorized
from jupyter_dlinfra.server.parsing import kernel_id_of, path_id, shown
from jupyter_dlinfra.server.reclaim import Reclaimer, hints_json, idle_json
from jupyter_dlinfra.server.views import iso, park_json

__all__ = [
    "KernelKeepHandler",
    "KernelUsageHandler",
    "MeHandler",
    "NoticeActionHandler",
    "PolicyHandler",
    "PolicySimulateHandler",
]

#: dry runs look back at most this far, whatever the history kept (hours)
MAX_SIMULATE_HOURS = 24 * 31
_CHANGES_SHOWN = 50


class _ReclaimBase(DLInfraHandler):
    @property
    def reclaimer(self) -> Reclaimer:
        reclaimer = self.service.reclaimer
        if reclaimer is None:
            raise ApiError(503, "idle reclaim is not running on this server", code="no_reclaim")
        return reclaimer

    def require_admin(self, what: str) -> None:
        if not self.is_admin():
            raise ApiError(
                403,
                f"only admins may {what}; admins are set by c.DLInfra.admin_users and "
                "c.DLInfra.admin_groups",
                code="not_admin",
            )

    async def idle_of(self, kernel_id: str, user: str) -> dict[str, Any] | None:
        reclaimer = self.reclaimer
        state = await self.service.call(reclaimer.book.state, kernel_id)
        policy = await self.service.call(reclaimer.policies.for_user, user)
        if policy is None:
            return {"state": "exempt"}
        if state.phase is Phase.ACTIVE and state.updated_at == 0.0:
            return None  # never judged: holds no GPUs, or not sampled yet
        return idle_json(state, policy, iso)


class MeHandler(_ReclaimBase):
    """Who the server thinks the caller is, and whether it may change the policy."""

    @authorized("read")
    async def get(self) -> None:
        user = self.person()
        directory = self.directory
        self.answer(
            {
                "user": user,
                "kernel_id": self.kernel_scope,
                "groups": list(directory.groups_of(user)),
                "admin": self.is_admin(),
            }
        )


class PolicyHandler(_ReclaimBase):
    @authorized("read")
    async def get(self) -> None:
        self.answer(await self._view())

    @authorized("write")
    async def put(self) -> None:
        self.require_admin("change the reclaim policy")
        body = self.json_body()
        policies = self.reclaimer.policies
        current = await self.service.call(policies.current)
        new = ReclaimPolicy.from_json(body, base=current)
        await self.service.mutate(
            self.reclaimer.book.set_policy, new, who=self.person(), previous=current
        )
        self.answer(await self._view())

    async def _view(self) -> dict[str, Any]:
        reclaimer = self.reclaimer
        stored = await self.service.call(reclaimer.policies.stored)
        changes = await self.service.call(reclaimer.book.policy_changes, _CHANGES_SHOWN)
        current = stored.policy if stored is not None else reclaimer.policies.configured
        return {
            "policy": current.to_json(),
            "source": "api" if stored is not None else "config",
            "updated_at": iso(stored.updated_at) if stored is not None else None,
            "updated_by": stored.updated_by if stored is not None else None,
            "configured": reclaimer.policies.configured.to_json(),
            "editable": self.is_admin(),
            "changes": [
                {
                    "seq": c.seq,
                    "at": iso(c.at),
                    "who": c.who,
                    "field": c.field,
                    "old": c.old,
                    "new": c.new,
                }
                for c in changes
            ],
        }


class PolicySimulateHandler(_ReclaimBase):
    """What a policy would have done over the recorded usage of the last hours."""

    @authorized("read")
    async def post(self) -> None:
        self.require_admin("run policy dry runs (they show every user's usage)")
        body = self.json_body()
        unknown = set(body) - {"hours", "policy"}
        if unknown:
            raise ApiError(
                400,
                f"unknown field(s): {shown(', '.join(sorted(unknown)))}; expected hours and policy",
                code="bad_field",
            )
        hours = body.get("hours", 24)
        if isinstance(hours, bool) or not isinstance(hours, (int, float)):
            raise ApiError(400, "hours must be a number, such as 24", code="bad_field")
        if not (math.isfinite(hours) and 0 < hours <= MAX_SIMULATE_HOURS):
            raise ApiError(
                400, f"hours must be more than 0 and at most {MAX_SIMULATE_HOURS}", code="bad_field"
            )
        reclaimer = self.reclaimer
        current = await self.service.call(reclaimer.policies.current)
        policy = current
        if body.get("policy") is not None:
            policy = ReclaimPolicy.from_json(body["policy"], base=current)
        now = self.service.ledger.clock.now()
        since = now - hours * 3600
        series = await self.service.call(reclaimer.book.usage_series, since)
        report = await self.service.call(
            replay,
            series,
            policy,
            groups_of=reclaimer.policies.groups_of,
            max_gap=max(300.0, 2 * reclaimer.settings.usage_bucket),
        )
        hit = sorted(
            (k for k in report.kernels if k.warnings or k.reclaims),
            key=lambda k: (-k.recovered_gpu_hours, k.kernel_id),
        )
        self.answer(
            {
                "hours": hours,
                "since": iso(since),
                "until": iso(now),
                "policy": policy.to_json(),
                "kernels_seen": len(report.kernels),
                "held_gpu_hours": round(report.held_gpu_hours, 4),
                "idle_gpu_hours": round(report.idle_gpu_hours, 4),
                "recovered_gpu_hours": round(report.recovered_gpu_hours, 4),
                "recovered_pct": round(report.recovered_pct, 2),
                "warnings": report.warnings,
                "reclaims": report.reclaims,
                "false_reclaims": report.false_reclaims,
                "kernels": [
                    {
                        "kernel_id": k.kernel_id,
                        "user": k.user,
                        "path": k.path,
                        "gpus": k.gpus,
                        "warnings": k.warnings,
                        "reclaims": k.reclaims,
                        "false_reclaims": k.false_reclaims,
                        "recovered_gpu_hours": round(k.recovered_gpu_hours, 4),
                        "idle_gpu_hours": round(k.idle_gpu_hours, 4),
                    }
                    for k in hit
                ],
            }
        )


class KernelKeepHandler(_ReclaimBase):
    """Keep a kernel's idle GPUs past the warning (the notification's button, %gpu keep)."""

    @authorized("write")
    async def post(self, kernel_id: str) -> None:
        kernel_id = kernel_id_of(kernel_id)
        if self.json_body():
            raise ApiError(400, "keep takes no fields: send {}", code="bad_field")
        self.answer(await self.keep(kernel_id))

    async def keep(self, kernel_id: str) -> dict[str, Any]:
        record = await self.service.call(self.service.ledger.kernel, kernel_id)
        self.own_kernel(kernel_id, record.user)
        reclaimer = self.reclaimer
        policy = await self.service.call(reclaimer.policies.for_user, record.user)
        kept = await self.service.mutate(reclaimer.book.keep, kernel_id, policy, who=self.person())
        assert policy is not None  # keep() refuses exempt kernels
        return {"kernel_id": kernel_id, **idle_json(kept, policy, iso)}


class NoticeActionHandler(KernelKeepHandler):
    """The buttons of notices: "keep" on an idle warning."""

    @authorized("write")
    async def post(self, notice_id: str, action_id: str) -> None:  # type: ignore[override]
        seq = path_id(notice_id, "notice")
        found = await self.service.call(self.service.ledger.events, since=seq - 1, limit=1)
        event = found[0] if found and found[0].seq == seq else None
        if event is None or event.kind != "idle_warning" or event.kernel_id is None:
            raise ApiError(404, f"notice {seq} has no actions", code="no_notice")
        if action_id != "keep":
            raise ApiError(
                400, f"notice {seq} offers 'keep', not {shown(action_id)}", code="bad_action"
            )
        self.answer(await self.keep(event.kernel_id))


class KernelUsageHandler(_ReclaimBase):
    """A kernel's latest reading: its GPUs, processes, idle state and hints."""

    @authorized("read")
    async def get(self, kernel_id: str) -> None:
        kernel_id = kernel_id_of(kernel_id)
        record = await self.service.call(self.service.ledger.kernel, kernel_id)
        if not self.is_admin():
            self.own_kernel(kernel_id, record.user)
        held = await self.service.call(self.service.ledger.allocations, kernel_id=kernel_id)
        mine = [a for a in held if a.state is AllocationState.GRANTED]
        granted = [u for a in mine if not a.parked for u in a.gpus]
        parked = next((a for a in mine if a.park_state is not None), None)
        latest = self.reclaimer.latest.get(kernel_id)
        body: dict[str, Any] = {
            "kernel_id": kernel_id,
            "user": record.user,
            "held": granted,
            "at": None,
            "at_epoch": None,
            "gpus": [],
            "gpu_util_mean": None,
            "memory_share": None,
            "cpu_percent": None,
            "processes": None,
            "executing": None,
            "hints": [],
        }
        if latest is not None:
            usage, _found = latest
            body.update(
                at=iso(usage.at),
                at_epoch=usage.at,
                gpus=[
                    {
                        "uuid": uuid,
                        "held": uuid in usage.held,
                        "utilization_percent": usage.utilization.get(uuid),
                        "memory_used_bytes": usage.memory_used.get(uuid),
                        "memory_total_bytes": usage.memory_total.get(uuid),
                    }
                    for uuid in sorted(usage.utilization)
                ],
                gpu_util_mean=round(usage.gpu_util_mean, 2),
                memory_share=round(usage.memory_share, 4),
                cpu_percent=None if usage.cpu_percent is None else round(usage.cpu_percent, 1),
                processes=usage.processes,
                executing=usage.executing,
                hints=hints_json({kernel_id: latest})[kernel_id],
            )
        body["idle"] = await self.idle_of(kernel_id, record.user) if granted else None
        body["parked"] = (
            None if parked is None else {"allocation_id": parked.id, "park": park_json(parked)}
        )
        self.answer(body)
