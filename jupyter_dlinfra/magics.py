"""``%gpu``: ask the GPU ledger for GPUs from a notebook cell, and see what this kernel holds."""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import time
from dataclasses import dataclass
from typing import Any

from .api_client import ApiFailure, DLInfraUnavailable, KernelApiClient
from .cuda_state import cuda_initialised

__all__ = ["GpuMagic", "parse_line", "register"]

USAGE = """\
%gpu N [--model NAME] [--timeout SECONDS] [--no-wait]   ask for N GPUs (waits in the queue)
%gpu                                                    show this kernel's GPUs, live
%gpu release                                            give this kernel's GPUs back
%gpu --restart                                          restart the kernel with its GPUs applied"""

POLL_S = 2.0


class UsageError(Exception):
    pass


@dataclass(frozen=True, kw_only=True)
class Command:
    action: str  # show | request | release | restart | help
    count: int = 0
    model: str | None = None
    timeout: float | None = None
    wait: bool = True
    restart: bool = False


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:  # argparse would print usage and exit the kernel
        raise UsageError(message)


def _parser() -> _Parser:
    p = _Parser(prog="%gpu", add_help=False)
    p.add_argument("what", nargs="?")
    p.add_argument("--model")
    p.add_argument("--timeout", type=float)
    p.add_argument("--no-wait", action="store_true")
    p.add_argument("--restart", action="store_true")
    p.add_argument("-h", "--help", action="store_true")
    return p


def parse_line(line: str) -> Command:
    try:
        args = _parser().parse_args(shlex.split(line))
    except ValueError as err:
        raise UsageError(str(err)) from None
    if args.help:
        return Command(action="help")
    what = args.what
    if what is None:
        if args.model or args.timeout is not None or args.no_wait:
            raise UsageError("say how many GPUs, e.g. %gpu 2 --model A100")
        return Command(action="restart" if args.restart else "show")
    if what == "release":
        return Command(action="release")
    try:
        count = int(what)
    except ValueError:
        raise UsageError(f"expected a number of GPUs or 'release', not {what!r}") from None
    if count <= 0:
        raise UsageError(
            f"ask for at least 1 GPU (got {count}); use %gpu release to give GPUs back"
        )
    if args.timeout is not None and args.timeout <= 0:
        raise UsageError("--timeout must be a positive number of seconds")
    return Command(
        action="request",
        count=count,
        model=args.model,
        timeout=args.timeout,
        wait=not args.no_wait,
        restart=args.restart,
    )


def _gib(n: int | None) -> str:
    return "?" if n is None else f"{n / 2**30:.1f} GiB"


def _describe(gpu: dict[str, Any]) -> str:
    line = f"GPU {gpu['index']} {gpu['uuid']} ({gpu['model']})"
    if gpu.get("utilization_percent") is not None:
        line += (
            f": {gpu['utilization_percent']:.0f}% busy, {_gib(gpu.get('memory_used_bytes'))} used"
        )
    return line


class GpuMagic:
    def __init__(self, shell: Any, environ: dict[str, str] | None = None) -> None:
        self.shell = shell
        self.environ = os.environ if environ is None else environ
        self._client: KernelApiClient | None = None
        pending = self.environ.get("DLINFRA_PENDING_ALLOCATION", "")
        self.pending: int | None = int(pending) if pending.isdigit() else None
        self._launch_error = self.environ.get("DLINFRA_LAUNCH_ERROR") or None

    @property
    def client(self) -> KernelApiClient:
        if self._client is None:
            self._client = KernelApiClient.from_env(self.environ)
        return self._client

    # -- entry points ----------------------------------------------------------------------------

    def __call__(self, line: str) -> None:
        try:
            cmd = parse_line(line)
            if cmd.action == "help":
                print(USAGE)
            elif cmd.action == "show":
                self.show()
            elif cmd.action == "release":
                self.release()
            elif cmd.action == "restart":
                self.restart()
            else:
                self.request(cmd)
        except UsageError as err:
            self._fail(f"{err}\n{USAGE}")
        except DLInfraUnavailable as err:
            self._fail(f"GPU ledger not reachable: {err}")
        except ApiFailure as err:
            self._fail(str(err))

    def before_cell(self, *_: Any) -> None:
        """Runs before each cell: report a launch failure, apply GPUs granted in the background."""
        if self._launch_error:
            print(f"%gpu: {self._launch_error}", file=sys.stderr)
            self._launch_error = None
        if self.pending is None:
            return
        try:
            alloc = self.client.allocation(self.pending)
        except (DLInfraUnavailable, ApiFailure):
            return  # try again before the next cell
        if alloc["state"] == "granted":
            self.pending = None
            self._apply(alloc)
        elif alloc["state"] != "queued":
            self.pending = None
            print(f"%gpu: your queued request ended: {alloc['end_reason']}", file=sys.stderr)

    # -- actions ---------------------------------------------------------------------------------

    def request(self, cmd: Command) -> None:
        alloc = self.client.request_gpus(cmd.count, cmd.model)
        if alloc["state"] == "queued":
            if not cmd.wait:
                self.pending = alloc["id"]
                print(
                    f"Queued at position {alloc['position']} ({alloc['waiting_reason']}). "
                    "The GPUs will be applied before the first cell you run after the grant."
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
                alloc = self.client.allocation(alloc["id"], wait=max(step, 0.0))
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
        return (
            f"Queued at position {alloc['position']}, waited {waited:.0f} s: "
            f"{alloc['waiting_reason']}"
        )

    @staticmethod
    def _update(handle: Any, text: str) -> None:
        if handle is not None:
            handle.update({"text/plain": text}, raw=True)
        else:
            print(text)

    def _apply(self, alloc: dict[str, Any]) -> None:
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
        for alloc in mine:
            if alloc["state"] == "queued":
                print(f"Queued at position {alloc['position']}: {alloc['waiting_reason']}")
                continue
            label = " (simulated)" if alloc.get("simulated") else ""
            print(
                f"This kernel holds {len(alloc['gpus'])} GPU(s){label}, allocation {alloc['id']}:"
            )
            for gpu in alloc["gpus"]:
                print("  " + _describe(gpu))

    def release(self) -> None:
        mine = self.client.my_allocations()
        if not mine:
            print("This kernel holds no GPUs.")
            return
        for alloc in mine:
            self.client.release(alloc["id"])
        self.pending = None
        self.environ["CUDA_VISIBLE_DEVICES"] = ""
        held = sum(len(a["gpus"]) for a in mine)
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


def register(ipython: Any) -> GpuMagic:
    magic = GpuMagic(ipython)
    ipython.register_magic_function(magic, magic_kind="line", magic_name="gpu")
    ipython.events.register("pre_run_cell", magic.before_cell)
    return magic
