"""Kernels as Kubernetes pods (``kube/kernel_pods.py`` and ``kernel_pod.py``) against a
real control plane (kube-apiserver, kube-scheduler, kube-controller-manager v1.20,
tests/k8s_cluster.py) whose two fake GPU nodes are played by a node agent that runs each bound
pod's command as a local process: the kernel in the "pod" is a real ipykernel, reached with a real
jupyter_client over the pod IP (127.0.0.1) and the ports the test chose.

Every wait polls with a deadline; every kernel client and pod is shut down.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import kubernetes.client
import pytest
from backend_kit import Counting, alive
from jupyter_client.blocking import BlockingKernelClient

from jupyter_dlinfra.backends import BackendError
from jupyter_dlinfra.kube.kernel_pods import KernelPod, KernelPodSpec, PodLauncher, kernel_pod_name
from jupyter_dlinfra.testing.server import free_port, wait_until

DEADLINE = 30.0
#: a kernel's start (ipykernel's imports) may be slow on a loaded machine
KERNEL_DEADLINE = 90.0


def connection() -> dict[str, Any]:
    """Fresh ports on this host (the node agent runs every pod here) and a fresh key."""
    ports: set[int] = set()
    while len(ports) < 5:
        ports.add(free_port())
    names = ("shell_port", "iopub_port", "stdin_port", "control_port", "hb_port")
    info: dict[str, Any] = dict(zip(names, sorted(ports), strict=True))
    info.update(
        key=uuid.uuid4().hex,
        transport="tcp",
        signature_scheme="hmac-sha256",
        kernel_name="python3",
    )
    return info


#: the kernels' TMPDIR, where their connection files go while they start (a pod deleted with no
#: grace period is SIGKILLed, which leaves its file: a real pod's /tmp goes with the pod, this
#: host's stays)
_KERNEL_TMP: list[str] = []


@pytest.fixture(scope="session", autouse=True)
def _kernel_tmp(tmp_path_factory: pytest.TempPathFactory) -> None:
    _KERNEL_TMP[:] = [str(tmp_path_factory.mktemp("kernel-pods"))]


def kernel_spec(**kwargs: Any) -> KernelPodSpec:
    fields: dict[str, Any] = {
        "kernel_id": str(uuid.uuid4()),
        "generation": 0,
        "user": "alice@example.com",
        "gpus": 0,
        "env": {"DLINFRA_KERNEL_MARK": "from-the-spec", "TMPDIR": _KERNEL_TMP[0]},
        "connection": connection(),
    }
    fields.update(kwargs)
    return KernelPodSpec(**fields)


@pytest.fixture
def make_launcher(
    k8s_api: kubernetes.client.ApiClient, k8s_namespace: str, k8s_agent: Any
) -> Iterator[Callable[..., PodLauncher]]:
    made: list[PodLauncher] = []

    def make(**kwargs: Any) -> PodLauncher:
        options: dict[str, Any] = {
            "api_client": k8s_api,
            "namespace": k8s_namespace,
            "python": "python",  # the node agent maps it to its own interpreter
            "timeout": 20,
            "startup_timeout_s": KERNEL_DEADLINE,
        }
        options.update(kwargs)
        launcher = PodLauncher(**options)
        made.append(launcher)
        return launcher

    yield make
    for launcher in made:
        launcher.close()


@pytest.fixture
def launcher(make_launcher: Callable[..., PodLauncher]) -> PodLauncher:
    return make_launcher()


@pytest.fixture
def clients() -> Iterator[list[BlockingKernelClient]]:
    """Kernel clients to shut down (the kernel too) at the end of the test."""
    made: list[BlockingKernelClient] = []
    yield made
    for client in made:
        try:
            if client.channels_running:
                client.shutdown()
        finally:
            client.stop_channels()


def connect(
    launcher: PodLauncher, pod: KernelPod, conn: Mapping[str, Any], clients: list[Any]
) -> BlockingKernelClient:
    client = BlockingKernelClient()
    client.load_connection_info(launcher.connection_info(pod, conn))
    clients.append(client)
    # no heartbeat channel: jupyter_client's counts as beating before its first ping, so a
    # kernel still importing ipykernel when the pod runs would read as dead after 1 s;
    # wait_for_ready then asks for kernel_info until the kernel answers (or the deadline)
    client.start_channels(hb=False)
    client.wait_for_ready(timeout=KERNEL_DEADLINE)
    return client


def evaluate(client: BlockingKernelClient, code: str) -> str:
    """The ``text/plain`` result of ``code`` in the kernel."""
    results: list[str] = []
    errors: list[str] = []

    def hook(msg: dict[str, Any]) -> None:
        if msg["msg_type"] == "execute_result":
            results.append(msg["content"]["data"]["text/plain"])
        elif msg["msg_type"] == "error":
            errors.append("\n".join(msg["content"]["traceback"]))

    reply = client.execute_interactive(code, timeout=DEADLINE, output_hook=hook)
    assert reply["content"]["status"] == "ok", errors
    assert len(results) == 1, (results, errors)
    return results[0]


def test_kernel_pod_runs_a_real_kernel_with_its_gpus(
    launcher: PodLauncher,
    k8s_api: kubernetes.client.ApiClient,
    k8s_namespace: str,
    clients: list[BlockingKernelClient],
    tmp_path: Path,
) -> None:
    token = "kernel-token-" + uuid.uuid4().hex
    env = {"DLINFRA_KERNEL_MARK": "from-the-spec", "TMPDIR": str(tmp_path), "DLINFRA_TOKEN": token}
    spec = kernel_spec(gpus=2, generation=3, priority_class="interactive", env=env)
    name = launcher.create(spec)
    assert name == f"dlinfra-kernel-{spec.kernel_id[:8]}-3"

    pod = launcher.wait_ready(name)
    assert pod.ready and pod.phase == "Running"
    assert pod.pod_ip == "127.0.0.1"
    assert pod.node in ("gpu-node-a", "gpu-node-b")
    assert pod.gpus == 2
    assert (pod.kernel_id, pod.generation) == (spec.kernel_id, 3)
    assert pod.waiting_reason is None and pod.exit_code is None

    # the pods() view says the same
    listed = launcher.pods()
    assert listed[name] == pod

    client = connect(launcher, pod, spec.connection, clients)
    assert evaluate(client, "1+1") == "2"
    env = json.loads(
        evaluate(
            client,
            "import json, os; json.dumps({k: os.environ.get(k) for k in "
            "('POD_NAME', 'POD_NAMESPACE', 'NODE_NAME', 'CUDA_VISIBLE_DEVICES', "
            "'DLINFRA_KERNEL_MARK', 'DLINFRA_TOKEN')})",
        ).strip("'")
    )
    assert env == {
        "POD_NAME": name,
        "POD_NAMESPACE": k8s_namespace,
        "NODE_NAME": pod.node,
        # the "device plugin" of the node agent gave the pod two GPUs of its node
        "CUDA_VISIBLE_DEVICES": env["CUDA_VISIBLE_DEVICES"],
        "DLINFRA_KERNEL_MARK": "from-the-spec",
        "DLINFRA_TOKEN": token,
    }
    # the kernel listens on all the pod's interfaces, with the ports and key it was given, and
    # its connection file (the key) is gone since it started
    listening = json.loads(
        evaluate(
            client,
            "import json, os; from ipykernel.kernelapp import IPKernelApp; app = "
            "IPKernelApp.instance(); json.dumps({'ip': app.ip, 'key': app.session.key.decode(), "
            "'shell_port': app.shell_port, 'file': os.path.exists(app.abs_connection_file)})",
        ).strip("'")
    )
    assert listening == {
        "ip": "0.0.0.0",
        "key": spec.connection["key"],
        "shell_port": spec.connection["shell_port"],
        "file": False,
    }
    assert list(tmp_path.iterdir()) == []
    assert len(env["CUDA_VISIBLE_DEVICES"].split(",")) == 2
    # the kernel loaded the extension (%gpu)
    loaded = evaluate(client, "'jupyter_dlinfra' in get_ipython().extension_manager.loaded")
    assert loaded == "True"

    # what Kubernetes holds: labels, annotations, the container's ports, the GPU limit
    raw = kubernetes.client.CoreV1Api(k8s_api).read_namespaced_pod(name, k8s_namespace)
    labels = raw.metadata.labels
    assert labels["app.kubernetes.io/managed-by"] == "jupyter-dlinfra"
    assert labels["app.kubernetes.io/component"] == "kernel"
    assert labels["dlinfra.jupyter.org/kernel-id"] == spec.kernel_id
    assert labels["dlinfra.jupyter.org/generation"] == "3"
    assert labels["dlinfra.jupyter.org/user"] == "alice_example.com"
    assert raw.metadata.annotations["dlinfra.jupyter.org/user"] == "alice@example.com"
    assert raw.metadata.annotations["dlinfra.jupyter.org/priority-class"] == "interactive"
    assert raw.spec.restart_policy == "Never"
    # "interactive" is not mapped: the cluster's default class
    assert raw.spec.priority_class_name is None
    (container,) = raw.spec.containers
    assert container.name == "kernel"
    assert container.command == ["python", "-m", "jupyter_dlinfra.kernel_pod"]
    assert container.resources.limits == {"nvidia.com/gpu": "2"}
    # the key and the token are not in the pod: its env names the kernel's Secret, which goes
    # with the pod
    core = kubernetes.client.CoreV1Api(k8s_api)
    as_read = core.read_namespaced_pod(name, k8s_namespace, _preload_content=False).data
    assert spec.connection["key"].encode() not in as_read and token.encode() not in as_read
    refs = {e.name: e.value_from.secret_key_ref for e in container.env if e.value_from}
    assert {n: (r.name, r.key) for n, r in refs.items() if r} == {
        "DLINFRA_TOKEN": (name, "DLINFRA_TOKEN"),
        "DLINFRA_CONNECTION": (name, "DLINFRA_CONNECTION"),
    }
    secret = core.read_namespaced_secret(name, k8s_namespace)
    (owner,) = secret.metadata.owner_references
    assert (owner.kind, owner.name, owner.uid) == ("Pod", name, raw.metadata.uid)
    assert secret.metadata.labels["dlinfra.jupyter.org/kernel-id"] == spec.kernel_id
    ports = {p.name: p.container_port for p in container.ports}
    assert ports == {
        "shell": spec.connection["shell_port"],
        "iopub": spec.connection["iopub_port"],
        "stdin": spec.connection["stdin_port"],
        "control": spec.connection["control_port"],
        "hb": spec.connection["hb_port"],
    }


def test_delete_stops_the_kernel_process(
    launcher: PodLauncher, clients: list[BlockingKernelClient]
) -> None:
    spec = kernel_spec(gpus=1)
    name = launcher.create(spec)
    pod = launcher.wait_ready(name)
    client = connect(launcher, pod, spec.connection, clients)
    pid = int(evaluate(client, "import os; os.getpid()"))
    assert alive(pid)

    launcher.delete(name, grace_s=2)
    wait_until(lambda: not alive(pid), timeout=DEADLINE, what="the kernel process to end")
    wait_until(lambda: launcher.pod(name) is None, timeout=DEADLINE, what="the pod to go")
    assert name not in launcher.pods()
    # deleting again is fine
    launcher.delete(name)
    clients.remove(client)
    client.stop_channels()


def test_a_kernels_secret_goes_with_its_pod_and_strays_are_removed(
    launcher: PodLauncher, k8s_api: kubernetes.client.ApiClient, k8s_namespace: str
) -> None:
    core = kubernetes.client.CoreV1Api(k8s_api)

    def secret_exists(name: str) -> bool:
        try:
            core.read_namespaced_secret(name, k8s_namespace)
        except kubernetes.client.ApiException as err:
            assert err.status == 404
            return False
        return True

    # whoever deletes the pod, Kubernetes' garbage collector deletes its Secret
    name = launcher.create(kernel_spec(gpus=16))
    assert secret_exists(name)
    core.delete_namespaced_pod(name, k8s_namespace, grace_period_seconds=0)
    wait_until(lambda: not secret_exists(name), timeout=DEADLINE, what="the Secret to be collected")

    # a Secret left without its pod (a gateway stopped in between) is replaced by the next create
    spec = kernel_spec(gpus=16)
    stale = launcher.secret_manifest(kernel_spec(kernel_id=spec.kernel_id, gpus=16))
    core.create_namespaced_secret(k8s_namespace, stale)
    name = launcher.create(spec)
    secret = core.read_namespaced_secret(name, k8s_namespace)
    sent = json.loads(base64.b64decode(secret.data["DLINFRA_CONNECTION"]))
    assert sent["key"] == spec.connection["key"]
    # a second pod of that name is refused, and the first one keeps its Secret
    with pytest.raises(BackendError, match="exists already"):
        launcher.create(spec)
    assert secret_exists(name)

    # at a gateway's start: Secrets of no pod go, the others are kept when named
    stray = launcher.secret_manifest(kernel_spec(gpus=16))
    core.create_namespaced_secret(k8s_namespace, stray)
    stray_name = stray["metadata"]["name"]
    assert launcher.remove_secrets(keep=[name]) == [stray_name]
    assert secret_exists(name) and not secret_exists(stray_name)
    launcher.delete(name, grace_s=0)
    assert not secret_exists(name)


def test_oversize_pod_waits_with_the_schedulers_words(launcher: PodLauncher) -> None:
    name = launcher.create(kernel_spec(gpus=16))

    def waiting() -> KernelPod | None:
        pod = launcher.pods().get(name)
        reason = pod.waiting_reason if pod else None
        return pod if reason and "Insufficient nvidia.com/gpu" in reason else None

    pod = wait_until(waiting, timeout=DEADLINE, what="the scheduler's reason")
    assert pod.phase == "Pending" and not pod.ready
    assert pod.node is None and pod.pod_ip is None and pod.gpus == 16
    assert pod.waiting_reason.startswith("0/2 nodes are available")
    with pytest.raises(BackendError, match=r"did not start within .* Insufficient nvidia\.com/gpu"):
        launcher.wait_ready(name, timeout=0.5)
    with pytest.raises(BackendError, match="no IP yet"):
        launcher.connection_info(pod, connection())
    launcher.delete(name, grace_s=0)
    wait_until(lambda: launcher.pod(name) is None, timeout=DEADLINE, what="the pod to go")


def test_gpu_model_picks_the_node_with_that_model(launcher: PodLauncher) -> None:
    name = launcher.create(kernel_spec(gpus=1, model="h100"))
    pod = launcher.wait_ready(name)
    assert pod.node == "gpu-node-b"
    launcher.delete(name, grace_s=0)
    with pytest.raises(BackendError, match=r"no GPU model .* matches 'V100'.*A100"):
        launcher.create(kernel_spec(gpus=1, model="V100"))


def test_priority_class_and_kueue_label_on_the_pod(
    make_launcher: Callable[..., PodLauncher],
    k8s_api: kubernetes.client.ApiClient,
    k8s_namespace: str,
) -> None:
    scheduling = kubernetes.client.SchedulingV1Api(k8s_api)
    klass = f"dlinfra-test-{uuid.uuid4().hex[:8]}"
    scheduling.create_priority_class(
        kubernetes.client.V1PriorityClass(
            metadata=kubernetes.client.V1ObjectMeta(name=klass), value=1000
        )
    )
    try:
        launcher = make_launcher(
            priority_classes={"interactive": klass}, kueue_queue="team-a", labels={"team": "a"}
        )
        name = launcher.create(kernel_spec(priority_class="interactive"))
        raw = kubernetes.client.CoreV1Api(k8s_api).read_namespaced_pod(name, k8s_namespace)
        assert raw.spec.priority_class_name == klass
        # the Priority admission plugin resolved the class
        assert raw.spec.priority == 1000
        assert raw.metadata.labels["kueue.x-k8s.io/queue-name"] == "team-a"
        assert raw.metadata.labels["team"] == "a"
        launcher.delete(name, grace_s=0)

        # a class mapped to a PriorityClass the cluster does not have: Kubernetes says so
        missing = make_launcher(priority_classes={"batch": "dlinfra-no-such-class"})
        with pytest.raises(BackendError, match="dlinfra-no-such-class"):
            missing.create(kernel_spec(priority_class="batch"))
    finally:
        scheduling.delete_priority_class(klass)


def test_pods_is_one_list_call(
    launcher: PodLauncher, k8s_api: kubernetes.client.ApiClient, k8s_namespace: str
) -> None:
    names = [launcher.create(kernel_spec(gpus=16)) for _ in range(3)]
    # a pod in the namespace that is no kernel of ours is not listed
    kubernetes.client.CoreV1Api(k8s_api).create_namespaced_pod(
        k8s_namespace,
        {
            "metadata": {"name": "not-a-kernel", "labels": {"app": "other"}},
            "spec": {
                "containers": [
                    {"name": "c", "image": "x", "resources": {"limits": {"example.com/thing": "1"}}}
                ]
            },
        },
    )
    with Counting(k8s_api) as counter:
        pods = launcher.pods()
    assert sorted(pods) == sorted(names)
    assert counter.calls == [("GET", f"/api/v1/namespaces/{k8s_namespace}/pods")]
    with Counting(k8s_api) as counter:
        assert launcher.pod(names[0]) == pods[names[0]]
        assert launcher.pod("not-a-kernel") is None
        assert launcher.pod("no-such-pod") is None
    assert len(counter.calls) == 3


def test_a_kernel_that_exits_is_reported(make_launcher: Callable[..., PodLauncher]) -> None:
    # "python" that is not Python: the container's command fails at once
    launcher = make_launcher(python="false")
    name = launcher.create(kernel_spec())
    with pytest.raises(BackendError, match="ended before the kernel was reached: exit code 1"):
        launcher.wait_ready(name)
    pod = launcher.pod(name)
    assert pod is not None
    assert pod.phase == "Failed" and pod.exit_code == 1 and not pod.ready
    assert pod.end_reason is not None and pod.end_reason.startswith("exit code 1")


# --- no cluster --------------------------------------------------------------------------------


def _offline(**kwargs: Any) -> PodLauncher:
    return PodLauncher(kubeconfig="/nonexistent/kubeconfig", namespace="ns", **kwargs)


def test_manifest_without_gpus_and_with_bytes_key() -> None:
    conn = connection()
    conn["key"] = conn["key"].encode()
    launcher = _offline(
        service_account="kernels",
        node_selector={"pool": "gpu"},
        tolerations=[{"key": "gpu", "operator": "Exists", "effect": "NoSchedule"}],
        resources={"requests": {"cpu": "1"}},
    )
    spec = kernel_spec(kernel_id="ABCDEF12-x", gpus=0, connection=conn, cwd="/home/alice")
    manifest = launcher.pod_manifest(spec)
    assert manifest["metadata"]["name"] == "dlinfra-kernel-abcdef12-0"
    pod = manifest["spec"]
    (container,) = pod["containers"]
    assert container["resources"] == {"requests": {"cpu": "1"}}  # no GPU limit
    assert container["workingDir"] == "/home/alice"
    env = {e["name"]: e for e in container["env"]}
    assert env["DLINFRA_CONNECTION"]["valueFrom"] == {
        "secretKeyRef": {"name": "dlinfra-kernel-abcdef12-0", "key": "DLINFRA_CONNECTION"}
    }
    secret = launcher.secret_manifest(spec)
    assert secret["metadata"]["name"] == "dlinfra-kernel-abcdef12-0"
    sent = json.loads(base64.b64decode(secret["data"]["DLINFRA_CONNECTION"]))
    assert sent["key"] == conn["key"].decode() and "ip" not in sent
    assert conn["key"] not in json.dumps(manifest).encode()
    assert env["NODE_NAME"]["valueFrom"] == {"fieldRef": {"fieldPath": "spec.nodeName"}}
    assert pod["serviceAccountName"] == "kernels" and pod["automountServiceAccountToken"]
    assert pod["nodeSelector"] == {"pool": "gpu"}
    assert pod["tolerations"][0]["key"] == "gpu"
    assert "affinity" not in pod and "priorityClassName" not in pod
    assert not _offline().pod_manifest(spec)["spec"]["automountServiceAccountToken"]


def test_manifest_refusals() -> None:
    launcher = _offline()
    with pytest.raises(BackendError, match="set by the pod launcher"):
        launcher.pod_manifest(kernel_spec(env={"DLINFRA_CONNECTION": "{}"}))
    with pytest.raises(BackendError, match="hb_port must be a port number"):
        launcher.pod_manifest(kernel_spec(connection={**connection(), "hb_port": None}))
    with pytest.raises(BackendError, match="0 GPUs or more"):
        launcher.pod_manifest(kernel_spec(gpus=-1))
    with pytest.raises(BackendError, match="set by the pod launcher itself"):
        _offline(labels={"app.kubernetes.io/component": "x"})
    with pytest.raises(BackendError, match="Kubernetes configuration"):
        launcher.pods()
    assert kernel_pod_name("--", 1).startswith("dlinfra-kernel-")
    assert kernel_pod_name("--", 1) != "dlinfra-kernel--1"


def _kernel_pod_env(env: Mapping[str, str]) -> dict[str, str]:
    clean = {k: v for k, v in os.environ.items() if k != "DLINFRA_CONNECTION"}
    return {**clean, **env}


def _kernel_pod(env: Mapping[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "jupyter_dlinfra.kernel_pod"],
        env=_kernel_pod_env(env),
        capture_output=True,
        text=True,
        timeout=DEADLINE,
        check=False,
    )


def test_kernel_pod_without_its_connection_exits_2(tmp_path: Path) -> None:
    done = _kernel_pod({"TMPDIR": str(tmp_path)})
    assert done.returncode == 2
    assert "DLINFRA_CONNECTION is not set" in done.stderr
    bad = _kernel_pod({"DLINFRA_CONNECTION": "{not json"})
    assert bad.returncode == 2 and "DLINFRA_CONNECTION is not JSON" in bad.stderr
    no_key = {k: v for k, v in connection().items() if k != "key"}
    missing = _kernel_pod({"DLINFRA_CONNECTION": json.dumps(no_key), "TMPDIR": str(tmp_path)})
    assert missing.returncode == 2 and "key must be a non-empty string" in missing.stderr
    assert list(tmp_path.iterdir()) == []
    # the refusal comes before ipykernel (slow to import) is loaded
    probe = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys\nfrom jupyter_dlinfra import kernel_pod\ntry:\n    kernel_pod.main([])\n"
            "except SystemExit as end:\n    print(end.code, 'ipykernel' in sys.modules)",
        ],
        env=_kernel_pod_env({}),
        capture_output=True,
        text=True,
        timeout=DEADLINE,
        check=False,
    )
    assert probe.stdout.split() == ["2", "False"], probe.stderr


def _start_kernel_pod(tmp: Path) -> tuple[subprocess.Popen[bytes], dict[str, Any]]:
    """``python -m jupyter_dlinfra.kernel_pod`` on fresh ports, with ``tmp`` as its TMPDIR."""
    conn = connection()
    proc = subprocess.Popen(
        [sys.executable, "-m", "jupyter_dlinfra.kernel_pod"],
        env=_kernel_pod_env({"DLINFRA_CONNECTION": json.dumps(conn), "TMPDIR": str(tmp)}),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    return proc, conn


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.kill()
        proc.wait(timeout=DEADLINE)


def test_kernel_pod_runs_the_kernel_and_removes_its_connection_file(tmp_path: Path) -> None:
    proc, conn = _start_kernel_pod(tmp_path)
    client = BlockingKernelClient()
    try:
        info: dict[str, Any] = {**conn, "ip": "127.0.0.1", "key": conn["key"].encode("ascii")}
        client.load_connection_info(info)  # type: ignore[arg-type]
        # no heartbeat until the kernel answers (see connect())
        client.start_channels(hb=False)
        client.wait_for_ready(timeout=KERNEL_DEADLINE)
        assert evaluate(client, "1+1") == "2"
        # the kernel runs, and its key is in no file any more
        assert proc.poll() is None
        assert list(tmp_path.iterdir()) == []
        assert evaluate(client, "'jupyter_dlinfra' in get_ipython().extension_manager.loaded") == (
            "True"
        )
        client.shutdown()
        assert proc.wait(timeout=DEADLINE) == 0
    finally:
        client.stop_channels()
        _stop(proc)
    assert list(tmp_path.iterdir()) == []


def test_kernel_pod_sigterm_while_starting_removes_the_connection_file(tmp_path: Path) -> None:
    proc, _conn = _start_kernel_pod(tmp_path)
    try:
        # the pod is deleted while the kernel starts: as soon as the file's directory exists
        wait_until(
            lambda: proc.poll() is not None or any(tmp_path.glob("dlinfra-kernel-*")),
            timeout=KERNEL_DEADLINE,
            interval=0.001,
            what="the connection file",
        )
        proc.send_signal(signal.SIGTERM)
        # it dies of the signal, as the kernel would have
        assert proc.wait(timeout=DEADLINE) == -signal.SIGTERM
    finally:
        _stop(proc)
    assert list(tmp_path.iterdir()) == []


def test_public_api_is_pinned() -> None:
    from jupyter_dlinfra import kernel_pod
    from jupyter_dlinfra.kube import kernel_pods as kubernetes_pods

    assert sorted(kubernetes_pods.__all__) == [
        "COMPONENT",
        "COMPONENT_LABEL",
        "CONTAINER",
        "GENERATION_LABEL",
        "KERNEL_ID_LABEL",
        "KernelPod",
        "KernelPodSpec",
        "PodLauncher",
        "SECRET_ENV",
        "kernel_pod_name",
    ]
    assert sorted(kernel_pod.__all__) == [
        "ENV_VAR",
        "PORT_NAMES",
        "connection_file_content",
        "main",
    ]
