"""Serialised restarts with jupyter_server's pending kernels, and the check of the kernel class."""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path
from typing import Any

import pytest

from jupyter_dlinfra.server import restarts


@pytest.fixture
def jp_server_config(tmp_path: Path) -> dict[str, Any]:
    return {
        "ServerApp": {"jpserver_extensions": {"jupyter_dlinfra": True}},
        "MappingKernelManager": {"use_pending_kernels": True},
        "DLInfra": {
            "db_url": f"sqlite:///{tmp_path}/ledger.sqlite",
            "telemetry_interval": 0,
            "reconcile_interval": 0,
            "simulated_gpus": 1,
        },
    }


async def test_with_pending_kernels_a_restart_during_a_restart_follows_it(
    jp_fetch: Any, jp_serverapp: Any
) -> None:
    km = jp_serverapp.kernel_manager
    assert km.use_pending_kernels
    started = await jp_fetch("api", "kernels", method="POST", body=json.dumps({"name": "python3"}))
    kernel_id = json.loads(started.body)["id"]
    await asyncio.wait_for(km.get_kernel(kernel_id).ready, 60)
    # jupyter_client alone refuses the second: "Kernel is in a pending state. Cannot restart."
    await asyncio.wait_for(
        asyncio.gather(km.restart_kernel(kernel_id), km.restart_kernel(kernel_id)), 120
    )
    kernel = km.get_kernel(kernel_id)
    await asyncio.wait_for(kernel.ready, 60)
    assert await kernel.is_alive()


def test_a_kernel_class_configured_on_the_kernel_manager_is_reported(
    caplog: pytest.LogCaptureFixture,
) -> None:
    log = logging.getLogger("test-restarts")
    ours = restarts.SerialRestartMappingKernelManager()
    assert restarts.check(ours, log)
    theirs = restarts.SerialRestartMappingKernelManager(
        kernel_manager_class="jupyter_server.services.kernels.kernelmanager.ServerKernelManager"
    )
    with caplog.at_level(logging.WARNING, logger="test-restarts"):
        assert not restarts.check(theirs, log)
    assert "not serialised" in caplog.text
