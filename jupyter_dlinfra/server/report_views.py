"""A usage report as the API shows it: JSON with a series per row, or a CSV table of the rows.

GPU-hours are rounded to 0.001 (3.6 GPU-seconds), efficiency to 0.0001, waits to the second.
"""

from __future__ import annotations

import csv
import io
import math
from datetime import UTC, datetime
from typing import Any

from jupyter_dlinfra.core.books.reports import ReportRow, UsageReport

__all__ = ["CSV_COLUMNS", "report_csv", "report_json"]

_HOUR = 3600.0

CSV_COLUMNS = (
    "gpu_hours",
    "busy_gpu_hours",
    "observed_gpu_hours",
    "efficiency",
    "idle_gpu_hours",
    "reclaimed_gpu_hours",
    "grants",
    "wait_p50_s",
    "wait_p95_s",
    "jobs_succeeded",
    "jobs_failed",
    "jobs_cancelled",
)


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).isoformat().replace("+00:00", "Z")


def _hours(seconds: float) -> float:
    return round(seconds / _HOUR, 3)


def _percentile(values: list[float], q: float) -> float | None:
    """The q-th percentile by the nearest rank (a value that occurred); None without values."""
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[max(math.ceil(q / 100 * len(ordered)) - 1, 0)])


def _figures(row: ReportRow) -> dict[str, Any]:
    return {
        "gpu_hours": _hours(row.held_s),
        "busy_gpu_hours": _hours(row.busy_s),
        "observed_gpu_hours": _hours(row.observed_s),
        # busy over held: held time nobody sampled counts as not busy
        "efficiency": round(row.busy_s / row.held_s, 4) if row.held_s > 0 else None,
        "idle_gpu_hours": _hours(row.idle_s),
        "reclaimed_gpu_hours": _hours(row.reclaimed_s),
        "grants": len(row.waits),
        "wait_p50_s": _percentile(row.waits, 50),
        "wait_p95_s": _percentile(row.waits, 95),
        "jobs_succeeded": row.jobs.get("succeeded", 0),
        "jobs_failed": row.jobs.get("failed", 0),
        "jobs_cancelled": row.jobs.get("cancelled", 0),
    }


def _series(row: ReportRow, report: UsageReport) -> list[dict[str, Any]]:
    out = []
    for i, start in enumerate(report.starts):
        step = row.steps.get(i)
        out.append(
            {
                "start": _iso(start),
                "gpu_hours": _hours(step.held_s) if step else 0.0,
                "busy_gpu_hours": _hours(step.busy_s) if step else 0.0,
                "idle_gpu_hours": _hours(step.idle_s) if step else 0.0,
            }
        )
    return out


def report_json(report: UsageReport) -> dict[str, Any]:
    return {
        "since": _iso(report.since),
        "until": _iso(report.until),
        "by": report.by,
        "step": report.step,
        "rows": [{"key": r.key, **_figures(r), "series": _series(r, report)} for r in report.rows],
        "total": {**_figures(report.total), "series": _series(report.total, report)},
    }


def _cell(key: str) -> str:
    # a spreadsheet runs a cell that starts with one of these as a formula (OWASP's CSV
    # injection): user names may start with + - or @
    return "'" + key if key[:1] in ("=", "+", "-", "@", "\t", "\r") else key


def report_csv(report: UsageReport) -> str:
    """One line per row, then the total; the first column is named after ``by``."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow((report.by, *CSV_COLUMNS))
    for row in (*report.rows, report.total):
        figures = _figures(row)
        writer.writerow(
            (_cell(row.key), *("" if figures[c] is None else figures[c] for c in CSV_COLUMNS))
        )
    return out.getvalue()
