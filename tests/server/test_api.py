"""The REST API in a real jupyter server (pytest-jupyter), with real kernels where it matters."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from jupyter_client.provisioning.factory import KernelProvisionerFactory
from server_kit import register
from tornado.httpclient import HTTPClientError

from jupyter_dlinfra.server.handlers.base import KERNEL_AUTH_SCHEME


def kernel_auth(token: str) -> dict[str, str]:
    return {"Authorization": f"{KERNEL_AUTH_SCHEME} {token}"}


async def test_unauthenticated_calls_are_refused(jp_fetch: Any) -> None:
    for path in ("cluster", "allocations", "queue"):
        with pytest.raises(HTTPClientError) as info:
            await jp_fetch("dlinfra", "api", path, headers={"Authorization": ""})
        assert info.value.code == 403


async def test_cluster_lists_simulated_gpus(api: Any) -> None:
    status, body = await api("GET", "cluster")
    assert status == 200
    assert body["simulated"] is True
    assert body["provider"]["name"] == "simulated"
    assert "simulated" in body["provider"]["reason"]
    assert body["gpu_count"] == 4 and body["free_count"] == 4
    gpus = body["nodes"][0]["gpus"]
    assert [g["index"] for g in gpus] == [0, 1, 2, 3]
    assert all(g["simulated"] and g["uuid"].startswith("GPU-") for g in gpus)
    assert all(0 <= g["utilization_percent"] <= 100 for g in gpus)


async def test_grant_queue_release_round_trip(api: Any, dlinfra_app: Any) -> None:
    for kid in ("k1", "k2", "k3"):
        register(dlinfra_app, kid)
    status, first = await api("POST", "allocations", {"kernel_id": "k1", "count": 3})
    assert status == 201 and first["state"] == "granted" and len(first["gpus"]) == 3
    status, second = await api("POST", "allocations", {"kernel_id": "k2", "count": 2})
    assert status == 201 and second["state"] == "queued" and second["position"] == 1
    assert "1 of 4 free" in second["waiting_reason"]
    assert second["simulated"] is True
    status, queue = await api("GET", "queue")
    assert [e["id"] for e in queue["queue"]] == [second["id"]]
    status, cluster = await api("GET", "cluster")
    assert cluster["queue_length"] == 1
    holders = {g["uuid"]: g["holder"] for g in cluster["nodes"][0]["gpus"]}
    assert {u for u, h in holders.items() if h and h["kernel_id"] == "k1"} == {
        g["uuid"] for g in first["gpus"]
    }
    status, _ = await api("DELETE", f"allocations/{first['id']}")
    assert status == 204
    status, now = await api("GET", f"allocations/{second['id']}")
    assert now["state"] == "granted" and len(now["gpus"]) == 2
    status, ended = await api("GET", f"allocations/{first['id']}")
    assert ended["state"] == "released" and ended["end_reason"] == "released by the user"
    status, active = await api("GET", "allocations")
    assert {a["kernel_id"] for a in active["allocations"]} == {"k2"}
    status, everything = await api("GET", "allocations?state=all")
    assert [a["state"] for a in everything["allocations"]] == ["released", "granted"]


async def test_long_poll_wakes_on_grant(api: Any, dlinfra_app: Any) -> None:
    register(dlinfra_app, "holder")
    register(dlinfra_app, "waiter")
    _, held = await api("POST", "allocations", {"kernel_id": "holder", "count": 4})
    _, queued = await api("POST", "allocations", {"kernel_id": "waiter", "count": 1})
    poll = asyncio.ensure_future(api("GET", f"allocations/{queued['id']}?wait=30"))
    await asyncio.sleep(0)  # let the poll reach the server before the release
    await api("DELETE", f"allocations/{held['id']}")
    status, body = await asyncio.wait_for(poll, timeout=30)
    assert status == 200 and body["state"] == "granted"


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        ("{not json", "bad_json"),
        ("[1, 2]", "bad_json"),
        ('{"kernel_id": "k", "count": 1, "gpus": 2}', "bad_field"),
        ('{"count": 1}', "bad_field"),
        ('{"kernel_id": "k", "count": "2"}', "bad_field"),
        ('{"kernel_id": "k", "count": true}', "bad_field"),
        ('{"kernel_id": "k", "count": 1.5}', "bad_field"),
        ('{"kernel_id": "k", "count": 1, "model": 7}', "bad_field"),
        ('{"kernel_id": "k", "count": 0}', "invalid"),
        ('{"kernel_id": "k", "count": -3}', "invalid"),
        ('{"kernel_id": "k", "count": 5}', "too_many"),
        ('{"kernel_id": "k", "count": 1, "model": "H100"}', "unknown_model"),
    ],
)
async def test_bad_requests_get_400_with_a_reason(
    api: Any, dlinfra_app: Any, raw: str, reason: str
) -> None:
    register(dlinfra_app, "k")
    status, body = await api("POST", "allocations", raw=raw)
    assert status == 400, body
    assert body["reason"] == reason
    assert body["message"] and "Traceback" not in body["message"]


@pytest.mark.parametrize(
    ("method", "path", "status", "reason"),
    [
        ("GET", "allocations/abc", 400, "bad_id"),
        ("DELETE", "allocations/1x", 400, "bad_id"),
        ("GET", "allocations/999", 404, "no_allocation"),
        ("DELETE", "allocations/999", 404, "no_allocation"),
        ("GET", "allocations/1?wait=-1", 400, "bad_query"),
        ("GET", "allocations/1?wait=soon", 400, "bad_query"),
        ("GET", "allocations?state=old", 400, "bad_query"),
        ("POST", "kernels/nope/restart", 404, "no_kernel"),
    ],
)
async def test_bad_paths_and_queries(
    api: Any, dlinfra_app: Any, method: str, path: str, status: int, reason: str
) -> None:
    register(dlinfra_app, "k")
    await api("POST", "allocations", {"kernel_id": "k", "count": 1})
    got, body = await api(method, path)
    assert (got, body["reason"]) == (status, reason), body


async def test_unknown_kernel_is_404(api: Any) -> None:
    status, body = await api("POST", "allocations", {"kernel_id": "ghost", "count": 1})
    assert status == 404 and body["reason"] == "no_kernel"


async def test_conflicting_second_request_is_409(api: Any, dlinfra_app: Any) -> None:
    register(dlinfra_app, "k")
    _, first = await api("POST", "allocations", {"kernel_id": "k", "count": 1})
    status, same = await api("POST", "allocations", {"kernel_id": "k", "count": 1})
    assert status == 201 and same["id"] == first["id"]
    status, body = await api("POST", "allocations", {"kernel_id": "k", "count": 2})
    assert status == 409 and body["reason"] == "already_allocated"


async def test_kernel_token_acts_only_for_its_kernel(api: Any, dlinfra_app: Any) -> None:
    register(dlinfra_app, "mine", token="tok-mine")
    register(dlinfra_app, "other", token="tok-other")
    mine = kernel_auth("tok-mine")
    _, other_alloc = await api("POST", "allocations", {"kernel_id": "other", "count": 1})
    status, own = await api("POST", "allocations", {"count": 1}, headers=mine)
    assert status == 201 and own["kernel_id"] == "mine"
    status, body = await api(
        "POST", "allocations", {"kernel_id": "other", "count": 1}, headers=mine
    )
    assert status == 403 and body["reason"] == "forbidden"
    status, body = await api("DELETE", f"allocations/{other_alloc['id']}", headers=mine)
    assert status == 403
    status, body = await api("GET", f"allocations/{other_alloc['id']}", headers=mine)
    assert status == 403
    status, body = await api("GET", "allocations", headers=mine)
    assert [a["kernel_id"] for a in body["allocations"]] == ["mine"]
    status, body = await api("GET", "cluster", headers=mine)
    assert status == 200 and body["gpu_count"] == 4
    status, _ = await api("DELETE", f"allocations/{own['id']}", headers=mine)
    assert status == 204


async def test_invalid_kernel_token_is_refused(api: Any) -> None:
    status, body = await api("GET", "cluster", headers=kernel_auth("forged"))
    assert status == 403 and body["reason"] == "bad_kernel_token"


async def test_users_cannot_touch_kernels_of_others(api: Any, dlinfra_app: Any) -> None:
    register(dlinfra_app, "theirs", user="someone-else")
    status, body = await api("POST", "allocations", {"kernel_id": "theirs", "count": 1})
    assert status == 403 and "someone-else" in body["message"]


async def test_provisioner_is_the_default_and_registers_kernels(
    jp_fetch: Any, dlinfra_app: Any
) -> None:
    assert KernelProvisionerFactory.instance().default_provisioner_name == "dlinfra-provisioner"
    resp = await jp_fetch("api", "kernels", method="POST", body=json.dumps({"name": "python3"}))
    kernel_id = json.loads(resp.body)["id"]
    try:
        record = dlinfra_app.service.ledger.kernel(kernel_id)
        assert record.pid is not None and record.user == dlinfra_app.service.settings.user
    finally:
        await jp_fetch("api", "kernels", kernel_id, method="DELETE")
    assert dlinfra_app.service.ledger.kernels() == []
