"""The event stream's deltas, in a real jupyter server whose ledger knows several nodes: each
delta applied to the snapshot before makes the whole snapshot after, which a stream that reads
everything from scratch agrees with; and a change costs what it touched, not the cluster."""

from __future__ import annotations

import json
import random
import subprocess
from pathlib import Path
from typing import Any

import pytest
from server_kit import register

from jupyter_dlinfra.core.books.ledger import Ledger
from jupyter_dlinfra.core.errors import LedgerError
from jupyter_dlinfra.core.models import AllocationState, Gpu, KernelRecord
from jupyter_dlinfra.server.events import Broadcaster, Snapshot
from jupyter_dlinfra.testing.event_stream import apply_delta

GIB = 1 << 30
#: what the random sequence does, each as often as it is listed
STEPS = ("kernel", "kernel", "request", "request", "release", "sample", "rack", "rename", "forget")
LABEXTENSION = Path(__file__).resolve().parents[2] / "labextension"


@pytest.fixture
def dlinfra_config() -> dict[str, Any]:
    # no job loop: nothing but the test changes the ledger
    return {"simulated_gpus": 4, "job_interval": 0}


def _rack(node: str, count: int = 8, *, model: str = "NVIDIA A100") -> list[Gpu]:
    return [
        Gpu(uuid=f"GPU-{node}-{i}", node=node, index=i, model=model, memory_bytes=80 * GIB)
        for i in range(count)
    ]


def _body(frame: bytes) -> dict[str, Any]:
    body: dict[str, Any] = json.loads(frame.decode().split("data: ", 1)[1])
    return body


async def _next(broadcaster: Broadcaster) -> Snapshot:
    broadcaster.poke()
    return await broadcaster.refresh()


def _without_stamp(body: dict[str, Any]) -> dict[str, Any]:
    """What two builds of one state share: not their number and time, nor the estimates that
    count from the time of the build."""
    kept = {k: v for k, v in body.items() if k not in ("seq", "at")}
    kept["queue"] = [{**a, "estimated_start": None} for a in body["queue"]]
    return kept


async def test_every_delta_makes_the_next_whole_snapshot(dlinfra_app: Any) -> None:
    service = dlinfra_app.service
    ledger: Ledger = service.ledger
    broadcaster: Broadcaster = service.events
    for rack in ("rack-a", "rack-b", "rack-c"):
        ledger.sync_inventory(rack, _rack(rack, 4))
    rng = random.Random(15)
    kernels: list[str] = []
    held = await broadcaster.refresh()
    whole = _body(held.frame)
    kinds: set[str] = set()
    steps: list[tuple[dict[str, Any], dict[str, Any]]] = []
    wholes: list[dict[str, Any]] = []
    for step in range(80):
        kind = rng.choice(STEPS)
        kernel = rng.choice(kernels) if kernels else None
        active = ledger.allocations() if kernels else []
        try:
            if kind == "kernel" or kernel is None:
                kernel = f"k{step}"
                node = rng.choice(["rack-a", "rack-b", service.settings.node])
                ledger.register_kernel(
                    KernelRecord(
                        kernel_id=kernel, user="ana", node=node, server_id="s", path=kernel
                    )
                )
                kernels.append(kernel)
            elif kind == "request":
                ledger.request(kernel_id=kernel, count=rng.choice([1, 2, 4]))
            elif kind == "release" and active:
                ledger.release(rng.choice(active).id, reason="released by the user")
            elif kind == "sample":
                await service.sample()
            elif kind == "rack":
                # a GPU of rack-c goes and comes back: the inventory moves
                ledger.sync_inventory("rack-c", _rack("rack-c", rng.choice([3, 4])))
            elif kind == "rename":
                ledger.update_kernel(kernel, path=f"renamed-{step}.ipynb")
            elif kind == "forget":
                ledger.forget_kernel(kernel, reason="kernel no longer exists")
                kernels.remove(kernel)
        except LedgerError:
            continue  # a request that cannot be granted: nothing moved
        snapshot = await _next(broadcaster)
        if snapshot.seq == held.seq:
            continue
        assert snapshot.delta is not None
        delta = _body(snapshot.delta)
        assert delta["base"] == held.seq and delta["seq"] == snapshot.seq
        moved = apply_delta(whole, delta)
        steps.append((whole, delta))
        whole = _body(snapshot.frame)
        assert moved == whole, f"step {step} ({kind})"
        wholes.append(whole)
        held = snapshot
        kinds.add(kind)
        if "queue_order" in delta:
            kinds.add("queue moved")
        # a stream that reads everything afresh sees what the deltas made
        fresh = Broadcaster(broadcaster._source)
        afresh = _body((await fresh.refresh()).frame)
        assert _without_stamp(afresh) == _without_stamp(whole)
    assert {"request", "release", "sample", "rack", "rename", "forget", "queue moved"} <= kinds
    assert any(a.state is AllocationState.GRANTED for a in ledger.allocations())
    # the front end's applyDelta (labextension/src/delta.ts, as built) makes the same snapshots
    assert _apply_in_node(steps) == wholes


def _apply_in_node(steps: list[tuple[dict[str, Any], dict[str, Any]]]) -> list[Any]:
    built = LABEXTENSION / "lib" / "delta.js"
    assert built.exists(), f"{built} is missing: build the extension (scripts/venv.sh test)"
    program = (
        f"import {{ applyDelta }} from {json.dumps(built.as_uri())};\n"
        "let text = '';\n"
        "process.stdin.on('data', chunk => (text += chunk));\n"
        "process.stdin.on('end', () => {\n"
        "  const out = JSON.parse(text).map(([held, delta]) => applyDelta(held, delta));\n"
        "  process.stdout.write(JSON.stringify(out));\n"
        "});\n"
    )
    done = subprocess.run(
        ["node", "--input-type=module", "-e", program],
        input=json.dumps(steps),
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    out: list[Any] = json.loads(done.stdout)
    return out


async def test_a_grant_costs_what_it_touched_not_the_cluster(
    dlinfra_app: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    service = dlinfra_app.service
    ledger: Ledger = service.ledger
    broadcaster: Broadcaster = service.events
    register(dlinfra_app, "k1")
    sizes: list[tuple[int, int]] = []
    whole_reads: list[object] = []
    holders = ledger.holders

    def counted(allocation_ids: Any = None) -> Any:
        if allocation_ids is None:
            whole_reads.append(allocation_ids)
        return holders(allocation_ids)

    for racks in (1, 64):
        for n in range(racks):
            ledger.sync_inventory(f"rack-{n:03}", _rack(f"rack-{n:03}"))
        await _next(broadcaster)  # the inventory moved: read whole
        monkeypatch.setattr(ledger, "holders", counted)
        whole_reads.clear()
        alloc = ledger.request(kernel_id="k1", count=2)
        granted = await _next(broadcaster)
        ledger.release(alloc.id, reason="released by the user")
        released = await _next(broadcaster)
        assert whole_reads == [], "a grant and a release read their holdings only"
        assert granted.delta is not None and released.delta is not None
        sizes.append((len(granted.delta), len(granted.frame)))
        monkeypatch.setattr(ledger, "holders", holders)
    (small_delta, small_whole), (big_delta, big_whole) = sizes
    assert big_whole > 20 * small_whole, sizes
    # the same change, at 8 and at 520 GPUs: the same bytes but for digits of ids and times
    assert abs(big_delta - small_delta) < 64, sizes


async def test_a_subscriber_that_fell_behind_is_resynced_with_a_whole_snapshot(
    dlinfra_app: Any,
) -> None:
    broadcaster: Broadcaster = dlinfra_app.service.events
    ledger: Ledger = dlinfra_app.service.ledger
    register(dlinfra_app, "k1")
    sub = await broadcaster.subscribe()
    try:
        for _ in range(broadcaster.queue_size):  # it reads nothing meanwhile: its queue fills
            alloc = ledger.request(kernel_id="k1", count=1)
            await _next(broadcaster)
            ledger.release(alloc.id, reason="released by the user")
            await _next(broadcaster)
        assert sub.resync and sub.overflows >= 1
        # what the stream's handler does: a whole snapshot, then the deltas after it
        held: dict[str, Any] | None = None
        kinds = []
        while sub.resync or len(sub):
            if sub.resync:
                await broadcaster.resync(sub)
            for frame in await sub.next(0.01) or []:
                kind = frame.split(b"\n", 1)[0].decode()
                kinds.append(kind)
                if kind == "event: snapshot":
                    held = _body(frame)
                elif kind == "event: delta":
                    assert held is not None
                    held = apply_delta(held, _body(frame)) or held
        # the snapshot it began with went with the deltas it could not keep
        assert kinds[0] == "event: snapshot" and kinds.count("event: snapshot") == 1, kinds
        latest = broadcaster.latest
        assert latest is not None and held == _body(latest.frame)
    finally:
        broadcaster.unsubscribe(sub)


async def test_a_build_that_fails_leaves_nothing_out_of_the_next_delta(
    dlinfra_app: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    service = dlinfra_app.service
    ledger: Ledger = service.ledger
    broadcaster: Broadcaster = service.events
    register(dlinfra_app, "k1")
    held = await _next(broadcaster)
    whole = _body(held.frame)
    alloc = ledger.request(kernel_id="k1", count=2)
    real = ledger.queue_page

    def failing(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("the database went away mid-build")

    # the build reads the grant's holdings, then fails: nobody hears of the grant
    monkeypatch.setattr(ledger, "queue_page", failing)
    with pytest.raises(RuntimeError):
        await _next(broadcaster)
    monkeypatch.setattr(ledger, "queue_page", real)
    snapshot = await _next(broadcaster)
    assert snapshot.delta is not None and _body(snapshot.delta)["base"] == held.seq
    moved = apply_delta(whole, _body(snapshot.delta))
    assert moved == _body(snapshot.frame)
    assert [a["id"] for a in moved["allocations"]] == [alloc.id]
