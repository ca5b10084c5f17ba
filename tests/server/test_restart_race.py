"""Overlapping restarts of one kernel: one process at a time, and the GPUs stay where they are.

Before restarts were serialised, a burst of restarts (the sidebar's and ``%gpu --restart``'s
``POST /dlinfra/api/kernels/{id}/restart``, jupyter_server's own restart, a reclaim) launched one
process per restart on the same ports; the extras died, their deaths were reported as the
kernel's, and the ledger could release GPUs the surviving process still had in
``CUDA_VISIBLE_DEVICES``. The spy below records what the provisioner tells the ledger; a second
launch before the previous process stopped is the race, whatever the timing of the deaths.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import Awaitable, Callable
from typing import Any

import psutil
import pytest
from server_kit import register

from jupyter_dlinfra.core.models import AllocationState
from jupyter_dlinfra.server import restarts
from jupyter_dlinfra.server.liveness import process_started_at

Api = Callable[..., Awaitable[tuple[int, Any]]]


@pytest.fixture
def dlinfra_config() -> dict[str, Any]:
    return {"simulated_gpus": 4, "user_name": "alice"}


async def _until(predicate: Callable[[], Any], what: str, timeout: float = 60.0) -> Any:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not (value := predicate()):
        assert loop.time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)
    return value


def _spy(service: Any) -> list[tuple[str, Any]]:
    """Record, in order, the launches and ends of kernel processes the ledger hears of."""
    seen: list[tuple[str, Any]] = []
    launching, started, stopped = (
        service.kernel_launching,
        service.kernel_started,
        service.kernel_stopped,
    )

    async def on_launching(**kw: Any) -> Any:
        seen.append(("launch", kw["kernel_id"]))
        return await launching(**kw)

    async def on_started(**kw: Any) -> None:
        seen.append(("started", kw["pid"]))
        await started(**kw)

    async def on_stopped(**kw: Any) -> None:
        seen.append(("stopped", kw.get("pid")))
        await stopped(**kw)

    service.kernel_launching = on_launching
    service.kernel_started = on_started
    service.kernel_stopped = on_stopped
    return seen


def _processes_of(kernel_id: str) -> list[psutil.Process]:
    """Live kernel processes started for ``kernel_id`` (its connection file is on the command
    line)."""
    found = []
    for proc in psutil.Process().children(recursive=True):
        try:
            if proc.status() != psutil.STATUS_ZOMBIE and any(
                f"kernel-{kernel_id}.json" in part for part in proc.cmdline()
            ):
                found.append(proc)
        except psutil.NoSuchProcess:
            continue
    return found


async def _restarted(km: Any, kernel_id: str) -> None:
    await restarts.restart_done(kernel_id, 120)
    kernel = km.get_kernel(kernel_id)
    await _until(lambda: not kernel.restarting and kernel.ready.done(), "the restarts to end")


def _check_serial(seen: list[tuple[str, Any]], asked: int | None = None) -> None:
    launches = [i for i, (what, _) in enumerate(seen) if what == "launch"]
    assert launches, seen
    for i in launches:
        # each launch follows the end of the previous process
        assert seen[i - 1][0] == "stopped", f"a launch while a process of the kernel ran: {seen}"
    if asked is not None:
        assert len(launches) < asked, f"waiting restarts are joined, not run one by one: {seen}"
    seen.clear()


def _gpus_of_process(service: Any, kernel_id: str) -> str:
    """The one live process of the kernel is the ledger's, and sees what the ledger granted."""
    alive = _processes_of(kernel_id)
    assert len(alive) == 1, [p.cmdline() for p in alive]
    assert service.ledger.kernel(kernel_id).pid == alive[0].pid
    visible: str = alive[0].environ()["CUDA_VISIBLE_DEVICES"]
    held = service.ledger.allocations(kernel_id=kernel_id)
    assert [",".join(a.gpus) for a in held if a.state is AllocationState.GRANTED] == (
        [visible] if visible else []
    )
    return visible


async def test_overlapping_restarts_run_one_at_a_time_and_keep_the_grant(
    jp_fetch: Any, api: Api, dlinfra_app: Any
) -> None:
    service = dlinfra_app.service
    km = dlinfra_app.serverapp.kernel_manager
    started = await jp_fetch("api", "kernels", method="POST", body=json.dumps({"name": "python3"}))
    kernel_id = json.loads(started.body)["id"]
    await _until(lambda: service.ledger.kernel(kernel_id).pid is not None, "the kernel's pid")
    assert isinstance(km.get_kernel(kernel_id), restarts.SerialRestartKernelManager)
    status, alloc = await api("POST", "allocations", {"kernel_id": kernel_id, "count": 2})
    assert status == 201 and alloc["state"] == "granted", alloc
    granted = alloc["cuda_visible_devices"]
    seen = _spy(service)

    # three restarts through our API (%gpu --restart, the sidebar), asked at once: each waits
    # the same half second, so they coincide; all keep the GPUs
    answers = await asyncio.gather(
        *(api("POST", f"kernels/{kernel_id}/restart", {}) for _ in range(3))
    )
    assert [status for status, _ in answers] == [202, 202, 202]
    await _restarted(km, kernel_id)
    _check_serial(seen, 3)
    assert _gpus_of_process(service, kernel_id) == granted
    ended = service.ledger.allocations(kernel_id=kernel_id, active=False)
    assert [a for a in ended if a.state is not AllocationState.GRANTED] == []

    # the same, with jupyter_server's own restart (which releases GPUs) and a reclaim's among
    # them: whichever order they run in, the process sees what the ledger says it holds
    answers = await asyncio.gather(
        *(api("POST", f"kernels/{kernel_id}/restart", {}) for _ in range(2)),
        jp_fetch("api", "kernels", kernel_id, "restart", method="POST", body="{}"),
        km.restart_kernel(kernel_id),
    )
    await _restarted(km, kernel_id)
    _check_serial(seen)
    visible = _gpus_of_process(service, kernel_id)

    # the GPUs the kernel's process sees are given to nobody else
    other = json.loads(
        (await jp_fetch("api", "kernels", method="POST", body=json.dumps({"name": "python3"}))).body
    )["id"]
    status, second = await api("POST", "allocations", {"kernel_id": other, "count": 4})
    assert status == 201
    if visible:
        assert second["state"] == "queued", second
    else:
        assert second["state"] == "granted", second


async def test_a_shutdown_cancels_restarts_still_waiting(jp_fetch: Any, dlinfra_app: Any) -> None:
    km = dlinfra_app.serverapp.kernel_manager
    started = await jp_fetch("api", "kernels", method="POST", body=json.dumps({"name": "python3"}))
    kernel_id = json.loads(started.body)["id"]
    kernel = km.get_kernel(kernel_id)
    await kernel.ready
    first = asyncio.ensure_future(kernel.restart_kernel())
    await asyncio.sleep(0)
    waiting = asyncio.ensure_future(kernel.restart_kernel())
    await asyncio.sleep(0)
    assert kernel.restarting
    await km.shutdown_kernel(kernel_id)
    await first  # the restart under way finished before the shutdown stopped the process
    with pytest.raises(restarts.KernelStopped):
        await waiting
    assert not _processes_of(kernel_id)


async def test_a_process_that_is_not_the_kernels_own_does_not_release_its_gpus(
    dlinfra_app: Any,
) -> None:
    service = dlinfra_app.service
    me = os.getpid()
    register(dlinfra_app, "k")
    service.ledger.update_kernel("k", pid=me, pid_started_at=process_started_at(me))
    alloc = service.ledger.request(kernel_id="k", count=1)
    assert alloc.state is AllocationState.GRANTED
    ended = subprocess.Popen([sys.executable, "-c", "pass"])
    ended.wait()

    # a stray process of the kernel died: the kernel's own (this test process) still runs
    await service.kernel_stopped(
        kernel_id="k", restart=True, reason="kernel died (exit status 1)", pid=ended.pid
    )
    assert service.ledger.allocation(alloc.id).state is AllocationState.GRANTED

    await service.kernel_stopped(
        kernel_id="k", restart=True, reason="kernel died (exit status 1)", pid=me
    )
    assert service.ledger.allocation(alloc.id).state is AllocationState.RELEASED
