"""The gateway on Kubernetes, end to end: a real control plane (kube-scheduler places the pods),
a node agent that plays kubelet for two fake GPU nodes, a real gateway and a person's server."""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import kubernetes
import pytest
from gateway_kit import Team, start_gateway, stop_and_keep_log
from sqlalchemy import update

from jupyter_dlinfra.core.store import Store
from jupyter_dlinfra.core.store import kernels as kernels_table
from jupyter_dlinfra.kernel_pod import PORT_NAMES as PORTS
from jupyter_dlinfra.kube.kernel_pods import KernelPodSpec, PodLauncher
from jupyter_dlinfra.testing.distributed import ALLREDUCE_CELL, ROLES_CELL, expected_sum
from jupyter_dlinfra.testing.k8s import ControlPlane
from jupyter_dlinfra.testing.server import (
    KernelSession,
    ServerProcess,
    wait_for_file,
    wait_until,
    write_notebook,
)


@pytest.fixture
def k8s_team(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    k8s_control_plane: ControlPlane,
    k8s_agent: Any,
    k8s_namespace: str,
) -> Iterator[Team]:
    """A gateway on the control plane; an ``indirect`` parameter may give more options of its
    job backend (``jobs``) and more lines of its configuration (``config``)."""
    kube = {"kubeconfig": str(k8s_control_plane.kubeconfig)}
    extra = getattr(request, "param", {})
    jobs = {**kube, "namespace": k8s_namespace, **extra.get("jobs", {})}
    config = f"""
c.DLInfra.kernel_backend = "kubernetes"
c.DLInfra.kernel_pods = {json.dumps({**kube, "namespace": k8s_namespace})}
c.DLInfra.cluster_telemetry = {json.dumps(kube)}
c.DLInfra.pod_interval = 0.3
c.DLInfra.kubernetes_priority_classes = "ensure"
c.DLInfra.job_backends = ["kubernetes"]
c.DLInfra.default_backend = "kubernetes"
c.DLInfra.backend_options = {json.dumps({"kubernetes": jobs})}
{extra.get("config", "")}
"""
    team = start_gateway(tmp_path, config=config)
    try:
        yield team
    finally:
        stop_and_keep_log(team.gateway)


@pytest.fixture
def k8s_user(k8s_team: Team, tmp_path: Path) -> Iterator[Callable[..., ServerProcess]]:
    started: list[ServerProcess] = []

    def start(user: str, env: dict[str, str] | None = None) -> ServerProcess:
        workdir = tmp_path / f"server-{user}"
        workdir.mkdir()
        server = ServerProcess(
            workdir,
            db_url=f"sqlite:///{workdir}/unused.sqlite",
            extra_args=(
                f"--gateway-url={k8s_team.gateway.url}",
                f"--GatewayClient.auth_token={k8s_team.tokens[user]}",
                "--GatewayClient.request_timeout=120",
            ),
            env=env or {},
        )
        started.append(server)
        return server.start()

    yield start
    for server in started:
        stop_and_keep_log(server)


def job_end(who: ServerProcess, job_id: int, *, timeout: float = 180, what: str = "") -> Any:
    """A job of ``who``'s once it ended (succeeded, failed or cancelled)."""

    def ended() -> Any:
        current = who.get(f"dlinfra/api/jobs/{job_id}")
        return current if current["state"] in ("succeeded", "failed", "cancelled") else None

    return wait_until(ended, timeout=timeout, interval=0.5, what=what or f"job {job_id} to end")


def pods_of(api: kubernetes.client.ApiClient, namespace: str, kernel_id: str) -> list[Any]:
    core = kubernetes.client.CoreV1Api(api)
    selector = f"dlinfra.jupyter.org/kernel-id={kernel_id}"
    return list(core.list_namespaced_pod(namespace, label_selector=selector).items)


def test_gpu_2_moves_the_kernel_into_a_pod_the_scheduler_bound_to_a_node_with_free_gpus(
    k8s_team: Team,
    k8s_user: Callable[..., ServerProcess],
    k8s_api: kubernetes.client.ApiClient,
    k8s_namespace: str,
) -> None:
    # GatewayClient sends the KERNEL_* variables of alice's server; they reach every pod
    alice = k8s_user("alice", env={"KERNEL_TEAM": "vision"})
    kernel = alice.start_kernel()
    kid = kernel.kernel_id
    # the kernel runs in a pod without GPUs
    first = pods_of(k8s_api, k8s_namespace, kid)
    assert len(first) == 1 and first[0].spec.node_name
    assert not (first[0].spec.containers[0].resources.limits or {}).get("nvidia.com/gpu")
    assert kernel.value("6 * 7") == 42
    team_of = "__import__('os').environ.get('KERNEL_TEAM')"
    assert kernel.value(team_of) == "vision"
    # a timeout someone set is kept (120 s, less GatewayClient's pad)
    assert kernel.value("__import__('os').environ['KERNEL_LAUNCH_TIMEOUT']") == "118"
    kernel.execute("x = 'lost on restart'")
    out = kernel.execute("%gpu 2", timeout=120, partial=True)
    assert "Restarting this kernel into that pod" in out.text, out.text
    assert "variables are lost" in out.text

    def in_gpu_pod() -> Any:
        try:
            return kernel.value("__import__('os').environ.get('CUDA_VISIBLE_DEVICES')")
        except Exception:  # the kernel is restarting
            return None

    devices = wait_until(in_gpu_pod, timeout=120, interval=1, what="the kernel in its GPU pod")
    assert len(devices.split(",")) == 2
    assert kernel.value("'x' in globals()") is False
    assert kernel.value(team_of) == "vision"
    pods = pods_of(k8s_api, k8s_namespace, kid)
    gpu_pods = [
        p for p in pods if (p.spec.containers[0].resources.limits or {}).get("nvidia.com/gpu")
    ]
    assert len(gpu_pods) == 1, [p.metadata.name for p in pods]
    pod = gpu_pods[0]
    assert pod.spec.containers[0].resources.limits["nvidia.com/gpu"] == "2"
    # admitted by the ledger on a node, and required to run there
    terms = pod.spec.affinity.node_affinity.required_during_scheduling_ignored_during_execution
    [field] = terms.node_selector_terms[0].match_fields
    assert (field.key, field.values) == ("metadata.name", [pod.spec.node_name])
    # our class, as the PriorityClass the gateway made at start
    assert pod.spec.priority_class_name == "dlinfra-interactive"
    assert pod.spec.priority == 100
    # bound by kube-scheduler (the pod named no node), to a node with 2 free GPUs
    scheduled = [c for c in pod.status.conditions if c.type == "PodScheduled"]
    assert scheduled and scheduled[0].status == "True"
    assert kernel.value("__import__('os').environ['NODE_NAME']") == pod.spec.node_name
    # the GPU-less first pod is gone
    wait_until(
        lambda: len(pods_of(k8s_api, k8s_namespace, kid)) == 1,
        timeout=60,
        what="the first pod to go",
    )
    # the ledger holds the grant on that node, for alice
    mine = alice.get("dlinfra/api/allocations")["allocations"]
    assert [(a["user"], a["count"], a["state"], a["placement"]) for a in mine] == [
        ("alice", 2, "granted", "pool")
    ]
    assert mine[0]["node"] == pod.spec.node_name
    assert len(mine[0]["gpus"]) == 2
    # shutting the kernel down deletes its pod and frees the GPUs in the ledger
    kernel.shutdown()
    wait_until(
        lambda: (
            not pods_of(k8s_api, k8s_namespace, kid)
            and not alice.get("dlinfra/api/allocations")["allocations"]
        ),
        timeout=60,
        what="the pod to go and the GPUs to be released",
    )


@pytest.mark.parametrize("end", ["crash", "clean stop"])
def test_kernels_in_pods_outlive_the_gateway(
    end: str,
    k8s_team: Team,
    k8s_user: Callable[..., ServerProcess],
    k8s_api: kubernetes.client.ApiClient,
    k8s_namespace: str,
) -> None:
    if end == "clean stop":
        # a gateway that leaves its kernel pods to the next one when it stops (an update)
        config = k8s_team.gateway.workdir / "config" / "jupyter_dlinfra_gateway_config.py"
        config.write_text(config.read_text() + "c.DLInfra.keep_kernel_pods_on_stop = True\n")
        k8s_team.gateway.stop()
        k8s_team.gateway.start(same_port=True)
    alice = k8s_user("alice", env={"KERNEL_TEAM": "vision"})
    kernel = alice.start_kernel()
    kid = kernel.kernel_id
    # the cluster's two H100s
    kernel.execute("%gpu 2 --model H100", timeout=120, partial=True)

    def in_gpu_pod() -> Any:
        try:
            return kernel.value("__import__('os').environ.get('CUDA_VISIBLE_DEVICES')")
        except Exception:  # the kernel is restarting
            return None

    wait_until(in_gpu_pod, timeout=120, interval=1, what="the kernel in its GPU pod")
    wait_until(
        lambda: len(pods_of(k8s_api, k8s_namespace, kid)) == 1,
        timeout=60,
        what="the first pod to go",
    )
    (gpu_pod,) = pods_of(k8s_api, k8s_namespace, kid)
    kernel.execute("x = 6 * 7")
    # a second kernel waits in the ledger for the same two: no GPU pod is made for it
    waiting = alice.start_kernel()
    out = waiting.execute("%gpu 2 --model H100 --no-wait", timeout=60)
    assert "Queued" in out.text, out.text
    assert len(pods_of(k8s_api, k8s_namespace, waiting.kernel_id)) == 1

    # and a kernel pod the ledger knows nothing of (its kernel ended while the gateway was down)
    stray = PodLauncher(api_client=k8s_api, namespace=k8s_namespace)
    stray_name = stray.create(
        KernelPodSpec(
            kernel_id="no-such-kernel",
            generation=0,
            user="alice",
            gpus=16,
            connection={**{p: 50000 + i for i, p in enumerate(PORTS)}, "key": "k"},
        )
    )

    if end == "crash":
        k8s_team.gateway.crash()
    else:
        k8s_team.gateway.stop()
        # stopped, the kernels still run in their pods
        assert len(pods_of(k8s_api, k8s_namespace, kid)) == 1
    # both kernels started long before the gateway went: past the launch grace of a kernel
    # whose process the gateway does not know yet, so only taking their pods back keeps them
    an_hour_ago = time.time() - 3600
    with Store(k8s_team.db_url).write() as tx:
        tx.conn.execute(
            update(kernels_table).values(launched_at=an_hour_ago, created_at=an_hour_ago)
        )
    k8s_team.gateway.start(same_port=True)

    # alice's server still knows the kernel, and it answers with its variables, in its GPU pod
    def answers() -> Any:
        try:
            return kernel.value("x")
        except Exception:  # the new gateway is taking the kernel back
            return None

    assert wait_until(answers, timeout=120, interval=1, what="the kernel to answer again") == 42
    assert kernel.value("__import__('os').environ['KERNEL_TEAM']") == "vision"
    assert [p.metadata.name for p in pods_of(k8s_api, k8s_namespace, kid)] == [
        gpu_pod.metadata.name
    ]
    status, listed = k8s_team.call("alice", "GET", "api/kernels")
    assert status == 200 and {k["id"] for k in listed} == {kid, waiting.kernel_id}
    status, listed = k8s_team.call("bob", "GET", "api/kernels")
    assert status == 200 and listed == []
    # its GPUs are still alice's in the ledger; the other kernel's wait was given up, saying why
    mine = alice.get("dlinfra/api/allocations")["allocations"]
    assert [(a["kernel_id"], a["count"], a["state"]) for a in mine] == [(kid, 2, "granted")]
    assert mine[0]["node"] == gpu_pod.spec.node_name
    status, history = k8s_team.call(
        "alice", "GET", f"dlinfra/api/allocations?kernel_id={waiting.kernel_id}&state=all"
    )
    assert status == 200, history
    ended = [a["end_reason"] or "" for a in history["allocations"]]
    assert len(ended) == 1 and "gateway restarted" in ended[0], history
    # the waiting kernel came back in its pod without GPUs
    assert waiting.value("1 + 1") == 2
    assert len(pods_of(k8s_api, k8s_namespace, waiting.kernel_id)) == 1
    core = kubernetes.client.CoreV1Api(k8s_api)
    assert stray.pod(stray_name) is None
    assert stray_name not in {
        s.metadata.name for s in core.list_namespaced_secret(k8s_namespace).items
    }
    # and the kernel shuts down as any other: its pod and GPUs go
    kernel.shutdown()
    wait_until(
        lambda: (
            not pods_of(k8s_api, k8s_namespace, kid)
            and not [
                a for a in alice.get("dlinfra/api/allocations")["allocations"] if a["count"] == 2
            ]
        ),
        timeout=60,
        what="the pod to go and the GPUs to be released",
    )
    waiting.shutdown()


def test_a_quota_holds_for_pod_kernels_a_request_over_it_waits_without_a_pod(
    k8s_team: Team,
    k8s_user: Callable[..., ServerProcess],
    k8s_api: kubernetes.client.ApiClient,
    k8s_namespace: str,
) -> None:
    status, body = k8s_team.call(
        "admin", "PUT", "dlinfra/api/scheduling", {"user_quotas": {"alice": 2}}
    )
    assert status == 200, body
    alice = k8s_user("alice")
    first = alice.start_kernel()
    first.execute("%gpu 2", timeout=120, partial=True)

    def mine(kernel: KernelSession) -> dict[str, Any] | None:
        found = alice.get(f"dlinfra/api/allocations?kernel_id={kernel.kernel_id}")
        return next(iter(found["allocations"]), None)

    wait_until(
        lambda: (a := mine(first)) is not None and a["state"] == "granted",
        timeout=120,
        what="the first kernel's 2 GPUs",
    )

    def in_gpu_pod() -> Any:
        try:
            return first.value("__import__('os').environ.get('CUDA_VISIBLE_DEVICES')")
        except Exception:  # the kernel is restarting into its GPU pod
            return None

    wait_until(in_gpu_pod, timeout=120, interval=1, what="the first kernel in its GPU pod")
    second = alice.start_kernel()
    out = second.execute("%gpu 1 --no-wait", timeout=60)
    assert "Queued" in out.text, out.text
    waiting = mine(second)
    assert waiting is not None and waiting["state"] == "queued"
    assert waiting["waiting_code"] == "quota", waiting
    assert "alice holds 2 GPU(s) of a quota of 2" in waiting["waiting_reason"]
    # held back by the gateway: Kubernetes never saw a GPU pod for it
    assert len(pods_of(k8s_api, k8s_namespace, second.kernel_id)) == 1
    out = second.execute("%gpu", timeout=60)
    assert "quota of 2" in out.text, out.text
    # the first kernel gives its GPUs back: the second's GPU pod is made, and granted
    first.execute("%gpu release", timeout=120, partial=True)
    granted = wait_until(
        lambda: (a := mine(second)) is not None and a["state"] == "granted" and a,
        timeout=120,
        what="the second kernel's GPU once the first released its two",
    )
    assert granted["count"] == 1 and granted["placement"] == "pool"

    def gpu_pods() -> list[Any]:
        return [
            p
            for p in pods_of(k8s_api, k8s_namespace, second.kernel_id)
            if (p.spec.containers[0].resources.limits or {}).get("nvidia.com/gpu") == "1"
        ]

    # the granted request's pod is made at the gateway's next look at the pods
    wait_until(lambda: len(gpu_pods()) == 1, timeout=30, what="the second kernel's GPU pod")
    first.shutdown()
    second.shutdown()


def test_a_request_larger_than_any_node_is_refused_with_why(
    k8s_team: Team, k8s_user: Callable[..., ServerProcess]
) -> None:
    alice = k8s_user("alice")
    kernel = alice.start_kernel()
    # the ledger admits GPU pods: it knows no node of the cluster has 8 GPUs
    out = kernel.execute("%gpu 8 --no-wait", timeout=60)
    assert "asked for 8 GPUs but the largest node has 4" in out.text, out.text
    assert not alice.get("dlinfra/api/queue")["queue"]
    # the kernel keeps working
    assert kernel.value("1 + 1") == 2


def test_a_notebook_job_runs_as_a_kubernetes_job_to_completion(
    k8s_team: Team,
    k8s_user: Callable[..., ServerProcess],
    k8s_api: kubernetes.client.ApiClient,
    k8s_namespace: str,
) -> None:
    alice = k8s_user("alice")
    write_notebook(
        alice.workdir / "root" / "train.ipynb",
        "%gpu 1\nimport os\nprint('on', os.environ.get('NODE_NAME', '?'), "
        "'devices', os.environ.get('CUDA_VISIBLE_DEVICES'))",
    )
    job = alice.post("dlinfra/api/jobs", {"path": "train.ipynb"})
    assert job["backend"] == "kubernetes"

    final = job_end(alice, job["id"])
    log = alice.get(f"dlinfra/api/jobs/{job['id']}/log")["text"]
    assert final["state"] == "succeeded", (final, log)
    assert "devices 0" in log, log
    batch = kubernetes.client.BatchV1Api(k8s_api)
    jobs = batch.list_namespaced_job(
        k8s_namespace, label_selector=f"dlinfra.jupyter.org/job-id={job['id']}"
    ).items
    assert len(jobs) == 1 and jobs[0].status.succeeded == 1
    limits = jobs[0].spec.template.spec.containers[0].resources.limits
    assert limits["nvidia.com/gpu"] == "1"
    assert jobs[0].spec.template.spec.priority_class_name == "dlinfra-batch"
    # admitted by the ledger on one node of the cluster, and created to run there
    assert _pinned_node(jobs[0]) in ("gpu-node-a", "gpu-node-b")


def jobs_of(api: kubernetes.client.ApiClient, namespace: str, job_id: int) -> list[Any]:
    """The Kubernetes Jobs of one of our jobs (none while the ledger has not admitted it)."""
    selector = f"dlinfra.jupyter.org/job-id={job_id}"
    batch = kubernetes.client.BatchV1Api(api)
    return list(batch.list_namespaced_job(namespace, label_selector=selector).items)


def _pinned_node(job: Any) -> str | None:
    """The node a Job's pod is required to run on (its admission), if any."""
    affinity = job.spec.template.spec.affinity
    if affinity is None or affinity.node_affinity is None:
        return None
    required = affinity.node_affinity.required_during_scheduling_ignored_during_execution
    for term in required.node_selector_terms:
        for field in term.match_fields or []:
            if field.key == "metadata.name" and field.operator == "In":
                return str(field.values[0])
    return None


def test_jobs_are_admitted_by_the_ledger_and_wait_there_in_its_order(
    k8s_team: Team,
    k8s_user: Callable[..., ServerProcess],
    k8s_api: kubernetes.client.ApiClient,
    k8s_namespace: str,
    tmp_path: Path,
) -> None:
    gate = tmp_path / "gate"
    alice = k8s_user("alice")
    bob = k8s_user("bob")
    for who in (alice, bob):
        write_notebook(
            who.workdir / "root" / "big.ipynb",
            wait_for_file(gate),
        )
    # the A100 node's four GPUs: alice's job is admitted there and runs
    first = alice.post("dlinfra/api/jobs", {"path": "big.ipynb", "gpus": 4, "model": "A100"})

    wait_until(
        lambda: alice.get(f"dlinfra/api/jobs/{first['id']}")["state"] == "running",
        timeout=120,
        interval=0.5,
        what="alice's job to run",
    )
    [created] = jobs_of(k8s_api, k8s_namespace, first["id"])
    assert _pinned_node(created) == "gpu-node-a"
    # bob's waits in the ledger, with its place, reason and estimate: no Job exists for it
    second = bob.post("dlinfra/api/jobs", {"path": "big.ipynb", "gpus": 4, "model": "A100"})

    def queued_in_ledger() -> Any:
        current = bob.get(f"dlinfra/api/jobs/{second['id']}")
        return current if current["position"] is not None else None

    waiting = wait_until(queued_in_ledger, timeout=60, interval=0.5, what="bob's job to queue")
    assert waiting["state"] == "queued" and waiting["position"] == 1, waiting
    assert waiting["reason"].startswith("waiting for 4 GPUs at position 1: waiting for 4 GPUs")
    assert "on one node" in waiting["reason"] and waiting["estimated_start"] is not None
    held = bob.get(f"dlinfra/api/allocations/{waiting['allocation_id']}")
    assert held["placement"] == "pool" and held["waiting_code"] == "no_free_gpu"
    assert jobs_of(k8s_api, k8s_namespace, second["id"]) == []
    # alice's ends: bob's is admitted on the node that came free, and runs to its end
    gate.write_text("go")
    for who, job in ((alice, first), (bob, second)):
        final = job_end(who, job["id"])
        assert final["state"] == "succeeded", final
    [admitted] = jobs_of(k8s_api, k8s_namespace, second["id"])
    assert _pinned_node(admitted) == "gpu-node-a"


def test_users_through_one_gateway_cannot_touch_each_others_pod_kernels(
    k8s_team: Team, k8s_user: Callable[..., ServerProcess]
) -> None:
    alice = k8s_user("alice")
    bob = k8s_user("bob")
    kernel = alice.start_kernel()
    assert bob.get("api/kernels") == []
    status, body = k8s_team.call(
        "bob", "POST", f"dlinfra/api/kernels/{kernel.kernel_id}/restart", {}
    )
    assert status == 403 and "alice" in body["message"]
    status, body = k8s_team.call(
        "bob", "POST", "dlinfra/api/allocations", {"kernel_id": kernel.kernel_id, "count": 1}
    )
    assert status == 403, body
    assert KernelSession(alice, kernel.kernel_id).value("3 * 3") == 9


def agent_uuid(node: str, index: int) -> str:
    """How the node agent names fake GPUs: the simulated exporter must name them alike."""
    return f"GPU-{node}-{index}"


@pytest.fixture
def dcgm(k8s_agent: Any) -> Iterator[tuple[Any, Any]]:
    """dcgm-exporter metrics for the agent's nodes (all busy), scraped by a real Prometheus."""
    from jupyter_dlinfra.testing.dcgm import SimulatedDcgmExporter
    from jupyter_dlinfra.testing.prometheus import PrometheusServer

    nodes = {"gpu-node-a": 4, "gpu-node-b": 2}
    with SimulatedDcgmExporter(nodes, uuid_for=agent_uuid) as exporter:
        for gpu in exporter.gpus():
            exporter.set(gpu.uuid, util=90.0, fb_used_mib=1000)
        with PrometheusServer([exporter.target]) as prometheus:
            yield exporter, prometheus


def test_an_idle_pod_kernel_is_warned_then_moved_back_to_a_pod_without_gpus(
    tmp_path: Path,
    k8s_control_plane: ControlPlane,
    k8s_agent: Any,
    k8s_namespace: str,
    k8s_api: kubernetes.client.ApiClient,
    dcgm: tuple[Any, Any],
) -> None:
    exporter, prometheus = dcgm
    kube = {"kubeconfig": str(k8s_control_plane.kubeconfig)}
    config = f"""
c.DLInfra.kernel_backend = "kubernetes"
c.DLInfra.kernel_pods = {json.dumps({**kube, "namespace": k8s_namespace})}
c.DLInfra.cluster_telemetry = {json.dumps({**kube, "prometheus_url": prometheus.url})}
c.DLInfra.pod_interval = 0.3
c.DLInfra.job_backends = []
c.DLInfra.telemetry_interval = 0.5
c.DLInfra.idle_after = 1
c.DLInfra.warn_after = 1
c.DLInfra.reclaim_after = 3
"""
    team = start_gateway(tmp_path, config=config)
    try:
        # the inventory is the cluster's, named as dcgm-exporter names the GPUs
        def dcgm_inventory() -> bool:
            status, cluster = team.call("alice", "GET", "dlinfra/api/cluster")
            uuids = {g["uuid"] for n in cluster["nodes"] for g in n["gpus"]}
            return status == 200 and agent_uuid("gpu-node-a", 0) in uuids

        wait_until(dcgm_inventory, timeout=60, interval=0.5, what="DCGM's GPUs in the inventory")
        # and the API names the cluster as its provider, not the gateway's own node
        _, cluster = team.call("alice", "GET", "dlinfra/api/cluster")
        assert cluster["provider"]["name"] == "kubernetes", cluster["provider"]
        kernel = ServerProcess(
            tmp_path / "alice",
            db_url=f"sqlite:///{tmp_path}/unused.sqlite",
            extra_args=(
                f"--gateway-url={team.gateway.url}",
                f"--GatewayClient.auth_token={team.tokens['alice']}",
            ),
        )
        (tmp_path / "alice").mkdir()
        alice = kernel.start()
        try:
            session = alice.start_kernel()
            out = session.execute("%gpu 2", timeout=120, partial=True)
            assert "Restarting this kernel into that pod" in out.text, out.text
            granted = wait_until(
                lambda: next(
                    (
                        a
                        for a in alice.get("dlinfra/api/allocations")["allocations"]
                        if a["state"] == "granted"
                    ),
                    None,
                ),
                timeout=60,
                what="the grant",
            )
            held = [g["uuid"] for g in granted["gpus"]]
            assert all(u.startswith(f"GPU-{granted['node']}-") for u in held), held

            def usage() -> dict[str, Any]:
                found: dict[str, Any] = alice.get(f"dlinfra/api/kernels/{session.kernel_id}/usage")
                return found

            # busy GPUs (as DCGM reads them) keep the kernel active
            wait_until(lambda: usage().get("at") is not None, timeout=60, what="a reading")
            assert usage()["idle"]["state"] == "active"
            for uuid in held:
                exporter.set(uuid, util=0.0)

            def reclaimed() -> bool:
                allocations = alice.get("dlinfra/api/allocations")["allocations"]
                return not allocations

            wait_until(reclaimed, timeout=90, interval=0.5, what="the idle GPUs to be reclaimed")

            # the kernel runs on, in a pod without GPUs, and the GPU pod is gone
            def one_pod_without_gpus() -> bool:
                pods = pods_of(k8s_api, k8s_namespace, session.kernel_id)
                return len(pods) == 1 and not (
                    pods[0].spec.containers[0].resources.limits or {}
                ).get("nvidia.com/gpu")

            wait_until(one_pod_without_gpus, timeout=90, interval=0.5, what="a pod without GPUs")
            back = wait_until(
                lambda: _try(session, "print('still here')"),
                timeout=90,
                interval=1,
                what="the kernel back in its new pod",
            )
            assert "still here" in back.stdout
            assert "idle" in back.stderr.lower() or "reclaim" in back.stderr.lower(), back
        finally:
            stop_and_keep_log(alice)
    finally:
        stop_and_keep_log(team.gateway)


def _try(session: KernelSession, code: str) -> Any:
    try:
        return session.execute(code, timeout=20)
    except Exception:  # the kernel is still restarting
        return None


def test_admitted_jobs_hold_quotas_and_a_restarted_gateway_admits_nothing_twice(
    k8s_team: Team,
    k8s_user: Callable[..., ServerProcess],
    k8s_api: kubernetes.client.ApiClient,
    k8s_namespace: str,
    tmp_path: Path,
) -> None:
    gateway = k8s_team.gateway
    # a quota of 2, and no borrowing beyond it (jobs may borrow idle GPUs by default)
    quota = {"user_quotas": {"alice": 2}, "borrowing": False}
    status, _, _ = gateway.request("PUT", "dlinfra/api/scheduling", quota)
    assert status == 200
    gate = tmp_path / "gate"
    alice = k8s_user("alice")
    write_notebook(
        alice.workdir / "root" / "one.ipynb",
        wait_for_file(gate),
    )
    made = [alice.post("dlinfra/api/jobs", {"path": "one.ipynb", "gpus": 1}) for _ in range(3)]

    def states() -> list[str]:
        return [alice.get(f"dlinfra/api/jobs/{j['id']}")["state"] for j in made]

    wait_until(
        lambda: states() == ["running", "running", "queued"],
        timeout=120,
        interval=0.5,
        what="two of alice's jobs to run within her quota of 2",
    )
    third = alice.get(f"dlinfra/api/jobs/{made[2]['id']}")
    held = alice.get(f"dlinfra/api/allocations/{third['allocation_id']}")
    assert held["waiting_code"] == "quota" and "quota of 2" in held["waiting_reason"], held
    assert "quota" in third["reason"] and jobs_of(k8s_api, k8s_namespace, made[2]["id"]) == []
    # the gateway goes away and comes back: nothing is admitted twice, nothing is lost
    gateway.stop()
    gateway.start(same_port=True)
    wait_until(
        lambda: states() == ["running", "running", "queued"],
        timeout=60,
        interval=0.5,
        what="the same jobs running and waiting after the restart",
    )
    assert [len(jobs_of(k8s_api, k8s_namespace, j["id"])) for j in made] == [1, 1, 0]
    gate.write_text("go")
    wait_until(
        lambda: states() == ["succeeded"] * 3,
        timeout=180,
        interval=0.5,
        what="all three jobs to succeed, the third admitted once the others ended",
    )
    assert [len(jobs_of(k8s_api, k8s_namespace, j["id"])) for j in made] == [1, 1, 1]


def test_a_notebooks_gpu_request_preempts_an_admitted_batch_job_which_runs_again_later(
    k8s_team: Team,
    k8s_user: Callable[..., ServerProcess],
    k8s_api: kubernetes.client.ApiClient,
    k8s_namespace: str,
    tmp_path: Path,
) -> None:
    gate = tmp_path / "gate"
    alice, bob = k8s_user("alice"), k8s_user("bob")
    write_notebook(
        bob.workdir / "root" / "train.ipynb",
        wait_for_file(gate),
    )
    job = bob.post("dlinfra/api/jobs", {"path": "train.ipynb", "gpus": 4, "model": "A100"})

    def bobs() -> Any:
        return bob.get(f"dlinfra/api/jobs/{job['id']}")

    wait_until(lambda: bobs()["state"] == "running", timeout=120, what="bob's job to run")
    # alice's notebook wants the A100 node: her class outranks batch, and the job gives way
    kernel = alice.start_kernel()
    kernel.execute("%gpu 4 --model A100 --no-wait", timeout=60)

    def in_gpu_pod() -> Any:
        try:
            return kernel.value("__import__('os').environ.get('CUDA_VISIBLE_DEVICES')")
        except Exception:  # the kernel is restarting into its GPU pod
            return None

    kernel.execute("%gpu", timeout=60)  # the magic moves the kernel once granted
    requeued = wait_until(
        lambda: (j := bobs())["state"] == "queued" and j["attempts"] == 1 and j,
        timeout=120,
        what="bob's job to be preempted and queued again",
    )
    assert "preempted for request" in requeued["reason"], requeued
    devices = wait_until(in_gpu_pod, timeout=120, interval=1, what="alice's kernel in its pod")
    assert len(devices.split(",")) == 4
    # bob's job waits in the ledger (no Job object) until alice gives the GPUs back
    assert jobs_of(k8s_api, k8s_namespace, job["id"]) == []
    kernel.execute("%gpu release", timeout=120, partial=True)
    gate.write_text("go")
    done = job_end(bob, job["id"], what="bob's job to run again and end")
    assert done["state"] == "succeeded" and done["attempts"] == 1, done
    kernel.shutdown()


@pytest.mark.parametrize("k8s_team", [{"jobs": {"bind_timeout_s": 6}}], indirect=True)
def test_an_admitted_job_that_never_binds_is_handed_back_and_runs_on_another_node(
    k8s_team: Team,
    k8s_user: Callable[..., ServerProcess],
    k8s_api: kubernetes.client.ApiClient,
    k8s_namespace: str,
) -> None:
    """The ledger admits a Job on a node whose taint its pod does not tolerate: the job shows
    kube-scheduler's reason, and after the bind timeout its Job is deleted and its GPUs go back
    to the queue, which admits it on the other node, where it runs."""
    core = kubernetes.client.CoreV1Api(k8s_api)
    taint = {"key": "dlinfra.test/blocked", "value": "yes", "effect": "NoSchedule"}
    # best fit: 2 GPUs of any model go to the H100 node's 2, where nothing may be placed now
    core.patch_node("gpu-node-b", {"spec": {"taints": [taint]}})
    try:
        alice = k8s_user("alice")
        write_notebook(alice.workdir / "root" / "two.ipynb", "%gpu 2\nprint('ran')")
        job = alice.post("dlinfra/api/jobs", {"path": "two.ipynb", "gpus": 2})

        def told_why() -> Any:
            current = alice.get(f"dlinfra/api/jobs/{job['id']}")
            return current if "taint" in (current["reason"] or "") else None

        waiting = wait_until(told_why, timeout=60, interval=0.2, what="kube-scheduler's reason")
        assert waiting["state"] == "queued"
        assert "kubernetes has not placed it on gpu-node-b" in waiting["reason"], waiting
        assert "go back to the queue if it is not placed 6 s after admission" in waiting["reason"]
        [first] = jobs_of(k8s_api, k8s_namespace, job["id"])
        assert _pinned_node(first) == "gpu-node-b"

        final = job_end(alice, job["id"])
        assert final["state"] == "succeeded", final
        admitted = [j for j in jobs_of(k8s_api, k8s_namespace, job["id"]) if j.status.succeeded]
        assert [_pinned_node(j) for j in admitted] == ["gpu-node-a"]
        # the ledger's record: the first grant released, asked again avoiding the tainted node
        mine = alice.get(f"dlinfra/api/allocations?kernel_id=job-{job['id']}&state=all")
        grants = [a for a in mine["allocations"] if a["id"] != final["allocation_id"]]
        assert [a["node"] for a in grants] == ["gpu-node-b"]
        assert "kubernetes has not placed it on gpu-node-b" in grants[0]["end_reason"]
    finally:
        core.patch_node("gpu-node-b", {"spec": {"taints": None}})


@pytest.mark.parametrize(
    "k8s_team", [{"config": "c.DLInfra.reconcile_interval = 1.0"}], indirect=True
)
def test_gpus_of_pods_the_gateway_did_not_start_are_not_admitted_on(
    k8s_team: Team,
    k8s_user: Callable[..., ServerProcess],
    k8s_api: kubernetes.client.ApiClient,
    k8s_namespace: str,
) -> None:
    """Someone runs a pod with 3 GPUs on the A100 node outside jupyter-dlinfra: the ledger keeps
    those GPUs out (the cluster view says for which pod), a 2-GPU A100 job waits in the ledger
    without a Job, and is admitted once that pod is gone."""
    core = kubernetes.client.CoreV1Api(k8s_api)
    name = "someone-elses-training"
    core.create_namespaced_pod(
        k8s_namespace,
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": name},
            "spec": {
                "nodeName": "gpu-node-a",
                "restartPolicy": "Never",
                "containers": [
                    {
                        "name": "main",
                        "image": "none",
                        "command": ["sleep", "600"],
                        "resources": {"limits": {"nvidia.com/gpu": "3"}},
                    }
                ],
            },
        },
    )
    try:
        alice = k8s_user("alice")
        pod = f"{k8s_namespace}/{name}"

        def kept_out() -> Any:
            nodes = alice.get("dlinfra/api/cluster")["nodes"]
            gpus = [g for n in nodes if n["name"] == "gpu-node-a" for g in n["gpus"]]
            kept = [g for g in gpus if pod in ((g["outside_ledger"] or {}).get("pods") or [])]
            return kept if len(kept) == 3 else None

        kept = wait_until(kept_out, timeout=60, interval=0.5, what="the pod's GPUs kept out")
        assert all(g["holder"] is None for g in kept)
        write_notebook(alice.workdir / "root" / "two.ipynb", "%gpu 2\nprint('ran')")
        job = alice.post("dlinfra/api/jobs", {"path": "two.ipynb", "gpus": 2, "model": "A100"})

        def queued_in_ledger() -> Any:
            current = alice.get(f"dlinfra/api/jobs/{job['id']}")
            return current if current["position"] is not None else None

        waiting = wait_until(queued_in_ledger, timeout=60, interval=0.5, what="the job to wait")
        assert waiting["position"] == 1 and "at most 1 free on a node" in waiting["reason"]
        assert jobs_of(k8s_api, k8s_namespace, job["id"]) == []
        core.delete_namespaced_pod(name, k8s_namespace, grace_period_seconds=0)

        final = job_end(alice, job["id"])
        assert final["state"] == "succeeded", final
        [admitted] = jobs_of(k8s_api, k8s_namespace, job["id"])
        assert _pinned_node(admitted) == "gpu-node-a"
    finally:
        with contextlib.suppress(kubernetes.client.ApiException):
            core.delete_namespaced_pod(name, k8s_namespace, grace_period_seconds=0)


@pytest.mark.parametrize(
    "k8s_team",
    [{"config": 'c.DLInfra.kernel_pods["bind_timeout_s"] = 4'}],
    indirect=True,
)
def test_a_gpu_pod_that_never_binds_is_handed_back_and_the_kernel_moves_to_another_node(
    k8s_team: Team,
    k8s_user: Callable[..., ServerProcess],
    k8s_api: kubernetes.client.ApiClient,
    k8s_namespace: str,
) -> None:
    """``%gpu 2`` is admitted on the H100 node, whose taint the pod does not tolerate: after the
    bind timeout the pod is deleted, the GPUs go back to the queue, the ledger grants 2 GPUs of
    the other node, and the kernel's restart moves it into the pod there."""
    core = kubernetes.client.CoreV1Api(k8s_api)
    taint = {"key": "dlinfra.test/blocked", "value": "yes", "effect": "NoSchedule"}
    core.patch_node("gpu-node-b", {"spec": {"taints": [taint]}})
    try:
        alice = k8s_user("alice")
        kernel = alice.start_kernel()
        out = kernel.execute("%gpu 2", timeout=120, partial=True)
        assert "on node gpu-node-b" in out.text, out.text

        def in_gpu_pod() -> Any:
            try:
                env = kernel.value("dict(__import__('os').environ)")
            except Exception:  # the kernel is restarting
                return None
            return env if env.get("CUDA_VISIBLE_DEVICES") else None

        env = wait_until(in_gpu_pod, timeout=150, interval=1, what="the kernel in its GPU pod")
        assert env["NODE_NAME"] == "gpu-node-a"
        assert len(env["CUDA_VISIBLE_DEVICES"].split(",")) == 2
        mine = alice.get(f"dlinfra/api/allocations?kernel_id={kernel.kernel_id}&state=all")
        ended = [a for a in mine["allocations"] if a["state"] == "released"]
        held = [a for a in mine["allocations"] if a["state"] == "granted"]
        assert [a["node"] for a in ended] == ["gpu-node-b"]
        assert "kubernetes did not place its pod on gpu-node-b" in ended[0]["end_reason"]
        assert [(a["node"], a["placement"], a["avoid"]) for a in held] == [
            ("gpu-node-a", "pool", ["gpu-node-b"])
        ]
        kernel.shutdown()
    finally:
        core.patch_node("gpu-node-b", {"spec": {"taints": None}})


def _held_jobs(who: ServerProcess, gates: Path, name: str, count: int, **asked: Any) -> list[int]:
    """``count`` jobs of one GPU each, job ``i`` held until ``gates / f"{name}-{i}"`` exists."""
    ids = []
    for i in range(count):
        write_notebook(
            who.workdir / "root" / f"{name}-{i}.ipynb", wait_for_file(gates / f"{name}-{i}")
        )
        job = who.post("dlinfra/api/jobs", {"path": f"{name}-{i}.ipynb", "gpus": 1, **asked})
        ids.append(job["id"])
    return ids


def _states(who: ServerProcess, ids: list[int]) -> list[str]:
    return [who.get(f"dlinfra/api/jobs/{i}")["state"] for i in ids]


def _cancel(who: ServerProcess, ids: list[int]) -> None:
    for i in ids:
        if who.get(f"dlinfra/api/jobs/{i}")["state"] in ("queued", "running"):
            who.delete(f"dlinfra/api/jobs/{i}")


def test_a_waiting_big_kernel_request_is_not_overtaken_by_a_stream_of_small_jobs(
    k8s_team: Team,
    k8s_user: Callable[..., ServerProcess],
    k8s_api: kubernetes.client.ApiClient,
    k8s_namespace: str,
    tmp_path: Path,
) -> None:
    """bob's 1-GPU Jobs fill the A100 node; alice's kernel asks for all four (without
    preemption): the GPUs bob's Jobs free are kept for her, and bob's later Jobs wait, without a
    Job object, until she had hers."""
    status, _ = k8s_team.call("admin", "PUT", "dlinfra/api/scheduling", {"preemption": False})
    assert status == 200
    alice, bob = k8s_user("alice"), k8s_user("bob")
    first = _held_jobs(bob, tmp_path, "first", 4, model="A100")
    wait_until(
        lambda: _states(bob, first) == ["running"] * 4, timeout=120, what="bob's jobs to run"
    )
    kernel = alice.start_kernel()
    out = kernel.execute("%gpu 4 --model A100 --no-wait", timeout=60)
    assert "position 1" in out.text, out.text
    stream = _held_jobs(bob, tmp_path, "stream", 2, model="A100")
    try:
        # two of bob's first Jobs end: two A100s are free, and kept for alice's request
        for i in (0, 1):
            (tmp_path / f"first-{i}").write_text("go")
        wait_until(
            lambda: _states(bob, first[:2]) == ["succeeded"] * 2,
            timeout=120,
            what="two of bob's jobs to end",
        )
        time.sleep(2)  # ten passes of the job loop: none may admit bob's stream meanwhile
        waiting = [bob.get(f"dlinfra/api/jobs/{i}") for i in stream]
        assert [j["state"] for j in waiting] == ["queued", "queued"]
        assert all(jobs_of(k8s_api, k8s_namespace, i) == [] for i in stream)
        assert [j["position"] for j in waiting] == [2, 3], waiting
        theirs = f"dlinfra/api/allocations?kernel_id={kernel.kernel_id}"
        mine = alice.get(theirs)["allocations"]
        assert [(a["state"], a["position"]) for a in mine] == [("queued", 1)]
        # the rest of bob's first Jobs end: alice's request has the node, bob's stream waits
        for i in (2, 3):
            (tmp_path / f"first-{i}").write_text("go")
        granted = wait_until(
            lambda: (
                [a for a in alice.get(theirs)["allocations"] if a["state"] == "granted"] or None
            ),
            timeout=120,
            what="alice's request to be granted",
        )
        assert granted[0]["node"] == "gpu-node-a" and len(granted[0]["gpus"]) == 4
        assert _states(bob, stream) == ["queued", "queued"]
        assert all(jobs_of(k8s_api, k8s_namespace, i) == [] for i in stream)
    finally:
        _cancel(bob, first + stream)
        kernel.shutdown()


def test_two_users_sweeps_share_the_cluster_by_fair_share(
    k8s_team: Team, k8s_user: Callable[..., ServerProcess], tmp_path: Path
) -> None:
    """While the A100 node is held, alice and then bob queue four 1-GPU Jobs each: when it comes
    free, the ledger admits them in turn (each grant counts towards its user's share), two and
    two, not alice's four first."""
    admin, alice, bob = k8s_user("admin"), k8s_user("alice"), k8s_user("bob")
    write_notebook(admin.workdir / "root" / "hold.ipynb", wait_for_file(tmp_path / "hold"))
    blocker = admin.post("dlinfra/api/jobs", {"path": "hold.ipynb", "gpus": 4, "model": "A100"})
    wait_until(
        lambda: _states(admin, [blocker["id"]]) == ["running"], timeout=120, what="the holder"
    )
    sweeps = {
        "alice": _held_jobs(alice, tmp_path, "alice", 4, model="A100"),
        "bob": _held_jobs(bob, tmp_path, "bob", 4, model="A100"),
    }
    servers = {"alice": alice, "bob": bob}
    try:
        assert all(set(_states(servers[u], ids)) == {"queued"} for u, ids in sweeps.items())
        (tmp_path / "hold").write_text("go")

        def running() -> dict[str, int] | None:
            counts = {u: _states(servers[u], ids).count("running") for u, ids in sweeps.items()}
            return counts if sum(counts.values()) == 4 else None

        counts = wait_until(running, timeout=180, interval=0.5, what="four of the sweeps to run")
        # equal shares: two each (within one Job of the shares)
        assert abs(counts["alice"] - 2) <= 1 and abs(counts["bob"] - 2) <= 1, counts
    finally:
        for user, ids in sweeps.items():
            _cancel(servers[user], ids)


def test_a_job_of_two_nodes_runs_a_pod_on_each_admitted_node_and_fails_or_stops_as_one(
    k8s_team: Team,
    k8s_user: Callable[..., ServerProcess],
    k8s_api: kubernetes.client.ApiClient,
    k8s_namespace: str,
    tmp_path: Path,
) -> None:
    """2 nodes x 2 GPUs: the ledger admits both nodes at once, a Job per node is created, the 4
    ranks meet at node 0's pod; a rank that fails on node 1 fails the job and stops node 0's
    Job; a cancel stops every node's."""
    alice = k8s_user("alice")
    root = alice.workdir / "root"
    write_notebook(root / "ddp.ipynb", ALLREDUCE_CELL)
    # more GPUs than the largest node (4) are whole nodes of 4, or refused with what to ask
    for body, message in (
        ({"gpus": 6}, "6 GPUs are more than one node has (4) and do not make whole nodes of 4"),
        ({"gpus": 8}, "asked for 2 nodes of 4 GPUs but only 1 node has 4"),
        ({"nodes": 3, "gpus_per_node": 1}, "asked for 3 nodes of 1 GPU but only 2 nodes have 1"),
    ):
        status, refused, _ = alice.request(
            "POST", "dlinfra/api/jobs", {"path": "ddp.ipynb", **body}
        )
        assert status == 400 and message in refused["message"], refused
    shape = {"nodes": 2, "gpus_per_node": 2}
    job = alice.post("dlinfra/api/jobs", {"path": "ddp.ipynb", **shape})
    assert (job["world_size"], job["backend"]) == (4, "kubernetes"), job

    final = job_end(alice, job["id"], timeout=240, what="the ranks")
    log = alice.get(f"dlinfra/api/jobs/{job['id']}/log")["text"]
    if final["state"] != "succeeded":
        # whole, as the report's captured output (an assertion's message is cut short)
        print(f"job {job['id']} ended {final['state']}: {final.get('reason')}\n{log}")
        for rank in range(4):
            found = alice.request("GET", f"dlinfra/api/jobs/{job['id']}/log?rank={rank}")
            print(f"--- rank {rank}: {found[1]}")
    assert final["state"] == "succeeded", (final, log)
    parts = jobs_of(k8s_api, k8s_namespace, job["id"])
    # one Job per node, each pinned to a different admitted node with its share of the GPUs
    assert sorted(_pinned_node(p) or "" for p in parts) == ["gpu-node-a", "gpu-node-b"]
    for part in parts:
        limits = part.spec.template.spec.containers[0].resources.limits
        assert limits["nvidia.com/gpu"] == "2" and part.status.succeeded == 1
    for rank in range(4):
        own = alice.get(f"dlinfra/api/jobs/{job['id']}/log?rank={rank}")["text"]
        line = next(x for x in own.splitlines() if x.startswith(f"rank {rank}/4 "))
        assert f"node {rank // 2} " in line and line.endswith(f" sum {expected_sum(4)}"), line
    assert "[rank0]: rank 0/4 local 0 node 0" in log, log

    # roles run in one pod, in order, each worker with its own of the pod's GPUs
    write_notebook(root / "ps.ipynb", ROLES_CELL)
    roles = [
        {"name": "server", "replicas": 1},
        {"name": "worker", "replicas": 2, "gpus": 1, "after": "server"},
    ]
    ps = alice.post("dlinfra/api/jobs", {"path": "ps.ipynb", "roles": roles})
    final = job_end(alice, ps["id"], timeout=240, what="the roles")
    assert final["state"] == "succeeded", final
    worker = alice.get(f"dlinfra/api/jobs/{ps['id']}/log?rank=2")["text"]
    assert "worker 1 rank 2 gpus 1 " in worker and worker.rstrip().count("total 3") == 1, worker

    # rank 3 (node 1) fails at once: node 0's ranks would wait for it forever; its Job is
    # stopped and the job fails with the rank's error
    write_notebook(
        root / "bad.ipynb",
        "import os\nif os.environ['RANK'] == '3': raise RuntimeError('rank three broke')",
        ALLREDUCE_CELL,
    )
    bad = alice.post("dlinfra/api/jobs", {"path": "bad.ipynb", **shape})
    final = job_end(alice, bad["id"], timeout=240, what="the failure")
    assert final["state"] == "failed", final
    assert "rank 3 of 4" in final["reason"] and "rank three broke" in final["reason"], final
    assert all(p.status.succeeded != 1 for p in jobs_of(k8s_api, k8s_namespace, bad["id"]))
    # node 0's launcher was stopped by its Job's deletion, not by waiting out its ranks
    bad_log = alice.get(f"dlinfra/api/jobs/{bad['id']}/log")["text"]
    assert "SIGTERM: stopping every rank" in bad_log, bad_log

    # a cancel stops every node's Job
    gate = tmp_path / "gate"
    write_notebook(root / "wait.ipynb", wait_for_file(gate))
    waiting = alice.post("dlinfra/api/jobs", {"path": "wait.ipynb", **shape})
    wait_until(
        lambda: alice.get(f"dlinfra/api/jobs/{waiting['id']}")["state"] == "running",
        timeout=120,
        interval=0.5,
        what="the job to run",
    )
    assert len(jobs_of(k8s_api, k8s_namespace, waiting["id"])) == 2
    alice.delete(f"dlinfra/api/jobs/{waiting['id']}")
    final = job_end(alice, waiting["id"], timeout=120, what="the cancel")
    assert final["state"] == "cancelled", final
    wait_until(
        lambda: not jobs_of(k8s_api, k8s_namespace, waiting["id"]),
        timeout=60,
        interval=0.5,
        what="every node's Job to go",
    )
    # every grant went back
    assert not alice.get("dlinfra/api/allocations")["allocations"]
