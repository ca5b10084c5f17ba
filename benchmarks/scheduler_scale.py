"""How many scheduling decisions per second does the core scheduler make on a large, busy cluster?

Drives :class:`jupyter_dlinfra.core.scheduling.scheduler.Scheduler` alone (no ledger, no database)
on a manual clock, at 128, 256, 512 and 1,024 nodes of 8 GPUs each, and a baseline written here, on
the same synthetic workload:

* nodes: a few GPU models across nodes (half ``A100-SXM4-80GB``, a quarter ``H100-SXM5-80GB``, a
  quarter ``L40S``); about one request in eight asks for ``A100`` or ``H100`` by name;
* three priority classes (the shipped defaults): ``interactive`` kernels, ``batch`` and ``low``
  jobs (both preemptible); kernels ask for 1, 2 or 4 GPUs and a third of them are pinned to
  their own node; jobs ask for 1, 2, 4 or 8 GPUs on one node and 1 in 20 for a gang of 16 across
  nodes;
* 200 users in 20 groups; users submit with Zipf-like weights (the heaviest sends a tenth of
  all requests), five groups have fair-share weights other than 1, three groups have a quota of
  3 % of the cluster each and every 20th user from the heaviest a quota of 8 GPUs, so that fair
  share, quotas, borrowing and preemption all act (``--no-quotas`` drops the quotas).

Phase 1 fills the cluster: requests are submitted until ``--waiting`` (10,000) wait, each batch
followed by a pass, until a pass with a full queue grants nothing (no GPU is left that a waiting
request can use). It runs on the manual clock 45 s before the stream, as if the scheduler had
been up that long, so that its 60 s fair-share re-rank falls 15 s into the stream. Phase 2 is a
stream of ``--events`` (3,000) events, one every 10 ms of manual clock; each event is one of

* a holding ends (half the events): a holding picked at random is released;
* a new request arrives (the other half): it is submitted;
* a preempted job stops: :class:`Outcome.preemptions` names victims; each stops 0.5 s after it
  was preempted (its release is an event of its own) and is submitted again as a new request.

and each is followed by exactly one ``schedule(now)`` call. The stream is drawn once from a fixed
seed and replayed on both schedulers (which holding ends is drawn as a fraction of the current
holdings, so both schedulers see the same draws though they hold different requests). The
queues of users at a quota keep growing through the stream, since they get nothing while they
keep asking; the table's ``over q`` column counts those requests at the end.

A *decision* is one request examined by a pass (``Outcome.examined``: granted, or found to wait).
Reported per size: decisions per second (all examined requests over all the time spent in
``schedule``, phase 2 only), the p50 and p99 time of one ``schedule`` call in ms, the p99 of a
whole event (the submit or release call plus the pass), the p99 CPU time of one call (this
thread's CPU clock: on a shared machine the wall-clock p99 also holds time the OS gave to other
processes), grants per second of pass time, and how decisions/s and p99 grow from the smallest
size to the largest. Python's garbage collector stays on, as in a server.

baseline: a straightforward scheduler (``BaselineScheduler`` below). Each pass sorts the whole
queue by (class, fair-share usage of the account then the user, age), computing each user's
decayed usage with the same formula as the core, and for each request scans every node for the
best fit (fewest free GPUs that still fit; gangs take the nodes with the most free GPUs first). It
enforces the same quotas and the same early stops (no free GPU left; ``max_scan`` requests that
cannot be placed), but does no borrowing, reservations or preemption, which only makes it cheaper.
Re-sorting 10,000 requests each pass is slow, so it runs the first ``--baseline-events`` events of
the same stream, and the ratios compare it with ours over that same prefix.

Targets from the issue, at 1,024 nodes: >= 10,000 decisions/s and p99 < 5 ms per pass. For scale,
SLURM documents about 500 simple jobs/s sustained (its high-throughput guide), kube-scheduler
about 100-300 pods/s on 5,000 nodes. Those count placements, we count requests examined; the
table prints grants/s too.

Usage: ``.venv/bin/python benchmarks/scheduler_scale.py [--quick] [--plot PATH] [--sizes N ...]
[--events N] [--no-quotas] [--max-scan N]`` (a few minutes at full size; ``--quick``: seconds).
The plot goes to ``build/benchmarks/scheduler_scale.png`` unless ``--plot`` says otherwise
(``build/`` is ignored by git). Timings are wall-clock on whatever else the machine is doing:
compare ratios from one run, not figures across machines. The last line printed starts with
``RESULT`` and holds key=value pairs for the largest size.
"""

from __future__ import annotations

import argparse
import bisect
import gc
import math
import random
import sys
import time
from collections import defaultdict, deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Protocol

from jupyter_dlinfra.core.scheduling.fairshare import Account
from jupyter_dlinfra.core.scheduling.policy import SchedulingPolicy
from jupyter_dlinfra.core.scheduling.scheduler import Scheduler
from jupyter_dlinfra.core.scheduling.types import Demand, Grant, Outcome, Slot

SEED = 20_231
GPUS_PER_NODE = 8
SIZES = (128, 256, 512, 1024)
WAITING = 10_000
EVENTS = 3_000
BASELINE_EVENTS = 500
TICK_S = 0.010
#: phase 1 runs this long before the stream starts at 0 (manual clock: the scheduler has been up
#: that long), so that its 60 s fair-share re-rank falls inside the timed stream, at 15 s
START_S = -45.0
STOP_DELAY_S = 0.5
MAX_SCAN = 100  # the core's default, as SLURM's default_queue_depth
USERS = 200
GROUPS = 20
MODELS = (("A100-SXM4-80GB", 2), ("H100-SXM5-80GB", 1), ("L40S", 1))
TARGET_DECISIONS_PER_S = 10_000
TARGET_P99_MS = 5.0
SLURM_JOBS_PER_S = 500
KUBE_PODS_PER_S = "100-300"
DEFAULT_PLOT = Path(__file__).resolve().parents[1] / "build" / "benchmarks" / "scheduler_scale.png"


@dataclass(frozen=True)
class Scale:
    sizes: tuple[int, ...]
    waiting: int
    events: int
    baseline_events: int


FULL = Scale(SIZES, WAITING, EVENTS, BASELINE_EVENTS)
QUICK = Scale((4, 8), 200, 300, 150)


# -- the workload ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Release:
    """A holding ends: the one at ``fraction`` of the way along the harness's list of holdings."""

    fraction: float


@dataclass(frozen=True)
class Arrival:
    demand: Demand


Event = Release | Arrival


@dataclass(frozen=True, kw_only=True)
class Workload:
    nodes: int
    slots: tuple[Slot, ...]
    policy: SchedulingPolicy
    #: phase 1 takes from here, in order, as many as it needs
    pool: tuple[Demand, ...]
    stream: tuple[Event, ...]
    waiting: int


def make_slots(nodes: int, gpus_per_node: int = GPUS_PER_NODE) -> list[Slot]:
    weights = [w for _, w in MODELS]
    cycle = [m for m, w in MODELS for _ in range(w)]
    slots = []
    for n in range(nodes):
        # a fixed cycle rather than a draw: every size has exactly the model mix above
        model = cycle[n % sum(weights)]
        node = f"node-{n:04d}"
        slots += [
            Slot(uuid=f"GPU-{n:04d}-{i}", node=node, model=model, index=i)
            for i in range(gpus_per_node)
        ]
    return slots


def make_policy(total_gpus: int, *, quotas: bool = True) -> SchedulingPolicy:
    shares = {"g00": 3.0, "g01": 2.0, "g02": 2.0, "g03": 0.5, "g04": 0.5}
    if not quotas:
        return SchedulingPolicy(group_shares=shares)
    group_quota = max(8, round(total_gpus * 0.03))
    return SchedulingPolicy(
        group_shares=shares,
        group_quotas={"g05": group_quota, "g06": group_quota, "g07": group_quota},
        # every 20th user from the heaviest one: the first has a tenth of all requests
        user_quotas={f"u{i:03d}": 8 for i in range(0, USERS, USERS // 10)},
    )


class _Generator:
    """Requests drawn from one seeded stream; ids count up from ``first_id``."""

    def __init__(self, rng: random.Random, nodes: int, first_id: int) -> None:
        self.rng = rng
        self.next_id = first_id
        self.users = [f"u{i:03d}" for i in range(USERS)]
        self.weights = [1.0 / (i + 1) ** 0.8 for i in range(USERS)]
        models = make_slots(nodes, 1)
        self.node_model = {s.node: s.model for s in models}
        self.node_names = sorted(self.node_model)

    def demand(self, submitted_at: float) -> Demand:
        rng = self.rng
        user = rng.choices(self.users, self.weights)[0]
        groups = (f"g{int(user[1:]) % GROUPS:02d}",)
        roll = rng.random()
        node: str | None = None
        gang = False
        if roll < 0.30:
            klass, kind = "interactive", "kernel"
            count = rng.choices((1, 2, 4), (70, 25, 5))[0]
            if rng.random() < 1 / 3:
                node = rng.choice(self.node_names)
        else:
            klass = "batch" if roll < 0.75 else "low"
            kind = "job"
            count = rng.choices((1, 2, 4, 8, 16), (35, 25, 20, 15, 5))[0]
            gang = count > GPUS_PER_NODE
        model: str | None = None
        if rng.random() < 0.125:
            model = "A100" if rng.random() < 2 / 3 else "H100"
            if node is not None and model not in self.node_model[node]:
                model = None  # a kernel on its own node takes that node's model
        self.next_id += 1
        return Demand(
            id=self.next_id,
            user=user,
            groups=groups,
            count=count,
            model=model,
            node=node,
            gang=gang,
            klass=klass,
            kind=kind,
            submitted_at=submitted_at,
        )


def make_workload(
    nodes: int,
    *,
    waiting: int = WAITING,
    events: int = EVENTS,
    seed: int = SEED,
    quotas: bool = True,
) -> Workload:
    slots = make_slots(nodes)
    fill = _Generator(random.Random(seed * 10_000 + nodes), nodes, 0)
    size = len(slots) + 2 * waiting
    # the initial queue was submitted over the two hours before phase 1
    pool = tuple(fill.demand(START_S - 7200.0 + 7200.0 * i / size) for i in range(size))
    rng = random.Random(seed * 10_000 + nodes + 1)
    gen = _Generator(rng, nodes, 10_000_000)
    stream: list[Event] = []
    for _ in range(events):
        if rng.random() < 0.5:
            stream.append(Release(rng.random()))
        else:
            # submitted_at is set to the event's own instant when it is replayed
            stream.append(Arrival(gen.demand(0.0)))
    return Workload(
        nodes=nodes,
        slots=tuple(slots),
        policy=make_policy(len(slots), quotas=quotas),
        pool=pool,
        stream=tuple(stream),
        waiting=waiting,
    )


# -- the baseline ---------------------------------------------------------------------------------


class _Node:
    __slots__ = ("free", "model", "name")

    def __init__(self, name: str, model: str) -> None:
        self.name = name
        self.model = model.lower()
        self.free: list[str] = []


class BaselineScheduler:
    """BASELINE, not the product: sort the whole queue each pass, scan every node per request.

    Same order (class, fair share of the account then the user, age), same quotas, same early
    stops as the core; no borrowing, reservations or preemption.
    """

    def __init__(
        self,
        policy: SchedulingPolicy,
        slots: Iterable[Slot],
        *,
        now: float = 0.0,
        max_scan: int = MAX_SCAN,
    ) -> None:
        self.policy = policy
        self.max_scan = max_scan
        self.now = now
        self.nodes: dict[str, _Node] = {}
        for slot in slots:
            self.nodes.setdefault(slot.node, _Node(slot.node, slot.model)).free.append(slot.uuid)
        self.node_list = list(self.nodes.values())
        self.free_total = sum(len(n.free) for n in self.node_list)
        self.demands: dict[int, Demand] = {}
        self.holdings: dict[int, tuple[Demand, list[tuple[_Node, list[str]]]]] = {}
        self.users: dict[str, Account] = defaultdict(Account)
        self.accounts: dict[str, Account] = defaultdict(Account)
        self.held_by_group: dict[str, int] = defaultdict(int)

    def submit(self, demand: Demand) -> None:
        self.demands[demand.id] = demand

    def release(self, holding_id: int) -> None:
        demand, parts = self.holdings.pop(holding_id)
        for node, uuids in parts:
            node.free += uuids
            self.free_total += len(uuids)
        self._charge(demand, -demand.count)

    def schedule(self, now: float) -> Outcome:
        self.now = max(now, self.now)
        out = Outcome()
        if not self.demands:
            return out
        policy, half_life = self.policy, self.policy.half_life
        prio = {c.name: c.priority for c in policy.classes}
        shares: dict[str, tuple[float, float]] = {}

        def order(d: Demand) -> tuple[int, float, float, float, int]:
            share = shares.get(d.user)
            if share is None and not policy.fair_share:
                share = shares[d.user] = (0.0, 0.0)
            elif share is None:
                account = policy.account_of(d.groups)
                share = shares[d.user] = (
                    self.accounts[account].key(self.now, half_life)
                    / policy.share_of_group(account),
                    self.users[d.user].key(self.now, half_life) / policy.share_of_user(d.user),
                )
            return (-prio[d.klass], share[0], share[1], d.submitted_at, d.id)

        unplaced = 0
        for demand in sorted(self.demands.values(), key=order):
            if self.free_total == 0:
                break
            out.examined += 1
            if self.over_quota(demand):
                continue
            parts = self._fit(demand)
            if parts is None:
                unplaced += 1
                if unplaced >= self.max_scan:
                    break
                continue
            taken = []
            for node, uuids in parts:
                del node.free[: len(uuids)]
                taken += uuids
            self.free_total -= demand.count
            del self.demands[demand.id]
            self.holdings[demand.id] = (demand, parts)
            self._charge(demand, demand.count)
            out.grants.append(Grant(demand.id, tuple(taken)))
        return out

    def _fit(self, demand: Demand) -> list[tuple[_Node, list[str]]] | None:
        count = demand.count
        wanted = demand.model.strip().lower() if demand.model else None
        if demand.node is not None:
            node = self.nodes.get(demand.node)
            if node is None or len(node.free) < count or (wanted and wanted not in node.model):
                return None
            return [(node, node.free[:count])]
        best: _Node | None = None
        for node in self.node_list:
            free = len(node.free)
            if free < count or (wanted and wanted not in node.model):
                continue
            if best is None or free < len(best.free):
                best = node
                if free == count:
                    break
        if best is not None:
            return [(best, best.free[:count])]
        if not demand.gang:
            return None
        usable = [n for n in self.node_list if n.free and not (wanted and wanted not in n.model)]
        usable.sort(key=lambda n: -len(n.free))
        parts: list[tuple[_Node, list[str]]] = []
        need = count
        for node in usable:
            part = node.free[:need]
            parts.append((node, part))
            need -= len(part)
            if need == 0:
                return parts
        return None

    def over_quota(self, demand: Demand) -> bool:
        quota = self.policy.quota_of_user(demand.user)
        if quota is not None and self.users[demand.user].held + demand.count > quota:
            return True
        for group in demand.groups:
            gq = self.policy.group_quotas.get(group)
            if gq is not None and self.held_by_group[group] + demand.count > gq:
                return True
        return False

    def _charge(self, demand: Demand, delta: int) -> None:
        half_life = self.policy.half_life
        self.users[demand.user].change(self.now, half_life, delta)
        account = self.policy.account_of(demand.groups)
        self.accounts[account].change(self.now, half_life, delta)
        for group in demand.groups:
            self.held_by_group[group] += delta


# -- the harness ----------------------------------------------------------------------------------


class SchedulerLike(Protocol):
    free_total: int
    demands: dict[int, Demand]

    def submit(self, demand: Demand) -> None: ...

    def release(self, holding_id: int) -> object: ...

    def schedule(self, now: float) -> Outcome: ...

    def over_quota(self, demand: Demand) -> object: ...


@dataclass
class Run:
    """What one scheduler did on one workload (phase 2 only unless said)."""

    label: str
    nodes: int
    gpus: int
    events: int = 0
    passes: int = 0
    decisions: int = 0
    grants: int = 0
    borrowed: int = 0
    preemptions: int = 0
    requeued: int = 0
    sim_s: float = 0.0
    fill_grants: int = 0
    waiting_start: int = 0
    waiting_end: int = 0
    #: waiting requests beyond a quota when the stream ends (each pass examines them all)
    over_quota_end: int = 0
    #: ns of each schedule() call, and of each event (its submit or release plus the pass)
    pass_ns: list[int] = field(default_factory=list)
    #: CPU time of this thread in each schedule() call: what the pass costs, without the time
    #: the OS gave to other processes (wall-clock p99 on a shared machine includes that)
    cpu_ns: list[int] = field(default_factory=list)
    event_ns: list[int] = field(default_factory=list)
    examined: list[int] = field(default_factory=list)
    #: the index in the stream of the event each pass followed
    at_event: list[int] = field(default_factory=list)

    def prefix(self, events: int) -> Run:
        """The passes of the first ``events`` stream events (for like-for-like ratios)."""
        n = bisect.bisect_left(self.at_event, events)
        cut = Run(self.label, self.nodes, self.gpus)
        cut.passes = cut.events = n
        cut.pass_ns = self.pass_ns[:n]
        cut.cpu_ns = self.cpu_ns[:n]
        cut.event_ns = self.event_ns[:n]
        cut.examined = self.examined[:n]
        cut.at_event = self.at_event[:n]
        cut.decisions = sum(cut.examined)
        return cut

    @property
    def decisions_per_s(self) -> float:
        total = sum(self.pass_ns)
        return self.decisions / (total / 1e9) if total else 0.0

    @property
    def decisions_per_cpu_s(self) -> float:
        total = sum(self.cpu_ns)
        return self.decisions / (total / 1e9) if total else 0.0

    @property
    def p99_cpu_ms(self) -> float:
        return percentile(self.cpu_ns, 99) / 1e6

    @property
    def grants_per_s(self) -> float:
        total = sum(self.pass_ns)
        return self.grants / (total / 1e9) if total else 0.0

    @property
    def p99_ms(self) -> float:
        return percentile(self.pass_ns, 99) / 1e6

    @property
    def p50_ms(self) -> float:
        return percentile(self.pass_ns, 50) / 1e6

    @property
    def event_p99_ms(self) -> float:
        return percentile(self.event_ns, 99) / 1e6

    @property
    def mean_examined(self) -> float:
        return self.decisions / self.passes if self.passes else 0.0


def percentile(values: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile (the smallest value with at least pct % of values at or below)."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = max(1, math.ceil(pct / 100 * len(ordered)))
    return float(ordered[rank - 1])


def run(sched: SchedulerLike, workload: Workload, label: str, *, events: int | None = None) -> Run:
    """Phase 1 (fill, not timed), then the stream, timing every pass."""
    result = Run(label, workload.nodes, len(workload.slots))
    demands: dict[int, Demand] = {}  # every request ever submitted, for requeues
    held: list[int] = []
    where: dict[int, int] = {}

    def granted(out: Outcome) -> None:
        for grant in out.grants:
            where[grant.request_id] = len(held)
            held.append(grant.request_id)

    def drop(holding_id: int) -> None:
        at = where.pop(holding_id)
        last = held.pop()
        if last != holding_id:
            held[at] = last
            where[last] = at

    next_id = 20_000_000

    def requeue(victim: int, now: float) -> Demand:
        """A stopped job asks again from scratch, as a new request."""
        nonlocal next_id
        next_id += 1
        again = replace(demands[victim], id=next_id, submitted_at=now)
        demands[again.id] = again
        return again

    now = START_S
    pool = iter(workload.pool)
    while True:
        take = max(0, workload.waiting - len(sched.demands))
        for _ in range(take):
            try:
                demand = next(pool)
            except StopIteration:
                raise RuntimeError("the request pool ran out while filling") from None
            demands[demand.id] = demand
            sched.submit(demand)
        out = sched.schedule(now)
        granted(out)
        result.fill_grants += len(out.grants)
        # before the stream, preempted jobs stop at once
        for p in out.preemptions:
            if p.holding_id in where:
                sched.release(p.holding_id)
                drop(p.holding_id)
                sched.submit(requeue(p.holding_id, now))
        now += TICK_S
        if take == 0 and not out.grants and not out.preemptions:
            # full, or what is left free nobody waiting can use (quotas, pinned kernels)
            break
    result.waiting_start = len(sched.demands)
    now = max(now, 0.0)

    gc.collect()
    clock = time.perf_counter_ns
    cpu = time.thread_time_ns
    stops: deque[tuple[float, int]] = deque()
    stream = workload.stream if events is None else workload.stream[:events]
    start = now
    for index, event in enumerate(stream):
        now += TICK_S
        # a preempted job's stop is an event of its own, before this tick's stream event
        work: list[Event | int] = []
        while stops and stops[0][0] <= now + 1e-9:
            _, victim = stops.popleft()
            if victim in where:
                work.append(victim)
        work.append(event)
        for item in work:
            t0 = clock()
            if isinstance(item, int):
                sched.release(item)
                call_ns = clock() - t0
                drop(item)
                again = requeue(item, now)  # in the same event
                t0 = clock()
                sched.submit(again)
                call_ns += clock() - t0
                result.requeued += 1
            elif isinstance(item, Release):
                if not held:
                    continue
                victim = held[int(item.fraction * len(held))]
                t0 = clock()
                sched.release(victim)
                call_ns = clock() - t0
                drop(victim)
            else:
                demand = replace(item.demand, submitted_at=now)
                demands[demand.id] = demand
                t0 = clock()
                sched.submit(demand)
                call_ns = clock() - t0
            c2, t2 = cpu(), clock()
            out = sched.schedule(now)
            t3, c3 = clock(), cpu()
            result.pass_ns.append(t3 - t2)
            result.cpu_ns.append(c3 - c2)
            result.event_ns.append(call_ns + t3 - t2)
            result.examined.append(out.examined)
            result.at_event.append(index)
            result.events += 1
            result.passes += 1
            result.decisions += out.examined
            result.grants += len(out.grants)
            result.borrowed += sum(1 for g in out.grants if g.borrowed)
            result.preemptions += len(out.preemptions)
            granted(out)
            for p in out.preemptions:
                stops.append((now + STOP_DELAY_S, p.holding_id))
    result.sim_s = now - start
    result.waiting_end = len(sched.demands)
    result.over_quota_end = sum(1 for d in sched.demands.values() if sched.over_quota(d))
    return result


def new_scheduler(which: str, workload: Workload, *, max_scan: int = MAX_SCAN) -> SchedulerLike:
    if which == "ours":
        ours = Scheduler(workload.policy, now=START_S, max_scan=max_scan)
        ours.add_gpus(workload.slots)
        return ours
    return BaselineScheduler(workload.policy, workload.slots, now=START_S, max_scan=max_scan)


@dataclass(frozen=True)
class SizeResult:
    ours: Run
    baseline: Run
    #: ours over the baseline's events only
    ours_prefix: Run

    @property
    def decisions_ratio(self) -> float:
        base = self.baseline.decisions_per_s
        return self.ours_prefix.decisions_per_s / base if base else math.inf

    @property
    def p99_ratio(self) -> float:
        base = self.baseline.p99_ms
        return self.ours_prefix.p99_ms / base if base else math.inf


def measure(
    nodes: int,
    *,
    waiting: int = WAITING,
    events: int = EVENTS,
    baseline_events: int = BASELINE_EVENTS,
    seed: int = SEED,
    quotas: bool = True,
    max_scan: int = MAX_SCAN,
) -> SizeResult:
    workload = make_workload(nodes, waiting=waiting, events=events, seed=seed, quotas=quotas)
    ours = run(new_scheduler("ours", workload, max_scan=max_scan), workload, "ours")
    base_n = min(baseline_events, events)
    baseline = run(
        new_scheduler("baseline", workload, max_scan=max_scan), workload, "baseline", events=base_n
    )
    return SizeResult(ours=ours, baseline=baseline, ours_prefix=ours.prefix(base_n))


def format_table(results: Sequence[SizeResult]) -> str:
    lines = [
        f"{'scheduler':<10}{'nodes':>6}{'GPUs':>6}{'passes':>7}{'decisions/s':>12}{'grants/s':>9}"
        f"{'exam/pass':>10}{'p50 ms':>8}{'p99 ms':>8}{'ev p99':>8}{'cpu p99':>8}{'grants':>7}"
        f"{'borrow':>7}{'preempt':>8}{'waiting':>13}{'over q':>7}",
    ]
    for r in results:
        for one in (r.ours, r.baseline):
            lines.append(
                f"{one.label:<10}{one.nodes:>6}{one.gpus:>6}{one.passes:>7}"
                f"{one.decisions_per_s:>12,.0f}{one.grants_per_s:>9,.0f}{one.mean_examined:>10.1f}"
                f"{one.p50_ms:>8.3f}{one.p99_ms:>8.3f}{one.event_p99_ms:>8.3f}"
                f"{one.p99_cpu_ms:>8.3f}{one.grants:>7}{one.borrowed:>7}{one.preemptions:>8}"
                f"{f'{one.waiting_start}->{one.waiting_end}':>13}{one.over_quota_end:>7}"
            )
    return "\n".join(lines)


def format_ratios(results: Sequence[SizeResult]) -> str:
    lines = [
        "ours / baseline over the same first events (decisions/s: higher is better; "
        "p99: lower is better; cpu: CPU time of the call)",
        f"{'nodes':>6}{'events':>8}{'ours dec/s':>12}{'base dec/s':>12}{'ratio':>8}"
        f"{'ours p99':>10}{'base p99':>10}{'ratio':>8}{'ours cpu':>10}{'base cpu':>10}{'ratio':>8}",
    ]
    for r in results:
        ours, base = r.ours_prefix, r.baseline
        cpu_ratio = ours.p99_cpu_ms / base.p99_cpu_ms if base.p99_cpu_ms else math.inf
        lines.append(
            f"{r.ours.nodes:>6}{base.events:>8}{ours.decisions_per_s:>12,.0f}"
            f"{base.decisions_per_s:>12,.0f}{r.decisions_ratio:>8.2f}"
            f"{ours.p99_ms:>10.3f}{base.p99_ms:>10.3f}{r.p99_ratio:>8.2f}"
            f"{ours.p99_cpu_ms:>10.3f}{base.p99_cpu_ms:>10.3f}{cpu_ratio:>8.2f}"
        )
    return "\n".join(lines)


def growth(results: Sequence[SizeResult]) -> dict[str, float]:
    """Largest size over smallest: decisions/s and p99, ours (whole stream) and baseline."""
    first, last = results[0], results[-1]

    def ratio(a: float, b: float) -> float:
        return a / b if b else math.inf

    return {
        "decisions": ratio(last.ours.decisions_per_s, first.ours.decisions_per_s),
        "p99": ratio(last.ours.p99_ms, first.ours.p99_ms),
        "baseline_decisions": ratio(last.baseline.decisions_per_s, first.baseline.decisions_per_s),
        "baseline_p99": ratio(last.baseline.p99_ms, first.baseline.p99_ms),
    }


def result_line(results: Sequence[SizeResult]) -> str:
    last = results[-1]
    g = growth(results)
    return (
        f"RESULT decisions_per_s={last.ours.decisions_per_s:.0f} p99_ms={last.ours.p99_ms:.3f} "
        f"nodes={last.ours.nodes} baseline_decisions_per_s={last.baseline.decisions_per_s:.0f} "
        f"baseline_p99_ms={last.baseline.p99_ms:.3f} "
        f"decisions_ratio={last.decisions_ratio:.2f} p99_ratio={last.p99_ratio:.2f} "
        f"decisions_growth={g['decisions']:.2f} p99_growth={g['p99']:.2f} "
        f"p99_cpu_ms={last.ours.p99_cpu_ms:.3f} "
        f"decisions_per_cpu_s={last.ours.decisions_per_cpu_s:.0f} "
        f"baseline_p99_cpu_ms={last.baseline.p99_cpu_ms:.3f}"
    )


def plot(results: Sequence[SizeResult], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    nodes = [r.ours.nodes for r in results]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    left.plot(nodes, [r.ours.decisions_per_s for r in results], "o-", label="ours")
    left.plot(nodes, [r.baseline.decisions_per_s for r in results], "s--", label="baseline")
    left.axhline(TARGET_DECISIONS_PER_S, color="grey", linestyle=":", label="target")
    left.set(yscale="log", xlabel="nodes (8 GPUs each)", ylabel="decisions / s")
    right.plot(nodes, [r.ours.p99_ms for r in results], "o-", label="ours")
    right.plot(nodes, [r.baseline.p99_ms for r in results], "s--", label="baseline")
    right.axhline(TARGET_P99_MS, color="grey", linestyle=":", label="target")
    right.set(yscale="log", xlabel="nodes (8 GPUs each)", ylabel="p99 pass (ms)")
    for ax in (left, right):
        ax.set_xscale("log", base=2)
        ax.set_xticks(nodes, [str(n) for n in nodes])
        ax.minorticks_off()
        ax.legend()
        ax.grid(True, which="both", alpha=0.3)
    waiting = results[-1].ours.waiting_start
    fig.suptitle(f"scheduler pass cost, {waiting:,} waiting requests")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _count(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, not {text!r}")
    return value


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, for a smoke test")
    parser.add_argument("--sizes", type=_count, nargs="+", default=None, help="node counts")
    parser.add_argument("--waiting", type=_count, default=None, help="waiting requests")
    parser.add_argument("--events", type=_count, default=None, help="events in the stream")
    parser.add_argument(
        "--baseline-events", type=_count, default=None, help="events the baseline replays"
    )
    parser.add_argument("--seed", type=int, default=SEED)
    parser.add_argument(
        "--no-quotas", action="store_true", help="no user or group quotas (shares stay)"
    )
    parser.add_argument(
        "--max-scan",
        type=_count,
        default=MAX_SCAN,
        help="requests a pass may find unplaceable before it stops (both schedulers)",
    )
    parser.add_argument("--plot", type=Path, default=DEFAULT_PLOT, help="where to write the PNG")
    args = parser.parse_args(argv)
    base = QUICK if args.quick else FULL
    sizes = tuple(sorted(set(args.sizes or base.sizes)))
    waiting = args.waiting or base.waiting
    events = args.events or base.events
    baseline_events = args.baseline_events or base.baseline_events

    print(
        f"{len(sizes)} sizes x {GPUS_PER_NODE} GPUs per node; {waiting:,} waiting requests; "
        f"{events:,} events one every {TICK_S * 1000:g} ms (baseline: the first "
        f"{min(baseline_events, events):,}); seed {args.seed}; max_scan {args.max_scan}; "
        f"quotas {'off' if args.no_quotas else 'on'}"
    )
    results = []
    for nodes in sizes:
        started = time.perf_counter()
        results.append(
            measure(
                nodes,
                waiting=waiting,
                events=events,
                baseline_events=baseline_events,
                seed=args.seed,
                quotas=not args.no_quotas,
                max_scan=args.max_scan,
            )
        )
        print(f"  {nodes} nodes done in {time.perf_counter() - started:.1f} s", flush=True)
    print()
    print(format_table(results))
    print()
    print(format_ratios(results))
    g = growth(results)
    first, last = results[0].ours.nodes, results[-1].ours.nodes
    print()
    print(
        f"growth {first} -> {last} nodes: decisions/s x{g['decisions']:.2f}, p99 x{g['p99']:.2f} "
        f"(baseline: x{g['baseline_decisions']:.2f}, x{g['baseline_p99']:.2f})"
    )
    top = results[-1].ours
    met = top.decisions_per_s >= TARGET_DECISIONS_PER_S and top.p99_ms < TARGET_P99_MS
    print(
        f"target at {last} nodes: >= {TARGET_DECISIONS_PER_S:,} decisions/s and p99 < "
        f"{TARGET_P99_MS:g} ms: {'met' if met else 'MISSED'} ({top.decisions_per_s:,.0f}/s, "
        f"{top.p99_ms:.3f} ms)"
    )
    print(
        f"anchors (documented, not measured here): SLURM ~{SLURM_JOBS_PER_S} simple jobs/s "
        f"sustained; kube-scheduler ~{KUBE_PODS_PER_S} pods/s at 5,000 nodes; ours granted "
        f"{top.grants_per_s:,.0f} requests per second of pass time at {last} nodes"
    )
    plot(results, args.plot)
    print(f"plot: {args.plot}")
    print(result_line(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
