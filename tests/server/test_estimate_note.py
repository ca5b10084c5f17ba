"""A queued request's estimated start says what it rests on, in the API and in %gpu's line."""

from __future__ import annotations

from typing import Any

from server_kit import register

from jupyter_dlinfra.kernel.magics import queue_line


async def _ask(api: Any, kernel_id: str, count: int) -> dict[str, Any]:
    status, alloc = await api("POST", "allocations", {"kernel_id": kernel_id, "count": count})
    assert status == 201, alloc
    return alloc  # type: ignore[no-any-return]


async def _release(api: Any, alloc: dict[str, Any]) -> None:
    status, body = await api("DELETE", f"allocations/{alloc['id']}")
    assert status == 204, body


async def test_an_estimate_says_whether_it_rests_on_history(api: Any, dlinfra_app: Any) -> None:
    for kernel_id in ("holder", "waiter", "holder-2", "waiter-2"):
        register(dlinfra_app, kernel_id)

    # no grant has ended yet: the holder is assumed to keep its GPUs the default hour
    holder = await _ask(api, "holder", 4)
    waiter = await _ask(api, "waiter", 2)
    assert holder["estimate_basis"] is None and holder["estimate_note"] is None
    assert waiter["estimated_start"] and waiter["estimate_basis"] == "default"
    assert waiter["estimate_note"] == "assuming the default holding time of 1 h (no history yet)"
    _, queue = await api("GET", "queue")
    assert [a["estimate_basis"] for a in queue["queue"]] == ["default"]
    assert queue_line(waiter).endswith(
        ", assuming the default holding time of 1 h (no history yet)."
    )
    await _release(api, holder)
    await _release(api, waiter)

    # now interactive grants have a history
    await _ask(api, "holder-2", 4)
    waiter = await _ask(api, "waiter-2", 1)
    assert waiter["estimate_basis"] == "history"
    assert waiter["estimate_note"] == "from recent holding times"
    assert queue_line(waiter).endswith(", from recent holding times.")
