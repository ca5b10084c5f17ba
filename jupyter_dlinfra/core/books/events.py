"""The event log every book writes to: one row per state change, in the transaction that makes
the change, so that the change and its event are committed (or lost) together."""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy import insert

from jupyter_dlinfra.core.store import Transaction, events

__all__ = ["write_event"]


def write_event(
    tx: Transaction,
    kind: str,
    *,
    at: float,
    allocation_id: int | None = None,
    kernel_id: str | None = None,
    detail: dict[str, Any] | None = None,
) -> None:
    """Add an event row within ``tx`` and mark the transaction as a change of the ledger."""
    tx.conn.execute(
        insert(events).values(
            at=at,
            kind=kind,
            allocation_id=allocation_id,
            kernel_id=kernel_id,
            detail=json.dumps(detail or {}),
        )
    )
    tx.touch()
