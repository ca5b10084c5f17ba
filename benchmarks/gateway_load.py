"""Does a team gateway on PostgreSQL serve many people at once? REST and event streams under load.

A real ``jupyter dlinfra gateway`` process on a real PostgreSQL, its ledger seeded with
``--nodes`` simulated nodes of 8 GPUs (1,024 by default) and ``--waiting`` requests in the queue
(5,000), driven from this process by ``--clients`` concurrent clients (200) while
``--streams`` event streams (500) stay open. The gateway runs alone in its process; the load
generator (clients and streams, on one asyncio loop) shares the machine with it and with
PostgreSQL, as the issue's target says: on this 2-core machine kind, the load generator included.

**Seeding is setup, not measured**: the cluster's state is decided in memory and written in bulk
as the ledger's own rows by ``benchmarks/ledger_scale.py`` (``Seeder``, ``write_seed``: its
workload of 200 users in 20 groups, classes, shares and quotas; every node filled, then the queue,
settled by the core's passes). The gateway gets the same policy and groups through its
configuration file, as an admin deploys it (``c.DLInfra.user_groups``, ``group_shares``,
``group_quotas``, ``user_quotas``), and one simulated GPU of its own on its own node (its
telemetry, as a gateway has). Then, as an admin would: each client's user gets a gateway token
(``TokenBook.issue``, what ``jupyter dlinfra token issue`` does), and each client two kernels
registered in the ledger as the provisioner registers a launch (``Ledger.register_kernel`` with
the SHA-256 of a fresh kernel token), pinned to a node with no free GPU, so that their requests
queue as ``%gpu`` requests do on a busy cluster and the queue keeps its length.

**Clients** (``u000``.. ``u199``, a user each; users repeat beyond 200 clients), each on one
keep-alive HTTP/1.1 connection, paced so that together they offer ``--rate`` requests/s (500,
the target; long polls not counted: they wait by design), in cycles of what ``%gpu`` and the
sidebar call (the kernel's calls with its kernel token, ``Authorization: DLInfra-Kernel``;
the views with the person's token):

1. ``POST allocations`` for the cycle's kernel (the two kernels take turns), 1/2/4/8 GPUs with
   ledger_scale's weights, no model and no class, as ``%gpu N`` sends it;
2. its status, ``GET allocations/{id}`` (``%gpu --no-wait`` and the check before each cell); on
   every other cycle (half the clients start with it) also a long poll,
   ``GET allocations/{id}?wait=S`` (``--long-poll-s``, 1 s; ``%gpu N`` waiting in the queue):
   answered at the first change of its place or reason, else after S seconds. It goes on a
   connection of its own (the kernel's, beside the sidebar's), not paced and not awaited by the
   cycle, one at a time per client: it waits by design, and a wait inside the cycle would take
   the place of paced requests (with these defaults, the offered rate could not be answered);
3. a queue view, ``GET queue?limit=Q`` (``--queue-limit``, 50: its first page, as the sidebar
   shows it);
4. the user's own allocations, ``GET allocations?user=U`` (the sidebar's "mine");
5. ``DELETE allocations/{id}`` of the previous cycle's request (a queued request is cancelled), so
   that a client has one request waiting between cycles and the queue stays at its seeded length
   plus one per client.

**Pacing**: each client sends its next request (long polls aside) one interval (``--clients`` /
``--rate`` seconds, 0.4 s by default) after the last one began, and at once when its answer came
later than that (a gateway that falls behind), catching up at most one interval: the
gateway is offered the target rate, and latencies are its service time plus the queueing it
causes, not the queueing of a closed loop. Without pacing (``--rate 0``, back to back without
think time) latency is the number of clients over the throughput whatever the gateway does
(Little's law: 200 clients answered in under 100 ms need 2,000 requests/s); that run measures
the most the gateway answers.

**Baseline**: before the streams open, the same clients ask the same gateway process for
jupyter_server's own ``GET /api/status`` with their person tokens, back to back, for
``--floor-s`` seconds (5): the most this server framework answers on this machine with this load
generator, whatever the product does behind its routes (its request handling, authentication and
JSON). The report puts the product's routes next to it: requests/s and the gateway's CPU time per
request, both runs measured the same way in the same session.

**Prober**: one more client, of a user in no group (no quota), with two kernels on a node of 8
free GPUs of its own (added to the inventory at setup; nothing waits there), makes the changes
the event streams are timed on: every ``PROBE_EVERY_S`` (0.1 s, or as fast as the gateway
answers) it asks for one GPU for one kernel, granted at once, then releases the other kernel's
grant (its two routes are listed apart: the grant path). A snapshot lists every granted
allocation but only the first page of the queue, so the clients' queued requests may not show
in it; the prober's grants always do, and its granted allocations go {a}, {a, b}, {b}, {b, c}...,
each set left by exactly one change, so a snapshot shows how far the prober has got.

**Event streams**: ``GET events`` with the clients' person tokens in turn, opened before the
clients start, each on its own connection (raw asyncio, in this process). Every stream reads
every byte the gateway sends; ``TIMED_STREAMS`` (50) of them, spread over all, also note the
``seq`` of every state frame (the whole snapshot a stream begins with, then a delta per change)
and when it was read whole (finding a frame's end is a pass over its bytes), and the first one
reads the prober's allocations in each: the whole snapshot's by their marks, then each delta's
put and gone allocations applied to them. **Event delay** of a prober's
change at a timed stream: from just before the prober sent the request that made it to the
arrival (read whole) of the first snapshot at that stream that shows it or a later state; per
(change, timed stream) pair, an upper bound of the server's part (it includes the request
itself), as ``events_fanout.py`` measures. After the clients stop, the streams get up to
``SETTLE_S`` to show the prober's last change; a pair still unseen then counts with the time it
waited (a lower bound) and is reported.

**Reported**: per route, requests and errors, p50/p99/max (ms); **requests/s**: requests answered
(long polls left out: they wait by design) over the time from the first client's start to the
last one's end, next to the rate offered (the target is met only when the gateway kept up with
an offered rate of 500: answered at least 98 % of it); **p99_ms**: of every answered request
but long polls; **event_p99_ms**: over every (change, stream) pair; **errors**: every non-2xx
answer or other status than the route's (201 created, 204 released, 200), every connection error
or timeout, and every event stream refused or lost before the end; the first few are printed.
Also the gateway's and this process's CPU seconds per second of the run, what the streams read,
the snapshots built and their size, and the queue's length in the last snapshot.

**Route costs** (``--route-cost-s``, 3 s each; 0 skips them): after the baseline, before the
streams open, each client route runs alone from every client back to back (a request and the
cancel of it as pairs; a status of the client's one queued request; the queue's first page; the
user's own allocations): answers per second and the gateway's CPU per answer, by route, next to
the baseline's. Where the mix's CPU goes; the mix costs more than their average by what the
event streams and the long polls add, and by views kept in memory that its changes drop.

PostgreSQL: ``--pg-url`` names a server (a database is created for the run and dropped; the role
needs CREATEDB), else one is started as the test suite does (``tests/postgres_server.py``, a
throw-away server with fsync off). Without PostgreSQL the run stops with an error.

Usage: ``.venv/bin/python benchmarks/gateway_load.py [--nodes N] [--waiting N] [--clients N]
[--streams N] [--duration-s S] [--rate R] [--floor-s S] [--long-poll-s S] [--queue-limit N]
[--route-cost-s S] [--pg-url URL] [--seed N]``.
Targets (issue 15): >= 500 requests/s with p99 < 100 ms, event delay p99 < 500 ms, 0 errors. The
last line: ``RESULT requests_per_s=... p99_ms=... event_p99_ms=... errors=...``.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import contextlib
import functools
import json
import math
import random
import re
import resource
import secrets
import sys
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from jupyter_dlinfra.core.books.ledger import Ledger
from jupyter_dlinfra.core.books.tokens import TokenBook, hash_secret
from jupyter_dlinfra.core.clock import SystemClock
from jupyter_dlinfra.core.models import Gpu, KernelRecord
from jupyter_dlinfra.core.store import Store
from jupyter_dlinfra.testing.server import ServerProcess

# ledger_scale.py beside this file (its seeding, and its way to a PostgreSQL): found when this
# runs as a script and when loaded by path
_HERE = str(Path(__file__).resolve().parent)
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)
import ledger_scale  # noqa: E402

SEED = 15
NODES = 1024
WAITING = 5000
CLIENTS = 200
STREAMS = 500
DURATION_S = 30.0
LONG_POLL_S = 1.0
QUEUE_LIMIT = 50
GPUS_PER_NODE = ledger_scale.GPUS_PER_NODE
GATEWAY = ("-m", "jupyter_dlinfra.cli", "gateway")
ADMIN = "admin"
#: the server id the clients' kernels are registered under (a person's server, not the gateway)
SERVER_ID = "gateway-load"
#: seconds a request may take before it counts as an error (a long poll: its wait more)
REQUEST_TIMEOUT_S = 60.0
#: seconds the gateway may take to start, and every stream to get its first snapshot
START_TIMEOUT_S = 600.0
#: seconds the streams get, once the clients stop, to show the prober's last change
SETTLE_S = 30.0
#: how many streams note their frames' arrival (spread over all; every stream reads everything)
TIMED_STREAMS = 50
#: errors printed in full
SHOWN_ERRORS = 5
TARGET_RPS = 500.0
#: seconds of the baseline run (jupyter_server's /api/status, back to back)
FLOOR_S = 5.0
FLOOR = "GET /api/status (baseline)"
#: seconds each route runs alone, back to back, to measure the gateway's CPU per answer
ROUTE_COST_S = 3.0
#: the share of the offered rate a run must answer to count as keeping up with it
KEPT_UP = 0.98
TARGET_P99_MS = 100.0
TARGET_EVENT_P99_MS = 500.0

REQUEST = "POST allocations"
STATUS = "GET allocations/{id}"
LONG_POLL = "GET allocations/{id}?wait"
QUEUE = "GET queue"
MINE = "GET allocations?user"
RELEASE = "DELETE allocations/{id}"
PROBE_REQUEST = "POST allocations (granted)"
PROBE_RELEASE = "DELETE allocations/{id} (held)"
EVENTS = "GET events"
#: every route a run must exercise, in the table's order
ROUTES = (REQUEST, STATUS, LONG_POLL, QUEUE, MINE, RELEASE, PROBE_REQUEST, PROBE_RELEASE, EVENTS)
#: routes whose answers wait by design: not in requests/s nor in p99
WAITING_ROUTES = frozenset({LONG_POLL, EVENTS})

#: the two frames that carry a state: a whole snapshot (first), then a delta per change
_MARKS = (b'event: snapshot\ndata: {"seq": ', b'event: delta\ndata: {"seq": ')
_LONGEST_MARK = max(len(m) for m in _MARKS)
#: the prober's node, user and kernels (the user is in no group: no quota holds it back)
PROBE_NODE = "probe-node"
PROBE_USER = "prober"
PROBE_KERNELS = ("load-probe-a", "load-probe-b")
#: seconds between the prober's steps (a grant and a release each)
PROBE_EVERY_S = 0.1
#: a granted allocation of the prober in a snapshot (allocation_json's first two keys)
_PROBE_ALLOCATION = re.compile(rb'"id": (\d+), "kernel_id": "load-probe-[ab]"')
_QUEUE_LENGTH = re.compile(rb'"queue_length": (\d+)')


def kernel_id_of(client: int, slot: int) -> str:
    # never "job-...": that prefix is a batch job's holder record
    return f"load-{client:04d}-{'ab'[slot]}"


# -- what the run measures --------------------------------------------------------------------


class Recorder:
    """Latencies per route, and errors (counted per route, the first few kept in words)."""

    def __init__(self) -> None:
        self.latencies: dict[str, list[float]] = defaultdict(list)
        self.errors: Counter[str] = Counter()
        self.first_errors: list[str] = []

    def ok(self, route: str, seconds: float) -> None:
        self.latencies[route].append(seconds)

    def error(self, route: str, what: str) -> None:
        self.errors[route] += 1
        if len(self.first_errors) < SHOWN_ERRORS:
            self.first_errors.append(f"{route}: {what}")

    @property
    def total_errors(self) -> int:
        return sum(self.errors.values())


class ConnectionFailed(Exception):
    """The gateway closed the connection or answered something that is not HTTP/1.1."""


class HttpConnection:
    """One keep-alive HTTP/1.1 connection to the gateway, on asyncio streams: a request, its
    answer, then the next one (a browser's or a kernel's client does no more)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def request(
        self, method: str, path: str, authorization: str, body: bytes | None = None
    ) -> tuple[int, bytes]:
        if self._writer is None:
            self._reader, self._writer = await asyncio.open_connection("127.0.0.1", self.port)
        assert self._reader is not None and self._writer is not None
        head = f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{self.port}\r\n"
        head += f"Authorization: {authorization}\r\n"
        if body is not None:
            head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        self._writer.write(head.encode() + b"\r\n" + (body or b""))
        reader = self._reader
        raw = await reader.readuntil(b"\r\n\r\n")
        status_line, _, fields = raw.partition(b"\r\n")
        parts = status_line.split(b" ", 2)
        if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or not parts[1].isdigit():
            raise ConnectionFailed(f"not an HTTP answer: {status_line[:100]!r}")
        status = int(parts[1])
        length: int | None = None
        chunked = close = False
        for line in fields.split(b"\r\n"):
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"content-length":
                length = int(value)
            elif name == b"transfer-encoding":
                chunked = b"chunked" in value.lower()
            elif name == b"connection":
                close = b"close" in value.lower()
        if chunked:
            pieces = []
            while True:
                size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
                if size == 0:
                    await reader.readuntil(b"\r\n")
                    break
                pieces.append((await reader.readexactly(size + 2))[:-2])
            answer = b"".join(pieces)
        elif length is not None:
            answer = await reader.readexactly(length)
        elif status in (204, 304) or status < 200:
            answer = b""
        else:
            answer, close = await reader.read(), True
        if close:
            self.close()
        return status, answer

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
        self._reader = self._writer = None


@dataclass(frozen=True)
class ClientPlan:
    """Who a client is: a user with a gateway token, and two kernels of theirs on one node."""

    index: int
    user: str
    node: str
    #: ``token <t>``: the person's gateway token, for the views
    person: str
    #: ``DLInfra-Kernel <t>`` of each kernel, for what ``%gpu`` calls
    kernel_auth: tuple[str, str]


class Pace:
    """When a client may send its next request: one ``every`` after the last began, at once if
    it is behind, but never more than one interval's worth of requests in a burst."""

    def __init__(self, every: float, phase: float) -> None:
        """``every``: seconds between requests (0: no pacing); ``phase``: the first one's delay,
        so that clients' requests spread over the interval instead of coming together."""
        self.every = every
        self._phase = phase
        self._next: float | None = None

    async def turn(self) -> None:
        delay = self.delay(time.perf_counter())
        if delay > 0:
            await asyncio.sleep(delay)

    def delay(self, now: float) -> float:
        """Seconds from ``now`` until the request to send now may go; takes its turn."""
        if self.every <= 0:
            return 0.0
        if self._next is None:  # the first request: the clock starts now
            self._next = now + self._phase
        at = max(self._next, now)
        self._next = max(self._next, now - self.every) + self.every
        return at - now


class Caller:
    """Requests on one keep-alive connection, each recorded under its route."""

    def __init__(self, port: int, recorder: Recorder, pace: Pace | None = None) -> None:
        """``pace``: when each request but a long poll may go (None: at once)."""
        self.conn = HttpConnection(port)
        self.recorder = recorder
        self.pace = pace

    async def call(
        self,
        route: str,
        method: str,
        path: str,
        authorization: str,
        body: bytes | None = None,
        *,
        expect: int = 200,
        wait: float = 0.0,
    ) -> tuple[int, bytes]:
        """The status and body; status 0 when no answer came (a connection error, a timeout)."""
        if self.pace is not None and not wait:
            await self.pace.turn()
        t0 = time.perf_counter()
        try:
            status, answer = await asyncio.wait_for(
                self.conn.request(method, path, authorization, body), REQUEST_TIMEOUT_S + wait
            )
        except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError, ValueError) as err:
            self.conn.close()
            self.recorder.error(route, f"{type(err).__name__}: {err}")
            return 0, b""
        except ConnectionFailed as err:
            self.conn.close()
            self.recorder.error(route, str(err))
            return 0, b""
        took = time.perf_counter() - t0
        if status != expect:
            self.recorder.error(route, f"HTTP {status} (expected {expect}): {answer[:300]!r}")
        else:
            self.recorder.ok(route, took)
        return status, answer


class Client(Caller):
    """One person's ``%gpu`` cycles and sidebar views on one connection, paced."""

    def __init__(
        self,
        plan: ClientPlan,
        port: int,
        recorder: Recorder,
        *,
        rng: random.Random,
        long_poll_s: float,
        queue_path: str,
        every_s: float = 0.0,
    ) -> None:
        """``every_s``: seconds between the client's requests (0: back to back)."""
        super().__init__(port, recorder, Pace(every_s, rng.uniform(0, every_s)))
        #: the waiting kernel's long polls: a connection of their own (a kernel's, not the
        #: sidebar's), outside the pacing, at most one at a time
        self.poller = Caller(port, recorder)
        self._poll: asyncio.Future[tuple[int, bytes]] | None = None
        self.plan = plan
        self.rng = rng
        self.long_poll_s = long_poll_s
        self.queue_path = queue_path
        self.cycles = 0
        self.ended_at = 0.0

    async def run(self, stop_at: float) -> None:
        plan = self.plan
        base = "/dlinfra/api/allocations"
        mine = f"{base}?user={plan.user}"
        held: tuple[int, int] | None = None  # (allocation id, kernel slot)
        while time.perf_counter() < stop_at:
            self.cycles += 1
            slot = self.cycles % 2
            auth = plan.kernel_auth[slot]
            count = self.rng.choices(ledger_scale.SIZES, ledger_scale.SIZE_WEIGHTS)[0]
            body = json.dumps(
                {"kernel_id": kernel_id_of(plan.index, slot), "count": count, "model": None}
            ).encode()
            status, answer = await self.call(REQUEST, "POST", base, auth, body, expect=201)
            asked = int(json.loads(answer)["id"]) if status == 201 else None
            if asked is not None:
                # half the clients long-poll on odd cycles, half on even ones, beside the cycle
                polling = self._poll is not None and not self._poll.done()
                if self.long_poll_s > 0 and (self.cycles + plan.index) % 2 == 0 and not polling:
                    self._poll = asyncio.ensure_future(
                        self.poller.call(
                            LONG_POLL,
                            "GET",
                            f"{base}/{asked}?wait={self.long_poll_s:g}",
                            auth,
                            wait=self.long_poll_s,
                        )
                    )
                await self.call(STATUS, "GET", f"{base}/{asked}", auth)
            await self.call(QUEUE, "GET", self.queue_path, plan.person)
            await self.call(MINE, "GET", mine, plan.person)
            if held is not None:
                previous, previous_slot = held
                await self.call(
                    RELEASE,
                    "DELETE",
                    f"{base}/{previous}",
                    plan.kernel_auth[previous_slot],
                    expect=204,
                )
            held = None if asked is None else (asked, slot)
        self.ended_at = time.perf_counter()
        if self._poll is not None:
            await self._poll
        self.conn.close()
        self.poller.conn.close()


class Prober(Caller):
    """Grants and releases on a node of its own at a steady pace: the changes the streams time.

    Its two kernels take turns: each step asks for one GPU for one kernel (granted at once: the
    node has no queue), then releases the other kernel's grant of the step before. So its
    granted allocations, which every snapshot lists, go {a}, {a, b}, {b}, {b, c}, {c}...: each
    set is left by exactly one change, and a snapshot shows how far the prober has got."""

    def __init__(
        self, port: int, recorder: Recorder, kernel_auth: tuple[str, str], every_s: float
    ) -> None:
        super().__init__(port, recorder)
        self.kernel_auth = kernel_auth
        self.every_s = every_s
        #: its granted allocations after each of its changes; states[0] before the first
        self.states: list[frozenset[int]] = [frozenset()]
        #: perf_counter just before the request that made change m (changes[m - 1])
        self.changes: list[float] = []
        #: changes are timed until an error leaves its state in the ledger unknown
        self.timed = True

    def changed(self, sent_at: float, *, add: int | None = None, drop: int | None = None) -> None:
        if not self.timed:
            return
        state = set(self.states[-1])
        if add is not None:
            state.add(add)
        if drop is not None:
            state.discard(drop)
        self.states.append(frozenset(state))
        self.changes.append(sent_at)

    async def run(self, stop_at: float) -> None:
        base = "/dlinfra/api/allocations"
        held: tuple[int, int] | None = None
        step = 0
        next_at = time.perf_counter()
        while time.perf_counter() < stop_at:
            step += 1
            slot = step % 2
            body = json.dumps({"kernel_id": PROBE_KERNELS[slot], "count": 1}).encode()
            sent = time.perf_counter()
            status, answer = await self.call(
                PROBE_REQUEST, "POST", base, self.kernel_auth[slot], body, expect=201
            )
            asked: int | None = None
            if status == 201:
                found = json.loads(answer)
                if found["state"] == "granted":
                    asked = int(found["id"])
                    self.changed(sent, add=asked)
                else:
                    self.recorder.error(PROBE_REQUEST, f"not granted at once: {found['state']}")
            if asked is None:
                self.timed = False
            if held is not None:
                previous, previous_slot = held
                sent = time.perf_counter()
                status, _ = await self.call(
                    PROBE_RELEASE,
                    "DELETE",
                    f"{base}/{previous}",
                    self.kernel_auth[previous_slot],
                    expect=204,
                )
                if status == 204:
                    self.changed(sent, drop=previous)
                else:
                    self.timed = False
            held = None if asked is None else (asked, slot)
            next_at += self.every_s
            await asyncio.sleep(max(0.0, next_at - time.perf_counter()))
        self.conn.close()


class EventStream(asyncio.Protocol):
    """One ``GET events`` subscriber. Every stream reads every byte the gateway sends; a timed
    one also notes each snapshot frame's seq and when the frame was read whole.

    Frames are found by their marker, without parsing the chunked encoding or the JSON: the
    gateway writes whole frames per chunk, and a frame's JSON never holds a newline, so the first
    blank line after its marker ends it. Only the analysing stream keeps a frame's bytes."""

    def __init__(
        self,
        request: bytes,
        recorder: Recorder,
        *,
        timed: bool,
        analyse: Callable[..., None] | None = None,
    ) -> None:
        self.request = request
        self.recorder = recorder
        self.timed = timed or analyse is not None
        self.analyse = analyse
        self.seqs: list[int] = []
        self.times: list[float] = []
        self.bytes = 0
        #: done once the first frame came (the subscription exists), or the stream failed
        self.first = asyncio.get_running_loop().create_future()
        self.closing = False
        self.failed = False
        self._transport: asyncio.Transport | None = None
        self._head = b""
        self._in_body = False
        self._carry = b""
        self._seq: int | None = None
        self._delta = False
        #: the frame being read ended with a newline at the end of the last read
        self._newline = False
        self._parts: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        now = time.perf_counter()
        if not self._in_body:
            self._head += data
            end = self._head.find(b"\r\n\r\n")
            if end < 0:
                return
            head, data = self._head[:end], self._head[end + 4 :]
            self._head = b""
            self._in_body = True
            if not head.startswith(b"HTTP/1.1 200"):
                status_line = head.partition(b"\r\n")[0]
                self.fail(f"refused: {status_line!r}")
                return
        self.bytes += len(data)
        if self.timed:
            self._scan(data, now)
        elif data and not self.first.done():
            self.first.set_result(None)

    def _scan(self, data: bytes, now: float) -> None:
        pos = 0
        if self._seq is not None and self._newline:
            self._newline = False
            if data[:1] == b"\n":  # the blank line that ends the frame was cut in two
                self._read_whole(now)
                pos = 1
        if self._carry:
            # only between frames (a marker may be cut): a few bytes before a frame's start
            data = self._carry + data[pos:]
            pos = 0
            self._carry = b""
        size = len(data)
        while pos < size:
            if self._seq is None:
                found = [(data.find(mark, pos), mark) for mark in _MARKS]
                found = [(at, mark) for at, mark in found if at >= 0]
                if not found:
                    self._carry = data[max(pos, size - _LONGEST_MARK + 1) :]
                    return
                at, mark = min(found)
                digits = at + len(mark)
                comma = data.find(b",", digits, digits + 24)
                if comma < 0:
                    if size - digits < 24:
                        self._carry = data[at:]  # the seq is cut: read it with what comes next
                        return
                    self.fail(f"a state frame without a seq: {data[at : at + 80]!r}")
                    return
                self._seq = int(data[digits:comma])
                self._delta = mark is _MARKS[1]
                pos = at + mark.index(b"{")
            end = data.find(b"\n\n", pos)
            if end < 0:
                if self.analyse is not None:
                    self._parts.append(data[pos:])
                self._newline = data.endswith(b"\n")
                return
            if self.analyse is not None:
                self._parts.append(data[pos:end])
            self._read_whole(now)
            pos = end + 2

    def _read_whole(self, now: float) -> None:
        assert self._seq is not None
        if self.analyse is not None:
            self.analyse(self._seq, b"".join(self._parts), delta=self._delta)
            self._parts = []
        self.seqs.append(self._seq)
        self.times.append(now)
        self._seq = None
        if not self.first.done():
            self.first.set_result(None)

    def fail(self, what: str) -> None:
        if not self.failed and not self.closing:
            self.failed = True
            self.recorder.error(EVENTS, what)
        if not self.first.done():
            self.first.set_result(None)
        if self._transport is not None:
            self._transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.fail(f"the stream ended early ({exc or 'closed by the gateway'})")

    def close(self) -> None:
        self.closing = True
        if self._transport is not None:
            self._transport.close()


class SnapshotLog:
    """What each snapshot showed of the prober (read from the analysing stream's frames: the
    whole snapshot it began with, then each delta applied to what it showed)."""

    def __init__(self) -> None:
        #: seq -> the ids of the prober's granted allocations the snapshot lists
        self.shown: dict[int, frozenset[int]] = {}
        self.frame_bytes: list[int] = []
        self.queue_length: int | None = None
        self._held: frozenset[int] = frozenset()

    def analyse(self, seq: int, frame: bytes, *, delta: bool) -> None:
        if delta:
            body = json.loads(frame)
            probed = {a["id"] for a in body["allocations"] if a["kernel_id"] in PROBE_KERNELS}
            self._held = (self._held - set(body["allocations_gone"])) | probed
            self.queue_length = int(body["queue_length"])
        else:
            # megabytes at a thousand nodes: found by their marks, not parsed
            self._held = frozenset(int(m.group(1)) for m in _PROBE_ALLOCATION.finditer(frame))
            queue = _QUEUE_LENGTH.findall(frame)
            if queue:
                self.queue_length = int(queue[-1])
        self.shown[seq] = self._held
        self.frame_bytes.append(len(frame))


# -- event delay ------------------------------------------------------------------------------


@dataclass
class Delays:
    #: sorted delays (s) of every (change, stream) pair, the unseen ones with the time they waited
    values: list[float]
    changes: int
    unseen_pairs: int
    #: changes no snapshot showed by the end
    unseen_changes: int


def first_showing(
    states: Sequence[frozenset[int]], shown: dict[int, frozenset[int]]
) -> list[int | None]:
    """Per change (the one that left ``states[m]``, m >= 1), the first snapshot seq that shows it
    or a later state; None when none did."""
    index = {state: m for m, state in enumerate(states)}
    firsts: list[int | None] = [None] * len(states)
    reached = 0  # how far the snapshots so far showed the prober
    for seq in sorted(shown):
        m = index.get(shown[seq])
        # None: a set no change left behind (a snapshot read across an error): no progress
        if m is not None and m > reached:
            for change in range(reached + 1, m + 1):
                firsts[change] = seq
            reached = m
    return firsts[1:]


def event_delays(
    prober: Prober, streams: Sequence[EventStream], log: SnapshotLog, closed_at: float
) -> Delays:
    # changes grouped by the first snapshot that shows them: one look-up per stream and group
    groups: dict[int | None, list[float]] = defaultdict(list)
    firsts = first_showing(prober.states, log.shown)
    for sent_at, seq in zip(prober.changes, firsts, strict=True):
        groups[seq].append(sent_at)
    values: list[float] = []
    unseen_pairs = 0
    for stream in (s for s in streams if s.timed):
        for seq, sent in groups.items():
            i = len(stream.seqs) if seq is None else bisect.bisect_left(stream.seqs, seq)
            if i < len(stream.seqs):
                arrived = stream.times[i]
                values.extend(arrived - s for s in sent)
            else:
                unseen_pairs += len(sent)
                values.extend(closed_at - s for s in sent)
    values.sort()
    return Delays(
        values=values,
        changes=len(prober.changes),
        unseen_pairs=unseen_pairs,
        unseen_changes=len(groups.get(None, ())),
    )


def nearest_rank(ordered: Sequence[float], pct: float) -> float:
    if not ordered:
        return math.nan
    return float(ordered[max(1, math.ceil(pct / 100 * len(ordered))) - 1])


# -- setup ------------------------------------------------------------------------------------


def full_nodes(seed: ledger_scale.Seed) -> list[str]:
    """Nodes with no free GPU (a request there queues), else the fullest ones."""
    free: dict[str, int] = defaultdict(int)
    for s in seed.slots:
        free[s.node] += 1
    for a in seed.granted():
        free[a.node] -= len(a.gpus)
    full = sorted(n for n, f in free.items() if f <= 0)
    if full:
        return full
    least = min(free.values())
    return sorted(n for n, f in free.items() if f == least)


def gateway_config(seed: ledger_scale.Seed) -> str:
    """The gateway's configuration file: the seed's policy and groups, as an admin writes them."""
    policy = seed.policy
    groups = {
        f"u{i:03d}": list(ledger_scale.groups_of(f"u{i:03d}")) for i in range(ledger_scale.USERS)
    }
    lines = [
        "# written by benchmarks/gateway_load.py: the policy the ledger was seeded under",
        f"c.DLInfra.admin_users = [{ADMIN!r}]",
        "c.DLInfra.unix_groups = False",
        f"c.DLInfra.user_groups = {groups!r}",
        f"c.DLInfra.group_shares = {dict(policy.group_shares)!r}",
        f"c.DLInfra.group_quotas = {dict(policy.group_quotas)!r}",
        f"c.DLInfra.user_quotas = {dict(policy.user_quotas)!r}",
    ]
    return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class Plan:
    """Everything an admin and the provisioner made before the gateway starts."""

    clients: list[ClientPlan]
    #: the prober's kernels' ``DLInfra-Kernel <t>``
    probe_auth: tuple[str, str]
    #: a token of the admin (the one the harness checks the gateway with)
    admin: str


def make_plan(store: Store, seed: ledger_scale.Seed, clients: int, rng: random.Random) -> Plan:
    """People's tokens as ``jupyter dlinfra token issue`` makes them, kernels as the provisioner
    registers a launch, and the prober's node of free GPUs (its inventory, as telemetry syncs
    a node's)."""
    book = TokenBook(store, SystemClock())
    ledger = Ledger(store, SystemClock(), policy=seed.policy, groups_of=ledger_scale.groups_of)

    def kernel(kernel_id: str, user: str, node: str) -> str:
        token = secrets.token_urlsafe(32)
        record = KernelRecord(
            kernel_id=kernel_id,
            user=user,
            node=node,
            server_id=SERVER_ID,
            kernel_name="python3",
            path=f"/home/{user}/{kernel_id}.ipynb",
        )
        ledger.register_kernel(record, token_hash=hash_secret(token))
        return f"DLInfra-Kernel {token}"

    nodes = full_nodes(seed)
    plans = []
    for index in range(clients):
        user = f"u{index % ledger_scale.USERS:03d}"
        issued = book.issue(user, label=f"gateway_load client {index}", by=ADMIN)
        node = rng.choice(nodes)
        plans.append(
            ClientPlan(
                index=index,
                user=user,
                node=node,
                person=f"token {issued.token}",
                kernel_auth=(
                    kernel(kernel_id_of(index, 0), user, node),
                    kernel(kernel_id_of(index, 1), user, node),
                ),
            )
        )
    model = seed.slots[0].model
    ledger.sync_inventory(
        PROBE_NODE,
        [
            Gpu(
                uuid=f"GPU-probe-{i}",
                node=PROBE_NODE,
                index=i,
                model=model,
                memory_bytes=80 << 30,
                simulated=True,
            )
            for i in range(GPUS_PER_NODE)
        ],
    )
    probe = (
        kernel(PROBE_KERNELS[0], PROBE_USER, PROBE_NODE),
        kernel(PROBE_KERNELS[1], PROBE_USER, PROBE_NODE),
    )
    admin = book.issue(ADMIN, label="gateway_load", by=ADMIN).token
    return Plan(clients=plans, probe_auth=probe, admin=admin)


def raise_open_files() -> None:
    """Every stream and client is a socket here and in the gateway (which inherits this)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = 65536 if hard == resource.RLIM_INFINITY else min(hard, 65536)
    if soft != resource.RLIM_INFINITY and soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))


# -- the run ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Options:
    nodes: int = NODES
    waiting: int = WAITING
    clients: int = CLIENTS
    streams: int = STREAMS
    duration_s: float = DURATION_S
    long_poll_s: float = LONG_POLL_S
    queue_limit: int = QUEUE_LIMIT
    seed: int = SEED
    #: requests/s the clients offer together, long polls not counted (0: back to back)
    rate: float = TARGET_RPS
    #: seconds of the baseline run
    floor_s: float = FLOOR_S
    #: seconds each client route runs alone to measure its CPU (0: not measured)
    route_cost_s: float = ROUTE_COST_S

    @property
    def every_s(self) -> float:
        """Seconds between one client's requests (0: no pacing)."""
        return self.clients / self.rate if self.rate > 0 else 0.0


@dataclass
class Report:
    options: Options
    recorder: Recorder
    clients: list[Client]
    prober: Prober
    streams: list[EventStream]
    log: SnapshotLog
    #: from the clients' start to the last one's end (s)
    wall_s: float
    #: when the streams were closed (perf_counter): what an unseen change waited until
    closed_at: float
    gateway_cpu_s: float
    harness_cpu_s: float
    #: bytes the streams read while the clients ran
    stream_bytes: int
    seed_s: float = 0.0
    start_s: float = 0.0
    #: the baseline: /api/status answered per second, and the gateway's CPU s per answer
    floor_rps: float = math.nan
    floor_cpu_s: float = math.nan
    #: route -> (answers/s, gateway CPU s per answer), each route alone back to back
    route_costs: dict[str, tuple[float, float]] = field(default_factory=dict)

    @property
    def served(self) -> list[float]:
        """Latencies of every answered request but long polls, sorted."""
        return sorted(
            s
            for route, values in self.recorder.latencies.items()
            if route not in WAITING_ROUTES
            for s in values
        )

    @property
    def requests_per_s(self) -> float:
        return len(self.served) / self.wall_s if self.wall_s > 0 else 0.0

    @property
    def errors(self) -> int:
        return self.recorder.total_errors

    @functools.cached_property
    def delays(self) -> Delays:
        return event_delays(self.prober, self.streams, self.log, self.closed_at)


def _cpu_s(proc: psutil.Process) -> float:
    times = proc.cpu_times()
    return float(times.user + times.system)


async def framework_floor(
    port: int, plan: Plan, proc: psutil.Process, seconds: float = FLOOR_S
) -> tuple[float, float]:
    """The baseline: jupyter_server's ``GET /api/status`` back to back from every client for
    ``seconds``; answers per second and the gateway's CPU seconds per answer."""
    recorder = Recorder()
    callers = [(Caller(port, recorder), client.person) for client in plan.clients]
    cpu0 = _cpu_s(proc)
    t0 = time.perf_counter()
    stop_at = t0 + seconds

    async def run(caller: Caller, person: str) -> None:
        while time.perf_counter() < stop_at:
            await caller.call(FLOOR, "GET", "/api/status", person)
        caller.conn.close()

    await asyncio.gather(*(run(caller, person) for caller, person in callers))
    wall, cpu = time.perf_counter() - t0, _cpu_s(proc) - cpu0
    answered = len(recorder.latencies[FLOOR])
    if recorder.total_errors or not answered:
        raise RuntimeError(f"the baseline run failed: {recorder.first_errors}")
    return answered / wall, cpu / answered


async def route_costs(
    port: int, plan: Plan, proc: psutil.Process, seconds: float, queue_path: str
) -> dict[str, tuple[float, float]]:
    """Each client route alone, from every client back to back for ``seconds``: answers per
    second and the gateway's CPU seconds per answer, by route (no event stream open). Where the
    CPU of the product's mix goes, next to the baseline's; a request and the cancel of it run
    as pairs (the queue keeps its length), a status reads the client's one queued request."""
    base = "/dlinfra/api/allocations"
    costs: dict[str, tuple[float, float]] = {}

    async def one(client: ClientPlan, caller: Caller, route: str, asked: int) -> None:
        auth = client.kernel_auth[0]
        if route == REQUEST:
            body = json.dumps(
                {"kernel_id": kernel_id_of(client.index, 1), "count": 1, "model": None}
            ).encode()
            status, answer = await caller.call(
                REQUEST, "POST", base, client.kernel_auth[1], body, expect=201
            )
            if status == 201:
                await caller.call(
                    RELEASE,
                    "DELETE",
                    f"{base}/{int(json.loads(answer)['id'])}",
                    client.kernel_auth[1],
                    expect=204,
                )
        elif route == STATUS:
            await caller.call(STATUS, "GET", f"{base}/{asked}", auth)
        elif route == QUEUE:
            await caller.call(QUEUE, "GET", queue_path, client.person)
        else:
            await caller.call(MINE, "GET", f"{base}?user={client.user}", client.person)

    callers = [Caller(port, Recorder()) for _ in plan.clients]
    held: list[int] = []
    for client, caller in zip(plan.clients, callers, strict=True):
        body = json.dumps({"kernel_id": kernel_id_of(client.index, 0), "count": 1}).encode()
        _, answer = await caller.call(
            REQUEST, "POST", base, client.kernel_auth[0], body, expect=201
        )
        held.append(int(json.loads(answer)["id"]))
    for route in (REQUEST, STATUS, QUEUE, MINE):
        recorder = Recorder()
        for caller in callers:
            caller.recorder = recorder
        cpu0 = _cpu_s(proc)
        t0 = time.perf_counter()
        stop_at = t0 + seconds

        async def run(
            client: ClientPlan, caller: Caller, asked: int, route: str, stop_at: float
        ) -> None:
            while time.perf_counter() < stop_at:
                await one(client, caller, route, asked)

        await asyncio.gather(
            *(run(*args, route, stop_at) for args in zip(plan.clients, callers, held, strict=True))
        )
        wall, cpu = time.perf_counter() - t0, _cpu_s(proc) - cpu0
        answered = sum(len(v) for v in recorder.latencies.values())
        if recorder.total_errors or not answered:
            raise RuntimeError(f"the route cost run failed: {recorder.first_errors}")
        name = f"{REQUEST} + {RELEASE}" if route == REQUEST else route
        costs[name] = (answered / wall, cpu / answered)
    for client, caller, asked in zip(plan.clients, callers, held, strict=True):
        await caller.call(RELEASE, "DELETE", f"{base}/{asked}", client.kernel_auth[0], expect=204)
        caller.conn.close()
    return costs


async def drive(gateway: ServerProcess, plan: Plan, options: Options) -> Report:
    """Open the streams, run the clients and the prober, let the streams catch up; close all."""
    queue_path = f"/dlinfra/api/queue?limit={options.queue_limit}"
    loop = asyncio.get_running_loop()
    recorder = Recorder()
    log = SnapshotLog()
    streams: list[EventStream] = []
    # reading a frame whole costs a pass over its bytes: a spread sample of streams is timed
    timed_every = math.ceil(options.streams / TIMED_STREAMS)
    for i in range(options.streams):
        person = plan.clients[i % len(plan.clients)].person
        request = (
            f"GET /dlinfra/api/events HTTP/1.1\r\nHost: 127.0.0.1:{gateway.port}\r\n"
            f"Authorization: {person}\r\nAccept: text/event-stream\r\n\r\n"
        ).encode()
        streams.append(
            EventStream(
                request,
                recorder,
                timed=i % timed_every == 0,
                analyse=log.analyse if i == 0 else None,
            )
        )

    async def connect(stream: EventStream) -> None:
        try:
            await loop.create_connection(lambda: stream, "127.0.0.1", gateway.port)
        except OSError as err:
            stream.fail(f"cannot connect: {err}")

    rng = random.Random(options.seed)
    clients = [
        Client(
            client,
            gateway.port,
            recorder,
            rng=random.Random(rng.random()),
            long_poll_s=options.long_poll_s,
            queue_path=queue_path,
            every_s=options.every_s,
        )
        for client in plan.clients
    ]
    prober = Prober(gateway.port, recorder, plan.probe_auth, PROBE_EVERY_S)
    assert gateway.proc is not None
    proc, me = psutil.Process(gateway.proc.pid), psutil.Process()
    floor_rps, floor_cpu_s = await framework_floor(gateway.port, plan, proc, options.floor_s)
    costs = (
        await route_costs(gateway.port, plan, proc, options.route_cost_s, queue_path)
        if options.route_cost_s > 0
        else {}
    )
    try:
        opened = time.perf_counter()
        await asyncio.gather(*(connect(s) for s in streams))
        await asyncio.wait_for(asyncio.gather(*(s.first for s in streams)), START_TIMEOUT_S)
        print(
            f"{len(streams)} event streams open (first frames read in "
            f"{time.perf_counter() - opened:.1f} s); the clients run for {options.duration_s:g} s",
            flush=True,
        )
        cpu0, mine0 = _cpu_s(proc), _cpu_s(me)
        bytes0 = sum(s.bytes for s in streams)
        t0 = time.perf_counter()
        stop_at = t0 + options.duration_s
        await asyncio.gather(prober.run(stop_at), *(c.run(stop_at) for c in clients))
        wall = max(c.ended_at for c in clients) - t0
        gateway_cpu, harness_cpu = _cpu_s(proc) - cpu0, _cpu_s(me) - mine0
        stream_bytes = sum(s.bytes for s in streams) - bytes0
        await settle(prober, streams, log)
        closed_at = time.perf_counter()
    finally:
        for s in streams:
            s.close()
    return Report(
        options=options,
        recorder=recorder,
        clients=clients,
        prober=prober,
        streams=streams,
        log=log,
        wall_s=wall,
        closed_at=closed_at,
        gateway_cpu_s=gateway_cpu,
        harness_cpu_s=harness_cpu,
        stream_bytes=stream_bytes,
        floor_rps=floor_rps,
        floor_cpu_s=floor_cpu_s,
        route_costs=costs,
    )


async def settle(prober: Prober, streams: Sequence[EventStream], log: SnapshotLog) -> None:
    """Wait (at most SETTLE_S) until a snapshot shows the prober's last state and every live
    stream has read it."""
    deadline = time.perf_counter() + SETTLE_S
    target: int | None = None
    while time.perf_counter() < deadline:
        if target is None and log.shown and log.shown[max(log.shown)] == prober.states[-1]:
            target = max(log.shown)
        if target is not None and all(
            s.failed or not s.timed or (s.seqs and s.seqs[-1] >= target) for s in streams
        ):
            return
        await asyncio.sleep(0.05)


def run(options: Options, pg_url: str | None) -> Report:
    """Set up (PostgreSQL, the seeded ledger, tokens, kernels, the gateway), drive, tear down."""
    raise_open_files()
    with contextlib.ExitStack() as stack:
        server = ledger_scale.postgres_server(stack, pg_url)
        if server is None:
            raise SystemExit("error: no PostgreSQL (see above); give one with --pg-url")
        url = stack.enter_context(ledger_scale.fresh_database(server))
        t0 = time.perf_counter()
        seed = ledger_scale.Seeder(
            ledger_scale.Config(options.nodes, options.waiting), seed=options.seed
        ).build()
        store = Store(url)
        try:
            ledger_scale.write_seed(store, seed)
            plan = make_plan(store, seed, options.clients, random.Random(options.seed))
        finally:
            store.dispose()
        seed_s = time.perf_counter() - t0
        print(
            f"seeded in {seed_s:.1f} s (setup): {options.nodes} nodes x {GPUS_PER_NODE} GPUs, "
            f"{seed.waiting:,} waiting, {len(seed.allocations):,} allocations; "
            f"{options.clients} clients on {len({c.node for c in plan.clients})} full nodes",
            flush=True,
        )
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="gateway-load-")))
        # ServerProcess points JUPYTER_CONFIG_DIR at workdir/config
        (workdir / "config").mkdir()
        (workdir / "config" / "jupyter_dlinfra_gateway_config.py").write_text(gateway_config(seed))
        gateway = ServerProcess(
            workdir, db_url=url, simulated_gpus=1, token=plan.admin, program=GATEWAY
        )
        t0 = time.perf_counter()
        try:
            gateway.start(timeout=START_TIMEOUT_S)
            start_s = time.perf_counter() - t0
            print(f"gateway started in {start_s:.1f} s", flush=True)
            report = asyncio.run(drive(gateway, plan, options))
        except BaseException:
            text = gateway.log_text()
            if text:
                print(f"--- gateway log (tail) ---\n{text[-3000:]}", file=sys.stderr)
            raise
        finally:
            gateway.stop()
    report.seed_s, report.start_s = seed_s, start_s
    return report


# -- output -----------------------------------------------------------------------------------


def _ms(seconds: float) -> str:
    if math.isnan(seconds):
        return "-"
    ms = seconds * 1000
    return f"{ms:,.0f}" if ms >= 100 else f"{ms:.1f}" if ms >= 1 else f"{ms:.2f}"


def format_report(report: Report) -> str:
    o = report.options
    rec = report.recorder
    lines = [
        f"gateway load: {o.nodes} nodes x {GPUS_PER_NODE} GPUs, {o.waiting:,} waiting, "
        f"{o.clients} clients, {o.streams} event streams, {report.wall_s:.1f} s "
        f"(long polls of {o.long_poll_s:g} s every other cycle; queue pages of "
        f"{o.queue_limit}); PostgreSQL; "
        + (
            f"offered {o.rate:,.0f} requests/s (each client one every {o.every_s:.3g} s)"
            if o.rate > 0
            else "clients back to back (no pacing)"
        ),
        f"{'route':<32}{'requests':>9}{'errors':>8}{'p50 ms':>9}{'p99 ms':>9}{'max ms':>9}",
    ]
    for route in ROUTES:
        values = sorted(rec.latencies.get(route, ()))
        if route == EVENTS:
            count = len(report.streams)
            p50 = p99 = top = math.nan
        else:
            count = len(values)
            p50, p99 = nearest_rank(values, 50), nearest_rank(values, 99)
            top = values[-1] if values else math.nan
        lines.append(
            f"{route:<32}{count:>9}{rec.errors.get(route, 0):>8}{_ms(p50):>9}{_ms(p99):>9}"
            f"{_ms(top):>9}"
        )
    served = report.served
    lines.append(
        f"{'all but long polls':<32}{len(served):>9}{rec.total_errors:>8}"
        f"{_ms(nearest_rank(served, 50)):>9}{_ms(nearest_rank(served, 99)):>9}"
        f"{_ms(served[-1] if served else math.nan):>9}"
    )
    d = report.delays
    frames = report.log.frame_bytes
    timed = [s for s in report.streams if s.timed]
    received = [len(s.seqs) for s in timed]
    built = max(report.log.shown, default=0) - min(report.log.shown, default=1) + 1
    lines += [
        f"client cycles: {sum(c.cycles for c in report.clients):,}; prober changes timed: "
        f"{d.changes:,}, at {len(timed)} of the {len(report.streams)} streams (all read "
        f"everything: {report.stream_bytes / 2**20 / report.wall_s:,.1f} MiB/s in all)",
        f"snapshots: {built:,} built, {min(received, default=0)}..{max(received, default=0)} "
        f"read per timed stream; the whole one {frames[0] / 1024 if frames else 0:,.0f} KiB, "
        f"a delta {(sum(frames[1:]) / len(frames[1:]) / 1024) if frames[1:] else 0:,.1f} KiB "
        f"on average; queue length in the last one: {report.log.queue_length}",
        f"event delay (change -> snapshot read, per change and stream): p50 "
        f"{_ms(nearest_rank(d.values, 50))} ms, p99 {_ms(nearest_rank(d.values, 99))} ms, max "
        f"{_ms(d.values[-1] if d.values else math.nan)} ms; pairs unseen after {SETTLE_S:g} s: "
        f"{d.unseen_pairs:,} ({d.unseen_changes} changes no snapshot showed)",
        f"CPU seconds per second: gateway {report.gateway_cpu_s / report.wall_s:.2f}, load "
        f"generator {report.harness_cpu_s / report.wall_s:.2f} (PostgreSQL not counted)"
        if report.wall_s > 0
        else "CPU: -",
    ]
    if rec.first_errors:
        lines.append("first errors:")
        lines += [f"  {e}" for e in rec.first_errors]
    rps, p99, ep99 = result_figures(report)
    if report.wall_s > 0 and served:
        # the gateway's CPU also builds and writes the streams' frames: counted per request
        per_request = report.gateway_cpu_s / len(served)
        lines.append(
            f"baseline (jupyter_server's GET /api/status, the same clients back to back): "
            f"{report.floor_rps:,.0f} requests/s, gateway CPU {report.floor_cpu_s * 1000:.2f} ms "
            f"per request; the product's routes: {rps / report.floor_rps:.1%} of its rate, "
            f"{per_request * 1000:.2f} ms CPU per request ({per_request / report.floor_cpu_s:.1f}x)"
        )
    for route, (alone_rps, cpu_s) in report.route_costs.items():
        lines.append(
            f"  alone, back to back: {route}: {alone_rps:,.0f} answers/s, gateway CPU "
            f"{cpu_s * 1000:.2f} ms per answer ({cpu_s / report.floor_cpu_s:.1f}x the baseline's)"
        )
    kept_up = rps >= TARGET_RPS if o.rate <= 0 else o.rate >= TARGET_RPS and rps >= KEPT_UP * o.rate
    lines.append(
        f"answered {rps:,.1f} requests/s (the prober's among them)"
        + (f" of the {o.rate:,.0f} offered ({100 * rps / o.rate:.0f} %)" if o.rate > 0 else "")
    )
    met = kept_up and p99 < TARGET_P99_MS and ep99 < TARGET_EVENT_P99_MS and report.errors == 0
    lines.append(
        f"targets (issue 15): >= {TARGET_RPS:.0f} requests/s (an offered {TARGET_RPS:.0f} kept "
        f"up with), p99 < {TARGET_P99_MS:.0f} ms, "
        f"event p99 < {TARGET_EVENT_P99_MS:.0f} ms, 0 errors: {'met' if met else 'MISSED'}"
    )
    lines.append(
        f"RESULT requests_per_s={rps:.1f} p99_ms={p99:.1f} event_p99_ms={ep99:.1f} "
        f"errors={report.errors}"
    )
    return "\n".join(lines)


def result_figures(report: Report) -> tuple[float, float, float]:
    """requests/s, p99 (ms) of served requests, event delay p99 (ms); nan where none."""
    return (
        report.requests_per_s,
        nearest_rank(report.served, 99) * 1000,
        nearest_rank(report.delays.values, 99) * 1000,
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--nodes", type=int, default=NODES, help=f"nodes of 8 GPUs ({NODES})")
    parser.add_argument("--waiting", type=int, default=WAITING, help=f"queued ({WAITING})")
    parser.add_argument("--clients", type=int, default=CLIENTS, help=f"({CLIENTS})")
    parser.add_argument("--streams", type=int, default=STREAMS, help=f"({STREAMS})")
    parser.add_argument("--duration-s", type=float, default=DURATION_S, help=f"({DURATION_S:g})")
    parser.add_argument(
        "--long-poll-s",
        type=float,
        default=LONG_POLL_S,
        help=f"wait of every other status call, 0 to 60 (0: none; {LONG_POLL_S:g})",
    )
    parser.add_argument(
        "--queue-limit",
        type=int,
        default=QUEUE_LIMIT,
        help=f"the queue view's page ({QUEUE_LIMIT})",
    )
    parser.add_argument(
        "--rate",
        type=float,
        default=TARGET_RPS,
        help=f"requests/s the clients offer together, 0: back to back ({TARGET_RPS:g})",
    )
    parser.add_argument(
        "--floor-s",
        type=float,
        default=FLOOR_S,
        help=f"seconds of the baseline run, GET /api/status ({FLOOR_S:g})",
    )
    parser.add_argument(
        "--route-cost-s",
        type=float,
        default=ROUTE_COST_S,
        help=f"seconds each route runs alone to measure its CPU, 0: skip ({ROUTE_COST_S:g})",
    )
    parser.add_argument("--pg-url", default=None, help="a PostgreSQL server (role with CREATEDB)")
    parser.add_argument("--seed", type=int, default=SEED)
    args = parser.parse_args(argv)
    if args.nodes < 1 or args.waiting < 0 or args.clients < 1 or args.streams < 1:
        parser.error("--nodes, --clients and --streams must be >= 1, --waiting >= 0")
    if args.duration_s <= 0 or not 0 <= args.long_poll_s <= 60 or args.queue_limit < 1:
        parser.error("--duration-s must be > 0, --long-poll-s 0 to 60, --queue-limit >= 1")
    if not 0 <= args.rate < math.inf:
        parser.error("--rate must be 0 (back to back) or more")
    if not 0 < args.floor_s < math.inf:
        parser.error("--floor-s must be more than 0")
    options = Options(
        nodes=args.nodes,
        waiting=args.waiting,
        clients=args.clients,
        streams=args.streams,
        duration_s=args.duration_s,
        long_poll_s=args.long_poll_s,
        queue_limit=args.queue_limit,
        seed=args.seed,
        rate=args.rate,
        floor_s=args.floor_s,
        route_cost_s=max(args.route_cost_s, 0.0),
    )
    report = run(options, args.pg_url)
    print(format_report(report), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
