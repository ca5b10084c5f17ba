"""Options of the event stream (``GET /dlinfra/api/events``)."""

from __future__ import annotations

from typing import Any

from traitlets import Float, HasTraits, TraitError, validate

__all__ = ["EventStreamOptions"]


class EventStreamOptions(HasTraits):
    events_debounce = Float(
        0.05,
        config=True,
        help="Seconds within which ledger changes and telemetry samples share one delta of "
        "the event stream (GET /dlinfra/api/events); the first change after a quiet spell goes "
        "out at once.",
    )
    events_fanout_rate = Float(
        2000.0,
        config=True,
        help="Frames a second that the event streams are handed in all, on average (bursts of "
        "a second's worth): each delta is written to every subscriber, so when changes come "
        "fast, deltas come further apart than events_debounce (500 subscribers: 4 a second, "
        "each covering the changes before it), and the streams cannot take the server from its "
        "requests. 0: no bound but events_debounce.",
    )
    events_keepalive = Float(
        15.0,
        config=True,
        help="Seconds after which an idle event stream gets a keepalive comment, so that proxies "
        "do not close it.",
    )

    @validate("events_debounce", "events_keepalive", "events_fanout_rate")
    def _check_events_timing(self, proposal: dict[str, Any]) -> float:
        value = float(proposal["value"])
        if value < 0 or (proposal["trait"].name == "events_keepalive" and value == 0):
            raise TraitError(f"DLInfra.{proposal['trait'].name} must be positive, not {value}")
        return value
