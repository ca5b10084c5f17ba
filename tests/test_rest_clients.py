"""The two clients on one stdlib transport: the kernel's and ``jupyter dlinfra``'s, each worded
for its reader, against a real HTTP server that answers what the test tells it to."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from jupyter_dlinfra.cli import main
from jupyter_dlinfra.kernel.client import ApiFailure, DLInfraUnavailable, KernelApiClient


class _Api:
    """One canned answer for every request; the requests seen, with their headers."""

    def __init__(self) -> None:
        self.status = 200
        self.body = b"{}"
        self.seen: list[dict[str, Any]] = []

    def answer(self, status: int, body: Any) -> None:
        self.status = status
        self.body = body if isinstance(body, bytes) else json.dumps(body).encode()


@pytest.fixture
def api() -> Iterator[tuple[_Api, str]]:
    state = _Api()

    class Handler(BaseHTTPRequestHandler):
        def _reply(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            state.seen.append(
                {
                    "method": self.command,
                    "path": self.path,
                    "authorization": self.headers.get("Authorization"),
                    "body": self.rfile.read(length) if length else b"",
                }
            )
            self.send_response(state.status)
            self.send_header("Content-Length", str(len(state.body)))
            self.end_headers()
            self.wfile.write(state.body)

        do_GET = do_POST = do_DELETE = _reply

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state, f"http://127.0.0.1:{server.server_address[1]}/base"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _cli(url: str, token: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(["--url", url, "--token", token, "jobs", "--all"])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_the_command_line_sends_its_token_and_reads_the_answer(
    api: tuple[_Api, str], capsys: pytest.CaptureFixture[str]
) -> None:
    state, url = api
    state.answer(200, {"jobs": []})
    assert _cli(url, "secret", capsys) == (0, "", "")
    assert _cli(url, "", capsys) == (0, "", "")
    first, second = state.seen
    assert first["path"] == "/base/dlinfra/api/jobs?state=all"
    assert first["authorization"] == "token secret"
    assert second["authorization"] is None


@pytest.mark.parametrize(
    ("status", "body", "said"),
    [
        (404, {"message": "no job 9", "reason": "not_found"}, "no job 9 (HTTP 404)"),
        (403, {"reason": "forbidden"}, "Forbidden (HTTP 403)"),
        (502, b"<html>bad gateway</html>", "Bad Gateway (HTTP 502)"),
    ],
)
def test_the_command_line_says_what_the_server_answered(
    api: tuple[_Api, str],
    capsys: pytest.CaptureFixture[str],
    status: int,
    body: Any,
    said: str,
) -> None:
    state, url = api
    state.answer(status, body)
    assert _cli(url, "t", capsys) == (2, "", f"jupyter dlinfra: {said}\n")


def test_the_command_line_says_which_server_it_cannot_reach(
    capsys: pytest.CaptureFixture[str],
) -> None:
    url = f"http://127.0.0.1:{_closed_port()}"
    code, out, err = _cli(url, "t", capsys)
    assert (code, out) == (2, "")
    assert err.startswith(f"jupyter dlinfra: cannot reach the Jupyter server at {url}/: ")


def test_the_kernel_client_speaks_for_its_kernel(api: tuple[_Api, str]) -> None:
    state, url = api
    state.answer(201, {"id": 3, "state": "granted"})
    client = KernelApiClient(url, "k-1", "kt")
    assert client.request_gpus(2, "A100") == {"id": 3, "state": "granted"}
    state.answer(204, b"")
    assert client.call("DELETE", "allocations/3") == {}
    request, release = state.seen
    assert request["method"] == "POST" and request["path"] == "/base/dlinfra/api/allocations"
    assert request["authorization"] == "DLInfra-Kernel kt"
    assert json.loads(request["body"]) == {"kernel_id": "k-1", "count": 2, "model": "A100"}
    assert release["method"] == "DELETE" and release["body"] == b""


@pytest.mark.parametrize(
    ("status", "body", "message", "reason"),
    [
        (409, {"message": "already held", "reason": "conflict"}, "already held", "conflict"),
        (502, b"<html>bad gateway</html>", "HTTP 502 Bad Gateway", "http"),
    ],
)
def test_the_kernel_client_raises_what_the_server_answered(
    api: tuple[_Api, str], status: int, body: Any, message: str, reason: str
) -> None:
    state, url = api
    state.answer(status, body)
    with pytest.raises(ApiFailure) as failure:
        KernelApiClient(url, "k-1", "kt").cluster()
    assert (str(failure.value), failure.value.status, failure.value.reason) == (
        message,
        status,
        reason,
    )


def test_the_kernel_client_says_which_server_it_cannot_reach() -> None:
    url = f"http://127.0.0.1:{_closed_port()}"
    with pytest.raises(DLInfraUnavailable, match=f"^cannot reach the dlinfra server at {url}/: "):
        KernelApiClient(url, "k-1", "kt").cluster()
