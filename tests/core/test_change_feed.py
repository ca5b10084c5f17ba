"""Answers kept in memory until another process commits: the change feed (PostgreSQL's
LISTEN/NOTIFY) and the caches that follow it (people's tokens, kernels' tokens)."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, event, text

from jupyter_dlinfra.core import change_feed
from jupyter_dlinfra.core.books.ledger import Ledger
from jupyter_dlinfra.core.books.tokens import TokenBook
from jupyter_dlinfra.core.change_feed import ChangeFeed, FeedCache, writer_of
from jupyter_dlinfra.core.clock import ManualClock
from jupyter_dlinfra.core.models import KernelRecord
from jupyter_dlinfra.core.store import Store

from .kit import A100, DEADLINE_S, make_gpus, until


class FakeFeed(ChangeFeed):
    """A feed whose stamp the test moves (no database)."""

    def __init__(self) -> None:
        super().__init__(lambda: None, "me")
        self.live = True


def test_a_notification_names_its_writer() -> None:
    assert writer_of("w1 ledger=5,version=12") == "w1"
    assert writer_of("w2") == "w2"


def test_a_cache_keeps_nothing_read_before_a_change_and_nothing_without_a_live_feed() -> None:
    feed = FakeFeed()
    cache: FeedCache[str, int] = FeedCache(lambda: feed)
    stamp = cache.stamp()
    cache.put("a", 1, stamp)
    assert cache.get("a") == 1
    # another process committed while "b" was read: not kept, and "a" is dropped
    stamp = cache.stamp()
    feed._moved()
    cache.put("b", 2, stamp)
    assert cache.get("b") is None and cache.get("a") is None
    # this process changed something while "c" was read
    stamp = cache.stamp()
    cache.clear()
    cache.put("c", 3, stamp)
    assert cache.get("c") is None
    cache.put("c", 3, cache.stamp())
    assert cache.get("c") == 3
    feed.live = False
    assert cache.get("c") is None and cache.stamp() is None
    cache.put("d", 4, None)
    feed.live = True
    assert cache.get("d") is None
    assert FeedCache[str, int](lambda: None).stamp() is None


@pytest.fixture
def two_processes(fresh_postgres_db: str) -> Iterator[tuple[Store, Store]]:
    """Two stores on one PostgreSQL ledger, as a gateway and the command line are: the first
    listens."""
    gateway, other = Store(fresh_postgres_db), Store(fresh_postgres_db)
    feed = gateway.start_feed()
    assert feed is not None and feed.listening.wait(DEADLINE_S)
    try:
        yield gateway, other
    finally:
        gateway.dispose()
        other.dispose()


def test_a_token_revoked_by_another_process_stops_working_once_its_commit_is_told(
    two_processes: tuple[Store, Store],
) -> None:
    gateway, other = two_processes
    clock = ManualClock(1000.0)
    book, cli = TokenBook(gateway, clock), TokenBook(other, clock)
    issued = cli.issue("bob", by="admin")
    until(lambda: book._live.stamp() is not None, "the feed listens")
    assert book.cached(issued.token) is None  # never read yet
    # kept once read after the issue's own notification came (one read before it is not)
    until(lambda: book.verify(issued.token) == "bob" and book.cached(issued.token) == "bob", "")
    assert gateway.feed is not None
    seen = gateway.feed.stamp
    cli.revoke(issued.record.id)
    until(lambda: gateway.feed is not None and gateway.feed.stamp > seen, "the revoke is told")
    assert book.cached(issued.token) is None
    assert book.verify(issued.token) is None
    # a last use older than TOUCH_EVERY is written by verify, not answered from memory
    again = cli.issue("carol", by="admin")
    until(lambda: book.verify(again.token) == "carol" and book.cached(again.token), "kept")
    clock.advance(TokenBook.TOUCH_EVERY)
    assert book.cached(again.token) is None
    assert book.verify(again.token) == "carol"


def test_this_process_revoking_a_token_clears_it_at_once(
    two_processes: tuple[Store, Store],
) -> None:
    gateway, _ = two_processes
    book = TokenBook(gateway, ManualClock(1000.0))
    issued = book.issue("alice", by="admin")
    until(lambda: book.verify(issued.token) == "alice" and book.cached(issued.token), "kept")
    book.revoke(issued.record.id)
    assert book.cached(issued.token) is None and book.verify(issued.token) is None


def test_a_kernels_token_is_kept_until_the_kernel_is_forgotten_here_or_elsewhere(
    two_processes: tuple[Store, Store],
) -> None:
    gateway, other = two_processes
    clock = ManualClock(1000.0)
    ledger, cli = Ledger(gateway, clock), Ledger(other, clock)

    def register(ledger: Ledger, kernel_id: str, token_hash: str) -> None:
        ledger.register_kernel(
            KernelRecord(kernel_id=kernel_id, user="alice", node="n1", server_id="s"),
            token_hash=token_hash,
        )

    register(ledger, "k1", "h1")
    register(ledger, "k2", "h2")
    until(lambda: ledger.caller_by_token_hash("h1") is not None and ledger.cached_caller("h1"), "")
    assert ledger.cached_caller("h1") == ledger.caller_by_token_hash("h1")
    assert ledger.caller_by_token_hash("h1").user == "alice"  # type: ignore[union-attr]
    # forgotten here: at once
    ledger.forget_kernel("k1", reason="gone")
    assert ledger.cached_caller("h1") is None and ledger.caller_by_token_hash("h1") is None
    # relaunched elsewhere with a new token: the old one is told
    until(lambda: ledger.caller_by_token_hash("h2") is not None and ledger.cached_caller("h2"), "")
    register(cli, "k2", "h2-new")
    until(lambda: ledger.cached_caller("h2") is None, "the relaunch is told")
    assert ledger.caller_by_token_hash("h2") is None
    assert ledger.caller_by_token_hash("h2-new") is not None


def test_a_lost_feed_turns_the_caches_off_until_it_listens_again(
    two_processes: tuple[Store, Store], fresh_postgres_db: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(change_feed, "RECONNECT_S", 0.05)
    gateway, _ = two_processes
    book = TokenBook(gateway, ManualClock(1000.0))
    issued = book.issue("alice", by="admin")
    until(lambda: book.verify(issued.token) == "alice" and book.cached(issued.token), "kept")
    feed = gateway.feed
    assert feed is not None
    killer = create_engine(fresh_postgres_db, isolation_level="AUTOCOMMIT")
    try:
        with killer.connect() as conn:
            conn.execute(
                text(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE query LIKE 'LISTEN%' AND datname = current_database()"
                )
            )
    finally:
        killer.dispose()
    until(lambda: book.cached(issued.token) is None, "the cache is off or cleared")
    until(lambda: feed.live, "the feed listens again")
    assert book.verify(issued.token) == "alice"
    assert book.cached(issued.token) == "alice"


def test_sqlite_has_no_feed_and_keeps_nothing(tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path / 'ledger.db'}")
    try:
        assert store.start_feed() is None
        book = TokenBook(store, ManualClock(1000.0))
        issued = book.issue("alice", by="admin")
        assert book.verify(issued.token) == "alice"
        assert book.cached(issued.token) is None
    finally:
        store.dispose()


def test_a_ledger_reads_without_the_counter_until_another_process_writes(
    two_processes: tuple[Store, Store],
) -> None:
    gateway, other = two_processes
    clock = ManualClock(1000.0)
    ledger, cli = Ledger(gateway, clock), Ledger(other, clock)
    ledger.sync_inventory("node-a", make_gpus("node-a", (2, A100)))
    for kernel_id in ("k1", "k2"):
        ledger.register_kernel(
            KernelRecord(kernel_id=kernel_id, user="alice", node="node-a", server_id="s")
        )
    ledger.request(kernel_id="k1", count=2)
    statements: list[str] = []

    def seen(_conn: object, _cursor: object, statement: str, *_: object) -> None:
        statements.append(statement)

    event.listen(gateway.engine, "before_cursor_execute", seen)
    try:
        until(lambda: ledger.queue_length() == 0 and not ledger.queue_length(), "settled")
        statements.clear()
        assert ledger.queue_length() == 0
        assert not [s for s in statements if "dlinfra_meta" in s]
        # another process queues a request: told by the feed, the next read sees it
        cli.request(kernel_id="k2", count=1)
        until(lambda: ledger.queue_length() == 1, "the other process's request is seen")
        assert [a.kernel_id for a in ledger.queue()] == ["k2"]
        statements.clear()
        assert ledger.queue_length() == 1
        assert not [s for s in statements if "dlinfra_meta" in s]
    finally:
        event.remove(gateway.engine, "before_cursor_execute", seen)


def test_a_feed_that_cannot_connect_says_so_once_a_minute(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(change_feed, "RECONNECT_S", 0.01)
    attempts: list[int] = []

    def refuse() -> object:
        attempts.append(1)
        raise OSError("connection refused")

    feed = ChangeFeed(refuse, "me")
    with caplog.at_level(logging.WARNING, logger="jupyter_dlinfra.core.change_feed"):
        for _ in range(3):
            feed._say("cannot listen (%s)", OSError("connection refused"))
        feed.start()
        until(lambda: len(attempts) >= 2, "two attempts")
        feed.stop()
    assert len([r for r in caplog.records if "cannot listen" in r.getMessage()]) == 1
    assert not feed.live
