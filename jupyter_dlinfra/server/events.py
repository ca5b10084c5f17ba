"""The live event stream behind ``GET /dlinfra/api/events``: one producer, many subscribers.

The service owns one :class:`Broadcaster`. Whatever the number of subscribers, each change is
turned into a snapshot once: what changed is read from the ledger and serialised as a delta on a
thread of the stream's own (it waits behind no request), and the same bytes are handed to every
subscriber's :class:`Subscription`. A whole snapshot is serialised only for a subscriber that
needs one (a new one, or one that fell behind); ``stream_state.py`` keeps the picture between.
Telemetry is not sampled here; the service's own loop samples once per interval and pokes the
broadcaster.

What triggers a snapshot: :meth:`Broadcaster.poke`, called by the service on every ledger change
it makes or sees (``LedgerCalls.notify``) and after every telemetry sample. Pokes are coalesced:
the first one after a quiet spell is built at once, later ones at most once per ``debounce``
seconds; and the frames handed to all subscribers together stay within ``fanout_rate`` a
second on average (a token bucket of a second's worth): each delta costs a write per subscriber,
so when changes come fast 500 subscribers get 4 deltas a second (with the default 2,000), each
covering the changes before it, and the streams cannot take the event loop from the requests.
Below the bound nothing waits longer than the debounce. A poke that changed nothing visible
(same ledger version, same sample, no new ledger event) builds nothing. With no subscriber the
producer rests; the next subscriber, or a metrics scrape, builds what it needs on demand.

What a snapshot holds is bounded by the cluster, not by the queue: the GPUs, the granted
allocations (each holds at least one GPU), the first ``queue_page`` waiting requests in the order
of service and the number of all that wait. So one build serves every subscriber whatever the
queue's length; a client reads further pages, and its own requests beyond the first page, through
``GET queue?offset=`` and ``GET allocations?user=`` when the snapshot's ``version`` moves.

Notices come from two sources, in one stream:

- ledger events read with ``Ledger.events(since=...)`` as snapshots are built: ids are the
  ledger's event ``seq`` (positive, shared by every server of the ledger);
- :meth:`Broadcaster.publish_notice` (``LedgerCalls.events.publish_notice``), for warnings the
  server makes up itself (idle reclaim): ids are negative, -1, -2, ... per server process, so
  they never collide with ledger ids. They are not stored and restart from -1 with the server.

Which ledger events deserve a notice, and its words, are ``server/notices.py``'s business; this
module only carries notices.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import json
import threading
from collections import Counter, deque
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING, Any, TypeVar

from jupyter_dlinfra.core.books.events import latest_event_seq
from jupyter_dlinfra.core.books.ledger import Ledger
from jupyter_dlinfra.core.errors import NotFound
from jupyter_dlinfra.core.models import Allocation, Gpu, KernelRecord, LedgerEvent
from jupyter_dlinfra.core.outage import Backoff, database_unavailable
from jupyter_dlinfra.server.notices import LEVELS, Notice, notice_from_event
from jupyter_dlinfra.server.stream_state import Moved, Picture, StreamState
from jupyter_dlinfra.server.token_bucket import TokenBucket
from jupyter_dlinfra.server.views import allocation_json, cluster_fields, iso
from jupyter_dlinfra.telemetry import GpuSample

if TYPE_CHECKING:
    from jupyter_dlinfra.server.sources import StreamSource

__all__ = [
    "KEEPALIVE",
    "QUEUE_PAGE",
    "Broadcaster",
    "Snapshot",
    "Subscription",
    "WaitHistogram",
    "settle",
]

T = TypeVar("T")

#: an SSE comment: keeps proxies from timing the connection out, ignored by EventSource
KEEPALIVE = b": keepalive\n\n"
#: waiting requests a snapshot lists (the first, in the order of service); the rest are counted
QUEUE_PAGE = 50
#: subscribers a delta is written to per step of the event loop (see _fan_out_sliced)
FANOUT_SLICE = 32
#: bucket bounds (seconds) of the grant wait histogram: immediate grants up to an hour's wait
WAIT_BUCKETS = (0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0)
_EVENT_PAGE = 1000


class KernelsRead(Mapping[str, KernelRecord]):
    """Kernels of the ledger read as a snapshot asks for them: ``first`` in one read, any other
    when first looked up. Iterating gives those read so far, never every kernel of the ledger."""

    def __init__(
        self,
        ledger: Ledger,
        first: Iterable[str],
        *,
        known: Mapping[str, KernelRecord] | None = None,
    ) -> None:
        """``known``: kernels already read (the stream's picture keeps its holders'), looked up
        there first and not copied."""
        self._ledger = ledger
        self._known: Mapping[str, KernelRecord] = known or {}
        wanted = {k for k in first if k not in self._known}
        found = ledger.kernels_by_id(wanted) if wanted else []
        self._found = {k.kernel_id: k for k in found}
        self._unknown = wanted - set(self._found)

    def __getitem__(self, kernel_id: str) -> KernelRecord:
        known = self._known.get(kernel_id)
        if known is not None:
            return known
        if kernel_id not in self._found and kernel_id not in self._unknown:
            for record in self._ledger.kernels_by_id([kernel_id]):
                self._found[record.kernel_id] = record
            if kernel_id not in self._found:
                self._unknown.add(kernel_id)
        if kernel_id in self._found:
            return self._found[kernel_id]
        raise KeyError(kernel_id)

    def __iter__(self) -> Iterator[str]:
        yield from self._known
        yield from (k for k in self._found if k not in self._known)

    def __len__(self) -> int:
        return len(self._known) + sum(1 for k in self._found if k not in self._known)


def _frame(event: str, payload: str) -> bytes:
    # json.dumps never writes a newline, so one data line carries the whole payload
    return f"event: {event}\ndata: {payload}\n\n".encode()


def _notice_frame(notice: Notice) -> bytes:
    return _frame("notice", json.dumps(notice.to_json()))


@dataclass(frozen=True, kw_only=True)
class Snapshot:
    """The state one snapshot showed, kept for metrics and new subscribers, with its delta."""

    seq: int
    at: float
    version: int
    gpus: tuple[Gpu, ...]
    holders: Mapping[str, Allocation]
    #: the first waiting requests in the order of service (a page, see ``queue_length``)
    queue: tuple[Allocation, ...]
    #: how many requests wait in all
    queue_length: int
    samples: Mapping[str, GpuSample]
    simulated: bool
    #: the snapshot's fields but the cluster and the granted allocations, as JSON
    top: Mapping[str, Any] = field(repr=False)
    #: the cluster and the granted allocations, as pieces (assembled by ``frame``)
    picture: Picture = field(repr=False)
    #: the ``delta`` frame from the snapshot before (None for the first)
    delta: bytes | None = field(repr=False)
    #: the idle state of each judged kernel (active, idle, warned, reclaimed, exempt)
    idle: Mapping[str, str] = field(default_factory=dict)

    @cached_property
    def allocations(self) -> tuple[Allocation, ...]:
        """The granted allocations, by id (queued ones are in ``queue``)."""
        return tuple(sorted({a.id: a for a in self.holders.values()}.values(), key=_by_id))

    @cached_property
    def frame(self) -> bytes:
        """The whole ``snapshot`` frame: blocking (megabytes at a thousand nodes), so made on
        the stream's thread, and once, whoever asks."""
        body = {
            **self.top,
            "cluster": self.picture.cluster_json(),
            "allocations": self.picture.allocations_json(),
        }
        return _frame("snapshot", json.dumps(body))


def _queue_moved(before: list[dict[str, Any]], after: list[dict[str, Any]]) -> dict[str, Any]:
    """How a delta moves the queue's first page: nothing when it stayed, else the ids in their
    new order and the entries that are new or changed (a request that came in ahead of others
    is one entry, not the page)."""
    if before == after:
        return {}
    held = {a["id"]: a for a in before}
    return {
        "queue_order": [a["id"] for a in after],
        "queue_put": [a for a in after if held.get(a["id"]) != a],
    }


def _by_id(alloc: Allocation) -> int:
    return alloc.id


class WaitHistogram:
    """Cumulative counts of grant waits, for the ``dlinfra_grant_wait_seconds`` histogram.

    Written by the snapshot builder (a pool thread), read by metrics scrapes (another one).
    """

    def __init__(self, buckets: Sequence[float] = WAIT_BUCKETS) -> None:
        self.buckets = tuple(sorted(buckets))
        self._counts = [0] * (len(self.buckets) + 1)
        self._sum = 0.0
        self._lock = threading.Lock()

    def observe(self, seconds: float) -> None:
        with self._lock:
            self._counts[bisect.bisect_left(self.buckets, seconds)] += 1
            self._sum += seconds

    def read(self) -> tuple[list[tuple[str, float]], float]:
        """Cumulative ``(le, count)`` pairs ending with ``+Inf``, and the sum of waits."""
        with self._lock:
            counts, total = list(self._counts), self._sum
        out: list[tuple[str, float]] = []
        running = 0
        for bound, count in zip((*map(str, self.buckets), "+Inf"), counts, strict=True):
            running += count
            out.append((bound, float(running)))
        return out, total


class Subscription:
    """One subscriber's bounded queue of serialised frames.

    State frames (the whole snapshot a subscription starts with, then a delta per change) make
    a chain: each delta moves the state of the one before. When the queue is full, its state
    frames go and the subscription asks to be resynced (``resync``): its owner sends the latest
    whole snapshot (:meth:`Broadcaster.resync`), and deltas follow from there. Notices go only
    when the queue holds nothing else (a client that stopped reading while ``maxsize`` notices
    came), counted in ``dropped_notices``.
    """

    def __init__(self, maxsize: int = 16, *, user: str | None = None) -> None:
        """``user``: the person reading, who gets the notices for everyone and their own, not
        other people's (None: every notice)."""
        if maxsize < 2:
            raise ValueError("a subscription must hold at least a snapshot and a notice")
        self.maxsize = maxsize
        self.user = user
        self.closed = False
        #: the chain of state frames broke (or never began): a whole snapshot must come next
        self.resync = True
        #: times the queue overflowed and its state frames were dropped
        self.overflows = 0
        self.dropped_notices = 0
        # (seq of a state frame, or None for a notice; the frame)
        self._items: deque[tuple[int | None, bytes]] = deque()
        # the reader waiting in next(), woken with True by a frame, False by the keepalive timer
        self._waiter: asyncio.Future[bool] | None = None
        #: while the reader waits with nothing queued: writes a frame straight to the
        #: subscriber's connection, or says it cannot now (False: the frame is queued)
        self._sink: Callable[[bytes], bool] | None = None

    def __len__(self) -> int:
        return len(self._items)

    def offer(self, frame: bytes, *, seq: int | None = None) -> None:
        """Queue a frame: a delta of snapshot ``seq``, or a notice (``seq`` None)."""
        if self.closed:
            return
        sink = self._sink
        if sink is not None and not self._items and not self.resync and sink(frame):
            return
        if len(self._items) >= self.maxsize:
            if seq is not None or any(s is not None for s, _ in self._items):
                self._items = deque(item for item in self._items if item[0] is None)
                self.overflows += 1
                self.resync = True
                self._wake()
                if seq is not None:
                    return
            if len(self._items) >= self.maxsize:
                self._items.popleft()
                self.dropped_notices += 1
        self._items.append((seq, frame))
        self._wake()

    def start(self, frame: bytes, seq: int, *, overflows: int) -> None:
        """Put whole snapshot ``seq`` ahead of what waits; deltas it covers go. ``overflows``:
        :attr:`overflows` when it was read (an overflow since then breaks the chain again)."""
        if self.closed:
            return
        self._items = deque(item for item in self._items if item[0] is None or item[0] > seq)
        self._items.appendleft((seq, frame))
        self.resync = self.overflows != overflows
        self._wake()

    async def next(
        self, keepalive: float, *, sink: Callable[[bytes], bool] | None = None
    ) -> list[bytes] | None:
        """Every frame waiting (none when a resync is due), or ``[KEEPALIVE]`` after
        ``keepalive`` idle seconds; None once closed. ``sink``: while this waits, frames go
        straight to it, in order, as long as it takes them (it returns False for one it cannot
        take now: that one and those after it are queued, and this returns them)."""
        while not self._items and not self.resync:
            if self.closed:
                return None
            # a future and a timer per wait (asyncio.wait_for would make a task of each)
            loop = asyncio.get_running_loop()
            waiter = self._waiter = loop.create_future()
            timer = loop.call_later(keepalive, settle, waiter, False)
            self._sink = sink
            try:
                woken = await waiter
            finally:
                timer.cancel()
                self._waiter = None
                self._sink = None
            if not woken:
                if self.closed:
                    return None
                return [KEEPALIVE]
        if self.closed:
            return None
        if self.resync:
            # the notices only: the deltas wait for the whole snapshot they follow
            notices = [frame for seq, frame in self._items if seq is None]
            self._items = deque(item for item in self._items if item[0] is not None)
            return notices
        frames = [frame for _, frame in self._items]
        self._items.clear()
        return frames

    def close(self) -> None:
        self.closed = True
        self._sink = None
        self._items.clear()
        self._wake()

    def _wake(self) -> None:
        if self._waiter is not None:
            settle(self._waiter, True)


def settle(future: asyncio.Future[T], value: T) -> None:
    """Give ``future`` its result unless it has one (a timer and a wake may both come)."""
    if not future.done():
        future.set_result(value)


class Broadcaster:
    def __init__(
        self,
        source: StreamSource,
        *,
        debounce: float = 0.05,
        fanout_rate: float = 2000.0,
        keepalive: float = 15.0,
        queue_size: int = 16,
        queue_page: int = QUEUE_PAGE,
    ) -> None:
        """``fanout_rate``: frames a second handed to all subscribers together, on average
        (0: no bound but ``debounce``; the bucket refuses a negative rate)."""
        if queue_page < 0:
            raise ValueError(f"queue_page must be 0 or more, not {queue_page}")
        self._source = source
        self.debounce = debounce
        self.fanout = TokenBucket(fanout_rate, now=float("-inf"))
        self.keepalive = keepalive
        self.queue_size = queue_size
        #: waiting requests each snapshot lists; the others are only counted
        self.queue_page = queue_page
        #: snapshots built and serialised (one per change, whatever the number of subscribers)
        self.snapshots_built = 0
        self.grant_waits = WaitHistogram()
        #: idle-reclaim events seen since this server started, by kind (and reclaim action)
        self.idle_events: Counter[tuple[str, str]] = Counter()
        self.latest: Snapshot | None = None
        self._subs: set[Subscription] = set()
        self._subs_changed = asyncio.Event()
        self._dirty = True
        self._wake = asyncio.Event()
        self._lock = asyncio.Lock()
        self._state = StreamState()
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self._last_build_at = float("-inf")
        self._next_notice_id = -1
        # touched only by _build, which runs under _lock, so one pool thread at a time
        self._last_seq = 0
        self._last_event: LedgerEvent | None = None
        self._seen_samples: Mapping[str, GpuSample] | None = None

    @property
    def subscribers(self) -> int:
        return len(self._subs)

    # -- lifecycle -------------------------------------------------------------------------------

    def prime(self) -> None:
        """Blocking: start reading ledger events from now on, not from the ledger's beginning."""
        self._last_seq = latest_event_seq(self._source.ledger.store)

    def start(self) -> None:
        """Start the producer; needs a running event loop. Idempotent."""
        if self._task is None and not self._closed:
            self._task = asyncio.create_task(self._run())

    async def close(self) -> None:
        """End every stream and the producer. Idempotent."""
        self._closed = True
        for sub in list(self._subs):
            sub.close()
        self._subs.clear()
        self._subs_changed.set()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    # -- producers -------------------------------------------------------------------------------

    def poke(self) -> None:
        """Something may have changed: the ledger or the telemetry. Call on the event loop."""
        self._dirty = True
        self._wake.set()

    def publish_notice(
        self,
        kind: str,
        level: str,
        message: str,
        *,
        user: str | None = None,
        kernel_id: str | None = None,
        allocation_id: int | None = None,
        actions: Iterable[tuple[str, str]] = (),
    ) -> Notice:
        """Tell every event-stream subscriber something now (call on the event loop).

        The generic warning channel, e.g. for idle reclaim: ``kind`` is free ("warning" for
        warnings), ``level`` one of info, warning, error, and ``actions`` ``(id, label)`` pairs
        the front end offers as buttons. The notice gets a negative id (-1, -2, ... per server
        process) so that it never collides with the ids of notices made from ledger events,
        which are the events' positive ``seq``. Nothing is stored: only connected subscribers see
        it.
        """
        if level not in LEVELS:
            raise ValueError(f"level must be one of {', '.join(LEVELS)}, not {level!r}")
        if not kind or not message:
            raise ValueError("a notice needs a kind and a message")
        notice = Notice(
            id=self._next_notice_id,
            kind=kind,
            level=level,
            message=message,
            user=user,
            kernel_id=kernel_id,
            allocation_id=allocation_id,
            actions=tuple((str(a), str(label)) for a, label in actions),
        )
        self._next_notice_id -= 1
        self._tell(notice)
        return notice

    # -- subscribers -----------------------------------------------------------------------------

    async def subscribe(self, user: str | None = None) -> Subscription:
        """A new subscription, whose first frame is a whole snapshot of the current state;
        ``user``: whose notices it gets besides those for everyone (None: all of them)."""
        if self._closed:
            raise RuntimeError("the event stream is closed (the server is stopping)")
        self.start()
        sub = Subscription(self.queue_size, user=user)
        # the ledger must answer before a stream opens (two small reads when nothing changed):
        # a stale snapshot would look live while its database is away, where this answers 503
        self._dirty = True
        # joined first, so that every delta after the snapshot it starts with reaches it
        self._subs.add(sub)
        try:
            await self.resync(sub, checked=True)
        except BaseException:
            self._subs.discard(sub)
            raise
        self._subs_changed.set()
        return sub

    async def resync(self, sub: Subscription, *, checked: bool = False) -> None:
        """Give ``sub`` the latest whole snapshot, ahead of the deltas that follow it.

        ``checked``: the ledger must answer first (a new stream); else, while it does not, the
        last snapshot built serves (the stream's notices have said that the view is stale).
        """
        overflows = sub.overflows
        try:
            snapshot = await self.current()
        except Exception:
            if checked or self.latest is None:
                raise
            snapshot = self.latest
        if "frame" not in snapshot.__dict__:
            # serialised on the stream's one thread: the first asker makes it, the others find it
            await self._source.call_for_stream(lambda: snapshot.frame)
        sub.start(snapshot.frame, snapshot.seq, overflows=overflows)

    def unsubscribe(self, sub: Subscription) -> None:
        sub.close()
        if sub in self._subs:
            self._subs.discard(sub)
            self._subs_changed.set()

    async def wait_for_subscribers(self, count: int, timeout: float) -> bool:
        """Wait until exactly ``count`` subscribers are connected (tests, benchmarks)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while len(self._subs) != count:
            left = deadline - loop.time()
            if left <= 0:
                return False
            self._subs_changed.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._subs_changed.wait(), left)
        return True

    # -- building --------------------------------------------------------------------------------

    async def current(self) -> Snapshot:
        """The latest snapshot, built first when something changed since."""
        if self.latest is None or self._dirty:
            return await self.refresh()
        return self.latest

    async def refresh(self) -> Snapshot:
        async with self._lock:
            if self.latest is not None and not self._dirty:
                return self.latest  # built by whoever held the lock before us
            self._dirty = False
            try:
                snapshot, notices = await self._source.call_for_stream(self._build)
            except BaseException:
                self._dirty = True
                raise
            self._source.health.recovered(where="the event stream")
            for notice in notices:
                self._tell(notice)
            if snapshot is not None:
                # only a snapshot sent counts: a poke that changed nothing must not delay the next
                self._last_build_at = asyncio.get_running_loop().time()
                self.latest = snapshot
                if snapshot.delta is not None:
                    await self._fan_out_sliced(snapshot.delta, snapshot.seq)
            assert self.latest is not None
            return self.latest

    async def _fan_out_sliced(self, frame: bytes, seq: int) -> None:
        """A delta to every subscriber, ``FANOUT_SLICE`` at a time, the event loop serving
        others in between: a subscriber that keeps up is written to at once (a send each), and
        500 of them in one step held every request of the gateway for 100-350 ms. The lock is
        held throughout, so the next delta follows this one; a stream that joins meanwhile
        starts from the snapshot this delta made."""
        readers = list(self._subs)
        self.fanout.spend(asyncio.get_running_loop().time(), len(readers))
        for start in range(0, len(readers), FANOUT_SLICE):
            if start:
                await asyncio.sleep(0)
            for sub in readers[start : start + FANOUT_SLICE]:
                sub.offer(frame, seq=seq)

    def _fan_out(
        self,
        frame: bytes,
        *,
        seq: int | None = None,
        readers: Collection[Subscription] | None = None,
    ) -> None:
        """``frame`` to ``readers`` (every subscriber unless given)."""
        readers = self._subs if readers is None else readers
        self.fanout.spend(asyncio.get_running_loop().time(), len(readers))
        for sub in readers:
            sub.offer(frame, seq=seq)

    def _tell(self, notice: Notice) -> None:
        """A notice to the subscribers it is for: a person's own (a grant after a wait, an idle
        warning) to that person's streams only, not to every open dashboard of the team (which
        would show anyone reading the stream other people's kernels, and spend the frame
        budget of the deltas on frames their clients drop)."""
        owner = notice.user
        readers = (
            self._subs
            if owner is None
            else [sub for sub in self._subs if sub.user is None or sub.user == owner]
        )
        if readers:
            self._fan_out(_notice_frame(notice), readers=readers)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        backoff = Backoff(first=1.0, cap=30.0)
        while True:
            await self._wake.wait()
            now = loop.time()
            delay = max(
                self._last_build_at + self.debounce - now,
                self.fanout.delay(now, len(self._subs)),
            )
            if delay > 0:
                await asyncio.sleep(delay)
            # pokes that came during the delay are covered by this build
            self._wake.clear()
            if not self._subs:
                continue  # stays dirty: the next subscriber or scrape builds on demand
            try:
                await self.refresh()
            except Exception as err:
                health = self._source.health
                if database_unavailable(err):
                    # said once (with a notice to every subscriber); tried again with backoff
                    health.failed(err, where="the event stream")
                    await health.pause(backoff.next())
                else:
                    self._source.log.exception("dlinfra: building the event snapshot failed")
                    await asyncio.sleep(1.0)  # a broken ledger must not make this loop spin
                self._wake.set()
            else:
                backoff.reset()

    def _build(self) -> tuple[Snapshot | None, list[Notice]]:
        """Blocking (the stream's thread): read what changed, turn new events into notices,
        serialise the delta (the whole snapshot is serialised when a subscriber asks for it)."""
        source = self._source
        ledger = source.ledger
        # read the version first: a change racing with the reads below pokes again and is
        # rebuilt, instead of being hidden behind a version that already counts it
        version = ledger.version()
        samples = source.samples
        new_events = self._read_events()
        previous = self.latest
        if (
            previous is not None
            and version == previous.version
            and samples is self._seen_samples
            and not new_events
        ):
            return None, []
        now = ledger.clock.now()
        state = self._state
        try:
            moved = state.step(
                ledger,
                events=new_events,
                samples=samples,
                provider=source.provider,
                local_node=source.settings.node,
                now=now,
            )
            snapshot, notices = self._assemble(moved, previous, new_events, version, samples, now)
        except BaseException:
            # nothing of this build reached anyone: the next delta must cover what it moved
            state.rewind(previous.picture if previous is not None else None)
            raise
        self.snapshots_built = snapshot.seq
        self._seen_samples = samples
        return snapshot, notices

    def _assemble(
        self,
        moved: Moved,
        previous: Snapshot | None,
        new_events: list[LedgerEvent],
        version: int,
        samples: Mapping[str, GpuSample],
        now: float,
    ) -> tuple[Snapshot, list[Notice]]:
        """Blocking: the snapshot of the moved picture, with its delta from ``previous``."""
        source = self._source
        ledger = source.ledger
        provider = source.provider
        state = self._state
        # the kernels the snapshot names (holders', new events'; idle states' as asked for),
        # not every kernel of the ledger: those waiting would make a build grow with the queue
        kernels = KernelsRead(
            ledger, {e.kernel_id for e in new_events if e.kernel_id}, known=state.kernels
        )
        page, queue_length = ledger.queue_page(limit=self.queue_page)
        queue = tuple(page)
        notices = self._notices(new_events, kernels)
        simulated = state.simulated
        seq = self.snapshots_built + 1
        idle_view = source.idle_view(kernels)
        cluster = cluster_fields(
            gpu_count=len(state.present),
            free_count=state.free_count(),
            provider=provider,
            simulated=simulated,
            queue_length=queue_length,
        )
        top = {
            "seq": seq,
            "at": iso(now),
            "version": version,
            "queue": [allocation_json(a, state.gpus, simulated=provider.simulated) for a in queue],
            "queue_length": queue_length,
            "simulated": simulated,
            **idle_view,
        }
        delta = None
        if previous is not None:
            body = {
                **top,
                "base": previous.seq,
                "cluster": cluster,
                "gpus": moved.gpus,
                "gpus_gone": moved.gpus_gone,
                "allocations": moved.allocations,
                "allocations_gone": moved.allocations_gone,
            }
            del body["queue"]
            body.update(_queue_moved(previous.top["queue"], top["queue"]))
            for key in ("idle", "hints"):
                if top[key] == previous.top.get(key):
                    del body[key]  # unchanged: the client keeps what it has
            delta = _frame("delta", json.dumps(body))
        snapshot = Snapshot(
            seq=seq,
            at=now,
            version=version,
            gpus=state.present,
            holders=dict(state.holders),
            queue=queue,
            queue_length=queue_length,
            samples=samples,
            simulated=simulated,
            idle={k: str(v.get("state")) for k, v in idle_view["idle"].items()},
            top=top,
            picture=state.picture(cluster),
            delta=delta,
        )
        return snapshot, notices

    def _read_events(self) -> list[LedgerEvent]:
        found: list[LedgerEvent] = []
        while True:
            page = self._source.ledger.events(since=self._last_seq, limit=_EVENT_PAGE)
            found.extend(page)
            if page:
                self._last_seq = page[-1].seq
            if len(page) < _EVENT_PAGE:
                return found

    def _notices(
        self, new_events: list[LedgerEvent], kernels: Mapping[str, KernelRecord]
    ) -> list[Notice]:
        ledger = self._source.ledger

        def owner_of(allocation_id: int) -> str | None:
            try:
                return ledger.allocation(allocation_id).user
            except NotFound:
                return None

        notices = []
        for event in new_events:
            if event.kind == "granted":
                waited = event.detail.get("waited_s")
                if isinstance(waited, (int, float)):
                    self.grant_waits.observe(max(0.0, float(waited)))
            elif event.kind in ("idle_warning", "idle_kept", "idle_reclaimed"):
                action = str(event.detail.get("action") or "") if event.kind != "idle_kept" else ""
                self.idle_events[(event.kind, action)] += 1
            notice = notice_from_event(
                event, previous=self._last_event, kernels=kernels, owner_of=owner_of
            )
            if notice is not None:
                notices.append(notice)
            self._last_event = event
        return notices
