"""The server's authorizer decides for people: here one that lets them read dlinfra only."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from jupyter_server.auth.authorizer import Authorizer


class ReadOnlyDLInfra(Authorizer):  # type: ignore[misc]
    seen: list[tuple[str, str]] = []

    def is_authorized(self, handler: Any, user: Any, action: str, resource: str) -> bool:
        ReadOnlyDLInfra.seen.append((action, resource))
        return resource != "dlinfra" or action == "read"


@pytest.fixture
def jp_server_config(tmp_path: Path) -> dict[str, Any]:
    return {
        "ServerApp": {
            "jpserver_extensions": {"jupyter_dlinfra": True},
            "authorizer_class": ReadOnlyDLInfra,
        },
        "DLInfra": {
            "db_url": f"sqlite:///{tmp_path}/ledger.sqlite",
            "simulated_gpus": 2,
            "telemetry_interval": 0,
            "reconcile_interval": 0,
        },
    }


async def test_reads_pass_and_writes_are_refused(api: Any) -> None:
    ReadOnlyDLInfra.seen.clear()
    status, body = await api("GET", "cluster")
    assert status == 200 and body["gpu_count"] == 2
    status, body = await api("POST", "allocations", {"kernel_id": "k", "count": 1})
    assert status == 403 and body["reason"] == "forbidden"
    status, body = await api("DELETE", "allocations/1")
    assert status == 403
    assert ("read", "dlinfra") in ReadOnlyDLInfra.seen
    assert ("write", "dlinfra") in ReadOnlyDLInfra.seen
