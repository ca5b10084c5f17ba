"""What allocations held and used, hour by hour: the history behind the usage reports.

One row per allocation per clock hour (UTC) in which it held GPUs (``dlinfra_usage_hours``),
with the GPU-seconds it held in that hour and, from the kernels' utilisation samples (the usage
buckets the idle reclaim records, ``dlinfra_usage``), the GPU-seconds that were observed, the
utilisation-weighted ("busy") GPU-seconds and those held under the idle threshold.

Rows are worked out from what the ledger recorded (grants and ends, the buckets) once an hour is
over and its last bucket written (``SETTLE_S`` later), and then kept for ``retention``: the raw
buckets are kept for days, the hours for a year by default. A GPU held by one allocation adds
24 rows a day; each allocation adds at most one more row for the hour it started or ended in
beside another. A report reads the rows of the hours rolled up, and works the hours since out
the same way from the raw records (:func:`hour_rows`), so it is exact whenever it is asked.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, delete, insert, select

from jupyter_dlinfra.core.store import (
    Store,
    allocation_gpus,
    allocations,
    gpus,
    meta,
    read_counter,
    usage,
    usage_hours,
)

__all__ = [
    "HOUR_S",
    "SETTLE_S",
    "WATERMARK",
    "HourRow",
    "UsageHours",
    "class_key",
    "granted_models",
    "hour_rows",
    "model_key",
]

HOUR_S = 3600
#: an hour is rolled up this long after it ends: its last usage bucket is written by then
SETTLE_S = 600.0
#: the meta key of the first hour (since the epoch) not rolled up yet
WATERMARK = "usage_hours"
#: hours rolled up in one transaction at most (a first start on an old ledger catches up in
#: several)
CHUNK_HOURS = 24


@dataclass(frozen=True, kw_only=True)
class HourRow:
    hour: int
    allocation_id: int
    user: str
    groups: tuple[str, ...]
    priority_class: str
    model: str
    node: str
    held_s: float
    observed_s: float
    busy_s: float
    idle_s: float


def class_key(priority_class: str | None, kind: str | None) -> str:
    """The class an allocation (or job) is reported under: its own, else which default."""
    return priority_class or ("(job default)" if kind == "job" else "(kernel default)")


def model_key(granted: str | None, asked: str | None) -> str:
    """The model an allocation is reported under: its GPUs', else the one it asked for."""
    return granted or asked or "(unknown)"


def _groups(raw: str | None) -> tuple[str, ...]:
    try:
        found = json.loads(raw or "[]")
    except ValueError:
        return ()
    return tuple(str(g) for g in found) if isinstance(found, list) else ()


def hour_rows(
    conn: Connection,
    first_hour: int,
    end_hour: int,
    *,
    bucket_s: float,
    idle_percent: float,
    now: float,
    user: str | None = None,
) -> Iterator[HourRow]:
    """The rows of hours ``first_hour`` to ``end_hour`` (excluded), from the ledger's records:
    every allocation granted before the end and not ended before the start (``user``'s only,
    when given), split by clock hour, with its kernel's usage buckets of its held time.

    A bucket of ``bucket_s`` seconds counts for the allocation's GPUs over the part of it that
    lies within both the hour and the allocation's grant: observed; busy, weighted by the
    bucket's mean utilisation (of the kernel's busiest GPU, as sampled); idle, when its highest
    sample stays under ``idle_percent``. An allocation still held counts until ``now``."""
    start, end = first_hour * HOUR_S, end_hour * HOUR_S
    cond = (
        allocations.c.granted_at.is_not(None)
        & (allocations.c.granted_at < end)
        & (allocations.c.ended_at.is_(None) | (allocations.c.ended_at > start))
    )
    if user is not None:
        cond = cond & (allocations.c.user == user)
    found = conn.execute(
        select(
            allocations.c.id,
            allocations.c.kernel_id,
            allocations.c.user,
            allocations.c.groups,
            allocations.c.priority_class,
            allocations.c.kind,
            allocations.c.model,
            allocations.c.node,
            allocations.c.count,
            allocations.c.granted_at,
            allocations.c.ended_at,
        ).where(cond)
    ).all()
    if not found:
        return
    models = granted_models(conn, [r.id for r in found])
    buckets = _buckets(conn, {r.kernel_id for r in found}, start - bucket_s, end, user)
    for r in found:
        held_from = max(float(r.granted_at), start)
        held_to = min(float(r.ended_at) if r.ended_at is not None else now, end)
        if held_to <= held_from:
            continue
        model = model_key(models.get(r.id), r.model)
        count = int(r._mapping["count"])  # a Row's own count() hides the column
        klass = class_key(r.priority_class, r.kind)
        groups = _groups(r.groups)
        sampled = buckets.get(r.kernel_id, [])
        for hour in range(int(held_from // HOUR_S), int((held_to - 1e-9) // HOUR_S) + 1):
            h_from = max(held_from, hour * HOUR_S)
            h_to = min(held_to, (hour + 1) * HOUR_S)
            if h_to <= h_from:
                continue
            observed = busy = idle = 0.0
            for b_start, util_mean, util_max in sampled:
                overlap = min(b_start + bucket_s, h_to) - max(b_start, h_from)
                if overlap <= 0:
                    continue
                gpu_s = overlap * count
                observed += gpu_s
                busy += gpu_s * min(max(util_mean, 0.0), 100.0) / 100.0
                if util_max < idle_percent:
                    idle += gpu_s
            yield HourRow(
                hour=hour,
                allocation_id=r.id,
                user=r.user,
                groups=groups,
                priority_class=klass,
                model=model,
                node=r.node,
                held_s=(h_to - h_from) * count,
                observed_s=observed,
                busy_s=busy,
                idle_s=idle,
            )


def granted_models(conn: Connection, ids: list[int]) -> dict[int, str]:
    """The model of each allocation's GPUs (the first one's: a grant is of one model)."""
    models: dict[int, str] = {}
    for i in range(0, len(ids), 500):
        rows = conn.execute(
            select(allocation_gpus.c.allocation_id, gpus.c.model)
            .join(gpus, gpus.c.uuid == allocation_gpus.c.gpu_uuid)
            .where(allocation_gpus.c.allocation_id.in_(ids[i : i + 500]))
        )
        for aid, model in rows:
            models.setdefault(aid, model)
    return models


def _buckets(
    conn: Connection, kernel_ids: set[str], since: float, until: float, user: str | None
) -> dict[str, list[tuple[float, float, float]]]:
    """Each kernel's usage buckets that start in [since, until): (start, mean, max)."""
    cond = (usage.c.bucket >= since) & (usage.c.bucket < until)
    if user is not None:
        cond = cond & (usage.c.user == user)
    found: dict[str, list[tuple[float, float, float]]] = defaultdict(list)
    rows = conn.execute(
        select(usage.c.kernel_id, usage.c.bucket, usage.c.util_mean, usage.c.util_max).where(cond)
    )
    for kernel_id, start, mean, peak in rows:
        if kernel_id in kernel_ids:
            found[kernel_id].append((float(start), float(mean), float(peak)))
    return found


def _row_values(row: HourRow) -> dict[str, Any]:
    return {
        "hour": row.hour,
        "allocation_id": row.allocation_id,
        "user": row.user,
        "groups": json.dumps(list(row.groups)),
        "priority_class": row.priority_class,
        "model": row.model,
        "node": row.node,
        "held_s": row.held_s,
        "observed_s": row.observed_s,
        "busy_s": row.busy_s,
        "idle_s": row.idle_s,
    }


class UsageHours:
    """Rolls the ledger's records up into hour rows, and drops rows past their retention."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def rolled_until(self, conn: Connection) -> int:
        """The first hour not rolled up yet (0: none ever was)."""
        return read_counter(conn, WATERMARK)

    def roll_up(self, now: float, *, bucket_s: float, idle_percent: float, retention: float) -> int:
        """Roll up the hours that ended ``SETTLE_S`` ago or more and are not yet, at most
        CHUNK_HOURS of them (the oldest first; a first roll-up starts at the oldest grant
        within ``retention``); returns the hours rolled up. Several servers on one ledger may
        call it: the watermark is read and moved within one write."""
        last = int((now - SETTLE_S) // HOUR_S)  # the hours before this one are settled
        with self.store.write() as tx:
            conn = tx.conn
            start = self.rolled_until(conn)
            floor = int((now - retention) // HOUR_S)
            if start == 0:
                oldest = conn.execute(
                    select(allocations.c.granted_at)
                    .where(allocations.c.granted_at.is_not(None))
                    .order_by(allocations.c.granted_at)
                    .limit(1)
                ).scalar()
                start = last if oldest is None else int(float(oldest) // HOUR_S)
            start = max(start, floor)
            end = min(last, start + CHUNK_HOURS)
            if end <= start:
                if self.rolled_until(conn) == 0:
                    self._set_watermark(conn, start)
                return 0
            conn.execute(
                delete(usage_hours).where(
                    (usage_hours.c.hour >= start) & (usage_hours.c.hour < end)
                )
            )
            values = [
                _row_values(r)
                for r in hour_rows(
                    conn, start, end, bucket_s=bucket_s, idle_percent=idle_percent, now=now
                )
            ]
            for i in range(0, len(values), 1000):
                conn.execute(insert(usage_hours), values[i : i + 1000])
            self._set_watermark(conn, end)
            return end - start

    @staticmethod
    def _set_watermark(conn: Connection, hour: int) -> None:
        if conn.execute(select(meta.c.key).where(meta.c.key == WATERMARK)).first() is None:
            conn.execute(insert(meta).values(key=WATERMARK, value=hour))
        else:
            conn.execute(meta.update().where(meta.c.key == WATERMARK).values(value=hour))

    def prune(self, before: float) -> int:
        """Drop the rows of hours that ended before ``before``."""
        with self.store.write() as tx:
            result = tx.conn.execute(
                delete(usage_hours).where(usage_hours.c.hour < int(before // HOUR_S))
            )
            return int(result.rowcount or 0)
