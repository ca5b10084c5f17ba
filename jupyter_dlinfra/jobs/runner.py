"""The in-job runner: ``python -m jupyter_dlinfra.jobs.runner JOBDIR`` runs a job's notebook.

It runs wherever the job runs (this node, a SLURM node, a Kubernetes pod) and needs nothing but
the job directory, which :func:`jupyter_dlinfra.jobs.convert.snapshot` wrote and which the server
reads back::

    input.ipynb     the prepared notebook                                  (snapshot)
    script.py       the same as a Python script, for people; not run       (snapshot)
    spec.json       {"cwd", "kernel_name", "timeout", ...}                 (snapshot)
    job.log         the live log, see below                                (runner + backend)
    kernel.log      the kernel process's own stdout and stderr             (runner)
    executed.ipynb  the notebook with its outputs, up to the cell that failed or was running
    report.html     executed.ipynb as HTML (nbconvert's HTMLExporter)
    status.json     how the job ended; written last, atomically (see :func:`run`)

``spec.json``: ``cwd`` is the directory the kernel runs in (the notebook's own, so that its
relative paths work; a relative ``cwd`` is taken from the job directory); ``kernel_name`` the
kernelspec (default ``python3``); ``timeout`` the most seconds one cell may run (null: no limit);
``startup_timeout`` the most seconds the kernel may take to answer after its launch (default 60).
Other keys are the server's and are ignored here.

The log, ``job.log``, is plain text (ANSI colours stripped) that people and the UI tail while the
job runs. The runner appends to it itself, flushing after every write: a line
``--- job started: ... ---``, then for each code cell that runs a line ``--- cell N ---`` (N counts
all cells from 1, as ``failed_cell`` does) followed by the cell's stdout and stderr as they
arrive, its tracebacks, its results' ``text/plain`` and a one-line note for each display
(``[display: image/png, text/plain]``), and last a line ``--- succeeded in 12.3 s ---`` (or
``failed at cell 3``, or ``cancelled by SIGTERM``), written after ``status.json``.

The backend sends the runner process's own stdout and stderr to the same file, opened for
appending, so that nothing the runner says is lost (Python warnings, a crash of the runner
itself). The runner prints nothing else there. The kernel's process-level output is what ipykernel
forwards into the notebook anyway (and echoes to the process's real stdout): it goes to
``kernel.log`` so that it is not in ``job.log`` twice. The end of ``kernel.log`` is copied into
``job.log`` when the kernel dies, because that is where a crash says why.

A kernel that does not answer within ``startup_timeout``, or dies before it answers, is killed
and launched once more on fresh ports (a busy node, or a port another process took between the
kernel manager choosing it and the kernel binding it, is not the notebook's fault); the log says
so, with the first kernel's last words. A second failure fails the job.

SIGTERM or SIGINT (a cancel, SLURM's or Kubernetes' stop) kills the kernel at once, then the
notebook executed so far, the report and a ``cancelled`` status are written and the runner exits
with 143 (SIGTERM) or 130 (SIGINT). Otherwise it exits with 0 when every cell ran, 1 when not.
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import contextlib
import inspect
import json
import math
import os
import re
import signal
import sys
import threading
import time
import traceback
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import IO, Any

# jsonschema (under nbformat) imports rfc3987_syntax when present, which compiles a grammar for
# two seconds; the runner never checks IRI formats, and its start delays the job's first output
if __name__ == "__main__":
    sys.modules.setdefault("rfc3987_syntax", None)  # type: ignore[arg-type]

import nbformat
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError, CellTimeoutError, DeadKernelError
from nbformat import NotebookNode

__all__ = [
    "EXIT_FAILED",
    "EXIT_SUCCEEDED",
    "EXIT_USAGE",
    "JobClient",
    "JobDir",
    "main",
    "run",
    "write_atomic",
]

EXIT_SUCCEEDED = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
#: lines of kernel.log copied into job.log when the kernel dies
KERNEL_LOG_TAIL = 20
#: launches of the kernel before a job fails because its kernel did not start
KERNEL_STARTS = 2
#: seconds a kernel may take to answer after its launch, unless spec.json says otherwise
STARTUP_TIMEOUT_S = 60

_ANSI = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)")
_SIGNAL_NAMES: dict[int, str] = {signal.SIGTERM: "SIGTERM", signal.SIGINT: "SIGINT"}


@dataclass(frozen=True)
class JobDir:
    """The files of one job, in one directory that the server and the job's node share."""

    path: Path
    #: where this run's log, outputs and status go: a rank's own directory of a distributed
    #: job (``ranks/2``, see ``jobs/ranks.py``); None: ``path``
    out: Path | None = None

    @property
    def _out(self) -> Path:
        return self.path if self.out is None else self.out

    @property
    def input(self) -> Path:
        return self.path / "input.ipynb"

    @property
    def script(self) -> Path:
        return self.path / "script.py"

    @property
    def spec(self) -> Path:
        return self.path / "spec.json"

    @property
    def log(self) -> Path:
        return self._out / "job.log"

    @property
    def kernel_log(self) -> Path:
        return self._out / "kernel.log"

    @property
    def executed(self) -> Path:
        return self._out / "executed.ipynb"

    @property
    def report(self) -> Path:
        return self._out / "report.html"

    @property
    def status(self) -> Path:
        return self._out / "status.json"


def write_atomic(path: Path, text: str) -> None:
    """Readers (on other nodes, over a shared file system) see the old file or the whole new one."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with tmp.open("w", encoding="utf-8") as out:
            out.write(text)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _plain(text: str) -> str:
    return _ANSI.sub("", text)


class _Log:
    """``job.log``, appended to and flushed at every write so that it can be tailed live."""

    def __init__(self, path: Path) -> None:
        self._file: IO[str] = path.open("a", encoding="utf-8", errors="replace")
        self._at_line_start = True

    def write(self, text: str) -> None:
        text = _plain(text)
        if not text:
            return
        self._file.write(text)
        self._file.flush()
        self._at_line_start = text.endswith("\n")

    def line(self, text: str) -> None:
        """``text`` on a line of its own, even after output that did not end its line."""
        self.write(("" if self._at_line_start else "\n") + text.rstrip("\n") + "\n")

    def output(self, msg: Mapping[str, Any]) -> None:
        kind = msg.get("msg_type")
        content = msg.get("content") or {}
        data = content.get("data") or {}
        if kind == "stream":
            self.write(str(content.get("text", "")))
        elif kind == "error":
            lines = content.get("traceback") or [f"{content.get('ename')}: {content.get('evalue')}"]
            self.line("\n".join(str(line) for line in lines))
        elif kind == "execute_result" and isinstance(data.get("text/plain"), str):
            self.line(data["text/plain"])
        elif kind in ("execute_result", "display_data"):
            what = "result" if kind == "execute_result" else "display"
            self.line(f"[{what}: {', '.join(sorted(data)) or 'empty'}]")

    def close(self) -> None:
        self._file.close()


class JobClient(NotebookClient):
    """A NotebookClient that writes each cell's header and outputs to the job's log as they come."""

    def __init__(self, nb: NotebookNode, *, log: _Log, **kw: Any) -> None:
        super().__init__(nb, **kw)
        self.job_log = log
        #: index in ``nb.cells`` of the cell executing, or last executed
        self.current_cell: int | None = None
        #: True once the kernel answered (nbclient's notebook start hook ran)
        self.kernel_ready = False
        self.on_cell_execute = self._cell_starts
        self.on_notebook_start = self._kernel_answers

    def _kernel_answers(self, notebook: NotebookNode) -> None:
        self.kernel_ready = True

    def _cell_starts(self, cell: NotebookNode, cell_index: int) -> None:
        self.current_cell = cell_index
        self.job_log.line(f"--- cell {cell_index + 1} ---")

    def output(
        self,
        outs: list[NotebookNode],
        msg: dict[str, Any],
        display_id: str | None,
        cell_index: int,
    ) -> NotebookNode | None:
        self.job_log.output(msg)
        return super().output(outs, msg, display_id, cell_index)

    async def _async_handle_timeout(
        self, timeout: int, cell: NotebookNode | None = None
    ) -> dict[str, Any] | None:
        # the cell still runs: a graceful shutdown would wait for it, then kill it anyway
        self.shutdown_kernel = "immediate"
        return await super()._async_handle_timeout(timeout, cell)


@dataclass
class _Outcome:
    state: str
    failed_cell: int | None = None
    error: str | None = None
    traceback: list[str] = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        return EXIT_SUCCEEDED if self.state == "succeeded" else EXIT_FAILED


class _Spec:
    def __init__(self, job: JobDir) -> None:
        try:
            raw = json.loads(job.spec.read_text(encoding="utf-8"))
        except (OSError, ValueError) as err:
            raise _SetupError(f"{job.spec.name} cannot be read: {err}") from None
        if not isinstance(raw, dict):
            raise _SetupError(f"{job.spec.name} is not a JSON object")
        cwd = raw.get("cwd") or "."
        if not isinstance(cwd, str):
            raise _SetupError(f"{job.spec.name}: cwd must be a path, not {cwd!r}")
        self.cwd = (job.path / cwd).resolve()
        if not self.cwd.is_dir():
            raise _SetupError(f"{job.spec.name}: cwd {str(self.cwd)!r} is not a directory here")
        name = raw.get("kernel_name") or "python3"
        if not isinstance(name, str):
            raise _SetupError(f"{job.spec.name}: kernel_name must be a string, not {name!r}")
        self.kernel_name = name
        timeout = raw.get("timeout")
        if timeout is not None and (
            isinstance(timeout, bool)
            or not isinstance(timeout, int | float)
            or not 0 < timeout < math.inf
        ):
            raise _SetupError(
                f"{job.spec.name}: timeout must be a number of seconds or null, not {timeout!r}"
            )
        # nbclient takes whole seconds; rounding up never cuts a cell short
        self.timeout = None if timeout is None else math.ceil(timeout)
        startup = raw.get("startup_timeout", STARTUP_TIMEOUT_S)
        if (
            isinstance(startup, bool)
            or not isinstance(startup, int | float)
            or not 0 < startup < math.inf
        ):
            raise _SetupError(
                f"{job.spec.name}: startup_timeout must be a number of seconds, not {startup!r}"
            )
        self.startup_timeout = math.ceil(startup)


class _SetupError(Exception):
    pass


class _Stop:
    """Turns SIGTERM/SIGINT, caught in the main thread, into a cancel of the execution task."""

    def __init__(self) -> None:
        self.signum: int | None = None
        #: True once the execution was told to stop (a signal came while it ran)
        self.cancelled = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[Any] | None = None
        self._client: JobClient | None = None

    def handler(self, signum: int, frame: FrameType | None) -> None:
        # set before reading _loop, while attach() sets _loop before reading signum: one of the
        # two sides always sees the other, without a lock that the handler could deadlock on
        if self.signum is None:
            self.signum = signum
        loop = self._loop
        if loop is not None:
            with contextlib.suppress(RuntimeError):  # the loop has closed: nothing left to stop
                loop.call_soon_threadsafe(self._cancel)

    def attach(self, task: asyncio.Task[Any], client: JobClient) -> None:
        self._task, self._client = task, client
        self._loop = task.get_loop()
        if self.signum is not None:
            self._cancel()

    def detach(self) -> None:
        self._task = None

    def _cancel(self) -> None:
        if self._task is None or self.cancelled or self._client is None:
            return
        self.cancelled = True
        # the default, graceful shutdown waits seconds for a kernel busy in a long cell
        self._client.shutdown_kernel = "immediate"
        self._task.cancel()


def _error_outcome(client: JobClient, err: BaseException) -> _Outcome:
    index = client.current_cell
    where = index + 1 if index is not None else None
    if isinstance(err, CellExecutionError):
        outputs = client.nb.cells[index].get("outputs", []) if index is not None else []
        errors = [o for o in outputs if o.get("output_type") == "error"]
        if errors:
            ename, evalue = str(errors[-1].get("ename", "")), str(errors[-1].get("evalue", ""))
            lines = [_plain(str(line)) for line in errors[-1].get("traceback", [])]
        else:
            ename, evalue, lines = err.ename, err.evalue, []
        error = f"{ename}: {evalue}" if evalue else ename
        return _Outcome(state="failed", failed_cell=where, error=error, traceback=lines)
    if isinstance(err, CellTimeoutError):
        # nbclient's own message quotes the cell's source over several lines
        error = f"CellTimeoutError: the cell ran longer than the timeout of {client.timeout} s"
        return _Outcome(state="failed", failed_cell=where, error=error)
    if isinstance(err, DeadKernelError):
        error = f"DeadKernelError: {str(err).strip() or 'the kernel died'}"
        return _Outcome(state="failed", failed_cell=where, error=error)
    # the kernel did not start, or the runner broke: the traceback is the runner's
    return _Outcome(
        state="failed",
        failed_cell=where,
        error=f"{type(err).__name__}: {err}",
        traceback=traceback.format_exception(err),
    )


async def _settle(value: Any) -> Any:
    """The kernel manager nbclient makes is async, but a configured one may not be."""
    return await value if inspect.isawaitable(value) else value


async def _stop_kernel(client: JobClient) -> None:
    """Whatever happened, no kernel outlives the runner (a cancel during start-up leaves one)."""
    km = client.km
    if km is None:
        return
    with contextlib.suppress(Exception):
        if await _settle(km.is_alive()):
            await _settle(km.shutdown_kernel(now=True))
    with contextlib.suppress(Exception):
        await _settle(km.cleanup_resources())


async def _execute(client: JobClient, stop: _Stop, kernel_out: IO[bytes]) -> _Outcome:
    task = asyncio.current_task()
    assert task is not None
    stop.attach(task, client)
    outcome: _Outcome
    try:
        await client.async_execute(stdout=kernel_out, stderr=kernel_out)
        outcome = _Outcome(state="succeeded")
    except asyncio.CancelledError:
        outcome = _Outcome(state="cancelled")
    except Exception as err:
        outcome = _error_outcome(client, err)
    stop.detach()
    if stop.cancelled:
        # nbclient turns a cancel into DeadKernelError; either way it was a cancel, not a failure
        uncancel = getattr(task, "uncancel", None)  # Python 3.11+
        while uncancel is not None and task.cancelling():
            uncancel()
        index = client.current_cell
        outcome = _Outcome(
            state="cancelled",
            failed_cell=index + 1 if index is not None else None,
            error=f"cancelled by {_SIGNAL_NAMES.get(stop.signum or 0, 'a signal')}",
        )
    await _stop_kernel(client)
    # nbclient registers this at start and unregisters it only when start-up completed
    atexit.unregister(client._cleanup_kernel)
    return outcome


def _run_in_thread(client: JobClient, stop: _Stop, kernel_out: IO[bytes]) -> _Outcome:
    """Execute on an event loop in a worker thread; the main thread keeps the signals.

    nbclient installs its own SIGINT/SIGTERM handlers on the loop it runs on, which would shut the
    kernel down behind our back; off the main thread it cannot, and says nothing.
    """
    result: list[_Outcome] = []
    crash: list[BaseException] = []

    def work() -> None:
        try:
            result.append(asyncio.run(_execute(client, stop, kernel_out)))
        except BaseException as err:
            crash.append(err)

    worker = threading.Thread(target=work, name="job-execution", daemon=True)
    worker.start()
    while worker.is_alive():
        worker.join(0.2)  # a bounded wait, so that signal handlers run promptly
    if crash:
        return _error_outcome(client, crash[0])
    return result[0]


def _kernel_log_tail(job: JobDir, since: int = 0) -> str:
    """The last lines the kernel wrote to kernel.log after byte ``since``."""
    try:
        with job.kernel_log.open("rb") as file:
            file.seek(since)
            text = file.read().decode("utf-8", errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-KERNEL_LOG_TAIL:])


def _did_not_start(client: JobClient, outcome: _Outcome, stop: _Stop) -> bool:
    """jupyter_client says a kernel that never answered, or died first, with a RuntimeError; a
    missing kernelspec (NoSuchKernel) or a cancel would fail the same way again."""
    return (
        outcome.state == "failed"
        and not client.kernel_ready
        and not stop.cancelled
        and stop.signum is None
        and (outcome.error or "").startswith("RuntimeError: ")
    )


def _run_kernel(job: JobDir, nb: NotebookNode, spec: _Spec, stop: _Stop, log: _Log) -> _Outcome:
    """Execute ``nb``, launching its kernel again once if the first launch never answered."""
    start = 1
    while True:
        client = JobClient(
            nb,
            log=log,
            kernel_name=spec.kernel_name,
            timeout=spec.timeout,
            startup_timeout=spec.startup_timeout,
            resources={"metadata": {"path": str(spec.cwd)}},
        )
        with job.kernel_log.open("ab") as kernel_out:
            since = kernel_out.tell()
            outcome = _run_in_thread(client, stop, kernel_out)
        tail = _kernel_log_tail(job, since)
        if start < KERNEL_STARTS and _did_not_start(client, outcome, stop):
            log.line(f"--- the kernel did not start ({outcome.error}) ---")
            if tail:
                log.line(f"--- the kernel's last words ({job.kernel_log.name}) ---\n{tail}")
            start += 1
            log.line(f"--- launching the kernel again ({start} of {KERNEL_STARTS}) ---")
            continue
        died = "DeadKernelError" in (outcome.error or "") or not client.kernel_ready
        if outcome.state == "failed" and died and tail:
            log.line(f"--- the kernel's last words ({job.kernel_log.name}) ---\n{tail}")
        return outcome


def _write_outputs(job: JobDir, nb: NotebookNode, log: _Log) -> None:
    try:
        write_atomic(job.executed, nbformat.writes(nb))  # type: ignore[no-untyped-call]
    except Exception as err:
        log.line(f"--- could not write {job.executed.name}: {type(err).__name__}: {err} ---")
        return
    try:
        from nbconvert import HTMLExporter  # heavy (jinja2, pygments): only once, at the end

        body, _ = HTMLExporter().from_notebook_node(nb)  # type: ignore[no-untyped-call]
        write_atomic(job.report, str(body))
    except Exception as err:
        # the report is a convenience: its failure must not change how the job ended
        log.line(f"--- could not write {job.report.name}: {type(err).__name__}: {err} ---")


def _final_line(outcome: _Outcome, seconds: float) -> str:
    took = f"after {seconds:.1f} s"
    where = f" at cell {outcome.failed_cell}" if outcome.failed_cell is not None else ""
    if outcome.state == "succeeded":
        return f"--- succeeded in {seconds:.1f} s ---"
    if outcome.state == "cancelled":
        during = f" during cell {outcome.failed_cell}" if outcome.failed_cell is not None else ""
        return f"--- {outcome.error or 'cancelled'}{during} {took} ---"
    return f"--- failed{where} {took}: {outcome.error} ---"


def run(jobdir: Path, out: Path | None = None) -> int:
    """Run the job in ``jobdir``; returns the exit code (0, 1, 130, 143). ``out``: where the
    log, outputs and status go instead of ``jobdir`` (one rank's of a distributed job).

    Always writes ``status.json``, last and atomically::

        {"state": "succeeded" | "failed" | "cancelled",
         "failed_cell": 3,            # 1-based among all cells; the cell that raised, timed out,
                                      # killed the kernel or was running at a cancel; else null
         "error": "ZeroDivisionError: division by zero",   # null on success
         "traceback": ["..."],        # the cell's traceback, ANSI colours stripped; or []
         "started_at": 1700000000.0, "ended_at": 1700000012.3,   # epoch seconds
         "runner_pid": 4242, "exit_code": 1}

    and, whenever the notebook could be read, ``executed.ipynb`` and ``report.html`` before it.
    SIGTERM and SIGINT cancel the job when this runs in the main thread (as the command does).
    """
    job = JobDir(Path(jobdir), None if out is None else Path(out))
    if job.out is not None:
        job.out.mkdir(parents=True, exist_ok=True)
    # a status left by an earlier run of this directory must not speak for this one
    job.status.unlink(missing_ok=True)
    started = time.time()
    stop = _Stop()
    log = _Log(job.log)
    previous: dict[int, Any] = {}
    if threading.current_thread() is threading.main_thread():  # elsewhere Python refuses
        previous = {sig: signal.signal(sig, stop.handler) for sig in _SIGNAL_NAMES}
    try:
        nb: NotebookNode | None = None
        try:
            spec = _Spec(job)
            try:
                nb = nbformat.read(job.input, as_version=4)  # type: ignore[no-untyped-call]
            except Exception as err:
                raise _SetupError(f"{job.input.name} cannot be read: {err}") from None
            for cell in nb.cells:  # a cell not reached must not show outputs from another run
                if cell.cell_type == "code":
                    cell.outputs, cell.execution_count = [], None
            log.line(
                f"--- job started: kernel {spec.kernel_name}, in {spec.cwd}, "
                f"runner pid {os.getpid()} ---"
            )
            outcome = _run_kernel(job, nb, spec, stop, log)
        except _SetupError as err:
            outcome = _Outcome(state="failed", error=str(err))
        if nb is not None:
            _write_outputs(job, nb, log)
        code = outcome.exit_code
        if outcome.state == "cancelled":
            code = 128 + (stop.signum or signal.SIGTERM)
        ended = time.time()
        status = {
            "state": outcome.state,
            "failed_cell": outcome.failed_cell,
            "error": outcome.error,
            "traceback": outcome.traceback,
            "started_at": started,
            "ended_at": ended,
            "runner_pid": os.getpid(),
            "exit_code": code,
        }
        write_atomic(job.status, json.dumps(status, indent=2) + "\n")
        log.line(_final_line(outcome, ended - started))
        return code
    finally:
        log.close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m jupyter_dlinfra.jobs.runner",
        description="Run a notebook job from its job directory (see the module's docstring).",
    )
    parser.add_argument("jobdir", type=Path, help="the job directory: input.ipynb, spec.json")
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="where the log, outputs and status go (relative: under JOBDIR); default JOBDIR",
    )
    parser.add_argument(
        "--rank-out",
        action="store_true",
        help="a worker that torchrun started: write to ranks/$RANK, this output included",
    )
    args = parser.parse_args(argv)
    if not args.jobdir.is_dir():
        print(f"{args.jobdir}: no such job directory", file=sys.stderr)
        return EXIT_USAGE
    out = None if args.out is None else args.jobdir / args.out
    if args.rank_out:
        rank = os.environ.get("RANK", "")
        if not rank.isdigit():
            print("--rank-out: RANK is not set (run under torchrun)", file=sys.stderr)
            return EXIT_USAGE
        out = args.jobdir / "ranks" / rank
        out.mkdir(parents=True, exist_ok=True)
        # torchrun gives a worker the agent's own output: this rank's goes to its own log,
        # as the launcher's ranks' do
        log = os.open(out / "job.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(log, 1)
        os.dup2(log, 2)
        os.close(log)
    return run(args.jobdir, out)


if __name__ == "__main__":
    sys.exit(main())
