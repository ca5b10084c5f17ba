"""REST handler of the usage reports: who held how many GPU-hours, and how well they used them."""

from __future__ import annotations

import math
import re
from datetime import UTC, datetime
from typing import Any

from jupyter_dlinfra.core.books.reports import BY, STEPS, usage_report
from jupyter_dlinfra.server.errors import ApiError
from jupyter_dlinfra.server.handlers.base import DLInfraHandler, authorized
from jupyter_dlinfra.server.parsing import query_name, shown
from jupyter_dlinfra.server.report_views import report_csv, report_json

__all__ = ["UsageReportHandler", "parse_time"]

#: a report covers the last week unless told
DEFAULT_SINCE = "7d"
_RELATIVE = re.compile(r"^(\d{1,6})([mhdw])$")
_UNIT_S = {"m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_time(raw: str, now: float, what: str) -> float:
    """A time in a query: ``7d`` (``m``, ``h``, ``d`` or ``w`` before now), an ISO 8601 date or
    time (UTC unless it says otherwise), or seconds since the epoch."""
    text = raw.strip()
    relative = _RELATIVE.match(text)
    if relative:
        return now - int(relative.group(1)) * _UNIT_S[relative.group(2)]
    if len(text) <= 40:
        try:
            value = float(text)
        except ValueError:
            pass
        else:
            if math.isfinite(value) and 0 <= value <= 4e10:
                return value
        try:
            parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
        except ValueError:
            pass
        else:
            if parsed.tzinfo is None:
                parsed = parsed.replace(tzinfo=UTC)
            return parsed.timestamp()
    raise ApiError(
        400,
        f"{what} {shown(raw)} is not a time: give 7d (or 12h, 30m, 2w) before now, an ISO 8601 "
        "date such as 2026-11-30 or 2026-11-30T08:00Z, or seconds since the epoch",
        code="bad_query",
    )


class UsageReportHandler(DLInfraHandler):
    """``GET /dlinfra/api/reports/usage``: admins see everyone; others only themselves."""

    @authorized("read")
    async def get(self) -> None:
        now = self.service.ledger.clock.now()
        since = parse_time(self.get_query_argument("since", DEFAULT_SINCE), now, "since")
        until_raw = self.get_query_argument("until", None)
        until = now if until_raw is None else parse_time(until_raw, now, "until")
        by = self.get_query_argument("by", "user")
        if by not in BY:
            raise ApiError(
                400, f"by must be one of {', '.join(BY)}, not {shown(by)}", code="bad_query"
            )
        step = self.get_query_argument("step", "day")
        if step not in STEPS:
            raise ApiError(
                400, f"step must be one of {', '.join(STEPS)}, not {shown(step)}", code="bad_query"
            )
        fmt = self.get_query_argument("format", "json")
        if fmt not in ("json", "csv"):
            raise ApiError(400, f"format must be json or csv, not {shown(fmt)}", code="bad_query")
        asked = query_name(self.get_query_argument("user", None), "user")
        me = self.person()
        admin = self.is_admin()
        if asked is not None and asked != me and not admin:
            raise ApiError(
                403,
                f"only admins may see another person's usage; ask for your own ({me}) or none",
                code="not_admin",
            )
        user = asked if asked is not None else (None if admin else me)
        reclaimer = self.service.reclaimer
        bucket_s, idle_percent = 60.0, 5.0
        if reclaimer is not None:
            bucket_s = reclaimer.settings.usage_bucket or bucket_s
            policy = await self.service.call(reclaimer.policies.current)
            idle_percent = policy.default.idle_util_percent
        report = await self.service.call(
            usage_report,
            self.service.ledger.store,
            since=since,
            until=until,
            now=now,
            by=by,
            step=step,
            user=user,
            bucket_s=bucket_s,
            idle_percent=idle_percent,
        )
        if fmt == "csv":
            name = f"dlinfra-usage-by-{by}.csv"
            self.set_header("Content-Disposition", f'attachment; filename="{name}"')
            self.finish(report_csv(report), set_content_type="text/csv; charset=utf-8")
            return
        body: dict[str, Any] = report_json(report)
        body["user"] = user
        body["idle_util_percent"] = idle_percent
        self.answer(body)
