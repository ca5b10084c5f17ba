"""benchmarks/ledger_scale.py at a tiny size (2 nodes of 8 GPUs): the ledger it seeds in bulk is
one the ledger itself would hold (the asked queue, every GPU held by one grant, one active
request per kernel, and a pass over it decides nothing new), and a run prints its table and
ends with its RESULT line. No timing is asserted."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from bench_module import load_benchmark

from jupyter_dlinfra.core.books.ledger import Ledger
from jupyter_dlinfra.core.clock import SystemClock
from jupyter_dlinfra.core.models import AllocationState, KernelRecord
from jupyter_dlinfra.core.store import Store

bench = load_benchmark("ledger_scale")

RESULT_KEYS = [
    "changes_per_s",
    "changes_per_s_together",
    "callers",
    "together_ratio",
    "changes_per_s_posted",
    "in_flight",
    "request_p99_ms",
    "release_p99_ms",
    "queue_p99_ms",
    "allocations_p99_ms",
    "growth",
    "core_decisions_per_s",
]


def test_the_seeded_ledger_is_one_the_ledger_would_hold(tmp_path: Path) -> None:
    seed = bench.Seeder(bench.Config(2, 20)).build()
    # the settle preempted and requeued jobs: the seeding went through the core's decisions
    assert any(e["kind"] == "preempted" for e in seed.events)
    store = Store(f"sqlite:///{tmp_path / 'ledger.db'}")
    try:
        bench.write_seed(store, seed)
        ledger = Ledger(store, SystemClock(), policy=seed.policy, groups_of=bench.groups_of)
        queue = ledger.queue()
        assert len(queue) == 20
        assert all(a.state is AllocationState.QUEUED and a.position for a in queue)
        active = ledger.allocations()
        granted = [a for a in active if a.state is AllocationState.GRANTED]
        holders = {uuid: a.id for uuid, a in ledger.holders().items()}
        assert holders == {uuid: a.id for a in granted for uuid in a.gpus}
        assert set(holders) == {g.uuid for g in ledger.gpus()}
        assert len({a.kernel_id for a in active}) == len(active)
        assert all(ledger.kernel(a.kernel_id).user == a.user for a in active)
        # a pass over the seeded state (setting the same policy runs one) grants and preempts
        # nothing: the state is settled, as after the ledger's own passes
        since = ledger.events(since=0, limit=100_000)[-1].seq
        ledger.set_scheduling_policy(seed.policy, who="test")
        decided = [e.kind for e in ledger.events(since=since) if e.allocation_id is not None]
        assert decided == []
        # the next request gets an id after the seeded ones
        ledger.register_kernel(
            KernelRecord(kernel_id="k-new", user="u001", node="node-0000", server_id="s"),
            token_hash=None,
        )
        alloc = ledger.request(kernel_id="k-new", count=1)
        assert alloc.id == max(seed.allocations) + 1
        assert alloc.state is AllocationState.QUEUED
    finally:
        store.dispose()


def test_main_prints_the_table_and_the_result_line(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["--sizes", "2x0,2x20", "--budget-s", "0.5", "--backend", "sqlite"]
    assert bench.main([*argv, "--core-events", "100", "--together-pairs", "12"]) == 0
    out = capsys.readouterr().out
    rows = [line.split() for line in out.splitlines() if line.startswith("sqlite ")]
    # backend, nodes, GPUs, waiting, seeded (the queue() length before the first change), ...
    assert [(r[1], r[2], r[3], r[4]) for r in rows] == [
        ("2", "16", "0", "0"),
        ("2", "16", "20", "20"),
    ]
    last = out.strip().splitlines()[-1]
    assert re.fullmatch(r"RESULT( [a-z_0-9]+=\d+(\.\d+)?)+", last), last
    fields = dict(kv.split("=") for kv in last.split()[1:])
    assert list(fields) == RESULT_KEYS
    assert float(fields["changes_per_s"]) > 0
    assert float(fields["core_decisions_per_s"]) > 0
    # the window of callers at once ran, with a server's threads and with one
    assert fields["callers"] == str(bench.LEDGER_THREADS)
    assert float(fields["changes_per_s_together"]) > 0 and float(fields["together_ratio"]) > 0
    # ... and posted to the ledger's writing thread, as the REST handlers post them
    assert fields["in_flight"] == str(bench.IN_FLIGHT)
    assert float(fields["changes_per_s_posted"]) > 0
    together = [line for line in out.splitlines() if " 1 caller " in line]
    assert [line.split(":")[0] for line in together] == ["  sqlite 2x0", "  sqlite 2x20"]


def test_sizes_are_parsed_and_checked() -> None:
    assert bench.parse_sizes(["16x0,2x20", "16x0"]) == (bench.Config(2, 20), bench.Config(16, 0))
    with pytest.raises(SystemExit):
        bench.main(["--sizes", "16"])
    with pytest.raises(SystemExit):
        bench.main(["--sizes", "2x0", "--callers", "0"])
