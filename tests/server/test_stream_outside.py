"""The event stream's picture shows the GPUs kept for others' pods, and reads them again only
when the events say they may have moved."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from jupyter_dlinfra.core.books.ledger import Ledger
from jupyter_dlinfra.server.stream_state import StreamState
from jupyter_dlinfra.telemetry.simulated import SimulatedProvider
from tests.core.kit import Kit


class Counting:
    """The ledger, counting its ``outside()`` reads."""

    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger
        self.outside_reads = 0

    def outside(self) -> Any:
        self.outside_reads += 1
        return self.ledger.outside()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.ledger, name)


def test_kept_gpus_follow_outside_use_and_releases_on_its_node(tmp_path: Path) -> None:
    kit = Kit.open(f"sqlite:///{tmp_path}/ledger.db")
    try:
        kit.node("node-a")
        kit.node("node-b")
        provider = SimulatedProvider(count=0, node="node-a")
        kit.kernel("k-a", node="node-a")
        kit.kernel("k-b", node="node-b")
        ours = kit.ledger.request(kernel_id="k-a", count=2)
        theirs = kit.ledger.request(kernel_id="k-b", count=1)
        ledger = Counting(kit.ledger)
        state = StreamState()
        since = 0

        def step() -> dict[str, Any]:
            """One step; the GPU entries it sends, by UUID."""
            nonlocal since
            events = kit.ledger.events(since)
            since = events[-1].seq if events else since
            moved = state.step(
                ledger,  # type: ignore[arg-type]
                events=events,
                samples={},
                provider=provider,
                local_node="node-a",
                now=kit.clock.now(),
            )
            return {e["uuid"]: e for entries in moved.gpus.values() for e in entries}

        step()  # the first read is whole
        assert state.outside == {} and ledger.outside_reads == 1
        # someone's pod wants 3 GPUs of node-a: the 2 free ones are kept out at once
        kit.ledger.sync_outside({"node-a": (3, ["team-x/train-0"])})
        moved = step()
        kept = set(state.outside)
        assert len(kept) == 2 and not kept & set(ours.gpus)
        assert set(state.outside.values()) == {("team-x/train-0",)}
        assert {u for u, e in moved.items() if e["outside_ledger"]} == kept
        # a release on another node moves nothing kept out: not read again
        reads = ledger.outside_reads
        kit.ledger.release(theirs.id, reason="done")
        step()
        assert ledger.outside_reads == reads
        # ours ends on node-a: its GPUs are kept out too, without an event of their own
        kit.ledger.release(ours.id, reason="done")
        moved = step()
        assert len(state.outside) == 3
        (freed,) = set(ours.gpus) & set(state.outside)
        assert moved[freed]["outside_ledger"] is not None and moved[freed]["holder"] is None
        # the pod ends: nothing is kept out
        kit.ledger.sync_outside({})
        moved = step()
        assert state.outside == {}
        assert all(moved[u]["outside_ledger"] is None for u in kept | {freed})
    finally:
        kit.close()
