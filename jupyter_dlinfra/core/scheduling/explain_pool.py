"""What the pool's requests are told: place, reason and estimated start of requests that may take
GPUs of any node (placement ``pool``: work a cluster starts wherever the ledger admits it).

A request of the pool takes GPUs of one model on one node (a pod does not span nodes), wherever
the pass finds room, best fit first, as :meth:`Scheduler._place` does. Its place is among the
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
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from typing import Any

from jupyter_dlinfra.core.scheduling.explain import (
    DEFAULT,
    HISTORY,
    Estimate,
    WaitInfo,
    _why_kept,
)
from jupyter_dlinfra.core.scheduling.scheduler import Scheduler
from jupyter_dlinfra.core.scheduling.types import Demand, Holding
from jupyter_dlinfra.core.wording import plural

__all__ = ["estimate_pool", "explain_pool", "pool_order"]


def pool_order(s: Scheduler) -> Iterator[Demand]:
    """The pool's requests in the order of service, lazily (the first ``k`` cost what
    :meth:`Scheduler.in_order` costs for as many requests as come before them)."""
    return (d for d in s.in_order() if d.node is None)


def _candidates(s: Scheduler, cache: dict[tuple[str, ...], list[Any]], d: Demand) -> list[Any]:
    models = s._models(d.model)
    found = cache.get(models)
    if found is None:
        found = cache[models] = [p for p in s._pool_list if p.model in models and p.gpus]
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
    free = {p.id: len(p.free) for p in s._pool_list}
    real_free = dict(free)
    takers: dict[str, tuple[int, set[str]]] = {}

    def took(model: str, tier: int, user: str) -> None:
        best, users = takers.get(model, (tier, set()))
        takers[model] = (max(best, tier), users | {user})

    # what the last pass set aside for a request is free for it alone
    set_aside: dict[int, Counter[int]] = defaultdict(Counter)
    for rid, uuids in s.reserved.items():
        keeper = s.demands.get(rid)
        if keeper is None:
            continue
        for uuid in uuids:
            pool = s._pool_of.get(uuid)
            if pool is None or uuid not in pool.free or free[pool.id] <= 0:
                continue
            set_aside[rid][pool.id] += 1
            free[pool.id] -= 1
            took(pool.model, policy.class_map[keeper.klass].priority, keeper.user)
    candidates_of: dict[tuple[str, ...], list[Any]] = {}
    view: dict[int, WaitInfo] = {}
    for position, d in enumerate(queue, start=first):
        mine = set_aside.pop(d.id, None)
        if mine:
            for pid, n in mine.items():
                free[pid] += n
        tier = policy.class_map[d.klass].priority
        candidates = _candidates(s, candidates_of, d)
        fitting = [p for p in candidates if free[p.id] >= d.count]
        over = s.over_quota(d)
        pending = s.pending.get(d.id, 0)
        if over is not None:
            code, reason = "quota", over
            if policy.borrowing and policy.class_map[d.klass].preemptible:
                reason += "; it may borrow GPUs that nobody within quota wants"
        elif pending:
            code = "preempting"
            reason = f"{plural(pending, 'GPU')} of lower-priority jobs are being stopped for it"
        elif fitting:
            code, reason = "starting", "GPUs are free for it; it starts at the next pass"
            best = min(fitting, key=lambda p: (free[p.id], p.id))
            free[best.id] -= d.count
            took(best.model, tier, d.user)
        else:
            most = max((real_free[p.id] for p in candidates), default=0)
            in_all = sum(real_free[p.id] for p in candidates)
            total = sum(len(p.gpus) for p in candidates)
            kind = f" of model '{d.model}'" if d.model else ""
            reason = (
                f"waiting for {plural(d.count, 'GPU')}{kind} on one node: at most {most} free on "
                f"a node ({in_all} of {total} free in all)"
            )
            if most >= d.count:
                code, ahead = _why_kept(s, d, tier, s._models(d.model), takers)
                reason += f"; kept for {ahead}"
            else:
                code = "no_free_gpu"
        start = starts.get(d.id)
        view[d.id] = WaitInfo(
            request_id=d.id,
            position=position,
            code=code,
            reason=reason,
            estimated_start=None if start is None else start.at,
            estimate_basis=None if start is None else start.basis,
        )
    return view


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
    free = {p.id: len(p.free) for p in s._pool_list}
    # (end, tie-break, pool, GPUs back, whether the end assumes a default holding time)
    ends: list[tuple[float, int, int, int, bool]] = []
    for hid, h in s.holdings.items():
        per_pool = Counter(s._pool_of[u].id for u in h.gpus if u in s._pool_of)
        guessed = h.preempted_for is None and assumed(h.klass)
        at = max(expected_end(h), s.now)
        for pid, n in per_pool.items():
            ends.append((at, hid, pid, n, guessed))
    heapq.heapify(ends)
    starts: dict[int, Estimate] = {}
    candidates_of: dict[tuple[str, ...], list[Any]] = {}
    now = s.now
    rests_on_default = False
    for d in queue:
        if s.over_quota(d) is not None:
            continue
        candidates = _candidates(s, candidates_of, d)
        ids = {p.id for p in candidates}
        fits = any(free[p.id] >= d.count for p in candidates)
        while not fits and ends:
            at, _, pid, back, guessed = heapq.heappop(ends)
            now = max(now, at)
            free[pid] += back
            rests_on_default = rests_on_default or guessed
            fits = pid in ids and free[pid] >= d.count
        if not fits or now > s.now + horizon:
            break  # later requests start no earlier than this one
        best = min((p for p in candidates if free[p.id] >= d.count), key=lambda p: free[p.id])
        free[best.id] -= d.count
        starts[d.id] = Estimate(at=now, basis=DEFAULT if rests_on_default else HISTORY)
        heapq.heappush(ends, (now + duration(d), -d.id, best.id, d.count, assumed(d.klass)))
    return starts
