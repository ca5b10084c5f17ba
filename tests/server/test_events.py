"""``GET /dlinfra/api/events``: the real stream of a real server, read as a browser would.

Streams are opened with tornado's HTTP client and parsed as they arrive; every wait is a deadline
on something the stream delivers, never a sleep. The keepalive is shortened so that a stream the
test closes notices it within a fraction of a second (tornado's client only aborts a stream when
its data callback raises, which needs data).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, cast

import pytest
import yaml
from jsonschema import Draft202012Validator, FormatChecker
from prometheus_client.parser import text_string_to_metric_families
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012
from server_kit import register
from tornado.httpclient import HTTPClientError
from tornado.httputil import HTTPHeaders

from jupyter_dlinfra.core.models import KernelRecord, LedgerEvent
from jupyter_dlinfra.server.events import (
    FANOUT_SLICE,
    KEEPALIVE,
    QUEUE_PAGE,
    Broadcaster,
    Subscription,
)
from jupyter_dlinfra.server.notices import notice_from_event
from jupyter_dlinfra.server.token_bucket import TokenBucket
from jupyter_dlinfra.testing.event_stream import apply_delta

DOC_PATH = Path(__file__).resolve().parents[2] / "api" / "openapi.yaml"
DOC_URI = "urn:dlinfra:openapi"
KEEPALIVE_S = 0.25


@pytest.fixture
def dlinfra_config() -> dict[str, Any]:
    return {"simulated_gpus": 4, "events_keepalive": KEEPALIVE_S}


@pytest.fixture(scope="module")
def schemas() -> dict[str, Draft202012Validator]:
    doc = yaml.safe_load(DOC_PATH.read_text(encoding="utf-8"))
    registry: Registry = Registry().with_resource(
        DOC_URI, Resource.from_contents(doc, default_specification=DRAFT202012)
    )
    return {
        name: Draft202012Validator(
            {"$ref": f"{DOC_URI}#/components/schemas/{name}"},
            registry=registry,
            format_checker=FormatChecker(),
        )
        for name in ("Snapshot", "Notice")
    }


class EventStream:
    """One subscriber, as a browser's EventSource is: HTTP/1.1 on its own connection, chunked
    transfer decoded, events parsed as they arrive, and a cursor to wait on them.

    Written on asyncio streams rather than tornado's client, which can only drop a stream by
    raising from its data callback (and logs that as an error).
    """

    def __init__(self, port: int, path: str, headers: dict[str, str]) -> None:
        self.port = port
        self.path = path
        self.request_headers = headers
        self.frames: list[tuple[str, Any]] = []
        #: the snapshot as a client holds it: the last whole one, moved by the deltas since
        self.state: dict[str, Any] | None = None
        self.status: int | None = None
        self.headers = HTTPHeaders()
        self.cursor = 0
        self.ended = False
        self._buffer = b""
        self._arrived = asyncio.Event()
        self._writer: asyncio.StreamWriter | None = None
        self._pump: asyncio.Task[None] | None = None

    async def open(self) -> EventStream:
        reader, self._writer = await asyncio.open_connection("127.0.0.1", self.port)
        lines = [f"GET {self.path} HTTP/1.1", f"Host: 127.0.0.1:{self.port}"]
        lines += [
            "Accept: text/event-stream",
            *(f"{k}: {v}" for k, v in self.request_headers.items()),
        ]
        self._writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
        head = (await reader.readuntil(b"\r\n\r\n")).decode()
        status_line, _, rest = head.partition("\r\n")
        self.status = int(status_line.split()[1])
        self.headers = HTTPHeaders.parse(rest)
        self._pump = asyncio.ensure_future(self._read(reader))
        return self

    async def _read(self, reader: asyncio.StreamReader) -> None:
        chunked = self.headers.get("Transfer-Encoding") == "chunked"
        try:
            while True:
                if chunked:
                    line = await reader.readline()
                    if not line.strip():
                        break  # closed without the last chunk: the client hung up
                    size = int(line.split(b";")[0], 16)
                    if size == 0:
                        break
                    data = await reader.readexactly(size)
                    await reader.readexactly(2)
                else:
                    data = await reader.read(65536)
                    if not data:
                        break
                self._feed(data)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            self.ended = True
            self._arrived.set()

    def _feed(self, data: bytes) -> None:
        self._buffer += data
        while b"\n\n" in self._buffer:
            raw, self._buffer = self._buffer.split(b"\n\n", 1)
            kind, frame = _parse(raw.decode())
            self.frames.append((kind, frame))
            if kind == "snapshot":
                self.state = frame
            elif kind == "delta":
                # a delta is followed by the snapshot it makes, as a client holds it (a gap
                # raises StreamGap: the stream broke its own rules)
                assert self.state is not None, "a delta came before the first snapshot"
                moved = apply_delta(self.state, frame)
                assert moved is not None, f"delta {frame['seq']} was covered already"
                self.state = moved
                self.frames.append(("snapshot", moved))
        self._arrived.set()

    async def next(
        self, kind: str, predicate: Callable[[Any], bool] = lambda _: True, timeout: float = 15
    ) -> Any:
        """The next frame of ``kind`` (from the cursor on) that satisfies ``predicate``."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            while self.cursor < len(self.frames):
                got_kind, data = self.frames[self.cursor]
                self.cursor += 1
                if got_kind == kind and predicate(data):
                    return data
            assert not self.ended, f"the stream ended before a {kind} came"
            left = deadline - loop.time()
            assert left > 0, f"no {kind} within {timeout} s; got {self.frames[-5:]}"
            self._arrived.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._arrived.wait(), left)

    async def until_ended(self, timeout: float = 15) -> None:
        assert self._pump is not None
        await asyncio.wait_for(asyncio.shield(self._pump), timeout)

    def seen(self, kind: str) -> list[Any]:
        return [data for got, data in self.frames[: self.cursor] if got == kind]

    async def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            with contextlib.suppress(ConnectionError):
                await self._writer.wait_closed()
        if self._pump is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._pump


def _parse(raw: str) -> tuple[str, Any]:
    if raw.startswith(":"):
        return "comment", raw[1:].strip()
    fields = dict(line.split(": ", 1) for line in raw.split("\n"))
    if "retry" in fields:
        return "retry", int(fields["retry"])
    return fields["event"], json.loads(fields["data"])


@pytest.fixture
def open_stream(
    jp_http_port: int,
    jp_base_url: str,
    jp_auth_header: dict[str, str],
    jp_asyncio_loop: asyncio.AbstractEventLoop,
    jp_fetch: Any,
) -> Iterator[Callable[..., Any]]:
    """``await open_stream()``: a stream whose first snapshot has arrived; closed at teardown."""
    path = f"{jp_base_url}dlinfra/api/events"
    opened: list[EventStream] = []

    async def connect(headers: dict[str, str] | None = None) -> EventStream:
        stream = EventStream(jp_http_port, path, jp_auth_header if headers is None else headers)
        opened.append(stream)
        await stream.open()
        await stream.next("snapshot")
        return stream

    yield connect
    # pytest-jupyter runs no async fixtures; the test's loop is idle again by now
    for stream in opened:
        jp_asyncio_loop.run_until_complete(stream.close())


def _holders(snapshot: dict[str, Any]) -> set[str]:
    return {
        g["holder"]["kernel_id"]
        for node in snapshot["cluster"]["nodes"]
        for g in node["gpus"]
        if g["holder"]
    }


def _granted(kernel_id: str) -> Callable[[dict[str, Any]], bool]:
    return lambda s: any(
        a["kernel_id"] == kernel_id and a["state"] == "granted" for a in s["allocations"]
    )


def _without(kernel_id: str) -> Callable[[dict[str, Any]], bool]:
    return lambda s: all(a["kernel_id"] != kernel_id for a in s["allocations"])


# -- the stream ----------------------------------------------------------------------------------


async def test_first_event_is_a_snapshot_of_the_simulated_gpus(
    open_stream: Any, schemas: dict[str, Draft202012Validator]
) -> None:
    stream = await open_stream()
    assert stream.status == 200
    assert stream.headers["Content-Type"].startswith("text/event-stream")
    assert stream.headers["Cache-Control"] == "no-cache"
    assert stream.headers["X-Accel-Buffering"] == "no"
    kinds = [kind for kind, _ in stream.frames]
    assert kinds[:2] == ["retry", "snapshot"]
    snapshot = stream.seen("snapshot")[0]
    schemas["Snapshot"].validate(snapshot)
    cluster = snapshot["cluster"]
    assert snapshot["simulated"] is True and cluster["simulated"] is True
    assert cluster["gpu_count"] == 4 and cluster["free_count"] == 4
    gpus = cluster["nodes"][0]["gpus"]
    assert len(gpus) == 4 and all(g["simulated"] for g in gpus)
    assert all(0 <= g["utilization_percent"] <= 100 for g in gpus), "sampled at start-up"
    assert snapshot["queue"] == [] and snapshot["allocations"] == []


async def test_the_stream_is_as_the_document_says(
    open_stream: Any, api: Any, dlinfra_app: Any
) -> None:
    """Media type, headers and every frame as api/openapi.yaml describes them (x-sse-events);
    the fuzzer (test_fuzz_api.py) leaves this never-ending answer out."""
    doc = yaml.safe_load(DOC_PATH.read_text(encoding="utf-8"))
    answer = doc["paths"]["/dlinfra/api/events"]["get"]["responses"]["200"]
    [(media_type, content)] = answer["content"].items()
    registry: Registry = Registry().with_resource(
        DOC_URI, Resource.from_contents(doc, default_specification=DRAFT202012)
    )
    frames = {
        kind: Draft202012Validator(
            {"$ref": DOC_URI + ref["$ref"]}, registry=registry, format_checker=FormatChecker()
        )
        for kind, ref in content["x-sse-events"].items()
    }
    register(dlinfra_app, "holder")
    register(dlinfra_app, "waiter")
    stream = await open_stream()
    _, held = await api("POST", "allocations", {"kernel_id": "holder", "count": 4})
    await api("POST", "allocations", {"kernel_id": "waiter", "count": 1})
    await api("DELETE", f"allocations/{held['id']}")
    await stream.next("notice")
    await stream.next("snapshot", _granted("waiter"))

    assert stream.status == 200
    assert stream.headers["Content-Type"].split(";")[0].strip() == media_type
    for name, header in answer["headers"].items():
        assert stream.headers[name] == header["schema"]["const"], name
    assert stream.frames[0] == ("retry", 3000)
    seen = {kind for kind, _ in stream.frames}
    assert {"snapshot", "delta", "notice"} <= seen <= {"retry", "comment", *frames}
    for kind, data in stream.frames[1:]:
        if kind in frames:
            frames[kind].validate(data)


async def test_a_grant_shows_in_the_next_snapshot(
    open_stream: Any, api: Any, dlinfra_app: Any, schemas: dict[str, Draft202012Validator]
) -> None:
    register(dlinfra_app, "k1")
    stream = await open_stream()
    first = stream.seen("snapshot")[-1]
    _, alloc = await api("POST", "allocations", {"kernel_id": "k1", "count": 2})
    snapshot = await stream.next("snapshot", _granted("k1"))
    schemas["Snapshot"].validate(snapshot)
    assert snapshot["seq"] > first["seq"]
    assert _holders(snapshot) == {"k1"} and snapshot["cluster"]["free_count"] == 2
    [mine] = snapshot["allocations"]
    assert mine["id"] == alloc["id"] and len(mine["gpus"]) == 2
    assert all(g["utilization_percent"] is not None for g in mine["gpus"]), "live metrics"

    await api("DELETE", f"allocations/{alloc['id']}")
    snapshot = await stream.next("snapshot", _without("k1"))
    assert _holders(snapshot) == set() and snapshot["cluster"]["free_count"] == 4


async def test_a_grant_after_waiting_gives_a_notice(
    open_stream: Any, api: Any, dlinfra_app: Any, schemas: dict[str, Draft202012Validator]
) -> None:
    register(dlinfra_app, "holder")
    register(dlinfra_app, "waiter")
    stream = await open_stream()
    _, held = await api("POST", "allocations", {"kernel_id": "holder", "count": 4})
    _, queued = await api("POST", "allocations", {"kernel_id": "waiter", "count": 1})
    assert queued["state"] == "queued"
    waiting = await stream.next("snapshot", lambda s: len(s["queue"]) == 1)
    assert waiting["queue"][0]["id"] == queued["id"] and waiting["queue"][0]["position"] == 1
    assert waiting["cluster"]["queue_length"] == 1

    await api("DELETE", f"allocations/{held['id']}")
    notice = await stream.next("notice")
    schemas["Notice"].validate(notice)
    assert notice["kind"] == "granted" and notice["level"] == "info"
    assert notice["allocation_id"] == queued["id"] and notice["kernel_id"] == "waiter"
    assert notice["user"] == dlinfra_app.service.settings.user
    assert notice["id"] > 0 and notice["actions"] == []
    assert notice["message"].startswith("1 GPU granted to kernel ")
    assert notice["message"].endswith(" s in the queue")
    # the holder's immediate grant and its release by the user were no news
    assert stream.seen("notice") == [notice]
    await stream.next("snapshot", _granted("waiter"))


async def test_gpus_of_a_vanished_kernel_give_an_ended_warning(
    open_stream: Any, dlinfra_app: Any, schemas: dict[str, Draft202012Validator]
) -> None:
    service = dlinfra_app.service
    service.ledger.register_kernel(
        KernelRecord(
            kernel_id="stuck",
            user=service.settings.user,
            node=service.settings.node,
            server_id="another-server",
            created_at=service.ledger.clock.now() - 3600,
        )
    )
    service.ledger.request(kernel_id="stuck", count=2)
    stream = await open_stream()
    assert await service.reconcile() == ["stuck"]
    notice = await stream.next("notice")
    schemas["Notice"].validate(notice)
    assert (notice["kind"], notice["level"]) == ("ended", "warning")
    assert notice["kernel_id"] == "stuck" and notice["user"] == service.settings.user
    assert "2 GPUs" in notice["message"] and "kernel no longer exists" in notice["message"]
    await stream.next("snapshot", _without("stuck"))


async def test_published_notices_reach_every_subscriber_they_are_for(
    open_stream: Any, dlinfra_app: Any, schemas: dict[str, Draft202012Validator]
) -> None:
    service = dlinfra_app.service
    me = service.settings.user  # whom this server's streams are opened as
    streams = [await open_stream(), await open_stream()]
    sent = service.events.publish_notice(
        "warning",
        "warning",
        "2 GPUs idle for 30 min will be released in 10 min",
        user=me,
        kernel_id="k9",
        allocation_id=12,
        actions=[("keep", "Keep my GPUs")],
    )
    service.events.publish_notice("warning", "info", "someone else's", user=f"not-{me}")
    service.events.publish_notice("warning", "info", "for everyone")
    for stream in streams:
        notice = await stream.next("notice")
        schemas["Notice"].validate(notice)
        assert notice == {
            "id": -1,
            "kind": "warning",
            "level": "warning",
            "user": me,
            "kernel_id": "k9",
            "allocation_id": 12,
            "message": "2 GPUs idle for 30 min will be released in 10 min",
            "actions": [{"id": "keep", "label": "Keep my GPUs"}],
        }
        # another person's notice is not sent here
        assert (await stream.next("notice"))["id"] == -3
    assert sent.id == -1
    with pytest.raises(ValueError, match="level"):
        service.events.publish_notice("warning", "fatal", "no such level")


async def test_subscribers_see_the_same_snapshots(
    open_stream: Any, api: Any, dlinfra_app: Any
) -> None:
    register(dlinfra_app, "k1")
    one, two = await open_stream(), await open_stream()
    assert one.seen("snapshot")[-1] == two.seen("snapshot")[-1]
    await api("POST", "allocations", {"kernel_id": "k1", "count": 1})
    first = await one.next("snapshot", _granted("k1"))
    second = await two.next("snapshot", _granted("k1"))
    assert first == second, "one snapshot, built once, for both"


async def test_a_long_queue_is_one_page_and_a_count_in_the_snapshot(
    open_stream: Any,
    api: Any,
    jp_fetch: Any,
    dlinfra_app: Any,
    schemas: dict[str, Draft202012Validator],
) -> None:
    """What a snapshot holds is bounded by the cluster, not by the queue: its first page of
    waiting requests, the count of all, the granted allocations; the metrics still count all."""
    ledger = dlinfra_app.service.ledger
    waiting = QUEUE_PAGE + 5
    register(dlinfra_app, "holder")
    ledger.request(kernel_id="holder", count=4)
    for i in range(waiting):
        register(dlinfra_app, f"w{i}")
        ledger.request(kernel_id=f"w{i}", count=1)
    one, two = await open_stream(), await open_stream()
    snapshot = one.seen("snapshot")[-1]
    assert two.seen("snapshot")[-1] == snapshot, "one build for both"
    schemas["Snapshot"].validate(snapshot)
    assert snapshot["queue_length"] == snapshot["cluster"]["queue_length"] == waiting
    _, page = await api("GET", f"queue?limit={QUEUE_PAGE}")
    assert [a["id"] for a in snapshot["queue"]] == [a["id"] for a in page["queue"]]
    assert len(snapshot["queue"]) == QUEUE_PAGE
    assert [(a["kernel_id"], a["state"]) for a in snapshot["allocations"]] == [
        ("holder", "granted")
    ]
    assert snapshot["version"] == ledger.version()

    response = await jp_fetch("dlinfra", "metrics")
    metrics = {f.name: f.samples for f in text_string_to_metric_families(response.body.decode())}
    assert [s.value for s in metrics["dlinfra_queue_length"]] == [waiting]
    assert len(metrics["dlinfra_queue_wait_seconds"]) == QUEUE_PAGE


async def test_snapshot_work_does_not_grow_with_subscribers(
    open_stream: Any, api: Any, dlinfra_app: Any
) -> None:
    service = dlinfra_app.service
    broadcaster = service.events
    register(dlinfra_app, "k1")
    changes = 4

    async def built_for(subscribers: int) -> int:
        streams = [await open_stream() for _ in range(subscribers)]
        before = broadcaster.snapshots_built
        for _ in range(changes // 2):
            _, alloc = await api("POST", "allocations", {"kernel_id": "k1", "count": 2})
            for stream in streams:
                await stream.next("snapshot", _granted("k1"))
            await api("DELETE", f"allocations/{alloc['id']}")
            for stream in streams:
                await stream.next("snapshot", _without("k1"))
        built: int = broadcaster.snapshots_built - before
        for stream in streams:
            await stream.close()
        assert await broadcaster.wait_for_subscribers(0, timeout=15)
        return built

    sampled = service.sampling_calls
    assert await built_for(1) == changes
    assert await built_for(5) == changes
    assert service.sampling_calls == sampled, "subscribers never cause telemetry samples"


async def test_many_subscribers_space_the_deltas_by_the_fanout_bound(
    open_stream: Any, api: Any, dlinfra_app: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each delta is a write per subscriber: with fast changes, the frames handed out in all
    stay within ``fanout_rate`` a second, each delta covering the changes before it."""
    broadcaster = dlinfra_app.service.events
    streams = [await open_stream() for _ in range(2)]
    loop = asyncio.get_running_loop()
    # two subscribers at 2 frames a second: one delta a second
    monkeypatch.setattr(broadcaster, "fanout", TokenBucket(2.0, now=loop.time()))
    register(dlinfra_app, "k1")
    before = broadcaster.snapshots_built
    began = loop.time()
    for _ in range(40):
        _, alloc = await api("POST", "allocations", {"kernel_id": "k1", "count": 2})
        await api("DELETE", f"allocations/{alloc['id']}")
    _, alloc = await api("POST", "allocations", {"kernel_id": "k1", "count": 1})
    took = loop.time() - began
    for stream in streams:
        await stream.next("snapshot", _granted("k1"))
    # 81 changes: the delta the bucket held, then one a second (without the bound, one per
    # debounce: several times as many)
    assert broadcaster.snapshots_built - before <= 2 + int(took)


async def test_a_telemetry_sample_is_one_snapshot_for_all(
    open_stream: Any, dlinfra_app: Any
) -> None:
    service = dlinfra_app.service
    streams = [await open_stream() for _ in range(3)]
    seq = streams[0].seen("snapshot")[-1]["seq"]
    built, sampled = service.events.snapshots_built, service.sampling_calls
    await service.sample()
    got = [await s.next("snapshot", lambda snap: snap["seq"] > seq) for s in streams]
    assert got[0] == got[1] == got[2] and got[0]["seq"] == seq + 1
    assert (service.sampling_calls, service.events.snapshots_built) == (sampled + 1, built + 1)


@pytest.mark.parametrize(
    "dlinfra_config",
    [{"simulated_gpus": 4, "events_keepalive": KEEPALIVE_S, "telemetry_interval": 0.1}],
)
async def test_the_sampling_loop_drives_snapshots_once_per_interval(
    open_stream: Any, dlinfra_app: Any
) -> None:
    service = dlinfra_app.service
    await service.start()
    try:
        streams = [await open_stream() for _ in range(4)]
        sampled, built = service.sampling_calls, service.events.snapshots_built
        seq = max(s.seen("snapshot")[-1]["seq"] for s in streams)
        seqs = []
        for stream in streams:
            seen = await stream.next("snapshot", lambda snap: snap["seq"] >= seq + 5)
            seqs.append(seen["seq"])
        samples, snapshots = (
            service.sampling_calls - sampled,
            service.events.snapshots_built - built,
        )
        # each sample is one snapshot for the four; a sample per subscriber would make 4x
        assert samples >= 5 and abs(snapshots - samples) <= 1, (samples, snapshots)
    finally:
        await service.stop_loops()


async def test_a_closed_stream_is_dropped_and_an_idle_one_kept_alive(
    open_stream: Any, dlinfra_app: Any
) -> None:
    broadcaster = dlinfra_app.service.events
    one, two = await open_stream(), await open_stream()
    assert broadcaster.subscribers == 2
    assert await two.next("comment") == "keepalive"
    await one.close()
    assert await broadcaster.wait_for_subscribers(1, timeout=15)
    assert await two.next("comment") == "keepalive"


async def test_a_kernel_token_may_subscribe_and_no_token_may_not(
    open_stream: Any, jp_fetch: Any, dlinfra_app: Any
) -> None:
    with pytest.raises(HTTPClientError) as info:
        await jp_fetch("dlinfra", "api", "events", headers={"Authorization": ""})
    assert info.value.code == 403
    assert info.value.response is not None
    assert json.loads(info.value.response.body)["reason"] == "forbidden"
    plan = await dlinfra_app.service.kernel_launching(
        kernel_id="kt", kernel_name="python3", path=None, gpus=0, model=None
    )
    stream = await open_stream({"Authorization": f"DLInfra-Kernel {plan.env['DLINFRA_TOKEN']}"})
    assert stream.seen("snapshot")[-1]["cluster"]["gpu_count"] == 4


async def test_stopping_the_server_ends_the_streams(open_stream: Any, dlinfra_app: Any) -> None:
    stream = await open_stream()
    await dlinfra_app.service.events.close()
    await stream.until_ended()
    assert stream.ended and stream.frames[-1][0] == "snapshot"


# -- pieces --------------------------------------------------------------------------------------


def test_a_full_subscription_drops_its_deltas_and_asks_for_a_whole_snapshot() -> None:
    sub = Subscription(maxsize=4)
    sub.start(b"s1", 1, overflows=0)
    sub.offer(b"n1")
    sub.offer(b"d2", seq=2)
    sub.offer(b"d3", seq=3)
    assert [f for _, f in sub._items] == [b"s1", b"n1", b"d2", b"d3"] and not sub.resync
    sub.offer(b"d4", seq=4)  # one too many: a delta dropped would break the chain
    assert [f for _, f in sub._items] == [b"n1"] and sub.resync and sub.overflows == 1
    sub.offer(b"d5", seq=5)
    sub.offer(b"n2")
    # while a whole snapshot is due, the notices go out and the deltas wait for it
    assert asyncio.run(sub.next(10)) == [b"n1", b"n2"]
    sub.start(b"s5", 5, overflows=1)  # the latest whole snapshot covers delta 5
    sub.offer(b"d6", seq=6)
    assert not sub.resync and asyncio.run(sub.next(10)) == [b"s5", b"d6"]
    for i in range(5):
        sub.offer(f"m{i}".encode())
    assert [f for _, f in sub._items] == [b"m1", b"m2", b"m3", b"m4"]
    assert sub.dropped_notices == 1 and not sub.resync, "notices alone: the oldest goes"


def test_an_overflow_while_the_whole_snapshot_is_made_asks_again() -> None:
    sub = Subscription(maxsize=2)
    overflows = sub.overflows
    for seq in (3, 4, 5):  # deltas arrive while the snapshot of seq 2 is serialised
        sub.offer(b"d", seq=seq)
    sub.start(b"s2", 2, overflows=overflows)
    assert sub.resync, "delta 3 was dropped: snapshot 2 cannot be followed"


async def test_a_subscription_hands_out_everything_waiting_or_a_keepalive() -> None:
    sub = Subscription()
    assert await sub.next(0.01) == [], "a new one waits for its whole snapshot"
    sub.start(b"a", 1, overflows=0)
    sub.offer(b"b")
    assert await sub.next(10) == [b"a", b"b"]
    assert await sub.next(0.01) == [KEEPALIVE]
    sub.close()
    assert await sub.next(10) is None


def _event(seq: int, kind: str, detail: dict[str, object], aid: int = 7) -> LedgerEvent:
    return LedgerEvent(seq=seq, at=0.0, kind=kind, allocation_id=aid, kernel_id="k", detail=detail)


@pytest.mark.parametrize(
    ("kind", "detail", "previous", "expected"),
    [
        ("granted", {"gpus": ["a", "b"], "waited_s": 41.2}, None, ("granted", "info")),
        # written in the same transaction as its request: an immediate grant
        ("granted", {"gpus": ["a"], "waited_s": 1e-5}, "requested", None),
        ("granted", {"gpus": ["a"], "waited_s": 0}, None, None),
        # granted in the batch that asked for it, other changes' events in between
        ("granted", {"gpus": ["a"], "waited_s": 0.02, "at_once": True}, "released", None),
        ("released", {"reason": "released by the user", "gpus": ["a"]}, None, None),
        ("released", {"reason": "released by its kernel", "gpus": ["a"]}, None, None),
        ("released", {"reason": "kernel shut down", "gpus": ["a"]}, None, None),
        ("cancelled", {"reason": "kernel restarted", "gpus": []}, None, None),
        ("released", {"reason": "kernel no longer exists", "gpus": ["a"]}, None, "warning"),
        ("released", {"reason": "kernel died (exit status 9)", "gpus": ["a"]}, None, "warning"),
        ("cancelled", {"reason": "cannot be granted any more: ...", "gpus": []}, None, "error"),
        ("requested", {"count": 1, "model": None}, None, None),
        # the requeue notice says it: not a second one for the GPUs
        ("released", {"reason": "job preempted", "gpus": ["a"]}, None, None),
    ],
)
def test_which_ledger_events_become_notices(
    kind: str, detail: dict[str, object], previous: str | None, expected: Any
) -> None:
    before = _event(9, previous, {}) if previous else None
    kernels = {
        "k": KernelRecord(kernel_id="k", user="ana", node="n", server_id="s", path="a.ipynb")
    }
    notice = notice_from_event(
        _event(10, kind, detail), previous=before, kernels=kernels, owner_of=lambda _: None
    )
    if expected is None:
        assert notice is None
        return
    assert notice is not None and notice.id == 10 and notice.user == "ana"
    if expected == ("granted", "info"):
        assert (notice.kind, notice.level) == expected
        assert notice.message == "2 GPUs granted to kernel a.ipynb after 41 s in the queue"
    else:
        assert (notice.kind, notice.level) == ("ended", expected)
        assert str(detail["reason"]) in notice.message


def test_a_preempted_job_tells_its_owner_it_was_queued_again() -> None:
    reason = "preempted for request 4 of bob (interactive, priority 100): its class low ranks below"
    event = LedgerEvent(
        seq=12,
        at=0.0,
        kind="job_requeued",
        kernel_id="job-3",
        detail={"job": 3, "user": "ana", "reason": reason},
    )
    notice = notice_from_event(event, previous=None, kernels={}, owner_of=lambda _: None)
    assert notice is not None
    assert (notice.kind, notice.level, notice.user) == ("job_requeued", "warning", "ana")
    assert notice.kernel_id == "job-3" and notice.message.startswith("Job 3 was stopped: preempted")
    assert len(notice.message) <= 140


async def test_frames_go_straight_to_a_waiting_readers_sink_until_it_refuses_one() -> None:
    sub = Subscription(maxsize=4)
    sub.start(b"s1", 1, overflows=0)
    assert await sub.next(10) == [b"s1"]
    taken: list[bytes] = []
    takes = True

    def sink(frame: bytes) -> bool:
        if takes:
            taken.append(frame)
        return takes

    reader = asyncio.ensure_future(sub.next(10, sink=sink))
    await asyncio.sleep(0)  # the reader waits: frames go to its sink, in order
    sub.offer(b"d2", seq=2)
    sub.offer(b"n1")
    assert taken == [b"d2", b"n1"] and not reader.done() and len(sub) == 0
    takes = False  # its connection still sends: this one and those after it queue
    sub.offer(b"d3", seq=3)
    takes = True
    sub.offer(b"d4", seq=4)
    assert await reader == [b"d3", b"d4"] and taken == [b"d2", b"n1"]
    sub.offer(b"d5", seq=5)  # no reader waiting: queued for the next read
    assert taken == [b"d2", b"n1"] and await sub.next(10, sink=sink) == [b"d5"]
    # a reader that fell behind gets no frame through its sink until it was resynced
    for seq in range(6, 11):
        sub.offer(b"d", seq=seq)
    assert sub.resync
    reader = asyncio.ensure_future(sub.next(10, sink=sink))
    await asyncio.sleep(0)
    assert await reader == [] and taken == [b"d2", b"n1"]


class _Stream:
    def __init__(self) -> None:
        self.sending = False
        self.gone = False

    def writing(self) -> bool:
        return self.sending

    def closed(self) -> bool:
        return self.gone


class _Connection:
    def __init__(self) -> None:
        self.stream = _Stream()
        self.written: list[bytes] = []

    def write(self, chunk: bytes) -> None:
        self.written.append(chunk)


def test_a_frame_goes_through_only_to_a_connection_that_has_sent_the_last() -> None:
    from types import SimpleNamespace

    from jupyter_dlinfra.server.handlers.gpus import EventsHandler

    handler = EventsHandler.__new__(EventsHandler)
    connection = _Connection()
    handler.request = SimpleNamespace(connection=connection)  # type: ignore[assignment]
    assert handler._write_through(b"d1") and connection.written == [b"d1"]
    connection.stream.sending = True  # a slow reader: its frames queue instead
    assert not handler._write_through(b"d2") and connection.written == [b"d1"]
    connection.stream.sending = False
    assert handler._write_through(b"d3") and connection.written == [b"d1", b"d3"]
    connection.stream.gone = True
    assert not handler._write_through(b"d4") and connection.written == [b"d1", b"d3"]


async def test_a_persons_notices_reach_only_that_persons_streams() -> None:
    # the ledger is not read: only notices are published here
    broadcaster = Broadcaster(cast(Any, None), fanout_rate=0)
    ana, bob, everything = Subscription(user="ana"), Subscription(user="bob"), Subscription()
    broadcaster._subs.update({ana, bob, everything})
    for sub in (ana, bob, everything):
        sub.resync = False  # as after the snapshot each stream starts with
    broadcaster.publish_notice("granted", "info", "2 GPUs granted to ana's kernel", user="ana")
    broadcaster.publish_notice("ledger_unavailable", "error", "the database is away")

    def kinds(sub: Subscription) -> list[str]:
        return [frame.split(b"\n")[0].decode() for _, frame in sub._items]

    assert kinds(ana) == ["event: notice", "event: notice"]
    assert b"granted to ana" in ana._items[0][1]
    # bob sees the notice for everyone, not ana's
    assert len(bob._items) == 1 and b"database is away" in bob._items[0][1]
    assert len(everything._items) == 2


async def test_a_delta_reaches_many_streams_a_slice_at_a_time_in_order() -> None:
    """500 streams written to in one step of the event loop held every request of a gateway
    for 100-350 ms: the event loop runs other work between slices, and every stream still
    gets the delta, once, and the one after it only after it."""
    broadcaster = Broadcaster(cast(Any, None), fanout_rate=0)
    subs = [Subscription() for _ in range(3 * FANOUT_SLICE + 1)]
    for sub in subs:
        sub.resync = False  # as after the snapshot each stream starts with
    broadcaster._subs.update(subs)
    offered: list[int] = []
    between: list[int] = []

    async def other_work() -> None:
        while len(offered) < len(subs):
            between.append(len(offered))
            await asyncio.sleep(0)

    def counting(sub: Subscription) -> None:
        original = sub.offer

        def offer(frame: bytes, *, seq: int | None = None) -> None:
            offered.append(id(sub))
            original(frame, seq=seq)

        sub.offer = offer  # type: ignore[method-assign]

    for sub in subs:
        counting(sub)
    other = asyncio.create_task(other_work())
    await broadcaster._fan_out_sliced(b"event: delta\ndata: 1\n\n", 1)
    await broadcaster._fan_out_sliced(b"event: delta\ndata: 2\n\n", 2)
    await other
    # the other work ran while the first delta was being handed out, between its slices
    assert any(0 < n < len(subs) for n in between), between
    assert sorted(offered) == sorted(id(s) for s in subs for _ in range(2))
    for sub in subs:
        assert [seq for seq, _ in sub._items] == [1, 2]


@pytest.mark.parametrize(
    ("kind", "expected"),
    [
        ("idle_warning", "reclaimed in 5 min (parked until its next cell) unless used"),
        ("idle_reclaimed", "parked until its next cell, variables kept"),
    ],
)
def test_a_park_policy_says_so_in_its_notices(kind: str, expected: str) -> None:
    kernels = {
        "k": KernelRecord(kernel_id="k", user="ana", node="n", server_id="s", path="a.ipynb")
    }
    detail = {"idle_s": 120.0, "action": "park", "reclaim_at": 300.0, "keeps_left": 0}
    notice = notice_from_event(
        _event(11, kind, detail), previous=None, kernels=kernels, owner_of=lambda _: None
    )
    assert notice is not None and expected in notice.message, notice
