"""The ledger's PostgreSQL goes away under running servers, and comes back.

A PostgreSQL of this test's own (the session's is shared by other tests), a server whose ledger it
is and a team gateway on the same ledger. While PostgreSQL is stopped, the API answers 503 with a
message and Retry-After (not 500s and tracebacks), an open event stream says so, a kernel shuts
down cleanly, and each server says once that the database is away. Started again on the same port
and data, everything works again without a restart: the API answers, the stream goes on, the
GPUs of the kernel that ended meanwhile are given back, and a new kernel's request is granted.
"""

from __future__ import annotations

import http.client
import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from postgres_server import PostgresServer, PostgresUnavailable, postgres_optional, run_postgres

from jupyter_dlinfra.core.books.tokens import TokenBook
from jupyter_dlinfra.core.clock import SystemClock
from jupyter_dlinfra.core.store import Store
from jupyter_dlinfra.testing.event_stream import apply_delta
from jupyter_dlinfra.testing.server import ServerProcess, wait_until

GATEWAY = ("-m", "jupyter_dlinfra.cli", "gateway")
UNREACHABLE = "the GPU ledger's database is unreachable; try again shortly"
#: said once per outage by each server (server/ledger_health.py)
AWAY_LINE = "the GPU ledger's database does not answer"
BACK_LINE = "the GPU ledger's database answers again"


@pytest.fixture
def postgres() -> Iterator[PostgresServer]:
    """A PostgreSQL of this test's own: stopping the session's would break other tests."""
    try:
        with run_postgres() as server:
            yield server
    except PostgresUnavailable as err:
        if postgres_optional():
            pytest.skip(f"PostgreSQL unavailable: {err}")
        pytest.fail(f"PostgreSQL unavailable: {err}", pytrace=False)


class EventStream:
    """``GET dlinfra/api/events`` read frame by frame, each read bounded by a deadline."""

    def __init__(self, server: ServerProcess) -> None:
        self.conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
        self.conn.request(
            "GET", "/dlinfra/api/events", headers={"Authorization": f"token {server.token}"}
        )
        self.response = self.conn.getresponse()
        assert self.response.status == 200, self.response.read()
        self.held: dict[str, Any] | None = None

    def next_frame(self, want: Callable[[str, Any], bool], *, timeout: float) -> Any:
        """The data of the first frame (event name, parsed data) that ``want`` accepts."""
        deadline = time.monotonic() + timeout
        event = ""
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("no such frame in the event stream")
            assert self.conn.sock is not None
            self.conn.sock.settimeout(left)
            line = self.response.readline().decode().rstrip("\n")
            if not line and self.response.isclosed():
                raise AssertionError("the event stream ended")
            if line.startswith("event: "):
                event = line.removeprefix("event: ")
            elif line.startswith("data: "):
                data = json.loads(line.removeprefix("data: "))
                if event == "snapshot":
                    self.held = data
                elif event == "delta":
                    # seen as the snapshot it makes, as a client holds it
                    assert self.held is not None, "a delta before the first snapshot"
                    data = self.held = apply_delta(self.held, data) or self.held
                    event = "snapshot"
                if want(event, data):
                    return data

    def close(self) -> None:
        self.conn.close()


def _outage_lines(log: str) -> list[str]:
    return [line for line in log.splitlines() if AWAY_LINE in line or BACK_LINE in line]


def _answer(
    server: ServerProcess, method: str, path: str, body: Any = None, token: str | None = None
) -> tuple[int, Any, str | None]:
    """Status, JSON body and Retry-After of one call; an answer that streams (an event stream
    that opened) is not read on."""
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=20)
    try:
        conn.request(
            method,
            "/" + path,
            body=None if body is None else json.dumps(body),
            headers={"Authorization": f"token {token or server.token}"},
        )
        response = conn.getresponse()
        if response.getheader("Content-Type", "").startswith("text/event-stream"):
            return response.status, None, None
        raw = response.read()
        return response.status, json.loads(raw) if raw else None, response.getheader("Retry-After")
    finally:
        conn.close()


def test_requests_answer_503_while_the_database_is_away_and_all_resumes_when_it_is_back(
    postgres: PostgresServer, tmp_path: Path, servers: list[object]
) -> None:
    book_store = Store(postgres.url)
    book = TokenBook(book_store, SystemClock())
    tokens = {user: book.issue(user, by="test").token for user in ("alice", "admin")}
    book_store.dispose()

    def start(name: str, *, args: tuple[str, ...] = (), **kwargs: Any) -> ServerProcess:
        workdir = tmp_path / name
        workdir.mkdir()
        server = ServerProcess(
            workdir,
            db_url=postgres.url,
            simulated_gpus=2,
            extra_args=(
                "--DLInfra.reconcile_interval=1",
                "--DLInfra.job_interval=0.2",
                "--DLInfra.events_keepalive=1",
                *args,
            ),
            **kwargs,
        )
        servers.append(server)
        return server.start()

    server = start("server")
    # the gateway's own token (that ServerProcess checks it is up with) must be an issued one
    gateway = start(
        "gateway", program=GATEWAY, token=tokens["admin"], args=("--DLInfra.admin_users=admin",)
    )
    first = server.start_kernel()
    assert "Granted 1 GPU" in first.execute("%gpu 1").text
    stream = EventStream(server)
    stopped = False
    try:
        stream.next_frame(lambda event, _: event == "snapshot", timeout=30)
        marks = {s.port: len(s.log_text()) for s in (server, gateway)}

        postgres.stop("fast")
        stopped = True

        unavailable = {"message": UNREACHABLE, "reason": "ledger_unavailable"}
        for method, path, body in (
            ("GET", "dlinfra/api/cluster", None),
            ("POST", "dlinfra/api/allocations", {"kernel_id": first.kernel_id, "count": 1}),
            ("GET", "dlinfra/api/queue", None),
            ("GET", "dlinfra/api/jobs", None),
            ("GET", "dlinfra/api/events", None),
        ):
            assert _answer(server, method, path, body) == (503, unavailable, "5"), path
        # a person on the gateway, whose token is checked in the ledger
        assert _answer(gateway, "GET", "dlinfra/api/cluster", token=tokens["alice"]) == (
            503,
            unavailable,
            "5",
        )
        # jupyter_server's own API there: its own error body, with the same message
        status, payload, _ = _answer(gateway, "GET", "api/kernels", token=tokens["alice"])
        assert (status, payload["message"]) == (503, UNREACHABLE)
        # the kernel's own %gpu (its token is checked in the ledger) says why it cannot
        out = first.execute("%gpu 2")
        assert UNREACHABLE in out.text, out.text
        # the open stream says so, and stays open
        notice = stream.next_frame(
            lambda event, data: event == "notice" and data["kind"] == "ledger_unavailable",
            timeout=30,
        )
        assert notice["level"] == "error" and "unreachable" in notice["message"]
        # a kernel shut down meanwhile stops (the kernel manager carries on); its GPU waits
        first.shutdown()
        assert server.get("api/kernels") == []

        postgres.start()
        stopped = False

        wait_until(
            lambda: _answer(server, "GET", "dlinfra/api/cluster")[0] == 200,
            timeout=60,
            interval=0.2,
            what="the API to answer again",
        )
        assert _answer(gateway, "GET", "dlinfra/api/cluster", token=tokens["alice"])[0] == 200
        stream.next_frame(
            lambda event, data: event == "notice" and data["kind"] == "ledger_available",
            timeout=60,
        )
        # reconciling gives back the GPU of the kernel that ended while the database was away
        wait_until(
            lambda: not server.get("dlinfra/api/allocations")["allocations"],
            timeout=60,
            what="the ended kernel's GPU to be given back",
        )
        second = server.start_kernel()
        status, granted, _ = _answer(
            server, "POST", "dlinfra/api/allocations", {"kernel_id": second.kernel_id, "count": 2}
        )
        assert status == 201 and granted["state"] == "granted", granted
        stream.next_frame(
            lambda event, data: (
                event == "snapshot"
                and any(a["kernel_id"] == second.kernel_id for a in data["allocations"])
            ),
            timeout=30,
        )
        for target in (server, gateway):
            wait_until(
                lambda t=target: BACK_LINE in t.log_text()[marks[t.port] :],
                timeout=60,
                what="the server to say the database is back",
            )
            log = target.log_text()[marks[target.port] :]
            assert "Traceback" not in log, log[-6000:]
            outage = _outage_lines(log)
            assert len(outage) == 2, outage
            assert AWAY_LINE in outage[0] and BACK_LINE in outage[1], outage
    finally:
        stream.close()
        if stopped:
            postgres.start()  # the servers' clean stop needs their ledger
