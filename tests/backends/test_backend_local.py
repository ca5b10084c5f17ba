"""What only the local backend does, with real processes: the runner's status decides a job's
end, a job is found again by pid and start time, and recover reads the job's directory. What
every backend does is in test_backend_contract.py."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from jupyter_dlinfra.backends import BackendState, BackendStatus, JobHandle, JobLaunch
from jupyter_dlinfra.backends.local import LocalBackend


def _launch(workdir: Path, code: str) -> JobLaunch:
    workdir.mkdir(parents=True, exist_ok=True)
    return JobLaunch(
        job_id=1,
        name="t",
        user="u",
        workdir=str(workdir),
        argv=[sys.executable, "-c", code],
        log_path=str(workdir / "job.log"),
    )


def _until_ended(backend: LocalBackend, handle: JobHandle, timeout: float = 30) -> BackendStatus:
    deadline = time.monotonic() + timeout
    while True:
        status = backend.poll([handle])[handle.ref]
        if status.state.ended:
            return status
        assert time.monotonic() < deadline, status
        time.sleep(0.05)


def test_a_job_writes_its_log_and_its_status_decides_the_end(tmp_path: Path) -> None:
    backend = LocalBackend()
    code = (
        "import json, pathlib; print('hello', flush=True);"
        "pathlib.Path('status.json').write_text(json.dumps({'state': 'failed', 'error': 'E: x'}))"
    )
    handle = backend.submit(_launch(tmp_path / "j", code))
    status = _until_ended(backend, handle)
    assert status.state is BackendState.FAILED and status.reason == "E: x"
    assert (tmp_path / "j" / "job.log").read_text().startswith("hello")


def test_another_server_finds_the_job_by_pid_and_start_time(tmp_path: Path) -> None:
    launch = _launch(tmp_path / "j", "import time; time.sleep(60)")
    first = LocalBackend()
    handle = first.submit(launch)
    # a new server: no child handle, only what the ledger stored
    second = LocalBackend()
    assert second.poll([handle])[handle.ref].state is BackendState.RUNNING
    # a pid whose start time differs is not the job (the pid was recycled)
    forged = JobHandle(
        backend="local",
        ref=handle.ref,
        detail={**handle.detail, "started_at": handle.detail["started_at"] - 100},
    )
    assert second.poll([forged])[forged.ref].state is BackendState.LOST
    second.cancel(handle)
    status = _until_ended(first, handle)
    assert status.state is BackendState.FAILED
    assert "signal 15" in (status.reason or "")


def test_recover_finds_an_ended_job_only_by_its_status(tmp_path: Path) -> None:
    launch = _launch(tmp_path / "j", "import time; time.sleep(60)")
    backend = LocalBackend()
    handle = backend.submit(launch)
    backend.cancel(handle)
    _until_ended(backend, handle)
    # ended without a status: nothing to recover, the job may be started again
    assert LocalBackend().recover(launch) is None
    (tmp_path / "j" / "status.json").write_text(json.dumps({"state": "succeeded"}))
    # ended with a status: recovered, so that its end is recorded rather than rerun
    assert LocalBackend().recover(launch) is not None
