"""A ledger's state in memory that is replaced is freed at once, without the cyclic collector, and
a server's ledger freezes the long-lived objects once, after its first load.

A server freezes its objects out of the collector's sight after start-up
(``freeze_loaded_state``): a state loaded then and replaced later (another process wrote) must
not be kept alive by a reference cycle, or it would never be freed."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator
from pathlib import Path

import pytest

from jupyter_dlinfra.core.books import ledger as ledger_module
from jupyter_dlinfra.core.books.ledger import Ledger
from jupyter_dlinfra.core.models import AllocationState
from jupyter_dlinfra.core.scheduling.types import Demand
from jupyter_dlinfra.core.store import Store

from .kit import Kit


@pytest.fixture
def busy(tmp_path: Path) -> Iterator[Kit]:
    """Two nodes with grants and a queue: requests pinned to a node and requests of the pool
    (any node), so that every part of the scheduler holds something."""
    kit = Kit.open(f"sqlite:///{tmp_path / 'ledger.db'}")
    try:
        kit.node("node-a")
        kit.node("node-b")
        for i in range(6):
            kit.kernel(f"k{i}", node="node-a" if i % 2 else "node-b", user=f"u{i % 3}")
            kit.ledger.request(kernel_id=f"k{i}", count=2)
        for i in range(2):
            kit.kernel(f"job{i}", node="node-a", user="u9")
            kit.ledger.request(kernel_id=f"job{i}", count=4, anywhere=True)
        assert kit.ledger.queue_length() >= 2
        yield kit
    finally:
        kit.close()


def _another_process_writes(kit: Kit) -> None:
    """A change through a second ledger on the same store, as another server would make it."""
    other_store = Store(kit.url)
    try:
        other = Ledger(other_store, kit.clock)
        granted = next(a for a in other.allocations() if a.state is AllocationState.GRANTED)
        other.release(granted.id, reason="released by the user")
    finally:
        other_store.dispose()


def test_a_state_loaded_again_is_freed_without_the_cycle_collector(busy: Kit) -> None:
    ledger = busy.ledger
    ledger.queue_length()
    first = ledger._cache
    assert first is not None
    dropped = weakref.ref(first.sched)
    _another_process_writes(busy)
    del first
    gc.disable()
    try:
        assert ledger.queue_length() >= 1  # loads the state again: the other process wrote
        assert ledger._cache is not None and ledger._cache.sched is not dropped()
        assert dropped() is None, "the replaced scheduler is kept alive by a reference cycle"
    finally:
        gc.enable()


def test_a_dropped_scheduler_says_so_when_used(busy: Kit) -> None:
    cache = busy.ledger._cache
    assert cache is not None
    cache.dispose()
    with pytest.raises(RuntimeError, match="dropped"):
        cache.sched.submit(
            Demand(
                id=999,
                user="u1",
                count=1,
                klass=cache.policy.kernel_class,
                submitted_at=busy.clock.now(),
                node="node-a",
            )
        )


def test_a_servers_ledger_freezes_once_after_its_first_load(
    busy: Kit, monkeypatch: pytest.MonkeyPatch
) -> None:
    frozen: list[int] = []
    monkeypatch.setattr(ledger_module, "freeze_long_lived", lambda: frozen.append(1))
    store = Store(busy.url)
    try:
        ledger = Ledger(store, busy.clock, freeze_loaded_state=True)
        assert frozen == []  # nothing loaded yet
        ledger.queue_length()
        assert frozen == [1]
        _another_process_writes(busy)
        ledger.queue_length()  # loaded again: the first, frozen state was disposed of
        assert frozen == [1]
        plain = Ledger(store, busy.clock)
        plain.queue_length()
        assert frozen == [1]
    finally:
        store.dispose()


def test_freezing_also_spaces_out_the_collectors_passes() -> None:
    """In a process of its own (the test process must keep Python's collector as it is): after
    the freeze, young collections wait for 50,000 new objects and full passes for 2,000 of
    them (see ``freeze_long_lived``)."""
    import subprocess
    import sys

    code = (
        "import gc\n"
        "from jupyter_dlinfra.core.books.ledger import freeze_long_lived\n"
        "assert gc.get_threshold() == (700, 10, 10), gc.get_threshold()\n"
        "freeze_long_lived()\n"
        "print(gc.get_threshold(), gc.get_freeze_count() > 0)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"{ledger_module.SERVER_GC_THRESHOLDS} True"
