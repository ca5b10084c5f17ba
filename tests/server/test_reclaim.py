"""Idle reclaim in a real server with real kernels: warn, keep, reclaim by each action.

The periodic loops do not run under pytest-jupyter, so each test drives the telemetry pass itself
(``service.sample()``) and polls with a deadline. Thresholds are fractions of a second.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from server_kit import register

from jupyter_dlinfra.core.models import AllocationState

Api = Callable[..., Awaitable[tuple[int, Any]]]

FAST = {
    "idle_after": 0.05,
    "warn_after": 0.1,
    "reclaim_after": 0.6,
    "keep_extension": 0.8,
    "max_keeps": 1,
}


@pytest.fixture
def dlinfra_config() -> dict[str, Any]:
    return {"simulated_gpus": 2, "user_name": "alice", "admin_users": ["alice"], **FAST}


async def _start_kernel(jp_fetch: Any, app: Any) -> str:
    started = await jp_fetch("api", "kernels", method="POST", body=json.dumps({"name": "python3"}))
    kernel_id: str = json.loads(started.body)["id"]
    await _until(lambda: app.service.ledger.kernel(kernel_id).pid is not None, "a kernel pid")
    return kernel_id


async def _until(predicate: Callable[[], Any], what: str, timeout: float = 30.0) -> Any:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        value = predicate()
        if value:
            return value
        assert loop.time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)


async def _drive(app: Any, predicate: Callable[[], Any], what: str, timeout: float = 30.0) -> Any:
    """Run telemetry passes until ``predicate`` holds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        await app.service.sample()
        value = predicate()
        if value:
            return value
        assert loop.time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


def _kinds(app: Any, kernel_id: str) -> list[str]:
    return [e.kind for e in app.service.ledger.events() if e.kernel_id == kernel_id]


async def _grant(api: Api, kernel_id: str, count: int = 1) -> dict[str, Any]:
    status, alloc = await api("POST", "allocations", {"kernel_id": kernel_id, "count": count})
    assert status == 201, alloc
    return alloc  # type: ignore[no-any-return]


def _idle_all(app: Any) -> None:
    for gpu in app.service.provider.devices():
        app.service.provider.set_load(gpu.uuid, 0.0)


async def test_warned_kept_warned_again_then_released_and_the_queue_advances(
    jp_fetch: Any, api: Api, dlinfra_app: Any
) -> None:
    app = dlinfra_app
    _idle_all(app)
    idle_kernel = await _start_kernel(jp_fetch, app)
    waiting_kernel = await _start_kernel(jp_fetch, app)
    await _grant(api, idle_kernel, 2)
    queued = await _grant(api, waiting_kernel, 1)
    assert queued["state"] == "queued"
    old_pid = app.service.ledger.kernel(idle_kernel).pid

    await _drive(app, lambda: "idle_warning" in _kinds(app, idle_kernel), "the warning")
    status, usage = await api("GET", f"kernels/{idle_kernel}/usage")
    assert status == 200 and usage["idle"]["state"] == "warned"
    assert usage["idle"]["keeps_left"] == 1 and usage["idle"]["action"] == "release"

    status, kept = await api("POST", f"kernels/{idle_kernel}/keep", {})
    assert status == 200, kept
    assert kept["state"] == "idle" and kept["keeps_left"] == 0
    # the keep is recorded with who asked
    kept_event = [e for e in app.service.ledger.events() if e.kind == "idle_kept"][-1]
    assert kept_event.detail["who"] == "alice"

    await _drive(
        app, lambda: _kinds(app, idle_kernel).count("idle_warning") == 2, "the second warning"
    )
    status, err = await api("POST", f"kernels/{idle_kernel}/keep", {})
    assert status == 409 and "kept 1 times already" in err["message"]

    await _drive(app, lambda: "idle_reclaimed" in _kinds(app, idle_kernel), "the reclaim")
    ended = app.service.ledger.allocations(kernel_id=idle_kernel, active=False)
    assert [a.state for a in ended] == [AllocationState.RELEASED]
    assert ended[0].end_reason.startswith("reclaimed: idle for")
    # the GPUs went to the head of the queue at once
    granted = app.service.ledger.allocation(queued["id"])
    assert granted.state is AllocationState.GRANTED
    # the kernel is restarted without GPUs, and told why at its launch (the message is consumed)
    await _until(
        lambda: app.service.ledger.kernel(idle_kernel).pid not in (None, old_pid),
        "the restarted kernel",
    )
    assert app.service.idle_book.take_message(idle_kernel) is None
    assert idle_kernel in app.serverapp.kernel_manager


async def test_a_busy_gpu_is_never_idle_and_use_resets_the_idle_clock(
    jp_fetch: Any, api: Api, dlinfra_app: Any
) -> None:
    app = dlinfra_app
    kernel_id = await _start_kernel(jp_fetch, app)
    alloc = await _grant(api, kernel_id)
    gpu = alloc["gpus"][0]["uuid"]
    app.service.provider.set_load(gpu, 80.0)
    for _ in range(5):
        await app.service.sample()
        await asyncio.sleep(0.05)
    assert app.service.idle_book.state(kernel_id).phase.value == "active"
    app.service.provider.set_load(gpu, 0.0)
    await _drive(app, lambda: "idle_warning" in _kinds(app, kernel_id), "the warning")
    app.service.provider.set_load(gpu, 50.0)
    await _drive(app, lambda: "gpu_active" in _kinds(app, kernel_id), "back to active")
    assert app.service.idle_book.state(kernel_id).phase.value == "active"
    assert app.service.ledger.allocation(alloc["id"]).state is AllocationState.GRANTED


async def test_notify_takes_nothing_but_records_the_reclaim(
    jp_fetch: Any, api: Api, dlinfra_app: Any
) -> None:
    app = dlinfra_app
    _idle_all(app)
    status, _ = await api("PUT", "policy", {"action": "notify"})
    assert status == 200
    kernel_id = await _start_kernel(jp_fetch, app)
    alloc = await _grant(api, kernel_id)
    pid = app.service.ledger.kernel(kernel_id).pid
    await _drive(app, lambda: "idle_reclaimed" in _kinds(app, kernel_id), "the dry-run reclaim")
    event = [e for e in app.service.ledger.events() if e.kind == "idle_reclaimed"][-1]
    assert event.detail["action"] == "notify"
    assert app.service.ledger.allocation(alloc["id"]).state is AllocationState.GRANTED
    assert app.service.ledger.kernel(kernel_id).pid == pid
    # one record per idle stretch, not one per sample
    for _ in range(3):
        await app.service.sample()
    assert _kinds(app, kernel_id).count("idle_reclaimed") == 1
    # and Prometheus sees it
    scraped = (await jp_fetch("dlinfra", "metrics")).body.decode()
    assert 'dlinfra_idle_events_total{action="notify",kind="idle_reclaimed"} 1.0' in scraped
    assert 'dlinfra_idle_events_total{action="notify",kind="idle_warning"} 1.0' in scraped
    assert 'dlinfra_idle_kernels{state="reclaimed"} 1.0' in scraped


async def test_shutdown_action_frees_the_gpus_and_ends_the_kernel(
    jp_fetch: Any, api: Api, dlinfra_app: Any
) -> None:
    app = dlinfra_app
    _idle_all(app)
    await api("PUT", "policy", {"action": "shutdown"})
    kernel_id = await _start_kernel(jp_fetch, app)
    alloc = await _grant(api, kernel_id)
    await _drive(
        app, lambda: kernel_id not in app.serverapp.kernel_manager, "the kernel's shutdown"
    )
    assert app.service.ledger.allocation(alloc["id"]).state is AllocationState.RELEASED


async def test_an_exempt_user_is_never_warned(jp_fetch: Any, api: Api, dlinfra_app: Any) -> None:
    app = dlinfra_app
    _idle_all(app)
    status, view = await api("PUT", "policy", {"users": {"alice": {"exempt": True}}})
    assert status == 200 and view["policy"]["users"] == {"alice": {"exempt": True}}
    kernel_id = await _start_kernel(jp_fetch, app)
    await _grant(api, kernel_id)
    for _ in range(6):
        await app.service.sample()
        await asyncio.sleep(0.05)
    assert not [k for k in _kinds(app, kernel_id) if k.startswith("idle_")]
    status, usage = await api("GET", f"kernels/{kernel_id}/usage")
    assert usage["idle"] == {"state": "exempt"}
    status, err = await api("POST", f"kernels/{kernel_id}/keep", {})
    assert status == 409 and "exempt" in err["message"]


async def test_the_notice_keep_action_keeps_and_bad_actions_are_refused(
    jp_fetch: Any, api: Api, dlinfra_app: Any
) -> None:
    app = dlinfra_app
    _idle_all(app)
    kernel_id = await _start_kernel(jp_fetch, app)
    await _grant(api, kernel_id)
    await _drive(app, lambda: "idle_warning" in _kinds(app, kernel_id), "the warning")
    warning = [e for e in app.service.ledger.events() if e.kind == "idle_warning"][-1]
    status, err = await api("POST", f"notices/{warning.seq}/actions/snooze", {})
    assert status == 400 and err["reason"] == "bad_action"
    status, err = await api("POST", "notices/999999/actions/keep", {})
    assert status == 404 and err["reason"] == "no_notice"
    status, err = await api("POST", "notices/abc/actions/keep", {})
    assert status == 400
    status, kept = await api("POST", f"notices/{warning.seq}/actions/keep", {})
    assert status == 200 and kept["kernel_id"] == kernel_id and kept["state"] == "idle"


async def test_usage_shows_hints_and_stays_private(
    jp_fetch: Any, api: Api, dlinfra_app: Any
) -> None:
    app = dlinfra_app
    _idle_all(app)
    await api("PUT", "policy", {"reclaim_after": 0})  # warnings only: the kernel stays
    kernel_id = await _start_kernel(jp_fetch, app)
    alloc = await _grant(api, kernel_id)
    gpu = alloc["gpus"][0]["uuid"]

    def hinted() -> bool:
        latest = app.service.reclaimer.latest.get(kernel_id)
        return bool(latest and any(h.code == "idle_between_cells" for h in latest[1]))

    await _drive(app, hinted, "the idle-between-cells hint")
    status, usage = await api("GET", f"kernels/{kernel_id}/usage")
    assert status == 200
    assert [h["code"] for h in usage["hints"]] == ["idle_between_cells"]
    assert usage["held"] == [gpu] and usage["processes"] >= 1
    assert usage["gpus"][0]["utilization_percent"] == 0.0
    # the snapshot of the event stream carries the same
    snapshot = await app.service.events.refresh()
    body = json.loads(snapshot.frame.decode().split("data: ", 1)[1])
    assert body["hints"][kernel_id][0]["code"] == "idle_between_cells"
    assert body["idle"][kernel_id]["state"] in ("idle", "warned")


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"reclaim_after": 0.05}, "reclaim_after"),
        ({"idle_util_percent": 150}, "idle_util_percent"),
        ({"action": "explode"}, "action"),
        ({"max_keeps": 1.5}, "max_keeps"),
        ({"groups": {"ml": {"warn_after": "soon"}}}, "groups.ml.warn_after"),
        ({"users": {"bob": {"exempt": "yes"}}}, "users.bob.exempt"),
        ({"bogus": 1}, "bogus"),
    ],
)
async def test_a_bad_policy_is_a_400_naming_the_field(
    api: Api, dlinfra_app: Any, body: dict[str, Any], field: str
) -> None:
    status, err = await api("PUT", "policy", body)
    assert status == 400, err
    assert err["reason"] == "bad_policy" and err["message"].startswith(f"{field}: ")
    status, view = await api("GET", "policy")
    assert view["source"] == "config" and view["changes"] == []


async def test_policy_changes_are_persisted_and_audited(api: Api, dlinfra_app: Any) -> None:
    status, view = await api("GET", "policy")
    assert status == 200 and view["source"] == "config" and view["editable"] is True
    assert view["policy"]["reclaim_after"] == FAST["reclaim_after"]
    status, view = await api("PUT", "policy", {"reclaim_after": 7200, "warn_after": 3600})
    assert status == 200, view
    assert view["source"] == "api" and view["updated_by"] == "alice"
    assert view["policy"]["reclaim_after"] == 7200 and view["policy"]["idle_after"] == 0.05
    assert {(c["field"], c["old"], c["new"], c["who"]) for c in view["changes"]} == {
        ("reclaim_after", 0.6, 7200.0, "alice"),
        ("warn_after", 0.1, 3600.0, "alice"),
    }
    stored = dlinfra_app.service.idle_book.stored_policy()
    assert stored.policy.default.reclaim_after == 7200


@pytest.mark.parametrize("dlinfra_config", [{"simulated_gpus": 1, "user_name": "bob"}])
async def test_non_admins_read_the_policy_but_cannot_change_it(
    api: Api, dlinfra_app: Any, dlinfra_config: dict[str, Any]
) -> None:
    status, view = await api("GET", "policy")
    assert status == 200 and view["editable"] is False
    status, err = await api("PUT", "policy", {"reclaim_after": 7200})
    assert status == 403 and err["reason"] == "not_admin"
    status, err = await api("POST", "policy/simulate", {"hours": 1})
    assert status == 403
    status, me = await api("GET", "me")
    assert me["user"] == "bob" and me["admin"] is False

    register(dlinfra_app, "carols-kernel", user="carol")
    for method, path in (("GET", "usage"), ("POST", "keep")):
        status, err = await api(
            method, f"kernels/carols-kernel/{path}", {} if method == "POST" else None
        )
        assert status == 403 and "belongs to carol" in err["message"], (path, err)
    assert dlinfra_app.service.idle_book.stored_policy() is None


async def test_a_kernel_token_is_never_an_admin(api: Api, dlinfra_app: Any) -> None:

    register(dlinfra_app, "k-token", token="secret-token")
    headers = {"Authorization": "DLInfra-Kernel secret-token"}
    status, err = await api("PUT", "policy", {"max_keeps": 9}, headers=headers)
    assert status == 403 and err["reason"] == "not_admin"
    status, view = await api("GET", "policy", headers=headers)
    assert status == 200 and view["editable"] is False


async def test_the_dry_run_replays_the_recorded_usage(api: Api, dlinfra_app: Any) -> None:
    from jupyter_dlinfra.core.books.idle import UsageBucket

    book = dlinfra_app.service.idle_book
    now = dlinfra_app.service.ledger.clock.now()
    start = now - 3 * 3600
    buckets = []
    # kernel "lazy" (2 GPUs) idles for 2 h; kernel "busy" works all the time
    for minute in range(120):
        for kid, util in (("lazy", 0.0), ("busy", 90.0)):
            bucket = UsageBucket(
                kernel_id=kid, bucket=start + 60 * minute, user="alice", path=None, gpus=2
            )
            bucket.add(util, 0)
            buckets.append(bucket)
    book.record_usage(buckets)
    policy = {"idle_after": 600, "warn_after": 1200, "reclaim_after": 1800}
    status, report = await api("POST", "policy/simulate", {"hours": 4, "policy": policy})
    assert status == 200, report
    assert report["kernels_seen"] == 2 and report["warnings"] == 1 and report["reclaims"] == 1
    assert [k["kernel_id"] for k in report["kernels"]] == ["lazy"]
    # reclaimed at minute 30, idle until the last bucket at minute 119: 89 min on 2 GPUs
    assert report["recovered_gpu_hours"] == pytest.approx(2 * 89 / 60, abs=1e-3)
    assert report["policy"]["reclaim_after"] == 1800
    # the dry run changes nothing
    status, view = await api("GET", "policy")
    assert view["source"] == "config"
    for bad in ({"hours": 0}, {"hours": "x"}, {"hours": 1, "extra": 1}):
        status, err = await api("POST", "policy/simulate", bad)
        assert status == 400, bad
    status, err = await api("POST", "policy/simulate", {"policy": {"reclaim_after": -1}})
    assert status == 400 and err["message"].startswith("reclaim_after: ")
