"""benchmarks/scheduler_scale.py: the workload, the baseline and the harness on small inputs.

The hand-made case: one node of 8 GPUs, first come first served (no fair share, preemption,
borrowing or reservations). Phase 1 is asked for 2 waiting requests: d1 (4 GPUs) and d2 (4) are
submitted and granted, then d3 (8) and d4 (2) are submitted and wait. The stream:

1. a holding ends: the first of [d1, d2], d1; 4 GPUs are free. The pass examines d3 (does not
   fit) and d4 (granted): 2 decisions;
2. d6 (2 GPUs) arrives: d3 does not fit, d6 is granted: 2 decisions, no GPU left;
3. a holding ends: the last of [d2, d4, d6] (held in that order after d1 left), d6; the pass
   examines d3 only: 1 decision.

With the core's reservations (16) instead, d3 keeps the 4 free GPUs for itself at step 1, so d4
is not examined; at step 3 the holding that ends is d2 and d3 gets all 8 GPUs.
"""

from __future__ import annotations

import re
import struct
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from bench_module import load_benchmark

from jupyter_dlinfra.core.scheduling.policy import SchedulingPolicy
from jupyter_dlinfra.core.scheduling.scheduler import Scheduler
from jupyter_dlinfra.core.scheduling.types import Demand, Slot

bench = load_benchmark("scheduler_scale")

FCFS = SchedulingPolicy(fair_share=False, preemption=False, borrowing=False, reservations=0)


def _demand(
    rid: int,
    count: int,
    *,
    at: float = -100.0,
    user: str = "u000",
    model: str | None = None,
    gang: bool = False,
) -> Demand:
    return Demand(
        id=rid,
        user=user,
        count=count,
        model=model,
        gang=gang,
        klass="batch",
        kind="job",
        submitted_at=at + rid,
    )


def _hand_workload(policy: SchedulingPolicy) -> Any:
    pool = tuple(_demand(i, n) for i, n in ((1, 4), (2, 4), (3, 8), (4, 2), (5, 1)))
    stream = (bench.Release(0.0), bench.Arrival(_demand(6, 2)), bench.Release(0.99))
    return bench.Workload(
        nodes=1,
        slots=tuple(bench.make_slots(1)),
        policy=policy,
        pool=pool,
        stream=stream,
        waiting=2,
    )


@pytest.mark.parametrize("which", ["ours", "baseline"])
def test_the_hand_made_stream(which: str) -> None:
    workload = _hand_workload(FCFS)
    run = bench.run(bench.new_scheduler(which, workload), workload, which)
    assert (run.fill_grants, run.waiting_start) == (2, 2)
    assert run.examined == [2, 2, 1]
    assert (run.passes, run.events, run.decisions, run.grants) == (3, 3, 5, 2)
    assert run.waiting_end == 1
    assert run.sim_s == pytest.approx(3 * bench.TICK_S)
    assert len(run.pass_ns) == len(run.event_ns) == 3
    assert all(e >= p for e, p in zip(run.event_ns, run.pass_ns, strict=True))


def test_reservations_keep_gpus_for_the_large_request() -> None:
    workload = _hand_workload(SchedulingPolicy(fair_share=False, preemption=False))
    run = bench.run(bench.new_scheduler("ours", workload), workload, "ours")
    assert run.examined == [1, 1, 1]
    assert run.grants == 1
    assert run.waiting_end == 2


def test_ours_and_the_baseline_decide_alike_first_come_first_served() -> None:
    # one node: no tie between nodes to break differently; the same order and early stops
    generated = bench.make_workload(1, waiting=40, events=300)
    workload = bench.Workload(
        nodes=1,
        slots=generated.slots,
        policy=FCFS,
        pool=generated.pool,
        stream=generated.stream,
        waiting=40,
    )
    ours = bench.run(bench.new_scheduler("ours", workload), workload, "ours")
    base = bench.run(bench.new_scheduler("baseline", workload), workload, "baseline")
    assert ours.examined == base.examined
    assert (ours.grants, ours.waiting_end) == (base.grants, base.waiting_end)
    assert ours.grants > 50


def test_the_baseline_places_best_fit_and_gangs() -> None:
    slots = [Slot(uuid=f"a{i}", node="a", model="A100-SXM4-80GB", index=i) for i in range(8)]
    slots += [Slot(uuid=f"b{i}", node="b", model="A100-SXM4-80GB", index=i) for i in range(4)]
    slots += [Slot(uuid=f"c{i}", node="c", model="L40S", index=i) for i in range(2)]
    base = bench.BaselineScheduler(FCFS, slots)
    base.submit(_demand(1, 2))
    base.submit(_demand(2, 2, model="a100"))
    out = base.schedule(0.0)
    # best fit: any model fills the L40S node exactly; an A100 goes to the smaller A100 node
    assert [g.gpus for g in out.grants] == [("c0", "c1"), ("b0", "b1")]
    base.submit(_demand(3, 10, gang=True))
    base.submit(_demand(4, 1, user="u001"))
    out = base.schedule(1.0)
    assert [g.request_id for g in out.grants] == [3]
    assert sorted(out.grants[0].gpus) == sorted([f"a{i}" for i in range(8)] + ["b2", "b3"])
    assert out.examined == 1  # no GPU is left for request 4
    base.release(1)
    out = base.schedule(2.0)
    assert [g.request_id for g in out.grants] == [4]


def test_the_baseline_keeps_quotas_and_fair_share_order() -> None:
    slots = [Slot(uuid=f"g{i}", node="n", model="L40S", index=i) for i in range(4)]
    policy = SchedulingPolicy(user_quotas={"heavy": 1}, borrowing=False, preemption=False)
    base = bench.BaselineScheduler(policy, slots)
    base.submit(_demand(1, 1, user="heavy"))
    base.schedule(0.0)
    base.submit(_demand(2, 1, user="heavy", at=-200.0))  # older, but over quota
    base.submit(_demand(3, 1, user="light"))
    out = base.schedule(1.0)
    assert [g.request_id for g in out.grants] == [3]
    assert out.examined == 2
    assert base.over_quota(base.demands[2])
    # fair share: a user who holds GPUs goes after one who holds none, whatever the age
    base.submit(_demand(4, 1, user="light", at=-500.0))
    base.submit(_demand(5, 1, user="fresh"))
    out = base.schedule(2.0)
    assert [g.request_id for g in out.grants] == [5, 4]


def test_the_generated_workload() -> None:
    slots = bench.make_slots(8)
    assert len(slots) == 64
    per_node = {s.node: s.model for s in slots}
    assert Counter(per_node.values()) == {"A100-SXM4-80GB": 4, "H100-SXM5-80GB": 2, "L40S": 2}
    first = bench.make_workload(8, waiting=50, events=400)
    again = bench.make_workload(8, waiting=50, events=400)
    assert first == again
    sched = Scheduler(first.policy)
    sched.add_gpus(first.slots)
    demands = list(first.pool) + [e.demand for e in first.stream if isinstance(e, bench.Arrival)]
    assert all(sched.check(d) is None for d in demands)
    assert {d.klass for d in demands} == {"interactive", "batch", "low"}
    assert all(d.kind == ("kernel" if d.klass == "interactive" else "job") for d in demands)
    assert all(d.gang == (d.count == 16) for d in demands)
    assert any(d.node for d in demands) and any(d.model for d in demands)
    assert len({d.user for d in demands}) > 100
    assert first.policy.group_quotas and first.policy.user_quotas and first.policy.group_shares
    assert not bench.make_workload(8, waiting=5, events=5, quotas=False).policy.user_quotas


def test_percentile_and_prefix() -> None:
    assert bench.percentile([], 99) == 0.0
    assert bench.percentile(list(range(1, 101)), 99) == 99
    assert bench.percentile([5, 1, 3], 50) == 3
    run = bench.Run("ours", 1, 8)
    run.pass_ns, run.event_ns = [10, 20, 30, 40], [11, 21, 31, 41]
    run.examined, run.at_event = [1, 2, 3, 4], [0, 1, 1, 2]
    run.passes = run.events = 4
    cut = run.prefix(2)
    assert (cut.passes, cut.decisions, cut.pass_ns) == (3, 6, [10, 20, 30])
    assert cut.decisions_per_s == pytest.approx(6 / 60e-9)


def test_main_quick_prints_the_result_line_and_writes_the_plot(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    plot = tmp_path / "out" / "scale.png"
    assert bench.main(["--quick", "--plot", str(plot)]) == 0
    out = capsys.readouterr().out
    assert "baseline" in out and "anchors" in out and "growth 4 -> 8 nodes" in out
    last = out.strip().splitlines()[-1]
    assert re.fullmatch(r"RESULT decisions_per_s=\d+ p99_ms=\d+\.\d{3}( [a-z_0-9]+=\S+)+", last)
    fields = dict(kv.split("=") for kv in last.split()[1:])
    assert fields["nodes"] == "8"
    assert int(fields["decisions_per_s"]) > 0
    data = plot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert struct.unpack(">II", data[16:24])[0] > 100
