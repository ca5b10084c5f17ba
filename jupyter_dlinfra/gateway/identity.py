"""Who calls the gateway: a person's token, issued by an admin, or their JupyterHub token.

A person's Jupyter server sends ``Authorization: token <t>`` on every request and websocket it
makes to the gateway (``GatewayClient.auth_token``). A token issued with ``jupyter dlinfra token
issue`` names its person in the ledger; with ``hub_api_url`` set, any other token is asked of
JupyterHub (``GET {hub_api_url}/user``), which is how a Hub-spawned server's own
``JUPYTERHUB_API_TOKEN`` works without issuing anything. Nothing else logs in: the gateway has no
shared password and no anonymous access.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

from jupyter_server.auth.identity import IdentityProvider, User
from tornado import httpclient, web
from traitlets import Float, Unicode

from jupyter_dlinfra.core.books.tokens import TokenBook
from jupyter_dlinfra.server.errors import from_database_error

__all__ = ["GatewayIdentityProvider", "bearer_token"]

#: how many JupyterHub answers are remembered
_HUB_CACHE_SIZE = 1024


def bearer_token(handler: web.RequestHandler) -> str | None:
    """The token of an ``Authorization: token|Bearer <t>`` header, or of ``?token=``."""
    scheme, _, value = handler.request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() in ("token", "bearer") and value.strip():
        return value.strip()
    query = handler.get_query_argument("token", None)
    return query or None


class GatewayIdentityProvider(IdentityProvider):  # type: ignore[misc]
    hub_api_url = Unicode(
        "",
        config=True,
        help="JupyterHub's API URL (such as http://hub:8081/hub/api). When set, a token that is "
        "not a dlinfra token is checked with JupyterHub and names the Hub user it belongs to; "
        "empty: only tokens issued with `jupyter dlinfra token issue` are accepted.",
    )
    hub_cache_seconds = Float(
        60.0,
        config=True,
        help="Seconds a JupyterHub answer about a token is trusted before asking again "
        "(0: ask every time). A token revoked in the Hub keeps working this long.",
    )

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._hub_cache: dict[str, tuple[float, User | None]] = {}

    @property
    def auth_enabled(self) -> bool:
        return True

    @property
    def token_enabled(self) -> bool:
        return False

    async def get_user(self, handler: web.RequestHandler) -> User | None:
        token = bearer_token(handler)
        if token is None:
            return None
        book: TokenBook | None = handler.settings.get("dlinfra_tokens")
        if book is None:
            return None  # the dlinfra extension did not load: nobody gets in
        try:
            # known without the database (a PostgreSQL ledger's change feed keeps it), else read
            name = book.cached(token) or await asyncio.get_running_loop().run_in_executor(
                None, book.verify, token
            )
        except Exception as err:
            # tokens live in the ledger: with its database away, nobody can be told apart
            unavailable = from_database_error(err)
            if unavailable is None:
                raise
            raise unavailable from err
        user: User | None = None
        if name is not None:
            user = User(username=name, name=name, display_name=name)
        elif self.hub_api_url:
            user = await self._hub_user(token)
        if user is not None:
            # a token in a header is not a browser cookie: no cross-site forgery to check for
            handler._token_authenticated = True  # type: ignore[attr-defined]
        return user

    async def _hub_user(self, token: str) -> User | None:
        now = time.monotonic()
        cached = self._hub_cache.get(token)
        if cached is not None and now - cached[0] < self.hub_cache_seconds:
            return cached[1]
        request = httpclient.HTTPRequest(
            self.hub_api_url.rstrip("/") + "/user",
            headers={"Authorization": f"token {token}"},
            request_timeout=10,
        )
        try:
            response = await httpclient.AsyncHTTPClient().fetch(request)
        except httpclient.HTTPClientError as err:
            if err.code in (401, 403, 404):
                self._remember(token, now, None)
                return None
            self.log.warning("JupyterHub at %s did not answer: %s", self.hub_api_url, err)
            return None
        except OSError as err:
            self.log.warning("cannot reach JupyterHub at %s: %s", self.hub_api_url, err)
            return None
        model = json.loads(response.body or b"{}")
        name = model.get("name") if isinstance(model, dict) else None
        user = User(username=name, name=name, display_name=name) if name else None
        self._remember(token, now, user)
        return user

    def _remember(self, token: str, now: float, user: User | None) -> None:
        if len(self._hub_cache) >= _HUB_CACHE_SIZE:
            self._hub_cache.pop(next(iter(self._hub_cache)))
        self._hub_cache[token] = (now, user)
