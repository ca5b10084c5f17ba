"""What only the slurm backend does, against a real single-node SLURM with 4 fake GPUs
(tests/slurm_cluster.py): its batch script, nice, its own queue and errors. What every backend
does is in test_backend_contract.py.

Jobs that must wait (blockers, parents) hold until the test creates a file, so that no timing
is guessed; every wait polls the backend with a deadline.
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import pytest
from backend_kit import Jobs, wait_ended, wait_for
from slurm_cluster import SlurmCluster

from jupyter_dlinfra.backends import BackendError, BackendState, BackendStatus, JobHandle, JobLaunch
from jupyter_dlinfra.backends.slurm import (
    NICE_MAX,
    SlurmBackend,
    _gres_counts,
    nice_for_priority,
)
from jupyter_dlinfra.backends.slurm_queue import parse_time


@pytest.fixture
def backend(slurm_backend: SlurmBackend) -> SlurmBackend:
    return slurm_backend


@pytest.fixture
def jobs(tmp_path: Path) -> Jobs:
    return Jobs(tmp_path, lambda shell: ["bash", "-c", shell], user="root")


def hold(release: Path) -> str:
    """Shell that waits until the test creates ``release``."""
    return f"while [ ! -e {shlex.quote(str(release))} ]; do sleep 0.05; done"


def log_of(launch: JobLaunch) -> str:
    return Path(launch.log_path).read_text()


# --- against the cluster --------------------------------------------------------------------


def test_the_batch_script_runs_as_its_slurm_job(backend: SlurmBackend, jobs: Jobs) -> None:
    launch = jobs.launch('echo "hello from $SLURM_JOB_ID in $PWD"', gpus=2)
    assert "#SBATCH --gres=gpu:2" in backend.script(launch)
    handle = backend.submit(launch)
    assert handle.backend == "slurm" and handle.ref.isdigit()
    assert handle.detail["cluster"] == "dlinfra"
    assert Path(handle.detail["script"]).read_text().startswith("#!/bin/bash\n")
    assert wait_ended(backend, handle).state is BackendState.SUCCEEDED
    assert f"hello from {handle.ref} in {launch.workdir}" in log_of(launch)


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


def test_pending_jobs_show_slurms_own_position_and_estimate(
    backend: SlurmBackend, jobs: Jobs, tmp_path: Path, slurm_cluster: SlurmCluster
) -> None:
    """Positions among the partition's pending jobs, SLURM's reason and its backfill's start
    estimate come back from the poll; the class's QOS and the group's account reach sbatch."""
    mapped = SlurmBackend(
        env=slurm_cluster.env,
        timeout=20,
        time_limit="10",
        qos_by_class={"interactive": "high"},
        qos_by_priority={0: "normal"},
        account_by_group={"vision": "cv-lab"},
    )
    release = tmp_path / "release"
    blocker = mapped.submit(jobs.launch(hold(release), gpus=slurm_cluster.ngpu))
    wait_for(mapped, [blocker], lambda s: s[blocker.ref].state is BackendState.RUNNING, "run")
    first = mapped.submit(
        jobs.launch("echo first", gpus=2, priority_class="interactive", groups=("nlp", "vision"))
    )
    second = mapped.submit(jobs.launch("echo second", gpus=2, priority_class="batch"))
    statuses = wait_for(
        mapped,
        [blocker, first, second],
        # SLURM says "None" until its scheduler has looked at a job: wait for its reasons too
        lambda s: (
            s[first.ref].estimated_start is not None
            and s[second.ref].position == 2
            and bool(s[first.ref].reason and s[second.ref].reason)
        ),
        "SLURM's plan and reasons for the pending jobs",
    )
    ahead, behind = statuses[first.ref], statuses[second.ref]
    assert statuses[blocker.ref].position is None  # running: no place in the queue
    assert (ahead.state, ahead.position, ahead.queue_length) == (BackendState.PENDING, 1, 2)
    assert (behind.position, behind.queue_length) == (2, 2)
    assert ahead.reason == "Resources" and behind.reason == "Priority"
    # SLURM plans the first start when the blocker's 10-minute limit runs out
    started = slurm_cluster.run(
        "squeue", "--noheader", f"--jobs={blocker.ref}", "--Format=StartTime"
    ).stdout
    blocker_start = parse_time(started)
    assert blocker_start is not None and ahead.estimated_start is not None
    assert abs(ahead.estimated_start - (blocker_start + 600)) <= 5
    # what sbatch was given, as SLURM keeps the batch script
    for handle, qos in ((first, "high"), (second, "normal")):
        kept = slurm_cluster.run("scontrol", "write", "batch_script", handle.ref, "-").stdout
        assert f"#SBATCH --qos={qos}\n" in kept and "#SBATCH --time=10\n" in kept, kept
    accounts = slurm_cluster.run(
        "squeue", "--noheader", f"--jobs={first.ref},{second.ref}", "--Format=JobID:|,Account:|"
    ).stdout
    # SLURM keeps account names in lower case; without one, the user's default account
    assert f"{first.ref}|cv-lab|" in accounts.replace(" ", "")
    assert f"{second.ref}|cv-lab|" not in accounts.replace(" ", "")
    release.touch()
    ended = wait_for(
        mapped,
        [first, second],
        lambda s: all(x.state.ended for x in s.values()),
        "both ended",
        timeout=60,
    )
    assert all(x.state is BackendState.SUCCEEDED for x in ended.values()), ended


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


def test_describe_names_the_cluster_and_a_missing_sbatch(
    backend: SlurmBackend, jobs: Jobs, slurm_cluster: SlurmCluster, tmp_path: Path
) -> None:
    assert backend.describe()["cluster"] == "dlinfra"

    missing = SlurmBackend(env=slurm_cluster.env, sbatch=str(tmp_path / "no" / "sbatch"))
    info = missing.describe()
    assert info["available"] is False
    assert "sbatch" in info["reason"] and "not found" in info["reason"]
    with pytest.raises(BackendError, match="sbatch"):
        missing.submit(jobs.launch("true"))


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


def test_a_distributed_jobs_script_starts_a_launcher_per_node_then_gathers() -> None:
    script = SlurmBackend().script(launch_for_script(gpus=16, nodes=2))
    lines = script.splitlines()
    # GRES are per node: 16 GPUs over 2 nodes is 8 on each
    assert lines[7:10] == [
        "#SBATCH --nodes=2",
        "#SBATCH --ntasks-per-node=1",
        "#SBATCH --gres=gpu:8",
    ]
    assert lines[-3:] == [
        "rm -f rendezvous.json status.json nodes/*/status.json",
        "srun --kill-on-bad-exit=1 --ntasks-per-node=1 python -m runner 'it'\"'\"'s' --slurm",
        "exec python -m runner 'it'\"'\"'s' --gather",
    ]


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
    # one parent
    assert "#SBATCH --dependency=afterok:4\n" in backend.script(launch_for_script(), ["4"])
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


def test_classes_map_to_qos_and_groups_to_accounts() -> None:
    backend = SlurmBackend(
        account="lab",
        qos_by_priority={0: "normal", 10: "high"},
        qos_by_class={"interactive": "urgent", "low": "scavenger"},
        account_by_group={"vision": "cv-lab", "nlp": "nlp-lab"},
        time_limit="2-00:00:00",
    )

    def lines(**fields: object) -> list[str]:
        script = backend.script(launch_for_script(**fields))
        return [x for x in script.splitlines() if x.startswith(("#SBATCH --qos", "#SBATCH --acc"))]

    # the class wins over the priority; a class it does not name falls back to the priority
    assert lines(priority_class="low", priority=12, groups=("nlp", "vision")) == [
        "#SBATCH --account=nlp-lab",
        "#SBATCH --qos=scavenger",
    ]
    assert lines(priority_class="batch", priority=12, groups=("vision",)) == [
        "#SBATCH --account=cv-lab",
        "#SBATCH --qos=high",
    ]
    # no group it names: the configured account
    assert lines(priority_class="interactive", groups=("ops",)) == [
        "#SBATCH --account=lab",
        "#SBATCH --qos=urgent",
    ]
    assert "#SBATCH --time=2-00:00:00\n" in backend.script(launch_for_script())
    assert "--time" not in SlurmBackend().script(launch_for_script())
    for time_limit in ("90", "4:00:00", "1-12", "UNLIMITED"):
        assert SlurmBackend(time_limit=time_limit).time_limit == time_limit
    with pytest.raises(ValueError, match="not a SLURM time limit"):
        SlurmBackend(time_limit="4h")
    with pytest.raises(ValueError, match=r"qos_by_class\['low'\]: 'a b' is not a SLURM name"):
        SlurmBackend(qos_by_class={"low": "a b"})
    with pytest.raises(ValueError, match="account_by_group"):
        SlurmBackend(account_by_group={"vision": "cv\n#SBATCH --x"})


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
    handle = backend.submit(launch)
    # the server died before recording the id, and launched.json is gone: the next server finds
    # the job by the comment the script gave it
    (tmp_path / "77-recover-abc123" / "launched.json").unlink()
    found = backend.recover(launch)
    assert found is not None and found.ref == handle.ref
    backend.cancel(handle)


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("gpu:4", {"": 4}),
        ("gpu:a100:4(S:0-1),shard:8", {"a100": 4}),
        ("gpu:a100:2,gpu:h100:4(S:0)", {"a100": 2, "h100": 4}),
        ("(null)", {}),
        ("mps:100", {}),
    ],
)
def test_a_nodes_gpus_are_read_from_sinfo(line: str, expected: dict[str, int]) -> None:
    assert _gres_counts(line, "gpu") == expected


def test_the_largest_nodes_gpus_come_from_sinfo(slurm_cluster: SlurmCluster) -> None:
    backend = SlurmBackend(env=slurm_cluster.env)
    assert backend.node_gpus(None) == slurm_cluster.ngpu
    typed = SlurmBackend(env=slurm_cluster.env, gres_types={"A100": "a100"})
    assert typed.node_gpus("A100") is None  # the test cluster's GRES have no type
