"""GPUs as the cluster view shows them: free ones look free, and work on a GPU that nobody holds
in the ledger (someone bypassing it) is named with its processes and their owners."""

from __future__ import annotations

from typing import Any

from server_kit import register


def _gpus(cluster: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {g["uuid"]: g for node in cluster["nodes"] for g in node["gpus"]}


async def test_work_on_a_free_gpu_is_shown_outside_the_ledger(api: Any, dlinfra_app: Any) -> None:
    service = dlinfra_app.service
    register(dlinfra_app, "k")
    _, granted = await api("POST", "allocations", {"kernel_id": "k", "count": 1})
    [held] = [g["uuid"] for g in granted["gpus"]]
    free = [d.uuid for d in service.provider.devices() if d.uuid != held]
    # someone's process on a GPU the ledger says is free, and another on the held one
    service.provider.set_load(free[0], 70.0, processes={4242: 2**30}, users={4242: "mallory"})
    service.provider.set_load(held, 55.0, processes={4243: 2**30}, users={4243: "root"})
    await service.sample()

    status, cluster = await api("GET", "cluster")
    assert status == 200
    gpus = _gpus(cluster)
    assert gpus[free[0]]["holder"] is None
    assert gpus[free[0]]["outside_ledger"] == {
        "processes": [{"pid": 4242, "user": "mallory", "memory_used_bytes": 2**30}],
        "users": ["mallory"],
        "pods": [],
    }
    assert gpus[held]["holder"]["kernel_id"] == "k" and gpus[held]["outside_ledger"] is None
    # the other free simulated GPUs idle, as free GPUs do
    for uuid in free[1:]:
        assert gpus[uuid]["outside_ledger"] is None
        assert (gpus[uuid]["utilization_percent"], gpus[uuid]["memory_used_bytes"]) == (0, 0)
