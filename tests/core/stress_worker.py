"""One worker process of the concurrency stress test (its own module: cheap to import on spawn).

Each worker registers its own kernels, then asks for 1 to 3 GPUs again and again, holds a grant
for a few milliseconds or not at all, releases, sometimes cancels while queued or ends the whole
kernel, and leaves some requests outstanding. It reports every request it made and how it ended
the ones it ended, so that the parent can account for every row in the database.
"""

from __future__ import annotations

import random
import time
import traceback
from typing import Any

from jupyter_dlinfra.core.books.ledger import Ledger
from jupyter_dlinfra.core.clock import SystemClock
from jupyter_dlinfra.core.models import AllocationState, KernelRecord
from jupyter_dlinfra.core.store import Store

__all__ = ["KERNELS_PER_WORKER", "NODE", "worker_main"]

NODE = "node-stress"
KERNELS_PER_WORKER = 3


def _run(url: str, worker: int, n_requests: int, seed: int, barrier: Any) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    store = Store(url)
    ledger = Ledger(store, SystemClock())
    try:
        kernels = [f"w{worker}-k{j}" for j in range(KERNELS_PER_WORKER)]
        for kid in kernels:
            ledger.register_kernel(
                KernelRecord(
                    kernel_id=kid, user=f"user{worker}", node=NODE, server_id=f"s{worker}"
                ),
                token_hash=f"token-{kid}",
            )
        barrier.wait(timeout=120)

        records: dict[int, dict[str, Any]] = {}
        pending: dict[str, int] = {}

        def end(kid: str, aid: int) -> None:
            reason = f"w{worker}-end-{aid}"
            if rng.random() < 0.2:
                ended = ledger.release_kernel(kid, reason=reason)
                assert [a.id for a in ended] == [aid], (aid, ended)
                final = ended[0]
            else:
                final = ledger.release(aid, reason=reason)
            assert final.state in (AllocationState.RELEASED, AllocationState.CANCELLED), final
            assert final.end_reason == reason, final
            records[aid].update(ended_by_me=True, end_state=final.state.value, reason=reason)

        for i in range(n_requests):
            kid = kernels[i % len(kernels)]
            if kid in pending:
                aid = pending.pop(kid)
                seen = ledger.allocation(aid)
                assert seen.state.active, seen
                records[aid]["later_state"] = seen.state.value
                end(kid, aid)
            count = rng.randint(1, 3)
            alloc = ledger.request(kernel_id=kid, count=count)
            assert alloc.kernel_id == kid
            assert alloc.count == count
            assert alloc.id not in records
            records[alloc.id] = {
                "id": alloc.id,
                "kernel_id": kid,
                "count": count,
                "first_state": alloc.state.value,
                "gpus": list(alloc.gpus),
                "ended_by_me": False,
            }
            if alloc.state is AllocationState.GRANTED:
                assert len(alloc.gpus) == count, alloc
                if rng.random() < 0.5:
                    time.sleep(rng.uniform(0, 0.003))
                if rng.random() < 0.7:
                    end(kid, alloc.id)
                else:
                    pending[kid] = alloc.id
            else:
                assert alloc.state is AllocationState.QUEUED, alloc
                assert alloc.position is not None and alloc.position >= 1, alloc
                if rng.random() < 0.4:
                    end(kid, alloc.id)
                else:
                    pending[kid] = alloc.id
        return list(records.values())
    finally:
        store.dispose()


def worker_main(
    url: str, worker: int, n_requests: int, seed: int, barrier: Any, results: Any
) -> None:
    """Process entry point: puts ``(worker, "ok", records)`` or ``(worker, "error", text)``."""
    try:
        records = _run(url, worker, n_requests, seed, barrier)
    except BaseException:
        results.put((worker, "error", traceback.format_exc()))
        barrier.abort()  # do not leave the others waiting for us
    else:
        results.put((worker, "ok", records))
