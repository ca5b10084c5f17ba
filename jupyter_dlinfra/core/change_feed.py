"""Other processes' writes to a PostgreSQL ledger, told as they commit (LISTEN/NOTIFY).

Every write transaction of a :class:`~jupyter_dlinfra.core.store.Store` on PostgreSQL that
changes something bumps the ledger's counters and, in the same statement, notifies channel
``CHANNEL`` with its writer's id and the counters' new values; PostgreSQL delivers the
notification to every listening session when (and only if) the transaction commits. A
:class:`ChangeFeed` listens on a connection of its own, in a thread, and counts the
notifications of other writers (``stamp``).

That lets a busy process keep answers that change only when someone else writes, such as which
person a token names, in memory (:class:`FeedCache`) instead of asking the database on every
request, and still see a token revoked from the command line: the revocation's commit clears the
cache within the notification's delivery (milliseconds). While the feed is not listening (not
yet connected, or its connection lost: notifications sent meanwhile are lost with it), nothing is
served from a cache; each reconnection counts as a change. SQLite has no such channel: there,
the caches stay off and every answer is read (a local read costs little).
"""

from __future__ import annotations

import contextlib
import logging
import math
import threading
import time
from collections.abc import Callable
from typing import Any, Generic, TypeVar

__all__ = ["CHANNEL", "ChangeFeed", "FeedCache", "writer_of"]

CHANNEL = "dlinfra_changes"
#: seconds between the listener's checks that it should stop, and before it reconnects
POLL_S = 0.5
RECONNECT_S = 1.0
#: seconds between two warnings that the feed cannot listen
WARN_EVERY_S = 60.0

log = logging.getLogger(__name__)

K = TypeVar("K")
V = TypeVar("V")


def writer_of(payload: str) -> str:
    """The writer of a notification (``<writer> <counter>=<value>,...``; the counters are
    there for whoever watches the channel by hand)."""
    return payload.partition(" ")[0]


class ChangeFeed:
    """Listens for other writers' commits; ``stamp`` moves with each, and with each
    (re)connection. Start it with :meth:`start`, stop it with :meth:`stop`."""

    def __init__(self, connect: Callable[[], Any], writer: str) -> None:
        """``connect``: a new psycopg connection (autocommit is set here); ``writer``: this
        process's writer id, whose own notifications are not counted."""
        self._connect = connect
        self.writer = writer
        #: moves with every other writer's commit and every (re)connection
        self.stamp = 0
        #: listening now (a cache may be served only while it is)
        self.live = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        #: set once the first connection listens (tests and start-up wait on it)
        self.listening = threading.Event()
        self._warned_at = -math.inf

    def start(self) -> ChangeFeed:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="dlinfra-feed", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.join(timeout=POLL_S * 4)
        self.live = False

    def _moved(self) -> None:
        with self._lock:
            self.stamp += 1

    def _say(self, message: str, err: Exception) -> None:
        """Warn, but once a minute at most: a database that is away is retried every second
        (its outage is told elsewhere, once)."""
        now = time.monotonic()
        if now - self._warned_at >= WARN_EVERY_S:
            self._warned_at = now
            log.warning(message, err)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                conn = self._connect()
            except Exception as err:
                self._say("dlinfra: cannot listen for ledger changes (%s); caches are off", err)
                self._stop.wait(RECONNECT_S)
                continue
            try:
                conn.autocommit = True
                conn.execute(f"LISTEN {CHANNEL}")
                # anything committed before LISTEN took effect was missed: a change
                self._moved()
                self.live = True
                self.listening.set()
                while not self._stop.is_set():
                    for note in conn.notifies(timeout=POLL_S):
                        if writer_of(note.payload) != self.writer:
                            self._moved()
            except Exception as err:
                if not self._stop.is_set():
                    self._say("dlinfra: lost the ledger's change feed (%s); reconnecting", err)
            finally:
                self.live = False
                with contextlib.suppress(Exception):  # closing a broken connection
                    conn.close()
                self._moved()
            self._stop.wait(RECONNECT_S)


class FeedCache(Generic[K, V]):
    """Answers kept while no other writer committed (``feed.stamp`` unchanged), this process
    changed nothing they depend on (:meth:`clear`), and the feed listens; with no feed, nothing
    is kept. Filled with the stamp read *before* the answer was read from the database, so an
    answer that a concurrent commit (another process's, or this one's) overtook is never kept."""

    def __init__(self, feed_of: Callable[[], ChangeFeed | None], size: int = 65536) -> None:
        """``feed_of``: the feed now (a store's, once started)."""
        self.feed_of = feed_of
        self.size = size
        self._data: dict[K, V] = {}
        self._stamp: tuple[int, int] = (-1, -1)
        #: moves with each of this process's own changes (:meth:`clear`)
        self._local = 0

    def stamp(self) -> tuple[int, int] | None:
        """The stamp to fill with (read it before reading the answer); None: keep nothing."""
        feed = self.feed_of()
        if feed is None or not feed.live:
            return None
        return (feed.stamp, self._local)

    def get(self, key: K) -> V | None:
        stamp = self.stamp()
        if stamp is None:
            return None
        if stamp != self._stamp:
            self._data = {}
            self._stamp = stamp
            return None
        return self._data.get(key)

    def put(self, key: K, value: V, stamp: tuple[int, int] | None) -> None:
        if stamp is None or stamp != self.stamp():
            return
        if stamp != self._stamp:
            self._data = {}
            self._stamp = stamp
        if len(self._data) >= self.size:
            self._data = {}
        self._data[key] = value

    def clear(self) -> None:
        """This process changed what answers say (its own writes are not in the feed): drop
        them, and keep no answer read before now."""
        self._local += 1
        self._data = {}
