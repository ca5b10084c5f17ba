"""Admission by the ledger against kube-scheduler alone, on a real Kubernetes control plane.

Replays a window of Alibaba's cluster-trace-gpu-v2023 pod list (``alibaba-v2023-pods.csv`` in
``../shared/traces``, see the README there) as batch/v1 Jobs through the gateway's own
:class:`~jupyter_dlinfra.backends.kubernetes.KubernetesBackend`, twice, on the same fake GPU nodes
(a :class:`~jupyter_dlinfra.testing.k8s.NodeAgent` plays their kubelet: a Job's pod runs as a local
process):

ours
    each Job asks the ledger for GPUs of any one node first (``Ledger.request(anywhere=True)``, a
    request of the pool, as the job service asks on a Kubernetes gateway) and is created, pinned
    to the granted node, only once the ledger grants it; when its pod ends the grant is released
    and the ledger's pass admits the next ones. This is the job service's path on a gateway with
    admission, without the notebook conversion around it;
kube
    each Job is created when it arrives (``admission: false``): kube-scheduler alone places the
    pods, with the same PriorityClass.

Both runs create the same Jobs at the same offsets and poll them the same way (one
``KubernetesBackend.poll`` every ``POLL_S``), so both see the control plane's own latencies.

How the trace becomes Jobs:

* pods that were scheduled and ask for GPUs, in order of ``creation_time``; a fraction of one GPU
  is one GPU; ``--pods`` consecutive ones, from the window with the most 8-GPU pods (the trace has
  44 of 6,203, and big requests are what admission is for);
* arrivals keep their recorded spacing, compressed to span ``--arrive-s`` seconds; durations keep
  their recorded proportions, scaled so that the offered GPU-seconds are ``--load`` times what the
  cluster can give over the arrival span (the recorded pod list is a sample of a 6,212-GPU cluster
  and would queue nothing on a test cluster), each between ``MIN_S`` and ``--arrive-s`` (the load
  printed is the one reached within those bounds);
* the trace has no user: each pod gets one of ``--users`` users, drawn with Zipf-like weights (a
  few heavy users, as in teams), seeded;
* one class (``batch``) for all: the trace's QoS classes are a cluster's service tiers, not a
  team's priorities, so no Job preempts another in either run (``preemptions`` is printed to say
  so, not measured).

A Job's pod runs ``python -c "time.sleep(d)"`` (the backend's wrapper around it); its wait is from
its arrival to the first poll that sees it running.

Reported per run: mean and p95 wait, p95 wait of the 8-GPU Jobs, the longest wait of a big one,
utilisation (GPU-seconds run over the cluster's GPUs x the span from the first arrival to the last
end), Jain's fairness index over the users' mean bounded slowdowns (``(end - arrival) / max(d, 1
s)``; 1 is perfectly even), and the whole run's wall time. The last line: ``RESULT
ours_p95_wait_s=... kube_p95_wait_s=... big_p95_wait_s=... kube_big_p95_wait_s=... jain=...
util_pct=... kube_util_pct=...`` (``jain`` and ``util_pct`` are ours). Targets (issue 16): big
Jobs' p95 wait at most half of kube-scheduler's alone, fairness >= 0.9, utilisation within 5 % of
kube-scheduler's alone.

A control plane is started in a temporary directory (``scripts/k8s/build.sh`` builds its binaries)
unless ``--kubeconfig`` names a running one; either way the benchmark registers its own nodes
(labelled with a pool only its Jobs select) and deletes them and its namespaces at the end.

Usage: ``.venv/bin/python benchmarks/cluster_admission.py [--nodes 16] [--gpus-per-node 8]
[--pods 300] [--arrive-s 120] [--load 1.3] [--users 8] [--seed 1] [--kubeconfig PATH]``.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import math
import random
import secrets
import signal
import sys
import tempfile
import time
import warnings
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import kubernetes.client
import kubernetes.config
from kubernetes.client.exceptions import ApiException

from jupyter_dlinfra.backends.base import BackendState, JobHandle, JobLaunch
from jupyter_dlinfra.backends.kubernetes import KubernetesBackend
from jupyter_dlinfra.core.books.ledger import Ledger
from jupyter_dlinfra.core.clock import SystemClock
from jupyter_dlinfra.core.models import Gpu, KernelRecord
from jupyter_dlinfra.core.scheduling.policy import SchedulingPolicy
from jupyter_dlinfra.core.store import Store
from jupyter_dlinfra.kube.priority import ensure_priority_classes
from jupyter_dlinfra.testing.k8s import ControlPlane, FakeNode, NodeAgent

REPO = Path(__file__).resolve().parent.parent
TRACE = REPO / ".." / "shared" / "traces" / "alibaba-v2023-pods.csv"
MODEL = "NVIDIA-A100-SXM4-80GB"
POOL_LABEL = "dlinfra.bench/pool"
#: seconds between two polls of the Jobs (both runs)
POLL_S = 0.25
#: the shortest a replayed pod runs (seconds): shorter ones would measure process start-up
MIN_S = 3.0
BIG = 8


@dataclass(frozen=True)
class Pod:
    index: int
    user: str
    gpus: int
    arrive: float  # seconds after the start of the replay
    duration: float


@dataclass
class Outcome:
    pod: Pod
    started: float | None = None
    ended: float | None = None


@dataclass
class Run:
    name: str
    outcomes: list[Outcome]
    wall_s: float
    gpus: int
    preemptions: int = 0
    stats: dict[str, float] = field(default_factory=dict)


# -- the workload ------------------------------------------------------------------------------


def load_trace(path: Path) -> list[tuple[float, int, float]]:
    """(arrival, GPUs, duration) of every scheduled pod with GPUs, in order of arrival."""
    found = []
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            gpus = int(row["num_gpu"] or 0)
            if gpus <= 0 or not row["scheduled_time"]:
                continue
            start, end = float(row["scheduled_time"]), float(row["deletion_time"])
            found.append((float(row["creation_time"]), gpus, max(end - start, 0.0)))
    found.sort()
    return found


def workload(
    trace: Sequence[tuple[float, int, float]],
    *,
    pods: int,
    capacity: int,
    node_gpus: int,
    arrive_s: float,
    load: float,
    users: int,
    seed: int,
) -> list[Pod]:
    """``pods`` consecutive pods of the window with the most big ones, compressed (see above)."""
    fitting = [t for t in trace if t[1] <= node_gpus]
    if len(fitting) < pods:
        raise SystemExit(f"the trace has {len(fitting)} pods that fit a node, fewer than {pods}")
    bigs = [1 if g >= BIG else 0 for _, g, _ in fitting]
    best, count = 0, sum(bigs[:pods])
    most = count
    for start in range(1, len(fitting) - pods + 1):
        count += bigs[start + pods - 1] - bigs[start - 1]
        if count > most:
            best, most = start, count
    window = fitting[best : best + pods]
    first, last = window[0][0], window[-1][0]
    spread = (last - first) or 1.0
    arrivals = [(a - first) / spread * arrive_s for a, _, _ in window]
    wanted = load * capacity * arrive_s
    upper = arrive_s

    def offered(scale: float) -> float:
        return sum(g * min(max(d * scale, MIN_S), upper) for _, g, d in window)

    low, high = 0.0, 1.0
    while offered(high) < wanted and high < 1e9:
        high *= 2
    for _ in range(60):
        mid = (low + high) / 2
        low, high = (mid, high) if offered(mid) < wanted else (low, mid)
    rng = random.Random(seed)
    weights = [1.0 / (rank + 1) for rank in range(users)]
    names = [f"user{u:02d}" for u in range(users)]
    return [
        Pod(
            index=i,
            user=rng.choices(names, weights)[0],
            gpus=g,
            arrive=arrivals[i],
            duration=min(max(d * high, MIN_S), upper),
        )
        for i, (_, g, d) in enumerate(window)
    ]


# -- the runs ------------------------------------------------------------------------------------


def replay(
    name: str,
    api: Any,
    pool: str,
    nodes: Sequence[FakeNode],
    plan: Sequence[Pod],
    workdir: Path,
    classes: dict[str, str],
) -> Run:
    ours = name == "ours"
    namespace = f"bench-{name}-{secrets.token_hex(3)}"
    core = kubernetes.client.CoreV1Api(api)
    core.create_namespace({"metadata": {"name": namespace}})
    backend = KubernetesBackend(
        namespace=namespace,
        api_client=api,
        python=sys.executable,
        node_selector={POOL_LABEL: pool},
        priority_classes=classes,
        admission=ours,
        timeout=60.0,
    )
    ledger: Ledger | None = None
    if ours:
        ledger = Ledger(Store(f"sqlite:///{workdir}/{name}.sqlite"), SystemClock())
        ledger.set_scheduling_policy(SchedulingPolicy(preemption=False), who="benchmark")
        for node in nodes:
            ledger.sync_inventory(
                node.name,
                [
                    Gpu(
                        uuid=f"{node.name}-{i}",
                        node=node.name,
                        index=i,
                        model=MODEL,
                        memory_bytes=80 << 30,
                    )
                    for i in range(node.gpus)
                ],
            )
    outcomes = [Outcome(p) for p in plan]
    handles: dict[int, JobHandle] = {}
    allocation_of: dict[int, int] = {}
    pod_of: dict[int, int] = {}  # allocation -> pod
    seen = 0
    arrived = 0
    t0 = time.monotonic()

    def submit(pod: Pod, node: str | None) -> None:
        jobdir = workdir / name / f"job-{pod.index}"
        jobdir.mkdir(parents=True, exist_ok=True)
        launch = JobLaunch(
            job_id=pod.index,
            name=f"trace-{pod.index}",
            user=pod.user,
            workdir=str(jobdir),
            argv=[sys.executable, "-c", f"import time; time.sleep({pod.duration:.2f})"],
            gpus=pod.gpus,
            priority_class="batch",
            node=node,
            log_path=str(jobdir / "job.log"),
        )
        handles[pod.index] = backend.submit(launch)

    try:
        while any(o.ended is None for o in outcomes):
            now = time.monotonic() - t0
            if now > 6 * max(p.arrive + p.duration for p in plan) + 120:
                raise SystemExit(f"{name}: the replay did not end; see the node agent's log")
            while arrived < len(plan) and plan[arrived].arrive <= now:
                pod = plan[arrived]
                arrived += 1
                if ledger is None:
                    submit(pod, None)
                    continue
                kernel = f"job-{pod.index}"
                ledger.register_kernel(
                    KernelRecord(
                        kernel_id=kernel,
                        user=pod.user,
                        node="gateway",
                        server_id="benchmark",
                        kernel_name="job",
                    ),
                    token_hash=None,
                )
                alloc = ledger.request(kernel_id=kernel, count=pod.gpus, kind="job", anywhere=True)
                allocation_of[pod.index] = alloc.id
                pod_of[alloc.id] = pod.index
            if ledger is not None:
                # what the ledger's passes granted since the last look: admitted, created now
                for event in ledger.events(since=seen, limit=10_000):
                    seen = max(seen, event.seq)
                    index = pod_of.get(event.allocation_id or -1)
                    if event.kind == "granted" and index is not None:
                        submit(plan[index], str(event.detail["node"]))
            statuses = backend.poll(list(handles.values())) if handles else {}
            stamp = time.monotonic() - t0
            for index, handle in list(handles.items()):
                status = statuses.get(handle.ref)
                outcome = outcomes[index]
                if status is None or outcome.ended is not None:
                    continue
                if status.state is BackendState.RUNNING and outcome.started is None:
                    outcome.started = stamp
                elif status.state.ended:
                    if status.state is not BackendState.SUCCEEDED:
                        raise SystemExit(
                            f"{name}: job {index} {status.state.value}: {status.reason}"
                        )
                    outcome.started = outcome.started if outcome.started is not None else stamp
                    outcome.ended = stamp
                    del handles[index]
                    if ledger is not None:
                        ledger.release(allocation_of[index], reason="done")
            time.sleep(POLL_S)
    finally:
        with contextlib.suppress(ApiException):
            core.delete_namespace(namespace)
    gpus = sum(n.gpus for n in nodes)
    return Run(name=name, outcomes=outcomes, wall_s=time.monotonic() - t0, gpus=gpus)


# -- figures -------------------------------------------------------------------------------------


def p95(values: Sequence[float]) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[max(0, math.ceil(0.95 * len(ordered)) - 1)]


def jain(values: Sequence[float]) -> float:
    if not values:
        return 1.0
    return sum(values) ** 2 / (len(values) * sum(v * v for v in values))


def figures(run: Run) -> dict[str, float]:
    waits = [o.started - o.pod.arrive for o in run.outcomes if o.started is not None]
    big = [
        o.started - o.pod.arrive
        for o in run.outcomes
        if o.started is not None and o.pod.gpus >= BIG
    ]
    slowdown: dict[str, list[float]] = defaultdict(list)
    for o in run.outcomes:
        assert o.ended is not None
        slowdown[o.pod.user].append((o.ended - o.pod.arrive) / max(o.pod.duration, 1.0))
    used = sum(o.pod.gpus * ((o.ended or 0.0) - (o.started or 0.0)) for o in run.outcomes)
    first = min(o.pod.arrive for o in run.outcomes)
    last = max(o.ended or 0.0 for o in run.outcomes)
    return {
        "mean_wait_s": sum(waits) / len(waits) if waits else 0.0,
        "p95_wait_s": p95(waits),
        "big_p95_wait_s": p95(big),
        "big_max_wait_s": max(big, default=0.0),
        "util_pct": 100.0 * used / (run.gpus * max(last - first, 1e-9)),
        "jain": jain([sum(v) / len(v) for v in slowdown.values()]),
        "bigs": float(len(big)),
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, default=16)
    parser.add_argument("--gpus-per-node", type=int, default=8)
    parser.add_argument("--pods", type=int, default=300)
    parser.add_argument("--arrive-s", type=float, default=120.0)
    parser.add_argument("--load", type=float, default=1.3)
    parser.add_argument("--users", type=int, default=8)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--trace", type=Path, default=TRACE)
    parser.add_argument("--kubeconfig", type=Path, default=None)
    args = parser.parse_args(argv)
    # stopped by a signal, the control plane and the nodes are still taken down (finally)
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    # the test control plane serves a self-signed certificate on loopback
    warnings.filterwarnings("ignore", message="Unverified HTTPS request")
    if not args.trace.exists():
        print(f"no trace at {args.trace} (see ../shared/traces/README.md)", file=sys.stderr)
        return 2
    capacity = args.nodes * args.gpus_per_node
    plan = workload(
        load_trace(args.trace),
        pods=args.pods,
        capacity=capacity,
        node_gpus=args.gpus_per_node,
        arrive_s=args.arrive_s,
        load=args.load,
        users=args.users,
        seed=args.seed,
    )
    sizes = defaultdict(int)
    for p in plan:
        sizes[p.gpus] += 1
    offered = sum(p.gpus * p.duration for p in plan) / (capacity * args.arrive_s)
    durations = sorted(p.duration for p in plan)
    print(
        f"workload: {len(plan)} pods of the trace ({dict(sorted(sizes.items()))} by GPUs), "
        f"{len(set(p.user for p in plan))} users, arrivals over {args.arrive_s:.0f} s, durations "
        f"{durations[0]:.1f} s to {durations[-1]:.1f} s (median "
        f"{durations[len(durations) // 2]:.1f} s), offered {offered:.2f} x {capacity} GPUs"
    )
    pool = secrets.token_hex(3)
    with tempfile.TemporaryDirectory(prefix="dlinfra-admission-") as tmp:
        workdir = Path(tmp)
        plane: ControlPlane | None = None
        if args.kubeconfig is None:
            plane = ControlPlane(workdir / "k8s")
            plane.start()
            api = plane.api_client()
        else:
            api = kubernetes.config.new_client_from_config(config_file=str(args.kubeconfig))
        nodes = [
            FakeNode(
                name=f"bench-{pool}-{i:02d}",
                gpus=args.gpus_per_node,
                model=MODEL,
                labels={POOL_LABEL: pool},
            )
            for i in range(args.nodes)
        ]
        agent = NodeAgent(api, nodes, workdir=workdir / "agent")
        agent.start()
        try:
            classes = ensure_priority_classes(api, SchedulingPolicy().classes, prune=False)
            runs = [
                replay(name, api, pool, nodes, plan, workdir, classes) for name in ("ours", "kube")
            ]
        finally:
            agent.stop()
            core = kubernetes.client.CoreV1Api(api)
            for node in nodes:
                with contextlib.suppress(ApiException):
                    core.delete_node(node.name)
            api.close()
            if plane is not None:
                plane.stop()
    print(
        f"{'run':<6} {'mean wait':>10} {'p95 wait':>9} {'big p95':>8} {'big max':>8} "
        f"{'util %':>7} {'jain':>6} {'wall s':>7}"
    )
    for run in runs:
        run.stats = figures(run)
        f = run.stats
        print(
            f"{run.name:<6} {f['mean_wait_s']:>10.1f} {f['p95_wait_s']:>9.1f} "
            f"{f['big_p95_wait_s']:>8.1f} {f['big_max_wait_s']:>8.1f} {f['util_pct']:>7.1f} "
            f"{f['jain']:>6.3f} {run.wall_s:>7.0f}"
        )
    ours, kube = runs[0].stats, runs[1].stats
    print(f"big Jobs: {ours['bigs']:.0f}; preemptions: 0 (one class, see the docstring)")
    print(
        f"RESULT ours_p95_wait_s={ours['p95_wait_s']:.1f} kube_p95_wait_s={kube['p95_wait_s']:.1f} "
        f"big_p95_wait_s={ours['big_p95_wait_s']:.1f} "
        f"kube_big_p95_wait_s={kube['big_p95_wait_s']:.1f} jain={ours['jain']:.3f} "
        f"util_pct={ours['util_pct']:.1f} kube_util_pct={kube['util_pct']:.1f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
