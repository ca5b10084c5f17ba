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

Estimated starts replay the scheduler forward on a copy, releasing each holding at its expected
end (the caller's guess: typical durations from history); they are estimates and say so, and
say what they rest on (``basis``): ``history`` when every holding time they assume is a recent
one of its class, ``default`` when one of them is the default (a class without history).
"""

from __future__ import annotations

import copy
import heapq
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from jupyter_dlinfra.core.scheduling.fairshare import Standing, factor
from jupyter_dlinfra.core.scheduling.scheduler import Scheduler
from jupyter_dlinfra.core.scheduling.types import Demand, Holding
from jupyter_dlinfra.core.wording import plural

__all__ = ["Estimate", "WaitInfo", "estimate_starts", "explain", "order", "standings"]

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


def order(s: Scheduler) -> list[Demand]:
    """Waiting requests in the order a pass would look at them, if nothing changed."""
    limit = s.policy.starvation_limit

    def key(d: Demand) -> tuple[float, ...]:
        tier = s.policy.class_map[d.klass].priority
        if limit and s.now - d.submitted_at >= limit:
            return (-tier, 0.0, d.submitted_at, d.id)
        account = s._ranking_account(d.user)
        return (-tier, 1.0, s._account_key(account), s._user_key(d.user), d.submitted_at, d.id)

    return sorted(s.demands.values(), key=key)


def explain(s: Scheduler) -> dict[int, WaitInfo]:
    queue = order(s)
    if not queue:
        return {}
    policy = s.policy
    pools = s._pool_list
    free = {p.id: len(p.free) for p in pools}
    real_free = dict(free)
    holders: dict[str, Counter[str]] = defaultdict(Counter)  # model -> user -> GPUs
    for uuid, hid in s._holder_of.items():
        pool = s._pool_of.get(uuid)
        if pool is not None:
            holders[pool.model][s.holdings[hid].user] += 1
    #: model -> (highest class that took or kept its GPUs in this walk, users who did)
    takers: dict[str, tuple[int, set[str]]] = {}
    reservations = policy.reservations
    view: dict[int, WaitInfo] = {}
    places: Counter[str | None] = Counter()
    for d in queue:
        # a pinned request competes only with those pinned to its node
        places[d.node] += 1
        position = places[d.node]
        tier = policy.class_map[d.klass].priority
        models = s._models(d.model)
        candidates = [
            p for p in pools if p.model in models and (d.node is None or p.node == d.node)
        ]

        def fits(counts: dict[int, int], d: Demand = d, candidates: list[Any] = candidates) -> bool:
            if d.node is not None or d.gang:
                return sum(counts[p.id] for p in candidates) >= d.count
            return any(counts[p.id] >= d.count for p in candidates)

        def consume(d: Demand = d, candidates: list[Any] = candidates, tier: int = tier) -> None:
            need = d.count
            ranked = sorted(candidates, key=lambda p: -free[p.id])
            if d.node is None and not d.gang:
                ranked = [p for p in ranked if free[p.id] >= need] or ranked[:1]
            for p in ranked:
                took = min(free[p.id], need)
                free[p.id] -= took
                need -= took
                if took:
                    best, users = takers.get(p.model, (tier, set()))
                    takers[p.model] = (max(best, tier), users | {d.user})
                if need <= 0:
                    break

        over = s.over_quota(d)
        pending = s.pending.get(d.id, 0)
        if over is not None:
            code, reason = "quota", over
            if policy.borrowing and policy.class_map[d.klass].preemptible:
                reason += "; it may borrow GPUs that nobody within quota wants"
        elif pending:
            code = "preempting"
            reason = f"{plural(pending, 'GPU')} of lower-priority jobs are being stopped for it"
            consume()
        elif fits(free):
            code, reason = "starting", "GPUs are free for it; it starts at the next pass"
            consume()
        else:
            total = sum(len(p.gpus) for p in candidates)
            now_free = sum(real_free[p.id] for p in candidates)
            kind = f" of model '{d.model}'" if d.model else ""
            where = f" on {d.node}" if d.node else ""
            reason = (
                f"waiting for {plural(d.count, 'GPU')}{kind}{where}: {now_free} of {total} free"
            )
            kept = now_free - sum(free[p.id] for p in candidates)
            if fits(real_free):
                code, ahead = _why_kept(s, d, tier, models, takers)
                reason += f"; {kept} kept for {ahead}"
            else:
                code = "no_free_gpu"
                if kept > 0:
                    reason += f"; {kept} kept for requests ahead of it"
            held = Counter[str]()
            for m in models:
                held.update(holders.get(m, Counter()))
            if held:
                reason += "; held by " + ", ".join(f"{u} ({n})" for u, n in held.most_common(5))
            if reservations > 0:
                reservations -= 1
                consume()
        view[d.id] = WaitInfo(request_id=d.id, position=position, code=code, reason=reason)
    return view


def _why_kept(
    s: Scheduler,
    d: Demand,
    tier: int,
    models: tuple[str, ...],
    takers: dict[str, tuple[int, set[str]]],
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


def estimate_starts(
    s: Scheduler,
    expected_end: Callable[[Holding], float],
    duration: Callable[[Demand], float],
    *,
    assumed: Callable[[str], bool] = lambda klass: False,
    horizon: float = 14 * 86400.0,
    max_steps: int = 5000,
) -> dict[int, Estimate]:
    """When each waiting request may start if holdings end when expected (a copy is replayed).

    ``assumed(klass)``: whether the holding times of a class are the default rather than its
    history; an estimate that waits for the end of such a holding says so (basis DEFAULT). A
    preempted holding's end is its stopping grace, which assumes no holding time.
    """
    if not s.demands:
        return {}
    sim = copy.deepcopy(s)
    waiting = set(sim.demands)
    starts: dict[int, Estimate] = {}
    ends: list[tuple[float, int]] = []
    # holdings (and grants of the replay) whose end comes from a default holding time
    guessed: set[int] = set()
    for h in sim.holdings.values():
        heapq.heappush(ends, (max(expected_end(h), sim.now), h.id))
        if h.preempted_for is None and assumed(h.klass):
            guessed.add(h.id)
    now = sim.now
    rests_on_default = False
    steps = 0
    while True:
        out = sim.schedule(now)
        for g in out.grants:
            if g.request_id in waiting:
                starts[g.request_id] = Estimate(
                    at=now, basis=DEFAULT if rests_on_default else HISTORY
                )
            demand = s.demands[g.request_id]
            heapq.heappush(ends, (now + duration(demand), g.request_id))
            if assumed(demand.klass):
                guessed.add(g.request_id)
        if len(starts) == len(waiting) or not ends or steps >= max_steps:
            break
        now, hid = heapq.heappop(ends)
        if now > s.now + horizon:
            break
        if hid in sim.holdings:
            sim.release(hid)
            # every start from here on waited for this end, as far as the replay can tell
            rests_on_default = rests_on_default or hid in guessed
        steps += 1
    return starts


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
