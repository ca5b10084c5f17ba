"""The one place where domain errors become HTTP answers."""

from __future__ import annotations

from tornado.web import HTTPError

from jupyter_dlinfra.core.errors import (
    Conflict,
    InvalidRequest,
    LedgerError,
    NotFound,
    PermissionDenied,
)
from jupyter_dlinfra.core.outage import RETRY_AFTER_S, LedgerUnavailable, database_unavailable

__all__ = ["ApiError", "from_database_error", "from_ledger_error"]

_STATUS: list[tuple[type[LedgerError], int]] = [
    (NotFound, 404),
    (Conflict, 409),
    (PermissionDenied, 403),
    (InvalidRequest, 400),
    (LedgerUnavailable, 503),
]


class ApiError(HTTPError):  # type: ignore[misc]
    """An error answered as JSON ``{message, reason}``; ``code`` is the machine-readable reason.

    ``retry_after``: seconds a client should wait before asking again (a ``Retry-After``
    header), for an answer that says "not now" rather than "not so".
    """

    def __init__(
        self, status: int, message: str, *, code: str, retry_after: int | None = None
    ) -> None:
        # the message as an argument: tornado formats a log message with arguments in every
        # version, but one without them only before 6.5 (escaping "%" showed "%%" after).
        # Without a "%" it is the log message itself, which jupyter_server's own handlers
        # answer unformatted (an ApiError raised in their prepare, by the gateway's identity)
        if "%" in message:
            super().__init__(status, "%s", message)
        else:
            super().__init__(status, message)
        self.message = message
        self.code = code
        self.retry_after = retry_after


def from_ledger_error(err: LedgerError) -> ApiError:
    status = next((s for cls, s in _STATUS if isinstance(err, cls)), 400)
    retry_after = RETRY_AFTER_S if status == 503 else None
    return ApiError(status, err.message, code=err.reason, retry_after=retry_after)


def from_database_error(err: BaseException) -> ApiError | None:
    """A 503 for a database that does not answer now (see ``database_unavailable``), else None."""
    if not database_unavailable(err):
        return None
    unavailable = err if isinstance(err, LedgerUnavailable) else LedgerUnavailable.from_error(err)
    return from_ledger_error(unavailable)
