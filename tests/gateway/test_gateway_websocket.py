"""The kernel websockets a person's server opens to the gateway reach it in order.

The gateway end here is a small tornado endpoint with the gateway's rule for a kernel's
connections (one per kernel and session; a newer one closes the older), whose first handshake
is held until the test lets it go: that is the order the race of an abandoned connection needs,
made certain. The full path (JupyterLab, a person's server, the real gateway) is in
tests/browser/test_gateway_ui.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from jupyter_client.session import Session
from jupyter_server.gateway.connections import GatewayWebSocketConnection
from jupyter_server.gateway.gateway_client import GatewayClient
from tornado import httpserver, netutil, web, websocket
from traitlets import Unicode
from traitlets.config import Configurable

from jupyter_dlinfra.server.forwarding.kernel_ws import OrderedGatewayConnection

KERNEL = "5f0c1d2e-0000-4000-8000-000000000001"
SESSION = "browser-session"


@dataclass
class Gateway:
    url: str
    gate: asyncio.Event = field(default_factory=asyncio.Event)
    arrived: list[int] = field(default_factory=list)
    open: dict[str, Any] = field(default_factory=dict)
    replaced: list[int] = field(default_factory=list)
    closed_by_client: list[int] = field(default_factory=list)


class _Channels(websocket.WebSocketHandler):
    def initialize(self, gateway: Gateway) -> None:
        self.gateway = gateway

    async def get(self, *args: Any, **kwargs: Any) -> None:
        g = self.gateway
        self.number = len(g.arrived) + 1
        g.arrived.append(self.number)
        if self.number == 1:
            await g.gate.wait()
        key = f"{args[0]}:{self.get_argument('session_id')}"
        stale = g.open.get(key)
        if stale is not None:
            g.replaced.append(stale.number)
            stale.replaced = True
            stale.close()
        g.open[key] = self
        self.key, self.replaced = key, False
        await super().get(*args, **kwargs)

    def on_message(self, message: str | bytes) -> None:
        self.write_message(f"{self.number}:{message!s}")

    def on_close(self) -> None:
        if not self.replaced:
            self.gateway.closed_by_client.append(self.number)
        if self.gateway.open.get(self.key) is self:
            del self.gateway.open[self.key]


class _Kernel(Configurable):
    kernel_id = Unicode()


class _Browser(websocket.WebSocketHandler):
    """The browser's end of the person's server: what the server would pass on to it."""

    def __init__(self) -> None:  # no request behind it
        self.received: list[str] = []

    def write_message(self, message: Any, binary: bool = False) -> Any:
        self.received.append(message)


@contextlib.asynccontextmanager
async def running_gateway() -> AsyncIterator[Gateway]:
    sockets = netutil.bind_sockets(0, "127.0.0.1")
    port = sockets[0].getsockname()[1]
    g = Gateway(url=f"http://127.0.0.1:{port}")
    app = web.Application([(r"/api/kernels/([^/]+)/channels", _Channels, {"gateway": g})])
    server = httpserver.HTTPServer(app)
    server.add_sockets(sockets)
    # a singleton: one made by an earlier test (another URL, or none) would be handed back
    GatewayClient.clear_instance()
    client = GatewayClient.instance(url=g.url, gateway_retry_max=0, connect_timeout=20.0)
    assert client.ws_url
    try:
        yield g
    finally:
        g.gate.set()
        server.stop()
        GatewayClient.clear_instance()
        await server.close_all_connections()
        GatewayClient.clear_instance()


def connection(cls: type[GatewayWebSocketConnection]) -> Any:
    conn = cls(parent=_Kernel(kernel_id=KERNEL), websocket_handler=_Browser())
    conn.session = Session(session=SESSION)
    return conn


async def until(test: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not test():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


async def reconnect_while_the_first_is_opening(
    gateway: Gateway, cls: type[GatewayWebSocketConnection]
) -> Any:
    """Open, give up at once, open again: what JupyterLab does when it opens a notebook."""
    first = connection(cls)
    await first.connect()
    await until(lambda: gateway.arrived == [1], "the first handshake to reach the gateway")
    first.disconnect()
    second = connection(cls)
    opening = asyncio.ensure_future(second.connect())
    if cls is OrderedGatewayConnection:
        # it has taken the abandoned connection to wait for, and has not started its own
        await until(
            lambda: f"{KERNEL}:{SESSION}" not in OrderedGatewayConnection._abandoned,
            "the second connection to wait for the first",
        )
        assert second.ws_future is None and not opening.done()
        assert gateway.arrived == [1]
    else:
        # the second handshake overtakes the first one, held at the gateway
        await until(lambda: len(gateway.arrived) == 2, "the second handshake to reach the gateway")
    gateway.gate.set()
    await opening
    await until(lambda: second.ws is not None, "the second connection to open")
    return second


async def test_a_connection_given_up_while_opening_is_closed_and_not_overtaken() -> None:
    async with running_gateway() as gateway:
        await given_up_and_reopened(gateway)


async def given_up_and_reopened(gateway: Gateway) -> None:
    second = await reconnect_while_the_first_is_opening(gateway, OrderedGatewayConnection)
    await until(lambda: gateway.closed_by_client == [1], "the abandoned connection to be closed")
    assert gateway.replaced in ([], [1])  # the gateway may see the close or the newer one first
    assert [h.number for h in gateway.open.values()] == [2]
    # the kernel_info request the browser sends at once goes through and is answered
    second.handle_incoming_message("kernel_info_request")
    await until(lambda: bool(second.websocket_handler.received), "the gateway's answer")
    assert second.websocket_handler.received == ["2:kernel_info_request"]
    second.disconnect()
    await until(lambda: not gateway.open, "the second connection to be closed")


async def test_jupyter_servers_own_connection_loses_the_race_this_guards_against() -> None:
    """The failure, shown with jupyter_server's class: if this starts to fail, the fix upstream
    has landed and OrderedGatewayConnection can go."""
    async with running_gateway() as gateway:
        await reconnect_while_the_first_is_opening(gateway, GatewayWebSocketConnection)
        await until(lambda: gateway.replaced == [2], "the gateway to close the newer connection")
        assert gateway.closed_by_client == []  # and the abandoned one is left open, unread
        assert [h.number for h in gateway.open.values()] == [1]
