"""Usage reports: who held how many GPU-hours over a period, how much of it was used, what
waited how long and how jobs ended, by user, group, class, model or node, step by step.

Every figure comes from what the ledger recorded (docs/reports.md says what counts):

- GPU-hours held, observed, busy and idle come from the hour rows (``usage_hours.py``): the rows
  rolled up, and the hours since worked out from the raw records, so a report is exact at any
  time. A period's edges cut hours: only whole hours count (``since`` is rounded down and
  ``until`` up to the hour).
- reclaimed GPU-hours: the idle GPU-hours of the allocations the idle reclaim ended;
- waits: from request to grant, of the requests granted in the period;
- jobs: those that ended in the period, by how.

The work is a few grouped reads whatever the number of rows: the hour rows are summed by the
database, grouped by the key and the step.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection, func, select

from jupyter_dlinfra.core.books.usage_hours import (
    HOUR_S,
    WATERMARK,
    HourRow,
    class_key,
    granted_models,
    hour_rows,
    model_key,
)
from jupyter_dlinfra.core.errors import InvalidRequest
from jupyter_dlinfra.core.store import Store, allocations, jobs, read_counter, usage_hours

__all__ = ["BY", "STEPS", "ReportRow", "ReportStep", "UsageReport", "usage_report"]

#: what a report's rows may be keyed by
BY = ("user", "group", "class", "model", "node")
#: a step's length in hours
STEPS = {"hour": 1, "day": 24}
#: the key of allocations and jobs in no group
NO_GROUP = "(none)"
#: the end reasons the idle reclaim writes
RECLAIMED = "reclaimed:%"
#: the longest period a report covers (days)
MAX_DAYS = 400
#: the most steps of a report's series (each row carries one entry per step)
MAX_STEPS = 2000

_COLUMNS = {
    "user": usage_hours.c.user,
    "group": usage_hours.c.groups,
    "class": usage_hours.c.priority_class,
    "model": usage_hours.c.model,
    "node": usage_hours.c.node,
}


@dataclass
class ReportStep:
    start: float
    held_s: float = 0.0
    busy_s: float = 0.0
    idle_s: float = 0.0


@dataclass
class ReportRow:
    key: str
    held_s: float = 0.0
    observed_s: float = 0.0
    busy_s: float = 0.0
    idle_s: float = 0.0
    reclaimed_s: float = 0.0
    waits: list[float] = field(default_factory=list)
    jobs: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    steps: dict[int, ReportStep] = field(default_factory=dict)

    def add(
        self, step: int, start: float, held: float, observed: float, busy: float, idle: float
    ) -> None:
        self.held_s += held
        self.observed_s += observed
        self.busy_s += busy
        self.idle_s += idle
        at = self.steps.get(step)
        if at is None:
            at = self.steps[step] = ReportStep(start=start)
        at.held_s += held
        at.busy_s += busy
        at.idle_s += idle


@dataclass
class UsageReport:
    since: float
    until: float
    by: str
    step: str
    #: the step starts, in order (each step's figures are listed in this order)
    starts: list[float]
    rows: list[ReportRow]
    total: ReportRow


def _keys(by: str, value: Any) -> Iterable[str]:
    if by != "group":
        return (str(value),)
    try:
        groups = json.loads(value or "[]")
    except ValueError:
        groups = []
    return [str(g) for g in groups] if isinstance(groups, list) and groups else [NO_GROUP]


def usage_report(
    store: Store,
    *,
    since: float,
    until: float,
    now: float,
    by: str = "user",
    step: str = "day",
    user: str | None = None,
    bucket_s: float = 60.0,
    idle_percent: float = 5.0,
) -> UsageReport:
    """The report of [since, until) (whole hours; ``until`` at most ``now``, rounded up), of
    ``user``'s allocations and jobs only when given."""
    if by not in BY:
        raise InvalidRequest(f"by must be one of {', '.join(BY)}, not {by!r}")
    if step not in STEPS:
        raise InvalidRequest(f"step must be one of {', '.join(STEPS)}, not {step!r}")
    if not (math.isfinite(since) and math.isfinite(until)) or until <= since:
        raise InvalidRequest("the period is empty: since must come before until")
    if until - since > MAX_DAYS * 86400:
        raise InvalidRequest(f"a report covers {MAX_DAYS} days at most")
    first = int(since // HOUR_S)
    end = math.ceil(min(until, now) / HOUR_S)
    end = max(end, first)
    per = STEPS[step]
    if (until - since) / (per * HOUR_S) > MAX_STEPS:
        raise InvalidRequest(
            f"a report's series has {MAX_STEPS} steps at most: ask for step=day, or a period "
            f"of at most {MAX_STEPS * per // 24} days"
        )
    base = first - first % per if per > 1 else first
    rows: dict[str, ReportRow] = {}
    total = ReportRow(key="(total)")

    def row(key: str) -> ReportRow:
        found = rows.get(key)
        if found is None:
            found = rows[key] = ReportRow(key=key)
        return found

    def add(
        value: Any, hour_index: int, held: float, observed: float, busy: float, idle: float
    ) -> None:
        step_index = (hour_index - base) // per
        start = float((base + step_index * per) * HOUR_S)
        for key in _keys(by, value):
            row(key).add(step_index, start, held, observed, busy, idle)
        total.add(step_index, start, held, observed, busy, idle)

    with store.read() as conn:
        rolled = min(read_counter(conn, WATERMARK), end)
        if rolled > first:
            _rolled_rows(conn, by, per, base, first, rolled, user, add)
        # the hours not rolled up yet, worked out once for the figures and the reclaims
        live = list(
            hour_rows(
                conn,
                max(first, rolled),
                end,
                bucket_s=bucket_s,
                idle_percent=idle_percent,
                now=now,
                user=user,
            )
        )
        for r in live:
            add(_key_of_hour(by, r), r.hour, r.held_s, r.observed_s, r.busy_s, r.idle_s)
        _reclaimed(conn, by, first, end, rolled, user, row, total, live)
        _waits(conn, by, first * HOUR_S, end * HOUR_S, user, row, total)
        _jobs(conn, by, first * HOUR_S, end * HOUR_S, user, row, total)
    starts = [float((base + i * per) * HOUR_S) for i in range(-(-(end - base) // per))]
    ordered = sorted(rows.values(), key=lambda r: (-r.held_s, r.key))
    return UsageReport(
        since=float(first * HOUR_S),
        until=float(end * HOUR_S),
        by=by,
        step=step,
        starts=starts,
        rows=ordered,
        total=total,
    )


def _rolled_rows(
    conn: Connection,
    by: str,
    per: int,
    base: int,
    first: int,
    rolled: int,
    user: str | None,
    add: Any,
) -> None:
    column = _COLUMNS[by]
    # integer division in SQL: hours are integers
    step_of = (usage_hours.c.hour - base) // per if per > 1 else usage_hours.c.hour - base
    cond = (usage_hours.c.hour >= first) & (usage_hours.c.hour < rolled)
    if user is not None:
        cond = cond & (usage_hours.c.user == user)
    found = conn.execute(
        select(
            column,
            step_of.label("step"),
            func.sum(usage_hours.c.held_s),
            func.sum(usage_hours.c.observed_s),
            func.sum(usage_hours.c.busy_s),
            func.sum(usage_hours.c.idle_s),
        )
        .where(cond)
        .group_by(column, step_of)
    )
    for value, step_index, held, observed, busy, idle in found:
        add(value, base + int(step_index) * per, held, observed, busy, idle)


def _key_of_hour(by: str, r: HourRow) -> str:
    """An hour row's key by ``by``, as the rolled-up rows hold it (groups as their JSON)."""
    if by == "group":
        return json.dumps(list(r.groups))
    return {"user": r.user, "class": r.priority_class, "model": r.model, "node": r.node}[by]


def _key_of_allocation(by: str, r: Any, model: str | None = None) -> Any:
    if by == "user":
        return r.user
    if by == "group":
        return r.groups
    if by == "class":
        return class_key(r.priority_class, r.kind)
    if by == "model":
        return model_key(model, r.model)
    return r.node


def _reclaimed(
    conn: Connection,
    by: str,
    first: int,
    end: int,
    rolled: int,
    user: str | None,
    row: Any,
    total: ReportRow,
    live: list[HourRow],
) -> None:
    """The idle GPU-seconds, within the period, of the allocations the idle reclaim ended
    (``live``: the rows of the hours not rolled up)."""
    cond = allocations.c.end_reason.like(RECLAIMED) & (allocations.c.ended_at > first * HOUR_S)
    cond = cond & (allocations.c.granted_at < end * HOUR_S)
    if user is not None:
        cond = cond & (allocations.c.user == user)
    ids = list(conn.execute(select(allocations.c.id).where(cond)).scalars())
    if not ids:
        return
    idle: dict[int, tuple[Any, float]] = {}
    for i in range(0, len(ids), 500):
        chunk = ids[i : i + 500]
        found = conn.execute(
            select(usage_hours.c.allocation_id, _COLUMNS[by], func.sum(usage_hours.c.idle_s))
            .where(
                usage_hours.c.allocation_id.in_(chunk)
                & (usage_hours.c.hour >= first)
                & (usage_hours.c.hour < min(rolled, end))
            )
            .group_by(usage_hours.c.allocation_id, _COLUMNS[by])
        )
        for aid, value, seconds in found:
            idle[aid] = (value, float(seconds or 0.0))
    chosen = set(ids)
    for r in live:
        if r.allocation_id in chosen:
            value = _key_of_hour(by, r)
            before = idle.get(r.allocation_id, (value, 0.0))[1]
            idle[r.allocation_id] = (value, before + r.idle_s)
    for value, seconds in idle.values():
        for key in _keys(by, value):
            row(key).reclaimed_s += seconds
        total.reclaimed_s += seconds


def _waits(
    conn: Connection,
    by: str,
    since: float,
    until: float,
    user: str | None,
    row: Any,
    total: ReportRow,
) -> None:
    cond = (allocations.c.granted_at >= since) & (allocations.c.granted_at < until)
    if user is not None:
        cond = cond & (allocations.c.user == user)
    found = conn.execute(
        select(
            allocations.c.id,
            allocations.c.user,
            allocations.c.groups,
            allocations.c.priority_class,
            allocations.c.kind,
            allocations.c.model,
            allocations.c.node,
            allocations.c.created_at,
            allocations.c.granted_at,
        ).where(cond)
    )
    granted = found.all()
    models = granted_models(conn, [r.id for r in granted]) if by == "model" else {}
    for r in granted:
        wait = max(float(r.granted_at) - float(r.created_at), 0.0)
        for key in _keys(by, _key_of_allocation(by, r, models.get(r.id))):
            row(key).waits.append(wait)
        total.waits.append(wait)


def _jobs(
    conn: Connection,
    by: str,
    since: float,
    until: float,
    user: str | None,
    row: Any,
    total: ReportRow,
) -> None:
    cond = (
        jobs.c.ended_at.is_not(None)
        & (jobs.c.ended_at >= since)
        & (jobs.c.ended_at < until)
        & jobs.c.state.in_(("succeeded", "failed", "cancelled"))
    )
    if user is not None:
        cond = cond & (jobs.c.user == user)
    column = {
        "user": jobs.c.user,
        "group": allocations.c.groups,
        "class": jobs.c.priority_class,
        "model": jobs.c.model,
        "node": jobs.c.node,
    }[by]
    found = conn.execute(
        select(column, jobs.c.state, func.count())
        .select_from(jobs.outerjoin(allocations, allocations.c.id == jobs.c.allocation_id))
        .where(cond)
        .group_by(column, jobs.c.state)
    )
    for value, state, count in found:
        if by == "model" and value is None:
            value = "(any)"
        elif by == "class" and value is None:
            value = class_key(None, "job")
        for key in _keys(by, value):
            row(key).jobs[state] += int(count)
        total.jobs[state] += int(count)
