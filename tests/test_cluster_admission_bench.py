"""benchmarks/cluster_admission.py: its workload and figures by hand, and one tiny replay of both
runs on the session's real control plane."""

from __future__ import annotations

from pathlib import Path

import pytest
from bench_module import load_benchmark

from jupyter_dlinfra.testing.k8s import ControlPlane

bench = load_benchmark("cluster_admission")

HEADER = (
    "name,cpu_milli,memory_mib,num_gpu,gpu_milli,gpu_spec,qos,pod_phase,"
    "creation_time,deletion_time,scheduled_time"
)
#: ten pods: a quiet start, then a window with both 8-GPU pods; one never scheduled, one CPU-only
ROWS = [
    "a0,1,1,1,1000,,LS,Running,0,100,0",
    "a1,1,1,1,500,,BE,Running,100,300,100",
    "a2,1,1,1,1000,,LS,Running,200,400,200",
    "b0,1,1,8,1000,,LS,Running,1000,1400,1000",
    "b1,1,1,1,1000,,LS,Running,1100,1300,1100",
    "b2,1,1,8,1000,,LS,Running,1200,1400,1200",
    "b3,1,1,2,1000,,BE,Running,1300,1500,1300",
    "p0,1,1,1,1000,,BE,Pending,1350,1600,",
    "c0,1,1,0,0,,LS,Running,1400,1500,1400",
    "b4,1,1,1,1000,,LS,Running,1500,1600,1500",
]


@pytest.fixture
def trace(tmp_path: Path) -> Path:
    path = tmp_path / "pods.csv"
    path.write_text("\n".join([HEADER, *ROWS]) + "\n")
    return path


def test_the_workload_is_the_window_with_the_most_big_pods_compressed_to_the_load(
    trace: Path,
) -> None:
    pods = bench.load_trace(trace)
    assert [(a, g) for a, g, _ in pods][:3] == [(0.0, 1), (100.0, 1), (200.0, 1)]
    assert len(pods) == 8  # neither the pending pod nor the CPU-only one
    plan = bench.workload(
        pods, pods=5, capacity=16, node_gpus=8, arrive_s=10.0, load=0.7, users=3, seed=7
    )
    # the first window with both 8-GPU pods: a1..b2; arrivals keep their spacing over 10 s
    assert [p.gpus for p in plan] == [1, 1, 8, 1, 8]
    created = [100, 200, 1000, 1100, 1200]
    assert [p.arrive for p in plan] == pytest.approx([(c - 100) / 1100 * 10 for c in created])
    # durations in the recorded proportions (200, 200, 400, 200, 200 s), the load reached
    offered = sum(p.gpus * p.duration for p in plan)
    assert offered == pytest.approx(0.7 * 16 * 10.0, rel=1e-6)
    assert all(bench.MIN_S <= p.duration <= 10.0 for p in plan)
    assert plan[2].duration == pytest.approx(2 * plan[1].duration, rel=1e-6)
    # seeded users
    again = bench.workload(
        pods, pods=5, capacity=16, node_gpus=8, arrive_s=10.0, load=0.7, users=3, seed=7
    )
    assert [p.user for p in plan] == [p.user for p in again]


def test_the_figures_of_a_run() -> None:
    pods = [
        bench.Pod(index=0, user="u0", gpus=8, arrive=0.0, duration=10.0),
        bench.Pod(index=1, user="u1", gpus=1, arrive=0.0, duration=5.0),
    ]
    run = bench.Run(
        name="x",
        outcomes=[
            bench.Outcome(pods[0], started=2.0, ended=12.0),
            bench.Outcome(pods[1], started=0.0, ended=5.0),
        ],
        wall_s=12.0,
        gpus=8,
    )
    f = bench.figures(run)
    assert f["mean_wait_s"] == 1.0 and f["p95_wait_s"] == 2.0
    assert f["big_p95_wait_s"] == 2.0 and f["big_max_wait_s"] == 2.0
    # (8 x 10 + 1 x 5) GPU-s over 8 GPUs x 12 s
    assert f["util_pct"] == pytest.approx(100 * 85 / 96)
    # slowdowns 1.2 and 1.0
    assert f["jain"] == pytest.approx(2.2**2 / (2 * (1.2**2 + 1.0)))


def test_a_tiny_replay_on_the_real_control_plane(
    trace: Path, k8s_control_plane: ControlPlane, capsys: pytest.CaptureFixture[str]
) -> None:
    code = bench.main(
        [
            "--kubeconfig", str(k8s_control_plane.kubeconfig),
            "--trace", str(trace),
            "--nodes", "2",
            "--pods", "5",
            "--arrive-s", "6",
            "--users", "2",
        ]
    )  # fmt: skip
    out = capsys.readouterr().out
    assert code == 0, out
    result = out.strip().splitlines()[-1]
    assert result.startswith("RESULT ours_p95_wait_s=")
    figures = dict(item.split("=") for item in result.split()[1:])
    assert set(figures) == {
        "ours_p95_wait_s",
        "kube_p95_wait_s",
        "big_p95_wait_s",
        "kube_big_p95_wait_s",
        "jain",
        "util_pct",
        "kube_util_pct",
    }
    assert 0 < float(figures["util_pct"]) <= 100 and 0 < float(figures["kube_util_pct"]) <= 100
