"""When the ledger's database cannot be reached: which errors say so, and how long to wait.

PostgreSQL stopped or restarting, a network between the gateway and it that drops, a SQLite file
locked by another process beyond the busy timeout: the ledger's calls fail with SQLAlchemy's
``OperationalError`` (or ``InterfaceError``, or a pool ``TimeoutError``) until the database answers
again. Those are not bugs and not the caller's fault: requests answer 503 with
:data:`RETRY_AFTER_S`, and periodic work waits with a :class:`Backoff` and tries again. An
``IntegrityError`` is not among them: a constraint that fails is a bug to see, not to wait out.
"""

from __future__ import annotations

import sqlite3

from sqlalchemy import exc as sa_exc

from jupyter_dlinfra.core.errors import LedgerError

__all__ = [
    "RETRY_AFTER_S",
    "Backoff",
    "LedgerUnavailable",
    "database_unavailable",
    "describe",
]

#: what a 503 tells clients to wait before they ask again (seconds)
RETRY_AFTER_S = 5


class LedgerUnavailable(LedgerError):
    """The ledger's database does not answer now; the same call may succeed later."""

    reason = "ledger_unavailable"

    @classmethod
    def from_error(cls, err: BaseException) -> LedgerUnavailable:
        # the cause (host, port, driver text) goes to the log, not to every caller
        if "locked" in describe(err).lower():
            message = "the GPU ledger's database is locked by another process; try again shortly"
        else:
            message = "the GPU ledger's database is unreachable; try again shortly"
        return cls(message)


def database_unavailable(err: BaseException) -> bool:
    """Whether ``err`` says the database cannot be used now, rather than that a call was wrong."""
    if isinstance(err, LedgerUnavailable):
        return True
    if isinstance(err, sa_exc.IntegrityError):
        return False
    if isinstance(err, (sa_exc.OperationalError, sa_exc.InterfaceError, sa_exc.TimeoutError)):
        return True
    if isinstance(err, sa_exc.DBAPIError) and err.connection_invalidated:
        return True
    # raised by our own connect hook (PRAGMAs) before SQLAlchemy wraps anything
    return isinstance(err, sqlite3.OperationalError)


def describe(err: BaseException, limit: int = 200) -> str:
    """The driver's first line about ``err`` (not SQLAlchemy's statement and parameters)."""
    cause = err
    while isinstance(cause, LedgerUnavailable) and cause.__cause__ is not None:
        cause = cause.__cause__
    orig = getattr(cause, "orig", None)
    text = str(orig if orig is not None else cause).strip()
    first = text.splitlines()[0].strip() if text else type(cause).__name__
    return first if len(first) <= limit else first[: limit - 3] + "..."


class Backoff:
    """Exponentially growing waits between tries, capped: ``first``, ``first * factor``, ...

    ``next()`` gives the wait before the next try after one more failure; ``reset()`` after a
    success starts again from ``first``. Pure arithmetic: whoever waits brings the clock.
    """

    def __init__(self, *, first: float = 1.0, factor: float = 2.0, cap: float = 30.0) -> None:
        if first <= 0:
            raise ValueError(f"the first wait must be positive, not {first}")
        if factor < 1:
            raise ValueError(f"the factor must be at least 1, not {factor}")
        if cap < first:
            raise ValueError(f"the cap ({cap}) must be at least the first wait ({first})")
        self.first = first
        self.factor = factor
        self.cap = cap
        self.failures = 0

    def next(self) -> float:
        """Count one more failure and return how long to wait before trying again."""
        delay = self.first
        # stop multiplying once capped: no float overflow after thousands of failures
        for _ in range(self.failures):
            delay *= self.factor
            if delay >= self.cap:
                break
        self.failures += 1
        return min(delay, self.cap)

    def reset(self) -> None:
        self.failures = 0
