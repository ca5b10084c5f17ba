"""An answer about allocations costs what it shows, in a real jupyter server (pytest-jupyter)
whose ledger knows a cluster of many nodes: it reads the GPUs of the allocations it describes,
never the whole cluster's; the cluster view and the event stream's snapshot read the kernels
they name, not those waiting; a reclaim pass reads its own kernels' grants; waiting polls read
their request again only when the ledger moved."""

from __future__ import annotations

import asyncio
import inspect
import threading
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest
from server_kit import register

from jupyter_dlinfra.core.books.ledger import Ledger
from jupyter_dlinfra.core.models import Allocation, Gpu, KernelRecord
from jupyter_dlinfra.server.allocation_waits import allocation_waits

NODES = 50
PER_NODE = 8
#: the node, besides this server's, where a kernel holds GPUs
RACK = "rack-7"


@pytest.fixture
def dlinfra_config() -> dict[str, Any]:
    # no job loop: nothing but the test changes the ledger
    return {"simulated_gpus": 4, "job_interval": 0}


class LedgerSpy:
    """Counts, on one ledger, the calls of each public method and the GPU rows they hand out.

    It wraps the methods of the instance and passes every call through unchanged."""

    def __init__(self, ledger: Ledger, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls: Counter[str] = Counter()
        self.gpu_rows = 0
        self.kernel_rows = 0
        self.allocation_rows = 0
        self._lock = threading.Lock()  # the pool's threads call the ledger
        for name, _ in inspect.getmembers(Ledger, inspect.isfunction):
            if not name.startswith("_"):
                monkeypatch.setattr(ledger, name, self._counting(name, getattr(ledger, name)))

    def _counting(self, name: str, method: Callable[..., Any]) -> Callable[..., Any]:
        def counted(*args: Any, **kwargs: Any) -> Any:
            result = method(*args, **kwargs)
            listed = result if isinstance(result, (list, tuple)) else ()
            with self._lock:
                self.calls[name] += 1
                self.gpu_rows += sum(isinstance(item, Gpu) for item in listed)
                self.kernel_rows += sum(isinstance(item, KernelRecord) for item in listed)
                self.allocation_rows += sum(isinstance(item, Allocation) for item in listed)
            return result

        return counted


def _cluster(ledger: Ledger) -> None:
    """NODES nodes of PER_NODE GPUs each, besides this server's, as their telemetry reports."""
    for n in range(NODES):
        node = f"rack-{n}"
        ledger.sync_inventory(
            node,
            [
                Gpu(
                    uuid=f"GPU-{node}-{i}",
                    node=node,
                    index=i,
                    model="A100",
                    memory_bytes=80 << 30,
                    simulated=True,
                )
                for i in range(PER_NODE)
            ],
        )


async def test_answers_read_only_the_gpus_they_show(
    api: Any, dlinfra_app: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    ledger: Ledger = dlinfra_app.service.ledger
    _cluster(ledger)
    assert len(ledger.gpus()) == NODES * PER_NODE + 4
    register(dlinfra_app, "holder")
    ledger.request(kernel_id="holder", count=4)  # every GPU of this server's node
    ledger.register_kernel(
        KernelRecord(kernel_id="far", user="bob", node=RACK, server_id="elsewhere")
    )
    far = ledger.request(kernel_id="far", count=2)
    register(dlinfra_app, "waiter")
    spy = LedgerSpy(ledger, monkeypatch)

    async def answer(method: str, path: str, body: Any = None) -> tuple[Any, int]:
        """The answer, and the GPU rows read for it, held to the GPUs it shows."""
        before = spy.gpu_rows
        status, got = await api(method, path, body)
        assert status in (200, 201), got
        rows = spy.gpu_rows - before
        views = got.get("allocations", got.get("queue", [got]))
        assert rows <= sum(len(v["gpus"]) for v in views), (method, path, rows)
        return got, rows

    queued, rows = await answer("POST", "allocations", {"kernel_id": "waiter", "count": 1})
    assert queued["state"] == "queued" and queued["gpus"] == [] and rows == 0
    for path in (
        f"allocations/{queued['id']}",
        f"allocations/{queued['id']}?wait=0.01",
        "queue",
        "queue?limit=1000",
        f"queue?node={RACK}",
    ):
        _, rows = await answer("GET", path)
        assert rows == 0, path

    # a granted allocation on another node: its own GPUs, described in full
    held, rows = await answer("GET", f"allocations/{far.id}")
    assert rows == 2
    assert [(g["uuid"], g["index"], g["model"]) for g in held["gpus"]] == [
        (f"GPU-{RACK}-0", 0, "A100"),
        (f"GPU-{RACK}-1", 1, "A100"),
    ]
    # every allocation: 4 + 2 GPUs held, one request waiting
    for path in ("allocations", "allocations?state=granted", "allocations?state=all"):
        _, rows = await answer("GET", path)
        assert rows == 6, path
    assert spy.calls["gpus"] == 0


async def test_the_cluster_and_the_snapshot_read_the_holders_kernels_not_the_waiting(
    api: Any, dlinfra_app: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    ledger: Ledger = dlinfra_app.service.ledger
    register(dlinfra_app, "holder")
    ledger.request(kernel_id="holder", count=4)
    for i in range(30):
        register(dlinfra_app, f"w{i}")
        ledger.request(kernel_id=f"w{i}", count=1)
    events = dlinfra_app.service.events
    await events.refresh()  # the events so far are read (and their kernels named) once
    spy = LedgerSpy(ledger, monkeypatch)
    register(dlinfra_app, "late")
    ledger.request(kernel_id="late", count=1)  # one new event, of a waiting kernel
    events.poke()
    snapshot = await events.refresh()
    assert snapshot.queue_length == 31
    # the holder's kernel and the new event's: not the 31 waiting ones
    assert spy.calls["kernels"] == 0 and spy.kernel_rows <= 2, spy.kernel_rows
    status, cluster = await api("GET", "cluster")
    assert status == 200
    names = {g["holder"]["kernel_id"] for n in cluster["nodes"] for g in n["gpus"] if g["holder"]}
    assert names == {"holder"}
    assert spy.calls["kernels"] == 0 and spy.kernel_rows <= 3, spy.kernel_rows


async def test_a_reclaim_pass_reads_the_grants_of_this_servers_kernels_only(
    dlinfra_app: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    ledger: Ledger = dlinfra_app.service.ledger
    _cluster(ledger)
    register(dlinfra_app, "mine")
    ledger.request(kernel_id="mine", count=1)
    for n in range(20):  # other servers' kernels hold GPUs all over the cluster
        kernel_id = f"theirs-{n}"
        ledger.register_kernel(
            KernelRecord(kernel_id=kernel_id, user="bob", node=f"rack-{n}", server_id="other")
        )
        ledger.request(kernel_id=kernel_id, count=2)
    spy = LedgerSpy(ledger, monkeypatch)
    await dlinfra_app.service.reclaimer.step()
    assert spy.calls["allocations"] == 1 and spy.allocation_rows <= 1, spy.allocation_rows
    assert spy.calls["kernels"] == 1  # this server's kernels, read once a pass


async def test_a_telemetry_sample_reads_the_holdings_of_its_own_node_only(
    dlinfra_app: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    service = dlinfra_app.service
    ledger: Ledger = service.ledger
    _cluster(ledger)
    register(dlinfra_app, "mine")
    ledger.request(kernel_id="mine", count=1)
    for n in range(20):
        kernel_id = f"theirs-{n}"
        ledger.register_kernel(
            KernelRecord(kernel_id=kernel_id, user="bob", node=f"rack-{n}", server_id="other")
        )
        ledger.request(kernel_id=kernel_id, count=2)
    spy = LedgerSpy(ledger, monkeypatch)
    told: list[set[str]] = []
    monkeypatch.setattr(service.provider, "note_held", lambda uuids: told.append(set(uuids)))
    await service.sample()
    assert spy.calls["holders"] == 0 and spy.calls["held_on"] == 1, spy.calls
    # the simulator hears of the GPU held on its node, not of those held elsewhere
    assert told == [{a.gpus[0] for a in ledger.allocations(kernel_id="mine")}]


#: fewer than the test client's connections (10), so that every poll reaches the server
WAITERS = 8


async def test_waiting_polls_read_again_only_when_the_ledger_moved(
    api: Any, dlinfra_app: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    service = dlinfra_app.service
    ledger: Ledger = service.ledger
    register(dlinfra_app, "holder")
    holder = ledger.request(kernel_id="holder", count=4)
    ids = []
    for i in range(WAITERS):
        register(dlinfra_app, f"w{i}")
        ids.append(ledger.request(kernel_id=f"w{i}", count=1).id)
    spy = LedgerSpy(ledger, monkeypatch)
    waits = allocation_waits(service)
    polls = [asyncio.ensure_future(api("GET", f"allocations/{aid}?wait=30")) for aid in ids]

    async def until(test: Callable[[], bool], what: str) -> None:
        deadline = asyncio.get_running_loop().time() + 15
        while not test():
            assert asyncio.get_running_loop().time() < deadline, f"timed out: {what}"
            await asyncio.sleep(0.01)

    await until(lambda: waits.waiting == WAITERS and waits.asleep, "every poll waits")
    assert spy.calls["allocation"] == WAITERS  # each poll's first read

    # writes that change nothing (as the loops make all the time) wake the watcher, not the
    # polls: one look at the version, no request read again
    version = ledger.version()
    for _ in range(3):
        passes = waits.passes
        await service.sync_inventory()
        await until(lambda p=passes: waits.passes > p and waits.asleep, "a pass after the wake")
    assert ledger.version() == version
    assert spy.calls["allocation"] == WAITERS

    # a change: each waiting request is read again once (not once per wake), all of them in
    # one read, and the poll whose request it ended answers
    reads, together, rows = (
        spy.calls["allocation"],
        spy.calls["allocations_by_id"],
        spy.allocation_rows,
    )
    status, _ = await api("DELETE", f"allocations/{ids[-1]}")  # itself reads it once
    assert status == 204
    status, ended = await asyncio.wait_for(polls[-1], timeout=15)
    assert status == 200 and ended["state"] == "cancelled"
    await until(lambda: waits.asleep, "the pass after the change")
    assert spy.calls["allocation"] - reads <= 1
    assert spy.calls["allocations_by_id"] - together == 1
    assert spy.allocation_rows - rows == WAITERS

    # the GPUs freed: the first four are granted and the others move up, so every poll answers
    await api("DELETE", f"allocations/{holder.id}")
    answers = await asyncio.wait_for(asyncio.gather(*polls[:-1]), timeout=15)
    assert [body["state"] for _, body in answers] == ["granted"] * 4 + ["queued"] * (WAITERS - 5)
    assert [body["position"] for _, body in answers[4:]] == list(range(1, WAITERS - 4))
    assert waits.waiting == 0
