"""The in-job runner, end to end: a real ``python -m jupyter_dlinfra.jobs.runner`` process and a
real ipykernel, its stdout and stderr appended to ``job.log`` as the local backend does."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import nbformat
import psutil
import pytest
from nbformat import NotebookNode

from jupyter_dlinfra.jobs import runner
from jupyter_dlinfra.jobs.convert import prepare, snapshot
from jupyter_dlinfra.jobs.runner import JobDir, run

KERNELSPEC = {"name": "python3", "display_name": "Python 3", "language": "python"}
#: the longest any step here may take (kernel start-up on a loaded machine included)
DEADLINE_S = 90.0


def code(source: str, *tags: str) -> NotebookNode:
    cell = nbformat.v4.new_code_cell(source)
    if tags:
        cell.metadata["tags"] = list(tags)
    return cell


def md(source: str) -> NotebookNode:
    return nbformat.v4.new_markdown_cell(source)


def make_job(
    root: Path,
    *cells: NotebookNode,
    parameters: dict[str, Any] | None = None,
    spec: dict[str, Any] | None = None,
) -> tuple[JobDir, Path]:
    """A job directory under ``root/job`` whose notebook lives (and runs) in ``root/project``."""
    project = root / "project"
    project.mkdir(exist_ok=True)
    nb = nbformat.v4.new_notebook(cells=list(cells), metadata={"kernelspec": KERNELSPEC})
    ready = prepare(nb, parameters=parameters or {}, max_parameter_bytes=4096)
    job = JobDir(root / "job")
    snapshot(ready, job.path, spec={"cwd": str(project), **(spec or {})})
    return job, project


@pytest.fixture
def start() -> Iterator[Callable[[JobDir], subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []

    def launch(job: JobDir) -> subprocess.Popen[bytes]:
        with job.log.open("ab") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "jupyter_dlinfra.jobs.runner", str(job.path)],
                cwd=job.path,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        started.append(proc)
        return proc

    yield launch
    for proc in started:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def wait_for(check: Callable[[], bool], what: str, timeout: float = DEADLINE_S) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"gave up waiting {timeout:.0f} s for {what}"
        time.sleep(0.05)


def finish(proc: subprocess.Popen[bytes], job: JobDir) -> int:
    try:
        return proc.wait(timeout=DEADLINE_S)
    except subprocess.TimeoutExpired:
        pytest.fail(f"the runner did not end in {DEADLINE_S:.0f} s; log:\n{log_of(job)}")


def log_of(job: JobDir) -> str:
    return job.log.read_text(encoding="utf-8") if job.log.exists() else ""


def status_of(job: JobDir) -> dict[str, Any]:
    return json.loads(job.status.read_text(encoding="utf-8"))  # type: ignore[no-any-return]


def executed(job: JobDir) -> NotebookNode:
    return nbformat.read(job.executed, as_version=4)


def text_of(cell: NotebookNode, name: str = "stdout") -> str:
    return "".join(o.text for o in cell.outputs if o.output_type == "stream" and o.name == name)


def between(log: str, start: str, end: str) -> str:
    return log.split(start, 1)[1].split(end, 1)[0]


def process_gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def test_public_api_and_layout_are_pinned(tmp_path: Path) -> None:
    assert sorted(runner.__all__) == sorted(
        [
            "EXIT_FAILED",
            "EXIT_SUCCEEDED",
            "EXIT_USAGE",
            "JobClient",
            "JobDir",
            "main",
            "run",
            "write_atomic",
        ]
    )
    job = JobDir(tmp_path)
    names = [job.input, job.script, job.spec, job.log, job.kernel_log, job.executed]
    names += [job.report, job.status]
    assert [p.name for p in names] == [
        "input.ipynb",
        "script.py",
        "spec.json",
        "job.log",
        "kernel.log",
        "executed.ipynb",
        "report.html",
        "status.json",
    ]


def test_a_job_runs_in_its_cwd_with_its_parameters_and_a_live_log(
    tmp_path: Path, start: Callable[[JobDir], subprocess.Popen[bytes]]
) -> None:
    job, project = make_job(
        tmp_path,
        md("# A training job"),
        code("%gpu 1\ngreeting = 'default'", "parameters"),
        code(
            "import pathlib, sys\n"
            "pathlib.Path('out.txt').write_text(greeting)\n"
            "print(greeting)\n"
            "print('to stderr', file=sys.stderr)"
        ),
        code(
            # holds the job until the test has seen the first line in the log
            "import pathlib, time\n"
            "print('first', flush=True)\n"
            f"deadline = time.monotonic() + {DEADLINE_S}\n"
            "while not pathlib.Path('go').exists() and time.monotonic() < deadline:\n"
            "    time.sleep(0.05)\n"
            "print('second')"
        ),
        code("from IPython.display import HTML, display\ndisplay(HTML('<b>bold</b>'))\n6 * 7"),
        parameters={"greeting": "hello from the parameters"},
    )
    proc = start(job)
    wait_for(lambda: "first" in log_of(job), "the first line in the log")
    # the log shows output while the job still runs
    assert proc.poll() is None
    assert "second" not in log_of(job)
    assert not job.status.exists()
    (project / "go").touch()
    assert finish(proc, job) == 0

    log = log_of(job)
    assert log.startswith("--- job started: kernel python3, in ")
    assert "--- cell 2 ---" in log  # the parameters cell
    assert "--- cell 3 ---\n" in log  # the injected cell, silent
    # stdout and stderr are separate streams: their order is not the kernel's promise
    assert sorted(between(log, "--- cell 4 ---\n", "--- cell 5").splitlines()) == [
        "hello from the parameters",
        "to stderr",
    ]
    assert "--- cell 5 ---\nfirst\nsecond\n" in log
    assert "--- cell 6 ---\n[display: text/html, text/plain]\n42\n" in log
    assert log.rstrip().splitlines()[-1].startswith("--- succeeded in ")
    assert "Traceback" not in log and "Warning" not in log

    status = status_of(job)
    assert status["state"] == "succeeded"
    assert status["failed_cell"] is None and status["error"] is None
    assert status["traceback"] == []
    assert status["runner_pid"] == proc.pid
    assert status["exit_code"] == 0
    assert status["started_at"] <= status["ended_at"] <= time.time()

    assert (project / "out.txt").read_text() == "hello from the parameters"
    assert not (job.path / "out.txt").exists()
    nb = executed(job)
    assert text_of(nb.cells[3]) == "hello from the parameters\n"
    assert text_of(nb.cells[3], "stderr") == "to stderr\n"
    assert text_of(nb.cells[4]) == "first\nsecond\n"
    assert nb.cells[5].outputs[-1]["data"]["text/plain"] == "42"
    assert nb.metadata["language_info"]["name"] == "python"
    report = job.report.read_text(encoding="utf-8")
    assert report.lstrip().lower().startswith("<!doctype html>")
    assert "hello from the parameters" in report
    # the kernel's process-level echo stays out of job.log
    assert job.kernel_log.exists()


def test_a_failing_cell_stops_the_job_and_is_reported(
    tmp_path: Path, start: Callable[[JobDir], subprocess.Popen[bytes]]
) -> None:
    job, _ = make_job(
        tmp_path,
        code("a = 1\nprint('ran cell 1')"),
        md("Then it goes wrong."),
        code("print('about to fail')\na / 0"),
        code("print('cell 4 ran')"),
    )
    proc = start(job)
    assert finish(proc, job) == 1

    status = status_of(job)
    assert status["state"] == "failed"
    assert status["failed_cell"] == 3
    assert status["error"] == "ZeroDivisionError: division by zero"
    assert status["traceback"][-1] == "ZeroDivisionError: division by zero"
    assert any("a / 0" in line for line in status["traceback"])
    assert not any("\x1b[" in line for line in status["traceback"])
    assert status["exit_code"] == 1

    nb = executed(job)
    assert text_of(nb.cells[0]) == "ran cell 1\n"
    assert text_of(nb.cells[2]) == "about to fail\n"
    assert nb.cells[2].outputs[-1]["output_type"] == "error"
    assert nb.cells[3].outputs == []
    assert nb.cells[3].execution_count is None
    assert "about to fail" in job.report.read_text(encoding="utf-8")

    log = log_of(job)
    assert "--- cell 3 ---\nabout to fail\n" in log
    assert "ZeroDivisionError" in log
    assert "\x1b[" not in log
    assert "--- cell 4 ---" not in log and "cell 4 ran" not in log
    assert log.rstrip().splitlines()[-1].startswith("--- failed at cell 3 after ")
    assert log.rstrip().endswith(": ZeroDivisionError: division by zero ---")


@pytest.mark.parametrize(
    ("signum", "exit_code"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)], ids=["TERM", "INT"]
)
def test_a_signal_during_a_long_cell_cancels_promptly(
    tmp_path: Path,
    start: Callable[[JobDir], subprocess.Popen[bytes]],
    signum: signal.Signals,
    exit_code: int,
) -> None:
    job, _ = make_job(
        tmp_path,
        md("# Long"),
        code("import os, time\nprint('sleeping in', os.getpid(), flush=True)\ntime.sleep(600)"),
        code("print('after the sleep')"),
    )
    proc = start(job)
    wait_for(lambda: "sleeping in" in log_of(job), "the long cell to start")
    kernel_pid = int(log_of(job).split("sleeping in ")[1].split()[0])
    proc.send_signal(signum)
    # the cell sleeps for 10 minutes: an exit within the deadline means it was not waited for
    assert finish(proc, job) == exit_code

    status = status_of(job)
    assert status["state"] == "cancelled"
    assert status["failed_cell"] == 2
    assert status["error"] == f"cancelled by {signum.name}"
    assert status["exit_code"] == exit_code
    nb = executed(job)
    assert text_of(nb.cells[1]).startswith("sleeping in")
    assert nb.cells[2].outputs == []
    assert job.report.exists()
    log = log_of(job)
    assert f"--- cancelled by {signum.name} during cell 2 after " in log
    assert "after the sleep" not in log.replace("print('after the sleep')", "")
    wait_for(lambda: process_gone(kernel_pid), "the kernel to be gone")


def test_a_cell_that_runs_past_the_timeout_fails(
    tmp_path: Path, start: Callable[[JobDir], subprocess.Popen[bytes]]
) -> None:
    job, _ = make_job(
        tmp_path, code("x = 1"), code("import time\ntime.sleep(600)"), spec={"timeout": 0.5}
    )
    proc = start(job)
    assert finish(proc, job) == 1
    status = status_of(job)
    assert status["state"] == "failed"
    assert status["failed_cell"] == 2
    assert status["error"] == "CellTimeoutError: the cell ran longer than the timeout of 1 s"
    assert "--- failed at cell 2 after " in log_of(job)


def test_a_dead_kernel_fails_the_job_with_its_last_words(
    tmp_path: Path, start: Callable[[JobDir], subprocess.Popen[bytes]]
) -> None:
    job, _ = make_job(
        tmp_path,
        code("print('alive')"),
        code("import os, sys\nos.write(2, b'last words of the kernel\\n')\nos._exit(3)"),
        code("print('never')"),
    )
    proc = start(job)
    assert finish(proc, job) == 1
    status = status_of(job)
    assert status["state"] == "failed"
    assert status["failed_cell"] == 2
    assert status["error"].startswith("DeadKernelError: ")
    log = log_of(job)
    assert "--- the kernel's last words (kernel.log) ---" in log
    assert "last words of the kernel" in log
    assert text_of(executed(job).cells[0]) == "alive\n"


def test_an_unknown_kernel_fails_with_the_reason(tmp_path: Path) -> None:
    job, _ = make_job(tmp_path, code("x = 1"), spec={"kernel_name": "no-such-kernel"})
    assert run(job.path) == 1
    status = status_of(job)
    assert status["state"] == "failed"
    assert status["failed_cell"] is None
    assert "NoSuchKernel" in status["error"] and "no-such-kernel" in status["error"]
    # the notebook could be read, so there is an executed notebook (with nothing run) and a report
    assert executed(job).cells[0].outputs == []
    assert job.report.exists()
    assert "--- failed after " in log_of(job)


#: a kernel whose first launch never answers (it writes its pid and sleeps), then a real one
STALLING_KERNEL = """\
import os, pathlib, runpy, sys, time
marker = pathlib.Path(sys.argv.pop(1))
if not marker.exists():
    marker.write_text(str(os.getpid()))
    print("stalling at start-up", file=sys.stderr, flush=True)
    time.sleep(600)
sys.argv[0] = "ipykernel_launcher"
runpy.run_module("ipykernel_launcher", run_name="__main__")
"""


def test_a_kernel_that_does_not_answer_is_launched_once_more(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A first launch that never answers is killed and launched again; the job then runs."""
    kernels = tmp_path / "share" / "kernels" / "stalling"
    kernels.mkdir(parents=True)
    script, marker = tmp_path / "stalling.py", tmp_path / "first-launch.pid"
    script.write_text(STALLING_KERNEL)
    argv = [sys.executable, str(script), str(marker), "-f", "{connection_file}"]
    spec = {"argv": argv, "display_name": "stalling", "language": "python"}
    (kernels / "kernel.json").write_text(json.dumps(spec))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "share"))
    job, _ = make_job(
        tmp_path, code("print('ran')"), spec={"kernel_name": "stalling", "startup_timeout": 3}
    )
    assert run(job.path) == 0, log_of(job)
    log = log_of(job)
    assert "--- the kernel did not start (RuntimeError: Kernel didn't respond in 3 seconds)" in log
    assert "stalling at start-up" in between(log, "did not start", "launching the kernel again")
    assert "--- launching the kernel again (2 of 2) ---" in log
    assert text_of(executed(job).cells[0]) == "ran\n"
    wait_for(lambda: process_gone(int(marker.read_text())), "the stalled kernel to be killed")


def test_a_kernel_that_never_answers_fails_the_job_after_two_launches(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    kernels = tmp_path / "share" / "kernels" / "mute"
    kernels.mkdir(parents=True)
    argv = [
        sys.executable,
        "-c",
        "import sys, time; print('mute', file=sys.stderr); time.sleep(600)",
    ]
    (kernels / "kernel.json").write_text(json.dumps({"argv": argv, "display_name": "mute"}))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "share"))
    job, _ = make_job(tmp_path, code("x = 1"), spec={"kernel_name": "mute", "startup_timeout": 2})
    assert run(job.path) == 1
    status = status_of(job)
    assert status["error"] == "RuntimeError: Kernel didn't respond in 2 seconds"
    assert status["failed_cell"] is None
    log = log_of(job)
    assert log.count("--- the kernel's last words (kernel.log) ---\nmute") == 2
    assert "--- launching the kernel again (2 of 2) ---" in log
    assert "launching the kernel again (3" not in log


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"cwd": "/no/such/dir"}, "spec.json: cwd '/no/such/dir' is not a directory here"),
        ({"timeout": -1}, "spec.json: timeout must be a number of seconds or null, not -1"),
        ({"kernel_name": 3}, "spec.json: kernel_name must be a string, not 3"),
        ({"startup_timeout": 0}, "spec.json: startup_timeout must be a number of seconds, not 0"),
    ],
)
def test_a_bad_spec_fails_before_any_kernel(
    tmp_path: Path, spec: dict[str, Any], message: str
) -> None:
    job, _ = make_job(tmp_path, code("x = 1"), spec=spec)
    assert run(job.path) == 1
    status = status_of(job)
    assert (status["state"], status["error"]) == ("failed", message)
    assert not job.kernel_log.exists()


def test_missing_files_fail_with_a_status(tmp_path: Path) -> None:
    job = JobDir(tmp_path)
    assert run(job.path) == 1
    assert status_of(job)["error"].startswith("spec.json cannot be read: ")
    job.spec.write_text(json.dumps({"cwd": str(tmp_path)}))
    assert run(job.path) == 1
    assert status_of(job)["error"].startswith("input.ipynb cannot be read: ")
    assert not job.executed.exists()


def test_main_refuses_a_missing_job_dir(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert runner.main([str(tmp_path / "nope")]) == runner.EXIT_USAGE
    assert "no such job directory" in capsys.readouterr().err


def test_write_atomic_leaves_no_temporary_file(tmp_path: Path) -> None:
    target = tmp_path / "status.json"
    runner.write_atomic(target, "{}\n")
    runner.write_atomic(target, '{"state": "succeeded"}\n')
    assert target.read_text() == '{"state": "succeeded"}\n'
    assert [p.name for p in tmp_path.iterdir()] == ["status.json"]
