"""What a kernel's pod runs: ``python -m jupyter_dlinfra.kernel_pod``.

The pod launcher (:mod:`jupyter_dlinfra.kube.kernel_pods`) chose the kernel's ports and
key and put them in the environment variable ``DLINFRA_CONNECTION`` (JSON: ``shell_port``,
``iopub_port``, ``stdin_port``, ``control_port``, ``hb_port``, ``key``, and optionally
``transport`` (only ``"tcp"``), ``signature_scheme`` (``"hmac-sha256"``) and ``kernel_name``).
This writes them to a connection file in a fresh private temporary directory, with
``ip = "0.0.0.0"`` (the kernel listens on every interface of the pod, so the gateway reaches it
at the pod's IP), and runs ipykernel in this same process (``IPKernelApp`` with ``-f FILE
--ext=jupyter_dlinfra`` and the extra arguments), so that the kernel is the container's main
process and gets the pod's SIGTERM itself.

The connection file holds the kernel's key: it lives only while ipykernel reads it. Once the
kernel is initialised (its sockets bound, the file read; ipykernel does not delete or rewrite a
file it was given, nor read it again), the file and its directory are removed, before the kernel
starts serving; a SIGTERM that comes while the file exists removes it, then ends the process by
that signal. (So ``%connect_info`` in such a kernel finds no file: the gateway holds the
connection.)

A missing or malformed ``DLINFRA_CONNECTION`` exits with status 2 and says why on stderr (the
pod's log), before ipykernel is even imported.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sys
import tempfile
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import Any, NoReturn

__all__ = ["ENV_VAR", "PORT_NAMES", "connection_file_content", "main"]

#: the environment variable that carries the connection (JSON)
ENV_VAR = "DLINFRA_CONNECTION"
#: the five ports of a kernel, as jupyter_client names them
PORT_NAMES = ("shell_port", "iopub_port", "stdin_port", "control_port", "hb_port")


class _BadConnection(ValueError):
    pass


def connection_file_content(raw: str | None) -> dict[str, Any]:
    """The connection file for ``raw`` (the variable's value); ValueError says what is wrong."""
    if raw is None or not raw.strip():
        raise _BadConnection(
            f"{ENV_VAR} is not set: the pod launcher puts the kernel's ports there"
        )
    try:
        data = json.loads(raw)
    except ValueError as err:
        raise _BadConnection(f"{ENV_VAR} is not JSON: {err}") from None
    if not isinstance(data, Mapping):
        raise _BadConnection(f"{ENV_VAR} must be a JSON object, not {type(data).__name__}")
    info: dict[str, Any] = {"ip": "0.0.0.0"}
    for name in PORT_NAMES:
        port = data.get(name)
        if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
            raise _BadConnection(f"{ENV_VAR}: {name} must be a port number, not {port!r}")
        info[name] = port
    key = data.get("key")
    if not isinstance(key, str) or not key:
        raise _BadConnection(f"{ENV_VAR}: key must be a non-empty string")
    info["key"] = key
    transport = data.get("transport", "tcp")
    if transport != "tcp":
        raise _BadConnection(f"{ENV_VAR}: transport must be 'tcp' in a pod, not {transport!r}")
    info["transport"] = transport
    scheme = data.get("signature_scheme", "hmac-sha256")
    if not isinstance(scheme, str) or not scheme.startswith("hmac-"):
        raise _BadConnection(f"{ENV_VAR}: signature_scheme {scheme!r} is not an hmac scheme")
    info["signature_scheme"] = scheme
    kernel_name = data.get("kernel_name")
    if kernel_name is not None:
        info["kernel_name"] = str(kernel_name)
    return info


def _fail(message: str, code: int = 2) -> NoReturn:
    sys.stderr.write(f"jupyter_dlinfra.kernel_pod: {message}\n")
    sys.stderr.flush()
    raise SystemExit(code)


@contextmanager
def _connection_file(info: Mapping[str, Any]) -> Iterator[str]:
    """The connection file, in a fresh private directory that goes (with it) at the end of the
    block, or at a SIGTERM meanwhile (the process then dies of that signal, as it would have)."""
    # named before it exists, so that a SIGTERM at any moment knows what to remove
    folder = os.path.join(tempfile.gettempdir(), f"dlinfra-kernel-{uuid.uuid4().hex}")

    def remove() -> None:
        shutil.rmtree(folder, ignore_errors=True)

    def on_sigterm(signum: int, frame: FrameType | None) -> None:
        remove()
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)

    def restore() -> None:
        signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)

    previous = signal.signal(signal.SIGTERM, on_sigterm)
    try:
        os.mkdir(folder, 0o700)
    except OSError as err:  # not ours: nothing to remove
        restore()
        _fail(f"cannot write the connection file: {err}")
    try:
        path = os.path.join(folder, "kernel.json")
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8") as out:
                json.dump(info, out)
        except OSError as err:
            _fail(f"cannot write the connection file: {err}")
        yield path
    finally:
        remove()
        restore()


def main(argv: Sequence[str] | None = None) -> NoReturn:
    """Write the connection file, start the kernel from it, remove it, and serve until the kernel
    is shut down (extra ``argv`` go to the kernel)."""
    extra = list(sys.argv[1:] if argv is None else argv)
    try:
        info = connection_file_content(os.environ.get(ENV_VAR))
    except _BadConnection as err:
        _fail(str(err))
    # like ipykernel_launcher: the working directory does not shadow modules while ipykernel
    # loads (the shell puts it back for the user's code)
    if sys.path and (sys.path[0] == "" or Path(sys.path[0]) == Path.cwd()):
        del sys.path[0]
    try:
        from ipykernel.kernelapp import IPKernelApp
    except ImportError as err:
        _fail(f"cannot start the kernel ({sys.executable}): {err}", 1)
    app = IPKernelApp.instance()
    with _connection_file(info) as path:
        app.initialize(["-f", path, "--ext=jupyter_dlinfra", *extra])  # type: ignore[no-untyped-call]
    app.start()  # type: ignore[no-untyped-call]
    raise SystemExit(0)


if __name__ == "__main__":
    main()
