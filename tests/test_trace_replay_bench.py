"""benchmarks/trace_replay.py on a tiny trace whose figures are worked out by hand.

One node with 2 GPUs. Pods (times in s; duration = deletion - scheduled):

    p0  LS  1 GPU          created 0   scheduled 0   deleted 100   duration 100
    p1  BE  1 GPU (0.5)    created 10  scheduled 10  deleted 210   duration 200
    p2  LS  2 GPUs         created 20  scheduled 50  deleted 80    duration 30  (recorded wait 30)
    p3  BE  1 GPU          created 30  scheduled 30  deleted 40    duration 10
    p4  BE  1 GPU          created 5, deleted 65, never scheduled: Pending, left out (waited 60)
    p5  no GPU: left out

fifo: p0 at 0, p1 at 10, both GPUs busy. p2 waits; from 100 it keeps the GPU p0 freed, so p3
(behind it) still waits. At 210 p2 gets both GPUs, at 240 p3 gets one. Waits 0, 0, 190, 210:
mean 100, p95 210. Makespan 250 s; held 100 + 200 + 2 * 30 + 10 = 370 GPU-s, 74 % of 2 x 250.
Bounded slowdowns (floor 10 s): p0 1, p1 1, p2 (240 - 20) / 30, p3 (250 - 30) / 10 = 22.

ours (LS above BE, BE preemptible, grace 5 s): at 20 and 30 nothing can free 2 GPUs for p2 (p0
is LS). At 100 p0's GPU is free and preempting p1 makes two: p1 is preempted at 100, stops at
105 having run 95 s (lost), is queued again; p2 runs 105-135; at 135 p3 (older) and p1 start.
Waits: p0 0, p1 135 - 105 = 30, p2 85, p3 105: mean 55, p95 105. Makespan 335 s (p1 ends at
335); held 100 + 95 + 200 + 60 + 10 = 465 GPU-s.
"""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Any

import pytest
from bench_module import load_benchmark

bench = load_benchmark("trace_replay")

POD_HEADER = (
    "name,cpu_milli,memory_mib,num_gpu,gpu_milli,gpu_spec,qos,pod_phase,"
    "creation_time,deletion_time,scheduled_time"
)
PODS = [
    "p0,1000,1024,1,1000,,LS,Running,0,100,0",
    "p1,1000,1024,1,500,,BE,Failed,10,210,10",
    "p2,1000,1024,2,1000,,LS,Succeeded,20,80,50",
    "p3,1000,1024,1,1000,,BE,Succeeded,30,40,30",
    "p4,1000,1024,1,1000,,BE,Pending,5,65,",
    "p5,1000,1024,0,0,,LS,Running,1,99,1",
]
NODES = ["sn,cpu_milli,memory_mib,gpu,model", "n1,64000,262144,2,T4"]


@pytest.fixture
def files(tmp_path: Path) -> tuple[Path, Path]:
    pods = tmp_path / "pods.csv"
    pods.write_text("\n".join([POD_HEADER, *PODS]) + "\n")
    nodes = tmp_path / "nodes.csv"
    nodes.write_text("\n".join(NODES) + "\n")
    return pods, nodes


def _trace(files: tuple[Path, Path]) -> tuple[Any, Any]:
    nodes = bench.load_nodes(files[1])
    return nodes, bench.load_trace(files[0], nodes)


def test_the_trace_becomes_requests(files: tuple[Path, Path]) -> None:
    nodes, trace = _trace(files)
    assert [(n.name, n.gpus, n.model) for n in nodes] == [("n1", 2, "T4")]
    assert [p.name for p in trace.pods] == ["p0", "p1", "p2", "p3"]
    assert [p.gpus for p in trace.pods] == [1, 1, 2, 1]
    assert [p.duration for p in trace.pods] == [100, 200, 30, 10]
    assert [p.recorded_wait for p in trace.pods] == [0, 0, 30, 0]
    assert all(p.model is None for p in trace.pods)
    assert (trace.rows, trace.no_gpu, trace.fractional) == (6, 1, 1)
    assert trace.pending_waits == (60.0,)
    assert (trace.with_spec, trace.narrowed, trace.impossible) == (0, 0, 0)


def test_fifo_waits_match_the_hand_count(files: tuple[Path, Path]) -> None:
    nodes, trace = _trace(files)
    sim = bench.simulate(trace.pods, nodes, bench.FIFO, label="fifo")
    assert sim.waits == [0, 0, 190, 210]
    assert sim.mean_wait == 100
    assert sim.p95_wait == 210
    assert sim.makespan == 250
    assert sim.held_gpu_s == 370
    assert sim.util_pct == pytest.approx(74.0)
    assert (sim.preemptions, sim.lost_gpu_s, sim.stuck) == (0, 0, 0)
    assert sim.qos_mean_wait("LS") == 95
    assert sim.qos_mean_wait("BE") == 105
    ls, be = (1 + 220 / 30) / 2, (1 + 22) / 2
    assert sim.qos_slowdown("LS") == pytest.approx(ls)
    assert sim.qos_slowdown("BE") == pytest.approx(be)
    assert sim.jain == pytest.approx((ls + be) ** 2 / (2 * (ls * ls + be * be)))


def test_our_policy_preempts_be_and_counts_the_lost_work(files: tuple[Path, Path]) -> None:
    nodes, trace = _trace(files)
    sim = bench.simulate(trace.pods, nodes, bench.OURS, label="ours", grace=5.0)
    assert sim.waits == [0, 30, 85, 105]
    assert [r.preempted for r in sim.runs] == [0, 1, 0, 0]
    assert sim.mean_wait == 55
    assert sim.p95_wait == 105
    assert sim.makespan == 335
    assert sim.held_gpu_s == 465
    assert sim.lost_gpu_s == 95
    assert sim.preemptions == 1
    assert sim.util_pct == pytest.approx(100 * 465 / (2 * 335))


def test_compressed_arrivals(files: tuple[Path, Path]) -> None:
    nodes, trace = _trace(files)
    # x10: arrivals at 0, 1, 2, 3. p0 and p1 run; p2 waits for both (p0 ends at 100, p1 at 201)
    sim = bench.simulate(trace.pods, nodes, bench.FIFO, label="fifo", load=10.0)
    assert [r.arrival for r in sim.runs] == [0, 1, 2, 3]
    assert sim.waits == [0, 0, 199, 228]


def test_recorded_figures(files: tuple[Path, Path]) -> None:
    _, trace = _trace(files)
    rec = bench.recorded(trace.pods, 2)
    assert rec.mean_wait == 7.5
    assert rec.p95_wait == 30
    # held 100 + 200 + 60 + 10 over 2 GPUs x 210 s (0 to p1's end)
    assert rec.util_pct == pytest.approx(100 * 370 / 420)
    assert bench.peak_gpus(trace.pods) == 4  # at 50: p0, p1 and both of p2


def test_model_lists_become_one_substring() -> None:
    cluster = {"V100M16": 4, "V100M32": 8, "T4": 2}
    assert bench.model_constraint("", cluster) == (None, True)
    assert bench.model_constraint("V100M16|V100M32", cluster) == ("v100m", True)
    assert bench.model_constraint("T4", cluster) == ("t4", True)
    assert bench.model_constraint("T4|V100M16|V100M32", cluster) == (None, True)
    # no substring names exactly these two: the one with more GPUs
    assert bench.model_constraint("T4|V100M32", cluster) == ("v100m32", False)
    assert bench.model_constraint("A100", cluster) == ("", False)


def test_a_pod_whose_models_are_absent_is_left_out(tmp_path: Path) -> None:
    pods = tmp_path / "pods.csv"
    pods.write_text(
        f"{POD_HEADER}\na,1,1,1,1000,P100|T4,LS,Running,0,10,0\nb,1,1,1,1000,A100,LS,Running,0,10,0"
        "\nc,1,1,4,1000,,BE,Running,0,10,0\n"
    )
    nodes = [bench.Node(name="n1", gpus=2, model="T4"), bench.Node(name="n2", gpus=1, model="V100")]
    trace = bench.load_trace(pods, nodes)
    assert [(p.name, p.model) for p in trace.pods] == [("a", "t4")]
    assert (trace.with_spec, trace.impossible) == (2, 2)


def test_subset_keeps_the_mix_and_a_largest_node() -> None:
    nodes = [bench.Node(name=f"a{i}", gpus=8, model="A") for i in range(4)]
    nodes += [bench.Node(name=f"b{i}", gpus=2, model="B") for i in range(4)]
    assert bench.subset(nodes, 100) == nodes
    half = bench.subset(nodes, 20)
    assert sum(n.gpus for n in half) == 20
    assert {n.model for n in half} == {"A", "B"}
    assert [n.name for n in bench.subset(nodes, 3)] == ["a0"]


def test_main_prints_the_result_line_and_writes_the_plot(
    files: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    plot = tmp_path / "out" / "replay.png"
    argv = ["--pods", str(files[0]), "--nodes", str(files[1]), "--plot", str(plot)]
    argv += ["--grace", "5", "--loads", "10", "--cluster-gpus", "1"]
    assert bench.main(argv) == 0
    out = capsys.readouterr().out
    assert "one whole GPU" in out and "no user field" in out and "gpu_spec" in out
    last = out.strip().splitlines()[-1]
    assert last.startswith("RESULT fifo_mean_wait_s=")
    fields = dict(kv.split("=") for kv in last.split()[1:])
    assert fields["fifo_mean_wait_s"] == "100.00"
    assert fields["policy_mean_wait_s"] == "55.00"
    assert fields["fifo_p95_wait_s"] == "210.00"
    assert fields["policy_p95_wait_s"] == "105.00"
    assert fields["policy_util_pct"] == f"{100 * 465 / 670:.2f}"
    assert fields["recorded_mean_wait_s"] == "7.50"
    assert fields["small_gpus"] == "2"  # a 1-GPU cluster keeps one node of the largest size
    data = plot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert struct.unpack(">II", data[16:24])[0] > 100  # width from the IHDR chunk


def test_missing_files_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert bench.main(["--pods", str(tmp_path / "nope.csv")]) == 2
    assert "trace file not found" in capsys.readouterr().err
