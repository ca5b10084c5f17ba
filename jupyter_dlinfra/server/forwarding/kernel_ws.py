"""A person's server to the gateway: kernel websockets that never overtake an abandoned one.

JupyterLab often opens a kernel's websocket, closes it at once and opens it again with the same
session id. jupyter_server's GatewayWebSocketConnection answers the close of a connection still
opening towards the gateway by cancelling a future, which does not stop the handshake: that
abandoned connection still reaches the gateway, unread and never closed. The gateway keeps one
connection per kernel and session and closes the older one when a newer one arrives, so when the
abandoned handshake lands after the new one, the gateway closes the new one. The browser's
kernel_info request is lost with it and the notebook shows the kernel's status as unknown until
something else makes the kernel talk.

Here a connection abandoned while opening is closed as soon as it opens, and the next connection
for the same kernel and session waits for that first (bounded by GatewayClient's connect
timeout), so the gateway always sees them in order.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any, ClassVar

from jupyter_server.gateway.connections import GatewayWebSocketConnection
from jupyter_server.gateway.gateway_client import GatewayClient

__all__ = ["OrderedGatewayConnection"]


class OrderedGatewayConnection(GatewayWebSocketConnection):  # type: ignore[misc]
    #: connections given up while opening, by kernel and session: the next one waits for them
    _abandoned: ClassVar[dict[str, asyncio.Future[Any]]] = {}

    def _key(self) -> str:
        return f"{self.kernel_id}:{self.session_id}"

    async def connect(self) -> None:
        earlier = self._abandoned.pop(self._key(), None)
        if earlier is not None and not earlier.done():
            self.log.debug("kernel %s: waiting for an abandoned connection to open", self.kernel_id)
            # whatever became of it, the gateway has registered it (or never will): go on
            with contextlib.suppress(Exception):
                await asyncio.wait_for(
                    asyncio.shield(earlier), timeout=GatewayClient.instance().connect_timeout
                )
        await super().connect()  # type: ignore[no-untyped-call]

    def disconnect(self) -> None:  # type: ignore[override]
        opening = self.ws_future
        if self.ws is not None or opening is None or opening.done():
            super().disconnect()  # type: ignore[no-untyped-call]
            return
        # the base class would cancel the future, which leaves the handshake running unseen
        self.disconnected = True
        key = self._key()
        self._abandoned[key] = opening

        def close_when_open(future: asyncio.Future[Any]) -> None:
            if self._abandoned.get(key) is future:
                del self._abandoned[key]
            if not future.cancelled() and future.exception() is None:
                future.result().close()

        opening.add_done_callback(close_when_open)
