"""What does a change of the GPU ledger cost at cluster scale, through the public ``Ledger`` API?

Measures :class:`jupyter_dlinfra.core.books.ledger.Ledger` as the REST handlers call it
(``request``, ``release``, ``queue(limit=100)``, ``allocations(user=..., limit=100)``) on a
SQLite file in a temporary directory (WAL, as :class:`~jupyter_dlinfra.core.store.Store` sets it
up) and on a real PostgreSQL, at ``nodes x 8 GPUs`` with ``waiting`` requests already queued: by
default nodes in {16, 128, 1024} and waiting in {0, 1,000, 10,000} (``--sizes 16x0,1024x10000``
picks configurations).

The workload (requests pinned to their kernel's node, as every ledger request is): 200 users
``u000``..``u199`` in 20 groups (``g00``..``g19``, user ``uNNN`` in ``g{NNN % 20}``), drawn with
the Zipf-like weights of ``benchmarks/scheduler_scale.py``; the three default classes (30 %
``interactive`` kernels, 45 % ``batch`` and 25 % ``low`` jobs, both preemptible); sizes 1/2/4/8
GPUs (weights 40/30/20/10); one request in eight names its node's GPU model. The policy is
``scheduler_scale.make_policy``: five groups with fair-share weights other than 1, three groups
with a quota of 3 % of the cluster, every 20th user from the heaviest with a quota of 8 GPUs.

**Seeding is setup, not measured.** Asking the current ledger for 10,000 requests one by one
would take hours (each costs seconds at that size), so the state is decided in memory and written
in bulk, as the rows the ledger itself writes (the tables of ``core/store.py``):

1. GPUs: ``Ledger.sync_inventory`` per node (the API itself; ``gpu_seen`` events);
2. history: 200 released grants per class from the days before (kernels registered, requested,
   granted, released and forgotten), so that typical holding times and fair-share usage exist;
3. fill: every node is filled by requests of users within their quotas, each submitted to the
   in-memory :class:`Scheduler` (the engine the ledger runs) and granted by one of its passes;
4. waiting: ``waiting`` requests on random nodes, then passes until one decides nothing, as the
   ledger's passes would: preempted jobs stop and ask again as new requests (their allocation
   released, the same job kernel), preempters are granted the GPUs freed for them; the queue is
   topped up (or trimmed, as cancellations) until exactly ``waiting`` wait and a pass is idle.

Each step records what ``Ledger.request`` / ``_schedule`` / ``_end`` / ``register_kernel`` /
``forget_kernel`` write: the allocation row (state, times, class, kind, groups as JSON, borrowed,
preempted_for), ``allocation_gpus`` and ``holdings`` rows, one event per change with the same
kind and detail, the kernel rows, and the fair-share rows (``dlinfra_fairshare``) as
``Ledger._add_usage`` computes them at each release. All of it goes in one write transaction
that bumps the store's version counter; the ``Ledger`` that is measured is made afterwards on a
new ``Store``, as a server that starts on an existing ledger (its first call loads the ledger's
state into memory: that call is timed apart, as the load). ``queue_length()`` then checks the
state: exactly ``waiting`` requests must wait.

Measured per configuration, in rounds until ``--samples`` rounds or two thirds of ``--budget-s``
(at least one round): ``queue(limit=100)`` (the first page in order of service, as ``GET
/dlinfra/api/queue`` asks for it by default, with each request's place, reason and estimated
start), one user's
``allocations(user=..., limit=100)`` (the user drawn by the same weights; the first page of
them, as ``GET allocations?user=`` asks for it by default), a ``request`` that queues (on a
node with no free GPU; its kernel is registered first, untimed) and a ``release`` of a grant on
the same node that makes room for it (of the same size if there is one), which the pass may
grant to that request or to one ahead of it there (the table counts the releases that granted
anything). The queue keeps its seeded length: when the request still waits after the release
and the queue has grown, it is cancelled (a release of a queued request, untimed, counted as
``undone``). Then **sustained changes/s**: request + release pairs back to back for the last
third of the budget (at least one pair), changes (2 per pair) over the time spent in those calls;
the harness's bookkeeping between calls (following the event log to know which GPUs are free,
registering kernels, the cancellations) is not counted. Last, **callers at once**
(``--together-pairs`` pairs, 300 by default; 0 skips it): the same pairs made by ``--callers``
threads (default ``LEDGER_THREADS``, the threads a server calls the ledger from) and by one
thread through the same code, each over the wall time of everything the callers do (their
bookkeeping too: kernels are registered before, untimed); changes that arrive together share a
transaction and a pass (``core/books/group_commit.py``), and the ratio says what that gives.
Then **posted**: the same number of pairs posted to the ledger's writing thread
(``Ledger.post``) with at most ``IN_FLIGHT`` (32) changes unanswered, the path a server's REST
handlers take (``changes_per_s_posted``: the sustained rate of a busy server, whose batches grow
with what waits).
Times are wall clock (``perf_counter``), p50/p99 nearest rank; at the largest sizes a round
takes tens of seconds, so p99 there is the maximum of a few samples.

**cost** of a configuration: the mean of the request p50 and the release p50. **growth**: the cost
at the largest configuration run over the cost at the smallest (16 nodes, 0 waiting in the full
grid). **Baseline**: the in-memory core alone, measured in the same run with the harness of
``benchmarks/scheduler_scale.py`` (its workload, phase 1 fill and event stream, ``--core-events``
events) at the largest configuration's nodes and waiting: decisions/s (requests examined per
second of pass time) and the mean cost of one event (a submit or release and its pass), which a
ledger change is compared with.

PostgreSQL: ``--pg-url`` names a server (a database is created per configuration and dropped;
the role needs CREATEDB), else one is started as the test suite does (``tests/postgres_server.py``:
a throw-away server with fsync off, so its figures are computation, not disk); without PostgreSQL
binaries the PostgreSQL runs are skipped with a printed line.

Usage: ``.venv/bin/python benchmarks/ledger_scale.py [--sizes NxW,...] [--budget-s S] [--samples N]
[--backend sqlite|postgres|both] [--pg-url URL] [--core-events N] [--seed N] [--callers N]
[--together-pairs N]``. The table comes first, then the windows of callers at once, then the
baseline, and the last line starts with ``RESULT``: changes/s (one caller, and
``changes_per_s_together`` with ``callers`` at once and its ratio to one caller) and the four p99s
at the largest configuration run (on SQLite when it ran, else on PostgreSQL; the line before says
which), the growth and the core's decisions/s. On the ledger measured in issue 15, a configuration
takes about its budget plus one round (up to half a minute at 1,024 nodes with a queue), plus
seconds of seeding: the full grid on both backends, some 25 minutes.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import math
import random
import sys
import tempfile
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, insert, text
from sqlalchemy.engine import make_url

from jupyter_dlinfra.core.books.events import latest_event_seq
from jupyter_dlinfra.core.books.group_commit import Outcome as ChangeOutcome
from jupyter_dlinfra.core.books.ledger import Ledger, LedgerChange
from jupyter_dlinfra.core.clock import ManualClock, SystemClock
from jupyter_dlinfra.core.models import (
    Allocation,
    AllocationState,
    Gpu,
    KernelRecord,
    LedgerEvent,
)
from jupyter_dlinfra.core.scheduling.fairshare import bounded_usage, decayed
from jupyter_dlinfra.core.scheduling.policy import SchedulingPolicy
from jupyter_dlinfra.core.scheduling.scheduler import Scheduler
from jupyter_dlinfra.core.scheduling.types import Demand, Outcome, Slot
from jupyter_dlinfra.core.store import (
    Store,
    allocation_gpus,
    allocations,
    events,
    fairshare,
    holdings,
    kernels,
)
from jupyter_dlinfra.server.calls import LEDGER_THREADS
from jupyter_dlinfra.server.handlers.gpus import ALLOCATIONS_LIMIT, QUEUE_LIMIT

# scheduler_scale.py beside this file (its workload and harness), and tests/postgres_server.py
# (the suite's throw-away PostgreSQL): found when this runs as a script and when loaded by path
_HERE = Path(__file__).resolve().parent
for _path in (str(_HERE), str(_HERE.parent / "tests")):
    if _path not in sys.path:
        sys.path.insert(0, _path)
import scheduler_scale as core_bench  # noqa: E402

SEED = 15
GPUS_PER_NODE = core_bench.GPUS_PER_NODE
USERS = core_bench.USERS
GROUPS = core_bench.GROUPS
NODES = (16, 128, 1024)
WAITING = (0, 1_000, 10_000)
SIZES = (1, 2, 4, 8)
SIZE_WEIGHTS = (40, 30, 20, 10)
#: released grants per class in the seeded history (what ``recent_durations`` samples)
HISTORY_PER_CLASS = 200
#: holding times of the history, per class (s)
HOLD_S = {
    "interactive": (600.0, 4 * 3600.0),
    "batch": (3600.0, 8 * 3600.0),
    "low": (3600.0, 12 * 3600.0),
}
BUDGET_S = 60.0
SAMPLES = 50
CORE_EVENTS = 1_000
#: changes posted to the ledger's writing thread and not yet answered, at most (``posted``): a
#: busy gateway's handlers have tens of changes waiting at once
IN_FLIGHT = 32

#: request + release pairs of each window made by several callers at once (and by one)
TOGETHER_PAIRS = 300
#: passes of the seeding's settle before it gives up (each preempts for at most 8 requests)
SETTLE_PASSES = 100_000
SERVER_ID = "ledger-scale"
TARGETS = (
    "targets at 1,024 x 10,000 on SQLite (issue 15): >= 1,000 changes/s, request and release "
    "p99 < 10 ms, queue() and allocations() p99 < 20 ms, growth <= 3"
)


@dataclass(frozen=True, order=True)
class Config:
    nodes: int
    waiting: int

    @property
    def label(self) -> str:
        return f"{self.nodes}x{self.waiting}"


FULL_GRID = tuple(Config(n, w) for n in NODES for w in WAITING)


def groups_of(user: str) -> tuple[str, ...]:
    return (f"g{int(user[1:]) % GROUPS:02d}",)


def make_policy(config: Config) -> SchedulingPolicy:
    return core_bench.make_policy(config.nodes * GPUS_PER_NODE)


def short_model(model: str) -> str:
    """What people type: ``A100`` for ``A100-SXM4-80GB``."""
    return model.split("-")[0]


class Draws:
    """The workload's random choices, from one seeded generator."""

    def __init__(self, rng: random.Random, nodes: Sequence[str], model_of: dict[str, str]) -> None:
        self.rng = rng
        self.nodes = list(nodes)
        self.model_of = model_of
        self.users = [f"u{i:03d}" for i in range(USERS)]
        self.weights = [1.0 / (i + 1) ** 0.8 for i in range(USERS)]

    def user(self) -> str:
        return self.rng.choices(self.users, self.weights)[0]

    def klass(self) -> tuple[str, str]:
        """(class, kind)"""
        roll = self.rng.random()
        if roll < 0.30:
            return "interactive", "kernel"
        return ("batch" if roll < 0.75 else "low"), "job"

    def count(self, most: int = GPUS_PER_NODE) -> int:
        sizes = [s for s in SIZES if s <= most]
        return self.rng.choices(sizes, SIZE_WEIGHTS[: len(sizes)])[0]

    def model(self, node: str) -> str | None:
        return short_model(self.model_of[node]) if self.rng.random() < 0.125 else None

    def node(self) -> str:
        return self.rng.choice(self.nodes)


# -- seeding (setup, not measured) ----------------------------------------------------------------


@dataclass
class SeedAllocation:
    """One allocation row, as the ledger would hold it."""

    id: int
    kernel_id: str
    user: str
    node: str
    count: int
    model: str | None
    klass: str
    kind: str
    created_at: float
    state: str = AllocationState.QUEUED.value
    granted_at: float | None = None
    gpus: tuple[str, ...] = ()
    borrowed: bool = False
    preempted_for: int | None = None
    preempt_reason: str | None = None
    ended_at: float | None = None
    end_reason: str | None = None

    def demand(self) -> Demand:
        # as ledger_state.demand_of builds it: pinned to the kernel's node
        return Demand(
            id=self.id,
            user=self.user,
            groups=groups_of(self.user),
            count=self.count,
            model=self.model,
            node=self.node,
            klass=self.klass,
            kind=self.kind,
            submitted_at=self.created_at,
        )


def running_usage(count: int, granted_at: float, now: float, half_life: float) -> float:
    """Decayed GPU-seconds of a grant from ``granted_at`` to ``now`` (the ledger's formula)."""
    elapsed = max(now - granted_at, 0.0)
    return float(count * half_life / math.log(2.0) * (1.0 - 2.0 ** (-elapsed / half_life)))


@dataclass
class Seed:
    """The ledger's state for one configuration, decided in memory, ready to be written."""

    config: Config
    policy: SchedulingPolicy
    slots: list[Slot]
    now: float
    allocations: dict[int, SeedAllocation] = field(default_factory=dict)
    kernels: dict[str, dict[str, Any]] = field(default_factory=dict)
    events: list[dict[str, Any]] = field(default_factory=list)
    #: (ended_at, user, count, granted_at) of every release, for the fair-share rows
    releases: list[tuple[float, str, int, float]] = field(default_factory=list)

    @property
    def waiting(self) -> int:
        return sum(1 for a in self.allocations.values() if a.state == AllocationState.QUEUED.value)

    def granted(self) -> list[SeedAllocation]:
        return [a for a in self.allocations.values() if a.state == AllocationState.GRANTED.value]

    def fairshare_rows(self) -> dict[str, tuple[float, float]]:
        """user -> (gpu_seconds, at), as ``Ledger._add_usage`` leaves it after each release."""
        half_life = self.policy.half_life
        rows: dict[str, tuple[float, float]] = {}
        for ended, user, count, granted in sorted(self.releases):
            used = running_usage(count, granted, ended, half_life)
            prev = rows.get(user)
            total = used if prev is None else decayed(prev[0], ended - prev[1], half_life) + used
            rows[user] = (bounded_usage(total), ended)
        return rows


class Seeder:
    """Builds a :class:`Seed`: the history, the fill and the queue, decided by the core engine."""

    def __init__(self, config: Config, *, seed: int = SEED, now: float | None = None) -> None:
        self.config = config
        now = time.time() if now is None else now
        slots = core_bench.make_slots(config.nodes)
        self.model_of = {s.node: s.model for s in slots}
        self.gpus_of: dict[str, list[str]] = defaultdict(list)
        for s in slots:
            self.gpus_of[s.node].append(s.uuid)
        rng = random.Random(seed * 1_000_003 + config.nodes * 100_003 + config.waiting)
        self.draw = Draws(rng, sorted(self.model_of), self.model_of)
        self.out = Seed(config=config, policy=make_policy(config), slots=slots, now=now)
        self.next_id = 0
        self.next_kernel = 0
        #: the seeded timeline: history before fill_at, fill until queue_at, settle at settle_at
        self.fill_at = now - 7200.0
        self.queue_at = now - 3600.0
        self.settle_at = now - 60.0
        self.sched = Scheduler(self.out.policy, now=self.fill_at)
        self.sched.add_gpus(slots)

    def build(self) -> Seed:
        self.history()
        for user, (gpu_seconds, at) in self.out.fairshare_rows().items():
            self.sched.load_usage(user, groups_of(user), gpu_seconds, at)
        self.fill()
        self.queue_up()
        if self.out.waiting != self.config.waiting:
            raise RuntimeError(
                f"seeding {self.config.label}: {self.out.waiting} requests wait, not "
                f"{self.config.waiting}"
            )
        return self.out

    # -- the rows the ledger writes, one change at a time ---------------------------------------

    def event(
        self,
        at: float,
        kind: str,
        *,
        allocation_id: int | None = None,
        kernel_id: str | None = None,
        detail: dict[str, Any] | None = None,
    ) -> None:
        self.out.events.append(
            {
                "at": at,
                "kind": kind,
                "allocation_id": allocation_id,
                "kernel_id": kernel_id,
                "detail": json.dumps(detail or {}),
            }
        )

    def register_kernel(self, user: str, node: str, kind: str, at: float) -> str:
        self.next_kernel += 1
        n = self.next_kernel
        job = kind == "job"
        kernel_id = f"job-{n}" if job else f"kernel-{n:07d}"
        self.out.kernels[kernel_id] = {
            "kernel_id": kernel_id,
            "user": user,
            "node": node,
            "server_id": SERVER_ID,
            "kernel_name": "dlinfra-job" if job else "python3",
            "path": f"/home/{user}/work-{n}.ipynb",
            "pid": None,
            "pid_started_at": None,
            "keep_on_restart": False,
            # a kernel's token is kept as its SHA-256; a job's holder record has none
            "token_hash": None if job else hashlib.sha256(kernel_id.encode()).hexdigest(),
            "created_at": at,
            "launched_at": at,
        }
        self.event(at, "kernel_registered", kernel_id=kernel_id)
        return kernel_id

    def forget_kernel(self, kernel_id: str, at: float) -> None:
        del self.out.kernels[kernel_id]
        self.event(at, "kernel_forgotten", kernel_id=kernel_id, detail={"reason": "shut down"})

    def request(
        self,
        *,
        user: str,
        node: str,
        count: int,
        model: str | None,
        klass: str,
        kind: str,
        at: float,
        kernel_id: str | None = None,
    ) -> SeedAllocation:
        if kernel_id is None:
            kernel_id = self.register_kernel(user, node, kind, at)
        self.next_id += 1
        alloc = SeedAllocation(
            id=self.next_id,
            kernel_id=kernel_id,
            user=user,
            node=node,
            count=count,
            model=model,
            klass=klass,
            kind=kind,
            created_at=at,
        )
        self.out.allocations[alloc.id] = alloc
        self.event(
            at,
            "requested",
            allocation_id=alloc.id,
            kernel_id=kernel_id,
            detail={"count": count, "model": model, "priority_class": klass},
        )
        return alloc

    def grant(self, alloc: SeedAllocation, gpus: Sequence[str], borrowed: bool, at: float) -> None:
        alloc.state = AllocationState.GRANTED.value
        alloc.granted_at = at
        alloc.gpus = tuple(gpus)
        alloc.borrowed = borrowed
        detail: dict[str, Any] = {"gpus": list(gpus), "waited_s": at - alloc.created_at}
        if borrowed:
            detail["borrowed"] = True
        self.event(at, "granted", allocation_id=alloc.id, kernel_id=alloc.kernel_id, detail=detail)

    def end(self, alloc: SeedAllocation, reason: str, at: float) -> None:
        granted = alloc.state == AllocationState.GRANTED.value
        state = AllocationState.RELEASED if granted else AllocationState.CANCELLED
        alloc.state = state.value
        alloc.ended_at = at
        alloc.end_reason = reason
        self.event(
            at,
            state.value,
            allocation_id=alloc.id,
            kernel_id=alloc.kernel_id,
            detail={"reason": reason, "gpus": list(alloc.gpus)},
        )
        if granted and alloc.granted_at is not None:
            self.out.releases.append((at, alloc.user, len(alloc.gpus), alloc.granted_at))

    def record(self, out: Outcome, at: float) -> None:
        """What ``Ledger._schedule`` writes for one pass."""
        for g in out.grants:
            self.grant(self.out.allocations[g.request_id], g.gpus, g.borrowed, at)
        for p in out.preemptions:
            victim = self.out.allocations[p.holding_id]
            victim.preempted_for = p.request_id
            victim.preempt_reason = p.message
            self.event(
                at,
                "preempted",
                allocation_id=victim.id,
                kernel_id=victim.kernel_id,
                detail={"for": p.request_id, "reason": p.message, "user": victim.user},
            )

    # -- the timeline ---------------------------------------------------------------------------

    def history(self) -> None:
        """Released grants from the three days before the fill: holding times and fair share."""
        rng = self.draw.rng
        for klass, kind in (("interactive", "kernel"), ("batch", "job"), ("low", "job")):
            shortest, longest = HOLD_S[klass]
            for _ in range(HISTORY_PER_CLASS):
                user, node = self.draw.user(), self.draw.node()
                count = self.draw.count()
                held = rng.uniform(shortest, longest)
                granted = rng.uniform(self.fill_at - 3 * 86400.0, self.fill_at - held - 60.0)
                asked = granted - rng.uniform(0.0, 900.0)
                alloc = self.request(
                    user=user,
                    node=node,
                    count=count,
                    model=self.draw.model(node),
                    klass=klass,
                    kind=kind,
                    at=asked,
                )
                self.grant(alloc, self.gpus_of[node][:count], False, granted)
                self.end(alloc, "released by the user", granted + held)
                self.forget_kernel(alloc.kernel_id, granted + held + 1.0)

    def fill(self) -> None:
        """Every node full: requests of users within their quotas, each granted by a pass."""
        total = self.config.nodes * GPUS_PER_NODE
        step = (self.queue_at - self.fill_at) / total
        at = self.fill_at
        for node in self.draw.nodes:
            free = GPUS_PER_NODE
            while free > 0:
                at += step
                alloc = self._within_quota(node, free, at)
                if alloc is None:
                    break
                self.sched.submit(alloc.demand())
                out = self.sched.schedule(at)
                self.record(out, at)
                if alloc.state != AllocationState.GRANTED.value:
                    # not granted after all: the user gives up (cancelled, as a release of a
                    # queued request is), and this node keeps its free GPUs
                    self.sched.withdraw(alloc.id)
                    self.end(alloc, "released by the user", at)
                    break
                free -= alloc.count

    def _within_quota(self, node: str, free: int, at: float) -> SeedAllocation | None:
        for _ in range(50):
            user = self.draw.user()
            klass, kind = self.draw.klass()
            count = self.draw.count(free)
            probe = Demand(
                id=-1, user=user, groups=groups_of(user), count=count, klass=klass, submitted_at=at
            )
            if self.sched.over_quota(probe) is None:
                return self.request(
                    user=user,
                    node=node,
                    count=count,
                    model=self.draw.model(node),
                    klass=klass,
                    kind=kind,
                    at=at,
                )
        return None

    def queue_up(self) -> None:
        """``waiting`` requests over the last hour, then passes until one decides nothing."""
        want = self.config.waiting
        step = (self.settle_at - self.queue_at) / max(want, 1)
        for i in range(want):
            self._new_waiting(self.queue_at + i * step)
        at = self.settle_at
        for _ in range(SETTLE_PASSES):
            out = self.sched.schedule(at)
            self.record(out, at)
            at += 1.0
            for p in out.preemptions:
                self._stop_and_requeue(p.holding_id, at)
            if out.grants or out.preemptions:
                continue
            waiting = len(self.sched.demands)
            if waiting == want:
                return
            for _ in range(want - waiting):
                self._new_waiting(at)
            for demand_id in sorted(self.sched.demands, reverse=True)[: max(waiting - want, 0)]:
                # the newest give up: cancelled, as the ledger's release of a queued one
                self.sched.withdraw(demand_id)
                self.end(self.out.allocations[demand_id], "released by the user", at)
            at += 1.0
        raise RuntimeError(f"seeding {self.config.label}: the queue did not settle")

    def _new_waiting(self, at: float) -> None:
        node = self.draw.node()
        klass, kind = self.draw.klass()
        alloc = self.request(
            user=self.draw.user(),
            node=node,
            count=self.draw.count(),
            model=self.draw.model(node),
            klass=klass,
            kind=kind,
            at=at,
        )
        self.sched.submit(alloc.demand())

    def _stop_and_requeue(self, victim_id: int, at: float) -> None:
        """A preempted job stops (its grant released) and asks again for its job kernel."""
        victim = self.out.allocations[victim_id]
        self.sched.release(victim_id)
        self.end(victim, f"preempted: {victim.preempt_reason}", at)
        again = self.request(
            user=victim.user,
            node=victim.node,
            count=victim.count,
            model=victim.model,
            klass=victim.klass,
            kind=victim.kind,
            at=at,
            kernel_id=victim.kernel_id,
        )
        self.sched.submit(again.demand())


def _groups_json(user: str) -> str:
    # as ledger_state.groups_json stores the groups a request was made with
    return json.dumps(sorted(set(groups_of(user))))


def write_seed(store: Store, seed: Seed) -> None:
    """The GPUs through ``Ledger.sync_inventory``, everything else in one write transaction."""
    first = min((e["at"] for e in seed.events), default=seed.now) - 60.0
    setup = Ledger(store, ManualClock(first), policy=seed.policy, groups_of=groups_of)
    by_node: dict[str, list[Gpu]] = defaultdict(list)
    for s in seed.slots:
        by_node[s.node].append(
            Gpu(
                uuid=s.uuid,
                node=s.node,
                index=s.index,
                model=s.model,
                memory_bytes=80 << 30,
                simulated=True,
            )
        )
    for node, devices in by_node.items():
        setup.sync_inventory(node, devices)
    alloc_rows = [
        {
            "id": a.id,
            "kernel_id": a.kernel_id,
            "user": a.user,
            "node": a.node,
            "count": a.count,
            "model": a.model,
            "state": a.state,
            "created_at": a.created_at,
            "granted_at": a.granted_at,
            "ended_at": a.ended_at,
            "end_reason": a.end_reason,
            "priority_class": a.klass,
            "kind": a.kind,
            "groups": _groups_json(a.user),
            "borrowed": a.borrowed,
            "preempted_for": a.preempted_for,
            "preempt_reason": a.preempt_reason,
            "placement": None,
            "cluster_reason": None,
        }
        for a in sorted(seed.allocations.values(), key=lambda a: a.id)
    ]
    owned = [
        {"allocation_id": a.id, "gpu_uuid": u}
        for a in seed.allocations.values()
        if a.granted_at is not None
        for u in a.gpus
    ]
    held = [
        {"allocation_id": a.id, "gpu_uuid": u}
        for a in seed.allocations.values()
        if a.state == AllocationState.GRANTED.value
        for u in a.gpus
    ]
    usage = [
        {"user": user, "gpu_seconds": gpu_seconds, "at": at}
        for user, (gpu_seconds, at) in sorted(seed.fairshare_rows().items())
    ]
    # the log in the order the changes happened (seq follows time, as in the ledger)
    log = sorted(seed.events, key=lambda e: e["at"])
    with store.write() as tx:
        conn = tx.conn
        for table, rows in (
            (kernels, list(seed.kernels.values())),
            (allocations, alloc_rows),
            (allocation_gpus, owned),
            (holdings, held),
            (events, log),
            (fairshare, usage),
        ):
            if rows:
                conn.execute(insert(table), rows)
        if store.url.get_backend_name() == "postgresql":
            # the ids were given here: the next request's id must follow them
            conn.execute(
                text(
                    "SELECT setval(pg_get_serial_sequence('dlinfra_allocations', 'id'), "
                    "(SELECT max(id) FROM dlinfra_allocations))"
                )
            )
        tx.touch()


# -- measuring ------------------------------------------------------------------------------------


class Tracker:
    """Which GPUs are free, which grants exist and which requests wait, followed through
    ``Ledger.events`` (bookkeeping of the harness, not timed)."""

    def __init__(self, seed: Seed, since: int) -> None:
        self.since = since
        self.node_of = {s.uuid: s.node for s in seed.slots}
        self.free: dict[str, int] = defaultdict(int)
        for s in seed.slots:
            self.free[s.node] += 1
        self.granted: dict[str, dict[int, int]] = defaultdict(dict)
        for a in seed.granted():
            self._take(a.id, list(a.gpus))
        self.waiting = {
            a.id for a in seed.allocations.values() if a.state == AllocationState.QUEUED.value
        }
        #: grants picked for a release not yet seen in the log, and their GPUs
        self.claimed: dict[int, int] = {}

    def _take(self, allocation_id: int, gpus: list[str]) -> None:
        node = self.node_of[gpus[0]]
        self.granted[node][allocation_id] = len(gpus)
        self.free[node] -= len(gpus)

    def follow(self, ledger: Ledger) -> int:
        """Read the events since the last call; return how many grants they hold."""
        return self.apply(self.unread(ledger))

    def unread(self, ledger: Ledger) -> list[LedgerEvent]:
        """The events since the last one applied (only reads: no lock of the harness needed)."""
        found: list[LedgerEvent] = []
        since = self.since
        while True:
            page = ledger.events(since=since, limit=1000)
            found.extend(page)
            if len(page) < 1000:
                return found
            since = page[-1].seq

    def apply(self, page: Sequence[LedgerEvent]) -> int:
        """Follow ``page`` (events after the last one applied); return the grants it holds."""
        grants = 0
        for e in page:
            if e.seq <= self.since:
                continue
            self.since = e.seq
            if e.allocation_id is None:
                continue
            gpus = list(e.detail.get("gpus") or ())
            if e.kind == "requested":
                self.waiting.add(e.allocation_id)
            elif e.kind == AllocationState.CANCELLED.value:
                self.waiting.discard(e.allocation_id)
            elif e.kind == "granted" and gpus:
                self.waiting.discard(e.allocation_id)
                self._take(e.allocation_id, gpus)
                grants += 1
            elif e.kind == AllocationState.RELEASED.value and gpus:
                node = self.node_of[gpus[0]]
                claimed = self.claimed.pop(e.allocation_id, None)
                if self.granted[node].pop(e.allocation_id, None) is not None or claimed:
                    self.free[node] += len(gpus)
        return grants

    def full_node(self, rng: random.Random) -> str:
        """A node with no free GPU (a request there queues), else the fullest one."""
        full = [n for n, free in self.free.items() if free <= 0 and self.granted[n]]
        if full:
            return rng.choice(full)
        return min(self.free, key=lambda n: (self.free[n], n))

    def grant_on(
        self, node: str, count: int, rng: random.Random, *, claim: bool = False
    ) -> int | None:
        """A grant on ``node`` that frees room for ``count`` GPUs: one of that size if any, else
        the smallest larger one, else the largest; on another node if ``node`` has none.
        ``claim``: no later call picks it (callers at once each release their own)."""
        here = self.granted[node] or next((g for g in self.granted.values() if g), {})
        if not here:
            return None
        exact = [aid for aid, n in here.items() if n == count]
        if exact:
            chosen = rng.choice(exact)
        else:
            larger = [(n, aid) for aid, n in here.items() if n > count]
            chosen = min(larger)[1] if larger else max((n, aid) for aid, n in here.items())[1]
        if claim:
            self.claimed[chosen] = here.pop(chosen)
        return chosen


@dataclass
class Measured:
    backend: str
    config: Config
    seed_s: float = 0.0
    rows: int = 0
    seeded_queue: int = 0
    #: the first call of the ledger on the seeded store: loading its state into memory
    load_s: float = 0.0
    request: list[float] = field(default_factory=list)
    release: list[float] = field(default_factory=list)
    queue: list[float] = field(default_factory=list)
    allocations: list[float] = field(default_factory=list)
    #: requests that queued, releases after which a pass granted something
    queued: int = 0
    granting: int = 0
    #: requests the harness cancelled to keep the queue's length; the length at the end
    cancelled: int = 0
    final_queue: int = 0
    #: callers at once -> (changes, wall s) of the window they made together
    together: dict[int, tuple[int, float]] = field(default_factory=dict)
    #: (changes, wall s) of the same pairs posted, IN_FLIGHT at a time (``posted``)
    posted: tuple[int, float] = (0, 0.0)
    window_changes: int = 0
    window_s: float = 0.0

    @property
    def posted_per_s(self) -> float:
        changes, wall = self.posted
        return changes / wall if wall else 0.0

    @property
    def changes_per_s(self) -> float:
        return self.window_changes / self.window_s if self.window_s else 0.0

    def together_per_s(self, callers: int) -> float:
        changes, wall = self.together.get(callers, (0, 0.0))
        return changes / wall if wall else 0.0

    @property
    def cost_s(self) -> float:
        """The mean of the request p50 and the release p50."""
        return (p(self.request, 50) + p(self.release, 50)) / 2


def p(values: Sequence[float], pct: float) -> float:
    return core_bench.percentile(values, pct)


@dataclass(frozen=True)
class Ask:
    """A request the harness makes, drawn beforehand."""

    kernel_id: str
    node: str
    count: int
    model: str | None
    klass: str
    kind: str

    def make(self, ledger: Ledger) -> Allocation:
        return ledger.request(**self._fields())

    def change(self, ledger: Ledger) -> LedgerChange:
        """The request as a REST handler posts it (``Ledger.post``)."""
        return ledger.request_change(**self._fields())

    def _fields(self) -> dict[str, Any]:
        return {
            "kernel_id": self.kernel_id,
            "count": self.count,
            "model": self.model,
            "priority_class": self.klass,
            "kind": self.kind,
        }


class Harness:
    """The measured calls, each as a handler makes it."""

    def __init__(self, ledger: Ledger, seed: Seed, rng: random.Random, result: Measured) -> None:
        self.ledger = ledger
        self.seed = seed
        self.rng = rng
        self.result = result
        self.draw = Draws(rng, sorted({s.node for s in seed.slots}), {})
        self.model_of = {s.node: s.model for s in seed.slots}
        self.tracker = Tracker(seed, latest_event_seq(ledger.store))
        self.kernels = 0

    def queue(self) -> None:
        if not self.result.queue:
            t0 = time.perf_counter()
            waiting = self.ledger.queue_length()
            self.result.load_s = time.perf_counter() - t0
            self.result.seeded_queue = waiting
            if waiting != self.result.config.waiting:
                raise RuntimeError(
                    f"the seeded ledger counts {waiting} waiting requests, not "
                    f"{self.result.config.waiting}"
                )
        t0 = time.perf_counter()
        self.ledger.queue(limit=QUEUE_LIMIT)
        self.result.queue.append(time.perf_counter() - t0)

    def allocations(self) -> None:
        user = self.draw.user()
        t0 = time.perf_counter()
        self.ledger.allocations(user=user, limit=ALLOCATIONS_LIMIT)
        self.result.allocations.append(time.perf_counter() - t0)

    def pair(self) -> float:
        """A request on a full node, then a release of a grant there that makes room for it;
        returns the time of the two calls.

        The queue keeps its seeded length: when the pass did not grant the request (a quota, or
        a request ahead of it took the GPUs) and the queue has grown, the request is cancelled,
        untimed, as bookkeeping of the harness."""
        ask = self.ask()
        t0 = time.perf_counter()
        alloc = ask.make(self.ledger)
        asked = time.perf_counter() - t0
        self.result.request.append(asked)
        self.result.queued += int(alloc.state is AllocationState.QUEUED)
        self.tracker.follow(self.ledger)
        victim = self.tracker.grant_on(ask.node, ask.count, self.rng)
        released = 0.0
        if victim is not None:
            t0 = time.perf_counter()
            self.ledger.release(victim, reason="released by the user")
            released = time.perf_counter() - t0
            self.result.release.append(released)
            self.result.granting += int(self.tracker.follow(self.ledger) > 0)
        waiting = self.tracker.waiting
        if alloc.id in waiting and len(waiting) > self.result.config.waiting:
            self.ledger.release(alloc.id, reason="released by the user")
            self.tracker.follow(self.ledger)
            self.result.cancelled += 1
        self.result.final_queue = len(waiting)
        return asked + released

    def ask(self) -> Ask:
        """The next request: on a full node, for a new kernel registered there (untimed)."""
        node = self.tracker.full_node(self.rng)
        klass, kind = self.draw.klass()
        kernel_id = self._kernel(self.draw.user(), node, kind)
        count = self.draw.count()
        model = short_model(self.model_of[node]) if self.rng.random() < 0.125 else None
        return Ask(kernel_id, node, count, model, klass, kind)

    def _kernel(self, user: str, node: str, kind: str) -> str:
        """A new kernel (a job's holder record for a job), registered as a launch does."""
        self.kernels += 1
        job = kind == "job"
        kernel_id = f"job-bench-{self.kernels}" if job else f"bench-{self.kernels:07d}"
        record = KernelRecord(
            kernel_id=kernel_id,
            user=user,
            node=node,
            server_id=SERVER_ID,
            kernel_name="dlinfra-job" if job else "python3",
            path=f"/home/{user}/bench-{self.kernels}.ipynb",
        )
        token = None if job else hashlib.sha256(kernel_id.encode()).hexdigest()
        self.ledger.register_kernel(record, token_hash=token)
        self.tracker.follow(self.ledger)
        return kernel_id


def together(harness: Harness, callers: int, pairs: int) -> tuple[int, float]:
    """``pairs`` request + release pairs made by ``callers`` threads at once, as a server's
    executor threads call the ledger for the people it serves; returns (changes, wall s).

    Each pair asks on a full node for a kernel registered there beforehand (setup, untimed),
    then releases a grant of that node that makes room (claimed under the harness's lock, so no
    two callers release the same one). The wall time covers everything the callers do,
    their bookkeeping too (claims, and following the event log every 50 pairs to learn the
    pass's grants), so that one caller through the same code is the baseline."""
    ledger, tracker, rng = harness.ledger, harness.tracker, harness.rng
    plan = [harness.ask() for _ in range(pairs)]
    lock = threading.Lock()
    following = threading.Lock()
    made = [0] * callers
    errors: list[BaseException] = []
    start = threading.Barrier(callers + 1)

    def work(me: int) -> None:
        start.wait()
        try:
            for i in range(me, len(plan), callers):
                ask = plan[i]
                ask.make(ledger)
                made[me] += 1
                with lock:
                    victim = tracker.grant_on(ask.node, ask.count, rng, claim=True)
                if victim is not None:
                    ledger.release(victim, reason="released by the user")
                    made[me] += 1
                # one caller at a time reads the log, outside the harness's lock (a read may
                # wait for a batch of the ledger, and the others' claims must not wait for it)
                if i % 50 == 0 and following.acquire(blocking=False):
                    try:
                        page = tracker.unread(ledger)
                        with lock:
                            tracker.apply(page)
                    finally:
                        following.release()
        except BaseException as err:
            errors.append(err)

    threads = [threading.Thread(target=work, args=(me,)) for me in range(callers)]
    for t in threads:
        t.start()
    start.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    if errors:
        raise errors[0]
    tracker.follow(ledger)
    return sum(made), wall


def posted(harness: Harness, in_flight: int, pairs: int) -> tuple[int, float]:
    """``pairs`` request + release pairs posted to the ledger's writing thread
    (``Ledger.post``), at most ``in_flight`` changes unanswered at a time, as a server's REST
    handlers post the changes of the people it serves (each handler waits for its own answer,
    no thread does); returns (changes, wall s). The same pairs and bookkeeping as
    :func:`together`, on this one thread."""
    ledger, tracker, rng = harness.ledger, harness.tracker, harness.rng
    plan = [harness.ask() for _ in range(pairs)]
    slots = threading.BoundedSemaphore(in_flight)
    errors: list[BaseException] = []
    answered = [0]  # counted on the ledger's writing thread alone

    def told(outcome: ChangeOutcome[Allocation]) -> None:
        try:
            outcome.value()
        except BaseException as err:
            errors.append(err)
        else:
            answered[0] += 1
        slots.release()

    def post(change: LedgerChange) -> None:
        slots.acquire()
        ledger.post(change, told)

    t0 = time.perf_counter()
    for i, ask in enumerate(plan):
        post(ask.change(ledger))
        victim = tracker.grant_on(ask.node, ask.count, rng, claim=True)
        if victim is not None:
            post(ledger.release_change(victim, reason="released by the user"))
        if i % 50 == 0:
            tracker.apply(tracker.unread(ledger))
    for _ in range(in_flight):
        slots.acquire()  # every change answered
    wall = time.perf_counter() - t0
    if errors:
        raise errors[0]
    tracker.follow(ledger)
    return answered[0], wall


def measure(
    ledger: Ledger,
    seed: Seed,
    result: Measured,
    *,
    budget_s: float,
    samples: int,
    rng_seed: int,
    callers: int = 1,
    together_pairs: int = 0,
) -> None:
    harness = Harness(ledger, seed, random.Random(rng_seed), result)
    start = time.perf_counter()
    rounds = 0
    while rounds == 0 or (rounds < samples and time.perf_counter() - start < budget_s * 2 / 3):
        harness.queue()
        harness.allocations()
        harness.pair()
        rounds += 1
    start = time.perf_counter()
    pairs = 0
    while pairs == 0 or (pairs < samples and time.perf_counter() - start < budget_s / 3):
        before = len(result.release)
        result.window_s += harness.pair()
        result.window_changes += 1 + len(result.release) - before
        pairs += 1
    if together_pairs:
        for n in sorted({1, callers}):
            result.together[n] = together(harness, n, together_pairs)
        result.posted = posted(harness, IN_FLIGHT, together_pairs)
        result.final_queue = len(harness.tracker.waiting)


def run_config(
    backend: str,
    url: str,
    config: Config,
    *,
    budget_s: float,
    samples: int,
    seed: int,
    callers: int = LEDGER_THREADS,
    together_pairs: int = 0,
) -> Measured:
    result = Measured(backend, config)
    t0 = time.perf_counter()
    state = Seeder(config, seed=seed).build()
    store = Store(url)
    try:
        write_seed(store, state)
    finally:
        store.dispose()
    result.seed_s = time.perf_counter() - t0
    result.rows = len(state.allocations)
    # a server starting on the ledger: a new store, a new Ledger
    store = Store(url)
    # as a server makes it (DLInfra.freeze_gc: its objects frozen after the first load)
    ledger = Ledger(
        store, SystemClock(), policy=state.policy, groups_of=groups_of, freeze_loaded_state=True
    )
    try:
        t0 = time.perf_counter()
        measure(
            ledger,
            state,
            result,
            budget_s=budget_s,
            samples=samples,
            rng_seed=seed + 1,
            callers=callers,
            together_pairs=together_pairs,
        )
        took = time.perf_counter() - t0
    finally:
        ledger.close()  # its state was frozen: only letting go of it frees it
        store.dispose()
    print(
        f"  {backend} {config.label}: seeded in {result.seed_s:.1f} s (setup: "
        f"{result.rows:,} allocations, {len(state.events):,} events), measured in {took:.1f} s",
        flush=True,
    )
    return result


@contextlib.contextmanager
def sqlite_url() -> Iterator[str]:
    with tempfile.TemporaryDirectory(prefix="ledger-scale-") as tmp:
        yield f"sqlite:///{Path(tmp) / 'ledger.db'}"


@contextlib.contextmanager
def fresh_database(server_url: str) -> Iterator[str]:
    """An empty database of its own on the server, dropped afterwards."""
    name = f"ledger_scale_{uuid.uuid4().hex[:12]}"
    admin = create_engine(server_url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
        try:
            yield make_url(server_url).set(database=name).render_as_string(hide_password=False)
        finally:
            with admin.connect() as conn:
                conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    finally:
        admin.dispose()


def postgres_server(stack: contextlib.ExitStack, pg_url: str | None) -> str | None:
    """A PostgreSQL server's URL: ``--pg-url``, else one started as the suite does, else None."""
    if pg_url is not None:
        return pg_url
    try:
        from postgres_server import PostgresUnavailable, start_postgres
    except ImportError as err:
        print(f"PostgreSQL skipped: tests/postgres_server.py cannot be imported ({err})")
        return None
    try:
        return str(stack.enter_context(start_postgres()))
    except PostgresUnavailable as err:
        print(f"PostgreSQL skipped: {err}")
        return None


# -- the core baseline ----------------------------------------------------------------------------


def core_baseline(config: Config, events: int, seed: int) -> core_bench.Run:
    """scheduler_scale.py's harness on its own workload at the configuration's size."""
    workload = core_bench.make_workload(
        config.nodes, waiting=config.waiting, events=events, seed=seed
    )
    return core_bench.run(core_bench.new_scheduler("ours", workload), workload, "ours")


# -- output ---------------------------------------------------------------------------------------


def _ms(seconds: float) -> str:
    ms = seconds * 1000
    return f"{ms:,.0f}" if ms >= 100 else f"{ms:.1f}" if ms >= 1 else f"{ms:.2f}"


def _pair(values: Sequence[float]) -> str:
    return f"{_ms(p(values, 50))}/{_ms(p(values, 99))}" if values else "-"


def format_table(results: Sequence[Measured]) -> str:
    head = (
        f"{'backend':<9}{'nodes':>6}{'GPUs':>6}{'waiting':>8}{'seeded':>7}{'end':>6}"
        f"{'rounds':>7}{'request':>15}{'release':>15}{'queue()':>15}{'allocations()':>15}"
        f"{'changes/s':>10}{'queued':>8}{'granted':>8}{'undone':>7}{'load':>8}"
    )
    lines = [
        "ms p50/p99; seeded, end: queue length before the first change and after the last; "
        "rounds: samples of queue() and allocations(); request and release also count the "
        "window's pairs; queued: requests that queued / made; granted: releases after which the "
        "pass granted something / made; undone: requests cancelled (untimed) to keep the queue's "
        "length; load: the first call on the seeded store (loading the state into memory), s; "
        "queue(): the first page of 100",
        head,
    ]
    for r in results:
        c = r.config
        lines.append(
            f"{r.backend:<9}{c.nodes:>6}{c.nodes * GPUS_PER_NODE:>6}{c.waiting:>8}"
            f"{r.seeded_queue:>7}{r.final_queue:>6}{len(r.queue):>7}"
            f"{_pair(r.request):>15}{_pair(r.release):>15}{_pair(r.queue):>15}"
            f"{_pair(r.allocations):>15}{r.changes_per_s:>10.2f}"
            f"{f'{r.queued}/{len(r.request)}':>8}{f'{r.granting}/{len(r.release)}':>8}"
            f"{r.cancelled:>7}{r.load_s:>8.2f}"
        )
    return "\n".join(lines)


def growth(results: Sequence[Measured]) -> tuple[Measured, Measured, float]:
    """(smallest, largest, cost at the largest / cost at the smallest) of one backend's runs."""
    ordered = sorted(results, key=lambda r: r.config)
    first, last = ordered[0], ordered[-1]
    return first, last, (last.cost_s / first.cost_s if first.cost_s else math.inf)


def format_together(results: Sequence[Measured], callers: int) -> str:
    """Changes/s of the windows made by one caller and by ``callers`` at once."""
    lines = [
        f"changes/s with callers at once (requests and releases of {callers} threads, as a "
        "server's ledger threads make them, and posted to the ledger's writing thread as its "
        "REST handlers post them; their bookkeeping counted; one caller through the same code "
        "is the baseline):"
    ]
    for r in results:
        if not r.together:
            continue
        one, many = r.together_per_s(1), r.together_per_s(callers)
        ratio = f"x{many / one:.2f}" if one else "-"
        lines.append(
            f"  {r.backend} {r.config.label}: 1 caller {one:,.0f}/s, {callers} callers "
            f"{many:,.0f}/s ({ratio}), posted {IN_FLIGHT} at a time {r.posted_per_s:,.0f}/s "
            f"(x{r.posted_per_s / one if one else 0.0:.2f}); queue at the end {r.final_queue:,}"
        )
    return "\n".join(lines)


def result_line(last: Measured, grown: float, core: core_bench.Run, callers: int = 1) -> str:
    one, many = last.together_per_s(1), last.together_per_s(callers)
    together = (
        f" changes_per_s_together={many:.2f} callers={callers} "
        f"together_ratio={many / one if one else 0.0:.2f} "
        f"changes_per_s_posted={last.posted_per_s:.2f} in_flight={IN_FLIGHT}"
        if last.together
        else ""
    )
    return (
        f"RESULT changes_per_s={last.changes_per_s:.2f}{together} "
        f"request_p99_ms={p(last.request, 99) * 1000:.3f} "
        f"release_p99_ms={p(last.release, 99) * 1000:.3f} "
        f"queue_p99_ms={p(last.queue, 99) * 1000:.3f} "
        f"allocations_p99_ms={p(last.allocations, 99) * 1000:.3f} "
        f"growth={grown:.2f} core_decisions_per_s={core.decisions_per_s:.0f}"
    )


def parse_sizes(values: Sequence[str]) -> tuple[Config, ...]:
    configs = set()
    for value in values:
        for part in value.split(","):
            nodes, sep, waiting = part.strip().lower().partition("x")
            if not sep or not nodes.isdigit() or not waiting.isdigit() or int(nodes) < 1:
                raise argparse.ArgumentTypeError(
                    f"a size is NODESxWAITING, such as 16x1000, not {part!r}"
                )
            configs.add(Config(int(nodes), int(waiting)))
    return tuple(sorted(configs))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument(
        "--sizes",
        nargs="+",
        default=None,
        help="configurations NODESxWAITING, comma-separated (default: the full 3 x 3 grid)",
    )
    parser.add_argument("--budget-s", type=float, default=BUDGET_S, help="per configuration")
    parser.add_argument("--samples", type=int, default=SAMPLES, help="rounds at most, and pairs")
    parser.add_argument("--backend", choices=("sqlite", "postgres", "both"), default="both")
    parser.add_argument("--pg-url", default=None, help="a PostgreSQL server (role with CREATEDB)")
    parser.add_argument("--core-events", type=int, default=CORE_EVENTS)
    parser.add_argument("--seed", type=int, default=SEED)
    parser.add_argument(
        "--callers",
        type=int,
        default=LEDGER_THREADS,
        help="threads calling at once in the last window (default: a server's ledger threads)",
    )
    parser.add_argument(
        "--together-pairs",
        type=int,
        default=TOGETHER_PAIRS,
        help="pairs of the windows with one caller and with --callers (0: no such window)",
    )
    args = parser.parse_args(argv)
    try:
        configs = parse_sizes(args.sizes) if args.sizes else FULL_GRID
    except argparse.ArgumentTypeError as err:
        parser.error(str(err))
    if args.callers < 1 or args.together_pairs < 0:
        parser.error("--callers must be at least 1 and --together-pairs at least 0")
    backends = ("sqlite", "postgres") if args.backend == "both" else (args.backend,)
    print(
        f"{len(configs)} configurations x {GPUS_PER_NODE} GPUs per node on {', '.join(backends)}; "
        f"budget {args.budget_s:g} s and at most {args.samples} rounds each; seed {args.seed}"
    )
    results: list[Measured] = []
    with contextlib.ExitStack() as stack:
        for backend in backends:
            if backend == "sqlite":
                for config in configs:
                    with sqlite_url() as url:
                        results.append(
                            run_config(
                                backend,
                                url,
                                config,
                                budget_s=args.budget_s,
                                samples=args.samples,
                                seed=args.seed,
                                callers=args.callers,
                                together_pairs=args.together_pairs,
                            )
                        )
                continue
            server = postgres_server(stack, args.pg_url)
            if server is None:
                continue
            for config in configs:
                with fresh_database(server) as url:
                    results.append(
                        run_config(
                            backend,
                            url,
                            config,
                            budget_s=args.budget_s,
                            samples=args.samples,
                            seed=args.seed,
                            callers=args.callers,
                            together_pairs=args.together_pairs,
                        )
                    )
    if not results:
        print("nothing was measured")
        return 1
    largest = max(configs)
    t0 = time.perf_counter()
    core = core_baseline(largest, args.core_events, args.seed)
    core_s = time.perf_counter() - t0
    print()
    print(format_table(results))
    print()
    if args.together_pairs:
        print(format_together(results, args.callers))
        print()
    reported = next(b for b in ("sqlite", "postgres") if any(r.backend == b for r in results))
    for backend in ("sqlite", "postgres"):
        mine = [r for r in results if r.backend == backend]
        if not mine:
            continue
        first, last, grown = growth(mine)
        print(
            f"{backend}: cost (mean of request p50 and release p50) {_ms(first.cost_s)} ms at "
            f"{first.config.label}, {_ms(last.cost_s)} ms at {last.config.label}: growth "
            f"x{grown:.2f}"
        )
    event_s = sum(core.event_ns) / len(core.event_ns) / 1e9 if core.event_ns else 0.0
    top = next(r for r in results if r.backend == reported and r.config == largest)
    print(
        f"core baseline (scheduler_scale.py's harness, in memory, {largest.label}, "
        f"{core.events:,} events, {core_s:.1f} s with its fill): {core.decisions_per_s:,.0f} "
        f"decisions/s, {event_s * 1e6:,.1f} us per event (a submit or release and its pass)"
    )
    if event_s > 0:
        print(
            f"the ledger's change on {reported} at {largest.label} ({_ms(top.cost_s)} ms) costs "
            f"{top.cost_s / event_s:,.0f} x a core event; {top.changes_per_s:.2f} changes/s "
            f"against {1 / event_s:,.0f} core events/s"
        )
    print(TARGETS)
    print(f"RESULT below: {reported} at {largest.label}")
    _first, _last, grown = growth([r for r in results if r.backend == reported])
    print(result_line(top, grown, core, args.callers))
    return 0


if __name__ == "__main__":
    sys.exit(main())
