"""The order in which waiting requests are looked at: class, then fair share (account, then user),
then age; a request older than the starvation limit goes first in its class.

Kept as heaps that are corrected lazily: during a pass keys only grow (grants add usage, a user's
next request is younger), so an entry whose key has grown is pushed back and the next one tried.
Accounts have their own heap, so a grant to one member does not re-rank every other user. The
cost of finding the next request is O(log users), whatever the length of the queue.
"""

from __future__ import annotations

import bisect
import heapq
from collections import defaultdict
from collections.abc import Callable, Generator
from typing import NoReturn

from jupyter_dlinfra.core.scheduling.types import Demand

__all__ = ["Ranking"]

QueueKey = tuple[int, str]  # (class priority, user)


def _age(demand: Demand) -> tuple[float, int]:
    return (demand.submitted_at, demand.id)


def _disposed(*_: object) -> NoReturn:
    raise RuntimeError("this ranking's scheduler was dropped")


class Ranking:
    def __init__(
        self,
        *,
        tier_of: Callable[[Demand], int],
        account_of: Callable[[str], str],
        account_key: Callable[[str], float],
        user_key: Callable[[str], float],
    ) -> None:
        self.tier_of = tier_of
        self.account_of = account_of
        self.account_key = account_key
        self.user_key = user_key
        self.starvation_limit = 0.0
        self.queues: dict[QueueKey, list[Demand]] = {}
        self.alive: dict[int, Demand] = {}
        self._uver: dict[QueueKey, int] = defaultdict(int)
        self._aver: dict[tuple[int, str], int] = defaultdict(int)
        self._users: dict[tuple[int, str], list[tuple[tuple[float, float, int], int, str]]] = {}
        self._accounts: dict[int, list[tuple[float, int, str]]] = defaultdict(list)
        self._old: dict[int, list[tuple[float, int]]] = defaultdict(list)
        self._walking = False
        #: queues passed over for the rest of the current walk
        self._skipped: set[QueueKey] = set()
        self.tiers: set[int] = set()

    def dispose(self) -> None:
        """Let go of the scheduler's keys (bound methods of it): a scheduler that is dropped
        is then freed as soon as nothing refers to it, with no cycle for the collector to find
        (see ``Scheduler.dispose``). The ranking is of no use afterwards."""
        self.tier_of = _disposed
        self.account_of = _disposed
        self.account_key = _disposed
        self.user_key = _disposed

    # -- changes between passes ------------------------------------------------------------------

    def add(self, demand: Demand) -> None:
        tier = self.tier_of(demand)
        self.tiers.add(tier)
        qk = (tier, demand.user)
        queue = self.queues.setdefault(qk, [])
        queue.append(demand)
        if len(queue) > 1 and (queue[-2].submitted_at, queue[-2].id) > (
            demand.submitted_at,
            demand.id,
        ):
            queue.sort(key=_age)
        self.alive[demand.id] = demand
        heapq.heappush(self._old[tier], (demand.submitted_at, demand.id))
        self._rank(qk)

    def remove(self, demand: Demand) -> None:
        self.alive.pop(demand.id, None)
        qk = (self.tier_of(demand), demand.user)
        queue = self.queues.get(qk)
        if queue is not None:
            # a user's queue is sorted by age: found by bisection, compared by id (comparing
            # the dataclasses would compare every field of each request passed over)
            at = bisect.bisect_left(queue, (demand.submitted_at, demand.id), key=_age)
            if at < len(queue) and queue[at].id == demand.id:
                del queue[at]
        if not self._walking:
            self._rank(qk)

    def rerank(self, user: str) -> None:
        """The user's usage or account changed."""
        if self._walking:
            return
        for tier in self.tiers:
            if (tier, user) in self.queues:
                self._rank((tier, user))

    def rerank_account(self, account: str) -> None:
        if self._walking:
            return
        for tier in self.tiers:
            self._rank_account(tier, account)

    def skip(self, demand: Demand) -> None:
        """During a walk: pass over the rest of this user's requests in its class."""
        self._skipped.add((self.tier_of(demand), demand.user))

    def rebuild(self) -> None:
        self.tiers = {tier for tier, _ in self.queues}
        self._users.clear()
        self._accounts.clear()
        for qk in list(self.queues):
            self._rank(qk)

    # -- one pass --------------------------------------------------------------------------------

    def walk(self, now: float) -> Generator[Demand, None, None]:
        """Waiting requests, best first. Remove a granted one with :meth:`remove` before the
        next; stop whenever (the pass ends cleanly on close)."""
        self._walking = True
        seen: set[int] = set()
        pointers: dict[QueueKey, int] = {}
        touched: set[QueueKey] = set()
        accounts: set[tuple[int, str]] = set()
        old_popped: list[tuple[int, tuple[float, int]]] = []
        try:
            for tier in sorted(self._accounts.keys() | self._old.keys(), reverse=True):
                if self.starvation_limit:
                    old = self._old[tier]
                    while old and old[0][0] <= now - self.starvation_limit:
                        entry = heapq.heappop(old)
                        demand = self.alive.get(entry[1])
                        if (
                            demand is None
                            or demand.id in seen
                            or demand.submitted_at != entry[0]  # an id used again: a stale entry
                            or self.tier_of(demand) != tier
                        ):
                            continue
                        old_popped.append((tier, entry))
                        seen.add(demand.id)
                        touched.add((tier, demand.user))
                        yield demand
                heap = self._accounts.get(tier, [])
                while heap:
                    akey, aver, account = heap[0]
                    if aver != self._aver[(tier, account)]:
                        heapq.heappop(heap)
                        continue
                    fresh = self.account_key(account)
                    if fresh > akey:
                        heapq.heapreplace(heap, (fresh, aver, account))
                        continue
                    picked = self._next_user(tier, account, seen, pointers, touched)
                    if picked is None:
                        heapq.heappop(heap)
                        accounts.add((tier, account))
                        continue
                    accounts.add((tier, account))
                    qk, at = picked
                    demand = self.queues[qk][at]
                    yield demand
                    if demand.id in self.alive:
                        pointers[qk] = at + 1
        finally:
            self._walking = False
            self._skipped.clear()
            for tier, entry in old_popped:
                if entry[1] in self.alive:
                    heapq.heappush(self._old[tier], entry)
            for qk in touched:
                self._rank(qk)
            for tier, account in accounts:
                self._rank_account(tier, account)

    def _next_user(
        self,
        tier: int,
        account: str,
        seen: set[int],
        pointers: dict[QueueKey, int],
        touched: set[QueueKey],
    ) -> tuple[QueueKey, int] | None:
        heap = self._users.get((tier, account), [])
        while heap:
            ukey, uver, user = heap[0]
            qk = (tier, user)
            if uver != self._uver[qk]:
                heapq.heappop(heap)
                continue
            touched.add(qk)
            queue = self.queues.get(qk, [])
            at = len(queue) if qk in self._skipped else pointers.get(qk, 0)
            while at < len(queue) and queue[at].id in seen:
                at += 1
            pointers[qk] = at
            if at >= len(queue):
                heapq.heappop(heap)
                continue
            fresh = self._user_key(user, queue[at])
            if fresh > ukey:
                heapq.heapreplace(heap, (fresh, uver, user))
                continue
            return qk, at
        return None

    # -- internals ---------------------------------------------------------------------------

    def _user_key(self, user: str, head: Demand) -> tuple[float, float, int]:
        return (self.user_key(user), head.submitted_at, head.id)

    def _rank(self, qk: QueueKey) -> None:
        self._uver[qk] += 1
        queue = self.queues.get(qk)
        if not queue:
            self.queues.pop(qk, None)
            return
        tier, user = qk
        account = self.account_of(user)
        heap = self._users.setdefault((tier, account), [])
        heapq.heappush(heap, (self._user_key(user, queue[0]), self._uver[qk], user))
        self._rank_account(tier, account)

    def _rank_account(self, tier: int, account: str) -> None:
        if not self._users.get((tier, account)):
            return
        key = (tier, account)
        self._aver[key] += 1
        heapq.heappush(self._accounts[tier], (self.account_key(account), self._aver[key], account))
