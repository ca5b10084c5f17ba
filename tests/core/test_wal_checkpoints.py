"""SQLite's write-ahead log is moved into the database file by the store's own thread, not by
whichever commit makes the log long."""

from __future__ import annotations

import gc
import threading
import time
from pathlib import Path

from jupyter_dlinfra.core.store import Store, meta
from jupyter_dlinfra.core.wal_checkpoints import BACKSTOP_PAGES, WalCheckpointer


def _until(test: object, what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not test():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"timed out: {what}"
        time.sleep(0.01)


def test_commits_leave_checkpoints_to_the_stores_thread(tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path / 'ledger.db'}")
    try:
        with store.engine.connect() as conn:
            pages = conn.exec_driver_sql("PRAGMA wal_autocheckpoint").scalar()
        assert pages == BACKSTOP_PAGES  # a commit checkpoints only far behind the thread
        for i in range(50):
            with store.write() as tx:
                tx.conn.execute(meta.insert().values(key=f"k{i}", value=i))
                tx.touch()
        checkpointer = store._checkpointer
        assert checkpointer is not None
        busy, logged, copied = checkpointer.checkpoint()
        assert busy == 0 and logged > 0 and copied == logged
        # and the thread does it by itself
        before = checkpointer.checkpoints
        _until(lambda: checkpointer.checkpoints > before, "a checkpoint of the thread's own")
    finally:
        store.dispose()
    assert not checkpointer._thread.is_alive()


def test_the_thread_ends_with_its_checkpointer(tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path / 'ledger.db'}")

    def started() -> threading.Thread:
        checkpointer = WalCheckpointer(store.engine, interval=0.01)
        checkpointer.start()
        _until(lambda: checkpointer.checkpoints > 0, "a first checkpoint")
        return checkpointer._thread  # and nothing refers to the checkpointer any more

    try:
        thread = started()
        gc.collect()
        _until(lambda: not thread.is_alive(), "the thread ends once nothing refers to it")
    finally:
        store.dispose()


def test_no_thread_for_a_database_in_memory() -> None:
    store = Store("sqlite://")
    try:
        assert store._checkpointer is None
    finally:
        store.dispose()
