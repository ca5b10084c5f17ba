"""Small builders shared by the core tests: GPUs, kernels and a ledger bundled with its clock."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from jupyter_dlinfra.core.books.ledger import Ledger
from jupyter_dlinfra.core.clock import ManualClock
from jupyter_dlinfra.core.models import Gpu, KernelRecord
from jupyter_dlinfra.core.store import Store

__all__ = ["A100", "DEADLINE_S", "H100", "Kit", "make_gpus", "until"]

A100 = "NVIDIA A100-SXM4-80GB"
H100 = "NVIDIA H100 80GB HBM3"


#: how long a test waits for what another thread or process does
DEADLINE_S = 10.0


def until(condition: Callable[[], bool], what: str) -> None:
    """Poll ``condition`` until it holds, failing after DEADLINE_S (what another process or
    thread does shows up in its own time)."""
    deadline = time.monotonic() + DEADLINE_S
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {DEADLINE_S:g} s: {what}")
        time.sleep(0.01)


def make_gpus(node: str, *groups: tuple[int, str]) -> list[Gpu]:
    """GPUs for ``node``: ``make_gpus("a", (4, A100), (2, H100))`` gives indices 0..5."""
    out: list[Gpu] = []
    for n, model in groups:
        for _ in range(n):
            i = len(out)
            out.append(
                Gpu(uuid=f"GPU-{node}-{i}", node=node, index=i, model=model, memory_bytes=80 << 30)
            )
    return out


@dataclass
class Kit:
    """A ledger on a real store with a manual clock, and shortcuts to populate it."""

    url: str
    clock: ManualClock
    store: Store
    ledger: Ledger
    _stores: list[Store] = field(default_factory=list)

    @classmethod
    def open(cls, url: str, clock: ManualClock | None = None) -> Kit:
        clock = clock or ManualClock()
        store = Store(url)
        kit = cls(url=url, clock=clock, store=store, ledger=Ledger(store, clock))
        kit._stores.append(store)
        return kit

    def node(self, node: str, *groups: tuple[int, str]) -> list[Gpu]:
        """Sync the node's inventory to these GPUs (default: four A100s)."""
        devices = make_gpus(node, *(groups or ((4, A100),)))
        self.ledger.sync_inventory(node, devices)
        return devices

    def kernel(
        self, kernel_id: str, *, node: str = "node-a", user: str = "alice", **extra: Any
    ) -> KernelRecord:
        record = KernelRecord(kernel_id=kernel_id, user=user, node=node, server_id="srv-1", **extra)
        return self.ledger.register_kernel(record, token_hash=f"hash-{kernel_id}")

    def reopen(self) -> Kit:
        """Close this store and open a new Store and Ledger on the same URL (same clock)."""
        self.store.dispose()
        store = Store(self.url)
        self._stores.append(store)
        self.store = store
        self.ledger = Ledger(store, self.clock)
        return self

    def close(self) -> None:
        for store in self._stores:
            store.dispose()
