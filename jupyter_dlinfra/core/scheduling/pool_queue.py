"""The waiting requests of the pool (those that may run on any node), grouped by what they ask
for, each group in the order of service.

A pass walks the queue's head only (its reservations, then ``max_scan`` requests): a request of
the pool deeper than that would wait while GPUs it fits stay idle. Step 5 of a pass serves them
(see scheduler.py): a group whose request fits somewhere (a node with that many free GPUs of its
model, or for a gang that many free in all) offers its first request within quota, and the best
of those offers is placed, again and again while any group fits. Groups are few (models asked
for x GPU counts), so finding the next request to serve costs the groups and the users passed
over, not the length of the queue.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from jupyter_dlinfra.core.scheduling.ranking import Ranking
from jupyter_dlinfra.core.scheduling.types import Demand

__all__ = ["GroupKey", "PoolQueue"]

#: (the model asked for, or None for any; GPUs; a gang over several nodes; its GPUs per node
#: when it asks for whole nodes, else 0)
GroupKey = tuple[str | None, int, bool, int]


def _disposed() -> Ranking:
    raise RuntimeError("this pool queue's scheduler was dropped")


def _group_of(demand: Demand) -> GroupKey:
    return (demand.model, demand.count, demand.gang, demand.per_node or 0)


class PoolQueue:
    def __init__(self, new_ranking: Callable[[], Ranking]) -> None:
        self._new_ranking = new_ranking
        #: a group left empty is dropped when no walk is on it (see :meth:`prune`)
        self.groups: dict[GroupKey, Ranking] = {}

    def dispose(self) -> None:
        """Let go of the scheduler (see ``Ranking.dispose``)."""
        for ranking in self.groups.values():
            ranking.dispose()
        self.groups.clear()
        self._new_ranking = _disposed

    def __bool__(self) -> bool:
        return any(ranking.alive for ranking in self.groups.values())

    def add(self, demand: Demand) -> None:
        key = _group_of(demand)
        ranking = self.groups.get(key)
        if ranking is None:
            ranking = self.groups[key] = self._new_ranking()
        ranking.add(demand)

    def remove(self, demand: Demand) -> None:
        ranking = self.groups.get(_group_of(demand))
        if ranking is not None and demand.id in ranking.alive:
            ranking.remove(demand)

    def waiting(self) -> Iterator[tuple[GroupKey, Ranking]]:
        """The groups with requests waiting."""
        for key, ranking in list(self.groups.items()):
            if ranking.alive:
                yield key, ranking

    def prune(self) -> None:
        """Drop the groups left empty (between passes)."""
        for key in [k for k, ranking in self.groups.items() if not ranking.alive]:
            del self.groups[key]

    def rerank(self, user: str) -> None:
        for ranking in self.groups.values():
            ranking.rerank(user)

    def rerank_account(self, account: str) -> None:
        for ranking in self.groups.values():
            ranking.rerank_account(account)

    def rebuild(self) -> None:
        for ranking in self.groups.values():
            ranking.rebuild()
