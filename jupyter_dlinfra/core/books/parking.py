"""Parked kernels in the ledger: each step of a park and a resume is written, with its event,
before the step's effect, so that a crash at any point leaves a state a server can finish.

A kernel's grant moves through ``park_state`` (NULL when not parked)::

    NULL --begin--> parking --parked--> parked --resume--> resuming --(loans ended)--> restoring
      ^               |                   |                    (nothing lent: at once) --^   |
      +---abandon-----+                   +----------------------------------------------+   |
      +------------------------------------------resumed-------------------------------------+

- ``parking``: about to be checkpointed; it still holds its GPUs (a server that dies here
  finds the process running or checkpointed and abandons or completes the park);
- ``parked``: checkpointed; its GPUs are out of its hands, lendable to preemptible jobs (see
  core/scheduling/parking.py), its claim and charge kept;
- ``resuming``: its kernel wants them back; the loans on them are preempted;
- ``restoring``: it holds its GPUs again; its process is being restored;
- a restore that fails ends the grant (``restore_failed``): the kernel never believes it
  holds GPUs it does not.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select, update

from jupyter_dlinfra.core.books import ledger_sql as sql
from jupyter_dlinfra.core.books.events import event_row, write_events
from jupyter_dlinfra.core.books.ledger import Ledger
from jupyter_dlinfra.core.errors import Conflict
from jupyter_dlinfra.core.models import POOL, Allocation, AllocationState
from jupyter_dlinfra.core.store import Transaction, allocations

__all__ = ["PARK_STATES", "ParkBook"]

PARK_STATES = ("parking", "parked", "resuming", "restoring")


class ParkBook:
    """The park and resume steps of kernels' grants, on one ledger."""

    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger

    def begin(self, allocation_id: int, *, reason: str, gpu_bytes: int | None = None) -> Allocation:
        """The grant is about to be checkpointed (it still holds its GPUs); ``gpu_bytes``: its
        footprint as measured (a server that finishes the park after a crash records it)."""
        ledger = self.ledger
        with ledger._writing() as (tx, cache):
            alloc = ledger._one(tx.conn, allocation_id)
            why = _not_parkable(alloc)
            if why is not None:
                raise Conflict(f"allocation {allocation_id} cannot be parked: {why}")
            self._set(tx, alloc.id, park_state="parking", park_reason=reason, park_bytes=gpu_bytes)
            cache.forget_rows([alloc.id])
            self._event(tx, "parking", alloc, {"reason": reason, "gpus": list(alloc.gpus)})
            return ledger._one(tx.conn, allocation_id)

    def parked(self, allocation_id: int, *, gpu_bytes: int, seconds: float) -> Allocation:
        """The checkpoint is done: the grant's GPUs are lent until it resumes."""
        ledger = self.ledger
        with ledger._writing() as (tx, cache):
            alloc = self._in(tx, allocation_id, "parking")
            cache.changed()
            cache.sched.park(alloc.id)
            sql.DELETE_HOLDINGS.run(tx.conn, {"p_id": alloc.id})
            now = ledger.clock.now()
            self._set(tx, alloc.id, park_state="parked", parked_at=now, park_bytes=gpu_bytes)
            cache.forget_rows([alloc.id])
            detail = {
                "reason": alloc.park_reason,
                "gpus": list(alloc.gpus),
                "seconds": round(seconds, 3),
                "bytes": gpu_bytes,
            }
            self._event(tx, "parked", alloc, detail)
            ledger._schedule(tx, cache)
            return ledger._one(tx.conn, allocation_id)

    def abandon(self, allocation_id: int, *, why: str) -> Allocation:
        """The park did not happen (refused or failed): the grant is as it was."""
        ledger = self.ledger
        with ledger._writing() as (tx, cache):
            alloc = self._in(tx, allocation_id, "parking")
            self._set(tx, alloc.id, park_state=None, park_reason=None, park_bytes=None)
            cache.forget_rows([alloc.id])
            self._event(tx, "park_failed", alloc, {"reason": why})
            return ledger._one(tx.conn, allocation_id)

    def resume(self, allocation_id: int) -> Allocation:
        """The kernel wants its GPUs back: at once when none is lent (``restoring``), else its
        loans are preempted (``resuming``). A grant already on its way back is returned as it is."""
        ledger = self.ledger
        with ledger._writing() as (tx, cache):
            alloc = ledger._one(tx.conn, allocation_id)
            if alloc.park_state in ("resuming", "restoring"):
                return alloc
            alloc = self._in(tx, allocation_id, "parked")
            cache.changed()
            sched = cache.sched
            done, preemptions = sched.resume(alloc.id)
            now = ledger.clock.now()
            if done:
                ledger._returned(tx, cache, [alloc.id], now)
            else:
                self._set(tx, alloc.id, park_state="resuming")
                cache.forget_rows([alloc.id, *(p.holding_id for p in preemptions)])
                sql.MARK_PREEMPTED.run_many(
                    tx.conn,
                    [
                        {"p_id": p.holding_id, "p_for": p.request_id, "p_why": p.message}
                        for p in preemptions
                    ],
                )
                told = [
                    event_row(
                        "preempted",
                        at=now,
                        allocation_id=p.holding_id,
                        kernel_id=cache.kernel_of.get(p.holding_id),
                        detail={"for": alloc.id, "reason": p.message, "parked": True},
                    )
                    for p in preemptions
                ]
                waiting = [h.id for h in sched.parking.loans_of(alloc.id)]
                told.append(
                    event_row(
                        "resuming",
                        at=now,
                        allocation_id=alloc.id,
                        kernel_id=alloc.kernel_id,
                        detail={"waiting_for": waiting},
                    )
                )
                write_events(tx, told)
            return ledger._one(tx.conn, allocation_id)

    def resumed(self, allocation_id: int, *, seconds: float) -> Allocation:
        """The process was restored on its GPUs: the grant is an ordinary one again."""
        ledger = self.ledger
        with ledger._writing() as (tx, cache):
            alloc = self._in(tx, allocation_id, "restoring")
            parked_s = None if alloc.parked_at is None else ledger.clock.now() - alloc.parked_at
            self._set(
                tx, alloc.id, park_state=None, parked_at=None, park_reason=None, park_bytes=None
            )
            cache.forget_rows([alloc.id])
            detail: dict[str, Any] = {"seconds": round(seconds, 3)}
            if parked_s is not None:
                detail["parked_s"] = round(parked_s, 3)
            self._event(tx, "resumed", alloc, detail)
            return ledger._one(tx.conn, allocation_id)

    def restore_failed(self, allocation_id: int, *, why: str) -> Allocation:
        """The restore failed: the grant ends, so that nothing holds GPUs its process cannot
        use (the server restarts the kernel without them)."""
        ledger = self.ledger
        with ledger._writing() as (tx, cache):
            alloc = ledger._one(tx.conn, allocation_id)
            if not alloc.state.active:
                return alloc
            ended = ledger._end(tx, cache, alloc, f"resuming its parked GPUs failed: {why}")
            ledger._schedule(tx, cache)
            return ended

    def parked_bytes(self, node: str) -> int:
        """GPU memory the host of ``node`` keeps for its parked kernels (all park states)."""
        with self.ledger.store.read() as conn:
            total = conn.execute(
                select(func.coalesce(func.sum(allocations.c.park_bytes), 0)).where(
                    allocations.c.node == node,
                    allocations.c.state == AllocationState.GRANTED.value,
                    allocations.c.park_state.in_(PARK_STATES),
                )
            ).scalar()
        return int(total or 0)

    def in_progress(self, kernel_ids: list[str]) -> list[Allocation]:
        """The grants of these kernels in any park state (what a server finishes at start)."""
        if not kernel_ids:
            return []
        ledger = self.ledger
        with ledger.store.read() as conn:
            return ledger._load(
                conn,
                allocations.c.kernel_id.in_(kernel_ids)
                & (allocations.c.state == AllocationState.GRANTED.value)
                & allocations.c.park_state.in_(PARK_STATES),
            )

    # -- internals -------------------------------------------------------------------------------

    def _in(self, tx: Transaction, allocation_id: int, state: str) -> Allocation:
        alloc = self.ledger._one(tx.conn, allocation_id)
        if alloc.state is not AllocationState.GRANTED or alloc.park_state != state:
            now = alloc.park_state or ("not parked" if alloc.state.active else alloc.state.value)
            raise Conflict(f"allocation {allocation_id} is {now}, not {state}")
        return alloc

    @staticmethod
    def _set(tx: Transaction, allocation_id: int, **values: Any) -> None:
        tx.conn.execute(update(allocations).where(allocations.c.id == allocation_id).values(values))
        tx.touch()

    def _event(self, tx: Transaction, kind: str, alloc: Allocation, detail: dict[str, Any]) -> None:
        self.ledger.write_event(
            tx, kind, allocation_id=alloc.id, kernel_id=alloc.kernel_id, detail=detail
        )


def _not_parkable(alloc: Allocation) -> str | None:
    if alloc.state is not AllocationState.GRANTED:
        return f"it is {alloc.state.value}, not granted"
    if alloc.park_state is not None:
        return f"it is {alloc.park_state} already"
    if alloc.kind != "kernel":
        return "only a notebook kernel's GPUs are parked (a job runs until it ends)"
    if alloc.placement == POOL or alloc.placement == "cluster":
        return "its GPUs are held by a pod of the cluster, which parking cannot reach"
    if alloc.preempted_for is not None:
        return "it is being taken back"
    return None
