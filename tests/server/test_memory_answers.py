"""On PostgreSQL, with the change feed listening, the views a waiting ``%gpu`` and a sidebar
poll (an allocation, the user's own list, the queue's first page) are answered from the ledger's
memory on the event loop, without a statement: the same answers the database gives."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from server_kit import register
from sqlalchemy import event

from jupyter_dlinfra.server.allocation_waits import allocation_waits

DEADLINE_S = 10.0


@pytest.fixture
def dlinfra_config(fresh_postgres_db: str) -> dict[str, Any]:
    return {"simulated_gpus": 2, "db_url": fresh_postgres_db}


@pytest.fixture
def statements(dlinfra_app: Any) -> Iterator[list[str]]:
    seen: list[str] = []

    def count(_conn: object, _cursor: object, statement: str, *_: object) -> None:
        seen.append(statement)

    engine = dlinfra_app.service.ledger.store.engine
    event.listen(engine, "before_cursor_execute", count)
    yield seen
    event.remove(engine, "before_cursor_execute", count)


async def test_polled_views_come_from_memory_as_the_database_has_them(
    api: Any, dlinfra_app: Any, statements: list[str]
) -> None:
    ledger = dlinfra_app.service.ledger
    feed = ledger.store.feed
    assert feed is not None and feed.listening.wait(DEADLINE_S)
    register(dlinfra_app, "holder")
    held = ledger.request(kernel_id="holder", count=2)
    user = dlinfra_app.service.settings.user
    waiting = []
    for i in range(3):
        register(dlinfra_app, f"w{i}")
        waiting.append(ledger.request(kernel_id=f"w{i}", count=2).id)
    status, first = await api("GET", f"allocations/{waiting[1]}")
    assert status == 200 and first["position"] == 2
    status, mine = await api("GET", f"allocations?user={user}")
    assert status == 200
    status, queue = await api("GET", "queue?limit=2")
    assert status == 200
    statements.clear()
    # asked again: nothing changed, so nothing is read
    assert await api("GET", f"allocations/{waiting[1]}") == (200, first)
    assert await api("GET", f"allocations?user={user}") == (200, mine)
    assert await api("GET", "queue?limit=2") == (200, queue)
    assert statements == []
    # and they are what the database says
    assert first["waiting_reason"] == ledger.allocation(waiting[1]).waiting_reason
    assert [a["id"] for a in mine["allocations"]] == [held.id, *waiting]
    assert mine["allocations"][0]["gpus"] and mine["allocations"][0]["state"] == "granted"
    assert [a["id"] for a in queue["queue"]] == waiting[:2] and queue["total"] == 3
    # a change shows at once: the release grants the first waiting request
    assert (await api("DELETE", f"allocations/{held.id}"))[0] == 204
    status, granted = await api("GET", f"allocations/{waiting[0]}")
    assert status == 200 and granted["state"] == "granted" and len(granted["gpus"]) == 2
    status, moved = await api("GET", f"allocations/{waiting[2]}")
    assert status == 200 and moved["position"] == 2
    status, queue = await api("GET", "queue?limit=2")
    assert [a["id"] for a in queue["queue"]] == waiting[1:] and queue["total"] == 2
    status, missing = await api("GET", "allocations/999999")
    assert status == 404, missing


async def test_waiting_polls_are_watched_from_memory_and_read_only_what_a_change_dropped(
    api: Any, dlinfra_app: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    ledger = dlinfra_app.service.ledger
    feed = ledger.store.feed
    assert feed is not None and feed.listening.wait(DEADLINE_S)
    register(dlinfra_app, "holder")
    held = ledger.request(kernel_id="holder", count=2)
    waiting = []
    for i in range(3):
        register(dlinfra_app, f"w{i}")
        waiting.append(ledger.request(kernel_id=f"w{i}", count=2).id)
    assert (await api("GET", "queue"))[0] == 200  # the waiting rows read once, and kept
    calls: Counter[str] = Counter()
    read: list[list[int]] = []
    for name in ("ledger_version", "allocations_by_id", "allocation"):
        method = getattr(ledger, name)

        def counted(*args: Any, _name: str = name, _method: Any = method, **kw: Any) -> Any:
            calls[_name] += 1
            if _name == "allocations_by_id":
                read.append(sorted(args[0]))
            return _method(*args, **kw)

        monkeypatch.setattr(ledger, name, counted)
    waits = allocation_waits(dlinfra_app.service)
    polls = [asyncio.ensure_future(api("GET", f"allocations/{aid}?wait=30")) for aid in waiting]
    await _until(lambda: waits.waiting == 3 and waits.asleep, "every poll to wait")
    # the polls began from memory: no version nor request read on the pool
    assert calls == Counter()
    # a change that moves none of them (a request behind them) wakes the watcher, which
    # looks in memory only
    passes = waits.passes
    register(dlinfra_app, "late")
    ledger.request(kernel_id="late", count=2)
    dlinfra_app.service.calls.notify()
    await _until(lambda: waits.passes > passes and waits.asleep, "a pass after the change")
    assert calls == Counter() and not any(p.done() for p in polls)
    # the release grants the first: its row was dropped by the grant and is read again, alone;
    # the others moved up, told from memory
    assert (await api("DELETE", f"allocations/{held.id}"))[0] == 204
    answers = await asyncio.wait_for(asyncio.gather(*polls), timeout=DEADLINE_S)
    assert [(s, body["state"], body["position"]) for s, body in answers] == [
        (200, "granted", None),
        (200, "queued", 1),
        (200, "queued", 2),
    ]
    assert read == [[waiting[0]]] and calls["ledger_version"] == 0


async def _until(test: Callable[[], bool], what: str) -> None:
    deadline = asyncio.get_running_loop().time() + DEADLINE_S
    while not test():
        assert asyncio.get_running_loop().time() < deadline, f"timed out: {what}"
        await asyncio.sleep(0.01)
