"""Quoting what a caller sent in a message, without echoing (or logging) all of it."""

from __future__ import annotations

import json

__all__ = ["SHOWN_CHARS", "shown"]

#: how much of a value a message quotes
SHOWN_CHARS = 60


def shown(value: object, limit: int = SHOWN_CHARS) -> str:
    """``repr(value)`` for a message, cut after ``limit`` characters, saying how long it was.

    A policy document or a request body can hold megabytes: its error message (which is
    answered and logged) quotes the start, never the whole.
    """
    if isinstance(value, str) and len(value) > limit:
        # the repr of a huge string would cost its whole size: cut first
        return f"{value[:limit]!r}... ({len(value)} characters)"
    if isinstance(value, (dict, list)):
        try:
            text = json.dumps(value)[: limit + 1]
        except (TypeError, ValueError, RecursionError):
            text = f"a {type(value).__name__}"
        if len(text) > limit:
            return f"{text[:limit]}... (a {'JSON object' if isinstance(value, dict) else 'list'})"
        return text
    text = repr(value)
    if len(text) > limit:
        return f"{text[:limit]}... ({len(text)} characters)"
    return text
