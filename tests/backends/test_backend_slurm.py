"""The slurm backend against a real single-node SLURM with 4 fake GPUs (tests/slurm_cluster.py).

Jobs that must wait (blockers, parents) hold until the test creates a file, so that no timing
is guessed; every wait polls the backend with a deadline.
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Iterator
from pathlib import Path

import pytest
from backend_kit import Jobs, wait_ended, wait_for
from slurm_cluster import SlurmCluster

from jupyter_dlinfra.backends import BackendError, BackendState, BackendStatus, JobHandle, JobLaunch
from jupyter_dlinfra.backends.slurm import NICE_MAX, SlurmBackend, nice_for_priority


@pytest.fixture
def backend(slurm_cluster: SlurmCluster) -> Iterator[SlurmBackend]:
    yield SlurmBackend(env=slurm_cluster.env, timeout=20)
    # no job of one test may hold GPUs in the next
    slurm_cluster.cancel_all()


@pytest.fixture
def jobs(tmp_path: Path) -> Jobs:
    return Jobs(tmp_path, lambda shell: ["bash", "-c", shell], user="root")


def hold(release: Path) -> str:
    """Shell that waits until the test creates ``release``."""
    return f"while [ ! -e {shlex.quote(str(release))} ]; do sleep 0.05; done"


def log_of(launch: JobLaunch) -> str:
    return Path(launch.log_path).read_text()


# --- against the cluster --------------------------------------------------------------------


def test_job_succeeds_with_its_output_in_the_log(backend: SlurmBackend, jobs: Jobs) -> None:
    launch = jobs.launch(
        'echo "hello from $SLURM_JOB_ID in $PWD"; echo "FOO=$FOO"; echo oops >&2',
        env={"FOO": "it's a 'quoted' $value"},
    )
    Path(launch.log_path).write_text("earlier line\n")
    handle = backend.submit(launch)
    assert handle.backend == "slurm" and handle.ref.isdigit()
    assert handle.detail["workdir"] == launch.workdir
    assert handle.detail["cluster"] == "dlinfra"
    assert Path(handle.detail["script"]).read_text().startswith("#!/bin/bash\n")

    status = wait_ended(backend, handle)
    assert status.state is BackendState.SUCCEEDED, status
    assert status.exit_code == 0
    log = log_of(launch)
    # appended, stdout and stderr both, environment exported as given, run in the job directory
    assert log.startswith("earlier line\n")
    assert f"hello from {handle.ref} in {launch.workdir}" in log
    assert "FOO=it's a 'quoted' $value" in log
    assert "oops" in log
    # the handle survives a JSON round trip (the server stores it) and still polls
    again = JobHandle.from_json(json.loads(json.dumps(handle.to_json())))
    assert backend.poll([again])[again.ref].state is BackendState.SUCCEEDED


def test_failing_command_ends_failed_with_its_exit_code(backend: SlurmBackend, jobs: Jobs) -> None:
    handle = backend.submit(jobs.launch("echo failing; exit 3"))
    status = wait_ended(backend, handle)
    assert status.state is BackendState.FAILED, status
    assert status.exit_code == 3
    assert status.reason is not None and "exit code 3" in status.reason
    assert "NonZeroExitCode" in status.reason


def test_gres_gives_the_job_its_gpus(backend: SlurmBackend, jobs: Jobs) -> None:
    launch = jobs.launch('echo "CUDA_VISIBLE_DEVICES=$CUDA_VISIBLE_DEVICES"', gpus=2)
    assert "#SBATCH --gres=gpu:2" in backend.script(launch)
    handle = backend.submit(launch)
    assert wait_ended(backend, handle).state is BackendState.SUCCEEDED
    line = next(x for x in log_of(launch).splitlines() if x.startswith("CUDA_VISIBLE_DEVICES="))
    devices = line.split("=", 1)[1].split(",")
    assert len(devices) == 2 and len(set(devices)) == 2, line


def test_job_waits_for_gpus_then_starts(
    backend: SlurmBackend, jobs: Jobs, tmp_path: Path, slurm_cluster: SlurmCluster
) -> None:
    release = tmp_path / "release"
    blocker = backend.submit(jobs.launch(hold(release), gpus=slurm_cluster.ngpu - 1))
    wait_for(backend, [blocker], lambda s: s[blocker.ref].state is BackendState.RUNNING, "run")

    waiting = backend.submit(jobs.launch("echo got them", gpus=2))
    statuses = wait_for(
        backend,
        [blocker, waiting],
        lambda s: "Resources" in (s[waiting.ref].reason or ""),
        "the reason Resources",
    )
    assert statuses[waiting.ref].state is BackendState.PENDING
    assert statuses[blocker.ref].state is BackendState.RUNNING

    release.touch()
    assert wait_ended(backend, blocker).state is BackendState.SUCCEEDED
    assert wait_ended(backend, waiting).state is BackendState.SUCCEEDED


def test_chain_runs_child_after_parent_succeeds(
    backend: SlurmBackend, jobs: Jobs, tmp_path: Path
) -> None:
    release = tmp_path / "release"
    parent_launch = jobs.launch(f"{hold(release)}; echo parent > {tmp_path}/order")
    parent = backend.submit(parent_launch)
    child_launch = jobs.launch(f"echo child >> {tmp_path}/order", after=[parent])
    assert f"--dependency=afterok:{parent.ref}" in backend.script(child_launch, [parent.ref])
    child = backend.submit(child_launch)
    wait_for(
        backend,
        [child],
        lambda s: s[child.ref].reason == "Dependency",
        "the reason Dependency",
    )
    release.touch()
    assert wait_ended(backend, child).state is BackendState.SUCCEEDED
    assert (tmp_path / "order").read_text().split() == ["parent", "child"]


def test_chain_whose_parent_fails_is_cancelled(
    backend: SlurmBackend, jobs: Jobs, tmp_path: Path
) -> None:
    release = tmp_path / "release"
    parent = backend.submit(jobs.launch(f"{hold(release)}; exit 1"))
    child_launch = jobs.launch("echo must not run", after=[parent])
    child = backend.submit(child_launch)
    grandchild = backend.submit(jobs.launch("echo must not run either", after=[child]))
    wait_for(backend, [child], lambda s: s[child.ref].state is BackendState.PENDING, "pending")
    release.touch()

    statuses = wait_for(
        backend,
        [parent, child, grandchild],
        lambda s: all(x.state.ended for x in s.values()),
        "the chain's end",
    )
    assert statuses[parent.ref].state is BackendState.FAILED
    for handle in (child, grandchild):
        status = statuses[handle.ref]
        assert status.state is BackendState.CANCELLED, status
        assert status.reason == "DependencyNeverSatisfied"
        assert status.exit_code is None
    assert not Path(child_launch.log_path).exists()


def test_priority_orders_pending_jobs(
    backend: SlurmBackend, jobs: Jobs, tmp_path: Path, slurm_cluster: SlurmCluster
) -> None:
    release = tmp_path / "release"
    order = tmp_path / "order"
    all_gpus = slurm_cluster.ngpu
    blocker = backend.submit(jobs.launch(hold(release), gpus=all_gpus))
    wait_for(backend, [blocker], lambda s: s[blocker.ref].state is BackendState.RUNNING, "run")
    # submitted first, but with a lower priority
    low_launch = jobs.launch(f"echo low >> {order}", gpus=all_gpus, priority=-1)
    high_launch = jobs.launch(f"echo high >> {order}", gpus=all_gpus, priority=5)
    assert "#SBATCH --nice=100\n" in backend.script(low_launch)
    assert "#SBATCH --nice=-500\n" in backend.script(high_launch)
    low = backend.submit(low_launch)
    high = backend.submit(high_launch)
    wait_for(
        backend,
        [low, high],
        lambda s: all(x.state is BackendState.PENDING and x.reason for x in s.values()),
        "both pending with a reason",
    )
    release.touch()
    statuses = wait_for(
        backend, [low, high], lambda s: all(x.state.ended for x in s.values()), "both ended"
    )
    assert all(s.state is BackendState.SUCCEEDED for s in statuses.values()), statuses
    assert order.read_text().split() == ["high", "low"]


def test_cancel_running_and_pending_jobs(
    backend: SlurmBackend, jobs: Jobs, slurm_cluster: SlurmCluster
) -> None:
    running = backend.submit(jobs.launch("sleep 60", gpus=slurm_cluster.ngpu))
    wait_for(backend, [running], lambda s: s[running.ref].state is BackendState.RUNNING, "run")
    pending = backend.submit(jobs.launch("sleep 60", gpus=1))
    assert backend.poll([pending])[pending.ref].state is BackendState.PENDING

    backend.cancel(running)
    backend.cancel(pending)
    statuses = wait_for(
        backend, [running, pending], lambda s: all(x.state.ended for x in s.values()), "the end"
    )
    for status in statuses.values():
        assert status.state is BackendState.CANCELLED, status
    # cancelling an ended job, or one SLURM never had, is no error
    backend.cancel(running)
    backend.cancel(JobHandle(backend="slurm", ref="99999999"))


def test_unknown_job_reads_status_file_or_is_lost(
    backend: SlurmBackend, jobs: Jobs, tmp_path: Path
) -> None:
    with_file = tmp_path / "forgotten"
    with_file.mkdir()
    (with_file / "status.json").write_text(json.dumps({"state": "failed", "exit_code": 2}))
    without = tmp_path / "gone"
    without.mkdir()
    forgotten = JobHandle(backend="slurm", ref="99999998", detail={"workdir": str(with_file)})
    gone = JobHandle(backend="slurm", ref="99999999", detail={"workdir": str(without)})
    bare = JobHandle(backend="slurm", ref="99999997")

    # one unknown id alone (squeue then errs) and several together (squeue leaves them out)
    assert backend.poll([gone])[gone.ref].state is BackendState.LOST
    known = backend.submit(jobs.launch("true"))
    statuses = backend.poll([forgotten, gone, bare, known])
    assert statuses[forgotten.ref] == BackendStatus(state=BackendState.FAILED, exit_code=2)
    assert statuses[gone.ref].state is BackendState.LOST
    assert "status.json" in (statuses[gone.ref].reason or "")
    assert statuses[bare.ref].state is BackendState.LOST
    assert statuses[known.ref].state in (
        BackendState.PENDING,
        BackendState.RUNNING,
        BackendState.SUCCEEDED,
    )

    (with_file / "status.json").write_text(json.dumps({"state": "succeeded"}))
    assert backend.poll([forgotten])[forgotten.ref].state is BackendState.SUCCEEDED


def test_parent_slurm_forgot_counts_by_its_status_file(
    backend: SlurmBackend, jobs: Jobs, tmp_path: Path
) -> None:
    # SLURM itself takes a dependency on an id it does not know as satisfied
    workdir = tmp_path / "old-parent"
    workdir.mkdir()
    old = JobHandle(backend="slurm", ref="99999990", detail={"workdir": str(workdir)})
    with pytest.raises(BackendError, match="did not succeed: lost"):
        backend.submit(jobs.launch("true", after=[old]))
    (workdir / "status.json").write_text(json.dumps({"state": "failed"}))
    with pytest.raises(BackendError, match="did not succeed: failed"):
        backend.submit(jobs.launch("true", after=[old]))
    (workdir / "status.json").write_text(json.dumps({"state": "succeeded"}))
    launch = jobs.launch("true", after=[old])
    handle = backend.submit(launch)
    assert "--dependency" not in Path(handle.detail["script"]).read_text()
    assert wait_ended(backend, handle).state is BackendState.SUCCEEDED


def test_sbatch_errors_carry_its_message(
    backend: SlurmBackend, jobs: Jobs, slurm_cluster: SlurmCluster
) -> None:
    bad = SlurmBackend(env=slurm_cluster.env, partition="nosuchpartition")
    with pytest.raises(BackendError, match=r"sbatch.*(?i:invalid partition)"):
        bad.submit(jobs.launch("true"))


def test_describe(
    backend: SlurmBackend, jobs: Jobs, slurm_cluster: SlurmCluster, tmp_path: Path
) -> None:
    info = backend.describe()
    assert info["available"] is True, info
    assert info["name"] == "slurm" and info["places_gpus"] is True
    assert info["cluster"] == "dlinfra"

    missing = SlurmBackend(env=slurm_cluster.env, sbatch=str(tmp_path / "no" / "sbatch"))
    info = missing.describe()
    assert info["available"] is False
    assert "sbatch" in info["reason"] and "not found" in info["reason"]
    with pytest.raises(BackendError, match="sbatch"):
        missing.submit(jobs.launch("true"))

    # a configuration whose slurmctld does not run
    conf = slurm_cluster.conf.read_text()
    port = next(x for x in conf.splitlines() if x.startswith("SlurmctldPort="))
    dead_conf = tmp_path / "dead.conf"
    dead_conf.write_text(conf.replace(port, "SlurmctldPort=1"))
    # (scontrol ping answers at once; squeue retries for 18 s, longer than this timeout)
    dead = SlurmBackend(env={"SLURM_CONF": str(dead_conf)}, timeout=2)
    info = dead.describe()
    assert info["available"] is False
    assert "slurmctld" in info["reason"] and "DOWN" in info["reason"], info
    with pytest.raises(BackendError, match="`squeue` did not answer within 2 s"):
        dead.poll([JobHandle(backend="slurm", ref="1")])


# --- without a cluster ------------------------------------------------------------------------


def launch_for_script(**kwargs: object) -> JobLaunch:
    fields: dict[str, object] = {
        "job_id": 7,
        "name": "sweep: lr=0.1 / 50%",
        "user": "alice",
        "workdir": "/data/jobs/7 x",
        "argv": ["python", "-m", "runner", "it's"],
        "log_path": "/data/jobs/7 x/50%.log",
    }
    fields.update(kwargs)
    return JobLaunch(**fields)  # type: ignore[arg-type]


def test_script_lines() -> None:
    backend = SlurmBackend(
        partition="gpu",
        account="lab",
        qos_by_priority={0: "normal", 10: "high"},
        gres_types={"A100": "A100"},
        allow_negative_nice=True,
    )
    script = backend.script(
        launch_for_script(gpus=2, model="a100", priority=12, env={"A": "b c"}), ["4", "5"]
    )
    assert script.splitlines() == [
        "#!/bin/bash",
        "# jupyter-dlinfra job 7 of alice, written by the slurm backend",
        "#SBATCH --job-name=sweep_lr_0.1_50",
        '#SBATCH --chdir="/data/jobs/7 x"',
        "#SBATCH --comment=dlinfra-job-7-7_x",
        '#SBATCH --output="/data/jobs/7 x/50%%.log"',
        "#SBATCH --open-mode=append",
        "#SBATCH --gres=gpu:a100:2",
        "#SBATCH --dependency=afterok:4:5",
        "#SBATCH --kill-on-invalid-dep=yes",
        "#SBATCH --nice=-1200",
        "#SBATCH --partition=gpu",
        "#SBATCH --account=lab",
        "#SBATCH --qos=high",
        "export A='b c'",
        "exec python -m runner 'it'\"'\"'s'",
    ]
    # no GPUs: no GRES; priority below every QOS threshold: no --qos
    plain = backend.script(launch_for_script(priority=-1))
    assert "--gres" not in plain and "--qos" not in plain and "#SBATCH --nice=100" in plain
    # a model the mapping does not know is refused; without a mapping any GPU will do
    with pytest.raises(BackendError, match="GPU model 'H100'"):
        backend.script(launch_for_script(gpus=1, model="H100"))
    assert "--gres=gpu:1\n" in SlurmBackend().script(launch_for_script(gpus=1, model="H100"))
    with pytest.raises(BackendError, match="environment variable"):
        backend.script(launch_for_script(env={"A B": "x"}))
    with pytest.raises(BackendError, match="cannot carry"):
        backend.script(launch_for_script(workdir='/data/"quoted"'))


def test_nice_mapping() -> None:
    assert nice_for_priority(0) == 0
    assert nice_for_priority(-3) == 300
    assert nice_for_priority(2) == 0  # unprivileged: SLURM refuses a negative nice
    assert nice_for_priority(2, allow_negative=True) == -200
    assert nice_for_priority(2, base=10000) == 9800
    assert nice_for_priority(200, base=10000) == 0
    assert nice_for_priority(-(10**12)) == NICE_MAX
    assert nice_for_priority(10**12, allow_negative=True) == -NICE_MAX
    assert SlurmBackend(allow_negative_nice=False)._nice(5) == 0


def test_status_mapping() -> None:
    status = SlurmBackend._status
    assert status("PENDING", "Priority", 0) == BackendStatus(
        state=BackendState.PENDING, reason="Priority"
    )
    assert status("PENDING", "None", 0).reason is None
    assert status("CONFIGURING", "None", 0) == BackendStatus(
        state=BackendState.PENDING, reason="configuring"
    )
    assert status("COMPLETING", "None", 0).state is BackendState.RUNNING
    assert status("SUSPENDED", "None", 0).reason == "suspended"
    assert status("COMPLETED", "None", 0).exit_code == 0
    timeout = status("TIMEOUT", "TimeLimit", 15)
    assert timeout.state is BackendState.FAILED and timeout.exit_code == -15
    assert timeout.reason == "timeout, TimeLimit, killed by signal 15"
    oom = status("OUT_OF_MEMORY", "OutOfMemory", 0)
    assert (
        oom.state is BackendState.FAILED and oom.reason == "out of memory, OutOfMemory, exit code 0"
    )
    assert status("NODE_FAIL", "None", None).reason == "node fail"
    assert status("CANCELLED", "None", 15) == BackendStatus(
        state=BackendState.CANCELLED, reason="killed by signal 15", exit_code=-15
    )
    assert status("CANCELLED", "None", 0).reason == "cancelled"
    assert status("WEIRD", "None", 0).state is BackendState.FAILED


def test_recover_finds_an_accepted_job_by_its_comment(
    slurm_cluster: SlurmCluster, tmp_path: Path
) -> None:
    backend = SlurmBackend(env=slurm_cluster.env)
    launch = JobLaunch(
        job_id=77,
        name="recover",
        user="root",
        workdir=str(tmp_path / "77-recover-abc123"),
        argv=["sleep", "30"],
        log_path=str(tmp_path / "77-recover-abc123" / "job.log"),
    )
    assert backend.recover(launch) is None  # never submitted
    handle = backend.submit(launch)
    # the server died before recording the id: the next one finds the job, from the file...
    assert backend.recover(launch) == handle
    # ...or, without it, by the comment the script gave the job
    (tmp_path / "77-recover-abc123" / "launched.json").unlink()
    found = backend.recover(launch)
    assert found is not None and found.ref == handle.ref
    backend.cancel(handle)
