"""REST handlers of parking: park a kernel's GPUs now (``%gpu park``), and take them back (the
kernel's next cell)."""

from __future__ import annotations

from typing import Any

from jupyter_dlinfra.core.models import Allocation
from jupyter_dlinfra.server.errors import ApiError
from jupyter_dlinfra.server.handlers.base import DLInfraHandler, authorized
from jupyter_dlinfra.server.handlers.gpus import gpu_index
from jupyter_dlinfra.server.parking import Parker
from jupyter_dlinfra.server.parsing import kernel_id_of
from jupyter_dlinfra.server.views import allocation_json

__all__ = ["KernelParkHandler", "KernelResumeHandler"]


class _ParkBase(DLInfraHandler):
    @property
    def parker(self) -> Parker:
        reclaimer = self.service.reclaimer
        parker = reclaimer.parker if reclaimer is not None else None
        if parker is None:
            raise ApiError(503, "parking is not running on this server", code="no_parking")
        return parker

    async def owned(self, kernel_id: str, fields: tuple[str, ...] = ()) -> str:
        kernel_id = kernel_id_of(kernel_id)
        extra = sorted(set(self.json_body()) - set(fields))
        if extra:
            allowed = ", ".join(fields) or "no fields: send {}"
            raise ApiError(
                400, f"unexpected {', '.join(extra)}; this takes {allowed}", code="bad_field"
            )
        record = await self.service.call(self.service.ledger.kernel, kernel_id)
        self.own_kernel(kernel_id, record.user)
        return kernel_id

    async def shown(self, alloc: Allocation) -> dict[str, Any]:
        gpus = await self.service.call(gpu_index, self.service.ledger, [alloc])
        return allocation_json(
            alloc, gpus, self.service.samples, simulated=self.service.provider.simulated
        )


class KernelParkHandler(_ParkBase):
    """Park the kernel's GPUs now: 200 when parked, 409 with the reason when it cannot be."""

    @authorized("write")
    async def post(self, kernel_id: str) -> None:
        kernel_id = await self.owned(kernel_id, ("prepared",))
        prepared = self.json_body().get("prepared")
        if prepared is not None and (self.kernel_scope is None or not isinstance(prepared, dict)):
            raise ApiError(
                400,
                "prepared is the kernel's own report (an object), sent by %gpu park with the "
                "kernel's token; leave it out to have the server ask the kernel",
                code="bad_field",
            )
        blockers = (prepared or {}).get("blockers", [])
        if not isinstance(blockers, list) or not all(isinstance(b, str) for b in blockers):
            raise ApiError(400, "prepared.blockers must be a list of sentences", code="bad_field")
        who = "%gpu park" if self.kernel_scope else self.person()
        outcome = await self.parker.park(kernel_id, reason=f"parked by {who}", prepared=prepared)
        if not outcome.parked:
            raise ApiError(409, f"not parked: {outcome.reason}", code="not_parked")
        assert outcome.allocation is not None
        self.answer({"parked": True, "allocation": await self.shown(outcome.allocation)})


class KernelResumeHandler(_ParkBase):
    """Take a parked kernel's GPUs back: answers at once with where the resume stands (the
    allocation's ``park.state``: resuming while loans stop, restoring, then none); the caller
    polls the allocation."""

    @authorized("write")
    async def post(self, kernel_id: str) -> None:
        kernel_id = await self.owned(kernel_id)
        alloc = await self.parker.resume(kernel_id)
        if alloc is None:
            raise ApiError(409, "this kernel has no parked GPUs", code="not_parked")
        self.answer({"allocation": await self.shown(alloc)})
