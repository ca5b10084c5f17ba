"""What the pool's requests are told: place, reason and estimated start of requests that may take
GPUs of any node (placement ``pool``: work a cluster starts wherever the ledger admits it).

A request of the pool takes GPUs of one model on one node (a pod does not span nodes), wherever
the pass finds room, best fit first, as :meth:`Scheduler._place` does; a gang in whole nodes (a
distributed job) takes as many GPUs on each of several different nodes. Its place is among the
pool's requests in the order of service; requests pinned to a node (kernels waiting for their own
node's GPUs) compete there and are not counted in it. Reasons have the codes of
:mod:`~jupyter_dlinfra.core.scheduling.explain`; ``no_free_gpu`` and the kept-for reasons speak
of the node with the most free GPUs, since that is what one request can use.

Estimated starts replay the pool forward, as a node's are replayed: each holding's GPUs come back
at its expected end; each request starts, in order and not before the one ahead, on the first
node where enough GPUs of its models are free, and holds them for its class's typical time. The
replay costs the cluster's holdings and the explained head of the queue, not the queue behind it.
"""

from __future__ import annotations

import heapq
from collections import Counter
from collections.abc import Callable, Iterator

from jupyter_dlinfra.core.scheduling.explain import (
    DEFAULT,
    HISTORY,
    Estimate,
    Takers,
    WaitInfo,
    _why_kept,
    kept_aside,
    preempting_wait,
    quota_wait,
    took_by,
    wait_info,
)
from jupyter_dlinfra.core.scheduling.scheduler import Scheduler, whole_node_pools
from jupyter_dlinfra.core.scheduling.types import Demand, Holding
from jupyter_dlinfra.core.wording import plural

__all__ = ["beyond_pool", "estimate_pool", "explain_pool", "pool_order"]


def pool_order(s: Scheduler) -> Iterator[Demand]:
    """The pool's requests in the order of service, lazily (the first ``k`` cost what
    :meth:`Scheduler.in_order` costs for as many requests as come before them)."""
    return (d for d in s.in_order() if d.node is None)


class _FreeIndex:
    """Free GPUs per pool, and pools by how many are free, per model: a request's best fit
    (the pool with the fewest free GPUs that are enough) in O(GPUs of a node), not O(nodes)."""

    def __init__(self, s: Scheduler, free: dict[int, int]) -> None:
        self.free = free
        self.model_of = {p.id: p.model for p in s._pool_list}
        self.node_of = {p.id: p.node for p in s._pool_list}
        self.buckets: dict[str, list[set[int]]] = {}
        self.in_all: Counter[str] = Counter()
        self.total: Counter[str] = Counter()
        for p in s._pool_list:
            if not p.gpus:
                continue
            n = free[p.id]
            self._bucket(p.model, n).add(p.id)
            self.in_all[p.model] += n
            self.total[p.model] += len(p.gpus)

    def _bucket(self, model: str, n: int) -> set[int]:
        found = self.buckets.setdefault(model, [])
        while len(found) <= n:
            found.append(set())
        return found[n]

    def set(self, pid: int, n: int) -> None:
        old = self.free[pid]
        if old == n:
            return
        model = self.model_of[pid]
        self._bucket(model, old).discard(pid)
        self._bucket(model, n).add(pid)
        self.in_all[model] += n - old
        self.free[pid] = n

    def best(
        self, models: tuple[str, ...], count: int, avoid: frozenset[str] = frozenset()
    ) -> int | None:
        """The pool of these models with the fewest free GPUs, at least ``count``, on a node
        not in ``avoid``."""
        best: tuple[int, int] | None = None
        for model in models:
            buckets = self.buckets.get(model, [])
            for n in range(count, len(buckets)):
                pid = next((p for p in buckets[n] if self.node_of[p] not in avoid), None)
                if pid is not None:
                    if best is None or n < best[0]:
                        best = (n, pid)
                    break
        return None if best is None else best[1]

    def whole_nodes(
        self, models: tuple[str, ...], shape: tuple[int, int], avoid: frozenset[str]
    ) -> list[int]:
        """Up to ``nodes`` pools on different nodes with ``per_node`` free GPUs each, as the
        pass picks them."""
        per_model = [self.buckets.get(m, []) for m in models]
        return whole_node_pools(per_model, self.node_of.__getitem__, shape, avoid)

    def fit(self, models: tuple[str, ...], d: Demand) -> list[tuple[int, int]] | None:
        """Where ``d`` would start now: (pool, GPUs) for each part; None when it does not fit."""
        shape = d.shape
        if shape is None:
            pid = self.best(models, d.count, d.avoid)
            return None if pid is None else [(pid, d.count)]
        pools = self.whole_nodes(models, shape, d.avoid)
        return [(pid, shape[1]) for pid in pools] if len(pools) == shape[0] else None

    def take(self, parts: list[tuple[int, int]]) -> None:
        for pid, n in parts:
            self.set(pid, self.free[pid] - n)

    def most(self, models: tuple[str, ...]) -> int:
        """The most free GPUs of these models on one pool."""
        found = 0
        for model in models:
            buckets = self.buckets.get(model, [])
            for n in range(len(buckets) - 1, found, -1):
                if buckets[n]:
                    found = n
                    break
        return found


def explain_pool(
    s: Scheduler,
    queue: list[Demand],
    *,
    expected_end: Callable[[Holding], float],
    duration: Callable[[Demand], float],
    assumed: Callable[[str], bool] = lambda klass: False,
    horizon: float = 14 * 86400.0,
    first: int = 1,
) -> dict[int, WaitInfo]:
    """Place, reason and estimated start of each of ``queue`` (the head of the pool's order
    of service, from place ``first``)."""
    if not queue:
        return {}
    starts = estimate_pool(s, queue, expected_end, duration, assumed=assumed, horizon=horizon)
    policy = s.policy
    real = _FreeIndex(s, {p.id: len(p.free) for p in s._pool_list})
    free = _FreeIndex(s, dict(real.free))
    takers: Takers = {}

    def keep(pid: int) -> bool:
        if free.free.get(pid, 0) <= 0:
            return False
        free.set(pid, free.free[pid] - 1)
        return True

    set_aside = kept_aside(s, keep, takers)
    view: dict[int, WaitInfo] = {}
    for position, d in enumerate(queue, start=first):
        mine = set_aside.pop(d.id, None)
        if mine:
            for pid, n in mine.items():
                free.set(pid, free.free[pid] + n)
        tier = policy.class_map[d.klass].priority
        models = s._models(d.model)
        over = quota_wait(s, d)
        pending = s.pending.get(d.id, 0)
        fit = free.fit(models, d)
        if over is not None:
            code, reason = "quota", over
        elif pending:
            code, reason = "preempting", preempting_wait(pending)
        elif fit is not None:
            code, reason = "starting", "GPUs are free for it; it starts at the next pass"
            free.take(fit)
            for pid, _ in fit:
                took_by(takers, free.model_of[pid], tier, d.user)
        else:
            code, reason = _no_room(s, d, real, models, tier, takers)
        view[d.id] = wait_info(d.id, position, code, reason, starts.get(d.id))
    return view


def _no_room(
    s: Scheduler,
    d: Demand,
    real: _FreeIndex,
    models: tuple[str, ...],
    tier: int,
    takers: Takers,
) -> tuple[str, str]:
    """Why a request of the pool that fits nowhere now waits: the room it needs (GPUs on one
    node, or that many on each of several nodes) against what is free, and, where there is
    room, whom it is kept for."""
    kind = f" of model '{d.model}'" if d.model else ""
    shape = d.shape
    if shape is None:
        most = real.most(models)
        wants = (
            f"waiting for {plural(d.count, 'GPU')}{kind} on one node: at most {most} free on a node"
        )
        room = most >= d.count
    else:
        nodes, per_node = shape
        roomy = len(real.whole_nodes(models, (len(real.node_of), per_node), d.avoid))
        wants = (
            f"waiting for {nodes} nodes with {per_node} free GPUs each{kind}: "
            f"{plural(roomy, 'node')} {'has' if roomy == 1 else 'have'} that many free"
        )
        room = roomy >= nodes
    in_all = sum(real.in_all[m] for m in models)
    total = sum(real.total[m] for m in models)
    reason = f"{wants} ({in_all} of {total} free in all)"
    if d.avoid:
        reason += f"; not on {', '.join(sorted(d.avoid))}, where it could not start"
    if room and not d.avoid:
        code, ahead = _why_kept(s, d, tier, models, takers)
        return code, f"{reason}; kept for {ahead}"
    return "no_free_gpu", reason


def beyond_pool(s: Scheduler, d: Demand, position: int) -> WaitInfo:
    """A request of the pool further down than the explained head: its place and, in brief,
    why it waits (its quota, or the requests ahead of it), without an estimated start."""
    over = quota_wait(s, d)
    if over is not None:
        return WaitInfo(request_id=d.id, position=position, code="quota", reason=over)
    reason = f"behind {position - 1} requests for GPUs of any node"
    return WaitInfo(request_id=d.id, position=position, code="order", reason=reason)


def estimate_pool(
    s: Scheduler,
    queue: list[Demand],
    expected_end: Callable[[Holding], float],
    duration: Callable[[Demand], float],
    *,
    assumed: Callable[[str], bool] = lambda klass: False,
    horizon: float = 14 * 86400.0,
) -> dict[int, Estimate]:
    """When each of ``queue`` (the head of the pool's order) may start if holdings end when
    expected; a request held back by a quota gets none (its start depends on its owner)."""
    free = _FreeIndex(s, {p.id: len(p.free) for p in s._pool_list})
    pool_of = s._pool_of
    # (end, tie-break, pool, GPUs back, whether the end assumes a default holding time)
    ends: list[tuple[float, int, int, int, bool]] = []
    for hid, h in s.holdings.items():
        guessed = h.preempted_for is None and assumed(h.klass)
        at = max(expected_end(h), s.now)
        first_pool = pool_of.get(h.gpus[0]) if h.gpus else None
        if first_pool is not None and all(pool_of.get(u) is first_pool for u in h.gpus):
            ends.append((at, hid, first_pool.id, len(h.gpus), guessed))  # most: one pool
            continue
        for pid, n in Counter(pool_of[u].id for u in h.gpus if u in pool_of).items():
            ends.append((at, hid, pid, n, guessed))
    heapq.heapify(ends)
    starts: dict[int, Estimate] = {}
    now = s.now
    rests_on_default = False
    for d in queue:
        if s.over_quota(d) is not None:
            continue
        models = s._models(d.model)
        part = d.count if d.per_node is None else d.per_node
        fit = free.fit(models, d)
        while fit is None and ends:
            at, _, pid, back, guessed = heapq.heappop(ends)
            now = max(now, at)
            free.set(pid, free.free[pid] + back)
            rests_on_default = rests_on_default or guessed
            if free.model_of[pid] in models and free.free[pid] >= part:
                fit = free.fit(models, d)
        if fit is None or now > s.now + horizon:
            break  # later requests start no earlier than this one
        free.take(fit)
        starts[d.id] = Estimate(at=now, basis=DEFAULT if rests_on_default else HISTORY)
        for pid, n in fit:
            heapq.heappush(ends, (now + duration(d), -d.id, pid, n, assumed(d.klass)))
    return starts
