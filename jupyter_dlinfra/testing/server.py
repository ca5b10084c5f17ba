"""Real servers and kernels for tests and benchmarks: a jupyter server in a subprocess on loopback,
kernels started through its REST API, and code run in them over the kernel websocket.

Nothing here is imported by the product; it is shipped so that the test suite and ``benchmarks/``
drive the product exactly as a user's browser would.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

import websocket

__all__ = [
    "ExecResult",
    "KernelSession",
    "ServerProcess",
    "StartStop",
    "close_response",
    "connect_kernel",
    "execute_request",
    "free_port",
    "kernel_websocket",
    "response_lines",
    "wait_until",
    "write_job_dir",
]

_S = TypeVar("_S", bound="StartStop")


class _PortTaken(Exception):
    """The server could not bind its port: another process took it."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(predicate: Any, *, timeout: float, interval: float = 0.05, what: str = "") -> Any:
    """Poll ``predicate`` until it returns something truthy, or fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout} s waiting for {what or predicate}")
        time.sleep(interval)


def close_response(response: Any) -> None:
    """Close a streamed response (its connection is not reused: the body may be unread)."""
    with contextlib.suppress(Exception):
        response.close()
    with contextlib.suppress(Exception):
        response.release_conn()


def response_lines(response: Any) -> Iterator[str]:
    """The lines of a streamed (chunked) HTTP response as they arrive, e.g. a Kubernetes watch's
    events (``_preload_content=False``); blank lines left out."""
    buffer = b""
    for chunk in response.stream(amt=None, decode_content=False):
        buffer += chunk
        while b"\n" in buffer:
            line, buffer = buffer.split(b"\n", 1)
            if line.strip():
                yield line.decode()
    if buffer.strip():
        yield buffer.decode()


class StartStop:
    """A helper process (or set of them) with ``start()`` and ``stop()``: ``with`` starts it
    unless it is :attr:`running` already, and stops it at the end."""

    @property
    def running(self) -> bool:
        raise NotImplementedError

    def start(self) -> object:
        raise NotImplementedError

    def stop(self) -> object:
        raise NotImplementedError

    def __enter__(self: _S) -> _S:
        if not self.running:
            self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


class HttpError(Exception):
    def __init__(self, status: int, body: Any) -> None:
        super().__init__(f"HTTP {status}: {body}")
        self.status = status
        self.body = body


@dataclass
class ServerProcess:
    """A ``jupyter server`` with the dlinfra extension, in its own process, on 127.0.0.1."""

    workdir: Path
    db_url: str
    simulated_gpus: int = 4
    extra_args: Sequence[str] = ()
    env: Mapping[str, str] = field(default_factory=dict)
    token: str = field(default_factory=lambda: uuid.uuid4().hex)
    #: what runs after the interpreter: a plain jupyter server, or the team gateway
    #: (``("-m", "jupyter_dlinfra.cli", "gateway")``, whose callers need issued tokens)
    program: Sequence[str] = ("-m", "jupyter_server")
    port: int = 0
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    @property
    def log_path(self) -> Path:
        return self.workdir / f"server-{self.port}.log"

    def start(self, *, timeout: float = 90.0, same_port: bool = False) -> ServerProcess:
        """Start the server; ``same_port``: again on the port of its last start (a restart
        that its clients must not notice). A free port can be taken by another process (a
        kernel binding port 0 is given it) before the server binds it: then another port."""
        for attempt in range(3):
            if not (same_port and self.port) or attempt:
                self.port = free_port()
            try:
                return self._start_once(timeout)
            except _PortTaken:
                if same_port:
                    raise RuntimeError(f"port {self.port} is taken by another process") from None
        raise RuntimeError("three free ports in a row were taken before the server bound them")

    def _start_once(self, timeout: float) -> ServerProcess:
        root = self.workdir / "root"
        root.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ)
        env.update(
            {
                "JUPYTER_DATA_DIR": str(self.workdir / "data"),
                "JUPYTER_RUNTIME_DIR": str(self.workdir / "runtime"),
                "JUPYTER_CONFIG_DIR": str(self.workdir / "config"),
                "JUPYTER_PLATFORM_DIRS": "1",
            }
        )
        env.pop("DLINFRA_SIMULATED_GPUS", None)
        env.update(self.env)
        cmd = [
            sys.executable,
            *self.program,
            "--ip=127.0.0.1",
            f"--port={self.port}",
            "--port-retries=0",
            "--no-browser",
            f"--IdentityProvider.token={self.token}",
            f"--ServerApp.root_dir={root}",
            f"--DLInfra.db_url={self.db_url}",
            f"--DLInfra.simulated_gpus={self.simulated_gpus}",
            *self.extra_args,
        ]
        if hasattr(os, "geteuid") and os.geteuid() == 0:
            cmd.append("--allow-root")
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
        log.close()

        def ready() -> bool:
            if self.proc is not None and self.proc.poll() is not None:
                text = self.log_text()
                if "is already in use" in text or "no available port" in text:
                    raise _PortTaken()
                raise RuntimeError(f"server exited early:\n{text[-4000:]}")
            try:
                self.get("api/status")
                return True
            except (OSError, HttpError, http.client.HTTPException):
                # not up yet, or what answers on the port is not this server (yet)
                return False

        wait_until(ready, timeout=timeout, interval=0.1, what="the jupyter server to answer")
        return self

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def stop(self, *, timeout: float = 30.0) -> None:
        """A clean stop, as Ctrl-C or a shutdown from the UI would do."""
        if self.proc is None or self.proc.poll() is not None:
            return
        with contextlib.suppress(OSError, HttpError):
            self.post("api/shutdown", None)
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                # never leave a server behind a test (one whose gateway is gone may retry long)
                self.proc.kill()
                self.proc.wait(timeout=timeout)
                raise

    def crash(self) -> None:
        """SIGKILL: what a power cut or the OOM killer does to the server."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=30)

    # -- HTTP ------------------------------------------------------------------------------------

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        raw: bytes | None = None,
        headers: Mapping[str, str] | None = None,
        timeout: float = 30.0,
    ) -> tuple[int, Any, Mapping[str, str]]:
        data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
        req = urllib.request.Request(self.url + path, data=data, method=method)
        for key, value in (headers or {"Authorization": f"token {self.token}"}).items():
            req.add_header(key, value)
        if data is not None:
            req.add_header("Content-Type", "application/json")
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        try:
            with opener.open(req, timeout=timeout) as resp:
                payload = resp.read()
                return resp.status, json.loads(payload) if payload else None, dict(resp.headers)
        except urllib.error.HTTPError as err:
            payload = err.read()
            try:
                parsed = json.loads(payload) if payload else None
            except ValueError:
                parsed = payload.decode(errors="replace")
            return err.code, parsed, dict(err.headers)

    def _ok(self, method: str, path: str, body: Any = None) -> Any:
        status, payload, _ = self.request(method, path, body)
        if status >= 400:
            raise HttpError(status, payload)
        return payload

    def get(self, path: str) -> Any:
        return self._ok("GET", path)

    def post(self, path: str, body: Any) -> Any:
        return self._ok("POST", path, body if body is not None else {})

    def delete(self, path: str) -> Any:
        return self._ok("DELETE", path)

    def start_kernel(self, name: str = "python3") -> KernelSession:
        model = self.post("api/kernels", {"name": name})
        session = KernelSession(self, model["id"])
        session.wait_ready()
        return session


@dataclass(frozen=True)
class ExecResult:
    stdout: str
    stderr: str
    #: text/plain of display_data, as last updated (the live queue line ends here)
    displays: tuple[str, ...]
    error: str | None

    @property
    def text(self) -> str:
        return self.stdout + self.stderr + "".join(self.displays)


def kernel_websocket(
    server: ServerProcess, kernel_id: str, session: str, *, timeout: float
) -> websocket.WebSocket:
    """The kernel websocket (``api/kernels/<id>/channels``) of ``server``, for ``session``."""
    url = f"ws://127.0.0.1:{server.port}/api/kernels/{kernel_id}/channels?session_id={session}"
    return websocket.create_connection(
        url,
        header=[f"Authorization: token {server.token}"],
        timeout=timeout,
        http_proxy_host=None,
    )


def connect_kernel(
    server: ServerProcess, kernel_id: str, session: str, deadline: float
) -> websocket.WebSocket:
    """:func:`kernel_websocket`, tried again every 5 ms while it fails (the kernel may still be
    starting) until ``deadline`` (``time.monotonic()``); each try may take the time left."""
    while True:
        try:
            return kernel_websocket(
                server, kernel_id, session, timeout=max(0.1, deadline - time.monotonic())
            )
        except (OSError, websocket.WebSocketException):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.005)


def execute_request(
    session: str, msg_id: str, code: str, *, username: str = "test", store_history: bool = True
) -> str:
    """A shell ``execute_request`` of ``code``, as the kernel websocket takes it (JSON)."""
    return json.dumps(
        {
            "header": {
                "msg_id": msg_id,
                "username": username,
                "session": session,
                "msg_type": "execute_request",
                "version": "5.3",
            },
            "parent_header": {},
            "metadata": {},
            "content": {
                "code": code,
                "silent": False,
                "store_history": store_history,
                "user_expressions": {},
                "allow_stdin": False,
                "stop_on_error": True,
            },
            "channel": "shell",
            "buffers": [],
        }
    )


class KernelSession:
    """One kernel of a ServerProcess; runs code through the server's websocket, like JupyterLab."""

    def __init__(self, server: ServerProcess, kernel_id: str) -> None:
        self.server = server
        self.kernel_id = kernel_id
        self.session = uuid.uuid4().hex

    def _connect(self, timeout: float) -> websocket.WebSocket:
        return kernel_websocket(self.server, self.kernel_id, self.session, timeout=timeout)

    def wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.execute("pass", timeout=10)
                return
            except (OSError, TimeoutError, websocket.WebSocketException):
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

    def execute(self, code: str, *, timeout: float = 60.0, partial: bool = False) -> ExecResult:
        """Run ``code``; with ``partial``, a cell that never replies (it restarted its own
        kernel) gives what it printed by ``timeout`` instead of an error."""
        ws = self._connect(timeout)
        try:
            return self._run(ws, code, timeout, partial)
        finally:
            ws.close()

    def _run(self, ws: websocket.WebSocket, code: str, timeout: float, partial: bool) -> ExecResult:
        msg_id = uuid.uuid4().hex
        ws.send(execute_request(self.session, msg_id, code))
        stdout: list[str] = []
        stderr: list[str] = []
        displays: dict[str, str] = {}
        anonymous: list[str] = []
        error: str | None = None
        replied = idle = False
        deadline = time.monotonic() + timeout
        while not (replied and idle):
            if time.monotonic() > deadline:
                if partial:
                    error = "no reply"
                    break
                raise TimeoutError(f"no reply within {timeout} s to {code!r}")
            # at most a second per wait: a server's websocket pings are answered inside recv(),
            # which would otherwise start its wait again and never give the deadline a chance
            ws.settimeout(min(1.0, max(0.1, deadline - time.monotonic())))
            try:
                msg = json.loads(ws.recv())
            except websocket.WebSocketTimeoutException:
                continue
            if msg.get("parent_header", {}).get("msg_id") != msg_id:
                continue
            kind = msg["msg_type"]
            content = msg["content"]
            if kind == "execute_reply":
                replied = True
            elif kind == "status" and content.get("execution_state") == "idle":
                idle = True
            elif kind == "stream":
                (stdout if content["name"] == "stdout" else stderr).append(content["text"])
            elif kind in ("display_data", "update_display_data", "execute_result"):
                text = content.get("data", {}).get("text/plain", "")
                display_id = content.get("transient", {}).get("display_id")
                if display_id:
                    displays[display_id] = text
                else:
                    anonymous.append(text)
            elif kind == "error":
                error = f"{content['ename']}: {content['evalue']}"
        return ExecResult("".join(stdout), "".join(stderr), (*anonymous, *displays.values()), error)

    def value(self, expression: str) -> Any:
        """Evaluate an expression in the kernel and bring its JSON value back."""
        result = self.execute(f"import json as _j; print(_j.dumps({expression}))")
        if result.error:
            raise RuntimeError(result.error)
        return json.loads(result.stdout.strip().splitlines()[-1])

    def shutdown(self) -> None:
        self.server.delete(f"api/kernels/{self.kernel_id}")


def notebook_json(*cells: str | tuple[str, Sequence[str]]) -> dict[str, Any]:
    """A Python notebook of code cells; a cell given as ``(source, tags)`` carries those tags."""
    built: list[dict[str, Any]] = []
    for number, cell in enumerate(cells):
        source, tags = (cell, ()) if isinstance(cell, str) else cell
        built.append(
            {
                "id": f"cell-{number}",
                "cell_type": "code",
                "source": source,
                "metadata": {"tags": list(tags)} if tags else {},
                "outputs": [],
                "execution_count": None,
            }
        )
    return {
        "cells": built,
        "metadata": {
            "kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}
        },
        "nbformat": 4,
        "nbformat_minor": 5,
    }


def wait_for_file(path: Path, every_s: float = 0.2) -> str:
    """A cell that waits until ``path`` exists: a job held until its test lets it go."""
    return f"import os, time\nwhile not os.path.exists({str(path)!r}):\n    time.sleep({every_s})"


def write_job_dir(
    jobdir: Path, *cells: str | tuple[str, Sequence[str]], spec: Mapping[str, Any]
) -> Path:
    """A job directory as a submission makes it (the notebook of ``cells`` prepared and
    snapshotted with ``spec``), for running the in-job runner or the ranks' launcher directly."""
    from jupyter_dlinfra.jobs.convert import prepare, read_notebook, snapshot  # nbconvert: heavy

    jobdir.mkdir(parents=True, exist_ok=True)
    ready = prepare(
        read_notebook(json.dumps(notebook_json(*cells)), max_bytes=2**24),
        parameters={},
        max_parameter_bytes=2**16,
    )
    snapshot(ready, jobdir, spec=spec)
    return jobdir


def write_notebook(path: Path, *cells: str | tuple[str, Sequence[str]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(notebook_json(*cells)), encoding="utf-8")
    return path
