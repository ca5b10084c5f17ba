"""Domain errors. The server maps each class to an HTTP status once, at the boundary."""

from __future__ import annotations

__all__ = [
    "BackendError",
    "Conflict",
    "InvalidRequest",
    "LedgerError",
    "NotFound",
    "PermissionDenied",
    "Unsatisfiable",
]


class LedgerError(Exception):
    """Base class: ``reason`` is a short machine-readable code, ``str(err)`` a sentence."""

    reason = "error"

    def __init__(self, message: str, *, reason: str | None = None) -> None:
        super().__init__(message)
        if reason is not None:
            self.reason = reason

    @property
    def message(self) -> str:
        return str(self.args[0])


class InvalidRequest(LedgerError):
    reason = "invalid"


class Unsatisfiable(InvalidRequest):
    """The request can never be granted on this node (too many GPUs, no such model)."""

    reason = "unsatisfiable"


class NotFound(LedgerError):
    reason = "not_found"


class Conflict(LedgerError):
    reason = "conflict"


class PermissionDenied(LedgerError):
    reason = "forbidden"


class BackendError(Exception):
    """A job backend or the Kubernetes layer could not do what was asked; ``str()`` is a
    sentence for people.

    Not a :class:`LedgerError`: what the cluster refused is not the caller's mistake, so each
    caller decides what it means (``jupyter_dlinfra.backends.base`` re-exports it, its home for
    backends' users).
    """
