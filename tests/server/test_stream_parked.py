"""The event stream's picture keeps a parked grant (which holds no GPUs while parked), marks
its GPUs as lent or free to lend, counts them out of the free ones, and reads parked grants
again only when an event may have parked one."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from jupyter_dlinfra.core.books.ledger import Ledger
from jupyter_dlinfra.core.books.parking import ParkBook
from jupyter_dlinfra.server.stream_state import StreamState
from jupyter_dlinfra.telemetry.simulated import SimulatedProvider
from tests.core.kit import Kit


class Counting:
    """The ledger, counting its ``parked()`` reads."""

    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger
        self.parked_reads = 0

    def parked(self, *args: Any) -> Any:
        self.parked_reads += 1
        return self.ledger.parked(*args)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.ledger, name)


def test_a_parked_grant_stays_in_the_picture_with_its_gpus_lent_or_free_to_lend(
    tmp_path: Path,
) -> None:
    kit = Kit.open(f"sqlite:///{tmp_path}/ledger.db")
    try:
        kit.node("node-a", (2, "NVIDIA A100-SXM4-80GB"))
        provider = SimulatedProvider(count=0, node="node-a")
        kit.kernel("k-ann", user="ann")
        mine = kit.ledger.request(kernel_id="k-ann", count=2)
        ledger = Counting(kit.ledger)
        state = StreamState()
        since = 0

        def step() -> tuple[dict[str, Any], dict[int, Any], list[int]]:
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
            gpus = {e["uuid"]: e for entries in moved.gpus.values() for e in entries}
            return gpus, {a["id"]: a for a in moved.allocations}, moved.allocations_gone

        step()
        assert state.free_count() == 0
        reads = ledger.parked_reads
        book = ParkBook(kit.ledger)
        book.begin(mine.id, reason="parked: idle")
        step()
        assert ledger.parked_reads == reads  # "parking" holds its GPUs: nothing to read
        book.parked(mine.id, gpu_bytes=1 << 30, seconds=1.0)
        gpus, allocs, gone = step()
        assert allocs[mine.id]["park"]["state"] == "parked" and mine.id not in gone
        assert {u: e["parked_for"]["allocation_id"] for u, e in gpus.items()} == {
            u: mine.id for u in mine.gpus
        }
        assert all(e["holder"] is None for e in gpus.values())
        assert state.free_count() == 0  # free only to the jobs that may borrow them
        # a job borrows one: it holds it, on loan; the other stays free to lend
        kit.kernel("job-1", user="cat")
        loan = kit.ledger.request(kernel_id="job-1", count=1, kind="job", priority_class="batch")
        gpus, allocs, _ = step()
        (lent,) = loan.gpus
        assert gpus[lent]["holder"]["allocation_id"] == loan.id
        assert gpus[lent]["parked_for"]["allocation_id"] == mine.id
        assert allocs[loan.id]["on_loan"] is True
        # resumed: the grant holds its GPUs again, nothing is parked
        book.resume(mine.id)
        kit.ledger.release(loan.id, reason="job preempted")
        book.resumed(mine.id, seconds=1.0)
        gpus, allocs, gone = step()
        assert allocs[mine.id]["park"] is None and loan.id in gone
        assert all(e["parked_for"] is None for e in gpus.values())
        assert {e["holder"]["allocation_id"] for e in gpus.values()} == {mine.id}
        assert state.parked == {}
    finally:
        kit.close()
