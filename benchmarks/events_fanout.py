"""Does the event stream scale with subscribers? 1 vs 200 clients of ``GET /dlinfra/api/events``.

Runs a real ``jupyter server`` with the dlinfra extension, 8 simulated GPUs and
``--DLInfra.telemetry_interval=1`` (SQLite ledger in a temporary directory), starts one real
python3 kernel, then runs two phases of ~30 s each (10 s with ``--quick``): 1 subscriber, then
200 concurrent subscribers. During each phase the benchmark changes the ledger every 0.5 s,
alternating ``POST allocations`` (2 GPUs for the kernel, granted at once) and ``DELETE`` of that
allocation, with the server's token. It measures:

* telemetry sampling calls per interval: the delta of ``dlinfra_telemetry_samples_total`` from
  ``GET /dlinfra/metrics`` over the phase, divided by the number of intervals that elapsed
  (1.0 means one sample per interval, whatever the number of subscribers);
* change-to-snapshot delay: from just before the benchmark sends the request that changes the
  ledger, to the arrival at each subscriber of the first snapshot reflecting it (the kernel's
  allocation granted, or gone); p50/p99 over every subscriber and every change. It includes the
  request itself and the client's parsing, so it is an upper bound of the server's part;
* the server process's CPU seconds per minute (user + system, the server process only).

Subscribers are raw asyncio connections speaking HTTP/1.1 (chunked), in this process; they parse
every snapshot and delta they receive, as a browser would (a delta applied to the snapshot held).

Usage: ``.venv/bin/python benchmarks/events_fanout.py [--quick]``. The last line printed starts
with ``RESULT`` and holds key=value pairs.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
from prometheus_client.parser import text_string_to_metric_families

from jupyter_dlinfra.testing.event_stream import apply_delta
from jupyter_dlinfra.testing.server import KernelSession, ServerProcess

SIMULATED_GPUS = 8
TELEMETRY_INTERVAL_S = 1.0
CHANGE_EVERY_S = 0.5
MANY = 200
TARGET_P99_MS = 250.0
CONNECT_TIMEOUT_S = 60.0
SETTLE_TIMEOUT_S = 10.0


@dataclass
class Change:
    kind: str  # "grant" or "release"
    sent_at: float


@dataclass
class Subscriber:
    """One SSE client: reads the stream, and times when each change shows in a snapshot."""

    port: int
    token: str
    kernel_id: str
    changes: list[Change]
    latencies: list[float] = field(default_factory=list)
    snapshots: int = 0
    #: the snapshot as a browser holds it: the whole one it began with, moved by each delta
    held: dict[str, Any] | None = None
    next_change: int = 0
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    writer: asyncio.StreamWriter | None = None

    async def run(self) -> None:
        reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
        self.writer.write(
            (
                "GET /dlinfra/api/events HTTP/1.1\r\n"
                f"Host: 127.0.0.1:{self.port}\r\n"
                f"Authorization: token {self.token}\r\n"
                "Accept: text/event-stream\r\n\r\n"
            ).encode()
        )
        head = await reader.readuntil(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.1 200"):
            raise RuntimeError(f"event stream refused: {head[:200]!r}")
        chunked = b"transfer-encoding: chunked" in head.lower()
        buffer = b""
        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
            while True:
                if chunked:
                    line = await reader.readline()
                    if not line.strip():
                        return
                    size = int(line.split(b";")[0], 16)
                    if size == 0:
                        return
                    data = await reader.readexactly(size + 2)
                    buffer += data[:-2]
                else:
                    data = await reader.read(65536)
                    if not data:
                        return
                    buffer += data
                while b"\n\n" in buffer:
                    frame, buffer = buffer.split(b"\n\n", 1)
                    if frame.startswith((b"event: snapshot\n", b"event: delta\n")):
                        self.on_snapshot(time.perf_counter(), frame)

    def on_snapshot(self, arrived: float, frame: bytes) -> None:
        body = json.loads(frame.partition(b"\ndata: ")[2])
        if frame.startswith(b"event: delta\n"):
            assert self.held is not None, "a delta before the first snapshot"
            moved = apply_delta(self.held, body)
            if moved is None:
                return
            body = moved
        snapshot = self.held = body
        self.snapshots += 1
        if not self.ready.is_set():
            # changes made before this subscriber's first snapshot are not its to time
            self.next_change = len(self.changes)
            self.ready.set()
            return
        mine = [a for a in snapshot["allocations"] if a["kernel_id"] == self.kernel_id]
        granted = any(a["state"] == "granted" for a in mine)
        # in order: a release is only looked for once the grant before it was seen, so a
        # snapshot built before the grant cannot pass for the release
        while self.next_change < len(self.changes):
            change = self.changes[self.next_change]
            if not (granted if change.kind == "grant" else not mine):
                break
            self.latencies.append(arrived - change.sent_at)
            self.next_change += 1

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


@dataclass
class PhaseResult:
    subscribers: int
    seconds: float
    changes: int
    latencies_ms: list[float]
    unsettled: int
    sampling_per_interval: float
    snapshots_built: float
    cpu_s_per_min: float

    def pct(self, q: float) -> float:
        if not self.latencies_ms:
            return math.nan
        ordered = sorted(self.latencies_ms)
        return ordered[min(len(ordered) - 1, math.ceil(q / 100 * len(ordered)) - 1)]


def scrape(server: ServerProcess) -> dict[str, float]:
    req = urllib.request.Request(server.url + "dlinfra/metrics")
    req.add_header("Authorization", f"token {server.token}")
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(req, timeout=30) as resp:
        text = resp.read().decode()
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if not sample.labels:
                out[sample.name] = sample.value
    return out


def cpu_seconds(proc: psutil.Process) -> float:
    times = proc.cpu_times()
    return float(times.user + times.system)


async def change_ledger(
    server: ServerProcess, kernel_id: str, changes: list[Change], duration: float
) -> None:
    """Grant, release, grant, ... every CHANGE_EVERY_S; always ends released."""
    end = time.perf_counter() + duration
    held: int | None = None
    while True:
        if time.perf_counter() >= end and held is None:
            return
        started = time.perf_counter()
        if held is None:
            changes.append(Change("grant", started))
            status, body, _ = await asyncio.to_thread(
                server.request,
                "POST",
                "dlinfra/api/allocations",
                {"kernel_id": kernel_id, "count": 2},
            )
            if status != 201 or body["state"] != "granted":
                raise RuntimeError(f"POST allocations: {status} {body}")
            held = int(body["id"])
        else:
            changes.append(Change("release", started))
            status, body, _ = await asyncio.to_thread(
                server.request, "DELETE", f"dlinfra/api/allocations/{held}"
            )
            if status != 204:
                raise RuntimeError(f"DELETE allocations/{held}: {status} {body}")
            held = None
        await asyncio.sleep(max(0.0, started + CHANGE_EVERY_S - time.perf_counter()))


async def phase(server: ServerProcess, kernel_id: str, count: int, duration: float) -> PhaseResult:
    assert server.proc is not None
    proc = psutil.Process(server.proc.pid)
    changes: list[Change] = []
    subs = [Subscriber(server.port, server.token, kernel_id, changes) for _ in range(count)]
    tasks = [asyncio.ensure_future(s.run()) for s in subs]
    try:
        ready = asyncio.gather(*(s.ready.wait() for s in subs))
        await asyncio.wait_for(ready, CONNECT_TIMEOUT_S)
        for task in tasks:
            if task.done():
                task.result()  # a subscriber that failed says why
        metrics0, cpu0, t0 = await asyncio.to_thread(scrape, server), cpu_seconds(proc), time.time()
        await change_ledger(server, kernel_id, changes, duration)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + SETTLE_TIMEOUT_S
        while loop.time() < deadline and any(s.next_change < len(changes) for s in subs):
            await asyncio.sleep(0.05)
        cpu1, t1 = cpu_seconds(proc), time.time()
        metrics1 = await asyncio.to_thread(scrape, server)
    finally:
        for s in subs:
            s.close()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    elapsed = t1 - t0
    samples = (
        metrics1["dlinfra_telemetry_samples_total"] - metrics0["dlinfra_telemetry_samples_total"]
    )
    built = metrics1["dlinfra_event_snapshots_total"] - metrics0["dlinfra_event_snapshots_total"]
    return PhaseResult(
        subscribers=count,
        seconds=elapsed,
        changes=len(changes),
        latencies_ms=[lat * 1000 for s in subs for lat in s.latencies],
        unsettled=sum(len(changes) - s.next_change for s in subs),
        sampling_per_interval=samples / (elapsed / TELEMETRY_INTERVAL_S),
        snapshots_built=built,
        cpu_s_per_min=(cpu1 - cpu0) / elapsed * 60,
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="10 s phases instead of 30 s")
    args = parser.parse_args()
    duration = 10.0 if args.quick else 30.0

    with tempfile.TemporaryDirectory(prefix="dlinfra-bench-events-") as tmp:
        workdir = Path(tmp)
        server = ServerProcess(
            workdir,
            db_url=f"sqlite:///{workdir / 'ledger.sqlite'}",
            simulated_gpus=SIMULATED_GPUS,
            extra_args=[f"--DLInfra.telemetry_interval={TELEMETRY_INTERVAL_S:g}"],
        )
        kernel: KernelSession | None = None
        try:
            server.start()
            kernel = server.start_kernel("python3")
            one = asyncio.run(phase(server, kernel.kernel_id, 1, duration))
            many = asyncio.run(phase(server, kernel.kernel_id, MANY, duration))
        except BaseException:
            log = server.log_text()
            if log:
                print(f"--- server log (tail) ---\n{log[-3000:]}", file=sys.stderr)
            raise
        finally:
            if kernel is not None:
                try:
                    kernel.shutdown()
                except Exception as err:  # the server stop below shuts it down anyway
                    print(f"kernel shutdown failed: {err}", file=sys.stderr)
            server.stop()

    print(
        f"event stream fan-out: {SIMULATED_GPUS} simulated GPUs, telemetry every "
        f"{TELEMETRY_INTERVAL_S:g} s, a ledger change every {CHANGE_EVERY_S:g} s, SQLite"
    )
    header = (
        f"{'subscribers':>11}{'seconds':>9}{'changes':>9}{'timed':>8}{'p50 ms':>9}{'p99 ms':>9}"
        f"{'max ms':>9}{'unseen':>8}{'samples/int':>13}{'snapshots':>11}{'cpu s/min':>11}"
    )
    print(header)
    for r in (one, many):
        print(
            f"{r.subscribers:>11}{r.seconds:>9.1f}{r.changes:>9}{len(r.latencies_ms):>8}"
            f"{r.pct(50):>9.1f}{r.pct(99):>9.1f}{max(r.latencies_ms, default=math.nan):>9.1f}"
            f"{r.unsettled:>8}{r.sampling_per_interval:>13.2f}"
            f"{r.snapshots_built:>11.0f}{r.cpu_s_per_min:>11.2f}"
        )
    same = abs(one.sampling_per_interval - many.sampling_per_interval) < 0.15
    fast = many.pct(99) < TARGET_P99_MS
    print(
        f"targets: sampling per interval equal with 1 and {MANY} subscribers "
        f"({'met' if same else 'MISSED'}); p99 < {TARGET_P99_MS:.0f} ms with {MANY} subscribers "
        f"({'met' if fast else 'MISSED'})"
    )
    print(
        f"RESULT sampling_calls_1={one.sampling_per_interval:.3f} "
        f"sampling_calls_200={many.sampling_per_interval:.3f} p99_ms_200={many.pct(99):.1f} "
        f"cpu_s_per_min_200={many.cpu_s_per_min:.2f} p99_ms_1={one.pct(99):.1f} "
        f"cpu_s_per_min_1={one.cpu_s_per_min:.2f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
