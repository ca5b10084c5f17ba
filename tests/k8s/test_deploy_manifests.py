"""deploy/kubernetes against the real API server: the manifests are accepted, the gateway's
ServiceAccount has exactly the rights docs/deployment.md lists ("RBAC, line by line"), and the pod
launcher does its whole job with them alone (the API server impersonates the account)."""

from __future__ import annotations

import contextlib
import re
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes.client
import pytest
import yaml
from kubernetes.client import ApiException
from kubernetes.utils import FailToCreateError, create_from_dict

from jupyter_dlinfra.backends import BackendError
from jupyter_dlinfra.kube.kernel_pods import KernelPodSpec, PodLauncher
from jupyter_dlinfra.telemetry.kubernetes import KubernetesTelemetry
from jupyter_dlinfra.testing.server import wait_until

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy" / "kubernetes"
NAMESPACE = "dlinfra"
ACCOUNT = f"system:serviceaccount:{NAMESPACE}:jupyter-dlinfra-gateway"
#: applied for real: what the rights and the impersonation need
APPLIED = ("00-namespace.yaml", "10-rbac.yaml")

#: rights the gateway must not have (the docs say why each is left out)
NOT_GRANTED = [
    ("", "secrets", "update"),
    ("", "pods", "watch"),
    ("", "pods", "update"),
    ("", "pods/exec", "create"),
    ("", "pods/log", "get"),
    ("", "configmaps", "get"),
    ("batch", "jobs", "get"),
    ("", "nodes", "get"),
    ("scheduling.k8s.io", "priorityclasses", "create"),
]


def documents(name: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all((DEPLOY / name).read_text()) if d]


def documented_rights() -> list[tuple[str, str, str, str]]:
    """(API group, resource, verb, scope) of each row of the docs' RBAC table."""
    text = (ROOT / "docs" / "deployment.md").read_text()
    section = text.split("## RBAC, line by line", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(
        r"^\| `([a-z/]+)`(?: \(`([a-z.]+)`\))? \| `([a-z]+)` \| (namespace|cluster) \|",
        section,
        re.M,
    )
    group = {"jobs": "batch"}
    return [(g or group.get(r, ""), r, v, scope) for r, g, v, scope in rows]


@pytest.fixture(scope="module")
def deployed(k8s_api: kubernetes.client.ApiClient) -> Iterator[None]:
    created: list[dict[str, Any]] = []
    for name in APPLIED:
        for doc in documents(name):
            try:
                create_from_dict(k8s_api, doc, namespace=NAMESPACE)
            except FailToCreateError as err:
                if any(e.status != 409 for e in err.api_exceptions):
                    raise
            created.append(doc)
    try:
        yield
    finally:
        rbac = kubernetes.client.RbacAuthorizationV1Api(k8s_api)
        with contextlib.suppress(ApiException):
            rbac.delete_cluster_role_binding("jupyter-dlinfra-gateway-nodes")
        with contextlib.suppress(ApiException):
            rbac.delete_cluster_role("jupyter-dlinfra-gateway-nodes")
        with contextlib.suppress(ApiException):
            kubernetes.client.CoreV1Api(k8s_api).delete_namespace(NAMESPACE)


@pytest.fixture
def as_gateway(k8s_control_plane: Any, deployed: None) -> Iterator[kubernetes.client.ApiClient]:
    """A client that the API server takes for the gateway's ServiceAccount."""
    with k8s_control_plane.api_client() as api:
        api.set_default_header("Impersonate-User", ACCOUNT)
        yield api


def allowed(api: kubernetes.client.ApiClient, group: str, resource: str, verb: str) -> bool:
    sub, _, subresource = resource.partition("/")
    review = kubernetes.client.AuthorizationV1Api(api).create_subject_access_review(
        {
            "apiVersion": "authorization.k8s.io/v1",
            "kind": "SubjectAccessReview",
            "spec": {
                "user": ACCOUNT,
                "groups": ["system:serviceaccounts", f"system:serviceaccounts:{NAMESPACE}"],
                "resourceAttributes": {
                    "namespace": NAMESPACE,
                    "group": group,
                    "resource": sub,
                    "subresource": subresource,
                    "verb": verb,
                },
            },
        }
    )
    return bool(review.status.allowed)


def test_every_manifest_passes_a_server_side_dry_run(
    k8s_api: kubernetes.client.ApiClient, deployed: None
) -> None:
    names = sorted(p.name for p in DEPLOY.glob("*.yaml"))
    assert set(APPLIED) < set(names) and "50-gateway.yaml" in names
    checked = 0
    for name in names:
        for doc in documents(name):
            try:
                create_from_dict(k8s_api, doc, namespace=NAMESPACE, dry_run="All")
            except FailToCreateError as err:
                # applied above, or a PriorityClass another test created: the server knows it
                if any(e.status != 409 for e in err.api_exceptions):
                    raise AssertionError(f"{name}: {doc['kind']} refused: {err}") from None
            checked += 1
    assert checked >= 10


def test_the_gateways_account_has_exactly_the_documented_rights(
    k8s_api: kubernetes.client.ApiClient, deployed: None
) -> None:
    rights = documented_rights()
    # the table's rows, as the code needs them (pods, secrets, events, jobs, nodes)
    assert {(r, v) for _, r, v, _ in rights} >= {
        ("pods", "create"),
        ("secrets", "create"),
        ("secrets", "patch"),
        ("jobs", "delete"),
        ("nodes", "list"),
    }
    missing = [(g, r, v) for g, r, v, _ in rights if not allowed(k8s_api, g, r, v)]
    assert missing == [], f"documented but not granted by {DEPLOY.name}/10-rbac.yaml"
    extra = [right for right in NOT_GRANTED if allowed(k8s_api, *right)]
    assert extra == [], "granted but not documented"


def test_the_pod_launcher_needs_no_more_than_the_manifests_grant(
    as_gateway: kubernetes.client.ApiClient, k8s_agent: Any
) -> None:
    launcher = PodLauncher(api_client=as_gateway, namespace=NAMESPACE, timeout=20)
    spec = KernelPodSpec(
        kernel_id=str(uuid.uuid4()),
        generation=0,
        user="alice",
        gpus=16,  # no node has 16: the pod waits, and nothing needs to run
        env={"DLINFRA_TOKEN": "t-" + uuid.uuid4().hex},
        connection={
            "shell_port": 50001,
            "iopub_port": 50002,
            "stdin_port": 50003,
            "control_port": 50004,
            "hb_port": 50005,
            "key": uuid.uuid4().hex,
        },
    )
    name = launcher.create(spec)
    pod = wait_until(
        lambda: (
            (p := launcher.pods().get(name))
            and p.waiting_reason
            and "nodes" in p.waiting_reason
            and p
        ),
        timeout=30,
        what="the scheduler's reason",
    )
    assert "Insufficient nvidia.com/gpu" in pod.waiting_reason
    assert launcher.pod(name) is not None
    assert launcher.remove_secrets(keep=[name]) == []
    launcher.delete(name, grace_s=0)
    assert launcher.remove_secrets() == []
    # the inventory (nodes list, cluster-wide) with the same account
    telemetry = KubernetesTelemetry(api_client=as_gateway)
    try:
        assert {"gpu-node-a", "gpu-node-b"} <= set(telemetry.inventory())
        # and the GPUs of pods we did not start (pods list, cluster-wide)
        assert telemetry.outside_use() is not None
    finally:
        telemetry.close()
    # and what the account may not do, it may not: Kubernetes says so, in our error (listing
    # pods is granted cluster-wide, for the GPUs of others' pods; reading one is not)
    with pytest.raises(BackendError, match="forbidden"):
        PodLauncher(api_client=as_gateway, namespace="default").pod("any-pod")


def test_the_helm_chart_renders_to_objects_and_a_configuration_the_gateway_accepts(
    k8s_api: kubernetes.client.ApiClient, deployed: None, tmp_path: Path
) -> None:
    from helm_python.chart import Chart, lint

    chart_dir = ROOT / "deploy" / "helm" / "jupyter-dlinfra"
    assert lint(str(chart_dir))["errors"] == []
    rendered = Chart.load(str(chart_dir)).render(
        name="dlinfra", namespace=NAMESPACE, is_install=True
    )
    objects = [
        doc
        for path, text in sorted(rendered.items())
        if path.endswith(".yaml")
        for doc in yaml.safe_load_all(text)
        if doc
    ]
    kinds = {doc["kind"] for doc in objects}
    assert {"Deployment", "Role", "ConfigMap", "ServiceAccount", "Service"} <= kinds
    for doc in objects:
        try:
            create_from_dict(k8s_api, doc, namespace=NAMESPACE, dry_run="All")
        except FailToCreateError as err:
            if any(e.status != 409 for e in err.api_exceptions):
                raise AssertionError(f"{doc['kind']} {doc['metadata']['name']}: {err}") from None
    # the chart's Role grants what the manifests' Role grants
    (role,) = [d for d in objects if d["kind"] == "Role"]
    (plain,) = [d for d in documents("10-rbac.yaml") if d["kind"] == "Role"]
    assert role["rules"] == [
        {k: r[k] for k in ("apiGroups", "resources", "verbs")} for r in plain["rules"]
    ]

    # the gateway's configuration file, as the pod would read it, is one the extension takes
    (config_map,) = [d for d in objects if d["kind"] == "ConfigMap"]
    for name, text in config_map["data"].items():
        (tmp_path / name).write_text(text)
    from traitlets.config.loader import PyFileConfigLoader

    with pytest.MonkeyPatch.context() as env:
        env.setenv("DLINFRA_DB_URL", f"sqlite:///{tmp_path}/ledger.sqlite")
        config = PyFileConfigLoader(
            "jupyter_dlinfra_gateway_config.py", path=str(tmp_path)
        ).load_config()
    from jupyter_dlinfra.server.app import DLInfra

    app = DLInfra(config=config)
    assert app.kernel_backend == "kubernetes"
    assert app.keep_kernel_pods_on_stop is True
    assert app.kernel_pods["namespace"] == NAMESPACE
    # the pod launcher takes every option the chart gives it
    launcher = PodLauncher(**{**app.kernel_pods, "api_client": k8s_api})
    launcher.close()
