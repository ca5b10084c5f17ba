"""Does a 30-day usage report over 1,024 GPUs answer in under a second?

A ledger (SQLite by default, ``--db-url`` for another) holds ``--days`` (30) of history of
``--gpus`` (1,024) GPUs on nodes of 8, used by ``--users`` (200) people in 20 groups. Each node's
GPUs are split into slots of 1, 2, 4 or 8 GPUs; each slot is held by one allocation after
another (a notebook's or a job's, half each; 15 min to 24 h, with gaps of up to 2 h between
them), each asked for some minutes before its grant; jobs end succeeded (90 %), failed or
cancelled. How busy a held GPU is comes from the Alibaba GenAI pod duty-cycle trace
(``alibaba-v2026-genai-pod-gpu-duty-cycle.csv.gz`` in ``../shared/traces``, or
``$DLINFRA_TRACE_DIR``, or ``--trace``): each allocation follows one pod's recorded utilisation,
minute by minute, from a random point of its recording.

**Seeding is setup, not measured**: the history is written as the ledger's own rows (GPUs,
allocations and their GPUs, jobs), the hours that ended before the last two as the hour rows the
roll-up writes (``dlinfra_usage_hours``: what ``UsageHours.roll_up`` would have made of the
minute buckets, worked out here from the same trace minutes), and the last two hours as minute
buckets (``dlinfra_usage``), which a report works out itself; one of them is then rolled up
(timed: the roll-up the servers run every few minutes).

**Measured**: ``usage_report`` (what ``GET /dlinfra/api/reports/usage`` calls) over the whole
period by user and by day, median of ``--repeat`` (5) runs; then the JSON the handler answers
(``report_json`` and encoding), the whole handler's work but the HTTP; then by group, class,
model and node. The report's total GPU-hours are checked against the seeded grants.

**Rows**: the hour rows against their documented bound: 24 a day per GPU plus one per
allocation (an allocation's first or last hour shared with another's).

The last line: ``RESULT report_s=... rows=... bound_rows=...`` (target: report_s < 1).
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import json
import math
import os
import random
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import insert

from jupyter_dlinfra.core.books.reports import usage_report
from jupyter_dlinfra.core.books.usage_hours import HOUR_S, UsageHours
from jupyter_dlinfra.core.store import (
    Store,
    allocation_gpus,
    allocations,
    gpus,
    jobs,
    meta,
    usage,
    usage_hours,
)
from jupyter_dlinfra.server.report_views import report_json

GPUS = 1024
DAYS = 30
USERS = 200
GROUPS = 20
REPEAT = 5
SEED = 17
TARGET_S = 1.0
IDLE_PERCENT = 5.0
BUCKET_S = 60.0
TRACE_NAME = "alibaba-v2026-genai-pod-gpu-duty-cycle.csv.gz"
MODEL = "NVIDIA H100 80GB HBM3"
#: how a node's 8 GPUs are split among the allocations that hold them at once
SPLITS = ((8,), (4, 4), (4, 2, 2), (2, 2, 2, 2), (4, 2, 1, 1), (2, 2, 1, 1, 1, 1))
#: a trace minute stands for a bucket of one minute
MINUTE = 60.0


def default_trace_path() -> Path:
    folder = os.environ.get("DLINFRA_TRACE_DIR")
    if folder:
        return Path(folder) / TRACE_NAME
    return Path(__file__).resolve().parents[1] / ".." / "shared" / "traces" / TRACE_NAME


def load_minutes(path: Path) -> list[list[float]]:
    """Each pod's utilisation (%), one value per minute of its recording, in order."""
    by_pod: dict[str, dict[float, float]] = defaultdict(dict)
    with gzip.open(path, "rt") if path.name.endswith(".gz") else open(path) as f:
        next(f)
        for line in f:
            value, at, pod = line.rstrip("\n").split(",")
            v, t = float(value), float(at)
            if math.isfinite(v) and math.isfinite(t):
                by_pod[pod][t] = max(v, by_pod[pod].get(t, v))
    series = [[v for _, v in sorted(points.items())] for _, points in sorted(by_pod.items())]
    return [s for s in series if len(s) >= 60]


@dataclass
class Held:
    id: int
    user: str
    group: str
    klass: str
    kind: str
    node: str
    gpus: tuple[str, ...]
    created: float
    granted: float
    ended: float | None
    pod: int
    offset: int


class History:
    """The seeded history, and what the report must find in it."""

    def __init__(self, args: argparse.Namespace, minutes: list[list[float]], now: float) -> None:
        self.rng = random.Random(args.seed)
        self.minutes = minutes
        self.now = now
        self.start = now - args.days * 86400
        self.nodes = max(1, args.gpus // 8)
        self.users = args.users
        self.held: list[Held] = []
        self.gpu_rows: list[dict[str, object]] = []

    def build(self) -> None:
        rng = self.rng
        for n in range(self.nodes):
            node = f"node-{n:04d}"
            uuids = [f"GPU-{n:04d}-{i}" for i in range(8)]
            for i, uuid in enumerate(uuids):
                self.gpu_rows.append(
                    {"uuid": uuid, "node": node, "idx": i, "model": MODEL, "memory_bytes": 80 << 30}
                )
            first = 0
            for size in rng.choice(SPLITS):
                self._slot(node, tuple(uuids[first : first + size]))
                first += size

    def _slot(self, node: str, slot: tuple[str, ...]) -> None:
        rng = self.rng
        t = self.start - rng.uniform(0, 12 * HOUR_S)  # the first grant began before the period
        while t < self.now:
            length = min(max(rng.lognormvariate(math.log(3 * HOUR_S), 1.0), 900.0), 86400.0)
            ended: float | None = t + length
            if ended is not None and ended >= self.now:
                ended = None
            user = rng.randrange(self.users)
            pod = rng.randrange(len(self.minutes))
            self.held.append(
                Held(
                    id=len(self.held) + 1,
                    user=f"u{user:03d}",
                    group=f"g{user % GROUPS:02d}",
                    klass=rng.choice(("interactive", "batch")),
                    kind=rng.choice(("kernel", "job")),
                    node=node,
                    gpus=slot,
                    created=t - rng.expovariate(1 / 600.0),
                    granted=t,
                    ended=ended,
                    pod=pod,
                    offset=rng.randrange(len(self.minutes[pod])),
                )
            )
            if ended is None:
                break
            t = ended + rng.uniform(0, 2 * HOUR_S)

    def util(self, h: Held, at: float) -> float:
        """The utilisation of ``h``'s GPUs in the minute from ``at``: its pod's, from its
        offset on, the recording looped."""
        series = self.minutes[h.pod]
        return series[(h.offset + int((at - h.granted) // MINUTE)) % len(series)]

    def held_within(self, since: float, until: float) -> float:
        """GPU-seconds held in [since, until)."""
        total = 0.0
        for h in self.held:
            end = self.now if h.ended is None else h.ended
            overlap = min(end, until) - max(h.granted, since)
            if overlap > 0:
                total += overlap * len(h.gpus)
        return total


def write(store: Store, history: History, rolled_until: int) -> int:
    """The history as the ledger's rows; the hours before ``rolled_until`` as hour rows, the
    rest as minute buckets; returns the hour rows written."""
    rows = 0
    with store.write() as tx:
        conn = tx.conn
        conn.execute(insert(gpus), history.gpu_rows)
        batch: list[dict[str, object]] = []
        held_gpus: list[dict[str, object]] = []
        job_rows: list[dict[str, object]] = []
        hour_rows: list[dict[str, object]] = []
        buckets: list[dict[str, object]] = []
        # allocations before the rows that name them
        chunks = (
            (allocations, batch),
            (allocation_gpus, held_gpus),
            (jobs, job_rows),
            (usage_hours, hour_rows),
            (usage, buckets),
        )
        for h in history.held:
            batch.append(
                {
                    "id": h.id,
                    "kernel_id": f"job-{h.id}" if h.kind == "job" else f"k-{h.id}",
                    "user": h.user,
                    "node": h.node,
                    "count": len(h.gpus),
                    "model": None,
                    "state": "granted" if h.ended is None else "released",
                    "created_at": h.created,
                    "granted_at": h.granted,
                    "ended_at": h.ended,
                    "end_reason": None if h.ended is None else "released by the user",
                    "priority_class": h.klass,
                    "kind": h.kind,
                    "groups": json.dumps([h.group]),
                }
            )
            held_gpus.extend({"allocation_id": h.id, "gpu_uuid": u} for u in h.gpus)
            if h.kind == "job" and h.ended is not None:
                state = history.rng.choices(("succeeded", "failed", "cancelled"), (90, 7, 3))[0]
                job_rows.append(
                    {
                        "user": h.user,
                        "name": f"train-{h.id}",
                        "path": "train.ipynb",
                        "backend": "local",
                        "node": h.node,
                        "server_id": "seed",
                        "gpus": len(h.gpus),
                        "state": state,
                        "created_at": h.created,
                        "started_at": h.granted,
                        "ended_at": h.ended,
                        "allocation_id": h.id,
                        "priority_class": h.klass,
                    }
                )
            rows += _hours_of(history, h, rolled_until, hour_rows, buckets)
            if any(len(chunk) >= 5000 for _, chunk in chunks):
                for table, chunk in chunks:
                    _flush(conn, table, chunk)
        for table, chunk in chunks:
            _flush(conn, table, chunk)
        conn.execute(insert(meta).values(key="usage_hours", value=rolled_until))
        tx.touch()
    return rows


def _flush(conn: object, table: object, chunk: list[dict[str, object]]) -> None:
    if chunk:
        conn.execute(insert(table), chunk)  # type: ignore[attr-defined, arg-type]
        chunk.clear()


def _hours_of(
    history: History,
    h: Held,
    rolled_until: int,
    hour_rows: list[dict[str, object]],
    buckets: list[dict[str, object]],
) -> int:
    """``h``'s hour rows before ``rolled_until`` (as the roll-up makes them from minute
    buckets), and its minute buckets from then on."""
    end = history.now if h.ended is None else h.ended
    count = len(h.gpus)
    written = 0
    for hour in range(
        int(max(h.granted, history.start - HOUR_S) // HOUR_S), int(end // HOUR_S) + 1
    ):
        h_from, h_to = max(h.granted, hour * HOUR_S), min(end, (hour + 1) * HOUR_S)
        if h_to <= h_from:
            continue
        if hour >= rolled_until:
            minute = math.floor(h_from / MINUTE) * MINUTE
            while minute < h_to:
                u = history.util(h, minute)
                buckets.append(
                    {
                        "kernel_id": f"job-{h.id}" if h.kind == "job" else f"k-{h.id}",
                        "bucket": minute,
                        "user": h.user,
                        "path": None,
                        "gpus": count,
                        "util_mean": u,
                        "util_max": u,
                        "memory_bytes": 0,
                        "samples": 1,
                    }
                )
                minute += MINUTE
            continue
        observed = busy = idle = 0.0
        minute = math.floor(h_from / MINUTE) * MINUTE
        while minute < h_to:
            overlap = min(minute + MINUTE, h_to) - max(minute, h_from)
            u = history.util(h, minute)
            observed += overlap * count
            busy += overlap * count * u / 100.0
            if u < IDLE_PERCENT:
                idle += overlap * count
            minute += MINUTE
        hour_rows.append(
            {
                "hour": hour,
                "allocation_id": h.id,
                "user": h.user,
                "groups": json.dumps([h.group]),
                "priority_class": h.klass,
                "model": MODEL,
                "node": h.node,
                "held_s": (h_to - h_from) * count,
                "observed_s": observed,
                "busy_s": busy,
                "idle_s": idle,
            }
        )
        written += 1
    return written


@contextlib.contextmanager
def database(url: str | None) -> Iterator[str]:
    if url:
        yield url
        return
    with tempfile.TemporaryDirectory() as folder:
        yield f"sqlite:///{folder}/ledger.db"


def timed(fn: object, repeat: int) -> tuple[float, object]:
    times, answer = [], None
    for _ in range(repeat):
        t0 = time.perf_counter()
        answer = fn()  # type: ignore[operator]
        times.append(time.perf_counter() - t0)
    return statistics.median(times), answer


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--gpus", type=int, default=GPUS, help=f"GPUs, in nodes of 8 ({GPUS})")
    parser.add_argument("--days", type=int, default=DAYS, help=f"days of history ({DAYS})")
    parser.add_argument("--users", type=int, default=USERS, help=f"({USERS})")
    parser.add_argument("--repeat", type=int, default=REPEAT, help=f"timed reports ({REPEAT})")
    parser.add_argument("--trace", type=Path, default=None, help="the duty-cycle trace")
    parser.add_argument("--db-url", default=None, help="a database (default: a new SQLite file)")
    parser.add_argument("--seed", type=int, default=SEED)
    args = parser.parse_args(argv)
    trace = args.trace or default_trace_path()
    if not trace.is_file():
        print(f"no trace at {trace}: pass --trace FILE or set DLINFRA_TRACE_DIR", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    minutes = load_minutes(trace)
    now = math.floor(time.time() / HOUR_S) * HOUR_S + 1500.0  # 25 min into an hour
    history = History(args, minutes, now)
    history.build()
    last_settled = int((now - 600) // HOUR_S)
    with database(args.db_url) as url:
        store = Store(url)
        try:
            rows = write(store, history, last_settled - 1)
            seeded_s = time.perf_counter() - t0
            allocations_n = len(history.held)
            print(
                f"seeded in {seeded_s:.1f} s (setup): {args.gpus:,} GPUs, {args.days} days, "
                f"{allocations_n:,} allocations, {rows:,} hour rows, the last hours as minute "
                f"buckets; {len(minutes)} pods of the trace",
                flush=True,
            )
            t1 = time.perf_counter()
            rolled = UsageHours(store).roll_up(
                now, bucket_s=BUCKET_S, idle_percent=IDLE_PERCENT, retention=400 * 86400
            )
            rollup_s = time.perf_counter() - t1
            with store.read() as conn:
                rows = int(
                    conn.exec_driver_sql("SELECT count(*) FROM dlinfra_usage_hours").scalar() or 0
                )
            since = now - args.days * 86400

            def report(by: str = "user") -> object:
                return usage_report(
                    store,
                    since=since,
                    until=now,
                    now=now,
                    by=by,
                    step="day",
                    bucket_s=BUCKET_S,
                    idle_percent=IDLE_PERCENT,
                )

            report_s, answer = timed(report, args.repeat)
            json_s, body = timed(lambda: json.dumps(report_json(answer)), args.repeat)  # type: ignore[arg-type]
            expected = history.held_within(math.floor(since / HOUR_S) * HOUR_S, now)
            found = answer.total.held_s  # type: ignore[attr-defined]
            others = {
                by: timed(lambda by=by: report(by), 1)[0]
                for by in ("group", "class", "model", "node")
            }
        finally:
            store.dispose()
    bound = 24 * args.gpus * args.days + allocations_n
    print(
        f"roll-up of {rolled} hour(s) at {args.gpus:,} GPUs: {rollup_s * 1000:.0f} ms\n"
        f"report by user and day over {args.days} days: {report_s * 1000:.0f} ms (median of "
        f"{args.repeat}); {len(answer.rows)} rows, {len(answer.starts)} steps; "  # type: ignore[attr-defined]
        f"JSON of it {json_s * 1000:.0f} ms ({len(body) / 1024:,.0f} KiB): the handler's work "  # type: ignore[arg-type]
        f"{(report_s + json_s) * 1000:.0f} ms\n"
        + "; ".join(f"by {by} {s * 1000:.0f} ms" for by, s in others.items())
        + f"\nGPU-hours held: report {found / HOUR_S:,.1f}, seeded {expected / HOUR_S:,.1f}\n"
        f"hour rows {rows:,} of a bound of {bound:,} (24 a day per GPU + one per allocation)\n"
        f"target (issue 17): a {args.days}-day report over {args.gpus:,} GPUs in under "
        f"{TARGET_S:g} s: {'met' if report_s < TARGET_S else 'MISSED'}"
    )
    if abs(found - expected) > 1e-6 * max(expected, 1.0):
        print("the report's GPU-hours differ from the seeded grants", file=sys.stderr)
        return 1
    print(f"RESULT report_s={report_s:.3f} rows={rows} bound_rows={bound}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
