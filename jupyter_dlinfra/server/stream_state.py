"""The event stream's picture of the cluster, kept between snapshots and moved by what changed.

At 1,024 nodes x 8 GPUs a whole snapshot is megabytes of JSON, and building one reads every GPU,
every holding and their kernels: too much to read, serialise and send to every subscriber on
every change. So the broadcaster keeps the picture here as JSON-ready pieces, one entry per GPU
and one per granted allocation, and a change moves only what it touched:

- the allocations its ledger events name (their holdings read again, with their kernels), and
  the GPUs they held or hold now;
- a new telemetry sample: the GPUs it measured, and the allocations holding them.

What moved (:class:`Moved`) goes to subscribers as a ``delta``; a whole snapshot
is assembled from the pieces (:class:`Picture`) only for a subscriber that needs one: a new one,
or one that fell behind. Pieces are never changed once made, only replaced, so a picture taken
at one snapshot stays that snapshot while the state moves on.

The picture is read whole again, and compared piece by piece so that subscribers still get a
delta, when GPUs come or go (``gpu_seen``, ``gpu_lost``), after a burst of a thousand events
or more, and every ``full_every`` seconds, a safety net: every change the picture shows writes an
event (a kernel's name and path too: ``kernel_registered``, ``kernel_updated``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from jupyter_dlinfra.core.books.ledger import Ledger
from jupyter_dlinfra.core.models import Allocation, Gpu, KernelRecord, LedgerEvent
from jupyter_dlinfra.server.views import allocation_json, gpu_json, outside_by_gpu
from jupyter_dlinfra.telemetry import GpuSample, TelemetryProvider

__all__ = ["FULL_EVERY", "Moved", "Picture", "StreamState"]

K = TypeVar("K")
V = TypeVar("V")

#: seconds between whole reads of the picture (see the module's docstring)
FULL_EVERY = 300.0
#: events that change the inventory: the picture is read whole
INVENTORY_EVENTS = frozenset({"gpu_seen", "gpu_lost"})
#: a burst of this many events (a restart catching up) is cheaper read whole than one by one
WHOLE_AFTER_EVENTS = 1000


@dataclass(frozen=True)
class Picture:
    """The pieces of one snapshot, enough to assemble it whole later."""

    #: present GPUs in the order shown (by node, then index), and the node of each
    order: tuple[str, ...]
    node_of: Mapping[str, str]
    entries: Mapping[str, dict[str, Any]]
    granted: Mapping[int, dict[str, Any]]
    cluster: Mapping[str, Any]

    def cluster_json(self) -> dict[str, Any]:
        nodes: dict[str, list[dict[str, Any]]] = {}
        for uuid in self.order:
            nodes.setdefault(self.node_of[uuid], []).append(self.entries[uuid])
        return {
            **self.cluster,
            "nodes": [{"name": name, "gpus": gpus} for name, gpus in sorted(nodes.items())],
        }

    def allocations_json(self) -> list[dict[str, Any]]:
        return [self.granted[i] for i in sorted(self.granted)]


@dataclass(frozen=True)
class Moved:
    """What one step changed, as a delta carries it."""

    #: changed or new GPU entries by node, and the UUIDs of GPUs no longer present by node
    gpus: dict[str, list[dict[str, Any]]]
    gpus_gone: dict[str, list[str]]
    allocations: list[dict[str, Any]]
    allocations_gone: list[int]


class _CopyOnWrite(Generic[K, V]):
    """A dict that is copied before its first change: a step that moves nothing copies nothing
    (at 8,192 GPUs a copy per delta was most of a small one's cost)."""

    def __init__(self, mapping: dict[K, V]) -> None:
        self.mapping = mapping
        self._copied = False

    def get(self, key: K) -> V | None:
        return self.mapping.get(key)

    def put(self, key: K, value: V) -> None:
        self._own()
        self.mapping[key] = value

    def pop(self, key: K) -> bool:
        """Drop ``key``; whether it was there."""
        if key not in self.mapping:
            return False
        self._own()
        del self.mapping[key]
        return True

    def _own(self) -> None:
        if not self._copied:
            self.mapping = dict(self.mapping)
            self._copied = True


#: the events after which a grant may have become parked (or resuming, still parked)
_PARKS = frozenset({"parked", "resuming"})


class StreamState:
    """Blocking, one caller at a time (the broadcaster's build)."""

    def __init__(self, full_every: float = FULL_EVERY) -> None:
        self.full_every = full_every
        self.read_at: float | None = None
        #: every GPU of the ledger, absent ones too (allocations may name them)
        self.gpus: dict[str, Gpu] = {}
        self.present: tuple[Gpu, ...] = ()
        self.holders: dict[str, Allocation] = {}
        #: parked grants by each GPU they return to (lent, or free to lend), and by id
        self.parked: dict[str, Allocation] = {}
        self._parked_by: dict[int, Allocation] = {}
        self.kernels: dict[str, KernelRecord] = {}
        self.simulated = False
        self._order: tuple[str, ...] = ()
        self._node_of: dict[str, str] = {}
        #: GPUs that left the inventory at the last whole read, with the node they were shown on
        self._departed: dict[str, str] = {}
        self._held_by: dict[int, tuple[str, ...]] = {}
        #: how many of ``holders`` are present GPUs: the free count without a walk of them all
        self._held_present = 0
        self._entries: dict[str, dict[str, Any]] = {}
        self._granted: dict[int, dict[str, Any]] = {}
        self._samples: Mapping[str, GpuSample] = {}
        #: GPU -> the cluster's pods the ledger keeps it out for, and the nodes where such pods
        #: use GPUs (read again when told of them, or of a release on one of those nodes: the
        #: ledger then keeps the GPU that came free out, without an event of its own)
        self.outside: dict[str, tuple[str, ...]] = {}
        self._outside_nodes: frozenset[str] = frozenset()

    # -- moving ----------------------------------------------------------------------------------

    def step(
        self,
        ledger: Ledger,
        *,
        events: list[LedgerEvent],
        samples: Mapping[str, GpuSample],
        provider: TelemetryProvider,
        local_node: str,
        now: float,
    ) -> Moved:
        """Move the picture by ``events`` (every event since the last step) and ``samples``;
        what changed, to send as a delta."""
        whole = (
            self.read_at is None
            or len(events) >= WHOLE_AFTER_EVENTS
            or now - self.read_at >= self.full_every
            or any(e.kind in INVENTORY_EVENTS for e in events)
        )
        if whole:
            gpus_moved, allocs_moved = self._read_whole(ledger, provider, now)
        else:
            gpus_moved, allocs_moved = self._read_touched(ledger, events)
        if whole or self._outside_moved(events):
            use = ledger.outside()
            self._outside_nodes = frozenset(use)
            outside = outside_by_gpu(use)
            gpus_moved |= {
                u for u in set(outside) | set(self.outside) if outside.get(u) != self.outside.get(u)
            }
            self.outside = outside
        if samples is not self._samples:
            measured = set(samples) | set(self._samples)
            gpus_moved |= measured
            allocs_moved |= {self.holders[u].id for u in measured if u in self.holders}
            self._samples = samples
        return self._moved(gpus_moved, allocs_moved, provider, local_node)

    def _outside_moved(self, events: list[LedgerEvent]) -> bool:
        """Whether ``events`` may have moved which GPUs are kept out for others' pods."""
        for event in events:
            if event.kind == "outside_use":
                return True
            if event.kind == "released" and self._outside_nodes:
                gpus = event.detail.get("gpus")
                if isinstance(gpus, list) and any(
                    self._node_of.get(str(u)) in self._outside_nodes for u in gpus
                ):
                    return True
        return False

    def _read_whole(
        self, ledger: Ledger, provider: TelemetryProvider, now: float
    ) -> tuple[set[str], set[int]]:
        every = ledger.gpus(include_absent=True)
        holders = ledger.holders()
        parked = ledger.parked()
        wanted = {a.kernel_id for a in holders.values()} | {a.kernel_id for a in parked.values()}
        self.kernels = {k.kernel_id: k for k in ledger.kernels_by_id(wanted)}
        self.gpus = {g.uuid: g for g in every}
        self.present = tuple(g for g in every if g.present)
        self.simulated = provider.simulated or any(g.simulated for g in self.present)
        self._order = tuple(g.uuid for g in self.present)
        node_of = {g.uuid: g.node for g in self.present}
        self._departed = {u: n for u, n in self._node_of.items() if u not in node_of}
        self._node_of = node_of
        self._set_holders(holders)
        self.parked = parked
        self._parked_by = {a.id: a for a in parked.values()}
        self.read_at = now
        allocs = set(self._granted) | set(self._held_by) | set(self._parked_by)
        return set(self._entries) | set(self._node_of), allocs

    def _set_holders(self, holders: dict[str, Allocation]) -> None:
        self.holders = holders
        self._held_present = sum(1 for uuid in holders if uuid in self._node_of)
        held: dict[int, list[str]] = {}
        for uuid, alloc in holders.items():
            held.setdefault(alloc.id, []).append(uuid)
        self._held_by = {aid: tuple(uuids) for aid, uuids in held.items()}

    def _read_touched(
        self, ledger: Ledger, events: Iterable[LedgerEvent]
    ) -> tuple[set[str], set[int]]:
        touched: set[int] = set()
        renamed: set[str] = set()
        # a grant becomes parked (or resuming) only by these; it stops being parked by any
        # change of its own, which touches it
        parks = any(e.kind in _PARKS for e in events)
        for event in events:
            if event.allocation_id is not None:
                touched.add(event.allocation_id)
            elif event.kernel_id:
                renamed.add(event.kernel_id)  # registered, updated or forgotten: name and path
        if renamed:
            touched |= {a.id for a in self.holders.values() if a.kernel_id in renamed}
        if not touched:
            return set(), set()
        fresh = ledger.holders(touched)
        gpus_moved: set[str] = set(fresh)
        for aid in touched:
            for uuid in self._held_by.pop(aid, ()):
                gpus_moved.add(uuid)
                if self.holders.get(uuid) is not None and self.holders[uuid].id == aid:
                    del self.holders[uuid]
                    if uuid in self._node_of:
                        self._held_present -= 1
        for uuid, alloc in fresh.items():
            if uuid not in self.holders and uuid in self._node_of:
                self._held_present += 1
            self.holders[uuid] = alloc
            self._held_by[alloc.id] = (*self._held_by.get(alloc.id, ()), uuid)
        for aid in touched:
            was = self._parked_by.pop(aid, None)
            if was is not None:
                for uuid in was.gpus:
                    self.parked.pop(uuid, None)
                    gpus_moved.add(uuid)
        fresh_parked = ledger.parked(touched) if parks else {}
        for uuid, alloc in fresh_parked.items():
            self.parked[uuid] = alloc
            self._parked_by[alloc.id] = alloc
            gpus_moved.add(uuid)
        wanted = {a.kernel_id for a in fresh.values()}
        wanted |= {a.kernel_id for a in fresh_parked.values()}
        missing = {k for k in wanted if k not in self.kernels} | (wanted & renamed)
        for gone in renamed - wanted:
            self.kernels.pop(gone, None)
        if missing:
            self.kernels.update((k.kernel_id, k) for k in ledger.kernels_by_id(missing))
        return gpus_moved, touched

    def _moved(
        self,
        gpus_moved: set[str],
        allocs_moved: set[int],
        provider: TelemetryProvider,
        local_node: str,
    ) -> Moved:
        # copied before the first change only: a picture already taken keeps the old ones
        entries = _CopyOnWrite(self._entries)
        changed: dict[str, list[dict[str, Any]]] = {}
        gone: dict[str, list[str]] = {}
        for uuid in sorted(gpus_moved):
            node = self._node_of.get(uuid)
            if node is None:
                was = self._departed.pop(uuid, None)
                if entries.pop(uuid) and was is not None:
                    gone.setdefault(was, []).append(uuid)
                continue
            entry = gpu_json(
                self.gpus[uuid],
                self.holders.get(uuid),
                self.kernels,
                self._samples.get(uuid) if node == local_node else None,
                self.outside.get(uuid),
                self.parked.get(uuid),
            )
            if entries.get(uuid) != entry:
                entries.put(uuid, entry)
                changed.setdefault(node, []).append(entry)
        self._entries = entries.mapping
        self._departed = {}
        granted = _CopyOnWrite(self._granted)
        changed_allocs: list[dict[str, Any]] = []
        gone_allocs: list[int] = []
        for aid in sorted(allocs_moved):
            uuids = self._held_by.get(aid)
            shown = self._parked_by.get(aid) or (self.holders[uuids[0]] if uuids else None)
            if shown is None:
                if granted.pop(aid):
                    gone_allocs.append(aid)
                continue
            alloc = allocation_json(shown, self.gpus, self._samples, simulated=provider.simulated)
            if granted.get(aid) != alloc:
                granted.put(aid, alloc)
                changed_allocs.append(alloc)
        self._granted = granted.mapping
        return Moved(
            gpus=changed,
            gpus_gone=gone,
            allocations=changed_allocs,
            allocations_gone=gone_allocs,
        )

    def rewind(self, sent: Picture | None) -> None:
        """A build failed after it moved the picture: go back to the picture last sent (None:
        none was), and read the whole at the next step, so that its delta says everything that
        moved since what subscribers hold."""
        self.read_at = None
        self._entries = dict(sent.entries) if sent else {}
        self._granted = dict(sent.granted) if sent else {}
        self._order = sent.order if sent else ()
        self._node_of = dict(sent.node_of) if sent else {}
        self._departed = {}

    # -- reading ---------------------------------------------------------------------------------

    def free_count(self) -> int:
        # a parked grant's GPU nobody borrows is free only to the jobs that may borrow it
        lendable = sum(1 for u in self.parked if u in self._node_of and u not in self.holders)
        return len(self._order) - self._held_present - lendable

    def picture(self, cluster: Mapping[str, Any]) -> Picture:
        """The pieces as they are now (``cluster``: the cluster's fields but its nodes)."""
        return Picture(
            order=self._order,
            node_of=self._node_of,
            entries=self._entries,
            granted=self._granted,
            cluster=cluster,
        )
