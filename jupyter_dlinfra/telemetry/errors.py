"""Errors a telemetry provider raises when it cannot start."""

from __future__ import annotations

__all__ = ["TelemetryUnavailable"]


class TelemetryUnavailable(RuntimeError):
    """No GPU telemetry can be had here; the message is a sentence meant for people.

    ``select_provider`` turns it into the reason an ``UnavailableProvider`` shows, so it must say
    what went wrong in words an operator can act on, not only an error code.
    """
