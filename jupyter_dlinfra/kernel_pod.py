"""What a kernel's pod runs: ``python -m jupyter_dlinfra.kernel_pod``.

The pod launcher (:mod:`jupyter_dlinfra.backends.kubernetes_pods`) chose the kernel's ports and
key and put them in the environment variable ``DLINFRA_CONNECTION`` (JSON: ``shell_port``,
``iopub_port``, ``stdin_port``, ``control_port``, ``hb_port``, ``key``, and optionally
``transport`` (only ``"tcp"``), ``signature_scheme`` (``"hmac-sha256"``) and ``kernel_name``).
This writes them to a connection file in a fresh private temporary directory, with
``ip = "0.0.0.0"`` (the kernel listens on every interface of the pod, so the gateway reaches it
at the pod's IP), and replaces itself with ``python -m ipykernel_launcher -f FILE
--ext=jupyter_dlinfra`` (the same interpreter), so that the kernel is the container's main process
and gets the pod's SIGTERM itself.

A missing or malformed ``DLINFRA_CONNECTION`` exits with status 2 and says why on stderr (the
pod's log). Kept to the standard library: it runs at every kernel start.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from collections.abc import Mapping, Sequence
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


def _fail(message: str) -> NoReturn:
    sys.stderr.write(f"jupyter_dlinfra.kernel_pod: {message}\n")
    sys.stderr.flush()
    raise SystemExit(2)


def main(argv: Sequence[str] | None = None) -> NoReturn:
    """Write the connection file and exec the kernel (extra ``argv`` go to the kernel)."""
    extra = list(sys.argv[1:] if argv is None else argv)
    try:
        info = connection_file_content(os.environ.get(ENV_VAR))
    except _BadConnection as err:
        _fail(str(err))
    try:
        folder = tempfile.mkdtemp(prefix="dlinfra-kernel-")
        path = os.path.join(folder, "kernel.json")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            json.dump(info, out)
    except OSError as err:
        _fail(f"cannot write the connection file: {err}")
    argv_ = [
        sys.executable,
        "-m",
        "ipykernel_launcher",
        "-f",
        path,
        "--ext=jupyter_dlinfra",
        *extra,
    ]
    sys.stdout.flush()
    try:
        os.execvp(sys.executable, argv_)
    except OSError as err:
        _fail(f"cannot start the kernel ({sys.executable}): {err}")


if __name__ == "__main__":
    main()
