"""The contract every job backend keeps (``backends/base.py``), run against each real one.

``rig`` is the local backend (processes on this machine), SLURM (tests/slurm_cluster.py) and
Kubernetes (tests/k8s_cluster.py); ``placing`` only those that place GPUs themselves, which alone
take GPUs, queue jobs and hold chains (``places_gpus``). Every job is Python (``python -c``)
that writes the runner's ``status.json`` where the runner would; what each backend says in its
own words (a reason, an unknown job's name) is a field of its :class:`Rig`. What only one
backend does is tested in its own file.

Jobs that must wait hold until the test creates a file, so that no timing is guessed; every
wait polls the backend with a deadline.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import kubernetes.client
import psutil
import pytest
from backend_kit import DEADLINE, Jobs, alive, wait_ended, wait_for
from slurm_cluster import SlurmCluster

from jupyter_dlinfra.backends import (
    BackendError,
    BackendState,
    BackendStatus,
    JobBackend,
    JobHandle,
    JobLaunch,
)
from jupyter_dlinfra.backends.local import LocalBackend
from jupyter_dlinfra.backends.slurm import SlurmBackend
from jupyter_dlinfra.testing.server import wait_until


@dataclass(frozen=True, kw_only=True)
class Rig:
    """One backend as the contract drives it, and what it says in its own words."""

    backend: JobBackend
    #: the backend's name, as its entry point and stored handles spell it
    name: str
    #: the backend as a restarted server builds it (it knows only the stored handles)
    fresh: Callable[[], JobBackend]
    jobs: Jobs
    #: a handle's ref for a job this backend never had (``n`` tells several apart)
    unknown_ref: Callable[[int], str]
    #: the reason of a command that exits with code 3 without a status
    exit_3: str
    #: for backends that place GPUs: the GPUs of the largest node
    node_gpus: int = 0
    #: regex the reason of a job that waits for GPUs matches
    no_gpus: str = ""
    #: the reason of a child while its parent (job 1) runs
    waits_for_parent: str = ""
    #: the reason of a child cancelled as its parent (``job_id``) ended ``state``
    never_satisfied: Callable[[int, str], str] = lambda job_id, state: ""
    #: words the reason of a job it does not know holds (``ref``: the job's)
    unknown: Callable[[str], str] = lambda ref: ""
    #: a backend whose cluster does not answer, the regex of describe()'s reason, and of the
    #: error of a poll
    unreachable: Callable[[], tuple[JobBackend, str, str]] | None = None


def _python_jobs(root: Path, *, user: str, python: str = sys.executable) -> Jobs:
    root.mkdir()
    return Jobs(root, lambda code: [python, "-c", code], user=user)


def _local(request: pytest.FixtureRequest, tmp_path: Path) -> Rig:
    return Rig(
        backend=LocalBackend(),
        name="local",
        fresh=LocalBackend,
        jobs=_python_jobs(tmp_path / "jobs", user="u"),
        unknown_ref=lambda n: str(99999990 + n),
        exit_3="the job's process exited with code 3 without a status",
    )


def _slurm(request: pytest.FixtureRequest, tmp_path: Path) -> Rig:
    cluster: SlurmCluster = request.getfixturevalue("slurm_cluster")
    backend: SlurmBackend = request.getfixturevalue("slurm_backend")

    def unreachable() -> tuple[JobBackend, str, str]:
        # a configuration whose slurmctld does not run
        conf = cluster.conf.read_text()
        port = next(x for x in conf.splitlines() if x.startswith("SlurmctldPort="))
        dead_conf = tmp_path / "dead.conf"
        dead_conf.write_text(conf.replace(port, "SlurmctldPort=1"))
        # (scontrol ping answers at once; squeue retries for 18 s, longer than this timeout)
        dead = SlurmBackend(env={"SLURM_CONF": str(dead_conf)}, timeout=2)
        return dead, "slurmctld.*DOWN", "`squeue` did not answer within 2 s"

    return Rig(
        backend=backend,
        name="slurm",
        fresh=lambda: SlurmBackend(env=cluster.env, timeout=20),
        jobs=_python_jobs(tmp_path / "jobs", user="root"),
        unknown_ref=lambda n: str(99999990 + n),
        exit_3="NonZeroExitCode, exit code 3",
        node_gpus=cluster.ngpu,
        no_gpus="Resources",
        waits_for_parent="Dependency",
        never_satisfied=lambda job_id, state: "DependencyNeverSatisfied",
        unknown=lambda ref: "SLURM does not know the job",
        unreachable=unreachable,
    )


def _kubernetes(request: pytest.FixtureRequest, tmp_path: Path) -> Rig:
    make: Callable[..., JobBackend] = request.getfixturevalue("make_k8s_backend")

    def unreachable() -> tuple[JobBackend, str, str]:
        config = kubernetes.client.Configuration(host="https://127.0.0.1:1")
        config.verify_ssl = False
        config.retries = 0
        dead = make(api_client=kubernetes.client.ApiClient(config), timeout=3)
        return (
            dead,
            re.escape("cannot reach the Kubernetes API at https://127.0.0.1:1"),
            ("cannot reach"),
        )

    return Rig(
        backend=make(),
        name="kubernetes",
        fresh=make,
        # the backend replaces argv[0] (the gateway's interpreter) with the image's Python
        jobs=_python_jobs(
            tmp_path / "jobs", user="alice@example.com", python="/gateway/bin/python"
        ),
        unknown_ref=lambda n: f"dlinfra-job-{n}-{'abcdefgh'[n % 8] * 8}",
        exit_3="exit code 3 (Error)",
        # gpu-node-a: 4 x A100 (gpu-node-b: 2 x H100)
        node_gpus=4,
        no_gpus=r"^0/2 nodes are available.*Insufficient nvidia\.com/gpu",
        waits_for_parent="waiting for job 1 to succeed",
        never_satisfied=lambda job_id, state: (
            f"DependencyNeverSatisfied: job {job_id} it runs after {state}"
        ),
        unknown=lambda ref: f"no Job {ref}",
        unreachable=unreachable,
    )


_RIGS: dict[str, Callable[[pytest.FixtureRequest, Path], Rig]] = {
    "local": _local,
    "slurm": _slurm,
    "kubernetes": _kubernetes,
}


@pytest.fixture(params=["local", "slurm", "kubernetes"])
def rig(request: pytest.FixtureRequest, tmp_path: Path) -> Rig:
    # clusters start only for the tests that use them (-k local needs neither)
    return _RIGS[request.param](request, tmp_path)


@pytest.fixture(params=["slurm", "kubernetes"])
def placing(request: pytest.FixtureRequest, tmp_path: Path) -> Rig:
    """The backends that place GPUs themselves."""
    made = _RIGS[request.param](request, tmp_path)
    assert made.backend.places_gpus
    return made


def hold(release: Path) -> str:
    """Python that waits until the test creates ``release``."""
    return f"import os, time\nwhile not os.path.exists({str(release)!r}): time.sleep(0.05)\n"


def writes_status(state: str) -> str:
    """Python that writes the runner's ``status.json`` in the job's directory (its cwd)."""
    return f"open('status.json', 'w').write({json.dumps({'state': state})!r})\n"


def wait_state(
    backend: JobBackend, handle: JobHandle, state: BackendState, timeout: float = DEADLINE
) -> BackendStatus:
    return wait_for(
        backend, [handle], lambda s: s[handle.ref].state is state, state.value, timeout
    )[handle.ref]


def wait_log(launch: JobLaunch, text: str) -> None:
    """Until ``text`` is in the job's log (its command is then past its start-up)."""

    def found() -> bool:
        path = Path(launch.log_path)
        return path.exists() and text in path.read_text()

    wait_until(found, timeout=DEADLINE, what=f"{text!r} in the job's log")


def _fields(launch: JobLaunch) -> dict[str, Any]:
    return {f: getattr(launch, f) for f in JobLaunch.__dataclass_fields__}


# --- every backend ----------------------------------------------------------------------------


def test_job_succeeds_with_its_output_in_the_log(rig: Rig) -> None:
    backend = rig.backend
    code = (
        "import os, sys\n"
        "print('hello from', os.getcwd())\n"
        "print('GPUS=' + os.environ.get('CUDA_VISIBLE_DEVICES', ''))\n"
        "print('FOO=' + os.environ['FOO'])\n"
        "print('oops', file=sys.stderr)\n" + writes_status("succeeded")
    )
    gpus = 2 if backend.places_gpus else 0
    launch = rig.jobs.launch(code, gpus=gpus, env={"FOO": "it's a 'quoted' $value"})
    Path(launch.log_path).write_text("earlier line\n")
    handle = backend.submit(launch)
    assert handle.backend == backend.name
    assert handle.detail["workdir"] == launch.workdir

    status = wait_ended(backend, handle)
    assert status == BackendStatus(state=BackendState.SUCCEEDED, exit_code=0)
    log = Path(launch.log_path).read_text()
    # appended, stdout and stderr both, environment as given, run in the job directory
    assert log.startswith("earlier line\n")
    assert f"hello from {launch.workdir}" in log
    assert "FOO=it's a 'quoted' $value" in log and "oops" in log
    if gpus:
        # exactly the job's GPUs, placed by the cluster
        line = next(x for x in log.splitlines() if x.startswith("GPUS="))
        devices = line.removeprefix("GPUS=").split(",")
        assert len(devices) == gpus and len(set(devices)) == gpus, line
    # the handle survives a JSON round trip (the server stores it) and still polls
    again = JobHandle.from_json(json.loads(json.dumps(handle.to_json())))
    assert backend.poll([again])[again.ref].state is BackendState.SUCCEEDED


def test_failing_command_ends_failed_with_its_exit_code(rig: Rig) -> None:
    handle = rig.backend.submit(rig.jobs.launch("print('failing'); raise SystemExit(3)"))
    status = wait_ended(rig.backend, handle)
    assert status == BackendStatus(state=BackendState.FAILED, reason=rig.exit_3, exit_code=3)


def test_cancel_stops_the_running_job(rig: Rig, tmp_path: Path) -> None:
    backend = rig.backend
    pid_file = tmp_path / "pid"
    code = (
        "import os, signal, sys, time\n"
        "def stop(*a):\n"
        "    print('got SIGTERM', flush=True)\n"
        "    " + writes_status("cancelled") + "    sys.exit(143)\n"
        "signal.signal(signal.SIGTERM, stop)\n"
        f"open({str(pid_file)!r}, 'w').write(str(os.getpid()))\n"
        "print('started', flush=True)\n"
        "time.sleep(120)\n"
    )
    launch = rig.jobs.launch(code, gpus=1 if backend.places_gpus else 0)
    handle = backend.submit(launch)
    wait_state(backend, handle, BackendState.RUNNING)
    # (its output reached the log: the command handles SIGTERM by now)
    wait_log(launch, "started")
    pid = int(pid_file.read_text())
    assert psutil.pid_exists(pid)
    # a restarted server sees it run
    assert rig.fresh().poll([handle])[handle.ref].state is BackendState.RUNNING

    backend.cancel(handle)
    status = wait_ended(backend, handle)
    assert status.state is BackendState.CANCELLED, status
    wait_until(lambda: not alive(pid), timeout=DEADLINE, what="the job's process to stop")
    # the command heard the stop and said so in the log
    assert "got SIGTERM" in Path(launch.log_path).read_text()
    # cancelling again, or a job the backend never had, is no error
    backend.cancel(handle)
    backend.cancel(JobHandle(backend=backend.name, ref=rig.unknown_ref(0)))


def test_recover_finds_a_submitted_job_so_it_is_never_started_twice(
    rig: Rig, tmp_path: Path
) -> None:
    backend = rig.backend
    launch = rig.jobs.launch(hold(tmp_path / "release"))
    assert backend.recover(launch) is None  # never submitted
    handle = backend.submit(launch)
    # the server died before recording the handle: the next one finds it
    again = rig.fresh().recover(launch)
    assert again == handle
    assert again.to_json() == json.loads(json.dumps(handle.to_json()))
    # the same job id with another directory (another gateway, or a reused id) is not it
    other = JobLaunch(**{**_fields(launch), "workdir": str(rig.jobs.root / "elsewhere")})
    assert rig.fresh().recover(other) is None
    backend.cancel(handle)


def test_describe_names_the_backend_and_says_it_is_usable(rig: Rig) -> None:
    info = rig.backend.describe()
    assert info["available"] is True, info
    assert rig.backend.name == rig.name
    assert info["name"] == rig.name
    assert info["places_gpus"] is rig.backend.places_gpus


# --- backends that place GPUs -----------------------------------------------------------------


def test_a_job_waits_for_gpus_with_the_schedulers_reason_until_cancelled(
    placing: Rig, tmp_path: Path
) -> None:
    backend = placing.backend
    release = tmp_path / "release"
    blocker = backend.submit(placing.jobs.launch(hold(release), gpus=placing.node_gpus))
    wait_state(backend, blocker, BackendState.RUNNING)

    waiting = backend.submit(placing.jobs.launch("print('never')", gpus=placing.node_gpus))
    statuses = wait_for(
        backend,
        [blocker, waiting],
        lambda s: re.search(placing.no_gpus, s[waiting.ref].reason or "") is not None,
        "the scheduler's reason",
    )
    assert statuses[waiting.ref].state is BackendState.PENDING
    assert statuses[blocker.ref].state is BackendState.RUNNING

    backend.cancel(waiting)
    assert wait_ended(backend, waiting).state is BackendState.CANCELLED
    release.touch()
    assert wait_ended(backend, blocker).state is BackendState.SUCCEEDED


def test_chain_runs_child_after_parent_succeeds(placing: Rig, tmp_path: Path) -> None:
    backend, jobs = placing.backend, placing.jobs
    release, order = tmp_path / "release", tmp_path / "order"
    parent = backend.submit(
        jobs.launch(hold(release) + f"open({str(order)!r}, 'a').write('parent\\n')")
    )
    child_launch = jobs.launch(f"open({str(order)!r}, 'a').write('child\\n')", after=[parent])
    child = backend.submit(child_launch)
    status = wait_for(
        backend,
        [parent, child],
        lambda s: (
            s[parent.ref].state is BackendState.RUNNING
            and s[child.ref].reason == placing.waits_for_parent
        ),
        "the parent to run and the child to wait for it",
    )[child.ref]
    assert status == BackendStatus(state=BackendState.PENDING, reason=placing.waits_for_parent)
    release.touch()
    # a restarted server goes on with the chain
    assert wait_ended(placing.fresh(), child).state is BackendState.SUCCEEDED
    assert order.read_text().split() == ["parent", "child"]


def test_chain_whose_parent_fails_is_cancelled(placing: Rig, tmp_path: Path) -> None:
    backend, jobs = placing.backend, placing.jobs
    release = tmp_path / "release"
    parent = backend.submit(jobs.launch(hold(release) + "raise SystemExit(1)"))
    child_launch = jobs.launch("print('must not run')", after=[parent])
    child = backend.submit(child_launch)
    grandchild = backend.submit(jobs.launch("print('must not run either')", after=[child]))
    wait_for(backend, [child], lambda s: s[child.ref].state is BackendState.PENDING, "pending")
    release.touch()

    statuses = wait_for(
        backend,
        [parent, child, grandchild],
        lambda s: all(x.state.ended for x in s.values()),
        "the chain's end",
    )
    assert statuses[parent.ref].state is BackendState.FAILED
    assert statuses[child.ref] == BackendStatus(
        state=BackendState.CANCELLED, reason=placing.never_satisfied(1, "failed")
    )
    assert statuses[grandchild.ref] == BackendStatus(
        state=BackendState.CANCELLED, reason=placing.never_satisfied(2, "cancelled")
    )
    assert not Path(child_launch.log_path).exists()


def test_unknown_job_reads_status_file_or_is_lost(placing: Rig, tmp_path: Path) -> None:
    backend, name = placing.backend, placing.backend.name
    with_file = tmp_path / "forgotten"
    with_file.mkdir()
    (with_file / "status.json").write_text(json.dumps({"state": "failed", "exit_code": 2}))
    without = tmp_path / "gone"
    without.mkdir()
    forgotten = JobHandle(
        backend=name, ref=placing.unknown_ref(1), detail={"workdir": str(with_file)}
    )
    gone = JobHandle(backend=name, ref=placing.unknown_ref(2), detail={"workdir": str(without)})
    bare = JobHandle(backend=name, ref=placing.unknown_ref(3))

    # one unknown job alone, and several with a known one
    assert backend.poll([gone])[gone.ref].state is BackendState.LOST
    known = backend.submit(placing.jobs.launch("pass"))
    statuses = backend.poll([forgotten, gone, bare, known])
    assert statuses[forgotten.ref] == BackendStatus(state=BackendState.FAILED, exit_code=2)
    assert statuses[gone.ref].state is BackendState.LOST
    assert "status.json" in (statuses[gone.ref].reason or "")
    assert statuses[bare.ref].state is BackendState.LOST
    assert placing.unknown(bare.ref) in (statuses[bare.ref].reason or "")
    assert statuses[known.ref].state in (
        BackendState.PENDING,
        BackendState.RUNNING,
        BackendState.SUCCEEDED,
    )

    (with_file / "status.json").write_text(json.dumps({"state": "succeeded"}))
    assert backend.poll([forgotten])[forgotten.ref].state is BackendState.SUCCEEDED


def test_describe_and_poll_say_why_a_cluster_that_does_not_answer_is_unusable(
    placing: Rig,
) -> None:
    assert placing.unreachable is not None
    dead, reason, poll_error = placing.unreachable()
    info = dead.describe()
    assert info["available"] is False
    assert re.search(reason, info["reason"]), info
    with pytest.raises(BackendError, match=poll_error):
        dead.poll([JobHandle(backend=dead.name, ref=placing.unknown_ref(1))])
