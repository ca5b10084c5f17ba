"""SQLite's write-ahead log moved into the database file by a thread of its own.

In WAL mode SQLite copies the log into the database file (a checkpoint) once the log passes
``wal_autocheckpoint`` pages, in whichever commit crosses that line: that commit then waits for
the copy and its syncs, several times a grant's own cost, so one change in a few hundred is
slow for no reason of its own (the ledger's p99). Here a daemon thread runs a PASSIVE checkpoint
every ``interval`` seconds on its own connection: it copies what no reader still needs, waits
for nobody and blocks no writer, and sqlite3 releases the GIL while it works. The automatic
checkpoint stays as a backstop at ``BACKSTOP_PAGES``, should this thread fall behind.
"""

from __future__ import annotations

import logging
import threading
import weakref

from sqlalchemy import Engine

__all__ = ["BACKSTOP_PAGES", "CHECKPOINT_INTERVAL_S", "WalCheckpointer"]

_log = logging.getLogger(__name__)

#: how often the log is moved into the database file (s)
CHECKPOINT_INTERVAL_S = 1.0
#: the log's length (pages) at which a commit checkpoints after all: some 40 MB of 4 KiB pages
BACKSTOP_PAGES = 10_000


class WalCheckpointer:
    """Checkpoints ``engine``'s database every ``interval`` seconds until :meth:`stop` (or
    until nothing refers to it any more: the thread holds it weakly between checkpoints)."""

    def __init__(self, engine: Engine, interval: float = CHECKPOINT_INTERVAL_S) -> None:
        self.engine = engine
        self.interval = interval
        self.checkpoints = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=_run,
            args=(weakref.ref(self), self._stop, interval),
            daemon=True,
            name="dlinfra-wal-checkpoint",
        )

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)

    def checkpoint(self) -> tuple[int, int, int]:
        """One PASSIVE checkpoint now: (busy, frames in the log, frames copied)."""
        with self.engine.connect() as conn:
            row = conn.exec_driver_sql("PRAGMA wal_checkpoint(PASSIVE)").one()
        self.checkpoints += 1
        return (int(row[0]), int(row[1]), int(row[2]))


def _run(ref: weakref.ref[WalCheckpointer], stop: threading.Event, interval: float) -> None:
    failing = False
    while not stop.wait(interval):
        checkpointer = ref()
        if checkpointer is None:
            return
        try:
            checkpointer.checkpoint()
            failing = False
        except Exception:
            # the commits' backstop checkpoints meanwhile; said once, not every second
            if not failing:
                _log.warning("moving the ledger's write-ahead log failed", exc_info=True)
            failing = True
        del checkpointer
