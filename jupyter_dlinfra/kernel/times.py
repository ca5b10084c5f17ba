"""Times of the API (ISO 8601 in UTC) as people read them, in a kernel and on the command line."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

__all__ = ["when"]


def when(stamp: Any, *, relative: bool = False) -> str:
    """'13:40:12 UTC', or with ``relative`` 'at 13:40:12 UTC (in 29 min)'."""
    if not isinstance(stamp, str):
        return "soon" if relative else "a while"
    try:
        moment = datetime.fromisoformat(stamp.replace("Z", "+00:00"))
    except ValueError:
        return stamp
    clock = moment.astimezone(timezone.utc).strftime("%H:%M:%S UTC")
    if not relative:
        return clock
    left = (moment - datetime.now(timezone.utc)).total_seconds()
    return f"at {clock} (in {max(0.0, left) / 60:.0f} min)"
