"""Parked grants: GPUs whose kernel's memory was checkpointed to the host, lent until it resumes.

A parked grant keeps its claim on its own GPUs: a CUDA restore returns a process to the GPUs it
was checkpointed from (remapping to other GPUs needs driver 580+ and is fragile), so the kernel
must get *those* GPUs back at its next cell, at once. They are therefore lent only to work that
can be taken back at once: waiting *jobs* of a preemptible class, one node's GPUs each (no gangs,
whose other members would be stopped too). Nothing else ever sees them free: they are out of the
scheduler's pools, so plain placement, reservations, explanations and the cluster's own work
never count them.

While parked, the grant still counts against its owner's quotas and fair share: it may take its
GPUs back at any moment, and a quota that parking freed could be spent twice (park, ask for more,
resume). A loan is a grant of its own (``Holding.on_loan``): charged to its borrower, never a
preemption victim of the ordinary kind (what it frees goes back to the parked grant, not to the
preemptor), and preempted for the parked grant as soon as that resumes. The resume completes in
the first pass after every loan on its GPUs has ended (``Outcome.resumed``).

Lending costs a look at the waiting preemptible jobs when parked GPUs become free to lend (a
park, a loan's end), and a look at one request when it arrives: never a walk per pass.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace
from typing import Any, Protocol

from jupyter_dlinfra.core.errors import Conflict, NotFound
from jupyter_dlinfra.core.scheduling.policy import SchedulingPolicy
from jupyter_dlinfra.core.scheduling.types import Demand, Holding, Outcome, Preemption

__all__ = ["Parking"]


class _Pools(Protocol):
    """What parking needs of its scheduler (which imports this module): its GPUs' pools and
    holders, its waiting requests, and its way of granting."""

    policy: SchedulingPolicy
    holdings: dict[int, Holding]
    demands: dict[int, Demand]
    touched: set[str]
    pending: dict[int, int]
    _holder_of: dict[str, int]
    _pool_of: dict[str, Any]
    _pinned: dict[str, dict[int, Demand]]
    _dirty: set[str]

    def walk_next(self) -> None: ...
    def over_quota(self, demand: Demand) -> str | None: ...
    def _unindex_victim(self, holding: Holding) -> None: ...
    def _charge(self, user: str, groups: tuple[str, ...], delta: int) -> None: ...
    def _unfree(self, uuid: str) -> None: ...
    def _give_back(self, taken: list[tuple[Any, list[str]]]) -> None: ...
    def _nodes(self, uuids: Iterable[str]) -> set[str]: ...
    def _models(self, wanted: str | None) -> tuple[str, ...]: ...
    def _in_order(self, demands: Iterable[Demand]) -> list[Demand]: ...
    def _may_borrow(self, demand: Demand) -> bool: ...
    def _grant(
        self, demand: Demand, gpus: list[str], borrowed: bool, out: Outcome, *, on_loan: bool = ...
    ) -> None: ...


class Parking:
    """The parked grants of one scheduler, their GPUs free to lend, and the loans on them."""

    def __init__(self, sched: _Pools) -> None:
        self._sched = sched
        #: parked grants by id (out of ``Scheduler.holdings``: they hold nothing now)
        self.parked: dict[int, Holding] = {}
        #: GPU -> the parked grant it belongs to
        self.owner: dict[str, int] = {}
        #: node -> parked GPUs that nobody borrows now, in index order
        self.lendable: dict[str, list[str]] = {}
        #: parked grants that asked for their GPUs back: nothing more is lent on them
        self.resuming: set[int] = set()
        #: nodes whose lendable GPUs the next pass offers to the waiting jobs
        self._dirty: set[str] = set()
        #: the waiting requests of any node that may borrow (those gone are dropped as met)
        self._pool_borrowers: dict[int, Demand] = {}

    # -- park, resume, end -----------------------------------------------------------------------

    def park(self, holding_id: int) -> Holding:
        """The grant's GPUs are free to lend until it resumes; it keeps its charge."""
        s = self._sched
        holding = s.holdings.get(holding_id)
        if holding is None:
            raise NotFound(f"no grant {holding_id} to park")
        if holding.on_loan or holding.preempted_for is not None:
            raise Conflict(f"grant {holding_id} is being taken back: it cannot be parked")
        s.walk_next()
        del s.holdings[holding_id]
        s._unindex_victim(holding)
        self.parked[holding_id] = holding
        for uuid in holding.gpus:
            s._holder_of.pop(uuid, None)
            self.owner[uuid] = holding_id
            self._to_lend(uuid)
        return holding

    def restore(self, holding: Holding, *, resuming: bool) -> None:
        """Record a grant parked before (loading state): charged, its GPUs lent or lendable."""
        s = self._sched
        s.walk_next()
        self.parked[holding.id] = holding
        s._charge(holding.user, holding.groups, len(holding.gpus))
        if resuming:
            self.resuming.add(holding.id)
        for uuid in holding.gpus:
            self.owner[uuid] = holding.id
            s._unfree(uuid)
            if uuid not in s._holder_of:
                self._to_lend(uuid)

    def resume(self, holding_id: int) -> tuple[bool, list[Preemption]]:
        """The parked grant wants its GPUs back: (True, []) when none is lent (it holds them
        again now), else (False, the loans to preempt; it holds them again in the first pass
        after they ended)."""
        s = self._sched
        holding = self.parked.get(holding_id)
        if holding is None:
            raise NotFound(f"grant {holding_id} is not parked")
        loans = self._loans_on(holding)
        if not loans:
            self._unpark(holding)
            return True, []
        self.resuming.add(holding_id)
        found = []
        for loan in loans:
            if loan.preempted_for is None:
                s.holdings[loan.id] = replace(loan, preempted_for=holding_id)
                message = (
                    f"preempted: its GPUs were lent while the notebook kernel of {holding.user} "
                    f"that holds them was parked, and that kernel resumed"
                )
                found.append(Preemption(loan.id, holding_id, message))
        return False, found

    def drop(self, holding_id: int) -> Holding:
        """The parked grant ends (released while parked): its GPUs go back to everyone."""
        s = self._sched
        holding = self.parked.pop(holding_id)
        s.walk_next()
        self.resuming.discard(holding_id)
        for loan in self._loans_on(holding):
            if loan.preempted_for == holding_id:
                # nothing to give back to any more: the loan runs on as an ordinary grant
                s.holdings[loan.id] = replace(loan, preempted_for=None)
        s._charge(holding.user, holding.groups, -len(holding.gpus))
        freed = []
        for uuid in holding.gpus:
            self.owner.pop(uuid, None)
            if self._unlend(uuid) and uuid in s._pool_of:
                freed.append(uuid)
        self._free(freed)
        return holding

    # -- hooks of the scheduler ------------------------------------------------------------------

    def held(self, uuid: str) -> None:
        """A grant took ``uuid`` (a loan, or a loan loaded after the grant it borrows from)."""
        if uuid in self.owner:
            self._unlend(uuid)

    def freed(self, uuid: str) -> bool:
        """A grant let ``uuid`` go: True when it belongs to a parked grant (it is lendable
        again, or back with a grant that resumes), False when it is the pools' as usual."""
        if uuid not in self.owner:
            return False
        self._to_lend(uuid)
        return True

    def finish(self, out: Outcome) -> None:
        """In a pass: resume the grants whose loans have all ended, then lend what is left."""
        for holding_id in sorted(self.resuming):
            holding = self.parked[holding_id]
            if not self._loans_on(holding):
                self._unpark(holding)
                out.resumed.append(holding_id)
        if self._dirty:
            self._lend(out)

    def offer(self, demand: Demand) -> None:
        """A request arrived: if it may borrow parked GPUs, the next pass offers them."""
        if not self._may_borrow(demand):
            return
        if demand.node is None:
            self._pool_borrowers[demand.id] = demand
            self._dirty.update(self.lendable)
        elif demand.node in self.lendable:
            self._dirty.add(demand.node)

    def left(self, request_id: int) -> None:
        """A waiting request was granted or withdrawn."""
        self._pool_borrowers.pop(request_id, None)

    def forget_waiting(self) -> None:
        """Every waiting request is submitted again (a new policy may change who borrows)."""
        self._pool_borrowers.clear()

    def loans_of(self, holding_id: int) -> list[Holding]:
        """The loans on a parked grant's GPUs now."""
        return self._loans_on(self.parked[holding_id])

    # -- internals -------------------------------------------------------------------------------

    def _unpark(self, holding: Holding) -> None:
        s = self._sched
        s.walk_next()
        del self.parked[holding.id]
        self.resuming.discard(holding.id)
        for uuid in holding.gpus:
            self.owner.pop(uuid, None)
            self._unlend(uuid)
            s._holder_of[uuid] = holding.id
        s.holdings[holding.id] = holding
        nodes = s._nodes(holding.gpus)
        s.touched.update(nodes)

    def _loans_on(self, holding: Holding) -> list[Holding]:
        s = self._sched
        ids = {s._holder_of[u] for u in holding.gpus if u in s._holder_of}
        return [s.holdings[i] for i in sorted(ids)]

    def _to_lend(self, uuid: str) -> None:
        pool = self._sched._pool_of.get(uuid)
        if pool is None:
            return  # gone from the inventory: nothing to lend
        free = self.lendable.setdefault(pool.node, [])
        if uuid not in free:
            free.append(uuid)
            free.sort(key=self._index)
        self._dirty.add(pool.node)
        self._sched.touched.add(pool.node)

    def _index(self, uuid: str) -> int:
        """A GPU's index on its node (the node's pools are one per model)."""
        pool = self._sched._pool_of.get(uuid)
        return pool.gpus.get(uuid, 1 << 30) if pool is not None else 1 << 30

    def _unlend(self, uuid: str) -> bool:
        """Take ``uuid`` out of the lendable GPUs; whether it was there."""
        pool = self._sched._pool_of.get(uuid)
        if pool is None:
            return False
        free = self.lendable.get(pool.node)
        if not free or uuid not in free:
            return False
        free.remove(uuid)
        if not free:
            del self.lendable[pool.node]
        return True

    def _free(self, uuids: Iterable[str]) -> None:
        s = self._sched
        for uuid in uuids:
            pool = s._pool_of[uuid]
            s._give_back([(pool, [uuid])])
            s._dirty.add(pool.node)

    def _may_borrow(self, demand: Demand) -> bool:
        if demand.kind != "job" or demand.gang or demand.per_node is not None:
            return False
        klass = self._sched.policy.class_map.get(demand.klass)
        return klass is not None and klass.preemptible

    def _lendable_on(self, node: str, model: str | None) -> list[str]:
        s = self._sched
        found = []
        for uuid in self.lendable.get(node, ()):
            if self.owner.get(uuid) in self.resuming:
                continue
            pool = s._pool_of.get(uuid)
            if pool is not None and pool.model in s._models(model):
                found.append(uuid)
        return found

    def _lend(self, out: Outcome) -> None:
        """Offer the lendable GPUs of the nodes that changed to the waiting jobs that may borrow
        them, in the order of service: within quota first, then those that may borrow beyond."""
        s = self._sched
        nodes, self._dirty = self._dirty, set()
        nodes &= set(self.lendable)
        if not nodes:
            return
        # GPUs are being freed for some requests: a loan must neither take such a request
        # (its victims would stop for nothing) nor fill its owners' quotas before it starts
        freeing = [s.demands[r] for r in s.pending if r in s.demands]
        users = {d.user for d in freeing}
        groups = {g for d in freeing for g in d.groups}
        wanting = [
            d
            for d in self._candidates(nodes)
            if self._may_borrow(d)
            and (d.node is None or d.node in nodes)
            and d.id not in s.pending
            and d.user not in users
            and groups.isdisjoint(d.groups)
        ]
        later = []
        for demand in s._in_order(wanting):
            if s.over_quota(demand) is not None:
                if s._may_borrow(demand):
                    later.append(demand)
                continue
            self._place(demand, nodes, False, out)
        for demand in later:
            if demand.id in s.demands:
                self._place(demand, nodes, True, out)

    def _candidates(self, nodes: set[str]) -> Iterable[Demand]:
        s = self._sched
        for node in sorted(nodes):
            yield from s._pinned.get(node, {}).values()
        yield from list(self._pool_borrowers.values())

    def _place(self, demand: Demand, nodes: set[str], borrowed: bool, out: Outcome) -> None:
        s = self._sched
        where = [demand.node] if demand.node is not None else sorted(nodes - demand.avoid)
        for node in where:
            if node not in self.lendable:
                continue
            free = self._lendable_on(node, demand.model)
            # one model per grant, as placement packs them
            by_model: dict[str, list[str]] = {}
            for uuid in free:
                by_model.setdefault(s._pool_of[uuid].model, []).append(uuid)
            for uuids in by_model.values():
                if len(uuids) >= demand.count:
                    s._grant(demand, uuids[: demand.count], borrowed, out, on_loan=True)
                    return
