"""An allocation's view is made once while nothing it shows changes, and made again when
anything does: a sidebar's list shows the same grants and requests at each refresh."""

from __future__ import annotations

from dataclasses import replace

from jupyter_dlinfra.core.models import Allocation, AllocationState, Gpu
from jupyter_dlinfra.server.views import allocation_json
from jupyter_dlinfra.telemetry import GpuSample

GPU = Gpu(uuid="GPU-1", node="n1", index=0, model="A100", memory_bytes=80 << 30)


def _granted() -> Allocation:
    return Allocation(
        id=7,
        kernel_id="k",
        user="ana",
        node="n1",
        count=1,
        model=None,
        state=AllocationState.GRANTED,
        gpus=(GPU.uuid,),
        created_at=1.0,
        granted_at=2.0,
    )


def _samples(util: float) -> dict[str, GpuSample]:
    return {
        GPU.uuid: GpuSample(
            uuid=GPU.uuid,
            at=3.0,
            utilization_percent=util,
            memory_used_bytes=1 << 30,
            memory_total_bytes=80 << 30,
        )
    }


def test_a_grants_view_is_shared_while_its_row_gpus_and_samples_are_the_same_objects() -> None:
    alloc, samples = _granted(), _samples(40.0)
    first = allocation_json(alloc, {GPU.uuid: GPU}, samples)
    # a new index of the same GPU rows (each answer builds its own)
    assert allocation_json(alloc, {GPU.uuid: GPU}, samples) is first
    assert first["gpus"][0]["index"] == 0


def test_a_grants_view_is_made_again_when_anything_it_shows_changes() -> None:
    alloc, samples = _granted(), _samples(40.0)
    first = allocation_json(alloc, {GPU.uuid: GPU}, samples)
    # the next sampling
    later = _samples(90.0)
    resampled = allocation_json(alloc, {GPU.uuid: GPU}, later)
    assert resampled is not first
    assert resampled["gpus"][0] != first["gpus"][0]
    # the GPU's row changed (read again after a change of the inventory)
    moved = replace(GPU, index=3)
    reindexed = allocation_json(alloc, {GPU.uuid: moved}, later)
    assert reindexed["gpus"][0]["index"] == 3
    # the allocation's row changed, or the answer is marked simulated
    ended = replace(alloc, state=AllocationState.RELEASED, ended_at=5.0)
    assert allocation_json(ended, {GPU.uuid: moved}, later)["state"] == "released"
    assert allocation_json(ended, {GPU.uuid: moved}, later, simulated=True)["simulated"] is True
