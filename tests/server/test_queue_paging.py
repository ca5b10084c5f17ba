"""``GET /dlinfra/api/queue`` and ``GET allocations`` a page at a time, in a real
jupyter server (pytest-jupyter) with 4 simulated GPUs: one kernel holds them all, others wait."""

from __future__ import annotations

from typing import Any

import pytest
from server_kit import register

from jupyter_dlinfra.server.handlers.base import KERNEL_AUTH_SCHEME
from jupyter_dlinfra.server.handlers.gpus import (
    ALLOCATIONS_LIMIT,
    MAX_ALLOCATIONS_LIMIT,
    MAX_QUEUE_LIMIT,
    QUEUE_LIMIT,
)

WAITING = 7


def _fill(app: Any, waiting: int = WAITING) -> list[int]:
    """A kernel holding every GPU and ``waiting`` kernels waiting, alternately for 1 and 2 GPUs;
    the ids of the waiting requests in the order of service, as the ledger gives it."""
    ledger = app.service.ledger
    register(app, "holder", token="holder-token")
    ledger.request(kernel_id="holder", count=4)
    for i in range(waiting):
        register(app, f"w{i}", user="bob" if i % 2 else None)
        ledger.request(kernel_id=f"w{i}", count=1 + i % 2)
    return [a.id for a in ledger.queue()]


async def test_pages_follow_the_order_of_service_and_say_how_many_wait(
    api: Any, dlinfra_app: Any
) -> None:
    order = _fill(dlinfra_app)
    status, whole = await api("GET", "queue")
    assert status == 200
    assert [a["id"] for a in whole["queue"]] == order
    assert (whole["total"], whole["offset"], whole["limit"]) == (WAITING, 0, QUEUE_LIMIT)
    assert whole["next_offset"] is None
    assert [a["position"] for a in whole["queue"]] == list(range(1, WAITING + 1))

    # following next_offset reads the whole queue, in order, a page at a time
    seen: list[int] = []
    offset: int | None = 0
    pages = 0
    while offset is not None:
        _, page = await api("GET", f"queue?limit=3&offset={offset}")
        assert page["total"] == WAITING and page["limit"] == 3 and page["offset"] == offset
        assert len(page["queue"]) <= 3
        seen += [a["id"] for a in page["queue"]]
        offset = page["next_offset"]
        pages += 1
    assert seen == order and pages == 3

    _, past = await api("GET", "queue?offset=100")
    assert past["queue"] == [] and past["total"] == WAITING and past["next_offset"] is None
    _, count_only = await api("GET", "queue?limit=0")
    assert count_only["queue"] == [] and count_only["total"] == WAITING
    _, widest = await api("GET", f"queue?limit={MAX_QUEUE_LIMIT}")
    assert [a["id"] for a in widest["queue"]] == order

    node = dlinfra_app.service.settings.node
    _, here = await api("GET", f"queue?node={node}&limit=2&offset=1")
    assert [a["id"] for a in here["queue"]] == order[1:3] and here["total"] == WAITING
    _, elsewhere = await api("GET", "queue?node=no-such-node")
    assert elsewhere["queue"] == [] and elsewhere["total"] == 0


@pytest.mark.parametrize(
    ("query", "words"),
    [
        ("limit=-1", "limit must be a whole number from 0 to 1000, not '-1'"),
        ("limit=1.5", "limit must be a whole number from 0 to 1000"),
        ("limit=ten", "limit must be a whole number from 0 to 1000"),
        (f"limit={MAX_QUEUE_LIMIT + 1}", "limit must be a whole number from 0 to 1000"),
        ("offset=-5", "offset must be a whole number from 0 to"),
        ("offset=99999999999999999999", "offset must be a whole number from 0 to"),
        ("node=" + "n" * 256, "node must be at most 255 printable characters"),
    ],
)
async def test_bad_paging_values_are_refused_with_what_to_send(
    api: Any, query: str, words: str
) -> None:
    status, err = await api("GET", f"queue?{query}")
    assert status == 400 and err["reason"] == "bad_query"
    assert words in err["message"]


async def test_granted_allocations_are_listed_without_the_queue(api: Any, dlinfra_app: Any) -> None:
    _fill(dlinfra_app, waiting=3)
    status, granted = await api("GET", "allocations?state=granted")
    assert status == 200
    assert [(a["kernel_id"], a["state"]) for a in granted["allocations"]] == [("holder", "granted")]
    assert len(granted["allocations"][0]["gpus"]) == 4
    _, bobs = await api("GET", "allocations?state=granted&user=bob")
    assert bobs["allocations"] == []
    # a person's own requests, queued ones included: what the sidebar reads past the first page
    _, mine = await api("GET", "allocations?user=bob")
    assert [(a["kernel_id"], a["state"]) for a in mine["allocations"]] == [("w1", "queued")]
    # a kernel's token sees its own kernel's only, whatever it asks
    as_holder = {"Authorization": f"{KERNEL_AUTH_SCHEME} holder-token"}
    _, own = await api("GET", "allocations?state=granted", headers=as_holder)
    assert [a["kernel_id"] for a in own["allocations"]] == ["holder"]
    status, err = await api("GET", "allocations?state=queued")
    assert status == 400 and "'active', 'granted' or 'all'" in err["message"]


async def test_allocations_are_listed_a_page_at_a_time(api: Any, dlinfra_app: Any) -> None:
    """GET allocations pages as GET queue does: a sweep of thousands, or the whole history of
    ended ones, is not read and explained in one answer."""
    order = _fill(dlinfra_app)
    ledger = dlinfra_app.service.ledger
    ledger.release(order[-1], reason="cancelled")  # an ended one: listed with state=all only
    every = [a.id for a in ledger.allocations(active=False)]
    status, first = await api("GET", "allocations?state=all&limit=3")
    assert status == 200
    assert [a["id"] for a in first["allocations"]] == every[:3]
    assert (first["total"], first["offset"], first["limit"]) == (len(every), 0, 3)
    assert first["next_offset"] == 3
    seen: list[int] = []
    offset: int | None = 0
    while offset is not None:
        _, page = await api("GET", f"allocations?state=all&limit=3&offset={offset}")
        seen += [a["id"] for a in page["allocations"]]
        offset = page["next_offset"]
    assert seen == every
    # queued ones on a page are explained as on the queue's pages
    _, active = await api("GET", "allocations?limit=2&offset=1")
    assert (
        active["total"] == len(every) - 1
        and [a["id"] for a in active["allocations"]] == (every[1:3])
    )
    assert all(a["position"] is not None for a in active["allocations"])
    _, default = await api("GET", "allocations")
    assert default["limit"] == ALLOCATIONS_LIMIT and default["next_offset"] is None
    _, count_only = await api("GET", "allocations?user=bob&limit=0")
    assert count_only["allocations"] == [] and count_only["total"] == WAITING // 2
    for query in ("limit=-1", f"limit={MAX_ALLOCATIONS_LIMIT + 1}", "offset=x"):
        status, err = await api("GET", f"allocations?{query}")
        assert status == 400 and err["reason"] == "bad_query", query
