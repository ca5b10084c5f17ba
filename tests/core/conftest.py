"""Fixtures for the core tests: a store URL on SQLite and on a real, throw-away PostgreSQL."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from postgres_server import PostgresUnavailable, postgres_optional, start_postgres
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from jupyter_dlinfra.core import Ledger, ManualClock

from .kit import Kit


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A PostgreSQL server for the whole session; fails (never skips) unless told to skip."""
    try:
        with start_postgres() as url:
            yield url
    except PostgresUnavailable as err:
        if postgres_optional():
            pytest.skip(f"PostgreSQL unavailable: {err}")
        pytest.fail(f"PostgreSQL unavailable: {err}", pytrace=False)


@pytest.fixture
def fresh_postgres_db(postgres_url: str) -> Iterator[str]:
    """An empty database of its own on the session's server, dropped afterwards."""
    name = f"t_{uuid.uuid4().hex}"
    admin = create_engine(postgres_url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            # FILE_COPY: much quicker than the default WAL_LOG for a throw-away database
            conn.execute(text(f'CREATE DATABASE "{name}" STRATEGY = FILE_COPY'))
        yield make_url(postgres_url).set(database=name).render_as_string(hide_password=False)
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    finally:
        admin.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'ledger.db'}"
    return str(request.getfixturevalue("fresh_postgres_db"))


@pytest.fixture
def kit(store_url: str) -> Iterator[Kit]:
    kit = Kit.open(store_url)
    try:
        yield kit
    finally:
        kit.close()


@pytest.fixture
def ledger(kit: Kit) -> Ledger:
    """``Ledger(Store(store_url), ManualClock())``; ``kit`` has the shortcuts to populate it."""
    return kit.ledger


@pytest.fixture
def clock(kit: Kit) -> ManualClock:
    return kit.clock
