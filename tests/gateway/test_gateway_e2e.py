"""One team gateway, two people's Jupyter servers pointed at it with --gateway-url: kernels, %gpu,
jobs and the event stream all act on the gateway's ledger, and nobody touches another's work."""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Callable
from typing import Any

import pytest
import websocket
from gateway_kit import Team

from jupyter_dlinfra.testing.server import ServerProcess, wait_until, write_notebook


def test_a_kernel_started_from_a_users_server_runs_on_the_gateway_and_gets_gpus(
    team: Team, user_server: Callable[..., ServerProcess]
) -> None:
    alice = user_server("alice")
    kernel = alice.start_kernel()
    # the kernel is the gateway's: its own server has none, the gateway lists it for alice
    status, listed = team.call("alice", "GET", "api/kernels")
    assert status == 200 and [k["id"] for k in listed] == [kernel.kernel_id]
    # alice's server waits for a kernel start as long as the gateway waits for a pod: 300 s
    # (GatewayClient's default is 42), less its pad, passed to the kernel
    assert kernel.value("__import__('os').environ['KERNEL_LAUNCH_TIMEOUT']") == "298"
    out = kernel.execute("%gpu 2")
    assert "Granted 2 GPUs" in out.text, out.text
    # the sidebar's calls go to alice's server, which forwards them to the gateway
    mine = alice.get("dlinfra/api/allocations")["allocations"]
    assert [(a["user"], a["count"], a["state"]) for a in mine] == [("alice", 2, "granted")]
    assert mine[0]["kernel_id"] == kernel.kernel_id
    # released through the forward as the sidebar does: the gateway's 204 passes back unchanged
    status, body, _ = alice.request("DELETE", f"dlinfra/api/allocations/{mine[0]['id']}")
    assert (status, body) == (204, None), body
    assert not alice.get("dlinfra/api/allocations")["allocations"]
    out = kernel.execute("%gpu 2")
    assert "Granted 2 GPUs" in out.text, out.text
    # the gateway's ledger is the one everybody sees
    status, cluster = team.call("bob", "GET", "dlinfra/api/cluster")
    held = [g for n in cluster["nodes"] for g in n["gpus"] if g.get("holder")]
    assert status == 200 and {g["holder"]["user"] for g in held} == {"alice"}
    kernel.shutdown()
    wait_until(
        lambda: not alice.get("dlinfra/api/allocations")["allocations"],
        timeout=30,
        what="the kernel's GPUs to be released when it shuts down",
    )


def test_two_users_cannot_touch_each_others_kernels_or_jobs(
    team: Team, user_server: Callable[..., ServerProcess]
) -> None:
    alice = user_server("alice")
    bob = user_server("bob")
    kernel = alice.start_kernel()
    kernel.execute("%gpu 1")
    kid = kernel.kernel_id
    # bob does not see alice's kernel, through his server or at the gateway
    assert bob.get("api/kernels") == []
    assert team.call("bob", "GET", "api/kernels") == (200, [])
    for method, path in (
        ("GET", f"api/kernels/{kid}"),
        ("DELETE", f"api/kernels/{kid}"),
        ("POST", f"api/kernels/{kid}/interrupt"),
        ("POST", f"api/kernels/{kid}/restart"),
        ("POST", f"dlinfra/api/kernels/{kid}/restart"),
    ):
        status, body = team.call("bob", method, path, {} if method == "POST" else None)
        assert status == 403, (method, path, status, body)
        assert "alice" in json.dumps(body), body
    with pytest.raises(websocket.WebSocketBadStatusException) as refused:
        websocket.create_connection(
            f"ws://127.0.0.1:{team.gateway.port}/api/kernels/{kid}/channels",
            header=[f"Authorization: token {team.tokens['bob']}"],
            timeout=10,
            http_proxy_host=None,
        )
    assert refused.value.status_code == 403
    allocation = alice.get("dlinfra/api/allocations")["allocations"][0]
    status, _, _ = bob.request("DELETE", f"dlinfra/api/allocations/{allocation['id']}")
    assert status == 403
    # jobs: bob neither lists nor cancels alice's
    write_notebook(alice.workdir / "root" / "slow.ipynb", "import time\ntime.sleep(60)")
    submitted = alice.post("dlinfra/api/jobs", {"path": "slow.ipynb", "gpus": 0})
    assert bob.get("dlinfra/api/jobs?state=all")["jobs"] == []
    status, body, _ = bob.request("DELETE", f"dlinfra/api/jobs/{submitted['id']}")
    assert status == 403, body
    # an admin reaches both
    status, everyone = team.call("admin", "GET", "api/kernels")
    assert status == 200 and kid in {k["id"] for k in everyone}
    status, jobs = team.call("admin", "GET", "dlinfra/api/jobs?user=*")
    assert status == 200 and [j["user"] for j in jobs["jobs"]] == ["alice"]
    cancelled = alice.delete(f"dlinfra/api/jobs/{submitted['id']}")
    assert cancelled["user"] == "alice"
    # the kernel still works for alice
    assert kernel.value("6 * 7") == 42


def test_a_notebook_submitted_through_a_users_server_runs_on_the_gateway(
    team: Team, user_server: Callable[..., ServerProcess]
) -> None:
    alice = user_server("alice")
    write_notebook(
        alice.workdir / "root" / "exp" / "train.ipynb",
        "%gpu 1\nimport os\nprint('devices', os.environ.get('CUDA_VISIBLE_DEVICES'))",
    )
    job = alice.post("dlinfra/api/jobs", {"path": "exp/train.ipynb"})
    assert job["user"] == "alice" and job["gpus"] == 1

    def ended() -> Any:
        current = alice.get(f"dlinfra/api/jobs/{job['id']}")
        return current if current["state"] in ("succeeded", "failed") else None

    final = wait_until(ended, timeout=120, what="the job to end")
    log = alice.get(f"dlinfra/api/jobs/{job['id']}/log")["text"]
    assert final["state"] == "succeeded", log
    assert "devices GPU-" in log
    # outputs come back through the forward, as files
    req = urllib.request.Request(
        alice.url + f"dlinfra/api/jobs/{job['id']}/output?format=notebook",
        headers={"Authorization": f"token {alice.token}"},
    )
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(req, timeout=30) as resp:
        executed = json.loads(resp.read())
    assert "devices GPU-" in json.dumps(executed["cells"])
    # a path that is not on alice's server is her mistake, said plainly
    status, body, _ = alice.request("POST", "dlinfra/api/jobs", {"path": "nowhere.ipynb"})
    assert status == 404 and "nowhere.ipynb" in body["message"]


def test_the_event_stream_is_forwarded(
    team: Team, user_server: Callable[..., ServerProcess]
) -> None:
    alice = user_server("alice")
    req = urllib.request.Request(
        alice.url + "dlinfra/api/events",
        headers={"Authorization": f"token {alice.token}", "Accept": "text/event-stream"},
    )
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(req, timeout=30) as resp:
        assert resp.headers["Content-Type"].startswith("text/event-stream")
        # the stream's retry line may come in a read of its own, before the first event
        first = b""
        while b"data:" not in first:
            chunk = resp.read1(4096)
            assert chunk, f"the stream ended before its first event: {first[:200]!r}"
            first += chunk
    assert first.startswith((b"event:", b"retry: 3000\n\nevent:")), first[:200]


def test_the_gateway_lets_in_only_issued_tokens_and_serves_only_kernels_and_the_ledger(
    team: Team, user_server: Callable[..., ServerProcess]
) -> None:
    gw = team.gateway
    assert gw.request("GET", "api/kernels", headers={"Accept": "*/*"})[0] in (401, 403)
    assert gw.request("GET", "api/kernels", headers={"Authorization": "token nope"})[0] in (
        401,
        403,
    )
    # files, terminals and sessions on the gateway's own disk are for admins only
    assert team.call("alice", "GET", "api/contents")[0] == 403
    assert team.call("admin", "GET", "api/contents")[0] == 200
    assert team.call("alice", "GET", "api/kernelspecs")[0] == 200
    # a revoked token stops working at once, for bob's server too
    bob = user_server("bob")
    assert bob.get("dlinfra/api/me")["user"] == "bob"
    record = next(r for r in team.book.tokens("bob"))
    team.book.revoke(record.id)
    assert team.call("bob", "GET", "dlinfra/api/cluster")[0] in (401, 403)
    status, body, _ = bob.request("GET", "dlinfra/api/me")
    assert status in (401, 403), body


def test_a_users_server_says_so_when_the_gateway_is_down(
    team: Team, user_server: Callable[..., ServerProcess]
) -> None:
    alice = user_server("alice")
    team.gateway.stop()
    status, body, _ = alice.request("GET", "dlinfra/api/cluster")
    assert status == 502
    assert body["reason"] == "gateway_unreachable"
    assert team.gateway.url.rstrip("/") in body["message"]
