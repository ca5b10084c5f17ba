"""Restart safety: the ledger outlives any one server; a restart reconciles, and loses nothing.

Kernels end with the server that started them (jupyter_server shuts them down; after a crash
ipykernel's parent poller ends them), so the grants that must survive a restart are those of
kernels that still live: here, the kernels of a second server sharing the ledger file.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import psutil

from jupyter_dlinfra.testing.server import ServerProcess, wait_until

LIVE = ("utilization_percent", "memory_used_bytes", "sampled_at")


def by_kernel(server: ServerProcess) -> dict[str, dict[str, Any]]:
    """Allocations by kernel, without the live readings (they change every sample)."""
    found = server.get("dlinfra/api/allocations?state=all")["allocations"]
    for alloc in found:
        alloc["gpus"] = [{k: v for k, v in g.items() if k not in LIVE} for g in alloc["gpus"]]
    return {a["kernel_id"]: a for a in found}


def test_crash_then_restart_reconciles_and_keeps_live_grants(
    start_server: Callable[..., ServerProcess],
) -> None:
    # only the restarted server may reconcile, so what happens is its start-up's doing
    a = start_server(gpus=4, args=("--DLInfra.reconcile_interval=0",))
    b = start_server(gpus=4, args=("--DLInfra.reconcile_interval=0",))
    ka = a.start_kernel()
    kb, kb2, kb3 = (b.start_kernel() for _ in range(3))
    assert "Granted 2" in ka.execute("%gpu 2").stdout
    assert "Granted 2" in kb.execute("%gpu 2").stdout
    assert "position 1" in kb2.execute("%gpu 1 --no-wait").stdout
    assert "position 2" in kb3.execute("%gpu 1 --no-wait").stdout
    before = by_kernel(b)
    ka_pid = ka.value("__import__('os').getpid()")

    a.crash()
    after_crash = by_kernel(b)
    assert after_crash == before, "a crash must not change the ledger"

    def kernel_gone() -> bool:
        return not psutil.pid_exists(ka_pid) or psutil.Process(ka_pid).status() == "zombie"

    wait_until(kernel_gone, timeout=30, what="the crashed server's kernel to end")

    restarted = start_server(gpus=4, workdir=a.workdir)
    now = by_kernel(restarted)
    assert now[ka.kernel_id]["state"] == "released"
    assert now[ka.kernel_id]["end_reason"] == "kernel no longer exists"
    assert now[kb.kernel_id] == before[kb.kernel_id], "a live kernel keeps its grant"
    assert now[kb2.kernel_id]["state"] == now[kb3.kernel_id]["state"] == "granted"
    assert now[kb2.kernel_id]["id"] == before[kb2.kernel_id]["id"]
    freed = set(before[ka.kernel_id]["cuda_visible_devices"].split(","))
    got = {now[k.kernel_id]["cuda_visible_devices"] for k in (kb2, kb3)}
    assert got == freed
    assert "Granted 1 GPU" in kb2.execute("z = 3").stdout


def test_clean_stop_releases_its_kernels_and_keeps_the_rest(
    start_server: Callable[..., ServerProcess],
) -> None:
    a = start_server(gpus=2)
    b = start_server(gpus=2)
    ka, kb, kb2 = a.start_kernel(), b.start_kernel(), b.start_kernel()
    ka.execute("%gpu 1")
    kb.execute("%gpu 1")
    kb2.execute("%gpu 1 --no-wait")
    before = by_kernel(b)
    assert before[kb2.kernel_id]["state"] == "queued"
    a.stop()
    now = by_kernel(b)
    assert now[ka.kernel_id]["state"] == "released"
    assert now[ka.kernel_id]["end_reason"] == "kernel shut down"
    assert now[kb.kernel_id] == before[kb.kernel_id]
    assert now[kb2.kernel_id]["state"] == "granted"
    assert (
        now[kb2.kernel_id]["cuda_visible_devices"] == before[ka.kernel_id]["cuda_visible_devices"]
    )
    again = start_server(gpus=2, workdir=a.workdir)
    assert by_kernel(again) == by_kernel(b)
