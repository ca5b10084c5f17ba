"""Neither NVML nor simulation: the extension still loads, reports zero GPUs and says why."""

from __future__ import annotations

from typing import Any

import pytest

from jupyter_dlinfra.telemetry import NvmlProvider, TelemetryUnavailable


def _has_nvml() -> bool:
    try:
        NvmlProvider().close()
    except TelemetryUnavailable:
        return False
    return True


pytestmark = pytest.mark.skipif(_has_nvml(), reason="this machine has real NVIDIA GPUs")


@pytest.fixture
def dlinfra_config() -> dict[str, Any]:
    return {"simulated_gpus": 0}


async def test_zero_gpus_and_the_reason(api: Any) -> None:
    status, body = await api("GET", "cluster")
    assert status == 200
    assert body["gpu_count"] == 0 and body["nodes"] == []
    assert body["provider"]["name"] == "none"
    assert body["simulated"] is False
    assert "NVML" in body["provider"]["reason"]
    assert "DLINFRA_SIMULATED_GPUS" in body["provider"]["reason"]


async def test_requests_fail_clearly(api: Any, dlinfra_app: Any) -> None:
    from jupyter_dlinfra.core.models import KernelRecord

    service = dlinfra_app.service
    service.ledger.register_kernel(
        KernelRecord(
            kernel_id="k",
            user=service.settings.user,
            node=service.settings.node,
            server_id=service.settings.server_id,
        )
    )
    status, body = await api("POST", "allocations", {"kernel_id": "k", "count": 1})
    assert status == 400 and body["reason"] == "no_gpus"
    assert "has no GPUs" in body["message"]
