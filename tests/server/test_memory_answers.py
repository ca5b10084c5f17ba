"""On PostgreSQL, with the change feed listening, the views a waiting ``%gpu`` and a sidebar
poll (an allocation, the user's own list, the queue's first page) are answered from the ledger's
memory on the event loop, without a statement: the same answers the database gives."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from server_kit import register
from sqlalchemy import event

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
