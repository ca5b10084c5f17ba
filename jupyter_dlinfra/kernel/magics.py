"""``%gpu``: ask the GPU ledger for GPUs from a notebook cell, and see what this kernel holds."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from typing import Any

from jupyter_dlinfra.kernel.client import ApiFailure, DLInfraUnavailable, KernelApiClient
from jupyter_dlinfra.kernel.cuda_state import cuda_initialised
from jupyter_dlinfra.kernel.grammar import USAGE, Command, UsageError, parse_line
from jupyter_dlinfra.kernel.times import when

__all__ = ["GpuMagic", "parse_line", "queue_line", "register"]

POLL_S = 2.0
#: how long one look at a resume under way waits for a change (seconds)
RESUME_POLL_S = 0.5
#: placements of grants held by a pod of the kernel's own (a Kubernetes gateway's): the kernel
#: moves into that pod to use them, and out of it to give them back
_IN_PODS = ("cluster", "pool")
#: how often %gpu profile asks the server for the kernel's latest reading (seconds)
PROFILE_POLL_S = 0.5


def idle_warning(idle: dict[str, Any]) -> str:
    """The reclaim warning as the notebook shows it."""
    action = {
        "release": "the kernel will be restarted without GPUs",
        "shutdown": "the kernel will be shut down",
        "notify": "nothing will be taken: the policy only reports",
        "park": "their memory will be parked in host memory and the GPUs lent until your next "
        "cell, which takes them back with your variables intact",
    }.get(str(idle.get("action")), "they will be reclaimed")
    left = idle.get("keeps_left", 0)
    keep = f"run `%gpu keep` ({left} left), " if left else ""
    return (
        f"this kernel's GPUs have been idle since {when(idle.get('idle_since'))} and will be "
        f"reclaimed {when(idle.get('reclaim_at'), relative=True)} ({action}). To hold them, "
        f"use them, {keep}or give them back with `%gpu release`."
    )


def queue_line(alloc: dict[str, Any], waited: float | None = None) -> str:
    """Where a queued request stands: place, class, reason and estimated start."""
    klass = f" ({alloc['priority_class']})" if alloc.get("priority_class") else ""
    spent = f", waited {waited:.0f} s" if waited is not None else ""
    reason = str(alloc["waiting_reason"]).rstrip(".")
    line = f"Queued at position {alloc['position']}{klass}{spent}: {reason}."
    if alloc.get("estimated_start"):
        # what the estimate rests on: recent holding times, or an assumed default
        note = f", {alloc['estimate_note']}" if alloc.get("estimate_note") else ""
        line += f" Estimated start {when(alloc['estimated_start'], relative=True)}{note}."
    return line


def _gib(n: int | None) -> str:
    return "?" if n is None else f"{n / 2**30:.1f} GiB"


def _describe(gpu: dict[str, Any]) -> str:
    line = f"GPU {gpu['index']} {gpu['uuid']} ({gpu['model']})"
    if gpu.get("utilization_percent") is not None:
        line += (
            f": {gpu['utilization_percent']:.0f}% busy, {_gib(gpu.get('memory_used_bytes'))} used"
        )
    return line


#: answers that mean the ledger is away for a while (its database, or the gateway), not a refusal
_AWAY = (502, 503, 504)


class GpuMagic:
    #: how the magic waits between tries while the ledger does not answer (tests replace it)
    sleep: Callable[[float], None] = staticmethod(time.sleep)

    def __init__(self, shell: Any, environ: dict[str, str] | None = None) -> None:
        self.shell = shell
        self.environ = os.environ if environ is None else environ
        self._client: KernelApiClient | None = None
        pending = self.environ.get("DLINFRA_PENDING_ALLOCATION", "")
        self.pending: int | None = int(pending) if pending.isdigit() else None
        self._launch_error = self.environ.get("DLINFRA_LAUNCH_ERROR") or None
        # why the kernel was restarted without its GPUs, said once at the first execution
        self._notice = self.environ.get("DLINFRA_NOTICE") or None
        self.holding = bool(self.environ.get("DLINFRA_ALLOCATION"))
        self._warned_at: str | None = None

    @property
    def client(self) -> KernelApiClient:
        if self._client is None:
            self._client = KernelApiClient.from_env(self.environ)
        return self._client

    # -- entry points ----------------------------------------------------------------------------

    def __call__(self, line: str, cell: str | None = None) -> None:
        try:
            cmd = parse_line(line, cell)
            if cmd.action == "help":
                print(USAGE)
            elif cmd.action == "show":
                self.show()
            elif cmd.action == "release":
                self.release()
            elif cmd.action == "keep":
                self.keep()
            elif cmd.action == "park":
                self.park()
            elif cmd.action == "profile":
                self.profile(cmd.seconds, cell)
            elif cmd.action == "restart":
                self.restart()
            elif cmd.nodes is not None:
                raise UsageError(
                    f"--nodes applies when the notebook runs as a job (its ranks start together "
                    f"on {cmd.nodes} node{'s' if cmd.nodes != 1 else ''}): submit it as a job; "
                    "in this kernel ask for GPUs of one node, e.g. %gpu 2"
                )
            else:
                self.request(cmd)
        except UsageError as err:
            self._fail(f"{err}\n{USAGE}")
        except DLInfraUnavailable as err:
            self._fail(f"GPU ledger not reachable: {err}")
        except ApiFailure as err:
            self._fail(str(err))

    def before_cell(self, info: Any = None, *_: Any) -> None:
        """Runs before each cell: report a launch failure, take parked GPUs back, apply GPUs
        granted in the background."""
        if self._launch_error:
            print(f"%gpu: {self._launch_error}", file=sys.stderr)
            self._launch_error = None
        if self._notice:
            print(self._notice, file=sys.stderr)
            self._notice = None
        if self.holding:
            parked = self._warn_if_idle()
            if parked is not None and not _gpu_line(getattr(info, "raw_cell", None)):
                self._resume(parked)
        if self.pending is None:
            return
        try:
            alloc = self.client.allocation(self.pending)
        except (DLInfraUnavailable, ApiFailure):
            return  # try again before the next cell
        if alloc["state"] not in ("granted", "queued") and alloc.get("placement") == "pool":
            # a grant the cluster could not start was handed back: the kernel asked again
            again = self._asked_again()
            if again is not None:
                alloc = again
                self.pending = alloc["id"]
        if alloc["state"] == "granted":
            self.pending = None
            self._apply(alloc)
        elif alloc["state"] != "queued":
            self.pending = None
            print(f"%gpu: your queued request ended: {alloc['end_reason']}", file=sys.stderr)

    def _asked_again(self) -> dict[str, Any] | None:
        """This kernel's active request of the pool, if it has one."""
        try:
            mine = self.client.my_allocations()
        except (DLInfraUnavailable, ApiFailure):
            return None
        return next(
            (
                a
                for a in mine
                if a.get("placement") == "pool" and a["state"] in ("granted", "queued")
            ),
            None,
        )

    # -- actions ---------------------------------------------------------------------------------

    def request(self, cmd: Command) -> None:
        alloc = self.client.request_gpus(cmd.count, cmd.model, cmd.priority_class)
        if alloc["state"] == "queued":
            if not cmd.wait:
                self.pending = alloc["id"]
                print(
                    queue_line(alloc)
                    + " The GPUs will be applied before the first cell you run after the grant."
                )
                return
            final = self._wait(alloc, cmd.timeout)
            if final is None:
                return
            alloc = final
        self.pending = None
        self._apply(alloc)
        if cmd.restart:
            self.restart()

    def _wait(self, alloc: dict[str, Any], timeout: float | None) -> dict[str, Any] | None:
        from IPython.display import display  # type: ignore[attr-defined]

        start = time.monotonic()
        handle = display(  # type: ignore[no-untyped-call]
            {"text/plain": self._queue_line(alloc, 0)}, raw=True, display_id=True
        )
        try:
            while alloc["state"] == "queued":
                waited = time.monotonic() - start
                if timeout is not None and waited >= timeout:
                    self.client.release(alloc["id"])
                    self._update(handle, f"Gave up after {waited:.0f} s and left the queue.")
                    return None
                step = POLL_S if timeout is None else min(POLL_S, timeout - waited)
                try:
                    alloc = self.client.allocation(alloc["id"], wait=max(step, 0.0))
                except (DLInfraUnavailable, ApiFailure) as err:
                    if isinstance(err, ApiFailure) and err.status not in _AWAY:
                        raise
                    # the request stays queued in the ledger: keep waiting for it
                    line = self._queue_line(alloc, time.monotonic() - start)
                    self._update(
                        handle,
                        f"{line} The GPU ledger does not answer ({err}); still "
                        "waiting, the place in the queue is kept.",
                    )
                    self.sleep(max(step, 0.1))
                    continue
                self._update(handle, self._queue_line(alloc, time.monotonic() - start))
        except KeyboardInterrupt:
            self.client.release(alloc["id"])
            self._update(handle, "Interrupted: left the queue.")
            return None
        if alloc["state"] != "granted":
            self._update(handle, f"The request ended: {alloc['end_reason']}")
            return None
        self._update(handle, f"Granted after {time.monotonic() - start:.1f} s in the queue.")
        return alloc

    @staticmethod
    def _queue_line(alloc: dict[str, Any], waited: float) -> str:
        if alloc["state"] != "queued":
            return f"Request {alloc['state']}."
        return queue_line(alloc, waited)

    @staticmethod
    def _update(handle: Any, text: str) -> None:
        if handle is not None:
            handle.update({"text/plain": text}, raw=True)
        else:
            print(text)

    def _warn_if_idle(self) -> dict[str, Any] | None:
        """Warn of an idle reclaim to come; the kernel's parked grant, if it has one."""
        try:
            usage = self.client.usage()
        except (DLInfraUnavailable, ApiFailure):
            return None
        parked = usage.get("parked")
        if parked:
            return dict(parked)
        idle = usage.get("idle") or {}
        if idle.get("state") == "warned" and idle.get("warned_at") != self._warned_at:
            self._warned_at = idle.get("warned_at")
            print(f"%gpu: {idle_warning(idle)}", file=sys.stderr)
        elif not usage.get("held"):
            self.holding = False
        return None

    def _resume(self, parked: dict[str, Any]) -> None:
        """Take the parked GPUs back before the cell runs, saying so while it waits."""
        from IPython.display import display  # type: ignore[attr-defined]

        start = time.monotonic()
        park = parked.get("park") or {}
        why = ""
        if park.get("since"):
            reason = f": {park['reason']}" if park.get("reason") else ""
            why = f" (parked {when(park.get('since'), relative=True)}{reason})"
        handle = display(  # type: ignore[no-untyped-call]
            {"text/plain": f"resuming your GPUs{why}: 0 s"}, raw=True, display_id=True
        )
        try:
            alloc = self.client.resume()["allocation"]
            while alloc["state"] == "granted" and alloc.get("park"):
                waited = time.monotonic() - start
                stopping = (
                    ", a batch job that borrowed them is stopping"
                    if alloc["park"]["state"] == "resuming"
                    else ""
                )
                self._update(handle, f"resuming your GPUs{why}: {waited:.0f} s{stopping}")
                alloc = self.client.allocation(alloc["id"], wait=RESUME_POLL_S)
        except (DLInfraUnavailable, ApiFailure) as err:
            self._update(handle, f"resuming your GPUs failed: {err}")
            print(
                "%gpu: this kernel's GPUs are still parked; CUDA calls wait until they are "
                "back. Run a cell again to retry.",
                file=sys.stderr,
            )
            return
        except KeyboardInterrupt:
            self._update(handle, "interrupted: your GPUs come back in the background")
            return
        if alloc["state"] != "granted":
            self.holding = False
            self._update(handle, f"your parked GPUs could not be resumed: {alloc['end_reason']}")
            return
        self._update(handle, f"resumed your GPUs in {time.monotonic() - start:.1f} s")

    def _in_other_pod(self, alloc: dict[str, Any]) -> bool:
        """Granted in a Kubernetes pod that is not this kernel's (it holds the GPUs)."""
        return alloc.get("placement") in _IN_PODS and self.environ.get("DLINFRA_ALLOCATION") != str(
            alloc["id"]
        )

    def _apply(self, alloc: dict[str, Any]) -> None:
        if self._in_other_pod(alloc):
            n = alloc["count"]
            print(
                f"Granted {n} GPU{'s' if n != 1 else ''} on node {alloc['node']}, in a new pod "
                "of this kernel. Restarting this kernel into that pod now: its variables are "
                "lost; run your cells again once it is back.",
                flush=True,
            )
            self.client.restart_kernel()
            return
        self.holding = True
        self.environ["CUDA_VISIBLE_DEVICES"] = alloc["cuda_visible_devices"]
        label = " (simulated)" if alloc.get("simulated") else ""
        n = len(alloc["gpus"])
        print(f"Granted {n} GPU{'s' if n != 1 else ''}{label}, allocation {alloc['id']}:")
        for gpu in alloc["gpus"]:
            print("  " + _describe(gpu))
        print(f"CUDA_VISIBLE_DEVICES={alloc['cuda_visible_devices']}")
        evidence = cuda_initialised()
        if evidence:
            print(
                f"Warning: {evidence}, so the new CUDA_VISIBLE_DEVICES does not take effect in "
                "this process. These GPUs stay reserved for this kernel: run `%gpu --restart` "
                "to restart the kernel with them applied at launch (its variables are lost), "
                "or `%gpu release` to give them back.",
                file=sys.stderr,
            )

    def show(self) -> None:
        mine = self.client.my_allocations()
        if not mine:
            cluster = self.client.cluster()
            print(
                f"This kernel holds no GPUs; {cluster['free_count']} of {cluster['gpu_count']} "
                "are free. Ask with `%gpu N`."
            )
            return
        held = False
        for alloc in mine:
            park = alloc.get("park")
            if park:
                n = len(alloc["gpus"])
                print(
                    f"This kernel's {n} GPU{'s' if n != 1 else ''} are {park['state']} "
                    f"(allocation {alloc['id']}, since {when(park.get('since'))}: "
                    f"{park.get('reason') or 'parked'}); the next cell takes them back."
                )
                continue
            if alloc["state"] == "queued":
                print(queue_line(alloc))
                standing = self.client.fairshare().get("you")
                if standing:
                    print(
                        f"Your fair-share factor is {standing['factor']:.2f} (1: no recent use, "
                        f"0.5: used your share); recent use {standing['usage_gpu_hours']:.1f} "
                        "GPU-hours."
                    )
                continue
            held = True
            label = " (simulated)" if alloc.get("simulated") else ""
            print(
                f"This kernel holds {len(alloc['gpus'])} GPU(s){label}, allocation {alloc['id']}:"
            )
            for gpu in alloc["gpus"]:
                print("  " + _describe(gpu))
        if held:
            usage = self.client.usage()
            idle = usage.get("idle") or {}
            if idle.get("state") == "warned":
                print(idle_warning(idle))
            elif idle.get("state") == "idle":
                print(
                    f"Idle since {when(idle.get('idle_since'))}; a reclaim warning comes "
                    f"{when(idle.get('warn_at'), relative=True)}."
                )
            for hint in usage.get("hints", []):
                print(f"Hint: {hint['message']}")

    def keep(self) -> None:
        idle = self.client.keep()
        left = idle.get("keeps_left", 0)
        print(
            f"Kept: these GPUs will not be reclaimed before {when(idle.get('hold_until'))} "
            f"({left} keep{'s' if left != 1 else ''} left while they stay idle)."
        )

    def profile(self, seconds: float, cell: str | None) -> None:
        from jupyter_dlinfra.kernel.profiling import Profiler

        profiler = Profiler(self.client)
        if not profiler.holds_gpus():
            print("This kernel holds no GPUs: nothing to profile. Ask with `%gpu N`.")
            return
        if cell is None:
            print(f"Profiling this kernel's GPUs for {seconds:g} s...", flush=True)
            profiler.sample_for(seconds)
        else:
            code = self.shell.transform_cell(cell)
            with profiler.in_background():
                self.shell.ex(compile(code, "<%%gpu profile>", "exec"))
        print(profiler.report())

    def park(self) -> None:
        from jupyter_dlinfra.kernel.parking import prepare

        # asked here, in the kernel: the server cannot ask a kernel whose cell runs (this one)
        report = prepare()
        if report["blockers"]:
            self._fail("this kernel cannot be parked: " + "; ".join(report["blockers"]))
            return
        answer = self.client.park(report)
        alloc = answer["allocation"]
        n = len(alloc["gpus"])
        size = (alloc.get("park") or {}).get("bytes")
        memory = f" ({size / 2**30:.1f} GiB)" if isinstance(size, int) else ""
        print(
            f"Parked: the memory of this kernel's {n} GPU{'s' if n != 1 else ''}{memory} waits "
            "in host memory and the GPUs are lent to preemptible jobs. The next cell you run "
            "takes them back first (a few seconds), with your variables as they were."
        )

    def release(self) -> None:
        mine = self.client.my_allocations()
        if not mine:
            print("This kernel holds no GPUs.")
            return
        parked = next((a for a in mine if a.get("park")), None)
        if parked is not None:
            # its GPU state must come back first, or this process's CUDA calls wait for ever
            self._resume({"allocation_id": parked["id"], "park": parked["park"]})
            mine = self.client.my_allocations()
        for alloc in mine:
            self.client.release(alloc["id"])
        self.pending = None
        self.environ["CUDA_VISIBLE_DEVICES"] = ""
        held = sum(len(a["gpus"]) for a in mine)
        if any(a.get("placement") in _IN_PODS and a["state"] == "granted" for a in mine):
            # a pod keeps its GPUs while it runs: only a pod without them gives them back
            print(
                f"Released {held} GPU(s). This kernel's pod holds them while it runs: restarting "
                "this kernel into a pod without GPUs now (its variables are lost).",
                flush=True,
            )
            self.client.restart_kernel()
            return
        print(f"Released {held} GPU(s); CUDA_VISIBLE_DEVICES is now empty.")

    def restart(self) -> None:
        held = [a for a in self.client.my_allocations() if a["state"] == "granted"]
        kept = sum(len(a["gpus"]) for a in held)
        # said and flushed first: the restart may end this process before a later print is sent
        print(f"Restarting this kernel with {kept} GPU(s) applied at launch...", flush=True)
        self.client.restart_kernel()

    @staticmethod
    def _fail(message: str) -> None:
        print(f"%gpu: {message}", file=sys.stderr)


def _gpu_line(cell: str | None) -> bool:
    """A cell that only runs %gpu (release, show...): no need to take parked GPUs back first."""
    lines = [line.strip() for line in (cell or "").splitlines() if line.strip()]
    return bool(lines) and all(
        line.startswith("%gpu") and not line.startswith("%%") for line in lines
    )


def register(ipython: Any) -> GpuMagic:
    magic = GpuMagic(ipython)
    ipython.register_magic_function(magic, magic_kind="line_cell", magic_name="gpu")
    ipython.events.register("pre_run_cell", magic.before_cell)
    return magic
