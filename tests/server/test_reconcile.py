"""Which kernels reconciliation keeps: decided by the kernel manager, the pid and its start time."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import replace
from typing import Any

import pytest

from jupyter_dlinfra.core.clock import ManualClock
from jupyter_dlinfra.core.models import KernelRecord
from jupyter_dlinfra.server.liveness import process_started_at


def record(app: Any, kernel_id: str, **fields: Any) -> KernelRecord:
    service = app.service
    values = {
        "user": service.settings.user,
        "node": service.settings.node,
        "server_id": service.settings.server_id,
        **fields,
    }
    rec = KernelRecord(kernel_id=kernel_id, **values)
    service.ledger.register_kernel(rec)
    service.ledger.request(kernel_id=kernel_id, count=1)
    return rec


def known(app: Any) -> set[str]:
    return {k.kernel_id for k in app.service.ledger.kernels()}


async def test_reconcile_keeps_the_living_and_releases_the_dead(
    dlinfra_app: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    service = dlinfra_app.service
    clock = ManualClock(service.ledger.clock.now())
    monkeypatch.setattr(service.ledger, "clock", clock)
    now = clock.now()
    finished = subprocess.Popen([sys.executable, "-c", "pass"])
    dead_started = process_started_at(finished.pid)
    finished.wait()
    me = os.getpid()

    # launching in this server: not yet in the kernel manager, no pid yet
    record(dlinfra_app, "launching", created_at=now)
    # a launch that never finished, long ago
    record(dlinfra_app, "stuck", created_at=now - 3600)
    # another server's kernel whose process is alive (this test process stands in for it)
    record(dlinfra_app, "alive", server_id="other", pid=me, pid_started_at=process_started_at(me))
    # a process that has ended
    record(dlinfra_app, "ended", server_id="other", pid=finished.pid, pid_started_at=dead_started)
    # a live pid that belongs to another process than the one recorded (pid reuse)
    record(dlinfra_app, "recycled", server_id="other", pid=me, pid_started_at=1.0)

    # another server's dead kernels are left to that server to report for a while
    assert await service.reconcile() == ["stuck"]
    clock.advance(service.settings.owner_report_grace - 1)
    assert await service.reconcile() == []
    clock.advance(1)
    dead = await service.reconcile()

    assert set(dead) == {"ended", "recycled"}
    assert known(dlinfra_app) == {"launching", "alive"}
    ended = service.ledger.allocations(kernel_id="ended", active=False)
    assert ended[0].end_reason == "kernel no longer exists"


async def test_a_kernel_relaunched_long_after_its_first_start_gets_its_launch_grace(
    dlinfra_app: Any,
) -> None:
    """A restart registers the kernel again before its new process exists: another server's
    reconcile must not take it for dead because the kernel itself is old."""
    service = dlinfra_app.service
    now = service.ledger.clock.now()
    finished = subprocess.Popen([sys.executable, "-c", "pass"])
    finished.wait()
    old = record(
        dlinfra_app,
        "old",
        server_id="other",
        created_at=now - 3600,
        pid=finished.pid,
        pid_started_at=process_started_at(os.getpid()),
    )
    # its server restarts it: the new launch is registered, its pid not known yet
    service.ledger.register_kernel(replace(old, pid=None, pid_started_at=None, created_at=0.0))
    assert service.ledger.kernel("old").launched_at == pytest.approx(now, abs=60)

    assert await service.reconcile() == []
    assert "old" in known(dlinfra_app)


async def test_a_kernel_between_its_restarts_processes_keeps_what_it_carries(
    dlinfra_app: Any,
) -> None:
    """After the old process ended and before the new one registers, the record must not read
    as a dead kernel: a reconcile then would release the GPUs the restart carries over."""
    service = dlinfra_app.service
    finished = subprocess.Popen([sys.executable, "-c", "pass"])
    started = process_started_at(finished.pid)
    finished.wait()
    record(dlinfra_app, "restarting", pid=finished.pid, pid_started_at=started)
    service.ledger.update_kernel("restarting", keep_on_restart=True)

    await service.kernel_stopped(
        kernel_id="restarting", restart=True, reason="kernel restarted", pid=finished.pid
    )
    assert await service.reconcile() == []
    held = service.ledger.allocations(kernel_id="restarting")
    assert [a.state.value for a in held] == ["granted"]


async def test_another_servers_kernel_that_ends_is_left_to_that_server_to_report(
    dlinfra_app: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A reconcile between a kernel's exit and its own server's report must not take the end
    for a vanished kernel: the user would read the wrong reason (found by a CI run)."""
    service = dlinfra_app.service
    clock = ManualClock(service.ledger.clock.now())
    monkeypatch.setattr(service.ledger, "clock", clock)
    finished = subprocess.Popen([sys.executable, "-c", "pass"])
    started = process_started_at(finished.pid)
    finished.wait()
    record(dlinfra_app, "shut", server_id="other", pid=finished.pid, pid_started_at=started)

    assert await service.reconcile() == []
    clock.advance(service.settings.owner_report_grace / 2)
    assert await service.reconcile() == []
    # its server reports the shutdown, as its kernel provisioner's cleanup does
    service.ledger.forget_kernel("shut", reason="kernel shut down")
    ended = service.ledger.allocations(kernel_id="shut", active=False)
    assert [a.end_reason for a in ended] == ["kernel shut down"]

    # a pass that no longer finds it forgets it: found dead again, it gets a fresh grace
    assert await service.reconcile() == []
    record(dlinfra_app, "shut", server_id="other", pid=finished.pid, pid_started_at=started)
    assert await service.reconcile() == []
    clock.advance(service.settings.owner_report_grace)
    assert await service.reconcile() == ["shut"]
