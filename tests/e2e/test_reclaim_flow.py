"""Idle reclaim end to end: a real server, real kernels, simulated GPUs made idle by the test.

The test pins the simulated GPUs' utilisation through the provider's load file, which the
server re-reads at each sample, and drives the whole flow as a user would: the warning shows at
the next execution, ``%gpu keep`` holds the GPUs, the second warning is let go, the GPUs are
reclaimed for the kernel waiting in the queue, and the reclaimed kernel runs on without GPUs and
says why.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from jupyter_dlinfra.testing.server import ServerProcess, wait_until

CUDA = "__import__('os').environ.get('CUDA_VISIBLE_DEVICES')"
POLICY = (
    "--DLInfra.telemetry_interval=0.1",
    "--DLInfra.idle_after=0.5",
    "--DLInfra.warn_after=1",
    "--DLInfra.reclaim_after=4",
    "--DLInfra.keep_extension=5",
    "--DLInfra.max_keeps=1",
)


def _in_state(server: ServerProcess, kernel_id: str, state: str) -> bool:
    usage = server.get(f"dlinfra/api/kernels/{kernel_id}/usage")
    return bool((usage.get("idle") or {}).get("state") == state)


def test_warned_kept_warned_again_then_reclaimed_for_the_queue(
    start_server: Callable[..., ServerProcess], tmp_path: Path
) -> None:
    load = tmp_path / "load.json"
    busy = {"utilization_percent": 90}
    load.write_text(json.dumps({"0": busy, "1": busy}))
    server = start_server(gpus=2, args=POLICY, env={"DLINFRA_SIMULATED_LOAD_FILE": str(load)})
    holder, waiter = server.start_kernel(), server.start_kernel()
    assert "Granted 2 GPUs" in holder.execute("%gpu 2").stdout
    queued = waiter.execute("%gpu 1 --no-wait")
    assert "Queued at position 1" in queued.stdout, queued

    # busy GPUs are never idle, however long the kernel sits
    wait_until(
        lambda: server.get(f"dlinfra/api/kernels/{holder.kernel_id}/usage")["at"] is not None,
        timeout=30,
        what="a first reading",
    )
    usage = server.get(f"dlinfra/api/kernels/{holder.kernel_id}/usage")
    assert usage["idle"]["state"] == "active"

    load.write_text(json.dumps({"0": {"utilization_percent": 0}, "1": {"utilization_percent": 1}}))
    wait_until(lambda: _in_state(server, holder.kernel_id, "warned"), timeout=30, what="a warning")
    warned = holder.execute("print('next cell')")
    assert "next cell" in warned.stdout
    assert "will be reclaimed" in warned.stderr and "%gpu keep" in warned.stderr, warned

    kept = holder.execute("%gpu keep")
    assert "Kept: these GPUs will not be reclaimed before" in kept.stdout, kept
    assert "0 keeps left" in kept.stdout
    assert server.get(f"dlinfra/api/kernels/{holder.kernel_id}/usage")["idle"]["state"] == "idle"

    wait_until(
        lambda: _in_state(server, holder.kernel_id, "warned"), timeout=30, what="a second warning"
    )
    refused = holder.execute("%gpu keep")
    assert "kept 1 times already" in refused.stderr, refused

    def waiter_granted() -> Any:
        mine = server.get(f"dlinfra/api/allocations?kernel_id={waiter.kernel_id}")["allocations"]
        return [a for a in mine if a["state"] == "granted"]

    granted = wait_until(waiter_granted, timeout=30, what="the queued kernel's grant")
    assert len(granted[0]["gpus"]) == 1
    ended = server.get(f"dlinfra/api/allocations?kernel_id={holder.kernel_id}&state=all")
    assert ended["allocations"][0]["end_reason"].startswith("reclaimed: idle for")

    # the reclaimed kernel was restarted without GPUs and runs on; it says why, once
    def runs_again() -> Any:
        try:
            return holder.execute(f"print(repr({CUDA}))", timeout=10)
        except Exception:
            return None

    after = wait_until(runs_again, timeout=60, what="the restarted kernel")
    assert after.stdout.strip() == "''", after
    assert "were reclaimed" in after.stderr and "restarted without GPUs" in after.stderr, after
    assert "Ask for GPUs again with %gpu N" in after.stderr
    again = holder.execute("print('quiet')")
    assert again.stderr == "" and again.error is None
    # the waiter applies its grant before its next cell
    assert waiter.value(CUDA) == granted[0]["cuda_visible_devices"]
