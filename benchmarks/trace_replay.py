"""First come, first served against our scheduling policy, on a real GPU cluster's pod trace.

A discrete-event simulation drives the real
:class:`jupyter_dlinfra.core.scheduling.scheduler.Scheduler` on a manual clock (its ``now``
argument) with Alibaba's cluster-trace-gpu-v2023 (``openb``) pod list and that cluster's GPU nodes
(``alibaba-v2023-pods.csv`` and ``alibaba-v2023-gpu-nodes.csv`` in ``../shared/traces``; see the
README there). How the trace becomes requests:

* arrival: ``creation_time``; size: ``num_gpu``. Pods with no GPU are left out. A pod that asks
  for a fraction of one GPU (``gpu_milli`` < 1000) asks for one whole GPU here, since the
  scheduler grants whole GPUs: this overstates the GPU demand of the trace (sharing one GPU among
  pods is what the trace's own scheduler did and ours does not);
* duration: ``deletion_time - scheduled_time`` for pods that ran (Running pods end where the
  snapshot ends, as the trace records them);
* pods that stayed Pending (never scheduled; they have no duration) are left out of the
  simulation and counted, with how long they waited in the real cluster before they were deleted;
* model: ``gpu_spec``, the ``|``-separated models a pod accepts. The core takes one
  case-insensitive substring of the model name per request, so a list becomes the longest
  substring shared by every listed model that matches exactly the listed models present in the
  cluster (``V100M16|V100M32`` -> ``v100m``); when there is none, the listed model with the most
  GPUs in the cluster, which only narrows the pod's choice (it never lands on a model it does not
  accept; such pods are counted). A list that covers every model in the cluster is no constraint.
  In this trace every ``gpu_spec`` is empty, so no pod has a model constraint;
* the trace has no user field: every pod's user is its QoS class, so within a class, order is
  by age, and fairness is reported across the QoS classes (per-QoS mean and p95 wait, and Jain's
  fairness index over the per-QoS mean bounded slowdown, ``(finish - arrival) / max(duration,
  10 s)``).

Policies compared, both on the core's scheduler with its defaults for the rest (16 blocked
requests keep the free GPUs they could use, the others backfill):

fifo
    ``SchedulingPolicy`` with one class, fair share, preemption and borrowing off: first come,
    first served, except that requests behind a blocked one may use GPUs it cannot.
ours
    QoS classes as priority classes, Guaranteed > LS > Burstable > BE, and BE pods preemptible.
    A preempted pod keeps its GPUs for ``--grace`` seconds (Kubernetes' default termination grace
    period, 30 s), then stops, is queued again and restarts from scratch: the GPU-hours it had
    run, grace included, are lost (counted, and still counted as allocated in the utilisation).

Reported for each: mean and p95 queueing delay (all the time a pod waits, first wait and any
wait after a preemption), per-QoS waits, allocated-GPU utilisation (GPU-seconds held over GPUs x
makespan, first arrival to last finish), preemptions and lost GPU-hours, beside the queueing
delay the trace itself recorded (``scheduled_time - creation_time``, same pods).

Load. As recorded, these pods never hold more than about 71 of the cluster's 6,212 GPUs at once
(the pod list is a sample of the cluster's work; allocated utilisation 0.27 %), so nothing
queues for GPUs and both policies give zero waits; the trace's own delays (median 2 s, mean 70 s)
come from what this simulation does not model (CPU and memory fit, GPU sharing, the cluster
scheduler's own latency). Two sweeps follow:

1. inter-arrival times divided by k (x10, x100, x1000; durations unchanged). Compression only
   overlaps pods that were apart in time, and most pods last minutes while the few long ones
   hold most GPU-hours, so even x1000 (149 days in 3.6 hours) queues nothing here. It is printed
   to show that, not to compare policies;
2. the same arrivals, as recorded, on a smaller cluster with the same mix of models (96 down to
   48 GPUs, i.e. 65 to 129 times the recorded load). This is the comparison that matters: a team
   cluster sized near its peak demand, where queues form in bursts.

The RESULT line is for the trace as recorded (x1, all GPUs), as it happened, and appends the
figures of the smallest cluster of sweep 2 (``small_*`` keys).

Usage: ``.venv/bin/python benchmarks/trace_replay.py [--pods FILE] [--nodes FILE] [--plot PNG]
[--loads K ...] [--cluster-gpus N ...] [--grace S] [--limit N]``; the files default to
``../shared/traces`` beside the repository, the plot to ``build/benchmarks/trace_replay.png``
(``build/`` is ignored by git). The last line printed starts with ``RESULT`` and holds
key=value pairs.
"""

from __future__ import annotations

import argparse
import csv
import heapq
import math
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from jupyter_dlinfra.core.scheduling.policy import PriorityClass, SchedulingPolicy
from jupyter_dlinfra.core.scheduling.scheduler import Scheduler
from jupyter_dlinfra.core.scheduling.types import Demand, Slot

REPO = Path(__file__).resolve().parents[1]
TRACES = REPO / ".." / "shared" / "traces"
PODS_NAME = "alibaba-v2023-pods.csv"
NODES_NAME = "alibaba-v2023-gpu-nodes.csv"
POD_COLUMNS = (
    "name",
    "num_gpu",
    "gpu_milli",
    "gpu_spec",
    "qos",
    "pod_phase",
    "creation_time",
    "deletion_time",
    "scheduled_time",
)
NODE_COLUMNS = ("sn", "gpu", "model")
DEFAULT_PLOT = REPO / "build" / "benchmarks" / "trace_replay.png"
#: highest first; only BE is preemptible
QOS_ORDER = ("Guaranteed", "LS", "Burstable", "BE")
LOADS = (10.0, 100.0, 1000.0)
CLUSTER_GPUS = (96, 72, 64, 56, 48)
GRACE_S = 30.0
#: bounded slowdown's floor, so that pods of a few seconds do not dominate the means
SLOWDOWN_FLOOR_S = 10.0

FIFO = SchedulingPolicy(
    classes=(PriorityClass(name="fifo", priority=0),),
    kernel_class="fifo",
    job_class="fifo",
    fair_share=False,
    preemption=False,
    borrowing=False,
)
OURS = SchedulingPolicy(
    classes=(
        PriorityClass(name="guaranteed", priority=400),
        PriorityClass(name="ls", priority=300),
        PriorityClass(name="burstable", priority=200),
        PriorityClass(name="be", priority=100, preemptible=True),
    ),
    kernel_class="ls",
    job_class="be",
)


class TraceError(Exception):
    """A trace file cannot be read."""


# -- the trace ------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class Node:
    name: str
    gpus: int
    model: str


@dataclass(frozen=True, kw_only=True)
class Pod:
    name: str
    qos: str
    #: whole GPUs asked for (a fraction of one is rounded up to 1)
    gpus: int
    #: the model substring given to the core; None: any model
    model: str | None
    created: float
    duration: float
    #: scheduled_time - creation_time in the real cluster
    recorded_wait: float


@dataclass(frozen=True, kw_only=True)
class Trace:
    pods: tuple[Pod, ...]
    rows: int
    no_gpu: int
    fractional: int
    #: never scheduled: how long each waited before it was deleted (s)
    pending_waits: tuple[float, ...]
    with_spec: int
    #: a model list the core could only narrow
    narrowed: int
    #: can never run on these nodes (no accepted model, or too many GPUs)
    impossible: int


def default_path(name: str) -> Path:
    return TRACES / name


def _rows(path: Path, columns: Sequence[str]) -> Iterable[tuple[int, dict[str, str]]]:
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        missing = [c for c in columns if c not in (reader.fieldnames or ())]
        if missing:
            raise TraceError(f"{path}: no column {', '.join(missing)} (has {reader.fieldnames})")
        yield from enumerate(reader, start=2)


def load_nodes(path: Path) -> list[Node]:
    nodes = []
    for line, row in _rows(path, NODE_COLUMNS):
        try:
            gpus = int(row["gpu"])
        except ValueError:
            raise TraceError(f"{path}:{line}: gpu {row['gpu']!r} is not a whole number") from None
        if gpus > 0:
            nodes.append(Node(name=row["sn"], gpus=gpus, model=row["model"].strip()))
    return nodes


def model_constraint(spec: str, gpus_by_model: dict[str, int]) -> tuple[str | None, bool]:
    """The core's model substring for a ``|``-separated ``gpu_spec``, and whether it is exact.

    Exact: the substring matches exactly the listed models present in the cluster. Otherwise the
    listed model with the most GPUs whose name matches no unlisted model (a narrower choice).
    Returns ``("", False)`` when the cluster has none of the listed models.
    """
    listed = {m.strip().lower() for m in spec.split("|") if m.strip()}
    if not listed:
        return None, True
    cluster = {m.lower(): n for m, n in gpus_by_model.items()}
    accepted = {m for m in cluster if m in listed}
    if not accepted:
        return "", False
    if accepted == set(cluster):
        return None, True

    def matched(sub: str) -> set[str]:
        return {m for m in cluster if sub in m}

    first = min(accepted)
    subs = {first[i:j] for i in range(len(first)) for j in range(i + 1, len(first) + 1)}
    exact = [s for s in subs if matched(s) == accepted]
    if exact:
        return max(exact, key=lambda s: (len(s), s)), True
    usable = [m for m in accepted if matched(m) <= accepted]
    if not usable:
        return "", False
    return max(usable, key=lambda m: (cluster[m], m)), False


def load_trace(path: Path, nodes: Sequence[Node], *, limit: int | None = None) -> Trace:
    """The pods that ran, as requests; ``limit``: the first N GPU pods by creation time."""
    gpus_by_model: dict[str, int] = defaultdict(int)
    for node in nodes:
        gpus_by_model[node.model] += node.gpus
    largest: dict[str, int] = defaultdict(int)
    for node in nodes:
        largest[node.model.lower()] = max(largest[node.model.lower()], node.gpus)
    pods: list[Pod] = []
    rows = no_gpu = fractional = with_spec = narrowed = impossible = 0
    pending: list[tuple[float, float]] = []
    for line, row in _rows(path, POD_COLUMNS):
        rows += 1
        try:
            num_gpu = int(row["num_gpu"])
            milli = int(row["gpu_milli"] or 0)
            created = float(row["creation_time"])
            deleted = float(row["deletion_time"]) if row["deletion_time"] else None
            scheduled = float(row["scheduled_time"]) if row["scheduled_time"] else None
        except ValueError as err:
            raise TraceError(f"{path}:{line}: {err}") from None
        if num_gpu <= 0:
            no_gpu += 1
            continue
        if scheduled is None or deleted is None:
            pending.append((created, (deleted - created) if deleted is not None else math.nan))
            continue
        qos = row["qos"].strip()
        if qos not in QOS_ORDER:
            raise TraceError(f"{path}:{line}: unknown qos {qos!r} (known: {QOS_ORDER})")
        fractional += milli < 1000
        spec = row["gpu_spec"].strip()
        with_spec += bool(spec)
        model, exact = model_constraint(spec, gpus_by_model)
        narrowed += bool(spec) and not exact and model != ""
        fits = (
            max(largest.values(), default=0)
            if model is None
            else max((n for m, n in largest.items() if model in m), default=0)
        )
        if model == "" or fits < num_gpu:
            impossible += 1
            continue
        pods.append(
            Pod(
                name=row["name"],
                qos=qos,
                gpus=num_gpu,
                model=model,
                created=created,
                duration=max(0.0, deleted - scheduled),
                recorded_wait=max(0.0, scheduled - created),
            )
        )
    pods.sort(key=lambda p: (p.created, p.name))
    if limit is not None:
        pods = pods[:limit]
        cut = pods[-1].created if pods else -math.inf
        pending = [p for p in pending if p[0] <= cut]
    return Trace(
        pods=tuple(pods),
        rows=rows,
        no_gpu=no_gpu,
        fractional=fractional,
        pending_waits=tuple(w for _, w in pending),
        with_spec=with_spec,
        narrowed=narrowed,
        impossible=impossible,
    )


def subset(nodes: Sequence[Node], gpus: int) -> list[Node]:
    """About ``gpus`` GPUs of ``nodes`` with the same mix of models, and a node of the largest size.

    Nodes are interleaved across models in proportion to their numbers (the i-th of n nodes of a
    model sorts at (i + 0.5) / n) and taken in that order while they fit under ``gpus``.
    """
    if gpus >= sum(n.gpus for n in nodes):
        return list(nodes)
    by_model: dict[str, list[Node]] = defaultdict(list)
    for node in nodes:
        by_model[node.model].append(node)
    order = sorted(
        (
            ((i + 0.5) / len(group), model, node.name, node)
            for model, group in by_model.items()
            for i, node in enumerate(group)
        ),
        key=lambda e: e[:3],
    )
    biggest = max(n.gpus for n in nodes)
    chosen: list[Node] = []
    total = 0
    for *_, node in order:
        if total + node.gpus <= gpus:
            chosen.append(node)
            total += node.gpus
    if not any(n.gpus == biggest for n in chosen):
        # so that every pod still fits somewhere: make room for the first node of the largest size
        while chosen and total + biggest > gpus:
            total -= chosen.pop().gpus
        chosen.append(next(e[-1] for e in order if e[-1].gpus == biggest))
    return chosen


def slots_of(nodes: Iterable[Node]) -> list[Slot]:
    return [
        Slot(uuid=f"{n.name}/{i}", node=n.name, model=n.model, index=i)
        for n in nodes
        for i in range(n.gpus)
    ]


# -- the simulation -------------------------------------------------------------------------------


@dataclass
class PodRun:
    arrival: float
    wait: float = 0.0
    finish: float = math.nan
    preempted: int = 0
    #: when the current wait began
    queued_at: float = 0.0


@dataclass
class Sim:
    label: str
    load: float
    gpus: int
    pods: list[Pod]
    runs: list[PodRun]
    makespan: float = 0.0
    held_gpu_s: float = 0.0
    lost_gpu_s: float = 0.0
    preemptions: int = 0
    passes: int = 0
    sched_s: float = 0.0
    #: pods that never got their GPUs (should be none)
    stuck: int = 0
    #: pods no node of this cluster could hold, left out
    unplaceable: int = 0
    by_qos: dict[str, list[int]] = field(default_factory=dict)

    @property
    def waits(self) -> list[float]:
        return [r.wait for r in self.runs]

    @property
    def mean_wait(self) -> float:
        return mean(self.waits)

    @property
    def p95_wait(self) -> float:
        return percentile(self.waits, 95)

    @property
    def util_pct(self) -> float:
        span = self.gpus * self.makespan
        return 100.0 * self.held_gpu_s / span if span else 0.0

    def slowdown(self, i: int) -> float:
        run, pod = self.runs[i], self.pods[i]
        return (run.finish - run.arrival) / max(pod.duration, SLOWDOWN_FLOOR_S)

    def qos_mean_wait(self, qos: str) -> float:
        return mean([self.runs[i].wait for i in self.by_qos.get(qos, [])])

    def qos_p95_wait(self, qos: str) -> float:
        return percentile([self.runs[i].wait for i in self.by_qos.get(qos, [])], 95)

    def qos_slowdown(self, qos: str) -> float:
        return mean([self.slowdown(i) for i in self.by_qos.get(qos, [])])

    @property
    def jain(self) -> float:
        return jain([self.qos_slowdown(q) for q in QOS_ORDER if self.by_qos.get(q)])


def mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else 0.0


def percentile(values: Sequence[float], pct: float) -> float:
    """Nearest rank: the smallest value with at least ``pct`` % of the values at or below it."""
    if not values:
        return 0.0
    ordered = sorted(values)
    return float(ordered[max(1, math.ceil(pct / 100 * len(ordered))) - 1])


def jain(values: Sequence[float]) -> float:
    """Jain's fairness index: 1 when all equal, 1/n when one takes everything."""
    if not values:
        return 1.0
    square = sum(v * v for v in values)
    return sum(values) ** 2 / (len(values) * square) if square else 1.0


ARRIVE, FINISH, STOP = 0, 1, 2


def simulate(
    pods: Sequence[Pod],
    nodes: Sequence[Node],
    policy: SchedulingPolicy,
    *,
    label: str,
    load: float = 1.0,
    grace: float = GRACE_S,
) -> Sim:
    """Replay ``pods`` with arrivals compressed ``load`` times; one pass per distinct instant.

    Pods that no node here could ever hold are left out (``Sim.unplaceable``).
    """
    klass = {q: q.lower() for q in QOS_ORDER} if len(policy.classes) > 1 else None
    start = min((p.created for p in pods), default=0.0)
    sched = Scheduler(policy, now=start)
    sched.add_gpus(slots_of(nodes))

    def demand(request: int, pod: Pod, now: float) -> Demand:
        return Demand(
            id=request,
            user=pod.qos,
            count=pod.gpus,
            model=pod.model,
            klass=klass[pod.qos] if klass else policy.job_class,
            kind="job",
            submitted_at=now,
        )

    placeable = [p for p in pods if sched.check(demand(0, p, start)) is None]
    unplaceable = len(pods) - len(placeable)
    pods = placeable
    runs = [PodRun(arrival=start + (p.created - start) / load) for p in pods]
    sim = Sim(label, load, sum(n.gpus for n in nodes), pods, runs)
    sim.unplaceable = unplaceable
    for i, pod in enumerate(pods):
        sim.by_qos.setdefault(pod.qos, []).append(i)

    # (time, order, kind, id): finishes and stops before arrivals at one instant, so that
    # arrivals see the GPUs freed then
    events: list[tuple[float, int, int, int]] = []
    for i, run in enumerate(runs):
        heapq.heappush(events, (run.arrival, 1, ARRIVE, i))
    pod_of: dict[int, int] = {}  # request id -> pod index
    granted_at: dict[int, float] = {}  # request id -> when it got its GPUs
    next_id = 0
    clock = time.perf_counter

    def submit(i: int, now: float) -> None:
        nonlocal next_id
        next_id += 1
        pod = pods[i]
        pod_of[next_id] = i
        runs[i].queued_at = now
        sched.submit(demand(next_id, pod, now))

    def release(request: int, now: float) -> float:
        """Release a holding; the GPU-seconds it held."""
        holding = sched.release(request)
        held = len(holding.gpus) * (now - granted_at.pop(request))
        sim.held_gpu_s += held
        return held

    last = start
    while events:
        now = events[0][0]
        while events and events[0][0] == now:
            _, _, kind, ident = heapq.heappop(events)
            if kind == ARRIVE:
                submit(ident, now)
            elif kind == FINISH:
                if ident in granted_at:
                    release(ident, now)
                    runs[pod_of[ident]].finish = now
                    last = max(last, now)
            elif ident in granted_at:
                # a preempted pod stops after its grace period and starts again from scratch
                i = pod_of[ident]
                sim.lost_gpu_s += release(ident, now)
                runs[i].preempted += 1
                submit(i, now)
        t0 = clock()
        out = sched.schedule(now)
        sim.sched_s += clock() - t0
        sim.passes += 1
        for grant in out.grants:
            i = pod_of[grant.request_id]
            runs[i].wait += now - runs[i].queued_at
            granted_at[grant.request_id] = now
            heapq.heappush(events, (now + pods[i].duration, 0, FINISH, grant.request_id))
        for p in out.preemptions:
            sim.preemptions += 1
            heapq.heappush(events, (now + grace, 0, STOP, p.holding_id))
    sim.stuck = len(sched.demands)
    sim.makespan = last - start
    return sim


# -- the report -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Recorded:
    """What the trace itself recorded for the same pods."""

    mean_wait: float
    p95_wait: float
    util_pct: float
    by_qos: dict[str, tuple[float, float]]


def peak_gpus(pods: Sequence[Pod]) -> int:
    """The most GPUs the pods held at once, as recorded."""
    changes = sorted(
        (t, delta)
        for p in pods
        for t, delta in (
            (p.created + p.recorded_wait, p.gpus),
            (p.created + p.recorded_wait + p.duration, -p.gpus),
        )
    )
    held = peak = 0
    for _, delta in changes:
        held += delta
        peak = max(peak, held)
    return peak


def recorded(pods: Sequence[Pod], gpus: int) -> Recorded:
    waits = [p.recorded_wait for p in pods]
    start = min((p.created for p in pods), default=0.0)
    end = max((p.created + p.recorded_wait + p.duration for p in pods), default=0.0)
    held = sum(p.gpus * p.duration for p in pods)
    by_qos: dict[str, tuple[float, float]] = {}
    for q in QOS_ORDER:
        w = [p.recorded_wait for p in pods if p.qos == q]
        if w:
            by_qos[q] = (mean(w), percentile(w, 95))
    span = gpus * (end - start)
    return Recorded(
        mean_wait=mean(waits),
        p95_wait=percentile(waits, 95),
        util_pct=100.0 * held / span if span else 0.0,
        by_qos=by_qos,
    )


def format_main(fifo: Sim, ours: Sim, rec: Recorded) -> str:
    lines = [
        f"{'policy':<32}{'mean wait s':>12}{'p95 wait s':>12}{'util %':>8}{'makespan d':>11}"
        f"{'preempt':>9}{'lost GPU-h':>11}{'Jain':>7}{'pass ms':>9}",
    ]
    for s in (fifo, ours):
        per_pass = 1000 * s.sched_s / s.passes if s.passes else 0.0
        lines.append(
            f"{s.label:<32}{s.mean_wait:>12.1f}{s.p95_wait:>12.1f}{s.util_pct:>8.2f}"
            f"{s.makespan / 86400:>11.2f}{s.preemptions:>9}{s.lost_gpu_s / 3600:>11.2f}"
            f"{s.jain:>7.3f}{per_pass:>9.3f}"
        )
    lines.append(
        f"{'as recorded in the trace':<32}{rec.mean_wait:>12.1f}{rec.p95_wait:>12.1f}"
        f"{rec.util_pct:>8.2f}{'':>11}{'':>9}{'':>11}{'':>7}{'':>9}"
    )
    return "\n".join(lines)


def format_qos(fifo: Sim, ours: Sim, rec: Recorded | None) -> str:
    lines = [
        f"{'QoS':<12}{'pods':>6}{'fifo mean':>11}{'p95':>10}{'slowdown':>10}"
        f"{'ours mean':>11}{'p95':>10}{'slowdown':>10}{'preempted':>10}"
        + (f"{'recorded mean':>15}{'p95':>9}" if rec else ""),
    ]
    for q in QOS_ORDER:
        idx = ours.by_qos.get(q, [])
        if not idx:
            continue
        pre = sum(1 for i in idx if ours.runs[i].preempted)
        line = (
            f"{q:<12}{len(idx):>6}{fifo.qos_mean_wait(q):>11.1f}{fifo.qos_p95_wait(q):>10.1f}"
            f"{fifo.qos_slowdown(q):>10.2f}{ours.qos_mean_wait(q):>11.1f}"
            f"{ours.qos_p95_wait(q):>10.1f}{ours.qos_slowdown(q):>10.2f}{pre:>10}"
        )
        if rec is not None:
            m, p = rec.by_qos.get(q, (0.0, 0.0))
            line += f"{m:>15.1f}{p:>9.1f}"
        lines.append(line)
    return "\n".join(lines)


def format_sweep(rows: Sequence[tuple[str, Sim, Sim]]) -> str:
    """One line per setting; the last three columns are our policy's per-QoS mean waits."""
    lines = [
        f"{'setting':<16}{'fifo mean':>11}{'fifo p95':>10}{'util %':>8}{'Jain':>7}"
        f"{'ours mean':>11}{'ours p95':>10}{'util %':>8}{'Jain':>7}{'preempt':>9}"
        f"{'lost GPU-h':>11}{'G mean':>9}{'LS mean':>9}{'BE mean':>10}",
    ]
    for label, fifo, ours in rows:
        lines.append(
            f"{label:<16}{fifo.mean_wait:>11.1f}{fifo.p95_wait:>10.1f}"
            f"{fifo.util_pct:>8.2f}{fifo.jain:>7.3f}{ours.mean_wait:>11.1f}{ours.p95_wait:>10.1f}"
            f"{ours.util_pct:>8.2f}{ours.jain:>7.3f}{ours.preemptions:>9}"
            f"{ours.lost_gpu_s / 3600:>11.2f}{ours.qos_mean_wait('Guaranteed'):>9.1f}"
            f"{ours.qos_mean_wait('LS'):>9.1f}{ours.qos_mean_wait('BE'):>10.1f}"
        )
    return "\n".join(lines)


def result_line(fifo: Sim, ours: Sim, rec: Recorded, small: tuple[Sim, Sim] | None) -> str:
    line = (
        f"RESULT fifo_mean_wait_s={fifo.mean_wait:.2f} policy_mean_wait_s={ours.mean_wait:.2f} "
        f"fifo_p95_wait_s={fifo.p95_wait:.2f} policy_p95_wait_s={ours.p95_wait:.2f} "
        f"policy_util_pct={ours.util_pct:.2f} fifo_util_pct={fifo.util_pct:.2f} "
        f"recorded_mean_wait_s={rec.mean_wait:.2f} recorded_p95_wait_s={rec.p95_wait:.2f} "
        f"policy_preemptions={ours.preemptions} policy_lost_gpu_h={ours.lost_gpu_s / 3600:.2f} "
        f"fifo_jain={fifo.jain:.3f} policy_jain={ours.jain:.3f}"
    )
    if small is not None:
        f, o = small
        line += (
            f" small_gpus={f.gpus} small_fifo_mean_wait_s={f.mean_wait:.2f} "
            f"small_policy_mean_wait_s={o.mean_wait:.2f} "
            f"small_fifo_ls_mean_wait_s={f.qos_mean_wait('LS'):.2f} "
            f"small_policy_ls_mean_wait_s={o.qos_mean_wait('LS'):.2f} "
            f"small_policy_preemptions={o.preemptions} "
            f"small_policy_lost_gpu_h={o.lost_gpu_s / 3600:.2f}"
        )
    return line


def plot(rows: Sequence[tuple[Sim, Sim]], rec: Recorded, path: Path) -> None:
    """Waits against cluster size (same arrivals), and per QoS on the smallest cluster."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    if rows:
        gpus = [f.gpus for f, _ in rows]
        left.plot(gpus, [f.mean_wait for f, _ in rows], "o-", color="C0", label="fifo mean")
        left.plot(gpus, [f.p95_wait for f, _ in rows], "o--", color="C0", label="fifo p95")
        left.plot(gpus, [o.mean_wait for _, o in rows], "s-", color="C1", label="ours mean")
        left.plot(gpus, [o.p95_wait for _, o in rows], "s--", color="C1", label="ours p95")
        left.set_xticks(gpus, [str(g) for g in gpus])
        left.invert_xaxis()
        fifo, ours = min(rows, key=lambda r: r[0].gpus)
        present = [q for q in QOS_ORDER if ours.by_qos.get(q)]
        xs = range(len(present))
        width = 0.4
        right.bar(
            [x - width / 2 for x in xs],
            [fifo.qos_mean_wait(q) for q in present],
            width,
            label="fifo",
        )
        right.bar(
            [x + width / 2 for x in xs],
            [ours.qos_mean_wait(q) for q in present],
            width,
            label="ours",
        )
        right.set_xticks(list(xs), present)
        right.set(ylabel="mean queueing delay (s)", title=f"per QoS on {fifo.gpus} GPUs")
        right.legend(fontsize=8)
    left.axhline(rec.mean_wait, color="grey", linestyle=":", label="recorded mean (all GPUs)")
    left.set_yscale("symlog", linthresh=1.0)
    left.set_ylim(bottom=0)
    left.set(xlabel="GPUs in the cluster (same arrivals as recorded)", ylabel="queueing delay (s)")
    left.legend(fontsize=8)
    left.grid(True, which="both", alpha=0.3)
    fig.suptitle("Alibaba GPU v2023 pods: first come first served vs QoS priority + preemption")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _load_factor(text: str) -> float:
    value = float(text)
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"must be a number more than 0, not {text!r}")
    return value


def _gpus(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, not {text!r}")
    return value


def _seconds(text: str) -> float:
    value = float(text)
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"must be a number of seconds >= 0, not {text!r}")
    return value


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--pods", type=Path, default=default_path(PODS_NAME))
    parser.add_argument("--nodes", type=Path, default=default_path(NODES_NAME))
    parser.add_argument("--plot", type=Path, default=DEFAULT_PLOT, help="where to write the PNG")
    parser.add_argument(
        "--loads",
        type=_load_factor,
        nargs="*",
        default=list(LOADS),
        help="sweep 1: arrival compressions on all GPUs (none: skip)",
    )
    parser.add_argument(
        "--cluster-gpus",
        type=_gpus,
        nargs="*",
        default=list(CLUSTER_GPUS),
        help="sweep 2: cluster sizes in GPUs, arrivals as recorded (none: skip)",
    )
    parser.add_argument("--grace", type=_seconds, default=GRACE_S, help="seconds")
    parser.add_argument("--limit", type=int, default=None, help="the first N GPU pods only")
    args = parser.parse_args(argv)
    if args.limit is not None and args.limit < 1:
        parser.error("--limit must be 1 or more")
    for what, path in (("--pods", args.pods), ("--nodes", args.nodes)):
        if not path.is_file():
            print(
                f"trace file not found: {path}\npass {what} FILE (the files are described in "
                "../shared/traces/README.md: Alibaba clusterdata, cluster-trace-gpu-v2023)",
                file=sys.stderr,
            )
            return 2
    try:
        nodes = load_nodes(args.nodes)
        trace = load_trace(args.pods, nodes, limit=args.limit)
    except (OSError, TraceError) as err:
        print(f"cannot read the trace: {err}", file=sys.stderr)
        return 2
    if not nodes or not trace.pods:
        print("the trace holds no GPU node or no GPU pod that ran", file=sys.stderr)
        return 2
    pods = list(trace.pods)
    gpus = sum(n.gpus for n in nodes)
    models = Counter[str]()
    for n in nodes:
        models[n.model] += n.gpus
    qos = Counter(p.qos for p in pods)
    pend = sorted(trace.pending_waits)
    print(f"pods: {args.pods.resolve()}\nnodes: {args.nodes.resolve()}")
    print(
        f"{len(nodes)} GPU nodes, {gpus} GPUs: "
        + ", ".join(f"{m} {n}" for m, n in models.most_common())
    )
    print(
        f"{trace.rows} pods: {trace.no_gpu} without GPU left out; {len(pend)} never scheduled "
        f"(Pending) left out, they waited a median {percentile(pend, 50):.0f} s "
        f"(max {pend[-1] if pend else 0:.0f} s) before deletion; {trace.impossible} that no "
        f"node fits left out; {len(pods)} replayed "
        f"({', '.join(f'{q} {qos[q]}' for q in QOS_ORDER if qos[q])}), "
        f"{sum(p.gpus for p in pods)} GPUs asked for"
    )
    print(
        f"{trace.fractional} pods asked for a fraction of one GPU (gpu_milli < 1000): each gets "
        "one whole GPU, since the ledger grants whole GPUs"
    )
    print(
        f"gpu_spec (model constraint): non-empty for {trace.with_spec} pods"
        + (
            " (empty in this trace: no pod is held to a model)"
            if not trace.with_spec
            else f", {trace.narrowed} narrowed to one model"
        )
    )
    print(
        "the trace has no user field: fairness is across QoS classes; "
        f"preempted BE pods stop after {args.grace:g} s and restart from scratch"
    )
    started = time.perf_counter()

    def pair(cluster: Sequence[Node], load: float) -> tuple[Sim, Sim]:
        return (
            simulate(pods, cluster, FIFO, label="fifo (one class)", load=load, grace=args.grace),
            simulate(
                pods,
                cluster,
                OURS,
                label="ours (QoS classes, preempt BE)",
                load=load,
                grace=args.grace,
            ),
        )

    fifo1, ours1 = pair(nodes, 1.0)
    compressed = [
        (f"x{load:g}", *pair(nodes, load)) for load in sorted(set(args.loads)) if load != 1
    ]
    shrunk = []
    for target in sorted(set(args.cluster_gpus), reverse=True):
        cluster = subset(nodes, target)
        shrunk.append(pair(cluster, 1.0))
    sims = [fifo1, ours1, *(s for _, f, o in compressed for s in (f, o))]
    sims += [s for f, o in shrunk for s in (f, o)]
    for sim in sims:
        if sim.stuck or sim.unplaceable:
            print(
                f"warning: {sim.label} on {sim.gpus} GPUs at x{sim.load:g}: {sim.stuck} pods "
                f"never granted, {sim.unplaceable} that no node there fits left out"
            )
    elapsed = time.perf_counter() - started
    rec = recorded(pods, gpus)
    print()
    print(f"as recorded (x1, all {gpus} GPUs); queueing delay in seconds:")
    print(format_main(fifo1, ours1, rec))
    print()
    print("per QoS at x1 (wait s; slowdown = (finish - arrival) / max(duration, 10 s)):")
    print(format_qos(fifo1, ours1, rec))
    peak = peak_gpus(pods)
    print()
    print(
        f"these pods hold at most {peak} GPUs at once as recorded ({100 * peak / gpus:.1f} % of "
        "the cluster): the pod list is a sample of the cluster's work, so nothing queues for GPUs"
    )
    if compressed:
        print()
        print(
            "load sweep 1, all GPUs, inter-arrival times divided by k (durations unchanged; "
            "waits in s):"
        )
        print(format_sweep([("x1", fifo1, ours1), *compressed]))
    if shrunk:
        print()
        print(
            "load sweep 2, arrivals as recorded on fewer GPUs (the same model mix; load = "
            f"{gpus} / GPUs times the recorded load; waits in s):"
        )
        print(format_sweep([(f"{f.gpus} GPUs (x{gpus / f.gpus:.0f})", f, o) for f, o in shrunk]))
        small_fifo, small_ours = shrunk[-1]
        print()
        print(f"per QoS on {small_fifo.gpus} GPUs:")
        print(format_qos(small_fifo, small_ours, None))
    print()
    print(f"{len(sims)} simulations in {elapsed:.1f} s")
    plot(shrunk, rec, args.plot)
    print(f"plot: {args.plot}")
    print(result_line(fifo1, ours1, rec, shrunk[-1] if shrunk else None))
    return 0


if __name__ == "__main__":
    sys.exit(main())
