"""Random operations on a ledger (SQLite), checking its invariants after every step."""

from __future__ import annotations

import shutil
import tempfile
from collections import Counter, defaultdict

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from jupyter_dlinfra.core.books.ledger import Ledger
from jupyter_dlinfra.core.clock import ManualClock
from jupyter_dlinfra.core.errors import Conflict, Unsatisfiable
from jupyter_dlinfra.core.models import AllocationState, Gpu, KernelRecord
from jupyter_dlinfra.core.scheduling.policy import SchedulingPolicy
from jupyter_dlinfra.core.scheduling.types import model_matches
from jupyter_dlinfra.core.store import Store

from .kit import A100, H100, make_gpus

INVENTORY: dict[str, list[Gpu]] = {
    "node-a": make_gpus("node-a", (4, A100)),
    "node-b": make_gpus("node-b", (2, A100), (2, H100)),
}
KERNEL_NODE = {f"k{i}": ("node-a" if i < 3 else "node-b") for i in range(6)}
#: holders of requests of the pool (any node): work a cluster starts where it is told
POOL_KERNELS = ("p0", "p1")
MODELS = [None, None, "A100", "h100", "V100"]


class LedgerMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.dir = tempfile.mkdtemp(prefix="dlinfra-hyp-")
        self.clock = ManualClock()
        self.store = Store(f"sqlite:///{self.dir}/ledger.db")
        # a pass reserves for one request and looks at one more: the rest is left to its
        # work-conserving step, which the invariants check
        self.ledger = Ledger(
            self.store, self.clock, policy=SchedulingPolicy(reservations=1), max_scan=1
        )
        for node, devices in INVENTORY.items():
            self.ledger.sync_inventory(node, devices)
        for kid, node in KERNEL_NODE.items():
            self.ledger.register_kernel(
                KernelRecord(kernel_id=kid, user=f"user-{kid}", node=node, server_id="srv")
            )
        for kid in POOL_KERNELS:
            self.ledger.register_kernel(
                KernelRecord(kernel_id=kid, user=f"user-{kid}", node="gateway", server_id="srv")
            )
        self.ids: list[int] = []
        self.seen_granted: set[int] = set()

    def teardown(self) -> None:
        self.store.dispose()
        shutil.rmtree(self.dir, ignore_errors=True)

    # -- rules -----------------------------------------------------------------------------

    @initialize(counts=st.lists(st.integers(1, 4), min_size=6, max_size=6))
    def everyone_asks(self, counts: list[int]) -> None:
        """Start under contention: every kernel asks once, so that most runs have a queue."""
        for kernel, count in zip(sorted(KERNEL_NODE), counts, strict=True):
            self.request(kernel, count, None)

    @rule(
        kernel=st.sampled_from(sorted(KERNEL_NODE)),
        count=st.integers(1, 4),
        model=st.sampled_from(MODELS),
    )
    def request(self, kernel: str, count: int, model: str | None) -> None:
        node = KERNEL_NODE[kernel]
        present = self.ledger.gpus(node)
        matching = [g for g in present if model_matches(model, g.model)]
        active = self.ledger.allocations(kernel_id=kernel)
        same = [
            a
            for a in active
            if (a.count, (a.model or "").lower()) == (count, (model or "").lower())
        ]
        try:
            alloc = self.ledger.request(kernel_id=kernel, count=count, model=model)
        except Unsatisfiable as err:
            assert not same
            expected = "no_gpus" if not present else "unknown_model" if not matching else "too_many"
            assert count > len(matching)
            assert err.reason == expected
            return
        except Conflict:
            assert active
            assert (active[0].count, active[0].model) != (count, model)
            return
        if same:
            # asking again for what the kernel has is answered with it, even if its GPUs have
            # since left the inventory (a grant stays until released)
            assert alloc.id == same[0].id
            return
        assert count <= len(matching)
        if active:
            assert alloc.id == active[0].id
        else:
            assert alloc.id not in self.ids
            assert alloc.state.active
            assert (alloc.kernel_id, alloc.node, alloc.count, alloc.model) == (
                kernel,
                node,
                count,
                model,
            )
            self.ids.append(alloc.id)

    @rule(
        kernel=st.sampled_from(POOL_KERNELS),
        count=st.integers(1, 5),
        model=st.sampled_from(MODELS),
    )
    def request_anywhere(self, kernel: str, count: int, model: str | None) -> None:
        # a request takes GPUs of one model on one node
        pools = Counter(
            (g.node, g.model)
            for node in INVENTORY
            for g in self.ledger.gpus(node)
            if model_matches(model, g.model)
        )
        largest = max(pools.values(), default=0)
        active = self.ledger.allocations(kernel_id=kernel)
        try:
            alloc = self.ledger.request(kernel_id=kernel, count=count, model=model, anywhere=True)
        except Unsatisfiable:
            assert count > largest
            return
        except Conflict:
            assert active
            return
        assert alloc.placement == "pool"
        if alloc.id not in self.ids:
            assert not active and count <= largest
            self.ids.append(alloc.id)

    @precondition(lambda self: bool(self.ids))
    @rule(pick=st.integers(0, 1_000), only_active=st.booleans())
    def release(self, pick: int, only_active: bool) -> None:
        """Release (or cancel) one request; now and then one that has ended already."""
        active = [a.id for a in self.ledger.allocations()]
        choices = active if only_active and active else self.ids
        aid = choices[pick % len(choices)]
        before = self.ledger.allocation(aid)
        after = self.ledger.release(aid, reason="rule")
        if before.state is AllocationState.GRANTED:
            assert after.state is AllocationState.RELEASED
        elif before.state is AllocationState.QUEUED:
            assert after.state is AllocationState.CANCELLED
        else:
            assert after == before
        assert after.ended_at is not None

    @rule(kernel=st.sampled_from(sorted(KERNEL_NODE) + list(POOL_KERNELS)))
    def release_kernel(self, kernel: str) -> None:
        active = {a.id for a in self.ledger.allocations(kernel_id=kernel)}
        ended = self.ledger.release_kernel(kernel, reason="rule")
        assert {a.id for a in ended} == active
        assert all(not a.state.active for a in ended)
        assert self.ledger.allocations(kernel_id=kernel) == []

    @rule(
        node=st.sampled_from(sorted(INVENTORY)),
        keep=st.lists(st.booleans(), min_size=4, max_size=4),
    )
    def sync_inventory(self, node: str, keep: list[bool]) -> None:
        devices = [g for g, k in zip(INVENTORY[node], keep, strict=True) if k]
        self.ledger.sync_inventory(node, devices)
        assert {g.uuid for g in self.ledger.gpus(node)} == {g.uuid for g in devices}

    @rule(seconds=st.floats(0, 3600, allow_nan=False))
    def advance_clock(self, seconds: float) -> None:
        self.clock.advance(seconds)

    # -- invariants ------------------------------------------------------------------------

    @invariant()
    def ledger_is_consistent(self) -> None:
        everything = {g.uuid: g for g in self.ledger.gpus(include_absent=True)}
        present = {u: g for u, g in everything.items() if g.present}
        history = self.ledger.allocations(active=False)
        active = [a for a in history if a.state.active]
        granted = [a for a in active if a.state is AllocationState.GRANTED]
        queued = [a for a in active if a.state is AllocationState.QUEUED]

        # no GPU is held by two allocations, and the holdings table says the same
        held = Counter(u for a in granted for u in a.gpus)
        assert all(n == 1 for n in held.values()), held
        holders = self.ledger.holders()
        assert {u: h.id for u, h in holders.items()} == {u: a.id for a in granted for u in a.gpus}

        # a grant holds exactly `count` GPUs of its node, of its model
        for a in granted:
            assert len(a.gpus) == a.count
            assert a.granted_at is not None
            assert a.ended_at is None
            assert a.position is None
            for u in a.gpus:
                # a request of the pool says the node it was granted on
                assert everything[u].node == a.node
                assert model_matches(a.model, everything[u].model)
            if a.placement == "pool":
                assert self.ledger.kernel(a.kernel_id).node == a.node
            if a.id not in self.seen_granted:
                # a new grant never takes a GPU that is gone
                assert all(u in present for u in a.gpus)
                self.seen_granted.add(a.id)

        # waiting requests hold nothing and are numbered 1..n in the order of service
        assert all(a.gpus == () and a.granted_at is None for a in queued)
        queue = self.ledger.queue()
        assert queue == queued
        for node in {a.node for a in queue}:
            on_node = [a.position or 0 for a in queue if a.node == node]
            assert sorted(on_node) == list(range(1, len(on_node) + 1))
        assert all(a.waiting_reason and a.waiting_code for a in queue)

        # a user's own list, served from the rows kept in memory, is what the tables say
        for kid in (*KERNEL_NODE, *POOL_KERNELS):
            user = f"user-{kid}"
            served, total = self.ledger.allocations_page(user=user, limit=1000)
            assert served == self.ledger.allocations(user=user)
            assert total == len(served)
            assert served[1:2] == self.ledger.allocations_page(user=user, limit=1, offset=1)[0]
        kept = self.ledger._cache
        assert kept is not None and set(kept.rows) <= set(kept.user_of)  # ended rows go

        # ended allocations hold nothing any more
        holding_ids = {h.id for h in holders.values()}
        for a in history:
            if not a.state.active:
                assert a.ended_at is not None
                assert a.id not in holding_ids

        # work-conserving under FIFO: replaying the rule grants nothing more
        # GPUs the last pass set aside for a request of the pool are not free for the rest
        cache = self.ledger._cache
        assert cache is not None
        sched = cache.sched
        aside = {
            u
            for rid, uuids in sched.reserved.items()
            if rid in sched.demands and sched.demands[rid].node is None
            for u in uuids
        }
        free: dict[str, list[Gpu]] = defaultdict(list)
        for g in sorted(present.values(), key=lambda g: (g.node, g.index)):
            if g.uuid not in holders and g.uuid not in aside:
                free[g.node].append(g)
        # (pinned requests are checked here; the pool's, which may run anywhere, by unserved)
        for a in queue:
            if a.placement == "pool":
                continue
            fits = [g for g in free[a.node] if model_matches(a.model, g.model)]
            assert len(fits) < a.count, f"allocation {a.id} could be granted now"
            for g in fits:
                free[a.node].remove(g)
        # and whatever the scan limit: no GPU idles that a waiter within quota could take (of
        # its node, or of any node for the pool's), what the last pass set aside aside
        assert sched.unserved() == []


LedgerMachine.TestCase.settings = settings(
    # the same examples every run: a rare step sequence once gave an order of service that a
    # rerun of the same steps did not (a FlakyFailure); see the issue 7 note
    derandomize=True,
    max_examples=30,
    stateful_step_count=25,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestLedgerInvariants = LedgerMachine.TestCase
