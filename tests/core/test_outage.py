"""Which database errors mean "not now", and the backoff that waits them out."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy import exc as sa_exc

from jupyter_dlinfra.core.outage import Backoff, LedgerUnavailable, database_unavailable, describe


def test_backoff_doubles_up_to_its_cap_and_starts_again_after_a_success() -> None:
    backoff = Backoff(first=1.0, factor=2.0, cap=30.0)
    assert [backoff.next() for _ in range(8)] == [1, 2, 4, 8, 16, 30, 30, 30]
    backoff.reset()
    assert [backoff.next() for _ in range(2)] == [1, 2]


def test_backoff_stays_at_its_cap_however_long_the_outage() -> None:
    backoff = Backoff(first=0.5, factor=3.0, cap=10.0)
    for _ in range(5000):
        delay = backoff.next()
    assert delay == 10.0 and backoff.failures == 5000


@pytest.mark.parametrize(
    ("kwargs", "complaint"),
    [
        ({"first": 0.0}, "positive"),
        ({"factor": 0.5}, "at least 1"),
        ({"first": 5.0, "cap": 1.0}, "cap"),
    ],
)
def test_backoff_refuses_waits_that_make_no_sense(kwargs: dict[str, float], complaint: str) -> None:
    with pytest.raises(ValueError, match=complaint):
        Backoff(**kwargs)


def _dbapi(cls: type[sa_exc.DBAPIError], **kwargs: bool) -> sa_exc.DBAPIError:
    return cls("SELECT 1", {}, Exception("server closed the connection\ndetail"), **kwargs)


@pytest.mark.parametrize(
    ("err", "unavailable"),
    [
        (_dbapi(sa_exc.OperationalError), True),
        (_dbapi(sa_exc.InterfaceError), True),
        (_dbapi(sa_exc.DBAPIError, connection_invalidated=True), True),
        (sa_exc.TimeoutError("QueuePool limit of size 5 overflow 10 reached"), True),
        (LedgerUnavailable("away"), True),
        # a broken constraint is a bug to see, not an outage to wait out
        (_dbapi(sa_exc.IntegrityError), False),
        (_dbapi(sa_exc.DBAPIError), False),
        (_dbapi(sa_exc.ProgrammingError), False),
        (ValueError("no"), False),
    ],
)
def test_which_errors_say_the_database_is_away(err: BaseException, unavailable: bool) -> None:
    assert database_unavailable(err) is unavailable


def test_a_locked_sqlite_ledger_is_unavailable_not_an_internal_error(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite"
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("CREATE TABLE t (x INTEGER)")
    holder.execute("BEGIN IMMEDIATE")  # another process holds the write lock...
    # ...beyond this one's busy timeout (0 here, 60 s in the store)
    engine = create_engine(f"sqlite:///{path}", connect_args={"timeout": 0})
    try:
        with pytest.raises(sa_exc.OperationalError) as raised, engine.begin() as conn:
            conn.execute(text("INSERT INTO t VALUES (1)"))
    finally:
        engine.dispose()
        holder.close()
    assert database_unavailable(raised.value)
    unavailable = LedgerUnavailable.from_error(raised.value)
    assert unavailable.reason == "ledger_unavailable"
    assert unavailable.message == (
        "the GPU ledger's database is locked by another process; try again shortly"
    )
    assert describe(raised.value) == "database is locked"


def test_the_cause_is_the_drivers_first_line_cut_short() -> None:
    err = _dbapi(sa_exc.OperationalError)
    assert describe(err) == "server closed the connection"
    wrapped = LedgerUnavailable.from_error(err)
    wrapped.__cause__ = err
    assert describe(wrapped) == "server closed the connection"
    assert wrapped.message == "the GPU ledger's database is unreachable; try again shortly"
    assert len(describe(Exception("x" * 1000), limit=50)) == 50
