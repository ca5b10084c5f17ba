"""JupyterLab pointed at a team gateway: its sidebar shows the gateway's ledger, with the GPUs
another person holds, and the person's own kernel (which runs on the gateway) with its GPUs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from playwright.sync_api import expect

from jupyter_dlinfra.core.books.tokens import TokenBook
from jupyter_dlinfra.core.clock import SystemClock
from jupyter_dlinfra.core.store import Store
from jupyter_dlinfra.testing.server import ServerProcess

from .conftest import ARTIFACTS
from .test_sidebar import make_notebook, open_and_run, open_sidebar


def test_the_sidebar_of_a_lab_pointed_at_the_gateway_shows_the_teams_ledger(
    lab: Any, page: Any, tmp_path: Path, servers: list[object]
) -> None:
    db = f"sqlite:///{tmp_path}/team.sqlite"
    book = TokenBook(Store(db), SystemClock())
    alice, bob = book.issue("alice", by="test").token, book.issue("bob", by="test").token
    (tmp_path / "gateway").mkdir()
    gateway = ServerProcess(
        tmp_path / "gateway",
        db_url=db,
        simulated_gpus=4,
        token=bob,
        program=("-m", "jupyter_dlinfra.cli", "gateway"),
        extra_args=("--DLInfra.telemetry_interval=1",),
    )
    servers.append(gateway)
    gateway.start()
    try:
        # bob holds one GPU through the gateway (from his own server, or any client of it)
        status, kernel, _ = gateway.request("POST", "api/kernels", {"name": "python3"})
        assert status == 201, kernel
        status, held, _ = gateway.request(
            "POST", "dlinfra/api/allocations", {"kernel_id": kernel["id"], "count": 1}
        )
        assert status == 201 and held["state"] == "granted", held
        server = lab(args=(f"--gateway-url={gateway.url}", f"--GatewayClient.auth_token={alice}"))
        make_notebook(server, "train.ipynb", "%gpu 2")
        open_and_run(page, server, "train.ipynb")
        expect(page.locator(".jp-OutputArea-output").first).to_contain_text(
            "Granted 2 GPUs", timeout=60_000
        )
        sidebar = open_sidebar(page)
        # the gateway's four GPUs, three of them held: one by bob, two by alice's kernel
        expect(sidebar.locator(".jp-DLInfra-gpuCard")).to_have_count(4)
        mine = sidebar.locator(".jp-DLInfra-myAllocation.jp-mod-granted")
        expect(mine).to_have_count(1, timeout=10_000)
        expect(mine.locator(".jp-DLInfra-myGpu")).to_have_count(2)
        expect(sidebar.locator(".jp-DLInfra-gpuCard.jp-mod-free")).to_have_count(1)
        expect(sidebar).to_contain_text("bob")
        ARTIFACTS.mkdir(exist_ok=True)
        sidebar.screenshot(path=str(ARTIFACTS / "sidebar-gateway.png"))
        mine.locator(".jp-DLInfra-release").click()
        expect(sidebar.locator(".jp-DLInfra-gpuCard.jp-mod-free")).to_have_count(3, timeout=10_000)
    finally:
        for started in reversed(servers):
            assert isinstance(started, ServerProcess)
            started.stop()
        gateway.stop()
