"""A JupyterHub user's server reaches the gateway with its Hub token: a real JupyterHub (with
its configurable-http-proxy from npm) says whose token it is, and nothing needs issuing."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from gateway_kit import Team, start_gateway, stop_and_keep_log

from jupyter_dlinfra.testing.server import ServerProcess, free_port, wait_until

ROOT = Path(__file__).resolve().parents[2]
#: installed by scripts/test.sh (npm install --prefix build/chp configurable-http-proxy)
CHP = ROOT / "build" / "chp" / "node_modules" / ".bin" / "configurable-http-proxy"
SERVICE_TOKEN = "dlinfra-test-service-token-0123456789abcdef"


class Hub:
    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.api_port = free_port()
        self.api_url = f"http://127.0.0.1:{self.api_port}/hub/api"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        chp = os.environ.get("DLINFRA_CHP") or (str(CHP) if CHP.exists() else None)
        chp = chp or shutil.which("configurable-http-proxy")
        if chp is None:
            pytest.fail(
                "configurable-http-proxy is missing: `make test` installs it "
                "(npm install --prefix build/chp configurable-http-proxy)",
                pytrace=False,
            )
        config = self.workdir / "jupyterhub_config.py"
        config.write_text(
            f"""
c.JupyterHub.bind_url = "http://127.0.0.1:{free_port()}"
c.JupyterHub.hub_bind_url = "http://127.0.0.1:{self.api_port}"
c.ConfigurableHTTPProxy.api_url = "http://127.0.0.1:{free_port()}"
c.ConfigurableHTTPProxy.command = [{chp!r}]
c.JupyterHub.db_url = "sqlite:///{self.workdir}/hub.sqlite"
c.JupyterHub.cookie_secret_file = "{self.workdir}/cookie_secret"
c.JupyterHub.pid_file = "{self.workdir}/hub.pid"
c.JupyterHub.authenticator_class = "dummy"
c.Authenticator.allowed_users = {{"alice", "bob"}}
c.JupyterHub.services = [{{"name": "tester", "api_token": {SERVICE_TOKEN!r}}}]
c.JupyterHub.load_roles = [
    {{"name": "tester", "scopes": ["admin:users", "tokens"], "services": ["tester"]}}
]
"""
        )
        log = (self.workdir / "hub.log").open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "jupyterhub", "-f", str(config)],
            cwd=self.workdir,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        wait_until(self._up, timeout=90, interval=0.2, what="JupyterHub's API")

    def _up(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise RuntimeError((self.workdir / "hub.log").read_text()[-3000:])
        try:
            return self.call("GET", "/users/alice")[0] == 200
        except OSError:
            return False

    def call(self, method: str, path: str, body: bytes | None = None) -> tuple[int, bytes]:
        import urllib.error
        import urllib.request

        req = urllib.request.Request(self.api_url + path, data=body, method=method)
        req.add_header("Authorization", f"token {SERVICE_TOKEN}")
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        try:
            with opener.open(req, timeout=10) as resp:
                return resp.status, resp.read()
        except urllib.error.HTTPError as err:
            return err.code, err.read()

    def token_for(self, user: str) -> str:
        import json

        status, body = self.call("POST", f"/users/{user}/tokens", b'{"note": "gateway test"}')
        assert status in (200, 201), body
        return str(json.loads(body)["token"])

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=30)


@pytest.fixture
def hub(tmp_path: Path) -> Iterator[Hub]:
    workdir = tmp_path / "hub"
    workdir.mkdir()
    running = Hub(workdir)
    try:
        running.start()
        yield running
    finally:
        running.stop()


@pytest.fixture
def hub_team(tmp_path: Path, hub: Hub) -> Iterator[Team]:
    team = start_gateway(tmp_path, args=(f"--GatewayIdentityProvider.hub_api_url={hub.api_url}",))
    try:
        yield team
    finally:
        stop_and_keep_log(team.gateway)


def test_a_hub_users_token_names_them_at_the_gateway(hub: Hub, hub_team: Team) -> None:
    alice_token = hub.token_for("alice")
    gateway = hub_team.gateway
    status, me, _ = gateway.request(
        "GET", "dlinfra/api/me", headers={"Authorization": f"token {alice_token}"}
    )
    assert status == 200 and me["user"] == "alice"
    bad = gateway.request("GET", "dlinfra/api/me", headers={"Authorization": "token nope"})
    assert bad[0] in (401, 403)
    # a Hub user's own server uses its Hub token as its gateway token
    workdir = hub_team.gateway.workdir.parent / "server-alice"
    workdir.mkdir()
    server = ServerProcess(
        workdir,
        db_url=f"sqlite:///{workdir}/unused.sqlite",
        extra_args=(
            f"--gateway-url={gateway.url}",
            f"--GatewayClient.auth_token={alice_token}",
        ),
    ).start()
    try:
        kernel = server.start_kernel()
        status, kernels, _ = gateway.request(
            "GET", "api/kernels", headers={"Authorization": f"token {alice_token}"}
        )
        assert status == 200 and [k["id"] for k in kernels] == [kernel.kernel_id]
        # bob (another Hub user) does not see it
        bob_token = hub.token_for("bob")
        status, kernels, _ = gateway.request(
            "GET", "api/kernels", headers={"Authorization": f"token {bob_token}"}
        )
        assert status == 200 and kernels == []
        kernel.shutdown()
    finally:
        stop_and_keep_log(server)
