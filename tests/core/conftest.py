"""Fixtures for the core tests: a store URL on SQLite and on a real, throw-away PostgreSQL
(``fresh_postgres_db``, from tests/conftest.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from jupyter_dlinfra.core.books.ledger import Ledger
from jupyter_dlinfra.core.clock import ManualClock

from .kit import Kit


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
