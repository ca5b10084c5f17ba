"""Stress: several OS processes request and release GPUs on one shared database at once.

Afterwards the database itself must show that no GPU ever had two holders at a time, that every
request any worker made is there exactly once in the state the worker left it, and that the
holdings table agrees with the granted allocations.
"""

from __future__ import annotations

import itertools
import multiprocessing
import queue
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from jupyter_dlinfra.core.books.ledger import Ledger
from jupyter_dlinfra.core.clock import SystemClock
from jupyter_dlinfra.core.models import AllocationState, Gpu
from jupyter_dlinfra.core.scheduling.types import model_matches
from jupyter_dlinfra.core.store import Store, allocation_gpus, allocations, holdings

from .kit import A100
from .stress_worker import KERNELS_PER_WORKER, NODE, worker_main

WORKERS = 8
REQUESTS_PER_WORKER = 30
GPUS = 8
TIME_LIMIT_S = 60.0


def _inventory() -> list[Gpu]:
    return [
        Gpu(uuid=f"GPU-stress-{i}", node=NODE, index=i, model=A100, memory_bytes=80 << 30)
        for i in range(GPUS)
    ]


def _run_workers(url: str) -> list[dict[str, Any]]:
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(WORKERS)
    results = ctx.Queue()
    procs = [
        ctx.Process(
            target=worker_main,
            args=(url, w, REQUESTS_PER_WORKER, 1000 + w, barrier, results),
            name=f"dlinfra-stress-{w}",
        )
        for w in range(WORKERS)
    ]
    for p in procs:
        p.start()
    records: list[dict[str, Any]] = []
    errors: list[str] = []
    reported: set[int] = set()
    deadline = time.monotonic() + TIME_LIMIT_S
    try:
        while len(reported) < len(procs):
            try:
                worker, status, payload = results.get(timeout=0.5)
            except queue.Empty:
                # a worker that died without reporting (killed, crashed on import) fails at once
                silent = [p.name for w, p in enumerate(procs) if w not in reported and p.exitcode]
                if silent:
                    pytest.fail(f"workers exited without reporting: {silent}")
                if time.monotonic() > deadline:
                    pytest.fail(f"the workers did not finish within {TIME_LIMIT_S} s")
                continue
            reported.add(worker)
            if status == "ok":
                records.extend(payload)
            else:
                errors.append(f"worker {worker}:\n{payload}")
    finally:
        for p in procs:
            p.join(timeout=10)
            if p.is_alive():
                p.kill()
                p.join()
    assert not errors, "\n".join(errors)
    assert all(p.exitcode == 0 for p in procs), [p.exitcode for p in procs]
    return records


def _stress(url: str) -> None:
    store = Store(url)
    try:
        ledger = Ledger(store, SystemClock())
        ledger.sync_inventory(NODE, _inventory())
        started = time.monotonic()
        records = _run_workers(url)
        elapsed = time.monotonic() - started
        assert elapsed < TIME_LIMIT_S
        _verify(store, ledger, records)
    finally:
        store.dispose()


def _verify(store: Store, ledger: Ledger, records: list[dict[str, Any]]) -> None:
    assert len(records) == WORKERS * REQUESTS_PER_WORKER >= 200

    with store.read() as conn:
        rows = {r.id: r for r in conn.execute(select(allocations))}
        owned: dict[int, set[str]] = defaultdict(set)
        for aid, uuid in conn.execute(
            select(allocation_gpus.c.allocation_id, allocation_gpus.c.gpu_uuid)
        ):
            owned[aid].add(uuid)
        held = {
            (uuid, aid)
            for uuid, aid in conn.execute(select(holdings.c.gpu_uuid, holdings.c.allocation_id))
        }

    # (b) every request a worker made is there exactly once, in the state the worker left it
    made = [r["id"] for r in records]
    assert len(made) == len(set(made)), "two workers were handed the same allocation id"
    assert set(rows) == set(made), "rows in the database that no worker asked for, or missing"
    for rec in records:
        row = rows[rec["id"]]
        assert row.kernel_id == rec["kernel_id"]
        assert row._mapping["count"] == rec["count"]
        state = AllocationState(row.state)
        if rec["ended_by_me"]:
            assert state.value == rec["end_state"], (rec, row)
            assert row.end_reason == rec["reason"]
            assert row.ended_at is not None
        else:
            assert state.active, (rec, row)  # nobody else may end another worker's request
            assert row.ended_at is None
        if rec["first_state"] == AllocationState.GRANTED.value:
            assert set(rec["gpus"]) == owned[row.id]
        if state is AllocationState.CANCELLED:
            assert row.granted_at is None
        # a grant, once made, holds exactly `count` GPUs; a request never granted holds none
        if row.granted_at is None:
            assert state in (AllocationState.QUEUED, AllocationState.CANCELLED)
            assert owned[row.id] == set()
        else:
            assert state in (AllocationState.GRANTED, AllocationState.RELEASED)
            assert len(owned[row.id]) == row._mapping["count"]
            assert row.granted_at >= row.created_at
    assert any(r["first_state"] == AllocationState.QUEUED.value for r in records), (
        "no request ever had to wait: the test did not stress anything"
    )

    # (a) no GPU was ever held by two allocations at overlapping times
    by_gpu: dict[str, list[tuple[float, float, int]]] = defaultdict(list)
    for aid, uuids in owned.items():
        row = rows[aid]
        for uuid in uuids:
            end = row.ended_at if row.ended_at is not None else float("inf")
            by_gpu[uuid].append((row.granted_at, end, aid))
    assert set(by_gpu) <= {g.uuid for g in _inventory()}
    for uuid, spans in by_gpu.items():
        spans.sort()
        for (start1, end1, a1), (start2, _end2, a2) in itertools.pairwise(spans):
            assert start1 <= end1
            assert end1 <= start2, f"{uuid} held by {a1} and {a2} at once"

    # ... and the same from the event log, which needs no clock: grants and releases alternate
    holder: dict[str, int] = {}
    for ev in ledger.events(limit=1_000_000):
        if ev.kind not in ("granted", "released"):
            continue
        moved = ev.detail["gpus"]
        assert isinstance(moved, list)
        assert ev.allocation_id is not None
        for uuid in moved:
            if ev.kind == "granted":
                assert uuid not in holder, f"{uuid} granted to {ev.allocation_id} while held"
                holder[uuid] = ev.allocation_id
            else:
                assert holder.pop(uuid) == ev.allocation_id

    # (c) the holdings table is exactly the GPUs of the granted allocations
    granted = {aid for aid, row in rows.items() if row.state == AllocationState.GRANTED.value}
    assert held == {(uuid, aid) for aid in granted for uuid in owned[aid]}
    assert {(u, a) for u, a in holder.items()} == held

    # the final state is at rest: nothing that waits could be granted now (in the order of
    # service, each blocked request keeps the free GPUs it could use)
    free = [g for g in ledger.gpus(NODE) if g.uuid not in {u for u, _ in held}]
    for waiting in sorted(ledger.queue(NODE), key=lambda a: a.position or 0):
        fits = [g for g in free if model_matches(waiting.model, g.model)]
        assert len(fits) < waiting.count, f"allocation {waiting.id} waits with GPUs free"
        free = [g for g in free if g not in fits]
    assert len(ledger.kernels(NODE)) == WORKERS * KERNELS_PER_WORKER


def test_many_processes_share_one_sqlite_file(tmp_path: Path) -> None:
    _stress(f"sqlite:///{tmp_path / 'shared.db'}")


def test_many_processes_share_one_postgresql_database(fresh_postgres_db: str) -> None:
    _stress(fresh_postgres_db)
