"""Reads of the ledger's event log that are not the ledger's own business.

The ledger writes events and pages through them (``Ledger.events``); a reader that follows the log
from "now on" (the event stream) needs where the log ends, which the ledger has no call for.
"""

from __future__ import annotations

from sqlalchemy import func, select

from jupyter_dlinfra.core.store import Store, events

__all__ = ["latest_event_seq"]


def latest_event_seq(store: Store) -> int:
    """The ``seq`` of the newest event in the store, 0 when there is none.

    One indexed read (``seq`` is the primary key): paging through the whole history to find its
    end would cost a read of every event ever written.
    """
    with store.read() as conn:
        return int(conn.execute(select(func.max(events.c.seq))).scalar() or 0)
