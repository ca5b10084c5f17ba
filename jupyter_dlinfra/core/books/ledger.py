"""The GPU ledger: who holds which GPU, who waits, in what order, and why.

Requests are ordered by the scheduling policy (priority classes, fair share, quotas; see
``scheduler.py``). The ledger keeps one scheduler in memory (``ledger_cache.py``), current as of
the store's ledger counter: each change is written and applied to it within one write
transaction, then the scheduler makes a pass whose grants and preemptions are written in the same
transaction, each with an event row, before anyone is told about them. When another process has
written since, the state is loaded again first. A blocked request keeps the free GPUs it could
use for itself, so a large request is never starved by a stream of small ones.
"""

from __future__ import annotations

import copy
import gc
import json
import logging
import threading
from collections import defaultdict
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

from sqlalchemy import Connection, Row, bindparam, delete, func, insert, select, update
from sqlalchemy.exc import SQLAlchemyError

from jupyter_dlinfra.core.books import ledger_sql as sql
from jupyter_dlinfra.core.books.events import event_row, write_event, write_events
from jupyter_dlinfra.core.books.group_commit import Combiner, CountedLock, Outcome
from jupyter_dlinfra.core.books.ledger_cache import QUOTA_WAIT, Durations, LedgerCache, Waiting
from jupyter_dlinfra.core.books.ledger_state import (
    GroupsOf,
    class_of,
    demand_of,
    groups_json,
    groups_of_row,
    load_scheduler,
    names_of_row,
    recent_spans,
    recorded_usage,
    running_usage,
)
from jupyter_dlinfra.core.books.policies import SCHEDULING_PREFIX, UnreadablePolicy, save_document
from jupyter_dlinfra.core.change_feed import FeedCache
from jupyter_dlinfra.core.clock import Clock
from jupyter_dlinfra.core.errors import (
    Conflict,
    InvalidRequest,
    LedgerError,
    NotFound,
    Unsatisfiable,
)
from jupyter_dlinfra.core.models import (
    POOL,
    Allocation,
    AllocationState,
    Gpu,
    KernelCaller,
    KernelRecord,
    LedgerEvent,
    OutsideUse,
)
from jupyter_dlinfra.core.scheduling import explain
from jupyter_dlinfra.core.scheduling.fairshare import Standing, bounded_usage, decayed
from jupyter_dlinfra.core.scheduling.policy import SchedulingPolicy
from jupyter_dlinfra.core.scheduling.types import Grant, Holding, Slot, model_matches
from jupyter_dlinfra.core.store import (
    LEDGER_VERSION,
    Store,
    Transaction,
    allocation_gpus,
    allocations,
    events,
    gpus,
    holdings,
    kernels,
    outside_use,
    policies,
    read_counter,
)
from jupyter_dlinfra.core.wording import plural

#: where the admin's scheduling policy is kept (dlinfra_policy.key)
SCHEDULING_KEY = "scheduling"

__all__ = ["CLUSTER", "QUOTA_WAIT", "SCHEDULING_KEY", "Ledger", "LedgerChange"]

_log = logging.getLogger(__name__)

_T = TypeVar("_T")

#: ``placement`` of a request that a cluster's scheduler places
CLUSTER = "cluster"


def _same_model(a: str | None, b: str | None) -> bool:
    return (a or "").lower() == (b or "").lower()


#: what a pass granted: the grant of each request, and when
_Grants = dict[int, tuple[Grant, float]]


@dataclass(frozen=True)
class _Waits:
    """An answer that is a queued request: its place, reason and estimated start are worked
    out once the transaction has committed (still under the ledger's lock, on the state as of
    the commit), so that the store's write lock is not held for them."""

    alloc: Allocation


#: a change's answer, once the pass it waits for has run (inside its transaction)
_Finish = Callable[[_Grants], Allocation | _Waits]


@dataclass(eq=False)
class LedgerChange:
    """A request or a release, in two steps, so that several can share a transaction and a
    pass (``group_commit.py``): ``check`` reads, and refuses (raises) or answers at once,
    before anything is written; ``apply`` writes, and returns how to answer once the pass has
    run, and whether the change needs one. Made by :meth:`Ledger.request_change` and
    :meth:`Ledger.release_change`, carried out by :meth:`Ledger.post`."""

    check: Callable[[Transaction, LedgerCache], Allocation | None]
    apply: Callable[[Transaction, LedgerCache], tuple[_Finish, bool]]
    #: the kernel whose row ``check`` reads: a batch reads its changes' rows in one statement
    kernel_id: str | None = None
    outcome: Outcome[Allocation] = field(default_factory=Outcome)


#: the cyclic collector's thresholds in a server process that owns a ledger (Python's own are
#: 700, 10, 10): see :func:`freeze_long_lived`
SERVER_GC_THRESHOLDS = (50_000, 20, 100)


def freeze_long_lived() -> None:
    """Collect what is garbage now, then freeze every object the process holds (``gc.freeze``):
    the cyclic collector no longer scans them. A server's imports and the ledger's state at
    1,024 nodes x 10,000 waiting are some 250,000 tracked objects, and each full collection
    scanned them all: a pause of 100 to 180 ms, every few hundred changes, inside whichever
    request was running. Frozen objects are still freed by reference counting (a state
    replaced later is disposed of so that it has no cycle, see ``Scheduler.dispose``); only
    a cycle among them would outlive its use. Python's documentation recommends the same for
    long-lived objects made at start-up.

    What the server makes afterwards is not frozen: under a team's load (a gateway at 1,024
    nodes x 5,000 waiting, 500 open event streams) objects that live a little while (waiting
    requests' calls, kept answers, the stream's picture) reached 200,000 in the oldest
    generation within a minute, and full passes over them took 60-190 ms every few seconds
    again. With Python's thresholds a young collection runs every 700 new objects, promoting
    whatever is still alive at that moment; at 50,000 most of those objects have been freed
    by reference counting before a collection looks, and full passes come after 2,000 young
    ones instead of 100 (``benchmarks/gateway_load.py``: p99 from 170-420 ms to 60-75 ms)."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*SERVER_GC_THRESHOLDS)


class Ledger:
    def __init__(
        self,
        store: Store,
        clock: Clock,
        *,
        policy: SchedulingPolicy | None = None,
        groups_of: GroupsOf | None = None,
        max_scan: int = 100,
        freeze_loaded_state: bool = False,
    ) -> None:
        """``policy``: the configured scheduling policy (one set through the API wins);
        ``groups_of(user)``: the groups a user belongs to, for group shares and quotas;
        ``max_scan``: requests a pass looks at beyond its reservations (SLURM's
        default_queue_depth) while some waiting request is not pinned to a node; requests
        pinned to a node that changed are looked at whatever it is (see ``scheduler.py``);
        ``freeze_loaded_state``: once the state is first loaded, move every object of the
        process out of the cyclic garbage collector's sight (see :func:`freeze_long_lived`),
        for a server process that owns this ledger."""
        self.store = store
        self.clock = clock
        self.configured_policy = policy or SchedulingPolicy()
        self.groups_of: GroupsOf = groups_of or (lambda user: ())
        self.max_scan = max_scan
        self.freeze_loaded_state = freeze_loaded_state
        self._froze = False
        self._unreadable_policy = UnreadablePolicy(
            "scheduling", endpoint="/dlinfra/api/scheduling", log=_log
        )
        # the scheduling state in memory, and the lock of both it and the ledger's transactions
        # in this process (taken before the store's write lock, never after)
        self._cache: LedgerCache | None = None
        self._lock = CountedLock()
        #: a write of the state is under way (it holds the lock)
        self.writing = False
        #: answers from memory asked while a write held the state (answer_after_write), and
        #: the lock of both them and ``writing``
        self._after_write: list[tuple[Callable[[], Any], Callable[[Any], None]]] = []
        self._after_write_lock = threading.Lock()
        #: the change feed's stamp when the state was last checked against the ledger's
        #: counter (while it stays, nobody else has written since)
        self._checked_at: int | None = None
        #: GPU rows by UUID (gpus_of)
        self._gpu_rows: FeedCache[str, Gpu] = FeedCache(lambda: store.feed)
        #: the GPUs each granted allocation was given, in their order on the node: written once
        #: with the grant and never changed, so kept whatever else writes (bounded)
        self._granted_gpus: dict[int, list[str]] = {}
        #: kernel token hash -> the kernel it acts for (caller_by_token_hash)
        self._callers: FeedCache[str, KernelCaller] = FeedCache(lambda: store.feed)
        # requests and releases that arrive together share a transaction and a pass
        self._combiner: Combiner[LedgerChange] = Combiner(self._lock, self._run_changes)

    @contextmanager
    def _writing(self) -> Iterator[tuple[Transaction, LedgerCache]]:
        """A write transaction and the scheduling state as of it, changed together: the state
        is kept only once the transaction has committed (or when it was not changed)."""
        with self._lock:
            with self._after_write_lock:
                self.writing = True
            try:
                with self.store.write() as tx:
                    cache = self._state(
                        tx.conn, writing=True, version=tx.counters.get(LEDGER_VERSION)
                    )
                    cache.dirty = False
                    cache.asked_now.clear()
                    cache.batch_kernels = {}
                    # what is held accrues fair-share usage up to the change, not the last pass
                    cache.sched.now = max(cache.sched.now, self.clock.now())
                    self._cache = None
                    try:
                        yield tx, cache
                    except BaseException:
                        if not cache.dirty:
                            self._cache = cache
                        else:
                            cache.dispose()
                        raise
                    if tx.changed:
                        tx.ledger_changed = True  # the store counts it with the commit
                        cache.version += 1
                self._cache = cache
            finally:
                self._answer_waiting_reads()

    def _submit(self, change: LedgerChange) -> Allocation:
        self._combiner.submit(change)
        return change.outcome.value()

    def post(self, change: LedgerChange, then: Callable[[Outcome[Allocation]], None]) -> None:
        """Carry ``change`` out on the ledger's writing thread, with whatever else waits there,
        and return at once: ``then`` gets its outcome (``.value()`` is the allocation, or
        raises what the change would have raised), on that thread. For an event loop, which
        must not wait for the ledger's lock nor keep a thread of a pool waiting for it."""
        self._combiner.post(change, then)

    def _run_changes(self, batch: list[LedgerChange]) -> None:
        """Answer every change of ``batch``: together in one transaction and one pass, or, when
        one of them fails after it wrote (that transaction is undone), each alone, so that the
        others do not fail with it."""
        try:
            answers = self._together(batch)
        except Exception as err:
            if len(batch) == 1:
                batch[0].outcome.fail(err)
                return
            _log.warning(
                "%d changes of the ledger that came together failed (%s: %s); each is made alone",
                len(batch),
                type(err).__name__,
                err,
            )
            for change in batch:
                self._run_changes([change])
            return
        now = self.clock.now()
        for change, answer in answers:
            if isinstance(answer, Exception):
                change.outcome.fail(answer)
            elif isinstance(answer, _Waits):
                change.outcome.answer(self._told_wait(answer.alloc, now))
            else:
                change.outcome.answer(answer)

    def _told_wait(self, alloc: Allocation, now: float) -> Allocation:
        """A committed request with its wait (the state in memory is as of the commit: the
        ledger's lock is held). The request is made whatever happens here: a failure to explain
        its wait is logged and the request answered without it, never made again."""
        cache = self._cache
        if cache is None:
            return alloc
        try:
            return self._waited(alloc, cache, now)
        except Exception:
            _log.exception("could not work out the wait of request %d", alloc.id)
            return alloc

    def _together(
        self, batch: list[LedgerChange]
    ) -> list[tuple[LedgerChange, Allocation | _Waits | Exception]]:
        """The changes of ``batch`` in order, then one pass for them all, in one transaction.
        An error of a check is that change's answer (a check writes nothing: a refusal, or the
        caller's own check of the allocation, such as an HTTP 403); an error of the database,
        or of a change that wrote, undoes them all."""
        answers: list[tuple[LedgerChange, Allocation | _Waits | Exception]] = []
        with self._writing() as (tx, cache):
            wanted = {change.kernel_id for change in batch if change.kernel_id is not None}
            if len(wanted) > 1:
                # a round trip per batch, not one per request (no change of a batch writes a
                # kernel's row before the last check has read it: a pass places kernels after)
                rows = _rows_with(tx.conn, kernels.c.kernel_id, wanted)
                cache.batch_kernels = {r.kernel_id: _kernel(r) for r in rows}
            finishing: list[tuple[LedgerChange, _Finish]] = []
            schedules = False
            for change in batch:
                try:
                    early = change.check(tx, cache)
                except SQLAlchemyError:
                    raise  # the transaction may be lost (PostgreSQL aborts it): each alone
                except Exception as refused:
                    answers.append((change, refused))
                    continue
                if early is not None:
                    answers.append((change, early))
                    continue
                finish, needs_pass = change.apply(tx, cache)
                schedules = schedules or needs_pass
                finishing.append((change, finish))
            grants = self._schedule(tx, cache) if schedules else {}
            answers.extend((change, finish(grants)) for change, finish in finishing)
        return answers

    @contextmanager
    def _reading(self) -> Iterator[tuple[Connection, LedgerCache]]:
        with self.store.read() as conn, self._locked_state(conn) as cache:
            yield conn, cache

    @contextmanager
    def _locked_state(self, conn: Connection) -> Iterator[LedgerCache]:
        """The scheduling state as ``conn`` sees the ledger, under the lock. The counter is
        read before the lock: a database round trip of one reader must not hold up the others
        (a write of this process that commits in between leaves a newer state, which the
        reader keeps, see _state)."""
        feed = self.store.feed
        stamp = feed.stamp if feed is not None and feed.live else None
        if stamp is not None and stamp == self._checked_at:
            # no other process committed since the state was last checked against the counter
            # (the change feed would have told): one database round trip fewer per read
            with self._lock:
                kept = self._cache
                if kept is not None:  # None: a write failed and left it to be loaded again
                    yield kept
                    return
        version = read_counter(conn, LEDGER_VERSION)
        with self._lock:
            cache = self._state(conn, version=version)
            self._checked_at = stamp
            yield cache

    def _from_memory(self, answer: Callable[[LedgerCache], _T | None]) -> _T | None:
        """``answer`` of the state in memory, on the caller's thread, without waiting and without
        the database (an event loop may call it). None when that state may be behind what has
        committed (no change feed tells it current, another process wrote since it was checked,
        or a write of this process is under way and holds the lock), or when ``answer`` finds
        something missing from memory (it returns None)."""
        feed = self.store.feed
        if feed is None or not feed.live or feed.stamp != self._checked_at:
            return None
        if not self._lock.acquire(blocking=False):
            return None
        try:
            cache = self._cache
            return None if cache is None else answer(cache)
        finally:
            self._lock.release()

    def answer_after_write(
        self, answer: Callable[[], _T | None], deliver: Callable[[_T | None], None]
    ) -> bool:
        """While a write holds the state: ``answer`` (one of the ``kept_*`` answers) is made
        on the writing thread once that write is over (committed or undone), before the next
        one takes the state, and handed to ``deliver`` there; False when no write is under way
        (ask again now). Writes of a busy gateway follow each other closely: a reader that
        waited for the lock to come free would mostly find the next write holding it."""
        with self._after_write_lock:
            if not self.writing:
                return False
            self._after_write.append((answer, deliver))
            return True

    def _answer_waiting_reads(self) -> None:
        """The end of a write, the lock still held: the answers asked while it ran."""
        with self._after_write_lock:
            self.writing = False
            waiting, self._after_write = self._after_write, []
        for answer, deliver in waiting:
            try:
                found = answer()
            except Exception:
                _log.exception("dlinfra: an answer from the ledger's memory failed")
                found = None
            deliver(found)

    def kept_allocation(self, allocation_id: int) -> Allocation | None:
        """:meth:`allocation` from memory, or None where it would wait or read (see
        ``_from_memory``): the check before each cell of a waiting ``%gpu``."""

        def answer(cache: LedgerCache) -> Allocation | None:
            row = cache.rows.get(allocation_id)
            return None if row is None else self._waited(row, cache)

        return self._from_memory(answer)

    def kept_versioned(
        self, allocation_ids: Collection[int]
    ) -> tuple[int, dict[int, Allocation]] | None:
        """From memory: the state's ledger counter (:meth:`ledger_version`) and those of
        ``allocation_ids`` whose rows are kept, with their waits; None where ``_from_memory``
        gives nothing. An id left out is to be read: a change dropped its row, or it ended."""

        def answer(cache: LedgerCache) -> tuple[int, dict[int, Allocation]]:
            now = self.clock.now()
            rows = cache.rows
            found = {}
            for aid in allocation_ids:
                row = rows.get(aid)
                if row is not None:
                    found[aid] = self._waited(row, cache, now)
            return cache.version, found

        return self._from_memory(answer)

    def kept_users_page(
        self, user: str, *, limit: int, offset: int = 0
    ) -> tuple[list[Allocation], int] | None:
        """``allocations_page(user=user, active=True)`` from memory, or None where it would wait
        or read a row (see ``_from_memory``): a sidebar's own list."""
        _check_page(limit, offset)

        def answer(cache: LedgerCache) -> tuple[list[Allocation], int] | None:
            ids = cache.active_of(user)
            rows = [cache.rows.get(aid) for aid in ids[offset : offset + limit]]
            if any(row is None for row in rows):
                return None
            now = self.clock.now()
            return [self._waited(a, cache, now) for a in rows if a is not None], len(ids)

        return self._from_memory(answer)

    def kept_queue_page(
        self, node: str | None = None, *, limit: int | None = None, offset: int = 0
    ) -> tuple[list[Allocation], int] | None:
        """:meth:`queue_page` from memory, or None where it would wait or read a row (see
        ``_from_memory``)."""
        _check_page(limit, offset)

        def answer(cache: LedgerCache) -> tuple[list[Allocation], int] | None:
            now = self.clock.now()
            key = (node, limit, offset)
            kept = cache.kept_page(key, now)
            if kept is not None:
                return kept
            page, total = _queue_ids(cache, node, limit, offset, now)
            rows = [cache.rows.get(aid) for aid in page]
            if any(row is None for row in rows):
                return None
            queued = [a for a in rows if a is not None and a.state is AllocationState.QUEUED]
            answer = [self._waited(a, cache, now) for a in queued]
            cache.keep_page(key, cache.version, now, answer, total)
            return answer, total

        return self._from_memory(answer)

    def kept_gpus(self, uuids: Collection[str]) -> list[Gpu] | None:
        """:meth:`gpus_of` from memory, or None where it would read."""
        found: list[Gpu] = []
        for uuid in uuids:
            kept = self._gpu_rows.get(uuid)
            if kept is None:
                return None
            found.append(kept)
        return found

    def _with_waits(self, conn: Connection, found: list[Allocation]) -> list[Allocation]:
        """``found`` (read without the lock: rows need no scheduler, and readers must not wait
        for each other's rows) with the waits of the queued ones, under the lock."""
        if not any(a.state is AllocationState.QUEUED for a in found):
            return found
        with self._locked_state(conn) as cache:
            # one time for the whole answer: fair-share keys are worked out once per user, not
            # again for every node the answer's requests wait on
            now = self.clock.now()
            return [self._waited(a, cache, now) for a in found]

    def _state(
        self, conn: Connection, *, writing: bool = False, version: int | None = None
    ) -> LedgerCache:
        """The scheduling state as ``conn`` sees the ledger: kept, or loaded when another
        process (or a failed write) has changed the ledger since. A reader whose snapshot is
        older than the state (a write of this process committed after its snapshot began, as
        on SQLite) keeps the newer state: loading the older one would only be undone by the
        next write, at the cost of two loads. ``version``: the ledger counter as the caller
        read it already in ``conn`` (PostgreSQL's write lock reads it)."""
        if version is None:
            version = read_counter(conn, LEDGER_VERSION)
        cache = self._cache
        if cache is None or version > cache.version or (writing and version != cache.version):
            loaded = self._load_state(conn, version)
            if cache is not None:
                cache.dispose()
            cache = self._cache = loaded
            if self.freeze_loaded_state and not self._froze:
                self._froze = True
                freeze_long_lived()
        return cache

    def _load_state(self, conn: Connection, version: int) -> LedgerCache:
        policy = self._policy(conn)
        active = self._load(conn, allocations.c.state.in_(sql.ACTIVE))
        extra = conn.execute(
            select(allocations.c.id, allocations.c.groups, allocations.c.cluster_reason).where(
                allocations.c.state.in_(sql.ACTIVE)
            )
        ).all()
        raw_groups = {r.id: r.groups for r in extra}
        recorded = recorded_usage(conn)
        cluster_reasons = {r.id: r.cluster_reason for r in extra}
        sched = load_scheduler(
            conn,
            policy=policy,
            now=self.clock.now(),
            groups_of=self.groups_of,
            # a request the cluster places is not this scheduler's to grant; once placed, it holds
            active=[
                a for a in active if a.placement != CLUSTER or a.state is AllocationState.GRANTED
            ],
            raw_groups=raw_groups,
            recorded=recorded,
            max_scan=self.max_scan,
        )
        outside = {
            r.node: (int(r.gpus), names_of_row(r.pods))
            for r in conn.execute(select(outside_use).order_by(outside_use.c.node))
        }
        for node, (count, _pods) in outside.items():
            sched.set_outside(node, count)
        if sched.demands:
            # what the last pass set aside is not written down: a pass on a copy tells it, so
            # that waiters are told the same before and after a restart
            probe = copy.deepcopy(sched)
            probe.schedule(sched.now)
            sched.reserved = {r: g for r, g in probe.reserved.items() if r in sched.demands}
        return LedgerCache(
            version=version,
            policy=policy,
            sched=sched,
            # a request that can never be granted (its GPUs were lost while no process held
            # the state) is ended by the next write; looked for here, with the loading, so that
            # the next write does not pay for looking at every request
            check_all=any(sched.check(d) is not None for d in sched.demands.values()),
            durations=Durations(recent_spans(conn, policy)),
            recorded=recorded,
            outside=outside,
            kernel_of={a.id: a.kernel_id for a in active},
            user_of={a.id: a.user for a in active},
            rows={a.id: a for a in active},
            waiting={
                a.id: Waiting(
                    kernel_id=a.kernel_id,
                    created_at=a.created_at,
                    node=a.node,
                    placed_reason=cluster_reasons.get(a.id),
                    placed=a.placement == CLUSTER,
                    anywhere=a.placement == POOL,
                )
                for a in active
                if a.state is AllocationState.QUEUED
            },
        )

    # -- scheduling policy -----------------------------------------------------------------------

    def scheduling_policy(self) -> SchedulingPolicy:
        with self.store.read() as conn:
            return self._policy(conn)

    def set_scheduling_policy(self, policy: SchedulingPolicy, *, who: str) -> list[str]:
        """Store an admin's policy (audited field by field) and schedule under it at once."""
        previous = self.scheduling_policy()
        changed = save_document(
            self.store,
            self.clock,
            SCHEDULING_KEY,
            policy.to_json(),
            previous=previous.to_json(),
            who=who,
            field_prefix=SCHEDULING_PREFIX,
        )
        with self._writing() as (tx, cache):
            policy = self._policy(tx.conn)
            cache.changed()
            cache.policy = policy
            cache.sched.set_policy(policy)
            cache.check_all = True
            # other processes load the policy again, whether or not this pass grants anything
            tx.touch()
            self._schedule(tx, cache)
        return changed

    def standings(self) -> list[Standing]:
        """Every user's fair-share standing (usage per share, rank among those who wait)."""
        with self._reading() as (_, cache):
            cache.sched.now = max(cache.sched.now, self.clock.now())
            return explain.standings(cache.sched)

    # -- inventory ---------------------------------------------------------------------------

    def sync_inventory(self, node: str, devices: Sequence[Gpu]) -> None:
        """Make the node's GPUs in the ledger those that telemetry reports now.

        A GPU that disappears is marked absent, not deleted: a grant that holds it stays visible
        until its kernel releases it, but it is never granted again.
        """
        for gpu in devices:
            if gpu.node != node:
                raise InvalidRequest(f"GPU {gpu.uuid} belongs to node {gpu.node}, not {node}")
        with self._writing() as (tx, cache):
            conn = tx.conn
            added: list[Slot] = []
            reshaped = False
            uuids = [g.uuid for g in devices]
            known = {
                r.uuid: r
                for r in conn.execute(
                    select(gpus).where((gpus.c.node == node) | gpus.c.uuid.in_(uuids))
                )
            }
            seen = set()
            for gpu in devices:
                seen.add(gpu.uuid)
                values = {
                    "node": node,
                    "idx": gpu.index,
                    "model": gpu.model,
                    "memory_bytes": gpu.memory_bytes,
                    "simulated": gpu.simulated,
                    "present": True,
                }
                old = known.get(gpu.uuid)
                if old is None:
                    conn.execute(insert(gpus).values(uuid=gpu.uuid, **values))
                    added.append(Slot(uuid=gpu.uuid, node=node, model=gpu.model, index=gpu.index))
                elif any(getattr(old, k) != v for k, v in values.items()):
                    conn.execute(update(gpus).where(gpus.c.uuid == gpu.uuid).values(**values))
                    reshaped = True
                else:
                    continue
                self.write_event(tx, "gpu_seen", detail={"gpu": gpu.uuid, "node": node})
            for uuid, row in known.items():
                if uuid not in seen and row.node == node and row.present:
                    conn.execute(update(gpus).where(gpus.c.uuid == uuid).values(present=False))
                    self.write_event(tx, "gpu_lost", detail={"gpu": uuid, "node": node})
                    reshaped = True
            if tx.changed:
                tx.on_commit(self._gpu_rows.clear)
                if reshaped:
                    # GPUs moved, changed or were lost (rare): the state is loaded again, and
                    # the requests that can no longer be granted are ended at the pass
                    cache.become(self._load_state(conn, cache.version))
                else:
                    cache.changed()
                    cache.sched.add_gpus(added)
                self._schedule(tx, cache)

    def sync_outside(self, use: Mapping[str, tuple[int, Sequence[str]]]) -> bool:
        """Make the GPUs used by work the ledger did not admit (other people's pods) those the
        cluster reports now: ``use`` is node -> (GPUs, what uses them), for every node (a node
        not named uses none). Those GPUs are not granted while that lasts. Writes only when
        something changed; returns whether it did."""
        wanted = {
            node: (int(count), tuple(sorted(str(p) for p in pods)))
            for node, (count, pods) in use.items()
            if count > 0
        }
        with self._reading() as (_conn, cache):
            if cache.outside == wanted:
                return False
        with self._writing() as (tx, cache):
            if cache.outside == wanted:
                return False
            conn = tx.conn
            now = self.clock.now()
            cache.changed()
            for node in sorted(set(cache.outside) | set(wanted)):
                before = cache.outside.get(node)
                after = wanted.get(node)
                if before == after:
                    continue
                if after is None:
                    conn.execute(delete(outside_use).where(outside_use.c.node == node))
                elif before is None:
                    conn.execute(
                        insert(outside_use).values(
                            node=node, gpus=after[0], pods=json.dumps(list(after[1])), at=now
                        )
                    )
                else:
                    conn.execute(
                        update(outside_use)
                        .where(outside_use.c.node == node)
                        .values(gpus=after[0], pods=json.dumps(list(after[1])), at=now)
                    )
                count, pods = after or (0, ())
                self.write_event(
                    tx, "outside_use", detail={"node": node, "gpus": count, "pods": list(pods)}
                )
                cache.sched.set_outside(node, count)
            cache.outside = wanted
            self._schedule(tx, cache)
            return True

    def outside(self) -> dict[str, OutsideUse]:
        """By node, the GPUs used by work the ledger did not admit, and those it keeps out."""
        with self._reading() as (_conn, cache):
            taken = cache.sched.outside_taken
            return {
                node: OutsideUse(node=node, gpus=count, pods=pods, taken=tuple(taken.get(node, ())))
                for node, (count, pods) in cache.outside.items()
            }

    def gpus(self, node: str | None = None, *, include_absent: bool = False) -> list[Gpu]:
        query = select(gpus).order_by(gpus.c.node, gpus.c.idx)
        if node is not None:
            query = query.where(gpus.c.node == node)
        if not include_absent:
            query = query.where(gpus.c.present.is_(True))
        with self.store.read() as conn:
            return [_gpu(r) for r in conn.execute(query)]

    def gpus_of(self, uuids: Collection[str]) -> list[Gpu]:
        """The GPUs with these UUIDs, absent ones too: those that answers about allocations
        show, read without the rest of the cluster (kept in memory while nobody else writes and
        this process's inventory does not change)."""
        found: list[Gpu] = []
        missing: list[str] = []
        for uuid in uuids:
            kept = self._gpu_rows.get(uuid)
            if kept is None:
                missing.append(uuid)
            else:
                found.append(kept)
        if missing:
            stamp = self._gpu_rows.stamp()
            with self.store.read() as conn:
                read = [_gpu(r) for r in _rows_with(conn, gpus.c.uuid, missing)]
            for gpu in read:
                self._gpu_rows.put(gpu.uuid, gpu, stamp)
            found += read
        return found

    def holders(self, allocation_ids: Collection[int] | None = None) -> dict[str, Allocation]:
        """Granted allocations by the UUID of each GPU they hold; with ``allocation_ids``, of
        those allocations only (what changed since a view was read), read without the rest."""
        with self.store.read() as conn:
            rows: Sequence[Any]
            if allocation_ids is None:
                rows = conn.execute(select(holdings.c.gpu_uuid, holdings.c.allocation_id)).all()
            else:
                rows = _rows_with(conn, holdings.c.allocation_id, allocation_ids)
            held: list[tuple[str, int]] = [(r.gpu_uuid, r.allocation_id) for r in rows]
            by_id = {a.id: a for a in self._load(conn, allocations.c.id.in_({h[1] for h in held}))}
        return {uuid: by_id[aid] for uuid, aid in held}

    def parked(self, allocation_ids: Collection[int] | None = None) -> dict[str, Allocation]:
        """Parked grants by the UUID of each GPU they return to (their GPUs are lent, or free to
        lend, and held by nothing of theirs); with ``allocation_ids``, of those only."""
        cond = allocations.c.park_state.in_(("parked", "resuming")) & (
            allocations.c.state == AllocationState.GRANTED.value
        )
        if allocation_ids is not None:
            cond = cond & allocations.c.id.in_(list(allocation_ids))
        with self.store.read() as conn:
            found = self._load(conn, cond)
        return {uuid: alloc for alloc in found for uuid in alloc.gpus}

    def held_on(self, node: str) -> set[str]:
        """The UUIDs of the node's GPUs that someone holds (read without the other nodes')."""
        with self.store.read() as conn:
            found = conn.execute(
                select(holdings.c.gpu_uuid)
                .join(gpus, gpus.c.uuid == holdings.c.gpu_uuid)
                .where(gpus.c.node == node)
            )
            return set(found.scalars())

    # -- kernels -----------------------------------------------------------------------------

    def register_kernel(
        self, record: KernelRecord, *, token_hash: str | None = None
    ) -> KernelRecord:
        """Insert or refresh a kernel; a relaunch keeps its row (and its GPUs when carried over)."""
        values = {
            "user": record.user,
            "node": record.node,
            "server_id": record.server_id,
            "kernel_name": record.kernel_name,
            "path": record.path,
            "pid": record.pid,
            "pid_started_at": record.pid_started_at,
            "keep_on_restart": record.keep_on_restart,
            "token_hash": token_hash,
        }
        with self.store.write() as tx:
            exists = tx.conn.execute(
                select(kernels.c.created_at).where(kernels.c.kernel_id == record.kernel_id)
            ).first()
            if exists is None:
                created = record.created_at or self.clock.now()
                tx.conn.execute(
                    insert(kernels).values(
                        kernel_id=record.kernel_id,
                        created_at=created,
                        launched_at=record.launched_at or created,
                        **values,
                    )
                )
            else:
                # a relaunch: its launch grace counts from now, not from the kernel's first start
                tx.conn.execute(
                    update(kernels)
                    .where(kernels.c.kernel_id == record.kernel_id)
                    .values(launched_at=record.launched_at or self.clock.now(), **values)
                )
            self.write_event(tx, "kernel_registered", kernel_id=record.kernel_id)
            # a relaunch's new token replaces the old one, which must not act for it any more
            tx.on_commit(self._callers.clear)
            return self._kernel(tx.conn, record.kernel_id)

    def update_kernel(self, kernel_id: str, **changes: Any) -> KernelRecord:
        allowed = {
            "pid",
            "pid_started_at",
            "launched_at",
            "keep_on_restart",
            "path",
            "kernel_name",
            "server_id",
        }
        unknown = set(changes) - allowed
        if unknown:
            raise InvalidRequest(f"cannot change {', '.join(sorted(unknown))} of a kernel")
        with self.store.write() as tx:
            self._kernel(tx.conn, kernel_id)
            tx.conn.execute(
                update(kernels).where(kernels.c.kernel_id == kernel_id).values(**changes)
            )
            shown: dict[str, Any] = {k: changes[k] for k in ("path", "kernel_name") if k in changes}
            if shown:
                # what views of its GPUs show: the event stream moves them by this event
                self.write_event(tx, "kernel_updated", kernel_id=kernel_id, detail=shown)
            tx.touch()
            return self._kernel(tx.conn, kernel_id)

    def kernel(self, kernel_id: str) -> KernelRecord:
        with self.store.read() as conn:
            return self._kernel(conn, kernel_id)

    def kernel_by_token_hash(self, token_hash: str) -> KernelRecord | None:
        with self.store.read() as conn:
            row = conn.execute(select(kernels).where(kernels.c.token_hash == token_hash)).first()
            return None if row is None else _kernel(row)

    def cached_caller(self, token_hash: str) -> KernelCaller | None:
        """:meth:`caller_by_token_hash` when it is known without the database (None: ask it)."""
        return self._callers.get(token_hash)

    def caller_by_token_hash(self, token_hash: str) -> KernelCaller | None:
        """The kernel (and its user) a kernel token acts for: what a kernel's every call is
        checked with, kept in memory while nobody else writes (see ``change_feed``) and no
        kernel of this process is registered again or forgotten."""
        found = self.cached_caller(token_hash)
        if found is not None:
            return found
        stamp = self._callers.stamp()
        record = self.kernel_by_token_hash(token_hash)
        if record is None:
            return None
        found = KernelCaller(kernel_id=record.kernel_id, user=record.user)
        self._callers.put(token_hash, found, stamp)
        return found

    def kernels(
        self, node: str | None = None, *, server_id: str | None = None
    ) -> list[KernelRecord]:
        """Known kernels (of ``node``, of the server ``server_id``), oldest first."""
        query = select(kernels).order_by(kernels.c.created_at)
        if node is not None:
            query = query.where(kernels.c.node == node)
        if server_id is not None:
            query = query.where(kernels.c.server_id == server_id)
        with self.store.read() as conn:
            return [_kernel(r) for r in conn.execute(query)]

    def kernels_by_id(self, kernel_ids: Collection[str]) -> list[KernelRecord]:
        """The known kernels among these ids, read without the others."""
        with self.store.read() as conn:
            return [_kernel(r) for r in _rows_with(conn, kernels.c.kernel_id, kernel_ids)]

    def forget_kernel(self, kernel_id: str, *, reason: str) -> list[Allocation]:
        """The kernel is gone for good: end its allocations and drop its token."""
        with self._writing() as (tx, cache):
            return self._forget_kernel(tx, cache, kernel_id, reason)

    def _forget_kernel(
        self, tx: Transaction, cache: LedgerCache, kernel_id: str, reason: str
    ) -> list[Allocation]:
        ended = self._end_kernel_allocations(tx, cache, kernel_id, reason)
        gone = tx.conn.execute(delete(kernels).where(kernels.c.kernel_id == kernel_id))
        if gone.rowcount:
            tx.on_commit(self._callers.clear)
            self.write_event(tx, "kernel_forgotten", kernel_id=kernel_id, detail={"reason": reason})
        if ended:
            self._schedule(tx, cache)
        return ended

    def reconcile(
        self, node: str | None, is_alive: Callable[[KernelRecord], bool], *, reason: str
    ) -> list[str]:
        """Forget the kernels of ``node`` (None: of every node) whose process is gone; return
        their ids.

        A kernel whose record changed after it was judged is left for the next pass: its server
        relaunched it meanwhile (a restart registers the kernel again before its new process
        runs), and forgetting it would take the new process's identity and GPUs."""
        dead = []
        for judged in [k for k in self.kernels(node) if not is_alive(k)]:
            with self._writing() as (tx, cache):
                row = tx.conn.execute(
                    select(kernels).where(kernels.c.kernel_id == judged.kernel_id)
                ).first()
                if row is None or _kernel(row) != judged:
                    continue
                self._forget_kernel(tx, cache, judged.kernel_id, reason)
            dead.append(judged.kernel_id)
        return dead

    # -- allocations -------------------------------------------------------------------------

    def request(
        self,
        *,
        kernel_id: str,
        count: int,
        model: str | None = None,
        priority_class: str | None = None,
        kind: str = "kernel",
        cluster_reason: str | None = None,
        anywhere: bool = False,
        per_node: int | None = None,
    ) -> Allocation:
        """Ask for ``count`` GPUs for a kernel (or a job's holder record, ``kind="job"``): granted
        at once, or queued with a position, a reason and an estimated start.

        With ``cluster_reason``, a cluster's scheduler places it (see :meth:`request_placed`).
        With ``anywhere``, it may take GPUs of any one node (placement :data:`POOL`: work that
        a cluster starts where it is told, such as a Kubernetes Job the ledger admits); the
        allocation names its kernel's node until it is granted, then the node of its GPUs, and
        so does its kernel record. Otherwise it waits for GPUs of its kernel's node. With
        ``anywhere`` and ``per_node`` as well, it is a gang in whole nodes (a distributed job):
        ``per_node`` GPUs on each of ``count // per_node`` different nodes, all granted at once
        (:meth:`gpus_of` says which GPUs are on which node)."""
        return self._submit(
            self.request_change(
                kernel_id=kernel_id,
                count=count,
                model=model,
                priority_class=priority_class,
                kind=kind,
                cluster_reason=cluster_reason,
                anywhere=anywhere,
                per_node=per_node,
            )
        )

    def request_change(
        self,
        *,
        kernel_id: str,
        count: int,
        model: str | None = None,
        priority_class: str | None = None,
        kind: str = "kernel",
        cluster_reason: str | None = None,
        anywhere: bool = False,
        per_node: int | None = None,
    ) -> LedgerChange:
        """:meth:`request` as a change to :meth:`post` (its arguments are checked here)."""
        if isinstance(count, bool) or not isinstance(count, int):
            raise InvalidRequest(f"the GPU count must be a whole number, not {count!r}")
        if count <= 0:
            raise InvalidRequest(f"ask for at least 1 GPU (got {count})")
        if per_node is not None:
            if isinstance(per_node, bool) or not isinstance(per_node, int) or per_node <= 0:
                raise InvalidRequest(f"GPUs per node must be a whole number, not {per_node!r}")
            if not anywhere:
                raise InvalidRequest(
                    "whole nodes are asked of the pool (anywhere): a request on its kernel's "
                    "node has one node"
                )
            if count % per_node:
                raise InvalidRequest(
                    f"{count} GPUs do not split into whole nodes of {per_node}", reason="bad_shape"
                )
            if per_node == count:
                per_node = None  # one node: an ordinary request of the pool
        if model is not None:
            if not isinstance(model, str) or not model.strip():
                raise InvalidRequest("the GPU model must be a non-empty name, such as 'A100'")
            model = model.strip()
        if kind not in ("kernel", "job"):
            raise InvalidRequest(f"kind must be 'kernel' or 'job', not {kind!r}")
        placed = cluster_reason is not None
        if placed and anywhere:
            raise InvalidRequest("a request is placed by the cluster or by the ledger, not both")
        placement = CLUSTER if placed else POOL if anywhere else None
        # what the check found, for the writes (a change may be checked again, alone)
        kernel: KernelRecord | None = None
        klass = ""

        def check(tx: Transaction, cache: LedgerCache) -> Allocation | None:
            nonlocal kernel, klass
            conn = tx.conn
            # the policy the pass schedules under, read in the same transaction
            policy = cache.policy
            if priority_class is not None:
                if not isinstance(priority_class, str) or priority_class not in policy.class_map:
                    raise InvalidRequest(
                        f"unknown priority class {priority_class!r}; classes: {policy.class_names}",
                        reason="unknown_class",
                    )
                klass = priority_class
            else:
                klass = policy.job_class if kind == "job" else policy.kernel_class
            kernel = cache.batch_kernels.get(kernel_id) or self._kernel(conn, kernel_id)
            # the state in memory is current (the write lock is held): most kernels that ask
            # hold nothing, and need no look at the tables
            rows = (
                conn.execute(sql.ACTIVE_OF_KERNEL, {"p_kernel": kernel_id}).all()
                if kernel_id in cache.active_kernels
                else []
            )
            current = self._with_gpus(conn, rows)
            if current:
                held = current[0]
                if (
                    held.count == count
                    and _same_model(held.model, model)
                    and class_of(held, policy) == klass
                    and held.per_node == per_node
                ):
                    return self._waited(held, cache)
                verb = "holds" if held.state is AllocationState.GRANTED else "is waiting for"
                raise Conflict(
                    f"this kernel already {verb} {plural(held.count, 'GPU')} (allocation "
                    f"{held.id}); release them first with `%gpu release`",
                    reason="already_allocated",
                )
            if per_node is not None:
                self._check_whole_nodes(cache, count // per_node, per_node, model)
            elif not placed:
                self._check_satisfiable(cache, None if anywhere else kernel.node, count, model)
            return None

        def apply(tx: Transaction, cache: LedgerCache) -> tuple[_Finish, bool]:
            assert kernel is not None, "a request is written only once checked"
            conn = tx.conn
            alloc = self._enqueue(
                tx,
                cache,
                Allocation(
                    id=0,
                    kernel_id=kernel_id,
                    user=kernel.user,
                    node=kernel.node,
                    count=count,
                    model=model,
                    state=AllocationState.QUEUED,
                    created_at=self.clock.now(),
                    priority_class=klass,
                    kind=kind,
                    placement=placement or "ledger",
                    per_node=per_node,
                ),
                groups_json(self.groups_of(kernel.user)),
                cluster_reason=cluster_reason,
            )
            new_id = alloc.id

            def finish(grants: _Grants) -> Allocation | _Waits:
                granted = grants.get(new_id)
                if granted is not None:
                    grant, at = granted
                    return replace(
                        alloc,
                        state=AllocationState.GRANTED,
                        gpus=grant.gpus,
                        granted_at=at,
                        borrowed=grant.borrowed,
                        on_loan=grant.on_loan,
                        node=cache.sched.node_of(grant.gpus) or alloc.node,
                    )
                if new_id in cache.waiting:
                    return _Waits(alloc)
                return self._one(conn, new_id)

            return finish, not placed

        return LedgerChange(check, apply, kernel_id=kernel_id)

    # -- requests the cluster places (Kubernetes) ----------------------------------------------

    def request_placed(
        self,
        *,
        kernel_id: str,
        count: int,
        model: str | None = None,
        priority_class: str | None = None,
        reason: str,
    ) -> Allocation:
        """Record a request that a cluster's scheduler places (a pod asking for ``count`` GPUs):
        queued here, with the cluster's ``reason``, until :meth:`grant_placed`. This ledger
        neither checks it against its nodes nor schedules it."""
        return self.request(
            kernel_id=kernel_id,
            count=count,
            model=model,
            priority_class=priority_class,
            cluster_reason=reason,
        )

    def cluster_quota_block(
        self, user: str, count: int, *, placed: Collection[int] = ()
    ) -> str | None:
        """Why ``count`` more GPUs for ``user`` would pass a quota (the user's, or a group's);
        None within every quota. Counted: the GPUs granted in this ledger, and the queued
        requests among ``placed`` (a cluster's requests whose pods exist: they may start at any
        moment), a group's by the groups each was asked with (as the scheduler counts them).
        The gateway asks this before it creates a GPU pod, so that the team's quotas hold for
        the work Kubernetes places too; it costs the placed requests, not the cluster's grants."""
        with self._reading() as (conn, cache):
            # what is granted, from memory: the grants of the whole cluster are not read
            policy = cache.policy
            sched = cache.sched
            account = sched.users.get(user)
            mine = account.held if account is not None else 0
            together = {group: sched.held_by_group.get(group, 0) for group in self.groups_of(user)}
            waiting = [aid for aid in placed if aid in cache.waiting]
            rows = (
                conn.execute(
                    select(allocations.c.user, allocations.c.count, allocations.c.groups).where(
                        (allocations.c.state == AllocationState.QUEUED.value)
                        & allocations.c.id.in_(waiting)
                    )
                ).all()
                if waiting
                else []
            )
        for r in rows:
            asked = int(r._mapping["count"])  # r.count is the tuple's method
            if r.user == user:
                mine += asked
            for group in groups_of_row(r.groups, r.user, self.groups_of):
                if group in together:
                    together[group] += asked
        quota = policy.quota_of_user(user)
        if quota is not None and mine + count > quota:
            return f"{user} holds {mine} GPU(s) of a quota of {quota}"
        for group, held in together.items():
            group_quota = policy.group_quotas.get(group)
            if group_quota is not None and held + count > group_quota:
                return f"group {group} holds {held} GPU(s) of a quota of {group_quota}"
        return None

    def note_placement(self, allocation_id: int, reason: str) -> bool:
        """The cluster's latest word on why a placed request waits; True if it changed."""
        with self._writing() as (tx, cache):
            changed = tx.conn.execute(
                update(allocations)
                .where(
                    allocations.c.id == allocation_id,
                    allocations.c.state == AllocationState.QUEUED.value,
                    allocations.c.placement == CLUSTER,
                    allocations.c.cluster_reason.is_distinct_from(reason),
                )
                .values(cluster_reason=reason)
            ).rowcount
            if changed:
                tx.touch()
                waiting = cache.waiting.get(allocation_id)
                if waiting is not None:
                    cache.changed()
                    cache.waiting[allocation_id] = replace(waiting, placed_reason=reason)
            return bool(changed)

    def grant_placed(
        self, allocation_id: int, *, node: str, gpu_uuids: Sequence[str] = ()
    ) -> Allocation:
        """The cluster placed it on ``node``: granted, holding ``gpu_uuids`` when known (from
        the node's telemetry), else that many of the node's GPUs nobody holds in the ledger."""
        with self._writing() as (tx, cache):
            conn = tx.conn
            alloc = self._one(conn, allocation_id)
            if alloc.state is not AllocationState.QUEUED or alloc.placement != CLUSTER:
                return self._waited(alloc, cache)
            held = set(conn.execute(select(holdings.c.gpu_uuid)).scalars())
            known = [
                r.uuid
                for r in conn.execute(
                    select(gpus.c.uuid)
                    .where(gpus.c.node == node, gpus.c.present.is_(True))
                    .order_by(gpus.c.idx)
                )
            ]
            chosen = [u for u in gpu_uuids if u in known and u not in held]
            for uuid in known:
                if len(chosen) >= alloc.count:
                    break
                if uuid not in held and uuid not in chosen:
                    chosen.append(uuid)
            chosen = chosen[: alloc.count]
            now = self.clock.now()
            if chosen:
                rows = [{"gpu_uuid": u, "allocation_id": alloc.id} for u in chosen]
                conn.execute(insert(holdings), rows)
                conn.execute(insert(allocation_gpus), rows)
            conn.execute(
                update(allocations)
                .where(allocations.c.id == alloc.id)
                .values(state=AllocationState.GRANTED.value, granted_at=now, node=node)
            )
            conn.execute(
                update(kernels).where(kernels.c.kernel_id == alloc.kernel_id).values(node=node)
            )
            self.write_event(
                tx,
                "granted",
                allocation_id=alloc.id,
                kernel_id=alloc.kernel_id,
                detail={"gpus": chosen, "waited_s": now - alloc.created_at, "node": node},
            )
            cache.changed()
            cache.waiting.pop(alloc.id, None)
            cache.forget_rows([alloc.id])
            raw = conn.execute(
                select(allocations.c.groups).where(allocations.c.id == alloc.id)
            ).scalar()
            cache.sched.hold(
                Holding(
                    id=alloc.id,
                    user=alloc.user,
                    groups=groups_of_row(raw, alloc.user, self.groups_of),
                    klass=class_of(alloc, cache.policy),
                    kind=alloc.kind,
                    gpus=tuple(chosen),
                    granted_at=now,
                )
            )
            return self._one(conn, alloc.id)

    def release(
        self,
        allocation_id: int,
        *,
        reason: str,
        check: Callable[[Allocation], None] | None = None,
    ) -> Allocation:
        """End an allocation: a queued one is cancelled, a granted one released. Idempotent.

        ``check`` sees the allocation as the release found it, before anything is written, and
        raises to refuse (the caller may not release it): one read, in the same transaction."""
        return self._submit(self.release_change(allocation_id, reason=reason, check=check))

    def release_change(
        self,
        allocation_id: int,
        *,
        reason: str,
        check: Callable[[Allocation], None] | None = None,
    ) -> LedgerChange:
        """:meth:`release` as a change to :meth:`post` (``check`` runs on the writing thread)."""
        # what the check found, for the writes (a change may be checked again, alone)
        found: Allocation | None = None

        def look(tx: Transaction, cache: LedgerCache) -> Allocation | None:
            nonlocal found
            # the state is current under the write lock: its row, when kept, is the table's
            alloc = cache.rows.get(allocation_id) or self._one(tx.conn, allocation_id)
            if check is not None:
                check(alloc)
            if not alloc.state.active:
                return alloc
            found = alloc
            return None

        def apply(tx: Transaction, cache: LedgerCache) -> tuple[_Finish, bool]:
            assert found is not None, "a release is written only once checked"
            ended = self._end(tx, cache, found, reason)
            return (lambda grants: ended), True

        return LedgerChange(look, apply)

    def hand_back(self, allocation_id: int, *, reason: str) -> Allocation:
        """A grant of the pool that the cluster could not start on its node (its pod never
        bound there): released, and asked again in the same transaction, at the same place in
        the order (its original request time), avoiding that node, so that it neither holds
        GPUs it cannot use nor is granted the same node again at once. When every node that
        could hold it has been avoided, only the last is: it may come back to the others.
        Returns the new request (granted elsewhere already, or queued with its wait); an
        allocation that is no longer a granted request of the pool is returned as it is."""
        with self._writing() as (tx, cache):
            conn = tx.conn
            alloc = self._one(conn, allocation_id)
            if alloc.state is not AllocationState.GRANTED or alloc.placement != POOL:
                return self._waited(alloc, cache)
            raw_groups = conn.execute(
                select(allocations.c.groups).where(allocations.c.id == alloc.id)
            ).scalar()
            node = alloc.node
            avoid = set(alloc.avoid) | {node}
            fitting = cache.sched.fitting_nodes(alloc.model, alloc.count)
            if fitting <= avoid:
                avoid = {node} if len(fitting) > 1 else set()
            self._end(tx, cache, alloc, reason)
            again = self._enqueue(
                tx,
                cache,
                replace(
                    alloc,
                    node=self._kernel(conn, alloc.kernel_id).node,
                    state=AllocationState.QUEUED,
                    gpus=(),
                    granted_at=None,
                    borrowed=False,
                    preempted_for=None,
                    preempt_reason=None,
                    avoid=tuple(sorted(avoid)),
                ),
                raw_groups,
                handed_back=alloc.id,
            )
            self._schedule(tx, cache)
            return self._waited(self._one(conn, again.id), cache)

    def _enqueue(
        self,
        tx: Transaction,
        cache: LedgerCache,
        alloc: Allocation,
        groups: str | None,
        *,
        cluster_reason: str | None = None,
        handed_back: int | None = None,
    ) -> Allocation:
        """Write a queued request (``alloc``, its id not known yet; ``groups`` as stored) with
        its ``requested`` event, and add it to the state in memory (the scheduler's demands
        unless a cluster places it); returns it with its id."""
        placed = alloc.placement == CLUSTER
        row = {
            "kernel_id": alloc.kernel_id,
            "user": alloc.user,
            "node": alloc.node,
            "count": alloc.count,
            "model": alloc.model,
            "state": AllocationState.QUEUED.value,
            "created_at": alloc.created_at,
            "priority_class": alloc.priority_class,
            "kind": alloc.kind,
            "groups": groups,
            "borrowed": False,
            "placement": None if alloc.placement == "ledger" else alloc.placement,
            "cluster_reason": cluster_reason,
            "avoid_nodes": json.dumps(list(alloc.avoid)) if alloc.avoid else None,
            "per_node": alloc.per_node,
        }
        detail: dict[str, Any] = {
            "count": alloc.count,
            "model": alloc.model,
            "priority_class": alloc.priority_class,
        }
        if handed_back is not None:
            detail.update(handed_back=handed_back, avoid=list(alloc.avoid))
        if self.store.is_sqlite:
            inserted = tx.conn.execute(sql.INSERT_ALLOCATION, row)
            alloc = replace(alloc, id=int(inserted.inserted_primary_key[0]))  # type: ignore[index]
            self.write_event(
                tx, "requested", allocation_id=alloc.id, kernel_id=alloc.kernel_id, detail=detail
            )
        else:
            new_id = sql.INSERT_REQUEST_WITH_EVENT.run(
                tx.conn, {**row, **self._event_fields(tx, "requested", alloc.kernel_id, detail)}
            ).scalar_one()
            alloc = replace(alloc, id=int(new_id))
        cache.asked_now.add(alloc.id)
        cache.changed()
        cache.add_active(alloc.id, alloc.kernel_id, alloc.user)
        # as the table has it (the hypothesis state machine compares the two)
        cache.rows[alloc.id] = alloc
        cache.waiting[alloc.id] = Waiting(
            kernel_id=alloc.kernel_id,
            created_at=alloc.created_at,
            node=alloc.node,
            placed_reason=cluster_reason,
            placed=placed,
            anywhere=alloc.placement == POOL,
        )
        if not placed:
            cache.sched.submit(
                demand_of(alloc, cache.policy, groups_of_row(groups, alloc.user, self.groups_of))
            )
        return alloc

    def release_kernel(self, kernel_id: str, *, reason: str) -> list[Allocation]:
        with self._writing() as (tx, cache):
            ended = self._end_kernel_allocations(tx, cache, kernel_id, reason)
            if ended:
                self._schedule(tx, cache)
            return ended

    def allocation(self, allocation_id: int) -> Allocation:
        """One allocation, its wait explained if it waits. Where the scheduling state is in
        memory (a server's), an active one's row comes from there (read, and kept, when a write
        changed it since); a process without it (the command line) reads the row alone."""
        with self.store.read() as conn:
            if self._cache is None:
                return self._with_waits(conn, [self._one(conn, allocation_id)])[0]
            with self._locked_state(conn) as cache:
                row = cache.rows.get(allocation_id)
                if row is not None:
                    return self._waited(row, cache)
                drops = cache.drops
            found = self._rows(conn, cache, drops, {allocation_id: None}).get(allocation_id)
            if found is None:
                raise NotFound(f"no allocation {allocation_id}", reason="no_allocation")
            return self._with_waits(conn, [found])[0]

    def allocations_by_id(self, ids: Collection[int]) -> list[Allocation]:
        """The allocations of ``ids`` that exist, by id, the queued ones explained: read
        together, in one read (the watcher of many waiting polls reads them at once)."""
        with self.store.read() as conn:
            rows = sorted(_rows_with(conn, allocations.c.id, ids), key=lambda r: int(r.id))
            return self._with_waits(conn, self._with_gpus(conn, rows))

    def allocations(
        self,
        *,
        kernel_id: str | None = None,
        user: str | None = None,
        node: str | None = None,
        active: bool = True,
        state: AllocationState | None = None,
        limit: int | None = None,
        offset: int = 0,
        server_id: str | None = None,
    ) -> list[Allocation]:
        """Allocations, oldest first, by kernel, user, node or the server of their kernels;
        ``active``: queued and granted ones only; ``state``: in that state only (``GRANTED``:
        as many as there are GPUs at most, and no waiter explained); ``limit`` of them (None:
        all) from ``offset`` on. The queued ones are explained, node by node: a page costs the
        nodes it shows."""
        _check_page(limit, offset)
        found, values = _allocation_filter(kernel_id, user, node, active, state, server_id)
        with self.store.read() as conn:
            return self._allocations(conn, found, values, limit, offset)

    def allocations_page(
        self,
        *,
        limit: int,
        offset: int = 0,
        kernel_id: str | None = None,
        user: str | None = None,
        active: bool = True,
        state: AllocationState | None = None,
    ) -> tuple[list[Allocation], int]:
        """A page of :meth:`allocations` and how many match in all, read together (one
        indexed count for one user's or kernel's active ones). One user's active allocations
        (a sidebar's own list) are served from the state in memory."""
        _check_page(limit, offset)
        if user is not None and kernel_id is None and active and state is None:
            return self._users_page(user, limit, offset)
        found, values = _allocation_filter(kernel_id, user, None, active, state, None)
        with self.store.read() as conn:
            total = int(conn.execute(found.count, values).scalar() or 0)
            page = (
                self._allocations(conn, found, values, limit, offset)
                if limit and offset < total
                else []
            )
            return page, total

    def _users_page(self, user: str, limit: int, offset: int) -> tuple[list[Allocation], int]:
        """A page of the user's active allocations, from the rows in memory; those a write
        changed since they were read are read again (by id, outside the lock) and kept."""
        with self.store.read() as conn:
            with self._locked_state(conn) as cache:
                ids = cache.active_of(user)
                page = ids[offset : offset + limit]
                kept = {aid: cache.rows.get(aid) for aid in page}
                drops = cache.drops
            rows = self._rows(conn, cache, drops, kept)
            # one that ended since its id was listed is left out, as the tables would
            found = [a for a in (rows.get(aid) for aid in page) if a is not None and a.state.active]
            return self._with_waits(conn, found), len(ids)

    def _rows(
        self,
        conn: Connection,
        cache: LedgerCache,
        drops: int,
        kept: dict[int, Allocation | None],
    ) -> dict[int, Allocation]:
        """``kept`` (the rows in memory of some ids, taken when ``cache.drops`` was ``drops``)
        with those missing read (outside the lock) and kept, but for those a write dropped
        since: it may have changed them again after the read."""
        missing = [aid for aid, row in kept.items() if row is None]
        found = {aid: row for aid, row in kept.items() if row is not None}
        if missing:
            read = self._load(conn, allocations.c.id.in_(missing))
            with self._lock:
                changed = cache.dropped_since(drops) if self._cache is cache else None
                if changed is not None:
                    for a in read:
                        if a.state.active and a.id in cache.user_of and a.id not in changed:
                            cache.rows[a.id] = a
            found.update((a.id, a) for a in read)
        return found

    def _allocations(
        self,
        conn: Connection,
        found: _Filtered,
        values: dict[str, Any],
        limit: int | None,
        offset: int,
    ) -> list[Allocation]:
        # no limit: as many rows as a 64-bit LIMIT takes (SQLite and PostgreSQL both read it)
        bounds = {"p_limit": _NO_LIMIT if limit is None else limit, "p_offset": offset}
        rows = conn.execute(found.page, {**values, **bounds}).all()
        return self._with_waits(conn, self._with_gpus(conn, rows))

    def queue(
        self, node: str | None = None, *, limit: int | None = None, offset: int = 0
    ) -> list[Allocation]:
        """Waiting requests in the order they will be served: ``limit`` of them (None: all)
        from place ``offset`` (0-based) on."""
        return self.queue_page(node, limit=limit, offset=offset)[0]

    def queue_page(
        self, node: str | None = None, *, limit: int | None = None, offset: int = 0
    ) -> tuple[list[Allocation], int]:
        """:meth:`queue` and how many wait in all (on ``node``), read together."""
        _check_page(limit, offset)
        key = (node, limit, offset)
        with self.store.read() as conn:
            with self._locked_state(conn) as cache:
                now = self.clock.now()
                kept = cache.kept_page(key, now)
                if kept is not None:
                    return kept
                version, drops = cache.version, cache.drops
                page, total = _queue_ids(cache, node, limit, offset, now)
                in_memory = {aid: cache.rows.get(aid) for aid in page}
            answer: list[Allocation] = []
            if page:
                found = self._rows(conn, cache, drops, in_memory)
                # one granted or ended since the page was taken is no longer in the queue
                waiting = [found[aid] for aid in page if aid in found]
                queued = [a for a in waiting if a.state is AllocationState.QUEUED]
                answer = self._with_waits(conn, queued)
            cache.keep_page(key, version, now, answer, total)
            return answer, total

    def queue_length(self, node: str | None = None) -> int:
        """How many requests wait (on ``node``, or on every node), without explaining them."""
        with self._reading() as (_, cache):
            return cache.length(node)

    def events(self, since: int = 0, limit: int = 1000) -> list[LedgerEvent]:
        with self.store.read() as conn:
            rows = conn.execute(
                select(events).where(events.c.seq > since).order_by(events.c.seq).limit(limit)
            )
            return [
                LedgerEvent(
                    seq=r.seq,
                    at=r.at,
                    kind=r.kind,
                    allocation_id=r.allocation_id,
                    kernel_id=r.kernel_id,
                    detail=json.loads(r.detail),
                )
                for r in rows
            ]

    def version(self) -> int:
        return self.store.version()

    def ledger_version(self) -> int:
        """The ledger's own counter: it moves with each change of the scheduling state
        (requests, grants, releases, the policy), not with other books' writes; what
        :meth:`kept_versioned` counts in."""
        with self.store.read() as conn:
            return read_counter(conn, LEDGER_VERSION)

    def close(self) -> None:
        """Let go of the state in memory (this process is done with the ledger; a later call
        loads it again): with ``freeze_loaded_state``, only this frees it."""
        with self._lock:
            if self._cache is not None:
                self._cache.dispose()
                self._cache = None

    # -- internals ---------------------------------------------------------------------------

    def write_event(
        self,
        tx: Transaction,
        kind: str,
        *,
        allocation_id: int | None = None,
        kernel_id: str | None = None,
        detail: dict[str, Any] | None = None,
        at: float | None = None,
    ) -> None:
        """Add an event row within ``tx``, at the ledger clock's now unless ``at`` is given."""
        write_event(
            tx,
            kind,
            at=self.clock.now() if at is None else at,
            allocation_id=allocation_id,
            kernel_id=kernel_id,
            detail=detail,
        )

    def _event_fields(
        self, tx: Transaction, kind: str, kernel_id: str, detail: dict[str, Any]
    ) -> dict[str, Any]:
        """The values an event written in its change's statement binds (``sql.EVENT_FIELDS``),
        as :meth:`write_event` writes them; marks ``tx`` as a change of the ledger."""
        row = event_row(kind, at=self.clock.now(), kernel_id=kernel_id, detail=detail)
        tx.touch()
        return {
            "p_event_at": row["at"],
            "p_kind": row["kind"],
            "p_kernel": row["kernel_id"],
            "p_detail": row["detail"],
        }

    def largest_node(self, model: str | None = None) -> int:
        """The most GPUs (of ``model``, None: of one model) that one node has, free or not."""
        with self._reading() as (_, cache):
            return cache.sched.largest(model)

    def check_satisfiable(
        self, node: str | None, count: int, model: str | None = None, *, per_node: int | None = None
    ) -> None:
        """Raise Unsatisfiable when no wait could ever grant this request on ``node`` (None: on
        some one node, as a request of the pool; with ``per_node``, on whole nodes)."""
        with self._reading() as (_, cache):
            if per_node is not None and node is None and per_node < count:
                self._check_whole_nodes(cache, count // per_node, per_node, model)
            else:
                self._check_satisfiable(cache, node, count, model)

    def _check_satisfiable(
        self, cache: LedgerCache, node: str | None, count: int, model: str | None
    ) -> None:
        """``node`` None: on some one node of the pool."""
        if node is None:
            self._check_pool_satisfiable(cache, count, model)
            return
        present = cache.sched.node_models(node)  # the node's present GPUs: model -> count
        if not present:
            raise Unsatisfiable(f"node {node} has no GPUs", reason="no_gpus")
        matching = sum(n for m, n in present.items() if model_matches(model, m))
        if not matching:
            models = ", ".join(sorted(present))
            raise Unsatisfiable(
                f"no GPU of model '{model}' on node {node}; models here: {models}",
                reason="unknown_model",
            )
        if count > matching:
            kind = f" of model '{model}'" if model else ""
            raise Unsatisfiable(
                f"asked for {plural(count, 'GPU')}{kind} but node {node} has {matching}",
                reason="too_many",
            )

    @staticmethod
    def _check_pool_satisfiable(cache: LedgerCache, count: int, model: str | None) -> None:
        # the largest node is kept by the scheduler; the models are listed only to refuse
        matching = cache.sched.largest(model)
        if not matching:
            known = cache.sched.known_models()
            if not known:
                raise Unsatisfiable("no node has GPUs", reason="no_gpus")
            raise Unsatisfiable(
                f"no node has GPUs of model '{model}'; models: {', '.join(known)}",
                reason="unknown_model",
            )
        if count > matching:
            kind = f" of model '{model}'" if model else ""
            raise Unsatisfiable(
                f"asked for {plural(count, 'GPU')}{kind} but the largest node has {matching}",
                reason="too_many",
            )

    @classmethod
    def _check_whole_nodes(
        cls, cache: LedgerCache, nodes: int, per_node: int, model: str | None
    ) -> None:
        cls._check_pool_satisfiable(cache, per_node, model)
        big = len(cache.sched.fitting_nodes(model, per_node))
        if big < nodes:
            kind = f" of model '{model}'" if model else ""
            raise Unsatisfiable(
                f"asked for {nodes} nodes of {plural(per_node, 'GPU')}{kind} but "
                f"{'only ' if big else ''}{big or 'no'} node{'' if big == 1 else 's'} "
                f"{'has' if big == 1 else 'have'} {per_node}",
                reason="too_many",
            )

    def _end(
        self, tx: Transaction, cache: LedgerCache, alloc: Allocation, reason: str
    ) -> Allocation:
        """End ``alloc`` (released if granted, else cancelled); returns it as it now is."""
        now = self.clock.now()
        cache.changed()
        sched = cache.sched
        # grants may be marked as preempted for it: for a request of this ledger's scheduler,
        # it knows whether any is (GPUs pending for it); of the cluster's, the tables say
        marked = True
        if alloc.id in sched.holdings or alloc.id in sched.parking.parked:
            sched.release(alloc.id)
        elif alloc.id in sched.demands:
            marked = sched.may_have_victims(alloc.id)
            sched.withdraw(alloc.id)
        cache.waiting.pop(alloc.id, None)
        cache.drop_active(alloc.id)
        state = (
            AllocationState.RELEASED
            if alloc.state is AllocationState.GRANTED
            else AllocationState.CANCELLED
        )
        if alloc.park_state == "resuming":
            # its loans were being stopped for it: they run on as ordinary grants
            sql.UNMARK_PREEMPTED.run(tx.conn, {"p_for": alloc.id})
            cache.forget_rows([a.id for a in cache.rows.values() if a.preempted_for == alloc.id])
        if state is AllocationState.CANCELLED and marked:
            # what was being preempted for it is no longer wanted (a job already stopping is
            # queued again by its owner all the same)
            unmarked = sql.UNMARK_PREEMPTED.run(tx.conn, {"p_for": alloc.id}).rowcount
            if unmarked:  # rare: grants being preempted for it go back to plain grants
                cache.forget_rows(
                    [a.id for a in cache.rows.values() if a.preempted_for == alloc.id]
                )
        if alloc.state is AllocationState.GRANTED:
            sql.DELETE_HOLDINGS.run(tx.conn, {"p_id": alloc.id})
        ended = {"p_id": alloc.id, "p_state": state.value, "p_at": now, "p_why": reason}
        detail = {"reason": reason, "gpus": list(alloc.gpus)}
        if self.store.is_sqlite:
            sql.END_ALLOCATION.run(tx.conn, ended)
            self.write_event(
                tx, state.value, allocation_id=alloc.id, kernel_id=alloc.kernel_id, detail=detail
            )
        else:
            sql.END_WITH_EVENT.run(
                tx.conn, {**ended, **self._event_fields(tx, state.value, alloc.kernel_id, detail)}
            )
        if state is AllocationState.RELEASED and alloc.granted_at is not None:
            cache.durations.add(class_of(alloc, cache.policy), now - alloc.granted_at)
            # the GPUs are back above; the bookkeeping cannot take them again (see _record_usage)
            self._record_usage(tx.conn, cache, alloc.user, len(alloc.gpus), alloc.granted_at)
        return replace(alloc, state=state, ended_at=now, end_reason=reason)

    def _end_kernel_allocations(
        self, tx: Transaction, cache: LedgerCache, kernel_id: str, reason: str
    ) -> list[Allocation]:
        active = self._load(
            tx.conn, (allocations.c.kernel_id == kernel_id) & allocations.c.state.in_(sql.ACTIVE)
        )
        return [self._end(tx, cache, alloc, reason) for alloc in active]

    def _policy(self, conn: Connection) -> SchedulingPolicy:
        row = conn.execute(
            select(policies.c.document).where(policies.c.key == SCHEDULING_KEY)
        ).first()
        if row is None:
            return self.configured_policy
        try:
            return SchedulingPolicy.from_json(json.loads(row.document), base=self.configured_policy)
        except (ValueError, LedgerError) as err:
            self._unreadable_policy.report(row.document, err)
            return self.configured_policy

    def _schedule(self, tx: Transaction, cache: LedgerCache) -> dict[int, tuple[Grant, float]]:
        """Grant and preempt what the policy says now, in memory, and write what was decided
        (the grants by request, and when). Runs inside the caller's write transaction."""
        sched = cache.sched
        if not sched.demands and not sched.parking.resuming:
            return {}
        conn = tx.conn
        cache.changed()
        if cache.check_all:
            # GPUs were lost (or the state was loaded with such a request): one that can never
            # be granted would block its node for ever
            cache.check_all = False
            for demand in list(sched.demands.values()):
                why = sched.check(demand)
                if why is not None:
                    self._end(
                        tx, cache, self._one(conn, demand.id), f"cannot be granted any more: {why}"
                    )
        now = self.clock.now()
        out = sched.schedule(now)
        if out.resumed:
            self._returned(tx, cache, out.resumed, now)
        # what the pass decided, in one statement per table (executemany)
        rows: list[dict[str, Any]] = []
        for grant in out.grants:
            rows.extend({"gpu_uuid": u, "allocation_id": grant.request_id} for u in grant.gpus)
        if rows:
            sql.INSERT_HOLDINGS.run_many(conn, rows)
            sql.INSERT_ALLOCATION_GPUS.run_many(conn, rows)
        told: list[dict[str, Any]] = []
        if out.grants:
            sql.GRANT.run_many(
                conn,
                [{"p_id": g.request_id, "p_at": now, "p_borrowed": g.borrowed} for g in out.grants],
            )
            cache.forget_rows(g.request_id for g in out.grants)
            loans = [g.request_id for g in out.grants if g.on_loan]
            if loans:
                tx.conn.execute(
                    update(allocations).where(allocations.c.id.in_(loans)).values(on_loan=True)
                )
        placed_on: list[tuple[int, str, str]] = []  # request, its kernel, the node granted
        for grant in out.grants:
            asked = cache.waiting.pop(grant.request_id, None)
            detail: dict[str, Any] = {"gpus": list(grant.gpus)}
            if asked is not None:
                detail["waited_s"] = now - asked.created_at
                if grant.request_id in cache.asked_now:
                    detail["at_once"] = True  # granted in the transaction that asked for it
                node = sched.node_of(grant.gpus)
                if asked.anywhere and node is not None:
                    detail["node"] = node
                    placed_on.append((grant.request_id, asked.kernel_id, node))
            if grant.borrowed:
                detail["borrowed"] = True
            if grant.on_loan:
                detail["on_loan"] = True
            told.append(
                event_row(
                    "granted",
                    at=now,
                    allocation_id=grant.request_id,
                    kernel_id=cache.kernel_of.get(grant.request_id),
                    detail=detail,
                )
            )
        if placed_on:
            sql.PLACE_ON_NODE.run_many(conn, [{"p_id": a, "p_node": n} for a, _, n in placed_on])
            sql.PLACE_KERNEL.run_many(conn, [{"p_kernel": k, "p_node": n} for _, k, n in placed_on])
        if out.preemptions:
            cache.forget_rows(p.holding_id for p in out.preemptions)
            sql.MARK_PREEMPTED.run_many(
                conn,
                [
                    {"p_id": p.holding_id, "p_for": p.request_id, "p_why": p.message}
                    for p in out.preemptions
                ],
            )
        for pre in out.preemptions:
            victim = sched.holdings[pre.holding_id]
            told.append(
                event_row(
                    "preempted",
                    at=now,
                    allocation_id=victim.id,
                    kernel_id=cache.kernel_of.get(victim.id),
                    detail={"for": pre.request_id, "reason": pre.message, "user": victim.user},
                )
            )
        write_events(tx, told)
        return {g.request_id: (g, now) for g in out.grants}

    def _returned(self, tx: Transaction, cache: LedgerCache, ids: list[int], now: float) -> None:
        """The pass gave these parked grants their GPUs back (their loans ended): they hold
        them again, and their processes are to be restored (see books/parking.py)."""
        held = cache.sched.holdings
        sql.INSERT_HOLDINGS.run_many(
            tx.conn, [{"gpu_uuid": u, "allocation_id": a} for a in ids for u in held[a].gpus]
        )
        tx.conn.execute(
            update(allocations).where(allocations.c.id.in_(ids)).values(park_state="restoring")
        )
        cache.forget_rows(ids)
        write_events(
            tx,
            [
                event_row(
                    "park_returned",
                    at=now,
                    allocation_id=a,
                    kernel_id=cache.kernel_of.get(a),
                    detail={"gpus": list(held[a].gpus)},
                )
                for a in ids
            ],
        )

    def _record_usage(
        self,
        conn: Connection,
        cache: LedgerCache,
        user: str,
        count: int,
        granted_at: float,
    ) -> None:
        """Add a finished grant's GPU-seconds, decayed as fair share counts them.

        Bookkeeping: it must never keep a release from happening (GPUs held for ever are worse
        than a user's usage a little off). Figures are kept finite, and any failure is logged
        and undone, leaving the rest of the release's transaction whole: on PostgreSQL, where a
        failed statement spoils its transaction, to a savepoint; SQLite undoes the statement
        alone, so it needs none (two statements fewer per release).
        """
        try:
            if self.store.is_sqlite:
                self._add_usage(conn, cache, user, count, granted_at)
            else:
                with conn.begin_nested():
                    self._add_usage(conn, cache, user, count, granted_at)
        except Exception:
            raw = conn.connection.dbapi_connection
            if self.store.is_sqlite and not getattr(raw, "in_transaction", False):
                # SQLite rolled the whole transaction back (a full disk, an I/O error): what
                # follows would be written outside it, so the release fails as a whole
                raise
            _log.exception(
                "the fair-share usage of %s's %d GPU(s) could not be recorded; the GPUs were "
                "released all the same",
                user,
                count,
            )

    def _add_usage(
        self, conn: Connection, cache: LedgerCache, user: str, count: int, granted_at: float
    ) -> None:
        now = self.clock.now()
        half_life = cache.policy.half_life
        used = running_usage(count, granted_at, now, cache.policy)
        # the stored row as this state knows it (loaded with it, kept with each write)
        row = cache.recorded.get(user)
        total = used if row is None else decayed(row[0], now - row[1], half_life) + used
        bounded = bounded_usage(total)
        if bounded != total:  # NaN, infinite, negative or beyond any real use
            _log.warning(
                "the fair-share usage of %s came to %r GPU-seconds (half_life %r s); %r is "
                "recorded instead",
                user,
                total,
                half_life,
                bounded,
            )
        if row is None:
            sql.INSERT_FAIRSHARE.run(conn, {"user": user, "gpu_seconds": bounded, "at": now})
        else:
            sql.UPDATE_FAIRSHARE.run(conn, {"p_user": user, "p_seconds": bounded, "p_at": now})
        cache.recorded[user] = (bounded, now)

    def _kernel(self, conn: Connection, kernel_id: str) -> KernelRecord:
        row = conn.execute(sql.KERNEL, {"p_kernel": kernel_id}).first()
        if row is None:
            raise NotFound(f"no kernel {kernel_id} is known to the GPU ledger", reason="no_kernel")
        return _kernel(row)

    def _one(self, conn: Connection, allocation_id: int) -> Allocation:
        found = self._with_gpus(conn, conn.execute(sql.ALLOCATION, {"p_id": allocation_id}).all())
        if not found:
            raise NotFound(f"no allocation {allocation_id}", reason="no_allocation")
        return found[0]

    def _load(self, conn: Connection, cond: Any) -> list[Allocation]:
        rows = conn.execute(select(allocations).where(cond).order_by(allocations.c.id)).all()
        return self._with_gpus(conn, rows)

    def _with_gpus(self, conn: Connection, rows: Sequence[Row[Any]]) -> list[Allocation]:
        """Allocation rows with their GPUs (one more statement, for those granted whose GPUs
        were not read before)."""
        ids: list[int] = []
        kept = self._granted_gpus
        owned: dict[int, list[str]] = {}
        if rows:
            id_, granted = rows[0]._fields.index("id"), rows[0]._fields.index("granted_at")
            for r in rows:
                if r[granted] is None:
                    continue
                known = kept.get(r[id_])
                if known is None:
                    ids.append(r[id_])
                else:
                    owned[r[id_]] = known
        found: Iterable[Any] = ()
        if len(ids) == 1:
            found = conn.execute(sql.GPUS_OF_ALLOCATION, {"p_id": ids[0]})
        elif ids:
            found = conn.execute(sql.GPUS_OF_ALLOCATIONS, {"p_ids": ids})
        read: dict[int, list[str]] = defaultdict(list)
        for aid, uuid in found:
            read[aid].append(uuid)
        if read:
            if len(kept) + len(read) > _GRANTED_GPUS_KEPT:
                kept.clear()
            # a grant writes its GPUs with granted_at, in one transaction: a row read as
            # granted has all of them
            kept.update(read)
            owned.update(read)
        return _allocation_rows(rows, owned)

    def _waited(
        self, alloc: Allocation, cache: LedgerCache, now: float | None = None
    ) -> Allocation:
        """``alloc`` with its place, reason and estimated start when it waits (as of ``now``,
        else the clock's)."""
        if alloc.state is not AllocationState.QUEUED:
            return alloc
        info = cache.wait_info(alloc.id, self.clock.now() if now is None else now)
        if info is None:
            return alloc
        kept = cache.waited.get(alloc.id)
        if kept is not None and kept[0] is alloc and (kept[1] is info or kept[1] == info):
            # the same row with the same explanation (one worked out again after a change that
            # did not move it, too): the same answer, which views may keep
            return kept[2]
        # dataclasses.replace validates and calls __init__ with every field: a sidebar's
        # page waits for dozens of these
        waited = object.__new__(Allocation)
        waited.__dict__.update(alloc.__dict__)
        for name, value in (
            ("position", info.position),
            ("waiting_reason", info.reason),
            ("waiting_code", info.code),
            ("estimated_start", info.estimated_start),
            ("estimate_basis", info.estimate_basis),
        ):
            object.__setattr__(waited, name, value)
        cache.waited[alloc.id] = (alloc, info, waited)
        return waited


#: allocations whose granted GPUs are kept in memory at most (a few MB)
_GRANTED_GPUS_KEPT = 100_000

#: the LIMIT of a page with no limit
_NO_LIMIT = 2**62

#: values one IN list carries at most (a database bounds the parameters of one statement)
_IN_SLICE = 500


def _rows_with(
    conn: Connection, column: Any, values: Collection[str] | Collection[int]
) -> list[Row[Any]]:
    """The rows of ``column``'s table whose ``column`` is one of ``values``, read in slices."""
    wanted: list[Any] = sorted(set(values))  # type: ignore[type-var]
    found: list[Row[Any]] = []
    for start in range(0, len(wanted), _IN_SLICE):
        part = wanted[start : start + _IN_SLICE]
        found += conn.execute(select(column.table).where(column.in_(part))).all()
    return found


def _queue_ids(
    cache: LedgerCache, node: str | None, limit: int | None, offset: int, now: float
) -> tuple[list[int], int]:
    """Ids of a page of the queue (of ``node``, or of every node) and how many wait in it."""
    total = cache.length(node)
    if node is None:
        return cache.page(offset, limit, now), total
    ids = cache.node_order(node, now)
    return (ids[offset:] if limit is None else ids[offset : offset + limit]), total


def _check_page(limit: int | None, offset: int) -> None:
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 0):
        raise InvalidRequest(f"limit must be a whole number of 0 or more, not {limit!r}")
    if isinstance(offset, bool) or not isinstance(offset, int) or offset < 0:
        raise InvalidRequest(f"offset must be a whole number of 0 or more, not {offset!r}")


@dataclass(frozen=True)
class _Filtered:
    """The statements of one shape of allocation filter (which of its conditions are set),
    with the values bound at execution: built once per shape, as the hot paths' are."""

    count: Any
    page: Any


#: filter shape -> its statements; at most 2**6 shapes
_FILTERED: dict[tuple[bool, ...], _Filtered] = {}


def _filtered(shape: tuple[bool, ...]) -> _Filtered:
    found = _FILTERED.get(shape)
    if found is not None:
        return found
    has_kernel, has_user, has_node, active, has_state, has_server = shape
    cond: Any = allocations.c.id.is_not(None)
    if has_kernel:
        cond = cond & (allocations.c.kernel_id == bindparam("p_kernel"))
    if has_user:
        cond = cond & (allocations.c.user == bindparam("p_user"))
    if has_node:
        cond = cond & (allocations.c.node == bindparam("p_node"))
    if active:
        cond = cond & allocations.c.state.in_(sql.ACTIVE)
    if has_state:
        cond = cond & (allocations.c.state == bindparam("p_state"))
    if has_server:
        mine = select(kernels.c.kernel_id).where(kernels.c.server_id == bindparam("p_server"))
        cond = cond & allocations.c.kernel_id.in_(mine)
    found = _FILTERED[shape] = _Filtered(
        count=select(func.count()).select_from(allocations).where(cond),
        page=select(allocations)
        .where(cond)
        .order_by(allocations.c.id)
        .limit(bindparam("p_limit"))
        .offset(bindparam("p_offset")),
    )
    return found


def _allocation_filter(
    kernel_id: str | None,
    user: str | None,
    node: str | None,
    active: bool,
    state: AllocationState | None,
    server_id: str | None,
) -> tuple[_Filtered, dict[str, Any]]:
    shape = (
        kernel_id is not None,
        user is not None,
        node is not None,
        active,
        state is not None,
        server_id is not None,
    )
    values = {
        "p_kernel": kernel_id,
        "p_user": user,
        "p_node": node,
        "p_state": None if state is None else state.value,
        "p_server": server_id,
    }
    return _filtered(shape), {k: v for k, v in values.items() if v is not None}


def _gpu(r: Row[Any]) -> Gpu:
    return Gpu(
        uuid=r.uuid,
        node=r.node,
        index=r.idx,
        model=r.model,
        memory_bytes=r.memory_bytes,
        simulated=bool(r.simulated),
        present=bool(r.present),
    )


def _kernel(r: Row[Any]) -> KernelRecord:
    return KernelRecord(
        kernel_id=r.kernel_id,
        user=r.user,
        node=r.node,
        server_id=r.server_id,
        kernel_name=r.kernel_name,
        path=r.path,
        pid=r.pid,
        pid_started_at=r.pid_started_at,
        keep_on_restart=bool(r.keep_on_restart),
        created_at=r.created_at,
        launched_at=r.launched_at,
    )


def _allocation_rows(rows: Sequence[Row[Any]], owned: dict[int, list[str]]) -> list[Allocation]:
    """Allocations of rows of the allocations table, with their GPUs (``owned``)."""
    if not rows:
        return []
    # by position: a Row's attribute lookup by name costs ten times its index, and a page of
    # a sidebar's allocations reads twenty columns of each row
    at = {name: i for i, name in enumerate(rows[0]._fields)}
    (id_, kernel, user, node, count, model, state, created, granted, ended, reason) = (
        at[name]
        for name in (
            "id",
            "kernel_id",
            "user",
            "node",
            "count",
            "model",
            "state",
            "created_at",
            "granted_at",
            "ended_at",
            "end_reason",
        )
    )
    klass, kind, borrowed, preempted_for, preempt_reason, placement = (
        at[name]
        for name in (
            "priority_class",
            "kind",
            "borrowed",
            "preempted_for",
            "preempt_reason",
            "placement",
        )
    )
    avoid = at.get("avoid_nodes")
    per_node = at.get("per_node")
    park = [at.get(n) for n in ("park_state", "parked_at", "park_reason", "park_bytes", "on_loan")]
    found = []
    for r in rows:
        found.append(
            Allocation(
                id=r[id_],
                kernel_id=r[kernel],
                user=r[user],
                node=r[node],
                count=r[count],
                model=r[model],
                state=AllocationState(r[state]),
                gpus=tuple(owned.get(r[id_], ())),
                created_at=r[created],
                granted_at=r[granted],
                ended_at=r[ended],
                end_reason=r[reason],
                priority_class=r[klass],
                kind=r[kind] or "kernel",
                borrowed=bool(r[borrowed]),
                preempted_for=r[preempted_for],
                preempt_reason=r[preempt_reason],
                placement=r[placement] or "ledger",
                avoid=() if avoid is None else names_of_row(r[avoid]),
                per_node=None if per_node is None else r[per_node],
                **({} if park[0] is None else _park_fields(r, park)),
            )
        )
    return found


def _park_fields(r: Row[Any], at: list[int | None]) -> dict[str, Any]:
    state, parked_at, reason, size, on_loan = (None if i is None else r[i] for i in at)
    return {
        "park_state": state,
        "parked_at": parked_at,
        "park_reason": reason,
        "park_bytes": size,
        "on_loan": bool(on_loan),
    }
