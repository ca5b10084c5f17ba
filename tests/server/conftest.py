from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

import pytest
from tornado.httpclient import HTTPClientError

Fetch = Callable[..., Awaitable[Any]]


@pytest.fixture
def dlinfra_config() -> dict[str, Any]:
    """What a test module wants of the extension; override it to change GPUs etc."""
    return {"simulated_gpus": 4}


@pytest.fixture
def jp_server_config(tmp_path: Path, dlinfra_config: dict[str, Any]) -> dict[str, Any]:
    return {
        "ServerApp": {"jpserver_extensions": {"jupyter_dlinfra": True}},
        "DLInfra": {
            "db_url": f"sqlite:///{tmp_path}/ledger.sqlite",
            "telemetry_interval": 0,
            "reconcile_interval": 0,
            **dlinfra_config,
        },
    }


@pytest.fixture
def api(jp_fetch: Fetch) -> Callable[..., Awaitable[tuple[int, Any]]]:
    """Call /dlinfra/api and get (status, parsed JSON) back, errors included."""

    async def call(
        method: str, path: str, body: Any = None, *, raw: str | None = None, **kwargs: Any
    ) -> tuple[int, Any]:
        if raw is None and body is not None:
            raw = json.dumps(body)
        if raw is not None:
            kwargs["body"] = raw
        elif method in ("POST", "PUT"):
            kwargs["body"] = "{}"
        path, _, query = path.partition("?")
        if query:
            kwargs["params"] = dict(parse_qsl(query))
        try:
            resp = await jp_fetch("dlinfra", "api", *path.split("/"), method=method, **kwargs)
        except HTTPClientError as err:
            assert err.response is not None
            return err.code, json.loads(err.response.body or b"null")
        return resp.code, json.loads(resp.body) if resp.body else None

    return call


@pytest.fixture
def dlinfra_app(jp_serverapp: Any) -> Any:
    return jp_serverapp.extension_manager.extension_points["jupyter_dlinfra"].app
