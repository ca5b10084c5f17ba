"""Ask a running kernel, before parking it, to ready its GPU memory and say what stops parking.

The question is one ``execute_request`` with empty code and one user expression that runs
``jupyter_dlinfra.kernel.parking.prepare_json()`` in the kernel. Evaluating an expression binds
no name in the user's namespace, and a silent request neither enters the history nor runs the
kernel's pre-cell hooks (``%gpu``'s included). The server never imports that module itself: it
is the kernel's, and the import is sent as text (tests/test_layout.py, KERNEL_USERS).

A request the kernel has not answered in time stays queued there: it runs once the kernel is
free, and its answer goes to a closed socket. Running it late is harmless, since ``prepare()``
only synchronises and frees PyTorch's cache; what the server must not do is lock the process on
an answer it did not get.
"""

from __future__ import annotations

import ast
import asyncio
import inspect
import json
import uuid
from dataclasses import dataclass, field
from queue import Empty
from typing import Any

__all__ = ["PARK_EXPRESSION", "ProbeResult", "probe_for_parking"]

#: evaluated in the kernel's namespace; ``__import__`` binds nothing there, as ``import`` would
PARK_EXPRESSION = (
    "__import__('jupyter_dlinfra.kernel.parking', fromlist=['prepare_json']).prepare_json()"
)

#: how often a wait for the answer checks that the kernel's process still runs
_ALIVE_EVERY_S = 1.0

_GONE = "the kernel is gone"
_IMPORT_ERRORS = frozenset({"ModuleNotFoundError", "ImportError"})


@dataclass(frozen=True)
class ProbeResult:
    """What a kernel said about parking. ``ok`` when it answered with a report; ``reason`` says
    why it could not be asked. Park only when ``ok`` and ``blockers`` is empty."""

    ok: bool
    reason: str | None = None
    report: dict[str, Any] = field(default_factory=dict)
    blockers: list[str] = field(default_factory=list)


def _failed(reason: str) -> ProbeResult:
    return ProbeResult(ok=False, reason=reason)


async def probe_for_parking(
    kernel_manager: Any, kernel_id: str, *, timeout_s: float = 10.0
) -> ProbeResult:
    """Ask kernel ``kernel_id`` of ``kernel_manager`` (the server's mapping kernel manager) to
    prepare for parking; wait at most ``timeout_s`` for its answer. Never raises but on
    cancellation; the kernel's channels are closed again whatever happens."""
    try:
        kernel = kernel_manager.get_kernel(kernel_id) if kernel_id in kernel_manager else None
    except Exception:  # removed between the two looks
        kernel = None
    if kernel is None:
        return _failed(_GONE)
    try:
        ready = getattr(kernel, "ready", None)
        if ready is not None and not ready.done():
            return _failed("the kernel is starting or restarting")
        if not await _alive(kernel):
            return _failed(_GONE)
        session = kernel.session.clone()
        # an id of its own: the kernel routes a reply by the asking socket's identity, which is
        # the session id, and takes that identity over from whoever had it before; a client with
        # the manager's own id would lose its replies to, or take those of, any other such client
        session.session = str(uuid.uuid4())
        client = kernel.client(session=session)
    except Exception as err:
        return _failed(f"could not reach the kernel: {type(err).__name__}: {err}")
    try:
        # only the shell channel: no heartbeat thread, no iopub traffic, and no stdin, so that
        # the kernel cannot wait on an input() nobody will answer
        client.start_channels(shell=True, iopub=False, stdin=False, hb=False, control=False)
        msg_id = client.execute(
            "",
            silent=True,
            store_history=False,
            user_expressions={"park": PARK_EXPRESSION},
            allow_stdin=False,
            # an error of ours must not abort the cells the user has queued behind it
            stop_on_error=False,
        )
        answer = await _reply(client, kernel, msg_id, timeout_s)
    except Exception as err:
        return _failed(f"could not ask the kernel: {type(err).__name__}: {err}")
    finally:
        client.stop_channels()
    if isinstance(answer, ProbeResult):
        return answer
    return _read(answer)


async def _alive(kernel: Any) -> bool:
    alive = kernel.is_alive()
    if inspect.isawaitable(alive):
        alive = await alive
    return bool(alive)


async def _reply(
    client: Any, kernel: Any, msg_id: str, timeout_s: float
) -> dict[str, Any] | ProbeResult:
    """The content of the ``execute_reply`` to ``msg_id``, or why there is none. Other replies
    on the channel are not ours to read: they are skipped."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while (left := deadline - loop.time()) > 0:
        try:
            msg = await client.get_shell_msg(timeout=min(left, _ALIVE_EVERY_S))
        except Empty:
            if not await _alive(kernel):
                return _failed(_GONE)
            continue
        if (msg.get("parent_header") or {}).get("msg_id") == msg_id:
            content = msg.get("content")
            return content if isinstance(content, dict) else {}
    return _failed(f"the kernel did not answer within {timeout_s:g} s (a cell may be running)")


def _read(content: dict[str, Any]) -> ProbeResult:
    status = content.get("status")
    if status != "ok":
        detail = ": ".join(str(content[k]) for k in ("ename", "evalue") if content.get(k))
        return _failed(f"the kernel answered {status}" + (f" ({detail})" if detail else ""))
    result = (content.get("user_expressions") or {}).get("park")
    if not isinstance(result, dict):
        return _failed("the kernel's answer holds no parking report")
    if result.get("status") != "ok":
        ename, evalue = result.get("ename", "an error"), result.get("evalue", "")
        if ename in _IMPORT_ERRORS:
            return _failed(
                f"the kernel cannot import jupyter_dlinfra.kernel.parking ({ename}: {evalue}): "
                "jupyter-dlinfra must be installed in the kernel's environment to park it"
            )
        return _failed(f"the kernel's parking check failed ({ename}: {evalue})")
    try:
        # text/plain is the repr of the JSON string that prepare_json() returned
        report = json.loads(ast.literal_eval(result["data"]["text/plain"]))
        if not isinstance(report, dict):
            raise TypeError(f"a {type(report).__name__}, not an object")
        blockers = [str(blocker) for blocker in report.get("blockers") or []]
    except Exception as err:
        return _failed(f"the kernel's parking report could not be read: {err}")
    return ProbeResult(ok=True, report=report, blockers=blockers)
