"""The ledger's scheduling state kept in memory: its one scheduler, and what it tells waiters.

The process that writes the ledger holds its GPUs, grants, waiting requests, fair-share usage
and policy here (Kueue's cache and snapshot), changed by each write as it writes its rows, so a
change costs what it changes, not a reload of the tables. The database stays the record: this
state is current as of one value of the store's ledger counter (``LEDGER_VERSION``); when another
process has moved it, the state is loaded again before anything is decided or shown.

Waiting requests' places, reasons and estimated starts are worked out per node (a request waits
for GPUs of its own node) when first asked for, and kept until a change touches that node (GPUs
taken or freed there, a request come or gone, a quota of someone who waits there moved; the
scheduler says which) or for ``VIEW_TTL`` seconds: estimates are relative to now, and fair-share
standings drift with time and with grants elsewhere. Only the head of a node's queue down to the
request asked about is explained (each request's explanation depends on those ahead of it only):
the first page of the queue holds the heads of a hundred nodes' queues, and costs those. Below
``EXPLAIN_DEPTH`` places a request is told its place and why it waits in brief, with no
estimated start.
"""

from __future__ import annotations

import bisect
import itertools
import statistics
from collections import Counter, defaultdict, deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from jupyter_dlinfra.core.books.ledger_state import DEFAULT_DURATION
from jupyter_dlinfra.core.models import Allocation, KernelRecord
from jupyter_dlinfra.core.scheduling import explain
from jupyter_dlinfra.core.scheduling.explain_pool import beyond_pool, explain_pool, pool_order
from jupyter_dlinfra.core.scheduling.policy import SchedulingPolicy
from jupyter_dlinfra.core.scheduling.scheduler import Scheduler
from jupyter_dlinfra.core.scheduling.types import Demand, Holding

__all__ = ["EXPLAIN_DEPTH", "QUOTA_WAIT", "Durations", "LedgerCache", "Waiting"]

#: how the reason of a cluster's request held back by a quota begins (its waiting code: quota)
QUOTA_WAIT = "over quota: "
#: a preempted job is expected to stop within this long (for estimates only)
PREEMPT_GRACE = 30.0
#: how long a node's explanation is kept while nothing touches the node (s): a sidebar asks
#: for its user's requests every few seconds, on nodes that changes seldom touch, and each asks
#: a new explanation once this has passed (SLURM's backfill works out the starts that
#: ``squeue --start`` shows every bf_interval, 30 s by default)
VIEW_TTL = 10.0
#: places of a node's queue explained in full, with an estimated start; those further down
#: are told their place and, in brief, why they wait (as SLURM's backfill plans a bounded
#: number of jobs, bf_max_job_test): a node with thousands waiting costs its head
EXPLAIN_DEPTH = 100
#: pages of the queue kept at once (clients ask for a few: the first, the next ones)
_PAGES_KEPT = 16
#: a page of the queue: its node (None: every node), limit and offset
PageKey = tuple[str | None, int | None, int]
#: released grants per class whose median is the class's typical holding time
SAMPLE = 200
#: drops of rows remembered (dropped_since): a read that more writes overtook keeps nothing
_DROPS_KEPT = 4096


class Durations:
    """The typical holding time of each class: the median of its latest released grants."""

    def __init__(self, spans: dict[str, list[float]] | None = None, sample: int = SAMPLE) -> None:
        """``spans``: holding times per class, oldest first."""
        self.sample = sample
        self._spans: dict[str, deque[float]] = defaultdict(lambda: deque(maxlen=self.sample))
        for klass, found in (spans or {}).items():
            self._spans[klass].extend(found)
        self._typical: dict[str, float] | None = None

    def add(self, klass: str, seconds: float) -> None:
        """A grant of ``klass`` ended after ``seconds`` (added in the order they ended)."""
        self._spans[klass].append(max(seconds, 0.0))
        self._typical = None

    def typical(self) -> dict[str, float]:
        """Median holding time of each class that has released grants."""
        if self._typical is None:
            self._typical = {k: statistics.median(v) for k, v in self._spans.items() if v}
        return self._typical


@dataclass(frozen=True)
class Waiting:
    """A queued request in memory: who asked and when, and for a request that a cluster's
    scheduler places, on which node and the cluster's reason (None: this ledger schedules it)."""

    kernel_id: str
    created_at: float
    node: str
    placed_reason: str | None = None
    placed: bool = False
    #: a request of the pool: it may take GPUs of any node (``node`` is its kernel's)
    anywhere: bool = False


@dataclass
class _NodeView:
    at: float
    #: request id -> its place in the node's queue (0-based)
    order: dict[int, int]
    queue: list[Demand]
    #: explanations of the head of ``queue``
    infos: dict[int, explain.WaitInfo] = field(default_factory=dict)
    #: brief explanations of requests below the first EXPLAIN_DEPTH
    beyond: dict[int, explain.WaitInfo] = field(default_factory=dict)


@dataclass
class _PoolView:
    """The pool's queue as far as it was walked (a request's place costs the walk down to it,
    not the whole queue), and the explanations of its head."""

    at: float
    rest: Iterator[Demand]
    walked: list[Demand] = field(default_factory=list)
    order: dict[int, int] = field(default_factory=dict)
    infos: dict[int, explain.WaitInfo] = field(default_factory=dict)
    beyond: dict[int, explain.WaitInfo] = field(default_factory=dict)

    def place(self, request_id: int) -> int | None:
        """0-based place of a request of the pool; None if it is not one."""
        while request_id not in self.order:
            d = next(self.rest, None)
            if d is None:
                return None
            self.order[d.id] = len(self.walked)
            self.walked.append(d)
        return self.order[request_id]

    def head(self, depth: int) -> list[Demand]:
        while len(self.walked) < depth:
            d = next(self.rest, None)
            if d is None:
                break
            self.order[d.id] = len(self.walked)
            self.walked.append(d)
        return self.walked[:depth]


@dataclass
class LedgerCache:
    """The scheduling state as of ledger counter ``version``."""

    version: int
    policy: SchedulingPolicy
    sched: Scheduler
    durations: Durations
    #: every active allocation (queued or granted) -> its kernel (changed through
    #: :meth:`add_active` and :meth:`drop_active`, which keep ``active_kernels`` and
    #: ``user_active`` in step)
    kernel_of: dict[int, str]
    #: every active allocation -> its user
    user_of: dict[int, str]
    #: queued allocations: the ledger's (also in ``sched.demands``) and the cluster's
    waiting: dict[int, Waiting]
    #: each user's stored fair-share usage (its dlinfra_fairshare row): (GPU-seconds, at)
    recorded: dict[str, tuple[float, float]] = field(default_factory=dict)
    #: node -> (GPUs used there by work the ledger did not admit, what uses them), as stored
    outside: dict[str, tuple[int, tuple[str, ...]]] = field(default_factory=dict)
    #: kernel -> how many active allocations it has (a kernel not here has none: a request
    #: need not look for one in the tables); derived from ``kernel_of``
    active_kernels: Counter[str] = field(init=False)
    #: active allocations as their rows read (without waits), by id: what a user's list of
    #: their own is served from. A write drops each row it changes (:meth:`forget_rows`), and a
    #: read fills those it had to read again; a state loaded again starts from its own load
    rows: dict[int, Allocation] = field(default_factory=dict)
    #: queued allocation -> (its row, its explanation, the row with it): the same answer object
    #: for as long as neither changes (Ledger._waited)
    waited: dict[int, tuple[Allocation, explain.WaitInfo, Allocation]] = field(default_factory=dict)
    #: rows dropped so far (a count), and the ids of the latest drops: a read of rows outside
    #: the lock keeps those that no write dropped since it began (:meth:`dropped_since`)
    drops: int = 0
    _dropped: deque[tuple[int, tuple[int, ...]]] = field(
        default_factory=lambda: deque(maxlen=_DROPS_KEPT)
    )
    #: user -> ids of their active allocations; derived from ``user_of``
    user_active: dict[str, set[int]] = field(init=False)
    #: the waiting requests may include some that lost their GPUs: check them at the next pass
    check_all: bool = True
    #: changed since the write that uses it began (then a failed write cannot keep it)
    dirty: bool = False
    #: requests made by the write under way: one its pass grants never waited in the queue,
    #: even when other changes of its batch were written between its request and its grant
    asked_now: set[int] = field(default_factory=set)
    #: the kernel rows the changes of the write under way check, read together
    batch_kernels: dict[str, KernelRecord] = field(default_factory=dict)
    #: node -> (when it was worked out, the node's queue in order, the explanations of its head)
    _views: dict[str, _NodeView] = field(default_factory=dict)
    _placed_order: list[int] | None = None
    #: the pool's requests explained (its head), kept like a node's until the next change
    _pool_view: _PoolView | None = None
    #: pages of the queue answered lately: (version, when, the page, how many wait)
    _pages: dict[PageKey, tuple[int, float, list[Allocation], int]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.active_kernels = Counter(self.kernel_of.values())
        self.user_active = defaultdict(set)
        for aid, user in self.user_of.items():
            self.user_active[user].add(aid)

    def add_active(self, allocation_id: int, kernel_id: str, user: str) -> None:
        self.kernel_of[allocation_id] = kernel_id
        self.active_kernels[kernel_id] += 1
        self.user_of[allocation_id] = user
        self.user_active[user].add(allocation_id)

    def drop_active(self, allocation_id: int) -> None:
        self._drop((allocation_id,))
        self.waited.pop(allocation_id, None)
        user = self.user_of.pop(allocation_id, None)
        if user is not None:
            mine = self.user_active.get(user)
            if mine is not None:
                mine.discard(allocation_id)
                if not mine:
                    del self.user_active[user]
        kernel_id = self.kernel_of.pop(allocation_id, None)
        if kernel_id is None:
            return
        left = self.active_kernels[kernel_id] - 1
        if left > 0:
            self.active_kernels[kernel_id] = left
        else:
            del self.active_kernels[kernel_id]

    def forget_rows(self, allocation_ids: Iterable[int]) -> None:
        """These allocations' rows changed: read them again when next shown."""
        self._drop(tuple(allocation_ids))

    def _drop(self, allocation_ids: tuple[int, ...]) -> None:
        for aid in allocation_ids:
            self.rows.pop(aid, None)
        self.drops += 1
        self._dropped.append((self.drops, allocation_ids))

    def dropped_since(self, drops: int) -> set[int] | None:
        """Ids of the rows dropped since the count was ``drops``; None when that is further
        back than this remembers (then any row may have changed)."""
        if self.drops == drops:
            return set()
        if not self._dropped or self._dropped[0][0] > drops + 1:
            return None
        changed: set[int] = set()
        for count, ids in reversed(self._dropped):
            if count <= drops:
                break
            changed.update(ids)
        return changed

    def active_of(self, user: str) -> list[int]:
        """Ids of the user's active allocations, in order."""
        return sorted(self.user_active.get(user, ()))

    def changed(self) -> None:
        """The state is about to change (nodes' explanations are dropped as it is read again,
        by what the scheduler says it touched)."""
        self.dirty = True
        self._placed_order = None
        # the pool's requests compete on every node: any change may move them
        self._pool_view = None

    def become(self, other: LedgerCache) -> None:
        """Take the state of ``other`` (loaded again within the write that changed it)."""
        if other.sched is not self.sched:
            self.sched.dispose()
        drops = self.drops
        self.__dict__.update(other.__dict__)
        # every row may have changed: reads begun before keep nothing (the count never goes back)
        self.drops = drops + 1
        self._dropped = deque(maxlen=_DROPS_KEPT)
        self.changed()

    def dispose(self) -> None:
        """The state is dropped (see ``Scheduler.dispose``)."""
        self.sched.dispose()

    # -- the queue -----------------------------------------------------------------------------

    def length(self, node: str | None = None) -> int:
        if node is None:
            return len(self.waiting)
        placed = sum(1 for aid in self._placed() if self.waiting[aid].node == node)
        return self.sched.pinned_count(node) + placed

    def page(self, offset: int, limit: int | None, now: float) -> list[int]:
        """Waiting requests in the order of service, ``limit`` (None: all) from ``offset``: the
        ledger's, then the cluster's (in the order they came; the cluster serves them in its
        own order). Costs the page and the users, not the queue behind the page."""
        self.sched.now = max(self.sched.now, now)
        end = None if limit is None else offset + limit
        mine = [d.id for d in itertools.islice(self.sched.in_order(), offset, end)]
        ours = len(self.sched.demands)
        if end is not None and end <= ours:
            return mine
        placed = self._placed()[max(offset - ours, 0) :]
        return mine + (placed if end is None else placed[: end - max(offset, ours)])

    def kept_page(self, key: PageKey, now: float) -> tuple[list[Allocation], int] | None:
        """A page of the queue answered lately, if nothing changed since (``key``: node, limit,
        offset). The many clients of one change (the sidebars, the event stream) ask for the
        same first page; fair-share keys and estimates move with time alone, so an answer
        lasts VIEW_TTL at most."""
        kept = self._pages.get(key)
        if kept is None or kept[0] != self.version or not 0 <= now - kept[1] < VIEW_TTL:
            return None
        return list(kept[2]), kept[3]

    def keep_page(
        self, key: PageKey, version: int, now: float, page: list[Allocation], total: int
    ) -> None:
        """Keep an answer worked out as of ``version`` (one that a change overtook is never
        served: its version is behind)."""
        if len(self._pages) >= _PAGES_KEPT:
            self._pages.clear()
        self._pages[key] = (version, now, list(page), total)

    def node_order(self, node: str, now: float) -> list[int]:
        self.sched.now = max(self.sched.now, now)
        mine = [d.id for d in self.sched.pinned(node)]
        return mine + [aid for aid in self._placed() if self.waiting[aid].node == node]

    def wait_info(self, allocation_id: int, now: float) -> explain.WaitInfo | None:
        """Place, reason and estimated start of a queued request; None if it does not wait."""
        waiting = self.waiting.get(allocation_id)
        if waiting is None:
            return None
        if waiting.placed:
            placed = self._placed()
            reason = waiting.placed_reason or ""
            return explain.WaitInfo(
                request_id=allocation_id,
                # the ids are sorted: its place without a scan of the cluster's queue
                position=bisect.bisect_left(placed, allocation_id) + 1,
                code="quota" if reason.startswith(QUOTA_WAIT) else "cluster",
                reason=reason or "waiting for the cluster's scheduler",
            )
        for node in self.sched.take_touched():
            self._views.pop(node, None)
        if waiting.anywhere:
            return self._pool_info(allocation_id, now)
        node = waiting.node
        kept = self._views.get(node)
        if kept is None or not 0 <= now - kept.at < VIEW_TTL:
            self.sched.now = max(self.sched.now, now)
            queue = self.sched.pinned(node)
            kept = self._views[node] = _NodeView(
                at=now, order={d.id: i for i, d in enumerate(queue)}, queue=queue
            )
        found = kept.infos.get(allocation_id)
        if found is not None:
            return found
        place = kept.order.get(allocation_id)
        if place is None:
            return None
        self.sched.now = max(self.sched.now, now)
        if place >= EXPLAIN_DEPTH:
            found = kept.beyond.get(allocation_id)
            if found is None:
                found = kept.beyond[allocation_id] = explain.beyond(
                    self.sched, node, kept.queue[place], place + 1
                )
            return found
        # deeper than explained so far: at least twice as deep, so that reading a node's
        # whole queue request by request costs a few explanations, not one per request
        depth = min(max(place + 1, 2 * len(kept.infos)), EXPLAIN_DEPTH)
        kept.infos = self._explain(node, kept.queue[:depth], now)
        kept.at = now
        return kept.infos.get(allocation_id)

    def _pool_info(self, allocation_id: int, now: float) -> explain.WaitInfo | None:
        """:meth:`wait_info` of a request of the pool: its head explained as a node's is (down
        to the request asked about, at least twice as deep as before, EXPLAIN_DEPTH at most);
        below that, its place and a brief reason."""
        kept = self._pool_view
        if kept is None or not 0 <= now - kept.at < VIEW_TTL:
            self.sched.now = max(self.sched.now, now)
            kept = self._pool_view = _PoolView(at=now, rest=pool_order(self.sched))
        found = kept.infos.get(allocation_id) or kept.beyond.get(allocation_id)
        if found is not None:
            return found
        place = kept.place(allocation_id)
        if place is None:
            return None
        if place >= EXPLAIN_DEPTH:
            found = kept.beyond[allocation_id] = beyond_pool(
                self.sched, kept.walked[place], place + 1
            )
            return found
        depth = min(max(place + 1, 2 * len(kept.infos)), EXPLAIN_DEPTH)
        typical = self.durations.typical()
        kept.infos = explain_pool(
            self.sched,
            kept.head(depth),
            expected_end=lambda h: self._expected_end(h, now, typical),
            duration=lambda d: typical.get(d.klass, DEFAULT_DURATION),
            assumed=lambda klass: klass not in typical,
        )
        return kept.infos.get(allocation_id)

    @staticmethod
    def _expected_end(h: Holding, now: float, typical: dict[str, float]) -> float:
        if h.preempted_for is not None:
            return now + PREEMPT_GRACE
        return max(h.granted_at + typical.get(h.klass, DEFAULT_DURATION), now + 60.0)

    def _placed(self) -> list[int]:
        if self._placed_order is None:
            self._placed_order = sorted(aid for aid, w in self.waiting.items() if w.placed)
        return self._placed_order

    def _explain(self, node: str, queue: list[Demand], now: float) -> dict[int, explain.WaitInfo]:
        typical = self.durations.typical()

        def lasts(klass: str) -> float:
            return typical.get(klass, DEFAULT_DURATION)

        def expected_end(h: Holding) -> float:
            return self._expected_end(h, now, typical)

        def duration(d: Demand) -> float:
            return lasts(d.klass)

        return explain.explain_node(
            self.sched,
            node,
            queue=queue,
            expected_end=expected_end,
            duration=duration,
            assumed=lambda klass: klass not in typical,
        )
