"""The local Kubernetes control plane and its node agent (jupyter_dlinfra/testing/k8s.py).

The real kube-scheduler binds pods to the agent's fake GPU nodes (gpu-node-a: 4 GPUs, gpu-node-b:
2 GPUs), the real controller-manager runs Jobs, and the agent runs the pods' commands as local
processes. Pods that must stay up wait for a file the test creates; every wait polls with a
deadline.
"""

from __future__ import annotations

import os
import sys
import textwrap
from pathlib import Path
from typing import Any

import kubernetes.client
import psutil
import pytest
from kubernetes.client.exceptions import ApiException

import jupyter_dlinfra.testing.k8s as testing_k8s
from jupyter_dlinfra.testing.k8s import ControlPlane, FakeNode, NodeAgent
from jupyter_dlinfra.testing.server import wait_until

DEADLINE = 30.0

Api = kubernetes.client.ApiClient


def pod_manifest(
    name: str,
    script: str,
    *,
    gpus: int = 0,
    node: str | None = None,
    env: list[dict[str, Any]] | None = None,
    **spec: Any,
) -> dict[str, Any]:
    container: dict[str, Any] = {
        "name": "main",
        "image": "python:3.11-slim",
        "command": ["python", "-c", textwrap.dedent(script)],
    }
    if gpus:
        container["resources"] = {"limits": {"nvidia.com/gpu": str(gpus)}}
    if env:
        container["env"] = env
    pod_spec: dict[str, Any] = {"restartPolicy": "Never", "containers": [container], **spec}
    if node:
        pod_spec["nodeSelector"] = {"kubernetes.io/hostname": node}
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}, "spec": pod_spec}


def wait_phase(
    core: kubernetes.client.CoreV1Api, ns: str, name: str, *phases: str
) -> kubernetes.client.V1Pod:
    def reached() -> kubernetes.client.V1Pod | None:
        pod = core.read_namespaced_pod(name, ns)
        return pod if pod.status and pod.status.phase in phases else None

    result: kubernetes.client.V1Pod = wait_until(
        reached, timeout=DEADLINE, interval=0.05, what=f"pod {ns}/{name} to be {'/'.join(phases)}"
    )
    return result


def terminated(pod: kubernetes.client.V1Pod) -> kubernetes.client.V1ContainerStateTerminated:
    assert pod.status and pod.status.container_statuses
    state = pod.status.container_statuses[0].state
    assert state and state.terminated, state
    return state.terminated


def hold_script(out: Path) -> str:
    """Write the pod's GPU environment and pid to ``out``.json, then wait for ``out``.stop."""
    return f"""
        import json, os, pathlib, time
        out = pathlib.Path({str(out)!r})
        data = {{k: os.environ.get(k) for k in
                ("CUDA_VISIBLE_DEVICES", "NVIDIA_VISIBLE_DEVICES", "DLINFRA_FAKE_GPU_UUIDS")}}
        data["pid"] = os.getpid()
        tmp = out.with_suffix(".tmp")
        tmp.write_text(json.dumps(data))
        tmp.rename(out.with_suffix(".json"))
        while not out.with_suffix(".stop").exists():
            time.sleep(0.05)
    """


def read_json(path: Path) -> dict[str, Any] | None:
    import json

    return json.loads(path.read_text()) if path.exists() else None


@pytest.fixture
def core(k8s_api: Api) -> kubernetes.client.CoreV1Api:
    return kubernetes.client.CoreV1Api(k8s_api)


def test_gpu_pod_is_scheduled_and_runs_to_success(
    k8s_agent: NodeAgent, core: kubernetes.client.CoreV1Api, k8s_namespace: str
) -> None:
    script = """
        import os
        print("gpus", os.environ["CUDA_VISIBLE_DEVICES"], os.environ["DLINFRA_FAKE_GPU_UUIDS"])
    """
    core.create_namespaced_pod(k8s_namespace, pod_manifest("two-gpus", script, gpus=2))
    pod = wait_phase(core, k8s_namespace, "two-gpus", "Succeeded", "Failed")
    assert pod.status and pod.status.phase == "Succeeded"
    assert pod.spec and pod.spec.node_name in ("gpu-node-a", "gpu-node-b")
    state = terminated(pod)
    assert (state.exit_code, state.reason) == (0, "Completed")
    assert pod.status.pod_ip == "127.0.0.1"
    node = pod.spec.node_name
    log = core.read_namespaced_pod_log("two-gpus", k8s_namespace)
    words = log.split()
    assert words[0] == "gpus" and len(words[1].split(",")) == 2, log
    assert words[2] == ",".join(f"GPU-{node}-{i}" for i in words[1].split(","))


def test_node_registration(k8s_agent: NodeAgent, core: kubernetes.client.CoreV1Api) -> None:
    node = core.read_node("gpu-node-b")
    assert node.metadata and node.metadata.labels
    assert node.metadata.labels["nvidia.com/gpu.product"] == "NVIDIA-H100-80GB-HBM3"
    assert node.metadata.labels["nvidia.com/gpu.count"] == "2"
    assert node.metadata.labels["kubernetes.io/hostname"] == "gpu-node-b"
    assert node.spec and not node.spec.taints
    assert node.status and node.status.allocatable
    assert node.status.allocatable["nvidia.com/gpu"] == "2"
    ready = [c for c in node.status.conditions or [] if c.type == "Ready"]
    assert ready and ready[0].status == "True" and ready[0].last_heartbeat_time
    assert node.status.daemon_endpoints and node.status.daemon_endpoints.kubelet_endpoint
    assert node.status.daemon_endpoints.kubelet_endpoint.port == k8s_agent.port


def test_pod_asking_too_many_gpus_stays_pending(
    k8s_agent: NodeAgent, core: kubernetes.client.CoreV1Api, k8s_namespace: str
) -> None:
    core.create_namespaced_pod(k8s_namespace, pod_manifest("eight", "print(1)", gpus=8))

    def unschedulable() -> str | None:
        pod = core.read_namespaced_pod("eight", k8s_namespace)
        for cond in (pod.status and pod.status.conditions) or []:
            if cond.type == "PodScheduled" and cond.status == "False":
                return cond.message or ""
        return None

    message = wait_until(unschedulable, timeout=DEADLINE, what="the scheduler's verdict")
    assert "Insufficient nvidia.com/gpu" in message
    pod = core.read_namespaced_pod("eight", k8s_namespace)
    assert pod.status and pod.status.phase == "Pending"
    assert pod.spec and not pod.spec.node_name


def test_pods_on_one_node_get_disjoint_gpus(
    k8s_agent: NodeAgent, core: kubernetes.client.CoreV1Api, k8s_namespace: str, tmp_path: Path
) -> None:
    """Two 2-GPU pods on gpu-node-a (4 GPUs) and two 1-GPU pods on gpu-node-b (2 GPUs)."""
    pods = {"a1": ("gpu-node-a", 2), "a2": ("gpu-node-a", 2), "b1": ("gpu-node-b", 1),
            "b2": ("gpu-node-b", 1)}  # fmt: skip
    for name, (node, gpus) in pods.items():
        manifest = pod_manifest(name, hold_script(tmp_path / name), gpus=gpus, node=node)
        core.create_namespaced_pod(k8s_namespace, manifest)
    seen = {
        name: wait_until(lambda n=name: read_json(tmp_path / f"{n}.json"), timeout=DEADLINE)
        for name in pods
    }
    for name, (node, _) in pods.items():
        pod = wait_phase(core, k8s_namespace, name, "Running")
        assert pod.spec and pod.spec.node_name == node
    gpus = {
        name: {int(i) for i in s["CUDA_VISIBLE_DEVICES"].split(",")} for name, s in seen.items()
    }
    assert gpus["a1"] | gpus["a2"] == {0, 1, 2, 3} and not gpus["a1"] & gpus["a2"]
    assert gpus["b1"] | gpus["b2"] == {0, 1} and not gpus["b1"] & gpus["b2"]
    for name, data in seen.items():
        node = pods[name][0]
        assert data["NVIDIA_VISIBLE_DEVICES"] == data["CUDA_VISIBLE_DEVICES"]
        assert data["DLINFRA_FAKE_GPU_UUIDS"] == ",".join(
            f"GPU-{node}-{i}" for i in data["CUDA_VISIBLE_DEVICES"].split(",")
        )
    # gpu-node-b is full now: a third GPU pod for it waits until one ends
    third = pod_manifest("b3", "print(3)", gpus=1, node="gpu-node-b")
    core.create_namespaced_pod(k8s_namespace, third)
    for name in pods:
        (tmp_path / f"{name}.stop").touch()
        assert terminated(wait_phase(core, k8s_namespace, name, "Succeeded")).exit_code == 0
    assert wait_phase(core, k8s_namespace, "b3", "Succeeded")


def test_two_gpu_pods_share_gpu_node_b_disjointly(
    k8s_agent: NodeAgent, core: kubernetes.client.CoreV1Api, k8s_namespace: str, tmp_path: Path
) -> None:
    """Two 2-GPU pods pinned to gpu-node-b (2 GPUs): one runs, the other waits its turn."""
    for name in ("first", "second"):
        manifest = pod_manifest(name, hold_script(tmp_path / name), gpus=2, node="gpu-node-b")
        core.create_namespaced_pod(k8s_namespace, manifest)

    def one_running() -> str | None:
        for name in ("first", "second"):
            if read_json(tmp_path / f"{name}.json"):
                return name
        return None

    winner = wait_until(one_running, timeout=DEADLINE, what="one pod to run")
    loser = "second" if winner == "first" else "first"
    got = read_json(tmp_path / f"{winner}.json")
    assert got and got["CUDA_VISIBLE_DEVICES"] == "0,1"
    pod = core.read_namespaced_pod(loser, k8s_namespace)
    assert pod.status and pod.status.phase == "Pending" and pod.spec and not pod.spec.node_name
    (tmp_path / f"{winner}.stop").touch()
    got = wait_until(lambda: read_json(tmp_path / f"{loser}.json"), timeout=DEADLINE)
    assert got["CUDA_VISIBLE_DEVICES"] == "0,1"
    (tmp_path / f"{loser}.stop").touch()
    wait_phase(core, k8s_namespace, loser, "Succeeded")


def test_deleting_a_running_pod_kills_its_process(
    k8s_agent: NodeAgent, core: kubernetes.client.CoreV1Api, k8s_namespace: str, tmp_path: Path
) -> None:
    core.create_namespaced_pod(
        k8s_namespace, pod_manifest("doomed", hold_script(tmp_path / "d"), gpus=1)
    )
    pid = wait_until(lambda: read_json(tmp_path / "d.json"), timeout=DEADLINE)["pid"]
    wait_phase(core, k8s_namespace, "doomed", "Running")
    assert psutil.pid_exists(pid)
    core.delete_namespaced_pod("doomed", k8s_namespace)

    def gone() -> bool:
        try:
            core.read_namespaced_pod("doomed", k8s_namespace)
        except ApiException as err:
            return err.status == 404
        return False

    wait_until(gone, timeout=DEADLINE, what="the pod to disappear")
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE


def test_pod_log_through_the_apiserver(
    k8s_agent: NodeAgent, core: kubernetes.client.CoreV1Api, k8s_namespace: str
) -> None:
    script = """
        import sys
        for i in range(5):
            print("line", i, flush=True)
        print("to stderr", file=sys.stderr)
    """
    core.create_namespaced_pod(k8s_namespace, pod_manifest("talker", script))
    wait_phase(core, k8s_namespace, "talker", "Succeeded")
    log = core.read_namespaced_pod_log("talker", k8s_namespace, container="main")
    assert log.splitlines() == [f"line {i}" for i in range(5)] + ["to stderr"]
    assert core.read_namespaced_pod_log("talker", k8s_namespace, tail_lines=2) == (
        "line 4\nto stderr\n"
    )


def test_follow_log_streams_until_the_process_ends(
    k8s_agent: NodeAgent, core: kubernetes.client.CoreV1Api, k8s_namespace: str, tmp_path: Path
) -> None:
    stop = tmp_path / "stop"
    script = f"""
        import pathlib, time
        print("started", flush=True)
        while not pathlib.Path({str(stop)!r}).exists():
            time.sleep(0.05)
        print("finished", flush=True)
    """
    core.create_namespaced_pod(k8s_namespace, pod_manifest("follower", script))
    wait_phase(core, k8s_namespace, "follower", "Running")
    response = core.read_namespaced_pod_log(
        "follower", k8s_namespace, follow=True, _preload_content=False
    )
    received = b""
    for chunk in response.stream(amt=None):
        received += chunk
        if b"started\n" in received:
            stop.touch()  # the stream is live: let the process end
    assert received.decode() == "started\nfinished\n"


def test_failing_command_fails_the_pod_with_its_exit_code(
    k8s_agent: NodeAgent, core: kubernetes.client.CoreV1Api, k8s_namespace: str
) -> None:
    core.create_namespaced_pod(k8s_namespace, pod_manifest("bad", "import sys; sys.exit(3)"))
    pod = wait_phase(core, k8s_namespace, "bad", "Failed", "Succeeded")
    assert pod.status and pod.status.phase == "Failed"
    state = terminated(pod)
    assert (state.exit_code, state.reason) == (3, "Error")


def test_job_runs_to_complete(k8s_agent: NodeAgent, k8s_api: Api, k8s_namespace: str) -> None:
    batch = kubernetes.client.BatchV1Api(k8s_api)
    template = pod_manifest("unused", "print('job ran')", gpus=1)
    # a PodTemplateSpec: the client validates dict bodies and rejects apiVersion/kind here
    for key in ("metadata", "apiVersion", "kind"):
        del template[key]
    job = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": "one-shot"},
        "spec": {"backoffLimit": 0, "template": template},
    }
    batch.create_namespaced_job(k8s_namespace, job)

    def complete() -> kubernetes.client.V1Job | None:
        found = batch.read_namespaced_job_status("one-shot", k8s_namespace)
        conditions = (found.status and found.status.conditions) or []
        return (
            found if any(c.type == "Complete" and c.status == "True" for c in conditions) else None
        )

    found = wait_until(complete, timeout=DEADLINE, what="the job to complete")
    assert found.status.succeeded == 1
    core = kubernetes.client.CoreV1Api(k8s_api)
    pods = core.list_namespaced_pod(k8s_namespace, label_selector="job-name=one-shot").items
    assert len(pods) == 1 and pods[0].metadata
    assert core.read_namespaced_pod_log(pods[0].metadata.name, k8s_namespace) == "job ran\n"


def test_env_field_and_resource_refs(
    k8s_agent: NodeAgent, core: kubernetes.client.CoreV1Api, k8s_namespace: str
) -> None:
    env = [
        {"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        {"name": "NS", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
        {"name": "NODE", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
        {"name": "IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
        # the apiserver accepts only cpu, memory and ephemeral-storage in a resourceFieldRef
        {
            "name": "MEM",
            "valueFrom": {"resourceFieldRef": {"resource": "limits.memory", "divisor": "1Mi"}},
        },
        {
            "name": "CPU",
            "valueFrom": {
                "resourceFieldRef": {"containerName": "main", "resource": "requests.cpu"}
            },
        },
        {"name": "PLAIN", "value": "x-$(POD)"},
    ]
    script = """
        import os
        keys = ("POD", "NS", "NODE", "IP", "MEM", "CPU", "PLAIN", "CUDA_VISIBLE_DEVICES")
        print(" ".join(os.environ[k] for k in keys))
    """
    manifest = pod_manifest("envy", script, gpus=1, node="gpu-node-a", env=env)
    manifest["spec"]["containers"][0]["resources"] = {
        "limits": {"nvidia.com/gpu": "1", "memory": "1Gi", "cpu": "1500m"},
        "requests": {"cpu": "500m"},
    }
    core.create_namespaced_pod(k8s_namespace, manifest)
    wait_phase(core, k8s_namespace, "envy", "Succeeded")
    log = core.read_namespaced_pod_log("envy", k8s_namespace)
    words = log.split()
    assert words[:7] == ["envy", k8s_namespace, "gpu-node-a", "127.0.0.1", "1024", "1", "x-envy"]
    assert len(words[7].split(",")) == 1


def test_priority_class_admission(k8s_agent: NodeAgent, k8s_api: Api, k8s_namespace: str) -> None:
    scheduling = kubernetes.client.SchedulingV1Api(k8s_api)
    core = kubernetes.client.CoreV1Api(k8s_api)
    name = f"{k8s_namespace}-high"
    scheduling.create_priority_class(
        {"apiVersion": "scheduling.k8s.io/v1", "kind": "PriorityClass",
         "metadata": {"name": name}, "value": 1000}
    )  # fmt: skip
    try:
        manifest = pod_manifest("urgent", "print('ok')", priorityClassName=name)
        core.create_namespaced_pod(k8s_namespace, manifest)
        pod = wait_phase(core, k8s_namespace, "urgent", "Succeeded")
        assert pod.spec and pod.spec.priority == 1000
    finally:
        scheduling.delete_priority_class(name)


def test_volumes_must_exist_on_the_host(
    k8s_agent: NodeAgent, k8s_api: Api, k8s_namespace: str, tmp_path: Path
) -> None:
    core = kubernetes.client.CoreV1Api(k8s_api)
    # a claim bound (by the controller-manager) to a hostPath volume that exists here
    pv = f"{k8s_namespace}-pv"
    core.create_persistent_volume(
        {"apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": pv},
         "spec": {"capacity": {"storage": "1Gi"}, "accessModes": ["ReadWriteOnce"],
                  "hostPath": {"path": str(tmp_path)}, "storageClassName": "manual"}}
    )  # fmt: skip
    try:
        core.create_namespaced_persistent_volume_claim(
            k8s_namespace,
            {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": "data"},
             "spec": {"accessModes": ["ReadWriteOnce"], "storageClassName": "manual",
                      "resources": {"requests": {"storage": "1Gi"}}}},
        )  # fmt: skip
        core.create_namespaced_config_map(
            k8s_namespace,
            {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "settings"},
             "data": {"greeting.txt": "hello"}},
        )  # fmt: skip
        script = f"""
            import pathlib
            d = pathlib.Path({str(tmp_path)!r})
            (d / "out.txt").write_text((d / "conf" / "greeting.txt").read_text() + " world")
        """
        (tmp_path / "conf").mkdir()
        manifest = pod_manifest(
            "mounted",
            script,
            volumes=[
                {"name": "data", "persistentVolumeClaim": {"claimName": "data"}},
                {"name": "conf", "configMap": {"name": "settings"}},
            ],
        )
        manifest["spec"]["containers"][0]["volumeMounts"] = [
            {"name": "data", "mountPath": str(tmp_path)},
            {"name": "conf", "mountPath": str(tmp_path / "conf")},
        ]
        core.create_namespaced_pod(k8s_namespace, manifest)
        wait_phase(core, k8s_namespace, "mounted", "Succeeded")
        assert (tmp_path / "out.txt").read_text() == "hello world"

        missing = tmp_path / "not-here"
        manifest = pod_manifest(
            "unmounted", "print('never')", volumes=[{"name": "x", "emptyDir": {}}]
        )
        manifest["spec"]["containers"][0]["volumeMounts"] = [
            {"name": "x", "mountPath": str(missing)}
        ]
        core.create_namespaced_pod(k8s_namespace, manifest)
        pod = wait_phase(core, k8s_namespace, "unmounted", "Failed")
        assert pod.status and pod.status.reason == "VolumeUnavailable"
        assert str(missing) in (pod.status.message or "")
    finally:
        core.delete_persistent_volume(pv)


def test_pod_without_command_fails(
    k8s_agent: NodeAgent, core: kubernetes.client.CoreV1Api, k8s_namespace: str
) -> None:
    manifest = pod_manifest("bare", "")
    del manifest["spec"]["containers"][0]["command"]
    core.create_namespaced_pod(k8s_namespace, manifest)
    pod = wait_phase(core, k8s_namespace, "bare", "Failed")
    assert pod.status and pod.status.reason == "NoCommand"


def test_stopping_the_agent_kills_its_pods_and_a_new_agent_fails_them(
    k8s_control_plane: ControlPlane,
    core: kubernetes.client.CoreV1Api,
    k8s_namespace: str,
    tmp_path: Path,
) -> None:
    """An agent's stop() kills its processes and writes nothing; its successor marks them lost."""
    node = FakeNode(name="gpu-node-c", gpus=1, labels={"dlinfra.test/extra": "yes"})
    workdir = tmp_path / "agent"
    try:
        with NodeAgent(k8s_control_plane.api_client(), [node], workdir=workdir):
            labels = core.read_node("gpu-node-c").metadata.labels or {}  # type: ignore[union-attr]
            assert labels["dlinfra.test/extra"] == "yes"
            manifest = pod_manifest(
                "orphan", hold_script(tmp_path / "o"), gpus=1, node="gpu-node-c"
            )
            core.create_namespaced_pod(k8s_namespace, manifest)
            pid = wait_until(lambda: read_json(tmp_path / "o.json"), timeout=DEADLINE)["pid"]
            wait_phase(core, k8s_namespace, "orphan", "Running")
        assert not psutil.pid_exists(pid)
        assert core.read_namespaced_pod("orphan", k8s_namespace).status.phase == "Running"  # type: ignore[union-attr]
        with NodeAgent(k8s_control_plane.api_client(), [node], workdir=workdir):
            pod = wait_phase(core, k8s_namespace, "orphan", "Failed")
            assert pod.status and pod.status.reason == "NodeAgentRestarted"
            # and a deletion is confirmed by the agent, as a kubelet would
            core.delete_namespaced_pod("orphan", k8s_namespace)
            wait_until(
                lambda: not core.list_namespaced_pod(k8s_namespace).items,
                timeout=DEADLINE,
                what="the pod to go",
            )
    finally:
        core.delete_collection_namespaced_pod(k8s_namespace, grace_period_seconds=0)
        core.delete_node("gpu-node-c")


def test_control_plane_unavailable_without_binaries(tmp_path: Path) -> None:
    plane = ControlPlane(tmp_path / "cp", bin_dir=tmp_path / "nothing")
    with pytest.raises(testing_k8s.K8sUnavailable, match=r"scripts/k8s/build\.sh"):
        plane.start()
    plane.stop()  # idempotent, nothing to stop


def test_bin_dir_from_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("DLINFRA_K8S_BIN", str(tmp_path))
    assert testing_k8s.k8s_bin_dir() == tmp_path
    monkeypatch.delenv("DLINFRA_K8S_BIN")
    assert testing_k8s.k8s_bin_dir() == Path("/var/cache/dlinfra-k8s/bin")


def test_two_control_planes_side_by_side(k8s_control_plane: ControlPlane, tmp_path: Path) -> None:
    """A second control plane (a benchmark's, say) starts next to the session's on other ports."""
    with ControlPlane(tmp_path / "second") as other:
        assert other.url != k8s_control_plane.url
        with other.api_client() as api:
            names = [
                n.metadata.name for n in kubernetes.client.CoreV1Api(api).list_namespace().items
            ]
        assert "default" in names
    assert not other.running
    # the session's control plane is untouched
    with k8s_control_plane.api_client() as api:
        assert kubernetes.client.CoreV1Api(api).read_namespace("default")


def test_cli_parses_nodes() -> None:
    nodes = testing_k8s._parse_nodes("gpu-a=4,gpu-b=2:NVIDIA-H100-80GB-HBM3")
    assert nodes == [
        FakeNode(name="gpu-a", gpus=4),
        FakeNode(name="gpu-b", gpus=2, model="NVIDIA-H100-80GB-HBM3"),
    ]
    assert os.path.basename(sys.executable).startswith("python")


def test_public_api_is_pinned() -> None:
    import inspect

    import jupyter_dlinfra.testing.kubelet as testing_kubelet

    assert sorted(testing_k8s.__all__) == [
        "ControlPlane",
        "DEFAULT_BIN_DIR",
        "FakeNode",
        "K8sUnavailable",
        "NodeAgent",
        "k8s_bin_dir",
        "main",
    ]
    assert sorted(testing_kubelet.__all__) == ["FakeNode", "GPU_RESOURCE", "NodeAgent"]
    assert (
        str(inspect.signature(ControlPlane))
        == "(workdir: 'Path', *, bin_dir: 'Path | None' = None) -> 'None'"
    )
    assert str(inspect.signature(ControlPlane.start)) == "(self, timeout: 'float' = 60) -> 'None'"
    assert str(inspect.signature(NodeAgent)) == (
        "(api: 'kubernetes.client.ApiClient', nodes: 'Sequence[FakeNode]', *, workdir: 'Path', "
        "python: 'str' = '" + sys.executable + "') -> 'None'"
    )
    node = FakeNode(name="n", gpus=1)
    assert (node.model, dict(node.labels)) == ("NVIDIA-A100-SXM4-80GB", {})
    with pytest.raises(TypeError):
        FakeNode("n", 1)  # type: ignore[misc]
