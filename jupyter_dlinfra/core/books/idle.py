"""The stored side of idle reclaim: kernels' idle states, the policy and its audit, usage history.

Each state change is written, with a ledger event, in one transaction before any effect (a
notice, a restart) follows, like every other change of the ledger.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from sqlalchemy import Connection, Row, delete, insert, select

from jupyter_dlinfra.core.books.events import write_event
from jupyter_dlinfra.core.books.policies import (
    SCHEDULING_PREFIX,
    PolicyChange,
    UnreadablePolicy,
    load_document,
    policy_changes_of,
    save_document,
)
from jupyter_dlinfra.core.clock import Clock
from jupyter_dlinfra.core.errors import NotFound
from jupyter_dlinfra.core.idle import (
    IdlePolicy,
    IdleState,
    Phase,
    PolicyError,
    ReclaimPolicy,
    Transition,
    keep,
    observe,
)
from jupyter_dlinfra.core.replay import UsageSeries
from jupyter_dlinfra.core.store import Store, Transaction, idle_states, usage

__all__ = [
    "EVENT_KINDS",
    "IdleBook",
    "PolicyChange",
    "Reading",
    "StoredPolicy",
    "UsageBucket",
]

#: ledger event kind written for each transition of the state machine
EVENT_KINDS = {
    Phase.IDLE.value: "gpu_idle",
    Phase.ACTIVE.value: "gpu_active",
    Phase.WARNED.value: "idle_warning",
    "kept": "idle_kept",
    Phase.RECLAIMED.value: "idle_reclaimed",
}
_POLICY_KEY = "reclaim"


@dataclass(frozen=True, kw_only=True)
class Reading:
    """The highest utilisation among one kernel's GPUs at one sample."""

    kernel_id: str
    utilization: float
    at: float
    allocation_id: int | None = None


@dataclass(frozen=True, kw_only=True)
class StoredPolicy:
    policy: ReclaimPolicy
    updated_at: float
    updated_by: str


@dataclass(kw_only=True)
class UsageBucket:
    """One kernel's samples within one bucket of time, being summed up."""

    kernel_id: str
    bucket: float
    user: str
    path: str | None
    gpus: int
    util_sum: float = 0.0
    util_max: float = 0.0
    memory_bytes: int = 0
    samples: int = 0

    def add(self, utilization: float, memory_bytes: int) -> None:
        self.util_sum += utilization
        self.util_max = max(self.util_max, utilization)
        self.memory_bytes = max(self.memory_bytes, memory_bytes)
        self.samples += 1


def _meaningful(state: IdleState) -> IdleState:
    return replace(state, last_util=None, updated_at=0.0)


class IdleBook:
    def __init__(self, store: Store, clock: Clock) -> None:
        self.store = store
        self.clock = clock
        self._unreadable_policy = UnreadablePolicy(
            "reclaim", endpoint="/dlinfra/api/policy", log=logging.getLogger(__name__)
        )

    # -- the policy ------------------------------------------------------------------------------

    def stored_policy(self) -> StoredPolicy | None:
        stored = load_document(self.store, _POLICY_KEY)
        if stored is None:
            return None
        try:
            policy = ReclaimPolicy.from_json(stored.document)
        except PolicyError as err:
            self._unreadable_policy.report(stored.document, err)
            return None
        return StoredPolicy(
            policy=policy,
            updated_at=stored.updated_at,
            updated_by=stored.updated_by,
        )

    def set_policy(
        self, policy: ReclaimPolicy, *, who: str, previous: ReclaimPolicy
    ) -> list[PolicyChange]:
        """Store ``policy``; one audit row per value that differs from ``previous``."""
        changed = save_document(
            self.store,
            self.clock,
            _POLICY_KEY,
            policy.to_json(),
            previous=previous.to_json(),
            who=who,
        )
        return self.policy_changes(limit=len(changed)) if changed else []

    def policy_changes(self, limit: int = 100) -> list[PolicyChange]:
        """The latest changes first (the scheduling policy's are its own)."""
        return policy_changes_of(self.store, exclude=SCHEDULING_PREFIX, limit=limit)

    # -- idle states -----------------------------------------------------------------------------

    def states(self, kernel_ids: Iterable[str] | None = None) -> dict[str, IdleState]:
        with self.store.read() as conn:
            return self._states(conn, kernel_ids)

    def state(self, kernel_id: str) -> IdleState:
        return self.states([kernel_id]).get(kernel_id) or IdleState(kernel_id=kernel_id)

    def observe(
        self,
        readings: Sequence[Reading],
        policy_for: Callable[[str], IdlePolicy | None],
        *,
        scope: Collection[str] | None = None,
    ) -> list[Transition]:
        """Advance the kernels read in this sample; forget the state of kernels not read.

        ``policy_for(kernel_id)`` gives the policy of the kernel's owner (None: exempt).
        ``scope``: the kernels this caller watches (those of one server); states of kernels
        outside it are left alone. None: every kernel.
        """
        found: list[Transition] = []
        with self.store.write() as tx:
            conn = tx.conn
            current = self._states(conn, None)
            seen = {r.kernel_id for r in readings}
            gone = [k for k in current if k not in seen and (scope is None or k in scope)]
            if gone:
                # a row with a message waits for its kernel's relaunch: it is not forgotten
                conn.execute(
                    delete(idle_states).where(
                        idle_states.c.kernel_id.in_(gone), idle_states.c.message.is_(None)
                    )
                )
            for reading in readings:
                stored = current.get(reading.kernel_id)
                before = stored or IdleState(kernel_id=reading.kernel_id)
                after, transitions = observe(
                    before, reading.utilization, reading.at, policy_for(reading.kernel_id)
                )
                # the latest reading alone is not worth a write per kernel per sample
                if stored is None or _meaningful(after) != _meaningful(before):
                    self._put(conn, after)
                for t in transitions:
                    self._record(tx, t, reading.allocation_id)
                found.extend(transitions)
        return found

    def keep(self, kernel_id: str, policy: IdlePolicy | None, *, who: str) -> IdleState:
        with self.store.write() as tx:
            current = self._states(tx.conn, [kernel_id]).get(kernel_id)
            if current is None:
                raise NotFound(
                    f"kernel {kernel_id} holds no GPUs that are watched for idleness",
                    reason="no_idle_state",
                )
            kept, transition = keep(current, self.clock.now(), policy)
            self._put(tx.conn, kept)
            self._record(tx, transition, None, who=who)
        return kept

    def set_message(self, kernel_id: str, message: str) -> None:
        """Keep a sentence for the kernel's next launch (it is restarted without GPUs)."""
        now = self.clock.now()
        with self.store.write() as tx:
            current = self._states(tx.conn, [kernel_id]).get(kernel_id)
            state = current or IdleState(kernel_id=kernel_id, updated_at=now)
            self._put(tx.conn, state, message=message)

    def take_message(self, kernel_id: str) -> str | None:
        """The sentence kept for this kernel, once; its idle state goes with it."""
        with self.store.write() as tx:
            row = tx.conn.execute(
                select(idle_states.c.message).where(idle_states.c.kernel_id == kernel_id)
            ).first()
            if row is None:
                return None
            tx.conn.execute(delete(idle_states).where(idle_states.c.kernel_id == kernel_id))
            return str(row.message) if row.message is not None else None

    def clear(self, kernel_id: str) -> None:
        with self.store.write() as tx:
            tx.conn.execute(delete(idle_states).where(idle_states.c.kernel_id == kernel_id))

    # -- usage history ---------------------------------------------------------------------------

    def record_usage(self, buckets: Sequence[UsageBucket]) -> None:
        """Add finished buckets; a bucket written before (by a restarted server) is merged."""
        if not buckets:
            return
        with self.store.write() as tx:
            conn = tx.conn
            for b in buckets:
                key = (usage.c.kernel_id == b.kernel_id) & (usage.c.bucket == b.bucket)
                old = conn.execute(select(usage).where(key)).first()
                samples, util_sum = b.samples, b.util_sum
                util_max, memory = b.util_max, b.memory_bytes
                if old is not None:
                    util_sum += old.util_mean * old.samples
                    samples += old.samples
                    util_max = max(util_max, old.util_max)
                    memory = max(memory, old.memory_bytes)
                    conn.execute(delete(usage).where(key))
                conn.execute(
                    insert(usage).values(
                        kernel_id=b.kernel_id,
                        bucket=b.bucket,
                        user=b.user,
                        path=b.path,
                        gpus=b.gpus,
                        util_mean=util_sum / samples if samples else 0.0,
                        util_max=util_max,
                        memory_bytes=memory,
                        samples=samples,
                    )
                )

    def usage_series(self, since: float, until: float | None = None) -> list[UsageSeries]:
        """Per kernel, the highest utilisation of each bucket since ``since``, in time order."""
        cond = usage.c.bucket >= since
        if until is not None:
            cond = cond & (usage.c.bucket < until)
        with self.store.read() as conn:
            rows = conn.execute(
                select(usage).where(cond).order_by(usage.c.kernel_id, usage.c.bucket)
            ).all()
        points: dict[str, list[tuple[float, float]]] = defaultdict(list)
        first: dict[str, Row[Any]] = {}
        for r in rows:
            points[r.kernel_id].append((r.bucket, r.util_max))
            first.setdefault(r.kernel_id, r)
        return [
            UsageSeries(
                kernel_id=k,
                user=first[k].user,
                path=first[k].path,
                gpus=max(1, first[k].gpus),
                points=tuple(p),
            )
            for k, p in points.items()
        ]

    def prune_usage(self, before: float) -> int:
        with self.store.write() as tx:
            result = tx.conn.execute(delete(usage).where(usage.c.bucket < before))
            return int(result.rowcount or 0)

    # -- internals -------------------------------------------------------------------------------

    @staticmethod
    def _states(conn: Connection, kernel_ids: Iterable[str] | None) -> dict[str, IdleState]:
        query = select(idle_states)
        if kernel_ids is not None:
            query = query.where(idle_states.c.kernel_id.in_(list(kernel_ids)))
        return {
            r.kernel_id: IdleState(
                kernel_id=r.kernel_id,
                phase=Phase(r.phase),
                idle_since=r.idle_since,
                warned_at=r.warned_at,
                keeps=r.keeps,
                hold_until=r.hold_until,
                reclaimed_at=r.reclaimed_at,
                last_util=r.last_util,
                updated_at=r.updated_at,
            )
            for r in conn.execute(query)
        }

    @staticmethod
    def _put(conn: Connection, state: IdleState, *, message: str | None = None) -> None:
        old = conn.execute(
            select(idle_states.c.message).where(idle_states.c.kernel_id == state.kernel_id)
        ).first()
        conn.execute(delete(idle_states).where(idle_states.c.kernel_id == state.kernel_id))
        conn.execute(
            insert(idle_states).values(
                kernel_id=state.kernel_id,
                phase=state.phase.value,
                idle_since=state.idle_since,
                warned_at=state.warned_at,
                keeps=state.keeps,
                hold_until=state.hold_until,
                reclaimed_at=state.reclaimed_at,
                last_util=state.last_util,
                updated_at=state.updated_at,
                message=message if message is not None else (old.message if old else None),
            )
        )

    def _record(
        self, tx: Transaction, t: Transition, allocation_id: int | None, *, who: str | None = None
    ) -> None:
        detail = dict(t.detail)
        if who is not None:
            detail["who"] = who
        write_event(
            tx,
            EVENT_KINDS[t.kind],
            kernel_id=t.kernel_id,
            allocation_id=allocation_id,
            detail=detail,
            at=t.at,
        )
