"""benchmarks/gateway_load.py at a tiny size (4 nodes of 8 GPUs, 4 clients, 4 event streams, a
few seconds): a real gateway on PostgreSQL answers every route without an error, the event
streams show the prober's changes, and the run ends with its RESULT line; its load generator
counts an error answer as an error and reads a prober's progress from snapshots. No timing is
asserted."""

from __future__ import annotations

import asyncio
import math
import re
from types import SimpleNamespace

import pytest
from bench_module import load_benchmark
from tornado import httpserver, testing, web

bench = load_benchmark("gateway_load")

RESULT_KEYS = ["requests_per_s", "p99_ms", "event_p99_ms", "errors"]


@pytest.mark.timeout(180)
def test_a_tiny_run_answers_every_route(
    postgres_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["--nodes", "4", "--waiting", "20", "--clients", "4", "--streams", "4"]
    argv += ["--duration-s", "4", "--long-poll-s", "0.2", "--floor-s", "1"]
    argv += ["--pg-url", postgres_url]
    assert bench.main(argv) == 0
    out = capsys.readouterr().out
    rows = {}
    longest_first = sorted(bench.ROUTES, key=len, reverse=True)
    for line in out.splitlines():
        route = next((r for r in longest_first if line.startswith(r + " ")), None)
        if route is not None:
            count, errors = line[len(route) :].split()[:2]
            rows[route] = (int(count), int(errors))
    assert set(rows) == set(bench.ROUTES), out
    assert all(count > 0 and errors == 0 for count, errors in rows.values()), rows
    last = out.strip().splitlines()[-1]
    assert re.fullmatch(r"RESULT( [a-z_0-9]+=\d+(\.\d+)?)+", last), last
    fields = dict(kv.split("=") for kv in last.split()[1:])
    assert list(fields) == RESULT_KEYS
    assert int(fields["errors"]) == 0
    assert float(fields["requests_per_s"]) > 0
    assert math.isfinite(float(fields["event_p99_ms"])) and float(fields["event_p99_ms"]) > 0
    assert "(0 changes no snapshot showed)" in out
    baseline = re.search(r"baseline .*: ([\d,]+) requests/s, gateway CPU ([\d.]+) ms", out)
    assert baseline is not None, out
    assert float(baseline[1].replace(",", "")) > 0 and float(baseline[2]) > 0


class _Answer(web.RequestHandler):
    def get(self, code: str) -> None:
        self.set_status(int(code))
        self.finish({"message": f"answered {code}", "reason": "test"})


def test_error_answers_are_counted() -> None:
    async def scenario() -> tuple[object, list[int]]:
        sock, port = testing.bind_unused_port()
        server = httpserver.HTTPServer(web.Application([(r"/answer/(\d+)", _Answer)]))
        server.add_sockets([sock])
        recorder = bench.Recorder()
        caller = bench.Caller(port, recorder)
        statuses = []
        try:
            for path, expect in (("200", 200), ("503", 200), ("200", 201), ("404", 200)):
                status, _ = await caller.call("route", "GET", f"/answer/{path}", "x", expect=expect)
                statuses.append(status)
        finally:
            caller.conn.close()
            server.stop()
        return recorder, statuses

    recorder, statuses = asyncio.run(scenario())
    # one keep-alive connection carried every answer, errors included
    assert statuses == [200, 503, 200, 404]
    assert recorder.errors == {"route": 3}
    assert len(recorder.latencies["route"]) == 1
    assert recorder.first_errors[0].startswith("route: HTTP 503 (expected 200)")


def test_the_probers_progress_is_read_from_snapshots() -> None:
    a, b, c = 11, 12, 13
    states = [frozenset(s) for s in ([], [a], [a, b], [b], [b, c])]
    shown = {
        1: frozenset(),
        2: frozenset({a, b}),  # {a} was never shown: changes 1 and 2 first show here
        3: frozenset({a, b}),
        4: frozenset({a, b, 99}),  # a set no change left behind: no progress
        5: frozenset({b, c}),  # skips {b}: changes 3 and 4
    }
    assert bench.first_showing(states, shown) == [2, 2, 5, 5]
    assert bench.first_showing(states, {1: frozenset({a})}) == [1, None, None, None]

    prober = SimpleNamespace(states=states, changes=[0.0, 1.0, 2.0, 3.0])
    log = SimpleNamespace(shown=shown)
    seen = SimpleNamespace(timed=True, seqs=[1, 3, 5], times=[0.5, 3.5, 10.0])
    late = SimpleNamespace(timed=True, seqs=[1], times=[0.5])
    untimed = SimpleNamespace(timed=False, seqs=[], times=[])
    delays = bench.event_delays(prober, [seen, late, untimed], log, closed_at=20.0)
    # seen: changes 1, 2 at seq 3 (3.5 s), 3, 4 at seq 5 (10 s); late: none, so until closed
    assert delays.values == sorted([3.5, 2.5, 8.0, 7.0, 20.0, 19.0, 18.0, 17.0])
    assert (delays.changes, delays.unseen_pairs, delays.unseen_changes) == (4, 4, 0)


def test_pacing_offers_the_rate_and_catches_up_one_interval_at_most() -> None:
    pace = bench.Pace(0.4, phase=0.1)
    assert pace.delay(100.0) == pytest.approx(0.1)  # the first turn waits for its phase
    assert pace.delay(100.1) == pytest.approx(0.4)  # then one every 0.4 s
    assert pace.delay(100.5) == pytest.approx(0.4)
    # answered late (a long poll): the next goes at once, and so does one more, no more
    assert pace.delay(103.0) == 0.0
    assert pace.delay(103.0) == 0.0
    assert pace.delay(103.0) == pytest.approx(0.4)
    assert bench.Pace(0.0, phase=0.0).delay(5.0) == 0.0  # --rate 0: back to back
