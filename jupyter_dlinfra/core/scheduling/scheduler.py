"""The scheduler: which waiting request gets which GPUs, and what is taken back, all in memory.

State (GPUs, holdings, waiting requests, fair-share accounts) is loaded once and changed by small
calls; :meth:`Scheduler.schedule` makes one pass and returns its decisions, which the caller
records (the ledger writes them in one transaction). Nothing here reads a clock or a database.

One pass, for requests in order (class priority, then fair share, then age; see fairshare.py):

1. a request within its quotas is placed if it fits: on its own node when pinned (a kernel),
   else best fit on one node (the node with the fewest free GPUs that still fit, so large
   requests find whole nodes later), or for a gang on several nodes, all or nothing;
2. one that does not fit keeps the free GPUs it could use for itself (the first
   ``policy.reservations`` of them), so small requests behind it cannot starve it;
3. over-quota requests of preemptible classes then borrow what nobody within quota wanted;
4. a blocked request within quota may preempt: preemptible *jobs* of a lower class, or borrowed
   GPUs. On a node where they and its free GPUs add up, victims are taken cheapest first
   (borrowed, then the lowest class, then the most recently started); the cheapest of the first
   few such nodes wins. Victims keep their GPUs until their owner
   stops them and releases; meanwhile those GPUs are nominated for the request. Kernels are
   never preempted.

A pass stops early once no free GPU is left and nobody can preempt, or after ``max_scan``
requests beyond the reservations (SLURM's ``default_queue_depth``, 100): the cost of a pass
follows the GPUs that changed, not the length of the queue. When every waiting request is pinned
to a node (as every ledger request is), it stops at the first one beyond the reservations that it
cannot serve: such a request can only take GPUs of its own node, and step 5 looks at every node
that changed, so scanning further would find nothing step 5 does not.

5. then it is work-conserving for requests pinned to a node, whatever the scan limit: on every
   node where something changed since the last pass (GPUs freed or added, a request arrived, a
   quota's holder released, GPUs the last pass set aside and this one does not), the requests
   pinned there are looked at in order and granted while they fit in what is free and not
   reserved (within quota first, then borrowers). A node where nothing fitted is not looked at
   again until something changes there, so a pass costs what changed, not the queue behind it.
   The same for the pool's requests (any node): while a group of them (model, GPUs, gang) fits
   in what is free and not reserved, the best first request within quota of the groups that
   fit is placed (pool_queue.py), then borrowers; pinned requests are served first.

A pass need not walk at all when a walk would see what the last one saw: the last walk decided
nothing and did not run out of requests, and since then only requests pinned to a node arrived,
in classes below the one it stopped in, within one step of order keys (``KEY_STEP_S``), and what
step 5 granted since touches none of the users, accounts, groups or nodes the walk saw. Such a
pass is step 5 alone (:meth:`Scheduler._settled_pass`): a request of a lower class, the most
common change on a busy cluster, costs its node's look, not a walk of the queue's head.
"""

from __future__ import annotations

import bisect
import heapq
import itertools
import math
from collections import Counter, defaultdict
from collections.abc import Callable, Generator, Iterable, Iterator
from dataclasses import replace

from jupyter_dlinfra.core.errors import Conflict, InvalidRequest, NotFound
from jupyter_dlinfra.core.scheduling.fairshare import Account
from jupyter_dlinfra.core.scheduling.parking import Parking
from jupyter_dlinfra.core.scheduling.policy import SchedulingPolicy
from jupyter_dlinfra.core.scheduling.pool_queue import GroupKey, PoolQueue
from jupyter_dlinfra.core.scheduling.ranking import Ranking
from jupyter_dlinfra.core.scheduling.types import (
    Demand,
    Grant,
    Holding,
    Outcome,
    Preemption,
    Slot,
    model_matches,
)

__all__ = ["Scheduler", "whole_node_pools"]


def _submitted(demand: Demand) -> float:
    return demand.submitted_at


def _released_aside(
    before: dict[int, tuple[str, ...]], now: dict[int, tuple[str, ...]]
) -> set[str]:
    """GPUs set aside in ``before`` and for nobody in ``now``."""
    kept = {u for uuids in now.values() for u in uuids}
    return {u for uuids in before.values() for u in uuids if u not in kept}


class _Frontier:
    """What a walk that decided nothing saw: the users, groups and nodes of the requests it
    looked at (``anywhere``: one of them may take GPUs of any node), the last of them, and the
    class (priority) it stopped in, set once the walk is over."""

    __slots__ = ("anywhere", "groups", "last", "nodes", "step", "tier", "users")

    def __init__(self, step: int) -> None:
        self.step = step
        self.tier = 0
        self.last: Demand | None = None
        self.users: set[str] = set()
        self.groups: set[str] = set()
        self.nodes: set[str] = set()
        self.anywhere = False

    def saw(self, demand: Demand) -> None:
        self.last = demand
        self.users.add(demand.user)
        self.groups.update(demand.groups)
        if demand.node is None:
            self.anywhere = True
        else:
            self.nodes.add(demand.node)


def _age(demand: Demand) -> tuple[float, int]:
    return (demand.submitted_at, demand.id)


#: fair-share keys drift as usage decays; waiting users are re-ranked at least this often (s)
REFRESH_INTERVAL = 60.0
#: fair-share keys are worked out as of the end of the current step of this many seconds, so
#: that the passes of one step reuse them and the ranking's heaps stay in order between
#: changes (keys of holders grow with time: at a key per pass, every pass found the heads of
#: its heaps stale and ranked them again); SLURM recalculates its priorities every 5 minutes
KEY_STEP_S = 1.0
#: blocked requests per pass that may preempt
_PREEMPTING = 8
#: nodes whose victims are compared before choosing where to preempt
_NODES_COMPARED = 8


def whole_node_pools(
    per_model: list[list[set[int]]],
    node_of: Callable[[int], str],
    shape: tuple[int, int],
    avoid: frozenset[str],
) -> list[int]:
    """Up to ``nodes`` pools (ids) on different nodes with at least ``per_node`` free GPUs
    each, the fewest free first (best fit, as one node's requests are placed: large holes stay
    for large requests). ``per_model``: for each model asked for, its pools by free GPUs
    (``buckets[free]``); ``node_of(pid)``: a pool's node. The pass places by it, and the pool's
    explanations replay it on their copy of the free GPUs."""
    nodes, per_node = shape
    seen: set[str] = set()
    found: list[int] = []
    top = max((len(b) for b in per_model), default=0)
    for free in range(per_node, top):
        for buckets in per_model:
            if free >= len(buckets):
                continue
            same = buckets[free]
            for pid in sorted(same) if len(same) < 64 else same:
                node = node_of(pid)
                if node in avoid or node in seen:
                    continue
                seen.add(node)
                found.append(pid)
                if len(found) == nodes:
                    return found
    return found


class _Pool:
    """The GPUs of one model on one node."""

    __slots__ = ("free", "gpus", "id", "model", "node")

    def __init__(self, pid: int, node: str, model: str) -> None:
        self.id = pid
        self.node = node
        self.model = model
        self.gpus: dict[str, int] = {}  # uuid -> index
        self.free: list[str] = []


class Scheduler:
    def __init__(self, policy: SchedulingPolicy, *, now: float = 0.0, max_scan: int = 100) -> None:
        self.policy = policy
        self.now = now
        self.max_scan = max_scan
        self._pools: dict[tuple[str, str], _Pool] = {}
        self._pool_list: list[_Pool] = []
        self._pool_of: dict[str, _Pool] = {}
        self._node_pools: dict[str, list[_Pool]] = defaultdict(list)
        #: model -> free count -> pool ids with that many free GPUs
        self._buckets: dict[str, list[set[int]]] = {}
        self._free_by_model: dict[str, int] = defaultdict(int)
        self.free_total = 0
        self._model_cache: dict[str | None, tuple[str, ...]] = {}
        self._caps: dict[tuple[str, ...], int] = {}
        self.holdings: dict[int, Holding] = {}
        self._holder_of: dict[str, int] = {}
        #: unmarked holdings policy could preempt -> their pools; the borrowed ones among them
        self._victim_pools: dict[int, list[int]] = {}
        self._borrowed: set[int] = set()
        #: GPUs of those holdings per pool (an upper bound of what preemption frees there)
        self._pool_victims: dict[int, int] = defaultdict(int)
        self._victim_gpus = 0
        #: grows whenever preemption could free more than before; a request whose search found
        #: nothing is not searched again until it grows
        self._victim_epoch = 0
        self._no_victims: dict[int, int] = {}
        #: fair-share keys as of ``_keys_at`` (they change with time and with each grant)
        self._ukeys: dict[str, float] = {}
        self._akeys: dict[str, float] = {}
        self._keys_at = now
        self.demands: dict[int, Demand] = {}
        self.users: dict[str, Account] = defaultdict(Account)
        self.accounts: dict[str, Account] = defaultdict(Account)
        self._account_of: dict[str, str] = {}
        self._members: dict[str, set[str]] = defaultdict(set)
        self.ranking = self._new_ranking()
        #: the pool's waiting requests again, grouped by what they ask for (step 5 for them)
        self._pool_queue = PoolQueue(self._new_ranking)
        self.held_by_group: dict[str, int] = defaultdict(int)
        #: request id -> GPUs being freed for it by preemption
        self.pending: dict[int, int] = defaultdict(int)
        #: request id -> the pool its victims are on
        #: request id -> the pools its victims are on: their freed GPUs are kept for it
        self._nominated: dict[int, list[int]] = {}
        self._refreshed = now
        #: node -> the requests pinned to it (id -> demand)
        self._pinned: dict[str, dict[int, Demand]] = defaultdict(dict)
        #: waiting requests pinned to a node (all of them, in the ledger: each is a kernel's)
        self._pinned_total = 0
        #: nodes whose pinned requests the next pass looks at again (see the module's step 5)
        self._dirty: set[str] = set()
        #: nodes whose explanation may have changed since the caller last took them (see
        #: :meth:`take_touched`): GPUs freed or taken there, requests come or gone, quotas of
        #: those who wait there moved, reservations made or dropped
        self.touched: set[str] = set()
        self._in_pass = False
        #: where the last walk stopped, while a walk would stop there again (see
        #: :meth:`_settled_pass`); None when the next pass must walk
        self._frontier: _Frontier | None = None
        #: the most GPUs a request has asked for (which quota moves can change a waiter's lot)
        self._largest_asked = 0
        #: ("user", name, GPUs asked) or ("group", name, GPUs asked) -> nodes where such pinned
        #: requests wait (how many)
        self._nodes_waited: dict[tuple[str, str, int], Counter[str]] = defaultdict(Counter)
        #: request id -> the GPUs the last pass reserved or kept for it (free, but not for others)
        self.reserved: dict[int, tuple[str, ...]] = {}
        #: node -> GPUs used there by work this scheduler does not place (other people's pods)
        self.outside_wanted: dict[str, int] = {}
        #: node -> the GPUs taken out of its free ones for that work (fewer while ours hold them)
        self.outside_taken: dict[str, list[str]] = {}
        #: parked grants and the loans on their GPUs
        self.parking = Parking(self)

    # -- inventory -------------------------------------------------------------------------------

    def add_gpus(self, slots: Iterable[Slot]) -> None:
        self._frontier = None
        for slot in slots:
            if slot.uuid in self._pool_of:
                continue
            self._caps.clear()
            key = (slot.node, slot.model)
            pool = self._pools.get(key)
            if pool is None:
                pool = _Pool(len(self._pool_list), slot.node, slot.model)
                self._pools[key] = pool
                self._pool_list.append(pool)
                self._node_pools[slot.node].append(pool)
                self._model_cache.clear()
            self._caps.clear()
            before = len(pool.free)
            pool.gpus[slot.uuid] = slot.index
            self._pool_of[slot.uuid] = pool
            if slot.uuid in self._holder_of:
                pass
            elif slot.uuid in self.parking.owner:
                self.parking.freed(slot.uuid)  # back: lendable again, not everyone's
            else:
                pool.free.append(slot.uuid)
                pool.free.sort(key=pool.gpus.__getitem__)
            self._moved(pool, before)
            self._dirty.add(slot.node)

    def remove_gpu(self, uuid: str) -> None:
        """A GPU is gone: never handed out again (its holder keeps it until it releases)."""
        self._frontier = None
        self.parking.held(uuid)  # a parked grant's GPU that is gone is lent no more
        pool = self._pool_of.pop(uuid, None)
        if pool is None:
            return
        taken = self.outside_taken.get(pool.node)
        if taken and uuid in taken:
            taken.remove(uuid)
        before = len(pool.free)
        pool.gpus.pop(uuid, None)
        if uuid in pool.free:
            pool.free.remove(uuid)
        self._moved(pool, before)
        self._caps.clear()

    def set_outside(self, node: str, count: int) -> None:
        """``count`` GPUs of ``node`` are used by work this scheduler does not place (pods the
        ledger did not admit): that many of the node's GPUs are taken out of its free ones, at
        once as far as they are free, else as ours release them."""
        self._frontier = None
        if count > 0:
            self.outside_wanted[node] = count
        else:
            self.outside_wanted.pop(node, None)
        self._settle_outside(node)

    def _settle_outside(self, node: str) -> None:
        want = self.outside_wanted.get(node, 0)
        taken = self.outside_taken.setdefault(node, [])
        while len(taken) > want:
            uuid = taken.pop()
            pool = self._pool_of.get(uuid)
            if pool is not None and uuid not in self._holder_of:
                self._give_back([(pool, [uuid])])
                self._dirty.add(node)
        for pool in self._node_pools.get(node, []):
            if len(taken) >= want:
                break
            taken += self._take(pool, want - len(taken))
        if not taken:
            del self.outside_taken[node]
        self.touched.add(node)

    def _largest(self, models: tuple[str, ...]) -> int:
        """The most GPUs of one of these models on one node: a request is packed on GPUs of one
        model (cached until the inventory changes)."""
        found = self._caps.get(models)
        if found is None:
            sizes = (len(p.gpus) for p in self._pool_list if p.model in models)
            found = self._caps[models] = max(sizes, default=0)
        return found

    def largest(self, model: str | None) -> int:
        """The most GPUs of ``model`` (None: any) that one node has (cached until the inventory
        changes)."""
        return self._largest(self._models(model))

    def fitting_nodes(self, model: str | None, count: int) -> set[str]:
        """The nodes with at least ``count`` GPUs of ``model`` on one node, free or not."""
        models = self._models(model)
        return {p.node for p in self._pool_list if p.model in models and len(p.gpus) >= count}

    def known_models(self) -> list[str]:
        return sorted({p.model for p in self._pool_list if p.gpus})

    def node_of(self, uuids: Iterable[str]) -> str | None:
        """The node of these GPUs (a grant's are on one node, unless it is a gang's)."""
        for uuid in uuids:
            pool = self._pool_of.get(uuid)
            if pool is not None:
                return pool.node
        return None

    def gpu_count(self, model: str | None = None, node: str | None = None) -> int:
        pools = self._node_pools.get(node, []) if node is not None else self._pool_list
        return sum(len(p.gpus) for p in pools if model_matches(model, p.model))

    def check(self, demand: Demand) -> str | None:
        """Why ``demand`` could never be granted with these GPUs; None when it could."""
        models = self._models(demand.model)
        kind = f" of model '{demand.model}'" if demand.model else ""
        if demand.node is not None:
            have = sum(
                len(p.gpus) for p in self._node_pools.get(demand.node, []) if p.model in models
            )
            if have < demand.count:
                return f"node {demand.node} has {have} GPU(s){kind}, fewer than {demand.count}"
            return None
        if not models:
            if demand.model is None:
                return "there are no GPUs here"
            known = ", ".join(sorted({p.model for p in self._pool_list})) or "none"
            return f"no GPU of model '{demand.model}' here; models: {known}"
        shape = demand.shape
        if shape is not None:
            nodes, per_node = shape
            big = {p.node for p in self._pool_list if p.model in models and len(p.gpus) >= per_node}
            if len(big) < nodes:
                return (
                    f"{nodes} nodes of {per_node} GPUs{kind or ' of one model'} asked for, and "
                    f"{len(big) or 'no'} node{'' if len(big) == 1 else 's'} here "
                    f"{'has' if len(big) == 1 else 'have'} that many"
                )
            return None
        if demand.gang:
            have = sum(len(p.gpus) for p in self._pool_list if p.model in models)
            if have < demand.count:
                return f"the cluster has {have} GPU(s){kind}, fewer than {demand.count}"
            return None
        largest = self._largest(models)
        if largest < demand.count:
            return (
                f"no node has {demand.count} GPUs{kind or ' of one model'} (the largest has "
                f"{largest}); "
                "ask for a gang request to span nodes"
            )
        return None

    # -- holdings ----------------------------------------------------------------------------

    def hold(self, holding: Holding) -> None:
        """Record a grant made earlier (loading state) or by someone else."""
        self._frontier = None
        if holding.id in self.holdings:
            raise Conflict(f"holding {holding.id} is already known")
        for uuid in holding.gpus:
            if uuid in self._holder_of:
                raise Conflict(f"GPU {uuid} is already held by {self._holder_of[uuid]}")
        parked = self.parking.owner
        for uuid in holding.gpus:
            self._holder_of[uuid] = holding.id
            if parked:
                self.parking.held(uuid)
            self._unfree(uuid)
        self.holdings[holding.id] = holding
        self._charge(holding.user, holding.groups, len(holding.gpus))
        if holding.preempted_for is not None:
            self.pending[holding.preempted_for] += len(holding.gpus)
            self._nominate(holding.preempted_for, holding)
        elif self._may_be_preempted(holding):
            self._index_victim(holding)

    def release(self, holding_id: int) -> Holding:
        if holding_id in self.parking.parked:
            return self.parking.drop(holding_id)
        holding = self.holdings.pop(holding_id, None)
        if holding is None:
            raise NotFound(f"no holding {holding_id}")
        self._frontier = None
        parked = self.parking.owner
        for uuid in holding.gpus:
            self._holder_of.pop(uuid, None)
            if parked and self.parking.freed(uuid):
                continue  # a loan ended: the GPU is its parked grant's again
            pool = self._pool_of.get(uuid)
            if pool is None:
                continue
            before = len(pool.free)
            pool.free.append(uuid)
            pool.free.sort(key=pool.gpus.__getitem__)
            self._moved(pool, before)
            self._dirty.add(pool.node)
            if pool.node in self.outside_wanted:
                # the others' work was waiting for GPUs ours held here
                self._settle_outside(pool.node)
        self._unindex_victim(holding)
        self._victim_epoch += 1
        self._charge(holding.user, holding.groups, -len(holding.gpus))
        if holding.preempted_for is not None:
            left = self.pending[holding.preempted_for] - len(holding.gpus)
            if left > 0:
                self.pending[holding.preempted_for] = left
            else:
                self.pending.pop(holding.preempted_for, None)
        return holding

    def park(self, holding_id: int) -> Holding:
        """The grant's process was checkpointed off its GPUs: they are lent until it resumes
        (see parking.py)."""
        return self.parking.park(holding_id)

    def resume(self, holding_id: int) -> tuple[bool, list[Preemption]]:
        """The parked grant wants its GPUs back: done at once, or the loans to preempt first
        (``Outcome.resumed`` says when it holds them again)."""
        return self.parking.resume(holding_id)

    def holder(self, uuid: str) -> Holding | None:
        hid = self._holder_of.get(uuid)
        return None if hid is None else self.holdings[hid]

    def load_usage(self, user: str, groups: Iterable[str], gpu_seconds: float, at: float) -> None:
        """Add GPU-seconds used before (stored figures), decayed from ``at``."""
        self._frontier = None
        h = self.policy.half_life
        self._set_account(user, groups)
        self.users[user].load(gpu_seconds, at, h, self.now)
        self.accounts[self._account_of[user]].load(gpu_seconds, at, h, self.now)
        self._ukeys.pop(user, None)
        self._akeys.pop(self._account_of[user], None)
        self._rerank(user, self._account_of[user])

    def set_policy(self, policy: SchedulingPolicy) -> None:
        """Apply a new policy: requests are re-ranked, preemptible holdings re-indexed."""
        self._frontier = None
        self.policy = policy
        self._model_cache.clear()
        for user in list(self._account_of):
            groups = {g for h in self.holdings.values() if h.user == user for g in h.groups}
            groups |= {g for d in self.demands.values() if d.user == user for g in d.groups}
            self._set_account(user, groups)
        self._borrowed.clear()
        self._pool_victims.clear()
        self._victim_pools.clear()
        self._victim_gpus = 0
        self._no_victims.clear()
        self._ukeys.clear()
        self._akeys.clear()
        for holding in self.holdings.values():
            if holding.preempted_for is None and self._may_be_preempted(holding):
                self._index_victim(holding)
        waiting = list(self.demands.values())
        self.parking.forget_waiting()
        self.demands.clear()
        self._pinned.clear()
        self._pinned_total = 0
        self._nodes_waited.clear()
        self._dirty.update(self._node_pools)
        self.touched.update(self._node_pools)
        self.ranking = self._new_ranking()
        self._pool_queue = PoolQueue(self._new_ranking)
        for demand in waiting:
            if demand.klass not in policy.class_map:
                fallback = policy.job_class if demand.kind == "job" else policy.kernel_class
                demand = replace(demand, klass=fallback)
            self.submit(demand)

    # -- waiting requests ----------------------------------------------------------------------

    def submit(self, demand: Demand) -> None:
        if demand.id in self.demands:
            raise Conflict(f"request {demand.id} is already waiting")
        if demand.count <= 0:
            raise InvalidRequest(f"ask for at least 1 GPU (got {demand.count})")
        if demand.per_node is not None and (
            not demand.gang
            or demand.node is not None
            or demand.per_node <= 0
            or demand.count % demand.per_node
        ):
            raise InvalidRequest(
                f"request {demand.id}: whole nodes of {demand.per_node} GPUs are a gang of any "
                f"node whose {demand.count} GPUs they divide"
            )
        self.policy.klass(demand.klass)
        if self._frontier is not None and (
            demand.node is None or self._tier_of(demand) >= self._frontier.tier
        ):
            self._frontier = None
        self.demands[demand.id] = demand
        self._largest_asked = max(self._largest_asked, demand.count)
        if demand.node is not None:
            self._pinned[demand.node][demand.id] = demand
            self._pinned_total += 1
            self._dirty.add(demand.node)
            self.touched.add(demand.node)
            self._count_waiting(demand, 1)
        else:
            self._pool_queue.add(demand)
        self._set_account(demand.user, demand.groups)
        self.ranking.add(demand)
        if demand.node is None or self.parking.lendable:
            self.parking.offer(demand)

    def withdraw(self, request_id: int) -> Demand:
        demand = self.demands.pop(request_id, None)
        if demand is None:
            raise NotFound(f"no waiting request {request_id}")
        self._frontier = None
        self.ranking.remove(demand)
        self._unpin(demand)
        self._pool_queue.remove(demand)
        self.parking.left(request_id)
        # what the last pass set aside for it is free for others at the next pass
        aside = self.reserved.pop(request_id, None)
        if aside:
            self._dirty.update(self._nodes(aside))
        self._nominated.pop(request_id, None)
        if self.pending.pop(request_id, None):
            # its victims are no longer wanted: they may be chosen again for someone else
            for holding in list(self.holdings.values()):
                if holding.preempted_for == request_id:
                    unmarked = replace(holding, preempted_for=None)
                    self.holdings[holding.id] = unmarked
                    nodes = self._nodes(unmarked.gpus)
                    self._dirty.update(nodes)
                    self.touched.update(nodes)
                    if self._may_be_preempted(unmarked):
                        self._index_victim(unmarked)
        return demand

    # -- the pass ------------------------------------------------------------------------------

    def schedule(self, now: float) -> Outcome:
        """Grant, reserve and preempt; the caller records the outcome (already applied here)."""
        out = self._pass(now)
        if self.parking.parked:
            granted = len(out.grants)
            self.parking.finish(out)
            if len(out.grants) > granted or out.resumed:
                self._frontier = None  # loans and resumes move what a walk would see
        return out

    def _pass(self, now: float) -> Outcome:
        self.now = max(now, self.now)
        if self.now - self._refreshed >= REFRESH_INTERVAL:
            self._refreshed = self.now
            self.ranking.rebuild()
            self._pool_queue.rebuild()
            self._frontier = None
        if self.settled:
            return self._settled_pass()
        out = Outcome()
        if not self.demands:
            self._dirty.clear()
            self.reserved = {}
            return out
        policy = self.policy
        reservations_left = policy.reservations
        reserved: list[tuple[_Pool, list[str]]] = []
        reserved_for: dict[int, list[tuple[_Pool, list[str]]]] = {}
        borrowers: list[Demand] = []
        blocked: list[Demand] = []
        can_preempt = policy.preemption and bool(self._victim_pools)
        self._in_pass = True
        reserved_before = self.reserved
        kept = self._keep_nominated()
        scanned_beyond = 0
        # beyond its reservations, a request pinned to a node can only take GPUs of that node,
        # and step 5 looks at every node where something changed: when every waiting request is
        # pinned, the walk stops at the first one it cannot serve there (once it has what
        # preemption looks at), so a pass costs its reservations, not max_scan more requests
        depth = 1 if self._pinned_total == len(self.demands) else self.max_scan
        walk = self.ranking.walk(self.now)
        seen = _Frontier(self._step())
        walked_all = False
        #: GPUs kept for a request were given back after requests ahead of it were blocked
        late = False
        try:
            for demand in walk:
                seen.saw(demand)
                nominated = kept.pop(demand.id, None)
                if nominated is not None:
                    self._give_back(nominated)
                    late = late or bool(reserved_for)
                wants_preemption = can_preempt and len(blocked) < _PREEMPTING
                if self.free_total == 0 and not kept and not wants_preemption:
                    break
                out.examined += 1
                over = self.over_quota(demand)
                if over is not None:
                    if self._may_borrow(demand):
                        borrowers.append(demand)
                    elif self._quota_full(demand) and not self._class_borrows(demand):
                        # nothing more of this user's fits this pass: skip the rest of them
                        self.ranking.skip(demand)
                    scanned_beyond += 1
                    if scanned_beyond >= self._depth(depth, reservations_left, blocked):
                        break
                    continue
                gpus = self._place(demand)
                if gpus is not None:
                    self._grant(demand, gpus, False, out)
                    continue
                if self.check(demand) is not None:
                    continue  # can never be granted now (GPUs were lost): holds nothing back
                if len(blocked) < _PREEMPTING:
                    blocked.append(demand)
                if reservations_left > 0:
                    reservations_left -= 1
                    kept_now = self._reserve(demand)
                    reserved.extend(kept_now)
                    if kept_now:
                        reserved_for[demand.id] = kept_now
                else:
                    scanned_beyond += 1
                    if scanned_beyond >= self._depth(depth, reservations_left, blocked):
                        break
            else:
                walked_all = True  # a new request would be looked at too
            if late:
                self._retry_reserved(reserved_for, out)
                reserved = [part for taken in reserved_for.values() for part in taken]
            for demand in borrowers:
                if self.free_total == 0:
                    break
                gpus = self._place(demand)
                if gpus is not None:
                    self._grant(demand, gpus, True, out)
        finally:
            walk.close()
        frontier: _Frontier | None = None
        if not walked_all and not out.grants and seen.last is not None:
            seen.tier = self._tier_of(seen.last)  # the class the walk stopped in
            frontier = seen
        self.reserved = {
            rid: tuple(u for _, uuids in taken for u in uuids) for rid, taken in kept.items()
        }
        for rid, taken in reserved_for.items():
            self.reserved[rid] = self.reserved.get(rid, ()) + tuple(
                u for _, uuids in taken for u in uuids
            )
        # GPUs the last pass set aside and this one does not are free for the requests pinned
        # there; GPUs set aside again are not free now, so their nodes need no second look
        self._dirty.update(self._nodes(_released_aside(reserved_before, self.reserved)))
        self._backfill(out)
        self._backfill_pool(out)
        self._touch_reserved(reserved_before)
        for taken in kept.values():
            self._give_back(taken)
        self._give_back(reserved)
        self._in_pass = False
        self.touched.update(self._nodes(u for g in out.grants for u in g.gpus))
        if can_preempt:
            self._preempt(blocked, out)
        self._frontier = None if out.preemptions else self._beside(frontier, out.grants)
        return out

    def _step(self) -> int:
        """The step of time order keys are worked out for (see :meth:`_fresh_keys`): within
        one, nothing but a change reorders the queue."""
        return math.ceil(self.now / KEY_STEP_S)

    @property
    def settled(self) -> bool:
        """Whether the next pass (if nothing else changes first) is step 5 alone."""
        return self._frontier is not None and self._frontier.step == self._step()

    def dispose(self) -> None:
        """The scheduler is dropped (a state loaded again replaces it): its rankings let go of
        it, so that it is freed by reference counting as soon as nothing refers to it. A
        process may freeze its long-lived objects out of the cyclic collector's sight
        (``gc.freeze``); a frozen state in a cycle would never be freed. Of no use afterwards."""
        self.ranking.dispose()
        self._pool_queue.dispose()
        del self.parking  # it refers back to this scheduler

    def walk_next(self) -> None:
        """Make the next pass walk the queue (what a settled pass skips)."""
        self._frontier = None

    def _beside(self, frontier: _Frontier | None, grants: list[Grant]) -> _Frontier | None:
        """``frontier`` if none of ``grants`` moves what its walk saw: no grant to one of its
        users or accounts (whose fair-share keys grow) or to a member of one of its groups
        (whose quotas fill), and no grant that could be preempted on a node where one of its
        requests may preempt."""
        if frontier is None or not grants:
            return frontier
        accounts = {self._ranking_account(u) for u in frontier.users}
        preempts = self.policy.preemption
        for grant in grants:
            holding = self.holdings[grant.request_id]
            if (
                holding.user in frontier.users
                or self._ranking_account(holding.user) in accounts
                or not frontier.groups.isdisjoint(holding.groups)
            ):
                return None
            if (
                preempts
                and self._may_be_preempted(holding)
                and (frontier.anywhere or not frontier.nodes.isdisjoint(self._nodes(holding.gpus)))
            ):
                return None
        return frontier

    def _settled_pass(self) -> Outcome:
        """A pass that need not walk: the last walk decided nothing (step 5 may have granted
        beside what it saw, see :meth:`_beside`), and what came since are requests pinned to a
        node in classes below where it stopped, all within one step of order keys. A walk
        would see what it saw, in the same order, and stop at the same place, with the same
        reservations and no preemption; the requests that came are not reached (a walk takes
        a class after the classes above it). So only step 5 runs, on their nodes, around what
        the last pass set aside: a request costs its own node's look, not a walk of the
        queue's head."""
        frontier = self._frontier
        out = Outcome()
        self._in_pass = True
        aside: list[tuple[_Pool, list[str]]] = []
        for uuids in self.reserved.values():
            for uuid in uuids:
                pool = self._pool_of.get(uuid)
                if pool is not None and uuid in pool.free:
                    before = len(pool.free)
                    pool.free.remove(uuid)
                    self._moved(pool, before)
                    aside.append((pool, [uuid]))
        try:
            self._backfill(out)
        finally:
            self._give_back(aside)
            self._in_pass = False
        self.touched.update(self._nodes(u for g in out.grants for u in g.gpus))
        self._frontier = self._beside(frontier, out.grants)
        return out

    def _retry_reserved(
        self, reserved_for: dict[int, list[tuple[_Pool, list[str]]]], out: Outcome
    ) -> None:
        """GPUs nominated for a request were given back when the walk reached it, after
        requests ahead of it had been found blocked and reserved what they could: each of those,
        in order, is placed again with what it reserved and what is free now, or reserves
        again. (Else one that now fits would wait for the next pass, and if nothing changes,
        for ever.)"""
        for rid in list(reserved_for):
            demand = self.demands[rid]
            self._give_back(reserved_for.pop(rid))
            if self.over_quota(demand) is not None:
                continue  # grants of this pass after its reservation filled its quota
            gpus = self._place(demand)
            if gpus is not None:
                self._grant(demand, gpus, False, out)
                continue
            again = self._reserve(demand)
            if again:
                reserved_for[rid] = again

    def _depth(self, depth: int, reservations_left: int, blocked: list[Demand]) -> int:
        """How many requests beyond its reservations this pass looks at: ``depth`` once the
        reservations are made and preemption has its candidates, else ``max_scan``."""
        if reservations_left > 0 or (self.policy.preemption and len(blocked) < _PREEMPTING):
            return self.max_scan
        return depth

    def _backfill(self, out: Outcome) -> None:
        """Step 5: on the nodes that changed, grant the pinned requests that fit, in order."""
        dirty, self._dirty = self._dirty, set()
        if self.free_total == 0:
            return  # nothing fits anywhere; the nodes that change later are marked again
        for node in dirty:
            pinned = self._pinned.get(node)
            pools = self._node_pools.get(node, [])
            if not pinned or not any(p.free for p in pools):
                continue
            lenders: list[Demand] = []
            for demand in self._in_order(pinned.values()):
                if not any(p.free for p in pools):
                    break
                if self.over_quota(demand) is not None:
                    if self._may_borrow(demand):
                        lenders.append(demand)
                    continue
                gpus = self._place(demand)
                if gpus is not None:
                    self._grant(demand, gpus, False, out)
            for demand in lenders:
                gpus = self._place(demand)
                if gpus is not None:
                    self._grant(demand, gpus, True, out)

    def _backfill_pool(self, out: Outcome) -> None:
        """Step 5 for the pool's requests, whatever the scan limit: while some group of them
        (model, GPUs, gang) fits in what is free and not set aside, the best first request
        within quota among the groups that fit is placed (see pool_queue.py); then those over
        quota that may borrow, in the same order."""
        queue = self._pool_queue
        if not queue or self.free_total == 0:
            return
        walks: dict[GroupKey, Generator[Demand, None, None]] = {}
        offers: dict[GroupKey, Demand] = {}
        lenders: list[Demand] = []
        try:
            while self.free_total > 0:
                best: tuple[tuple[float, ...], GroupKey, Demand] | None = None
                for key, ranking in queue.waiting():
                    if not self._group_fits(key):
                        continue
                    offer = offers.get(key)
                    if offer is None:
                        walk = walks.get(key)
                        if walk is None:
                            walk = walks[key] = ranking.walk(self.now)
                        offer = self._next_offer(ranking, walk, lenders)
                        if offer is None:
                            continue
                        offers[key] = offer
                    rank = self.order_key(offer)
                    if best is None or rank < best[0]:
                        best = (rank, key, offer)
                if best is None:
                    break
                _, key, demand = best
                del offers[key]
                if self.over_quota(demand) is not None:
                    # its offer was made before a grant of this loop to its user or group
                    if self._may_borrow(demand):
                        lenders.append(demand)
                    continue
                gpus = self._place(demand)
                if gpus is not None:
                    self._grant(demand, gpus, False, out)
        finally:
            for walk in walks.values():
                walk.close()
            queue.prune()
        lenders.sort(key=self.order_key)
        for demand in lenders:
            if self.free_total == 0:
                break
            if demand.id in self.demands:
                gpus = self._place(demand)
                if gpus is not None:
                    self._grant(demand, gpus, True, out)

    def _group_fits(self, key: GroupKey) -> bool:
        """Whether a request of this group may fit in what is free now (an upper bound: the
        nodes it avoids are not counted out)."""
        model, count, gang, per_node = key
        models = self._models(model)
        if per_node:
            # an upper bound too: pools of one node are not told apart
            enough = 0
            for m in models:
                buckets = self._buckets.get(m, ())
                enough += sum(len(buckets[free]) for free in range(per_node, len(buckets)))
            return enough >= count // per_node
        if gang:
            return sum(self._free_by_model[m] for m in models) >= count
        for m in models:
            buckets = self._buckets.get(m, ())
            if any(buckets[free] for free in range(count, len(buckets))):
                return True
        return False

    def _next_offer(
        self, ranking: Ranking, walk: Generator[Demand, None, None], lenders: list[Demand]
    ) -> Demand | None:
        """The group's next request within quota that may be granted; the user of one over
        quota is passed over in the group (its requests all ask as much), kept as a lender
        when it may borrow."""
        for demand in walk:
            if self.over_quota(demand) is not None:
                if self._may_borrow(demand):
                    lenders.append(demand)
                ranking.skip(demand)
                continue
            if self.check(demand) is None:
                return demand
        return None

    def _rerank(self, user: str, account: str) -> None:
        """The user's (and its account's) fair-share key moved."""
        self.ranking.rerank(user)
        self.ranking.rerank_account(account)
        self._pool_queue.rerank(user)
        self._pool_queue.rerank_account(account)

    def order_key(self, demand: Demand) -> tuple[float, ...]:
        """Where ``demand`` stands in the order of service if nothing changes: class, then
        (unless it waited past the starvation limit) fair share of its account and user, then
        age."""
        tier = self.policy.class_map[demand.klass].priority
        limit = self.policy.starvation_limit
        if limit and self.now - demand.submitted_at >= limit:
            return (-tier, 0.0, demand.submitted_at, demand.id)
        account = self._ranking_account(demand.user)
        return (
            -tier,
            1.0,
            self._account_key(account),
            self._user_key(demand.user),
            demand.submitted_at,
            demand.id,
        )

    def in_order(self) -> Iterator[Demand]:
        """Every waiting request in the order of :meth:`order_key`, lazily: the first ``k``
        cost O(users log users + k), not a sort of the whole queue. Each user's requests of a
        class wait in order of age (the ranking's queues), so the order is a merge of them: by
        class; the starving (past the starvation limit) first, oldest first; then users by the
        fair share of their account and their own, each user's requests by age."""
        limit = self.policy.starvation_limit
        cutoff = self.now - limit if limit else None
        by_tier: dict[int, list[tuple[str, list[Demand]]]] = defaultdict(list)
        for (tier, user), queue in self.ranking.queues.items():
            if queue:
                by_tier[tier].append((user, queue))
        for tier in sorted(by_tier, reverse=True):
            starving: list[list[Demand]] = []
            rest: list[tuple[tuple[float, float], list[Demand]]] = []
            for user, queue in by_tier[tier]:
                old = 0
                if cutoff is not None:
                    old = bisect.bisect_right(queue, cutoff, key=_submitted)
                if old:
                    starving.append(queue[:old])
                if old < len(queue):
                    fair = (self._account_key(self._ranking_account(user)), self._user_key(user))
                    rest.append((fair, queue[old:]))
            yield from heapq.merge(*starving, key=_age)
            rest.sort(key=lambda entry: entry[0])
            for _, same in itertools.groupby(rest, key=lambda entry: entry[0]):
                yield from heapq.merge(*(queue for _, queue in same), key=_age)

    def unserved(self) -> list[int]:
        """Requests within their quotas that would fit in free GPUs not set aside for others
        (a pinned one on its node; one of the pool on a node it does not avoid, a gang in all
        of them): none after a pass (it is work-conserving). A check, for tests: it costs the
        whole queue."""
        aside: dict[str, Counter[int]] = defaultdict(Counter)  # node -> request -> GPUs kept
        for rid, uuids in self.reserved.items():
            for uuid in uuids:
                pool = self._pool_of.get(uuid)
                if pool is not None and uuid in pool.free:
                    aside[pool.node][rid] += 1
        found = []
        for node, pinned in self._pinned.items():
            for demand in pinned.values():
                if self.over_quota(demand) is not None:
                    continue
                models = self._models(demand.model)
                free = sum(len(p.free) for p in self._node_pools.get(node, []) if p.model in models)
                others = sum(n for rid, n in aside[node].items() if rid != demand.id)
                if free - others >= demand.count:
                    found.append(demand.id)
        for demand in self.demands.values():
            if demand.node is not None or self.over_quota(demand) is not None:
                continue
            models = self._models(demand.model)
            # one model's GPUs on one node, unless a gang (as placement packs them)
            room = []
            roomy: set[str] = set()  # for whole nodes: the nodes with enough room
            for pool in self._pool_list:
                if pool.model not in models or pool.node in demand.avoid:
                    continue
                others = sum(n for rid, n in aside[pool.node].items() if rid != demand.id)
                room.append(max(len(pool.free) - others, 0))
                if demand.per_node is not None and room[-1] >= demand.per_node:
                    roomy.add(pool.node)
            shape = demand.shape
            if shape is not None:
                if len(roomy) >= shape[0]:
                    found.append(demand.id)
            elif (sum(room) if demand.gang else max(room, default=0)) >= demand.count:
                found.append(demand.id)
        return sorted(found)

    def node_models(self, node: str) -> dict[str, int]:
        """The node's GPUs that may be handed out: model -> how many."""
        return {p.model: len(p.gpus) for p in self._node_pools.get(node, []) if p.gpus}

    def pinned_count(self, node: str) -> int:
        return len(self._pinned.get(node, ()))

    def pinned(self, node: str) -> list[Demand]:
        """The requests waiting for GPUs of ``node``, in the order of service."""
        return self._in_order(self._pinned.get(node, {}).values())

    def _in_order(self, demands: Iterable[Demand]) -> list[Demand]:
        """``demands`` sorted by :meth:`order_key`, each user's fair-share keys worked out once
        (a node's queue is hundreds of requests of a few dozen users)."""
        limit = self.policy.starvation_limit
        now = self.now
        classes = self.policy.class_map
        fair: dict[str, tuple[float, float]] = {}

        def key(d: Demand) -> tuple[float, ...]:
            tier = classes[d.klass].priority
            if limit and now - d.submitted_at >= limit:
                return (-tier, 0.0, d.submitted_at, d.id)
            f = fair.get(d.user)
            if f is None:
                account = self._ranking_account(d.user)
                f = fair[d.user] = (self._account_key(account), self._user_key(d.user))
            return (-tier, 1.0, f[0], f[1], d.submitted_at, d.id)

        return sorted(demands, key=key)

    def _keep_nominated(self) -> dict[int, list[tuple[_Pool, list[str]]]]:
        """Set aside the free GPUs on nominated pools for their requests (as Kubernetes does for
        nominated pods), so that others of their class cannot take what was preempted for them."""
        kept: dict[int, list[tuple[_Pool, list[str]]]] = {}
        for request_id, pool_ids in list(self._nominated.items()):
            demand = self.demands.get(request_id)
            if demand is None:
                del self._nominated[request_id]
                continue
            need = demand.count
            taken_here = []
            for pid in pool_ids:
                if need <= 0:
                    break
                taken = self._take(self._pool_list[pid], min(need, demand.per_node or need))
                need -= len(taken)
                if taken:
                    taken_here.append((self._pool_list[pid], taken))
            if taken_here:
                kept[request_id] = taken_here
        return kept

    def _unfree(self, uuid: str) -> None:
        """Take ``uuid`` out of its pool's free GPUs, if it is there."""
        pool = self._pool_of.get(uuid)
        if pool is not None and uuid in pool.free:
            before = len(pool.free)
            pool.free.remove(uuid)
            self._moved(pool, before)

    def _give_back(self, taken: list[tuple[_Pool, list[str]]]) -> None:
        for pool, uuids in taken:
            before = len(pool.free)
            pool.free.extend(u for u in uuids if u in pool.gpus)
            pool.free.sort(key=pool.gpus.__getitem__)
            self._moved(pool, before)

    # -- internals ---------------------------------------------------------------------------

    def _models(self, wanted: str | None) -> tuple[str, ...]:
        found = self._model_cache.get(wanted)
        if found is None:
            found = tuple(
                sorted({p.model for p in self._pool_list if model_matches(wanted, p.model)})
            )
            self._model_cache[wanted] = found
        return found

    def _moved(self, pool: _Pool, before: int) -> None:
        """Keep the free-count index right after ``pool.free`` changed from ``before`` GPUs."""
        if not self._in_pass:
            # a pass sets GPUs aside and gives them back: only what it decides touches a node
            self.touched.add(pool.node)
        after = len(pool.free)
        buckets = self._buckets.get(pool.model)
        if buckets is None:
            buckets = self._buckets[pool.model] = []
        while len(buckets) <= max(after, len(pool.gpus)):
            buckets.append(set())
        buckets[before].discard(pool.id)
        buckets[after].add(pool.id)
        self._free_by_model[pool.model] += after - before
        self.free_total += after - before

    def _set_account(self, user: str, groups: Iterable[str]) -> None:
        account = self.policy.account_of(groups)
        old = self._account_of.get(user)
        if old != account:
            if old is not None:
                self._frontier = None  # the user's requests move to another account
                self._members[old].discard(user)
            self._account_of[user] = account
            self._members[account].add(user)
            self.ranking.rerank(user)
            self._pool_queue.rerank(user)

    def _take(self, pool: _Pool, count: int) -> list[str]:
        before = len(pool.free)
        taken, pool.free = pool.free[:count], pool.free[count:]
        self._moved(pool, before)
        return taken

    def _place(self, demand: Demand) -> list[str] | None:
        models = self._models(demand.model)
        count = demand.count
        if demand.node is not None:
            pools = [p for p in self._node_pools.get(demand.node, []) if p.model in models]
            if sum(len(p.free) for p in pools) < count:
                return None
            taken: list[str] = []
            for pool in pools:
                taken += self._take(pool, count - len(taken))
                if len(taken) == count:
                    break
            return taken
        shape = demand.shape
        if shape is not None:
            fits = self._whole_nodes(models, shape, demand.avoid)
            if len(fits) < shape[0]:
                return None
            return [u for pool in fits for u in self._take(pool, shape[1])]
        best: tuple[int, int] | None = None
        for model in models:
            buckets = self._buckets.get(model, [])
            for free in range(count, len(buckets)):
                pid = self._first_allowed(buckets[free], demand.avoid)
                if pid is not None:
                    if best is None or free < best[0]:
                        best = (free, pid)
                    break
        if best is not None:
            return self._take(self._pool_list[best[1]], count)
        if not demand.gang or sum(self._free_by_model[m] for m in models) < count:
            return None
        taken = []
        for pool in self._fullest(models, count, avoid=demand.avoid):
            taken += self._take(pool, count - len(taken))
            if len(taken) == count:
                break
        return taken

    def _whole_nodes(
        self, models: tuple[str, ...], shape: tuple[int, int], avoid: frozenset[str]
    ) -> list[_Pool]:
        """Up to ``nodes`` pools on different nodes with ``per_node`` free GPUs each, best fit
        (see :func:`whole_node_pools`)."""
        found = whole_node_pools(
            [self._buckets.get(m, []) for m in models],
            lambda pid: self._pool_list[pid].node,
            shape,
            avoid,
        )
        return [self._pool_list[pid] for pid in found]

    def _closest_nodes(
        self, models: tuple[str, ...], shape: tuple[int, int], avoid: frozenset[str]
    ) -> list[_Pool]:
        """Up to ``nodes`` pools large enough, on different nodes, the most free first: what a
        waiting gang in whole nodes keeps for itself (those closest to fitting)."""
        nodes, per_node = shape
        seen: set[str] = set()
        found: list[_Pool] = []
        for pool in self._fullest(models, 1 << 62, big=per_node, avoid=avoid):
            if pool.node not in seen:
                seen.add(pool.node)
                found.append(pool)
                if len(found) == nodes:
                    break
        return found

    def _first_allowed(self, pids: set[int], avoid: frozenset[str]) -> int | None:
        """A pool of ``pids`` on a node not in ``avoid`` (any of them when nothing is avoided)."""
        if not avoid:
            return next(iter(pids), None)
        for pid in pids:
            if self._pool_list[pid].node not in avoid:
                return pid
        return None

    def _fullest(
        self,
        models: tuple[str, ...],
        enough: int,
        *,
        big: int = 0,
        avoid: frozenset[str] = frozenset(),
    ) -> list[_Pool]:
        """Pools with free GPUs of these models, most free first, until ``enough`` are free
        (0: the first one); only pools of at least ``big`` GPUs, on nodes not in ``avoid``."""
        per_model = [self._buckets.get(m, []) for m in models]
        top = max((len(b) for b in per_model), default=0)
        found: list[_Pool] = []
        total = 0
        for free in range(top - 1, 0, -1):
            for buckets in per_model:
                if free < len(buckets):
                    for pid in sorted(buckets[free]) if len(buckets[free]) < 64 else buckets[free]:
                        pool = self._pool_list[pid]
                        if len(pool.gpus) < big or pool.node in avoid:
                            continue
                        found.append(pool)
                        total += free
                        if total >= enough:
                            return found
        return found

    def _reserve(self, demand: Demand) -> list[tuple[_Pool, list[str]]]:
        models = self._models(demand.model)
        nominated = self._nominated.get(demand.id)
        if demand.node is not None:
            pools = [p for p in self._node_pools.get(demand.node, []) if p.model in models]
        elif nominated:
            pools = [self._pool_list[i] for i in nominated]
        elif demand.shape is not None:
            pools = self._closest_nodes(models, demand.shape, demand.avoid)
        elif demand.gang:
            pools = self._fullest(models, demand.count, avoid=demand.avoid)
        else:
            # the node closest to fitting, among those large enough
            pools = self._fullest(models, 0, big=demand.count, avoid=demand.avoid)[:1]
        kept = []
        need = demand.count
        for pool in pools:
            if need <= 0:
                break
            taken = self._take(pool, min(need, demand.per_node or need))
            need -= len(taken)
            if taken:
                kept.append((pool, taken))
        return kept

    def _grant(
        self,
        demand: Demand,
        gpus: list[str],
        borrowed: bool,
        out: Outcome,
        *,
        on_loan: bool = False,
    ) -> None:
        del self.demands[demand.id]
        self.ranking.remove(demand)
        self._unpin(demand)
        self._pool_queue.remove(demand)
        self.parking.left(demand.id)
        self._nominated.pop(demand.id, None)
        holding = Holding(
            id=demand.id,
            user=demand.user,
            groups=demand.groups,
            klass=demand.klass,
            kind=demand.kind,
            gpus=tuple(gpus),
            granted_at=self.now,
            borrowed=borrowed,
            on_loan=on_loan,
        )
        self.hold(holding)
        out.grants.append(Grant(demand.id, holding.gpus, borrowed, on_loan))

    def over_quota(self, demand: Demand) -> str | None:
        """Why granting ``demand`` would pass a quota; None within every quota."""
        held = self.users[demand.user].held
        quota = self.policy.quota_of_user(demand.user)
        if quota is not None and held + demand.count > quota:
            return f"{demand.user} holds {held} GPU(s) of a quota of {quota}"
        for group in demand.groups:
            gq = self.policy.group_quotas.get(group)
            if gq is not None and self.held_by_group[group] + demand.count > gq:
                return f"group {group} holds {self.held_by_group[group]} GPU(s) of a quota of {gq}"
        return None

    def _may_borrow(self, demand: Demand) -> bool:
        klass = self.policy.class_map[demand.klass]
        return self.policy.borrowing and klass.preemptible and demand.kind == "job"

    def _class_borrows(self, demand: Demand) -> bool:
        """Whether jobs of the request's class may borrow (then later ones are still looked at)."""
        return self.policy.borrowing and self.policy.class_map[demand.klass].preemptible

    def _quota_full(self, demand: Demand) -> bool:
        """No request of this user can be granted within quota until something is released."""
        quota = self.policy.quota_of_user(demand.user)
        if quota is not None and self.users[demand.user].held >= quota:
            return True
        for group in demand.groups:
            gq = self.policy.group_quotas.get(group)
            if gq is not None and self.held_by_group[group] >= gq:
                return True
        return False

    def _may_be_preempted(self, holding: Holding) -> bool:
        if holding.kind != "job" or holding.on_loan:
            # a loan frees only its parked grant's GPUs: preempting it helps nobody else
            return False
        try:
            return self.policy.class_map[holding.klass].preemptible
        except KeyError:
            return True  # its class was removed: it no longer outranks anything

    def take_touched(self) -> set[str]:
        """The nodes touched since the last call (and forget them)."""
        touched, self.touched = self.touched, set()
        return touched

    def _touch_reserved(self, before: dict[int, tuple[str, ...]]) -> None:
        """The nodes where what a pass set aside changed since ``before``."""
        changed = set(before.items()) ^ set(self.reserved.items())
        self.touched.update(self._nodes(u for _, g in changed for u in g))

    def _charge(self, user: str, groups: tuple[str, ...], delta: int) -> None:
        quota = self.policy.quota_of_user(user)
        if quota is not None:
            self._quota_moved(("user", user), quota, self.users[user].held, delta)
        for group in groups:
            quota = self.policy.group_quotas.get(group)
            if quota is not None:
                self._quota_moved(("group", group), quota, self.held_by_group[group], delta)
        h = self.policy.half_life
        if user not in self._account_of:
            self._set_account(user, groups)
        account = self._account_of[user]
        self.users[user].change(self.now, h, delta)
        self.accounts[account].change(self.now, h, delta)
        for group in groups:
            self.held_by_group[group] += delta
        self._ukeys.pop(user, None)
        self._akeys.pop(account, None)
        self._rerank(user, account)

    def _quota_moved(self, who: tuple[str, str], quota: int, held: int, delta: int) -> None:
        """What ``who`` (a user or a group) holds under ``quota`` moves from ``held`` by
        ``delta``: the waiting requests that go over it or back within it are on nodes to be
        explained again, and (when it fell) to be looked at by the next pass. A request of ``c``
        GPUs is over iff held + c > quota: those that flip ask for quota - high < c <= quota -
        low."""
        low, high = sorted((held, held + delta))
        for count in range(max(quota - high + 1, 1), min(quota - low, self._largest_asked) + 1):
            nodes = self._nodes_waited.get((*who, count))
            if nodes:
                self.touched.update(nodes)
                if delta < 0:
                    self._dirty.update(nodes)

    def _unpin(self, demand: Demand) -> None:
        if demand.node is not None:
            pinned = self._pinned.get(demand.node)
            if pinned is not None and pinned.pop(demand.id, None) is not None:
                self._pinned_total -= 1
                self.touched.add(demand.node)
                self._count_waiting(demand, -1)
                if not pinned:
                    del self._pinned[demand.node]

    def _nodes(self, uuids: Iterable[str]) -> set[str]:
        """The nodes of these GPUs (those still known)."""
        return {self._pool_of[u].node for u in uuids if u in self._pool_of}

    def _count_waiting(self, demand: Demand, delta: int) -> None:
        """Keep ``_nodes_waited`` right as a pinned request comes or goes."""
        node = demand.node
        if node is None:
            return
        count = demand.count
        for key in (("user", demand.user, count), *(("group", g, count) for g in demand.groups)):
            nodes = self._nodes_waited[key]
            nodes[node] += delta
            if nodes[node] <= 0:
                del nodes[node]

    def _new_ranking(self) -> Ranking:
        ranking = Ranking(
            tier_of=self._tier_of,
            account_of=self._ranking_account,
            account_key=self._account_key,
            user_key=self._user_key,
        )
        ranking.starvation_limit = self.policy.starvation_limit
        return ranking

    def _tier_of(self, demand: Demand) -> int:
        return self.policy.class_map[demand.klass].priority

    def _ranking_account(self, user: str) -> str:
        return self._account_of.get(user, "") if self.policy.fair_share else ""

    def _fresh_keys(self) -> float:
        """The time keys are worked out as of: the end of the current step (not before any
        account's last change, which is at most now)."""
        at = self._step() * KEY_STEP_S
        if self._keys_at != at:
            self._keys_at = at
            self._ukeys.clear()
            self._akeys.clear()
        return at

    def _account_key(self, account: str) -> float:
        if not self.policy.fair_share:
            return 0.0
        at = self._fresh_keys()
        key = self._akeys.get(account)
        if key is None:
            usage = self.accounts[account].key(at, self.policy.half_life)
            key = self._akeys[account] = usage / self.policy.share_of_group(account)
        return key

    def _user_key(self, user: str) -> float:
        if not self.policy.fair_share:
            return 0.0
        at = self._fresh_keys()
        key = self._ukeys.get(user)
        if key is None:
            usage = self.users[user].key(at, self.policy.half_life)
            key = self._ukeys[user] = usage / self.policy.share_of_user(user)
        return key

    def _index_victim(self, holding: Holding) -> None:
        if holding.borrowed:
            self._borrowed.add(holding.id)
        pools = [self._pool_of[u].id for u in holding.gpus if u in self._pool_of]
        self._victim_pools[holding.id] = pools
        for pid in pools:
            self._pool_victims[pid] += 1
        self._victim_gpus += len(pools)
        self._victim_epoch += 1

    def _unindex_victim(self, holding: Holding) -> None:
        pools = self._victim_pools.pop(holding.id, None)
        if pools is None:
            return
        self._borrowed.discard(holding.id)
        for pid in pools:
            self._pool_victims[pid] -= 1
        self._victim_gpus -= len(pools)

    def _prio_of(self, holding: Holding) -> int:
        klass = self.policy.class_map.get(holding.klass)
        # a class that was removed no longer outranks anything
        return klass.priority if klass is not None else -(10**9)

    def _preempt(self, blocked: list[Demand], out: Outcome) -> None:
        claimed: dict[int, int] = defaultdict(int)  # pool id -> free GPUs promised in this pass
        if len(self._no_victims) > 4 * len(self.demands) + 64:
            self._no_victims = {k: v for k, v in self._no_victims.items() if k in self.demands}
        for demand in blocked:
            if self.pending.get(demand.id, 0) > 0 or demand.id not in self.demands:
                continue
            if self.over_quota(demand) is not None:
                continue  # grants made in this pass put it over quota
            if self._no_victims.get(demand.id) == self._victim_epoch:
                continue  # searched in vain, and nothing has changed since
            victims = self._victims(demand, claimed)
            if not victims:
                self._no_victims[demand.id] = self._victim_epoch
                continue
            self._no_victims.pop(demand.id, None)
            prio = self.policy.class_map[demand.klass].priority
            for holding in victims:
                why = (
                    "it holds borrowed GPUs (beyond its quota)"
                    if holding.borrowed
                    else f"its class {holding.klass} ranks below {demand.klass}"
                )
                message = (
                    f"preempted for request {demand.id} of {demand.user} ({demand.klass}, "
                    f"priority {prio}): {why}"
                )
                self._mark(holding, demand.id)
                out.preemptions.append(Preemption(holding.id, demand.id, message))

    def may_have_victims(self, request_id: int) -> bool:
        """Whether grants may be marked as preempted for request ``request_id`` (False: none
        is, those loaded marked included, whatever they hold)."""
        return self.pending.get(request_id, 0) > 0 or request_id in self._nominated

    def _mark(self, holding: Holding, request_id: int) -> None:
        waiter = self.demands.get(request_id)
        if waiter is not None and waiter.node is not None:
            self.touched.add(waiter.node)
        self._unindex_victim(holding)
        marked = replace(holding, preempted_for=request_id)
        self.holdings[holding.id] = marked
        self.pending[request_id] += len(holding.gpus)
        self._nominate(request_id, holding)

    def _nominate(self, request_id: int, holding: Holding) -> None:
        pools = self._nominated.setdefault(request_id, [])
        for pool in sorted(
            {self._pool_of[u] for u in holding.gpus if u in self._pool_of}, key=lambda p: p.id
        ):
            if pool.id not in pools:
                pools.append(pool.id)

    def _is_victim_for(self, holding_id: int, prio: int) -> bool:
        if holding_id in self._borrowed:
            return True
        return holding_id in self._victim_pools and self._prio_of(self.holdings[holding_id]) < prio

    def _pick(
        self, demand: Demand, pools: list[_Pool], prio: int, claimed: dict[int, int]
    ) -> list[Holding]:
        """The cheapest victims on ``pools`` that free enough with their free GPUs; [] if none:
        borrowed first, then the lowest class, then the most recently started."""
        ids = {p.id for p in pools}
        held = {self._holder_of[u] for p in pools for u in p.gpus if u in self._holder_of}
        candidates = sorted(
            (self.holdings[h] for h in held if self._is_victim_for(h, prio)),
            key=lambda h: (not h.borrowed, self._prio_of(h), -h.granted_at, h.id),
        )
        have = sum(len(p.free) - claimed[p.id] for p in pools)
        chosen: list[Holding] = []
        for holding in candidates:
            if have >= demand.count:
                break
            chosen.append(holding)
            have += sum(
                1 for u in holding.gpus if u in self._pool_of and self._pool_of[u].id in ids
            )
        if have < demand.count or not chosen:
            return []
        return chosen

    def _node_victims(
        self,
        demand: Demand,
        shape: tuple[int, int],
        models: tuple[str, ...],
        prio: int,
        claimed: dict[int, int],
    ) -> list[Holding]:
        """Whole nodes for a gang that asks for them: the nodes where enough is free come
        first (no victim), then the cheapest of those where preemptible work would free enough,
        all or nothing; the search costs the nodes with free GPUs or preemptible work."""
        nodes, per_node = shape
        one = replace(demand, count=per_node, gang=False, per_node=None)
        chosen: dict[str, tuple[tuple[int, int, int], list[Holding], _Pool]] = {}
        for pool in self._whole_nodes(models, shape, demand.avoid):
            if len(pool.free) - claimed[pool.id] >= per_node:
                chosen[pool.node] = ((0, 0, 0), [], pool)
        if len(chosen) < nodes:
            for pid, count in self._pool_victims.items():
                pool = self._pool_list[pid]
                if count <= 0 or pool.model not in models or pool.node in demand.avoid:
                    continue
                if pool.node in chosen or len(pool.gpus) < per_node:
                    continue
                if len(pool.free) - claimed[pid] + count < per_node:
                    continue
                found = self._pick(one, [pool], prio, claimed)
                if found:
                    cost = (
                        sum(1 for h in found if not h.borrowed),
                        max(self._prio_of(h) for h in found),
                        len(found),
                    )
                    chosen[pool.node] = (cost, found, pool)
        if len(chosen) < nodes:
            return []
        best = sorted(chosen.values(), key=lambda entry: (entry[0], entry[2].id))[:nodes]
        victims: dict[int, Holding] = {}
        for _, found, _pool in best:
            for holding in found:
                victims[holding.id] = holding
        if not victims:
            return []  # it fits as it is: the pass places it
        self._claim([pool for _, _, pool in best], claimed)
        return list(victims.values())

    def _claim(self, pools: list[_Pool], claimed: dict[int, int]) -> None:
        for p in pools:
            claimed[p.id] = len(p.free)

    def _victims(self, demand: Demand, claimed: dict[int, int]) -> list[Holding]:
        """Holdings whose preemption frees enough GPUs for ``demand``; [] when none would.

        Pinned: on its node. Gang: anywhere, all or nothing. Otherwise the first node (in a
        stable order) where free GPUs and preemptible ones add up; nodes are sifted by a count
        kept per node, so a search costs O(nodes with preemptible work), not O(holdings).
        """
        prio = self.policy.class_map[demand.klass].priority
        models = self._models(demand.model)
        if demand.shape is not None:
            return self._node_victims(demand, demand.shape, models, prio, claimed)
        if demand.node is not None or demand.gang:
            pools = [
                p
                for p in (
                    self._node_pools.get(demand.node, [])
                    if demand.node is not None
                    else self._pool_list
                )
                if p.model in models
            ]
            free = sum(len(p.free) - claimed[p.id] for p in pools)
            if free + self._victim_gpus < demand.count:
                return []
            found = self._pick(demand, pools, prio, claimed)
            if found:
                self._claim(pools, claimed)
            return found
        # the cheapest of the first few nodes where enough would come free
        best: tuple[tuple[int, int, int], list[Holding], _Pool] | None = None
        looked = 0
        for pid, count in self._pool_victims.items():
            if count <= 0:
                continue
            pool = self._pool_list[pid]
            if pool.model not in models or len(pool.gpus) < demand.count:
                continue
            if len(pool.free) - claimed[pid] + count < demand.count:
                continue
            found = self._pick(demand, [pool], prio, claimed)
            if not found:
                continue
            cost = (
                sum(1 for h in found if not h.borrowed),
                max(self._prio_of(h) for h in found),
                len(found),
            )
            if best is None or cost < best[0]:
                best = (cost, found, pool)
            looked += 1
            if cost[0] == 0 or looked >= _NODES_COMPARED:
                break
        if best is None:
            return []
        self._claim([best[2]], claimed)
        return best[1]
