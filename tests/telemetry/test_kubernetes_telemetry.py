"""Kubernetes cluster telemetry against a real control plane, joined with DCGM through Prometheus.

The session's node agent registers gpu-node-a (4 A100) and gpu-node-b (2 H100); tests that need
other nodes register their own with a second agent and delete them afterwards. Other test files may
register nodes in the same session, so exact inventories are taken through a node selector.
"""

from __future__ import annotations

import contextlib
import secrets
from collections.abc import Callable, Iterator
from pathlib import Path

import kubernetes.client
import pytest
from kubernetes.client.exceptions import ApiException

from jupyter_dlinfra.telemetry.base import GpuDevice, GpuSample
from jupyter_dlinfra.telemetry.cluster import ClusterTelemetryError, PodRef
from jupyter_dlinfra.telemetry.dcgm import DcgmClient
from jupyter_dlinfra.telemetry.kubernetes import KubernetesTelemetry, synthetic_uuid
from jupyter_dlinfra.testing.dcgm import SimulatedDcgmExporter
from jupyter_dlinfra.testing.k8s import ControlPlane, FakeNode, NodeAgent
from jupyter_dlinfra.testing.prometheus import PrometheusServer
from jupyter_dlinfra.testing.server import free_port, wait_until

pytestmark = pytest.mark.filterwarnings("ignore::urllib3.exceptions.InsecureRequestWarning")

MIB = 2**20
SHARED_NODES = "kubernetes.io/hostname in (gpu-node-a,gpu-node-b)"
MERGE_PATCH = "application/merge-patch+json"
NOW = 1_700_000_000.0


def fixed_clock() -> float:
    return NOW


@pytest.fixture
def add_nodes(
    k8s_control_plane: ControlPlane, k8s_api: kubernetes.client.ApiClient, tmp_path: Path
) -> Iterator[Callable[..., NodeAgent]]:
    """Register more fake GPU nodes with their own agent; they are deleted after the test."""
    agents: list[tuple[NodeAgent, kubernetes.client.ApiClient]] = []
    names: list[str] = []

    def add(*nodes: FakeNode) -> NodeAgent:
        api = k8s_control_plane.api_client()
        agent = NodeAgent(api, nodes, workdir=tmp_path / f"agent-{len(agents)}")
        agents.append((agent, api))
        names.extend(node.name for node in nodes)
        agent.start()
        return agent

    yield add
    core = kubernetes.client.CoreV1Api(k8s_api)
    for agent, api in agents:
        agent.stop()
        api.close()
    for name in names:
        with contextlib.suppress(ApiException):
            core.delete_node(name)


def unique(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(3)}"


def devices(node: str, count: int, model: str, memory: int = 0) -> list[GpuDevice]:
    return [
        GpuDevice(uuid=synthetic_uuid(node, i), index=i, model=model, memory_total_bytes=memory)
        for i in range(count)
    ]


# -- inventory from the Kubernetes API -----------------------------------------------------------


def test_inventory_is_the_registered_gpu_nodes(
    k8s_agent: NodeAgent, k8s_api: kubernetes.client.ApiClient
) -> None:
    telemetry = KubernetesTelemetry(api_client=k8s_api, node_selector=SHARED_NODES)
    assert telemetry.inventory() == {
        "gpu-node-a": devices("gpu-node-a", 4, "NVIDIA-A100-SXM4-80GB"),
        "gpu-node-b": devices("gpu-node-b", 2, "NVIDIA-H100-80GB-HBM3"),
    }
    assert telemetry.excluded == {}
    assert telemetry.reason.startswith("6 GPUs on 2 Kubernetes nodes matching")
    # no Prometheus: no readings rather than made-up ones, and the reason says so
    assert telemetry.sample() == []
    assert telemetry.holders() == {}
    assert "no Prometheus URL is configured" in telemetry.reason
    assert not telemetry.simulated
    # without a selector: every GPU node of the cluster, these two among them
    everything = KubernetesTelemetry(api_client=k8s_api).inventory()
    assert {"gpu-node-a", "gpu-node-b"} <= set(everything)
    telemetry.close()
    # a client passed in is the caller's: still usable after close()
    kubernetes.client.CoreV1Api(k8s_api).list_node(limit=1)


def test_a_node_added_later_appears_and_a_deleted_one_goes(
    k8s_agent: NodeAgent,
    k8s_api: kubernetes.client.ApiClient,
    add_nodes: Callable[..., NodeAgent],
) -> None:
    telemetry = KubernetesTelemetry(api_client=k8s_api)
    before = telemetry.inventory()
    name = unique("gpu-node-late")
    assert name not in before
    add_nodes(FakeNode(name=name, gpus=3, model="NVIDIA-L40S"))
    after = telemetry.inventory()
    assert after[name] == devices(name, 3, "NVIDIA-L40S")
    assert {k: v for k, v in after.items() if k != name} == before
    kubernetes.client.CoreV1Api(k8s_api).delete_node(name)
    assert telemetry.inventory() == before


def test_node_selector_picks_nodes_by_label(
    k8s_agent: NodeAgent,
    k8s_api: kubernetes.client.ApiClient,
    add_nodes: Callable[..., NodeAgent],
) -> None:
    pool = unique("pool")
    inside, outside = unique("gpu-in"), unique("gpu-out")
    add_nodes(
        FakeNode(name=inside, gpus=2, labels={"dlinfra-test/pool": pool}),
        FakeNode(name=outside, gpus=2, labels={"dlinfra-test/pool": "elsewhere"}),
    )
    selected = KubernetesTelemetry(api_client=k8s_api, node_selector=f"dlinfra-test/pool={pool}")
    assert list(selected.inventory()) == [inside]
    negated = KubernetesTelemetry(
        api_client=k8s_api, node_selector=f"dlinfra-test/pool,dlinfra-test/pool!={pool}"
    )
    assert outside in negated.inventory()
    assert inside not in negated.inventory()


def test_gfd_labels_give_memory_and_time_slicing_counts_physical_gpus(
    k8s_agent: NodeAgent,
    k8s_api: kubernetes.client.ApiClient,
    add_nodes: Callable[..., NodeAgent],
) -> None:
    plain, shared = unique("gpu-mem"), unique("gpu-shared")
    add_nodes(
        FakeNode(name=plain, gpus=1, model="NVIDIA-L4", labels={"nvidia.com/gpu.memory": "23034"}),
        # time-slicing: 2 GPUs advertised 4 times each, product renamed -SHARED by GFD
        FakeNode(
            name=shared,
            gpus=8,
            model="NVIDIA-A10-SHARED",
            labels={"nvidia.com/gpu.replicas": "4", "nvidia.com/gpu.memory": "23028"},
        ),
    )
    telemetry = KubernetesTelemetry(
        api_client=k8s_api, node_selector=f"kubernetes.io/hostname in ({plain},{shared})"
    )
    assert telemetry.inventory() == {
        plain: devices(plain, 1, "NVIDIA-L4", 23034 * MIB),
        shared: devices(shared, 2, "NVIDIA-A10", 23028 * MIB),
    }


def test_cordoned_and_not_ready_nodes_are_left_out_and_come_back(
    k8s_agent: NodeAgent,
    k8s_api: kubernetes.client.ApiClient,
    add_nodes: Callable[..., NodeAgent],
) -> None:
    core = kubernetes.client.CoreV1Api(k8s_api)
    name = unique("gpu-cordon")
    agent = add_nodes(FakeNode(name=name, gpus=2))
    telemetry = KubernetesTelemetry(
        api_client=k8s_api, node_selector=f"kubernetes.io/hostname={name}"
    )
    first = telemetry.inventory()
    assert list(first) == [name]

    core.patch_node(name, {"spec": {"unschedulable": True}}, _content_type=MERGE_PATCH)
    assert telemetry.inventory() == {}
    assert telemetry.excluded == {name: "cordoned"}
    assert f"left out: {name} (cordoned)" in telemetry.reason

    core.patch_node(name, {"spec": {"unschedulable": None}}, _content_type=MERGE_PATCH)
    assert telemetry.inventory() == first  # the same GPU ids again
    assert telemetry.excluded == {}

    # the kubelet stops posting and the node goes NotReady (there is no node controller here)
    agent.stop()
    core.patch_node_status(
        name,
        {"status": {"conditions": [{"type": "Ready", "status": "False", "reason": "KubeletDown"}]}},
        _content_type=MERGE_PATCH,
    )
    assert telemetry.inventory() == {}
    assert telemetry.excluded == {name: "NotReady"}


# -- joined with DCGM metrics through a real Prometheus ------------------------------------------


def joined(
    k8s_api: kubernetes.client.ApiClient, prometheus: PrometheusServer
) -> KubernetesTelemetry:
    return KubernetesTelemetry(
        api_client=k8s_api,
        node_selector=SHARED_NODES,
        prometheus_url=prometheus.url,
        prometheus_filter={"cluster": "main"},
        clock=fixed_clock,
    )


def sample_until(
    telemetry: KubernetesTelemetry, check: Callable[[dict[str, GpuSample]], bool]
) -> dict[str, GpuSample]:
    def seen() -> dict[str, GpuSample] | None:
        samples = {s.uuid: s for s in telemetry.sample()}
        return samples if check(samples) else None

    found: dict[str, GpuSample] = wait_until(seen, timeout=20, interval=0.2, what="DCGM readings")
    return found


def test_inventory_takes_dcgm_uuids_and_samples_follow_the_exporter(
    k8s_agent: NodeAgent,
    k8s_api: kubernetes.client.ApiClient,
    prometheus: PrometheusServer,
    main_gpus: SimulatedDcgmExporter,
) -> None:
    telemetry = joined(k8s_api, prometheus)
    inventory = telemetry.inventory()
    # the UUIDs DCGM reports per Hostname and gpu index; model from GFD; memory from DCGM
    assert inventory["gpu-node-a"] == [
        GpuDevice(
            uuid=f"GPU-gpu-node-a-{i}",
            index=i,
            model="NVIDIA-A100-SXM4-80GB",
            memory_total_bytes=81920 * MIB,
        )
        for i in range(4)
    ]
    assert [d.uuid for d in inventory["gpu-node-b"]] == ["GPU-gpu-node-b-0", "GPU-gpu-node-b-1"]
    # the metrics come from the simulated exporter, and the telemetry says so
    assert telemetry.simulated
    assert "simulated DCGM exporter" in telemetry.reason

    main_gpus.set(("gpu-node-b", 1), util=73, fb_used_mib=2048)
    main_gpus.set(("gpu-node-a", 2), util=55, pod="nb-alice", namespace="jupyter", container="nb")
    samples = sample_until(
        telemetry,
        lambda s: (
            s["GPU-gpu-node-b-1"].utilization_percent == 73.0
            and s["GPU-gpu-node-a-2"].utilization_percent == 55.0
        ),
    )
    # one reading per inventory GPU, in inventory order, stamped by the injected clock
    assert list(samples) == [d.uuid for node in inventory.values() for d in node]
    assert samples["GPU-gpu-node-b-1"] == GpuSample(
        uuid="GPU-gpu-node-b-1",
        at=NOW,
        utilization_percent=73.0,
        memory_used_bytes=2048 * MIB,
        memory_total_bytes=81920 * MIB,
    )
    assert samples["GPU-gpu-node-a-0"].utilization_percent == 0.0
    assert telemetry.holders() == {
        "GPU-gpu-node-a-2": PodRef(namespace="jupyter", pod="nb-alice", container="nb")
    }


def test_dcgm_gpus_outside_the_inventory_are_not_sampled(
    k8s_agent: NodeAgent, k8s_api: kubernetes.client.ApiClient, prometheus: PrometheusServer
) -> None:
    # everything Prometheus has, but only gpu-node-a in the inventory
    telemetry = KubernetesTelemetry(
        api_client=k8s_api,
        node_selector="kubernetes.io/hostname=gpu-node-a",
        prometheus_url=prometheus.url,
    )
    telemetry.inventory()
    assert sorted(s.uuid for s in telemetry.sample()) == [f"GPU-gpu-node-a-{i}" for i in range(4)]


def test_nodes_join_hostnames_that_differ_in_case_and_domain(
    k8s_agent: NodeAgent,
    k8s_api: kubernetes.client.ApiClient,
    prometheus: PrometheusServer,
    fqdn_exporter: SimulatedDcgmExporter,
) -> None:
    telemetry = KubernetesTelemetry(
        api_client=k8s_api,
        node_selector=SHARED_NODES,
        prometheus_url=prometheus.url,
        prometheus_filter={"cluster": "fqdn"},
    )
    inventory = telemetry.inventory()
    assert [d.uuid for d in inventory["gpu-node-a"]] == [g.uuid for g in fqdn_exporter.gpus()]
    # gpu-node-b has no exporter in that cluster: synthetic ids, and no readings
    assert inventory["gpu-node-b"] == devices("gpu-node-b", 2, "NVIDIA-H100-80GB-HBM3")
    fqdn_exporter.set(("GPU-Node-A.example.internal", 1), util=64)
    try:
        samples = sample_until(
            telemetry, lambda s: s[inventory["gpu-node-a"][1].uuid].utilization_percent == 64.0
        )
        assert set(samples) == {d.uuid for d in inventory["gpu-node-a"]}
    finally:
        fqdn_exporter.set(("GPU-Node-A.example.internal", 1), util=0)


def test_prometheus_down_leaves_inventory_working_and_samples_empty(
    k8s_agent: NodeAgent, k8s_api: kubernetes.client.ApiClient
) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    telemetry = KubernetesTelemetry(
        api_client=k8s_api, node_selector=SHARED_NODES, prometheus_url=url, timeout=2
    )
    inventory = telemetry.inventory()
    assert inventory["gpu-node-b"] == devices("gpu-node-b", 2, "NVIDIA-H100-80GB-HBM3")
    assert telemetry.sample() == []
    assert f"failing now: cannot reach Prometheus at {url}" in telemetry.reason


def test_uuids_learned_from_dcgm_survive_a_prometheus_outage(
    k8s_agent: NodeAgent,
    k8s_api: kubernetes.client.ApiClient,
    prometheus: PrometheusServer,
    main_gpus: SimulatedDcgmExporter,
) -> None:
    live = DcgmClient(prometheus.url, label_filter={"cluster": "main"})
    dead = DcgmClient(f"http://127.0.0.1:{free_port()}", timeout=2)
    telemetry = KubernetesTelemetry(
        api_client=k8s_api, node_selector=SHARED_NODES, dcgm=dead, clock=fixed_clock
    )
    # started while Prometheus was down: synthetic ids
    assert telemetry.inventory()["gpu-node-a"] == devices("gpu-node-a", 4, "NVIDIA-A100-SXM4-80GB")
    # Prometheus is back: readings join the synthetic ids by node and index at once...
    telemetry.dcgm = live
    main_gpus.set(("gpu-node-a", 3), util=12)
    samples = sample_until(
        telemetry, lambda s: s[synthetic_uuid("gpu-node-a", 3)].utilization_percent == 12.0
    )
    assert len(samples) == 6
    # ...and the next inventory takes the real UUIDs, which a later outage does not undo
    real = telemetry.inventory()
    assert real["gpu-node-a"][3].uuid == "GPU-gpu-node-a-3"
    telemetry.dcgm = dead
    assert telemetry.inventory() == real
    assert telemetry.sample() == []


# -- the Kubernetes API failing ----------------------------------------------------------------


def test_credentials_load_lazily_from_a_kubeconfig(
    k8s_agent: NodeAgent, k8s_control_plane: ControlPlane
) -> None:
    telemetry = KubernetesTelemetry(
        kubeconfig=str(k8s_control_plane.kubeconfig), node_selector=SHARED_NODES
    )
    assert set(telemetry.inventory()) == {"gpu-node-a", "gpu-node-b"}
    telemetry.close()
    with pytest.raises(ClusterTelemetryError, match="closed"):
        telemetry.inventory()


def test_a_missing_kubeconfig_is_a_clear_error(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-kubeconfig"
    telemetry = KubernetesTelemetry(kubeconfig=str(missing))
    with pytest.raises(ClusterTelemetryError, match="cannot load Kubernetes credentials"):
        telemetry.inventory()


def refused(plane: ControlPlane) -> kubernetes.client.ApiClient:
    """A client of ``plane`` whose token the API server refuses."""
    config = kubernetes.client.Configuration(
        host=plane.url,
        api_key={"BearerToken": "not-the-token"},
        api_key_prefix={"BearerToken": "Bearer"},
    )
    config.verify_ssl = False
    return kubernetes.client.ApiClient(config)


def test_refused_credentials_are_a_clear_error(k8s_control_plane: ControlPlane) -> None:
    with refused(k8s_control_plane) as api:
        telemetry = KubernetesTelemetry(api_client=api)
        with pytest.raises(ClusterTelemetryError) as caught:
            telemetry.inventory()
    message = str(caught.value)
    assert f"the Kubernetes API at {k8s_control_plane.url} refused to list nodes" in message
    assert "HTTP 401" in message
    assert "credentials were refused" in message


def test_an_unreachable_api_server_is_a_clear_error() -> None:
    host = f"https://127.0.0.1:{free_port()}"
    config = kubernetes.client.Configuration(host=host)
    config.verify_ssl = False
    config.retries = 0
    with kubernetes.client.ApiClient(config) as api:
        telemetry = KubernetesTelemetry(
            api_client=api, timeout=2, prometheus_url=f"http://127.0.0.1:{free_port()}"
        )
        with pytest.raises(
            ClusterTelemetryError, match=f"cannot reach the Kubernetes API at {host}"
        ):
            telemetry.inventory()
        # sample() never raises: no readings
        assert telemetry.sample() == []


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="positive"):
        KubernetesTelemetry(timeout=0)


# -- GPUs of pods not started by jupyter-dlinfra --------------------------------------------------


def test_gpus_of_others_pods_are_counted_by_node_and_ours_are_not(
    k8s_api: kubernetes.client.ApiClient, k8s_namespace: str
) -> None:
    core = kubernetes.client.CoreV1Api(k8s_api)

    def pod(
        name: str,
        gpus: int,
        *,
        node: str | None,
        labels: dict[str, str] | None = None,
        init_gpus: int = 0,
    ) -> None:
        spec: dict[str, object] = {
            "restartPolicy": "Never",
            "containers": [
                {
                    "name": "main",
                    "image": "none",
                    "command": ["sleep", "600"],
                    "resources": {"limits": {"nvidia.com/gpu": str(gpus)}},
                }
            ],
        }
        if init_gpus:
            spec["initContainers"] = [
                {
                    "name": "warm",
                    "image": "none",
                    "command": ["true"],
                    "resources": {"limits": {"nvidia.com/gpu": str(init_gpus)}},
                }
            ]
        if node:
            spec["nodeName"] = node
        else:
            spec["nodeSelector"] = {"no-such-label": "x"}  # never bound
        body = {"metadata": {"name": name, "labels": labels or {}}, "spec": spec}
        core.create_namespaced_pod(k8s_namespace, body)

    pod("theirs-a", 1, node="gpu-node-a")
    # an init container asking for more than the main ones: kube-scheduler counts the larger
    pod("theirs-b", 1, node="gpu-node-b", init_gpus=2)
    pod("ours", 2, node="gpu-node-a", labels={"app.kubernetes.io/managed-by": "jupyter-dlinfra"})
    pod("unbound", 4, node=None)
    try:
        telemetry = KubernetesTelemetry(api_client=k8s_api)
        use = telemetry.outside_use()
        assert use is not None
        mine = {
            node: [p for p in pods if p.startswith(f"{k8s_namespace}/")]
            for node, (_count, pods) in use.items()
        }
        assert mine.get("gpu-node-a") == [f"{k8s_namespace}/theirs-a"]
        assert mine.get("gpu-node-b") == [f"{k8s_namespace}/theirs-b"]
        assert use["gpu-node-a"][0] >= 1 and use["gpu-node-b"][0] >= 2
    finally:
        for name in ("theirs-a", "theirs-b", "ours", "unbound"):
            with contextlib.suppress(ApiException):
                core.delete_namespaced_pod(name, k8s_namespace, grace_period_seconds=0)


def test_pods_that_cannot_be_listed_leave_the_outside_use_unknown(
    k8s_control_plane: ControlPlane,
) -> None:
    with refused(k8s_control_plane) as api:
        assert KubernetesTelemetry(api_client=api).outside_use() is None
