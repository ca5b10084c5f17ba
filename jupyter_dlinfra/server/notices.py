"""What the event stream tells people: the wording of notices, made from ledger events.

:class:`Notice` is one message for a person (shown by JupyterLab as a notification, so kept under
140 characters); :func:`notice_from_event` decides which ledger events deserve one and words it.
The broadcaster (``server/events.py``) only carries notices; it does not word them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import PurePath
from typing import Any

from jupyter_dlinfra.core.models import KernelRecord, LedgerEvent
from jupyter_dlinfra.core.wording import plural
from jupyter_dlinfra.server.views import duration

__all__ = ["LEVELS", "Notice", "notice_from_event"]

LEVELS = ("info", "warning", "error")
#: ends that a user or a kernel asked for: no notice, they know
#: ends that another notice explains (a preempted job's requeue notice says why)
_CHOSEN_END_REASONS = ("kernel shut down", "kernel restarted", "job preempted")


@dataclass(frozen=True, kw_only=True)
class Notice:
    """One message for people on the event stream (``Notice`` in the OpenAPI file)."""

    id: int
    kind: str
    level: str
    message: str
    user: str | None = None
    kernel_id: str | None = None
    allocation_id: int | None = None
    actions: tuple[tuple[str, str], ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "kind": self.kind,
            "level": self.level,
            "user": self.user,
            "kernel_id": self.kernel_id,
            "allocation_id": self.allocation_id,
            "message": self.message,
            "actions": [{"id": a, "label": label} for a, label in self.actions],
        }


def _kernel_words(kernel: KernelRecord | None, kernel_id: str | None) -> str:
    if kernel is not None and kernel.path:
        return f"kernel {kernel.path}"
    if kernel is not None and kernel.kernel_name:
        return f"kernel {kernel.kernel_name} ({kernel.kernel_id[:8]})"
    return f"kernel {(kernel_id or '?')[:8]}"


def notice_from_event(
    event: LedgerEvent,
    *,
    previous: LedgerEvent | None,
    kernels: Mapping[str, KernelRecord],
    owner_of: Callable[[int], str | None],
) -> Notice | None:
    """The notice a ledger event deserves, if any.

    A grant is worth a notice only when the request waited in the queue. The ledger writes
    ``waited_s`` with the real clock, so an immediate grant has a few microseconds of "wait";
    what tells it apart is ``at_once`` in its detail (granted in the transaction that asked for
    it, whatever else that transaction wrote in between), or, in events written before the
    ledger said so, its ``requested`` event just before it.
    """
    kernel = kernels.get(event.kernel_id) if event.kernel_id else None
    aid = event.allocation_id

    def owner() -> str | None:
        if kernel is not None:
            return kernel.user
        return owner_of(aid) if aid is not None else None

    if event.kind == "granted":
        waited = event.detail.get("waited_s")
        if not isinstance(waited, (int, float)) or waited <= 0 or event.detail.get("at_once"):
            return None
        if (
            previous is not None
            and previous.kind == "requested"
            and previous.allocation_id == aid
            and previous.seq == event.seq - 1
        ):
            return None
        gpus = event.detail.get("gpus")
        count = len(gpus) if isinstance(gpus, list) else 0
        return Notice(
            id=event.seq,
            kind="granted",
            level="info",
            message=f"{plural(count, 'GPU')} granted to {_kernel_words(kernel, event.kernel_id)} "
            f"after {waited:.0f} s in the queue",
            user=owner(),
            kernel_id=event.kernel_id,
            allocation_id=aid,
        )
    if event.kind in ("idle_warning", "idle_reclaimed"):
        return _idle_notice(event, kernel, owner())
    if event.kind == "job_ended":
        return _job_notice(event)
    if event.kind == "job_requeued":
        detail = event.detail
        return Notice(
            id=event.seq,
            kind="job_requeued",
            level="warning",
            message=f"Job {detail.get('job')} was stopped: {detail.get('reason')}"[:140],
            user=str(detail.get("user")) if detail.get("user") else None,
            kernel_id=event.kernel_id,
        )
    if event.kind in ("cancelled", "released"):
        reason = str(event.detail.get("reason") or "")
        if reason.startswith("released by") or reason in _CHOSEN_END_REASONS:
            return None
        if reason.startswith("reclaimed:"):
            return None  # the idle_reclaimed notice has said it
        who = _kernel_words(kernel, event.kernel_id)
        if event.kind == "cancelled":
            # a request that will never be granted: the user's work cannot go on as planned
            level, what = "error", f"The GPU request of {who} was cancelled"
        else:
            gpus = event.detail.get("gpus")
            count = len(gpus) if isinstance(gpus, list) else 0
            level, what = "warning", f"The {plural(count, 'GPU')} of {who} were released"
        return Notice(
            id=event.seq,
            kind="ended",
            level=level,
            message=f"{what}: {reason or 'no reason given'}",
            user=owner(),
            kernel_id=event.kernel_id,
            allocation_id=aid,
        )
    return None


#: short, because JupyterLab cuts notification text at 140 characters
_ACTION_WORDS = {
    "release": "kernel restarted without GPUs",
    "shutdown": "kernel shut down",
    "notify": "report only, nothing taken",
    "park": "parked until its next cell",
}


def _job_notice(event: LedgerEvent) -> Notice:
    detail = event.detail
    state = str(detail.get("state") or "ended")
    reason = detail.get("reason")
    level = {"succeeded": "info", "failed": "error"}.get(state, "warning")
    message = f"Job {detail.get('job')} ({detail.get('name')}) {state}"
    if reason:
        message += f": {reason}"
    # the front end offers "Open log" itself: the job is in the notice's kernel_id (job-<id>)
    return Notice(
        id=event.seq,
        kind="job_ended",
        level=level,
        message=message[:140],
        user=str(detail.get("user")) if detail.get("user") else None,
        kernel_id=event.kernel_id,
    )


def _short_name(kernel: KernelRecord | None, kernel_id: str | None) -> str:
    if kernel is not None and kernel.path:
        return PurePath(kernel.path).name
    return f"kernel {(kernel_id or '?')[:8]}"


def _idle_notice(event: LedgerEvent, kernel: KernelRecord | None, user: str | None) -> Notice:
    who = _short_name(kernel, event.kernel_id)
    idle = event.detail.get("idle_s")
    idle_words = duration(float(idle)) if isinstance(idle, (int, float)) else "a while"
    action = str(event.detail.get("action") or "release")
    if event.kind == "idle_warning":
        reclaim_at = event.detail.get("reclaim_at")
        when = "soon"
        if isinstance(reclaim_at, (int, float)):
            when = f"in {duration(max(0.0, float(reclaim_at) - event.at))}"
        keeps = event.detail.get("keeps_left")
        left = int(keeps) if isinstance(keeps, (int, float)) else 0
        return Notice(
            id=event.seq,
            kind="idle_warning",
            level="warning",
            message=f"GPUs of {who} idle for {idle_words}: reclaimed {when} "
            f"({_ACTION_WORDS.get(action, action)}) unless used"
            + (f" or kept ({left} keeps left)." if left else "."),
            user=user,
            kernel_id=event.kernel_id,
            allocation_id=event.allocation_id,
            actions=(("keep", "Keep"),) if left else (),
        )
    if action == "notify":
        message = f"GPUs of {who} would have been reclaimed after {idle_words} idle (report only)."
        level = "info"
    elif action == "park":
        message = (
            f"GPUs of {who} idle for {idle_words}: parked until its next cell, variables kept "
            "(released instead if it cannot be parked)."
        )
        level = "info"
    else:
        done = "restarted without GPUs" if action == "release" else "shut down"
        message = f"GPUs of {who} reclaimed after {idle_words} idle: kernel {done}."
        level = "warning"
    return Notice(
        id=event.seq,
        kind="idle_reclaimed",
        level=level,
        message=message,
        user=user,
        kernel_id=event.kernel_id,
        allocation_id=event.allocation_id,
    )
