"""What users are told about the queue: each waiting request's place, why it waits, and when it
may start; and everyone's fair-share standing. Read-only over a :class:`Scheduler`.

Reasons (``code``):
- ``quota``: granting it would pass the user's or a group's quota;
- ``preempting``: lower-priority jobs are being stopped for it;
- ``priority``: the GPUs it could use are free but kept for higher-class requests ahead of it;
- ``fair_share``: ...kept for requests of users with less recent GPU use;
- ``order``: ...kept for earlier requests of the same standing;
- ``no_free_gpu``: not enough GPUs (of its model, on its node) are free at all; holders listed;
- ``starting``: GPUs are free for it; the next pass grants them.

GPUs the last pass reserved (or kept) for a request are counted as its own: the others are told
they are kept for it, and nothing is promised a start that the pass would not make.

Estimated starts replay a node's queue forward, releasing each holding at its expected end (the
caller's guess: typical durations from history); they are estimates and say so, and say what
they rest on (``basis``): ``history`` when every holding time they assume is a recent one of its
class, ``default`` when one of them is the default (a class without history).

:func:`explain_node` does both for one node's queue: a request waits for GPUs of its own node and
competes only with those pinned there, so its explanation costs what its node holds and waits
for, not the whole queue.
"""

from __future__ import annotations

import heapq
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from jupyter_dlinfra.core.scheduling.fairshare import Standing, factor
from jupyter_dlinfra.core.scheduling.scheduler import Scheduler
from jupyter_dlinfra.core.scheduling.types import Demand, Holding
from jupyter_dlinfra.core.wording import plural

__all__ = [
    "Estimate",
    "WaitInfo",
    "beyond",
    "estimate_node",
    "explain",
    "explain_node",
    "standings",
]

#: what an estimate rests on: recent holding times of the classes involved, or (for at least
#: one holding it waits for) the default holding time of a class without history
HISTORY = "history"
DEFAULT = "default"


@dataclass(frozen=True, kw_only=True)
class WaitInfo:
    request_id: int
    #: 1-based place in the order of service, among requests for the same node (or among
    #: requests for any node)
    position: int
    code: str
    reason: str
    estimated_start: float | None = None
    #: what ``estimated_start`` rests on: HISTORY or DEFAULT; None without an estimate
    estimate_basis: str | None = None


@dataclass(frozen=True, kw_only=True)
class Estimate:
    at: float
    basis: str


def explain(
    s: Scheduler,
    node: str,
    *,
    queue: list[Demand] | None = None,
    starts: dict[int, Estimate] | None = None,
) -> dict[int, WaitInfo]:
    """Place and reason of each request pinned to ``node`` (``queue``: them, in the order of
    service, when the caller has them), with its estimate from ``starts``. A pinned request
    competes only with those pinned to its node: this costs what the node holds and waits for.
    """
    queue = s.pinned(node) if queue is None else queue
    if not queue:
        return {}
    starts = starts or {}
    policy = s.policy
    pools = s._node_pools.get(node, [])
    free = {p.id: len(p.free) for p in pools}
    real_free = dict(free)
    holders = _holders(s, pools)
    takers: Takers = {}

    def took(model: str, tier: int, user: str) -> None:
        took_by(takers, model, tier, user)

    def keep(pid: int) -> bool:
        if free.get(pid, 0) <= 0:
            return False
        free[pid] -= 1
        return True

    set_aside = kept_aside(s, keep, takers)
    view: dict[int, WaitInfo] = {}
    # what requests of one model share (most of a node's queue asks the same)
    candidates_of: dict[tuple[str, ...], list[Any]] = {}
    holders_of: dict[tuple[str, ...], str] = {}
    for position, d in enumerate(queue, start=1):
        mine = set_aside.pop(d.id, None)
        if mine:
            for pid, n in mine.items():
                free[pid] += n
        tier = policy.class_map[d.klass].priority
        models = s._models(d.model)
        candidates = candidates_of.get(models)
        if candidates is None:
            candidates = candidates_of[models] = [p for p in pools if p.model in models]

        def fits(counts: dict[int, int], d: Demand = d, candidates: list[Any] = candidates) -> bool:
            return sum(counts[p.id] for p in candidates) >= d.count

        def consume(d: Demand = d, candidates: list[Any] = candidates, tier: int = tier) -> None:
            need = d.count
            for p in sorted(candidates, key=lambda p: -free[p.id]):
                taken = min(free[p.id], need)
                free[p.id] -= taken
                need -= taken
                if taken:
                    took(p.model, tier, d.user)
                if need <= 0:
                    break

        over = quota_wait(s, d)
        pending = s.pending.get(d.id, 0)
        if over is not None:
            code, reason = "quota", over
        elif pending:
            code, reason = "preempting", preempting_wait(pending)
            consume()
        elif fits(free):
            code, reason = "starting", "GPUs are free for it; it starts at the next pass"
            consume()
        else:
            total = sum(len(p.gpus) for p in candidates)
            now_free = sum(real_free[p.id] for p in candidates)
            kind = f" of model '{d.model}'" if d.model else ""
            reason = (
                f"waiting for {plural(d.count, 'GPU')}{kind} on {node}: {now_free} of {total} free"
            )
            kept = now_free - sum(free[p.id] for p in candidates)
            if fits(real_free):
                code, ahead = _why_kept(s, d, tier, models, takers)
                reason += f"; {kept} kept for {ahead}"
            else:
                code = "no_free_gpu"
                if kept > 0:
                    reason += f"; {kept} kept for requests ahead of it"
            held_by = holders_of.get(models)
            if held_by is None:
                held_by = holders_of[models] = _held_by(holders, models)
            reason += held_by
            if mine:
                consume()
        view[d.id] = wait_info(d.id, position, code, reason, starts.get(d.id))
    return view


def quota_wait(s: Scheduler, d: Demand) -> str | None:
    """Why ``d`` waits for a quota, in words (and the borrowing its class may do); None within
    every quota."""
    over = s.over_quota(d)
    if over is not None and s.policy.borrowing and s.policy.class_map[d.klass].preemptible:
        over += "; it may borrow GPUs that nobody within quota wants"
    return over


def preempting_wait(pending: int) -> str:
    return f"{plural(pending, 'GPU')} of lower-priority jobs are being stopped for it"


def wait_info(
    request_id: int, position: int, code: str, reason: str, start: Estimate | None
) -> WaitInfo:
    return WaitInfo(
        request_id=request_id,
        position=position,
        code=code,
        reason=reason,
        estimated_start=None if start is None else start.at,
        estimate_basis=None if start is None else start.basis,
    )


#: model -> (the highest class that took or kept its GPUs in a walk of the queue, who did)
Takers = dict[str, tuple[int, set[str]]]


def took_by(takers: Takers, model: str, tier: int, user: str) -> None:
    best, users = takers.get(model, (tier, set()))
    takers[model] = (max(best, tier), users | {user})


def kept_aside(
    s: Scheduler, keep: Callable[[int], bool], takers: Takers
) -> dict[int, Counter[int]]:
    """What the last pass set aside for each request (free for it alone, as the pass keeps
    them): request -> pool -> GPUs. ``keep(pool id)`` takes one free GPU of the pool out of
    the walk's count, or says there is none left there."""
    set_aside: dict[int, Counter[int]] = defaultdict(Counter)
    for rid, uuids in s.reserved.items():
        keeper = s.demands.get(rid)
        if keeper is None:
            continue
        tier = s.policy.class_map[keeper.klass].priority
        for uuid in uuids:
            pool = s._pool_of.get(uuid)
            if pool is None or uuid not in pool.free or not keep(pool.id):
                continue
            set_aside[rid][pool.id] += 1
            took_by(takers, pool.model, tier, keeper.user)
    return set_aside


def beyond(s: Scheduler, node: str, d: Demand, position: int) -> WaitInfo:
    """A request further down its node's queue than the explained head: its place and, in
    brief, why it waits (its quota, or the GPUs of its models on the node and who holds them,
    behind the requests ahead of it), without an estimated start: the replay that estimates
    starts, and the walk that tells who keeps free GPUs, stop at the head."""
    over = quota_wait(s, d)
    if over is not None:
        return WaitInfo(request_id=d.id, position=position, code="quota", reason=over)
    pools = s._node_pools.get(node, [])
    models = s._models(d.model)
    candidates = [p for p in pools if p.model in models]
    total = sum(len(p.gpus) for p in candidates)
    free = sum(len(p.free) for p in candidates)
    kind = f" of model '{d.model}'" if d.model else ""
    reason = (
        f"waiting for {plural(d.count, 'GPU')}{kind} on {node}: {free} of {total} free, "
        f"behind {plural(position - 1, 'request')} for them"
    )
    if free >= d.count:
        return WaitInfo(request_id=d.id, position=position, code="order", reason=reason)
    reason += _held_by(_holders(s, candidates), models)
    return WaitInfo(request_id=d.id, position=position, code="no_free_gpu", reason=reason)


def _holders(s: Scheduler, pools: list[Any]) -> dict[str, Counter[str]]:
    """Model -> user -> GPUs of these pools held."""
    holders: dict[str, Counter[str]] = defaultdict(Counter)
    for pool in pools:
        for uuid in pool.gpus:
            hid = s._holder_of.get(uuid)
            if hid is not None:
                holders[pool.model][s.holdings[hid].user] += 1
    return holders


def _held_by(holders: dict[str, Counter[str]], models: tuple[str, ...]) -> str:
    held = Counter[str]()
    for m in models:
        held.update(holders.get(m, Counter()))
    top = ", ".join(f"{u} ({n})" for u, n in held.most_common(5))
    return f"; held by {top}" if held else ""


def _why_kept(
    s: Scheduler,
    d: Demand,
    tier: int,
    models: tuple[str, ...],
    takers: Takers,
) -> tuple[str, str]:
    """Who the free GPUs a request could use are kept for: (code, words)."""
    best = max((takers.get(m, (tier, set()))[0] for m in models), default=tier)
    if best > tier:
        names = ", ".join(c.name for c in s.policy.classes if c.priority == best)
        return "priority", f"higher-priority requests ({names})"
    others = set().union(*(takers.get(m, (tier, set()))[1] for m in models)) - {d.user}

    def fair(user: str) -> tuple[float, float]:
        return (s._account_key(s._ranking_account(user)), s._user_key(user))

    ahead = sorted(u for u in others if fair(u) < fair(d.user))
    if s.policy.fair_share and ahead:
        more = "..." if len(ahead) > 3 else ""
        return "fair_share", f"users with less recent GPU use ({', '.join(ahead[:3])}{more})"
    return "order", "earlier requests"


def standings(s: Scheduler) -> list[Standing]:
    """Every known user's fair-share standing; ``rank`` among users who have requests waiting."""
    policy = s.policy
    h = policy.half_life
    now = s.now
    users = sorted(set(s.users) | {d.user for d in s.demands.values()})
    totals: dict[str, float] = defaultdict(float)
    shares: dict[str, float] = defaultdict(float)
    usage = {u: s.users[u].usage(now, h) for u in users}
    for u in users:
        account = s._account_of.get(u, "")
        totals[account] += usage[u]
        shares[account] += policy.share_of_user(u)
    waiting = {d.user for d in s.demands.values()}
    ranked = sorted(
        waiting, key=lambda u: (s._account_key(s._ranking_account(u)), s._user_key(u), u)
    )
    rank = {u: i for i, u in enumerate(ranked, start=1)}
    out = []
    for u in users:
        account = s._account_of.get(u, "")
        use_frac = usage[u] / totals[account] if totals[account] > 0 else 0.0
        share_frac = policy.share_of_user(u) / shares[account] if shares[account] > 0 else 1.0
        out.append(
            Standing(
                user=u,
                account=account,
                usage_gpu_hours=usage[u] / 3600.0,
                held=s.users[u].held,
                share=policy.share_of_user(u),
                account_share=policy.share_of_group(account),
                factor=factor(use_frac, share_frac),
                rank=rank.get(u),
            )
        )
    return out


def explain_node(
    s: Scheduler,
    node: str,
    *,
    expected_end: Callable[[Holding], float],
    duration: Callable[[Demand], float],
    assumed: Callable[[str], bool] = lambda klass: False,
    horizon: float = 14 * 86400.0,
    queue: list[Demand] | None = None,
) -> dict[int, WaitInfo]:
    """Place, reason and estimated start of each request pinned to ``node`` (``queue``: those
    requests in order, or the head of that order: each is explained from those ahead of it)."""
    queue = s.pinned(node) if queue is None else queue
    if not queue:
        return {}
    starts = estimate_node(
        s, node, expected_end, duration, assumed=assumed, horizon=horizon, queue=queue
    )
    return explain(s, node, queue=queue, starts=starts)


def estimate_node(
    s: Scheduler,
    node: str,
    expected_end: Callable[[Holding], float],
    duration: Callable[[Demand], float],
    *,
    assumed: Callable[[str], bool] = lambda klass: False,
    horizon: float = 14 * 86400.0,
    queue: list[Demand] | None = None,
) -> dict[int, Estimate]:
    """When each request pinned to ``node`` may start if holdings end when expected (``queue``:
    those requests in order, when the caller has them).

    The node's queue is replayed in its order of service: each request starts once enough GPUs
    of its models are free and not before the one ahead of it, then holds them for its class's
    typical time. A request held back by a quota gets no estimate (its start depends on what
    its owner holds elsewhere). ``assumed(klass)``: whether a class's holding time is the
    default rather than its history; an estimate that waits for such an end says so (basis
    DEFAULT). A preempted holding's end is its stopping grace, which assumes no holding time.
    """
    pools = s._node_pools.get(node, [])
    estimate = _estimate_one_model if len(pools) == 1 else _estimate_models
    return estimate(s, node, expected_end, duration, assumed=assumed, horizon=horizon, queue=queue)


def _estimate_models(
    s: Scheduler,
    node: str,
    expected_end: Callable[[Holding], float],
    duration: Callable[[Demand], float],
    *,
    assumed: Callable[[str], bool],
    horizon: float,
    queue: list[Demand] | None,
) -> dict[int, Estimate]:
    """:func:`estimate_node` on a node of any models: a count of free GPUs per model."""
    pools = s._node_pools.get(node, [])
    free: Counter[str] = Counter({p.model: len(p.free) for p in pools})
    ends: list[tuple[float, int, Counter[str], bool]] = []
    seen: set[int] = set()
    for pool in pools:
        for uuid in pool.gpus:
            hid = s._holder_of.get(uuid)
            if hid is None or hid in seen:
                continue
            seen.add(hid)
            h = s.holdings[hid]
            here = Counter(
                s._pool_of[u].model
                for u in h.gpus
                if u in s._pool_of and s._pool_of[u].node == node
            )
            guessed = h.preempted_for is None and assumed(h.klass)
            heapq.heappush(ends, (max(expected_end(h), s.now), hid, here, guessed))
    starts: dict[int, Estimate] = {}
    now = s.now
    rests_on_default = False
    for d in s.pinned(node) if queue is None else queue:
        if s.over_quota(d) is not None:
            continue
        models = s._models(d.model)
        while sum(free[m] for m in models) < d.count and ends:
            at, _, back, guessed = heapq.heappop(ends)
            now = max(now, at)
            free.update(back)
            # every start from here on waited for this end, as far as the replay can tell
            rests_on_default = rests_on_default or guessed
        if sum(free[m] for m in models) < d.count or now > s.now + horizon:
            break  # later requests start no earlier than this one
        need = d.count
        taken: Counter[str] = Counter()
        for m in models:
            got = min(free[m], need)
            free[m] -= got
            taken[m] += got
            need -= got
        starts[d.id] = Estimate(at=now, basis=DEFAULT if rests_on_default else HISTORY)
        heapq.heappush(ends, (now + duration(d), -d.id, taken, assumed(d.klass)))
    return starts


def _estimate_one_model(
    s: Scheduler,
    node: str,
    expected_end: Callable[[Holding], float],
    duration: Callable[[Demand], float],
    *,
    assumed: Callable[[str], bool],
    horizon: float,
    queue: list[Demand] | None,
) -> dict[int, Estimate]:
    """:func:`estimate_node` for a node whose GPUs are all of one model (most nodes): the same
    replay, with a count of GPUs where the general one keeps a Counter per model, per holding
    and per request. ``tests/core/test_wait_views.py`` holds the two to the same answers."""
    pool = s._node_pools[node][0]
    free = len(pool.free)
    ends: list[tuple[float, int, int, bool]] = []
    here: dict[int, int] = {}
    for uuid in pool.gpus:
        hid = s._holder_of.get(uuid)
        if hid is not None:
            here[hid] = here.get(hid, 0) + 1
    # a holding's GPUs on this node are this pool's (the node has no other)
    for hid, count in here.items():
        h = s.holdings[hid]
        guessed = h.preempted_for is None and assumed(h.klass)
        heapq.heappush(ends, (max(expected_end(h), s.now), hid, count, guessed))
    starts: dict[int, Estimate] = {}
    now = s.now
    rests_on_default = False
    for d in s.pinned(node) if queue is None else queue:
        if s.over_quota(d) is not None:
            continue
        if pool.model not in s._models(d.model):
            break  # never starts here; later requests start no earlier than this one
        while free < d.count and ends:
            at, _, back, guessed = heapq.heappop(ends)
            now = max(now, at)
            free += back
            rests_on_default = rests_on_default or guessed
        if free < d.count or now > s.now + horizon:
            break
        free -= d.count
        starts[d.id] = Estimate(at=now, basis=DEFAULT if rests_on_default else HISTORY)
        heapq.heappush(ends, (now + duration(d), -d.id, d.count, assumed(d.klass)))
    return starts
