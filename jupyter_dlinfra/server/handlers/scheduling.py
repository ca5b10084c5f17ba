"""REST handlers of scheduling: the policy (admins change it, everyone reads it) and fair share."""

from __future__ import annotations

from typing import Any

from jupyter_dlinfra.core.books.ledger import SCHEDULING_KEY
from jupyter_dlinfra.core.books.policies import SCHEDULING_PREFIX, load_document, policy_changes_of
from jupyter_dlinfra.core.scheduling.policy import SchedulingPolicy
from jupyter_dlinfra.server.errors import ApiError
from jupyter_dlinfra.server.handlers.base import DLInfraHandler, authorized
from jupyter_dlinfra.server.views import iso

__all__ = ["FairShareHandler", "SchedulingHandler"]

_CHANGES_SHOWN = 50


class SchedulingHandler(DLInfraHandler):
    @authorized("read")
    async def get(self) -> None:
        self.answer(await self.service.call(self._view))

    @authorized("write")
    async def put(self) -> None:
        if not self.is_admin():
            raise ApiError(
                403,
                "only admins may change the scheduling policy; admins are set by "
                "c.DLInfra.admin_users and c.DLInfra.admin_groups",
                code="not_admin",
            )
        body = self.json_body()
        ledger = self.service.ledger
        current = await self.service.call(ledger.scheduling_policy)
        new = SchedulingPolicy.from_json(body, base=current)
        await self.service.mutate(ledger.set_scheduling_policy, new, who=self.person())
        self.answer(await self.service.call(self._view))

    def _view(self) -> dict[str, Any]:
        """Blocking: read off the event loop."""
        ledger = self.service.ledger
        stored = load_document(ledger.store, SCHEDULING_KEY)
        changes = policy_changes_of(ledger.store, prefix=SCHEDULING_PREFIX, limit=_CHANGES_SHOWN)
        return {
            "policy": ledger.scheduling_policy().to_json(),
            "source": "api" if stored is not None else "config",
            "updated_at": iso(stored.updated_at) if stored is not None else None,
            "updated_by": stored.updated_by if stored is not None else None,
            "configured": ledger.configured_policy.to_json(),
            "editable": self.is_admin(),
            "changes": [
                {
                    "seq": c.seq,
                    "at": iso(c.at),
                    "who": c.who,
                    "field": c.field.removeprefix(SCHEDULING_PREFIX),
                    "old": c.old,
                    "new": c.new,
                }
                for c in changes
            ],
        }


class FairShareHandler(DLInfraHandler):
    """The caller's fair-share standing; admins see everyone's."""

    @authorized("read")
    async def get(self) -> None:
        ledger = self.service.ledger
        standings = await self.service.call(ledger.standings)
        policy = await self.service.call(ledger.scheduling_policy)
        me = self.person()
        mine = next((s for s in standings if s.user == me), None)
        admin = self.is_admin()
        self.answer(
            {
                "user": me,
                "you": mine.to_json() if mine is not None else None,
                "users": [s.to_json() for s in standings] if admin else None,
                "fair_share": policy.fair_share,
                "half_life": policy.half_life,
                "quota": policy.quota_of_user(me),
            }
        )
