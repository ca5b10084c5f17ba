"""The test kit's ServerProcess when its free port is taken before the server binds it (a
kernel binding port 0 may be given that very port): it starts on another one."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from jupyter_dlinfra.testing import server as testing
from jupyter_dlinfra.testing.server import ServerProcess


@pytest.fixture
def squatter() -> Iterator[int]:
    """A port held by something that answers HTTP with a ZeroMQ greeting's first byte."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    stop = threading.Event()

    def serve() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                continue
            with conn:
                conn.sendall(b"\xff\x00\x00\x00\x00\x00\x00\x00\x01\x7f")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1]
    finally:
        stop.set()
        thread.join(timeout=5)
        listener.close()


def test_a_taken_port_is_given_up_for_another(
    squatter: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ports = iter([squatter])
    real = testing.free_port
    monkeypatch.setattr(testing, "free_port", lambda: next(ports, None) or real())
    server = ServerProcess(tmp_path, db_url=f"sqlite:///{tmp_path}/ledger.sqlite", simulated_gpus=1)
    try:
        server.start()
        assert server.port != squatter
        assert server.get("api/status")
        assert "is already in use" in (tmp_path / f"server-{squatter}.log").read_text()
    finally:
        server.stop()
    # a restart that must keep its port says so instead
    server.port = squatter
    with pytest.raises(RuntimeError, match=f"port {squatter} is taken"):
        server.start(same_port=True)
