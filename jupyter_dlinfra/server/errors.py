"""The one place where domain errors become HTTP answers."""

from __future__ import annotations

from tornado.web import HTTPError

from ..core import Conflict, InvalidRequest, LedgerError, NotFound, PermissionDenied

__all__ = ["ApiError", "from_ledger_error"]

_STATUS: list[tuple[type[LedgerError], int]] = [
    (NotFound, 404),
    (Conflict, 409),
    (PermissionDenied, 403),
    (InvalidRequest, 400),
]


class ApiError(HTTPError):  # type: ignore[misc]
    """An error answered as JSON ``{message, reason}``; ``code`` is the machine-readable reason."""

    def __init__(self, status: int, message: str, *, code: str) -> None:
        # the message as an argument: tornado formats a log message with arguments in every
        # version, but one without them only before 6.5 (escaping "%" showed "%%" after)
        super().__init__(status, "%s", message)
        self.message = message
        self.code = code


def from_ledger_error(err: LedgerError) -> ApiError:
    status = next((s for cls, s in _STATUS if isinstance(err, cls)), 400)
    return ApiError(status, err.message, code=err.reason)
