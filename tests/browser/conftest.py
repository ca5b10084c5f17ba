"""A real JupyterLab (jupyter server subprocess with the extension) and Debian's chromium."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from jupyter_dlinfra.testing.server import ServerProcess

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"


@pytest.fixture(autouse=True)
def jp_asyncio_loop() -> Iterator[asyncio.AbstractEventLoop]:
    """pytest-jupyter's autouse loop fixture would close Playwright's running loop: these tests
    start their servers as processes and need no loop of their own, so give it a private one."""
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


# package scope: Playwright's sync API runs an event loop in this thread until it stops, and
# pytest-jupyter's fixtures in the other test packages need that thread's loop to themselves
@pytest.fixture(scope="package")
def browser() -> Iterator[Any]:
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: install Debian's chromium (scripts/test.sh does)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            yield browser
        finally:
            browser.close()


def _unless_set(option: str, args: tuple[str, ...]) -> tuple[str, ...]:
    name = option.partition("=")[0] + "="
    return () if any(a.startswith(name) for a in args) else (option,)


@pytest.fixture
def lab(tmp_path: Path, servers: list[object]) -> Any:
    """Start JupyterLab on ``gpus`` simulated GPUs (more options: ``args``, ``env``); a factory."""

    def start(
        gpus: int = 4, args: tuple[str, ...] = (), env: dict[str, str] | None = None
    ) -> ServerProcess:
        server = ServerProcess(
            tmp_path / f"lab{len(servers)}",
            db_url=f"sqlite:///{tmp_path}/ledger.sqlite",
            simulated_gpus=gpus,
            # an option given twice is refused by traitlets: the default goes only when unset
            extra_args=(*_unless_set("--DLInfra.telemetry_interval=1", args), *args),
            env=env or {},
        )
        server.workdir.mkdir(parents=True, exist_ok=True)
        servers.append(server)
        return server.start()

    return start


@pytest.fixture
def page(browser: Any, request: pytest.FixtureRequest) -> Iterator[Any]:
    # a fresh context per test: no storage carried from one Lab to the next (ports get reused)
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    page = context.new_page()
    page.set_default_timeout(30_000)
    try:
        yield page
    finally:
        ARTIFACTS.mkdir(exist_ok=True)
        if request.node.rep_call.failed if hasattr(request.node, "rep_call") else False:
            page.screenshot(path=str(ARTIFACTS / f"{request.node.name}-failure.png"))
        context.close()


def save_artifact(path: Path) -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    target = ARTIFACTS / path.name
    shutil.copy(path, target)
    return target
