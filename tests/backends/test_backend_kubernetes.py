"""What only the kubernetes backend does (the Job and its pod, GPU models, deadlines, a cancel
that terminates, listing once per namespace, PriorityClasses, Kueue), against a real control
plane (kube-apiserver, kube-scheduler and kube-controller-manager v1.20, tests/k8s_cluster.py)
whose two fake GPU nodes are played by a node agent that runs the pods' commands as local
processes; and, without a cluster, its manifests and the Kubernetes layer's readers.

What every backend does is in test_backend_contract.py. Jobs that must wait hold until the test
creates a file, so that no timing is guessed; every wait polls the backend with a deadline.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import kubernetes.client
import pytest
from backend_kit import DEADLINE, Counting, Jobs, wait_ended, wait_for, wait_reason

from jupyter_dlinfra.backends import BackendError, BackendState, BackendStatus, JobHandle, JobLaunch
from jupyter_dlinfra.backends.kubernetes import KubernetesBackend
from jupyter_dlinfra.backends.kubernetes_job import wrapper_source
from jupyter_dlinfra.backends.kubernetes_view import failure
from jupyter_dlinfra.core.scheduling.policy import DEFAULT_CLASSES, PriorityClass
from jupyter_dlinfra.kube import api as kube_api
from jupyter_dlinfra.kube.priority import ensure_priority_classes, priority_class_manifests
from jupyter_dlinfra.testing.server import wait_until, write_job_dir

#: a job that starts a real kernel (the runner) may take longer on a loaded machine
RUNNER_DEADLINE = 120.0


@pytest.fixture
def jobs(tmp_path: Path) -> Jobs:
    # commands are ``python -c code``; the backend replaces argv[0] with the image's Python
    return Jobs(
        tmp_path / "jobs",
        lambda code: ["/gateway/bin/python", "-c", code],
        user="alice@example.com",
    )


@pytest.fixture
def make_backend(
    make_k8s_backend: Callable[..., KubernetesBackend],
) -> Callable[..., KubernetesBackend]:
    return make_k8s_backend


@pytest.fixture
def backend(make_backend: Callable[..., KubernetesBackend]) -> KubernetesBackend:
    return make_backend()


@pytest.fixture(autouse=True)
def _jobs_root(tmp_path: Path) -> None:
    (tmp_path / "jobs").mkdir()


def wait_state(
    backend: KubernetesBackend, handle: JobHandle, state: BackendState, timeout: float = DEADLINE
) -> BackendStatus:
    return wait_for(
        backend, [handle], lambda s: s[handle.ref].state is state, state.value, timeout
    )[handle.ref]


def raw_json(answer: object) -> Any:
    """The JSON of an answer asked for with ``_preload_content=False`` (no model classes)."""
    return json.loads(cast(Any, answer).data)


def read_job(api: kubernetes.client.ApiClient, handle: JobHandle) -> dict[str, Any]:
    batch = kubernetes.client.BatchV1Api(api)
    namespace = handle.detail["namespace"]
    return dict(raw_json(batch.read_namespaced_job(handle.ref, namespace, _preload_content=False)))


def pods_of(api: kubernetes.client.ApiClient, handle: JobHandle) -> list[dict[str, Any]]:
    core = kubernetes.client.CoreV1Api(api)
    answer = core.list_namespaced_pod(
        handle.detail["namespace"], label_selector=f"job-name={handle.ref}", _preload_content=False
    )
    return list(raw_json(answer)["items"])


def pod_log(api: kubernetes.client.ApiClient, pod: dict[str, Any]) -> str:
    core = kubernetes.client.CoreV1Api(api)
    answer = core.read_namespaced_pod_log(
        pod["metadata"]["name"], pod["metadata"]["namespace"], _preload_content=False
    )
    return str(cast(Any, answer).data.decode())


# --- against the cluster ---------------------------------------------------------------------


def test_the_job_and_its_pod_carry_our_labels_and_run_on_the_nodes_of_its_model(
    backend: KubernetesBackend, jobs: Jobs, k8s_api: kubernetes.client.ApiClient
) -> None:
    code = "import os\nprint('FOO=' + os.environ['FOO'])\n"
    a100 = backend.submit(
        jobs.launch(code, gpus=2, model="A100", env={"FOO": "it's a 'quoted' $value"})
    )
    h100 = backend.submit(jobs.launch("print('on h100')", gpus=1, model="h100"))
    assert a100.ref.startswith("dlinfra-job-1-") and len(a100.ref) <= 63
    assert a100.detail["namespace"] == backend.namespace and a100.detail["uid"]
    statuses = wait_for(
        backend, [a100, h100], lambda s: all(x.state.ended for x in s.values()), "both ended"
    )
    assert all(x.state is BackendState.SUCCEEDED for x in statuses.values()), statuses
    # the output in the pod's log too (kubectl logs), from the node with the A100s
    (pod,) = pods_of(k8s_api, a100)
    assert pod["spec"]["nodeName"] == "gpu-node-a"
    assert "FOO=it's a 'quoted' $value" in pod_log(k8s_api, pod)
    (pod,) = pods_of(k8s_api, h100)
    assert pod["spec"]["nodeName"] == "gpu-node-b"
    job = read_job(k8s_api, a100)
    labels = job["metadata"]["labels"]
    assert labels["app.kubernetes.io/managed-by"] == "jupyter-dlinfra"
    assert labels["dlinfra.jupyter.org/job-id"] == "1"
    assert labels["dlinfra.jupyter.org/user"] == "alice_example.com"
    assert job["metadata"]["annotations"]["dlinfra.jupyter.org/user"] == "alice@example.com"
    assert job["spec"]["backoffLimit"] == 0
    container = job["spec"]["template"]["spec"]["containers"][0]
    assert container["resources"]["limits"] == {"nvidia.com/gpu": "2"}
    with pytest.raises(BackendError, match=r"'V100'.*NVIDIA-A100-SXM4-80GB, NVIDIA-H100-80GB-HBM3"):
        backend.submit(jobs.launch("print()", gpus=1, model="V100"))


def notebook_launch(
    jobs: Jobs, job_id: int, cell: str, module: str, *, gpus: int, nodes: int | None = None
) -> JobLaunch:
    """A job directory made as the server makes it, and its launch (``module``: the runner, or
    the ranks' launcher of a distributed job)."""
    workdir = jobs.root / f"{job_id}-notebook"
    shape = {} if nodes is None else {"nodes": nodes, "gpus_per_node": gpus // nodes}
    write_job_dir(workdir, cell, spec={"job_id": job_id, **shape})
    return JobLaunch(
        job_id=job_id,
        name="notebook",
        user="bob",
        workdir=str(workdir),
        # as the server builds it (argv[0]: the gateway's interpreter, replaced by the image's)
        argv=["/usr/bin/gateway-python", "-m", module, str(workdir)],
        env={"DLINFRA_JOB_ID": str(job_id)},
        gpus=gpus,
        log_path=str(workdir / "job.log"),
        nodes=nodes,
    )


def test_the_real_runner_runs_a_notebook_in_a_pod(backend: KubernetesBackend, jobs: Jobs) -> None:
    cell = "import os\nprint('cells see', os.environ['DLINFRA_JOB_ID'])"
    launch = notebook_launch(jobs, 7, cell, "jupyter_dlinfra.jobs.runner", gpus=1)
    workdir = Path(launch.workdir)
    handle = backend.submit(launch)
    status = wait_ended(backend, handle, timeout=RUNNER_DEADLINE)
    assert status.state is BackendState.SUCCEEDED, (status, Path(launch.log_path).read_text())
    assert json.loads((workdir / "status.json").read_text())["state"] == "succeeded"
    executed = (workdir / "executed.ipynb").read_text()
    assert "cells see 7" in executed
    assert "--- job started" in (workdir / "job.log").read_text()


def test_a_distributed_jobs_ranks_meet_in_their_pod(backend: KubernetesBackend, jobs: Jobs) -> None:
    from jupyter_dlinfra.testing.distributed import ALLREDUCE_CELL, expected_sum

    launch = notebook_launch(jobs, 8, ALLREDUCE_CELL, "jupyter_dlinfra.jobs.ranks", gpus=2, nodes=1)
    workdir = Path(launch.workdir)
    handle = backend.submit(launch)
    status = wait_ended(backend, handle, timeout=RUNNER_DEADLINE)
    assert status.state is BackendState.SUCCEEDED, (status, Path(launch.log_path).read_text())
    done = json.loads((workdir / "status.json").read_text())
    assert done["state"] == "succeeded" and done["world_size"] == 2
    for rank in range(2):
        own = (workdir / "ranks" / str(rank) / "job.log").read_text()
        assert f"rank {rank}/2 local {rank} node 0 gpus " in own, own
        assert f" sum {expected_sum(2)}" in own, own


def test_deadline_fails_the_job_with_kubernetes_reason(
    make_backend: Callable[..., KubernetesBackend],
    jobs: Jobs,
    k8s_api: kubernetes.client.ApiClient,
) -> None:
    backend = make_backend(active_deadline_s=1)
    handle = backend.submit(jobs.launch("import time; time.sleep(60)"))
    job = read_job(k8s_api, handle)
    assert job["spec"]["activeDeadlineSeconds"] == 1
    # the deadline counts from the Job's start, so on a loaded machine the Job can fail before
    # a poll ever sees its pod running: either state shows it got past submission
    wait_for(
        backend,
        [handle],
        lambda s: s[handle.ref].state in (BackendState.RUNNING, BackendState.FAILED),
        "running or failed",
    )

    def failed() -> bool:
        if backend.poll([handle])[handle.ref].state.ended:
            return True
        # Kubernetes 1.20's Job controller can drop its one deadline re-check (a second,
        # later re-check is merged into the first, which comes too early after the start time
        # is rounded to the second); any update of the Job makes it look again
        batch = kubernetes.client.BatchV1Api(k8s_api)
        batch.patch_namespaced_job(
            handle.ref,
            handle.detail["namespace"],
            {"metadata": {"annotations": {"test/nudge": str(time.monotonic())}}},
        )
        return False

    wait_until(failed, timeout=DEADLINE, interval=1.0, what="the deadline")
    status = backend.poll([handle])[handle.ref]
    assert status.state is BackendState.FAILED
    assert status.reason == "DeadlineExceeded: Job was active longer than specified deadline"


def wait_log(launch: JobLaunch, text: str) -> None:
    """Until ``text`` is in the job's log (its command is then past its start-up)."""

    def found() -> bool:
        path = Path(launch.log_path)
        return path.exists() and text in path.read_text()

    wait_until(found, timeout=DEADLINE, what=f"{text!r} in the job's log")


def test_a_restarted_server_reads_a_terminating_cancelled_job_as_cancelled(
    backend: KubernetesBackend,
    jobs: Jobs,
    make_backend: Callable[..., KubernetesBackend],
    k8s_api: kubernetes.client.ApiClient,
) -> None:
    # a command that ignores SIGTERM keeps its pod (and so its Job) for the grace period
    code = (
        "import signal, time\n"
        "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        "print('deaf', flush=True)\n"
        "time.sleep(120)\n"
    )
    launch = jobs.launch(code)
    handle = backend.submit(launch)
    wait_state(backend, handle, BackendState.RUNNING)
    wait_log(launch, "deaf")
    backend.cancel(handle)
    job = read_job(k8s_api, handle)
    assert job["metadata"]["annotations"]["dlinfra.jupyter.org/cancelled"] == "true"
    assert job["metadata"].get("deletionTimestamp")
    fresh = make_backend()
    assert fresh.poll([handle])[handle.ref] == BackendStatus(
        state=BackendState.RUNNING, reason="stopping: cancelled"
    )
    assert wait_ended(fresh, handle).state is BackendState.CANCELLED
    # a cancelled Job is never recovered (a new server finds nothing to start twice)
    assert make_backend().recover(launch) is None


def test_poll_lists_once_per_namespace_whatever_the_number_of_jobs(
    backend: KubernetesBackend, jobs: Jobs, k8s_api: kubernetes.client.ApiClient
) -> None:
    handles = [backend.submit(jobs.launch("import time; time.sleep(60)")) for _ in range(3)]
    wait_for(
        backend,
        handles,
        lambda s: all(x.state is BackendState.RUNNING for x in s.values()),
        "all running",
    )
    elsewhere = JobHandle(
        backend="kubernetes", ref="dlinfra-job-9-dddddddd", detail={"namespace": "elsewhere"}
    )
    with Counting(k8s_api) as counter:
        statuses = backend.poll([*handles, elsewhere])
    assert [s.state for s in statuses.values()] == [BackendState.RUNNING] * 3 + [BackendState.LOST]
    ns = backend.namespace
    assert sorted(counter.calls) == sorted(
        [
            ("GET", f"/apis/batch/v1/namespaces/{ns}/jobs"),
            ("GET", f"/api/v1/namespaces/{ns}/pods"),
            ("GET", "/apis/batch/v1/namespaces/elsewhere/jobs"),
            ("GET", "/api/v1/namespaces/elsewhere/pods"),
        ]
    )
    for handle in handles:
        backend.cancel(handle)


def test_priority_classes_reach_the_pod(
    make_backend: Callable[..., KubernetesBackend],
    jobs: Jobs,
    k8s_api: kubernetes.client.ApiClient,
    k8s_namespace: str,
) -> None:
    # PriorityClasses are cluster-wide: a prefix of this test's own
    prefix = f"{k8s_namespace[:40]}-"
    names = ensure_priority_classes(k8s_api, DEFAULT_CLASSES, prefix=prefix)
    assert names == {c.name: f"{prefix}{c.name}" for c in DEFAULT_CLASSES}
    scheduling = kubernetes.client.SchedulingV1Api(k8s_api)

    def value(name: str) -> tuple[int, str]:
        raw = raw_json(scheduling.read_priority_class(name, _preload_content=False))
        return raw["value"], raw["preemptionPolicy"]

    try:
        assert value(names["interactive"]) == (100, "PreemptLowerPriority")
        assert value(names["low"]) == (10, "Never")
        # again: nothing changes; a class whose value changed is replaced
        assert ensure_priority_classes(k8s_api, DEFAULT_CLASSES, prefix=prefix) == names
        changed = (*DEFAULT_CLASSES[:2], PriorityClass(name="low", priority=5, preemptible=True))
        ensure_priority_classes(k8s_api, changed, prefix=prefix)
        assert value(names["low"]) == (5, "Never")

        backend = make_backend(priority_classes=names)
        launch = jobs.launch("print('batch')", priority_class="batch", priority=3)
        handle = backend.submit(launch)
        assert wait_ended(backend, handle).state is BackendState.SUCCEEDED
        (pod,) = pods_of(k8s_api, handle)
        assert pod["spec"]["priorityClassName"] == names["batch"]
        assert pod["spec"]["priority"] == 50  # resolved by the Priority admission plugin

        # a class without a PriorityClass: the Job controller cannot make the pod, and says why
        broken = make_backend(priority_classes={"batch": f"{prefix}missing"})
        stuck = broken.submit(jobs.launch("print()", priority_class="batch"))
        status = wait_reason(
            broken, stuck, "cannot create its pod", "the Job controller's complaint"
        )
        assert status.state is BackendState.PENDING
        assert f"no PriorityClass with name {prefix}missing" in (status.reason or "")
        broken.cancel(stuck)
    finally:
        ensure_priority_classes(k8s_api, (), prefix=prefix)
    with pytest.raises(kubernetes.client.exceptions.ApiException):
        scheduling.read_priority_class(names["batch"])


def test_kueue_needs_suspend_which_this_cluster_lacks(
    make_backend: Callable[..., KubernetesBackend], jobs: Jobs, k8s_api: kubernetes.client.ApiClient
) -> None:
    backend = make_backend(kueue_queue="team-a")
    launch = jobs.launch("print()")
    manifest = backend.job_manifest(launch)
    assert manifest["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "team-a"
    assert manifest["spec"]["suspend"] is True
    # Kubernetes 1.20 drops spec.suspend silently: the job would run past Kueue, so it is refused
    with pytest.raises(BackendError, match=r"spec\.suspend"):
        backend.submit(launch)
    # (the check is a dry run: no Job was created)
    assert backend.recover(launch) is None


def test_describe_names_the_namespace_and_checks_the_certificate(
    backend: KubernetesBackend, make_backend: Callable[..., KubernetesBackend]
) -> None:
    assert backend.describe()["namespace"] == backend.namespace
    # the real apiserver, but its self-signed certificate checked: no answer
    strict = kubernetes.client.Configuration(host=backend.api().host)
    strict.retries = 0
    info = make_backend(api_client=kubernetes.client.ApiClient(strict), timeout=3).describe()
    assert info["available"] is False
    assert "cannot reach" in info["reason"] and "certificate" in info["reason"].lower(), info


def test_api_errors_are_sentences_with_status_and_message(
    make_backend: Callable[..., KubernetesBackend], jobs: Jobs
) -> None:
    backend = make_backend(labels={"bad label!": "x"})
    with pytest.raises(BackendError, match=r"Kubernetes refused to create the Job .*422"):
        backend.submit(jobs.launch("print()"))


# --- without a cluster ------------------------------------------------------------------------


def _offline(**kwargs: Any) -> KubernetesBackend:
    config = kubernetes.client.Configuration(host="https://127.0.0.1:1")
    return KubernetesBackend(api_client=kubernetes.client.ApiClient(config), **kwargs)


def _launch(**kwargs: Any) -> JobLaunch:
    fields: dict[str, Any] = {
        "job_id": 7,
        "name": "sweep: lr=0.1",
        "user": "Dr. Ünïcode <x@y>",
        "workdir": "/data/jobs/7-sweep-abc123",
        "argv": [
            "/opt/gw/bin/python",
            "-m",
            "jupyter_dlinfra.jobs.runner",
            "/data/jobs/7-sweep-abc123",
        ],
        "log_path": "/data/jobs/7-sweep-abc123/job.log",
        "env": {"DLINFRA_JOB_ID": "7"},
    }
    fields.update(kwargs)
    return JobLaunch(**fields)


def test_manifest_with_a_claim_mounted_elsewhere() -> None:
    backend = _offline(
        namespace="ml",
        image="registry/dlinfra:1",
        python="python3",
        service_account="jobs",
        node_selector={"pool": "gpu"},
        tolerations=[{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
        workdir_claim="jobs-pvc",
        workdir_mount="/jobs",
        priority_classes={"batch": "dlinfra-batch"},
        labels={"team": "vision"},
        ttl_after_finished_s=600,
        active_deadline_s=3600,
    )
    job = backend.job_manifest(_launch(gpus=0, priority_class="batch"), name="dlinfra-job-7-x")
    meta, spec = job["metadata"], job["spec"]
    assert meta["name"] == "dlinfra-job-7-x" and meta["namespace"] == "ml"
    assert meta["labels"] == {
        "team": "vision",
        "app.kubernetes.io/managed-by": "jupyter-dlinfra",
        "dlinfra.jupyter.org/job-id": "7",
        "dlinfra.jupyter.org/user": "Dr._n_code_x_y",
    }
    assert meta["annotations"]["dlinfra.jupyter.org/user"] == "Dr. Ünïcode <x@y>"
    assert spec["backoffLimit"] == 0 and spec["ttlSecondsAfterFinished"] == 600
    assert spec["activeDeadlineSeconds"] == 3600 and "suspend" not in spec
    pod = spec["template"]["spec"]
    assert spec["template"]["metadata"]["labels"] == meta["labels"]
    assert pod["restartPolicy"] == "Never" and pod["serviceAccountName"] == "jobs"
    assert pod["priorityClassName"] == "dlinfra-batch"
    assert pod["nodeSelector"] == {"pool": "gpu"} and pod["tolerations"][0]["key"]
    (container,) = pod["containers"]
    # no GPUs: no GPU limit
    assert "resources" not in container
    # the paths as the pod sees them: the claim's job directory mounted under /jobs
    assert container["workingDir"] == "/jobs/7-sweep-abc123"
    assert container["volumeMounts"] == [
        {"name": "workdir", "mountPath": "/jobs/7-sweep-abc123", "subPath": "7-sweep-abc123"}
    ]
    assert pod["volumes"] == [
        {"name": "workdir", "persistentVolumeClaim": {"claimName": "jobs-pvc"}}
    ]
    command = container["command"]
    assert command[:2] == ["python3", "-c"]
    # the wrapper runs the job's arguments with its own Python (the image's)
    assert command[3:] == [
        "/jobs/7-sweep-abc123/job.log",
        "-m",
        "jupyter_dlinfra.jobs.runner",
        "/jobs/7-sweep-abc123",
    ]
    assert container["env"] == [{"name": "DLINFRA_JOB_ID", "value": "7"}]
    # a class without a mapping: the cluster's default
    plain = backend.job_manifest(_launch(priority_class="interactive"))
    assert "priorityClassName" not in plain["spec"]["template"]["spec"]
    assert plain["metadata"]["name"].startswith("dlinfra-job-7-")


def test_manifest_with_a_host_path_and_gpus() -> None:
    backend = _offline(resources={"requests": {"cpu": "2"}})
    job = backend.job_manifest(_launch(gpus=4))
    pod = job["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["resources"] == {"requests": {"cpu": "2"}, "limits": {"nvidia.com/gpu": 4}}
    assert container["workingDir"] == "/data/jobs/7-sweep-abc123"
    assert pod["volumes"] == [
        {
            "name": "workdir",
            "hostPath": {"path": "/data/jobs/7-sweep-abc123", "type": "Directory"},
        }
    ]
    assert container["command"][3] == "/data/jobs/7-sweep-abc123/job.log"
    with pytest.raises(BackendError, match="must be inside the job directory"):
        backend.job_manifest(_launch(log_path="/var/log/job.log"))
    with pytest.raises(BackendError, match="environment variable"):
        backend.job_manifest(_launch(env={"A B": "x"}))
    with pytest.raises(BackendError, match="no command"):
        backend.job_manifest(_launch(argv=[]))
    with pytest.raises(BackendError, match="set by the backend"):
        _offline(labels={"app.kubernetes.io/managed-by": "me"})


def test_an_admitted_job_is_pinned_to_the_node_the_ledger_chose() -> None:
    backend = _offline(admission=True)
    assert backend.ledger_admits and backend.describe()["ledger_admits"] is True
    # the node's name, not a model: the ledger chose a node of the right model (no API call)
    pod = backend.job_manifest(_launch(gpus=2, model="A100", node="gpu-7"))["spec"]["template"]
    term = {"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["gpu-7"]}]}
    assert pod["spec"]["affinity"] == {
        "nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [term]}
        }
    }
    assert pod["spec"]["containers"][0]["resources"]["limits"] == {"nvidia.com/gpu": 2}
    assert not _offline().ledger_admits
    with pytest.raises(ValueError, match="admission is either the ledger's or Kueue's"):
        _offline(admission=True, kueue_queue="q")
    # how long an admitted Job's pod may stay unplaced before its GPUs go back to the queue
    assert backend.bind_timeout == 300.0
    assert _offline(admission=True, bind_timeout_s=20).bind_timeout == 20.0
    assert _offline(bind_timeout_s=20).bind_timeout is None  # nothing to hand back
    for bad in (0, -5, "soon", True):
        with pytest.raises(ValueError, match="bind_timeout_s must be"):
            _offline(admission=True, bind_timeout_s=bad)


def test_chain_manifest_is_held() -> None:
    parent = JobHandle(
        backend="kubernetes", ref="dlinfra-job-6-aa", detail={"namespace": "ml", "workdir": "/w/6"}
    )
    job = _offline(active_deadline_s=60).job_manifest(_launch(after=[parent]))
    assert job["spec"]["parallelism"] == 0 and "activeDeadlineSeconds" not in job["spec"]
    assert json.loads(job["metadata"]["annotations"]["dlinfra.jupyter.org/after"]) == [
        {"namespace": "ml", "name": "dlinfra-job-6-aa", "workdir": "/w/6"}
    ]
    # with Kueue: suspended, and the queue label only once the parents succeeded
    queued = _offline(kueue_queue="q").job_manifest(_launch(after=[parent]))
    assert queued["spec"]["suspend"] is True and queued["spec"]["parallelism"] == 1
    assert "kueue.x-k8s.io/queue-name" not in queued["metadata"]["labels"]
    # parents are Jobs of this backend (refused before any request)
    with pytest.raises(BackendError, match="only wait for Kubernetes jobs"):
        _offline().submit(_launch(after=[JobHandle(backend="slurm", ref="12")]))


def test_priority_class_manifests_map_preemptible_to_preemption_policy() -> None:
    manifests = priority_class_manifests(DEFAULT_CLASSES)
    assert [(m["metadata"]["name"], m["value"], m["preemptionPolicy"]) for m in manifests] == [
        ("dlinfra-interactive", 100, "PreemptLowerPriority"),
        ("dlinfra-batch", 50, "PreemptLowerPriority"),
        ("dlinfra-low", 10, "Never"),
    ]
    assert all(m["globalDefault"] is False for m in manifests)
    # a class below that must not be preempted: nobody above it preempts
    classes = (
        PriorityClass(name="interactive", priority=100),
        PriorityClass(name="research", priority=80),
        PriorityClass(name="batch", priority=50, preemptible=True),
    )
    policies = {
        m["metadata"]["name"]: m["preemptionPolicy"] for m in priority_class_manifests(classes)
    }
    assert policies == {
        "dlinfra-interactive": "Never",
        "dlinfra-research": "PreemptLowerPriority",
        "dlinfra-batch": "Never",
    }
    assert {
        m["preemptionPolicy"] for m in priority_class_manifests(DEFAULT_CLASSES, preemption=False)
    } == {"Never"}
    with pytest.raises(BackendError, match="at most 1000000000"):
        priority_class_manifests([PriorityClass(name="x", priority=2_000_000_000)])
    with pytest.raises(BackendError, match="both give"):
        priority_class_manifests(
            [PriorityClass(name="Batch", priority=1), PriorityClass(name="batch", priority=2)]
        )


def test_status_mapping_from_pods() -> None:
    unschedulable = {
        "status": {
            "phase": "Pending",
            "conditions": [
                {
                    "type": "PodScheduled",
                    "status": "False",
                    "reason": "Unschedulable",
                    "message": "0/2 nodes are available: 2 Insufficient nvidia.com/gpu.",
                }
            ],
        }
    }
    assert kube_api.pending_reason(unschedulable, "job").startswith("0/2 nodes are available")
    pulling = {
        "spec": {"nodeName": "n1"},
        "status": {
            "phase": "Pending",
            "containerStatuses": [
                {
                    "name": "job",
                    "state": {"waiting": {"reason": "ErrImagePull", "message": "not found"}},
                }
            ],
        },
    }
    assert kube_api.pending_reason(pulling, "job") == "ErrImagePull: not found"
    assert kube_api.pending_reason({"spec": {"nodeName": "n1"}}, "job") == "starting on n1"
    assert kube_api.pending_reason({}, "job") == "waiting to be scheduled"
    oom = {"exitCode": 137, "reason": "OOMKilled"}
    assert failure({"reason": "BackoffLimitExceeded"}, oom) == "exit code 137 (OOMKilled)"
    assert (
        failure({"reason": "DeadlineExceeded", "message": "Job was active too long"}, None)
        == "DeadlineExceeded: Job was active too long"
    )


def test_kube_api_readers_and_names() -> None:
    pod = {
        "status": {
            "containerStatuses": [
                {"name": "sidecar", "state": {"running": {}}},
                {
                    "name": "job",
                    "state": {"running": {}},
                    "lastState": {"terminated": {"exitCode": 3, "message": " boom \n"}},
                },
            ]
        }
    }
    ended = kube_api.terminated(pod, "job")
    assert kube_api.exit_code(ended) == 3
    assert kube_api.exit_text(ended) == "exit code 3: boom"
    # another container's name: the first container's state (here: none ended)
    assert kube_api.terminated(pod, "kernel") is None
    assert kube_api.exit_code({"exitCode": True}) is None and kube_api.exit_code(None) is None
    assert kube_api.exit_text({"reason": "Error"}) is None
    assert kube_api.label_value("-Dr. Ünïcode <x@y>.") == "Dr._n_code_x_y"
    assert len(kube_api.label_value("a" * 100)) == 63
    assert kube_api.dns_name("--Batch_Jobs!") == "batch-jobs"
    kube_api.check_env_name("CUDA_VISIBLE_DEVICES")
    with pytest.raises(BackendError, match="invalid environment variable name 'A B'"):
        kube_api.check_env_name("A B")


def test_kube_api_keeps_a_given_client_and_rebuilds_its_own(tmp_path: Path) -> None:
    given = kubernetes.client.ApiClient(kubernetes.client.Configuration(host="https://x:1"))
    api = kube_api.KubeApi(given)
    api.close()
    assert api.client() is given and api.host == "https://x:1"
    config = tmp_path / "kubeconfig"
    config.write_text(
        json.dumps(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "c", "cluster": {"server": "https://y:2"}}],
                "users": [{"name": "u", "user": {"token": "t"}}],
                "contexts": [{"name": "ctx", "context": {"cluster": "c", "user": "u"}}],
                "current-context": "ctx",
            }
        )
    )
    own = kube_api.KubeApi(kubeconfig=str(config))
    first = own.client()
    assert own.host == "https://y:2"
    own.close()
    assert own.client() is not first
    own.close()
    with pytest.raises(BackendError, match="no usable Kubernetes configuration"):
        kube_api.KubeApi(kubeconfig=str(tmp_path / "nope")).request("GET", "/", what="look")


def test_the_wrapper_copies_output_to_both_and_keeps_the_exit_code(tmp_path: Path) -> None:
    log = tmp_path / "job.log"
    log.write_text("before\n")
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            wrapper_source(),
            str(log),
            "-c",
            "import sys; print('out'); print('err', file=sys.stderr); sys.exit(4)",
        ],
        capture_output=True,
        check=False,
    )
    assert done.returncode == 4
    assert done.stdout.decode().split() == ["out", "err"]
    assert log.read_text().split() == ["before", "out", "err"]
    # a stop signal reaches the command; its death by signal is 128 + N
    proc = subprocess.Popen(
        [
            sys.executable,
            "-c",
            wrapper_source(),
            str(log),
            "-c",
            "import time; print('up', flush=True); time.sleep(60)",
        ],
        stdout=subprocess.PIPE,
    )
    assert proc.stdout is not None and proc.stdout.readline() == b"up\n"
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=DEADLINE) == 128 + signal.SIGTERM
    proc.stdout.close()
    # a log that cannot be opened: a clear message, and the command never runs
    done = subprocess.run(
        [sys.executable, "-c", wrapper_source(), str(tmp_path / "no" / "job.log"), "-c", "pass"],
        capture_output=True,
        check=False,
    )
    assert done.returncode == 125 and b"cannot open the job log" in done.stderr


def test_without_the_client_package_the_backend_says_how_to_install_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "kubernetes", None)
    with pytest.raises(BackendError, match=r"pip install jupyter-dlinfra\[kubernetes\]"):
        KubernetesBackend()


def test_a_missing_kubeconfig_is_a_backend_error(tmp_path: Path) -> None:
    backend = KubernetesBackend(kubeconfig=str(tmp_path / "nope"))
    info = backend.describe()
    assert info["available"] is False and "Kubernetes configuration" in info["reason"]
    with pytest.raises(BackendError, match="Kubernetes configuration"):
        backend.poll([JobHandle(backend="kubernetes", ref="x")])
