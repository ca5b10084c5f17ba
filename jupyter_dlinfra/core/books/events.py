"""The event log every book writes to: one row per state change, in the transaction that makes
the change, so that the change and its event are committed (or lost) together.

The ledger pages through the log (``Ledger.events``); a reader that follows it from "now on" (the
event stream) needs where it ends, which :func:`latest_event_seq` answers.
"""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy import func, insert, select

from jupyter_dlinfra.core.driver_sql import DriverStatement
from jupyter_dlinfra.core.store import Store, Transaction, events

__all__ = ["event_row", "latest_event_seq", "write_event", "write_events"]


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
    INSERT_EVENT.run(
        tx.conn,
        event_row(kind, at=at, allocation_id=allocation_id, kernel_id=kernel_id, detail=detail),
    )
    tx.touch()


def write_events(tx: Transaction, rows: list[dict[str, Any]]) -> None:
    """Add several events made by :func:`event_row` in one statement (a pass's grants)."""
    if rows:
        INSERT_EVENT.run_many(tx.conn, rows)
        tx.touch()


def event_row(
    kind: str,
    *,
    at: float,
    allocation_id: int | None = None,
    kernel_id: str | None = None,
    detail: dict[str, Any] | None = None,
) -> dict[str, Any]:
    return {
        "at": at,
        "kind": kind,
        "allocation_id": allocation_id,
        "kernel_id": kernel_id,
        "detail": json.dumps(detail or {}),
    }


#: built once, run through the driver: every change executes it (see ledger_sql.py)
INSERT_EVENT = DriverStatement(
    insert(events), ["at", "kind", "allocation_id", "kernel_id", "detail"]
)


def latest_event_seq(store: Store) -> int:
    """The ``seq`` of the newest event in the store, 0 when there is none.

    One indexed read (``seq`` is the primary key): paging through the whole history to find its
    end would cost a read of every event ever written.
    """
    with store.read() as conn:
        return int(conn.execute(select(func.max(events.c.seq))).scalar() or 0)
