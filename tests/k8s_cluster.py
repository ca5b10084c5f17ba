"""A real Kubernetes control plane with fake GPU nodes, for tests.

Import the fixtures into a ``conftest.py`` to use them (see ``tests/k8s/conftest.py``):

- ``k8s_control_plane`` (session): etcd, kube-apiserver, kube-scheduler and kube-controller-manager
  v1.20.2 on free loopback ports (:class:`jupyter_dlinfra.testing.k8s.ControlPlane`). It fails,
  never skips, when the binaries are missing: ``scripts/k8s/build.sh`` builds them once per machine.
  Its logs (and the node agent's) are copied to ``test-artifacts/k8s/`` at the end of the session;
  its directory is removed unless ``DLINFRA_KEEP_K8S=1``.
- ``k8s_api`` (session): a ``kubernetes.client.ApiClient`` for it, as the cluster admin.
- ``k8s_agent`` (session): the node agent playing the kubelet of ``gpu-node-a`` (4 x
  NVIDIA-A100-SXM4-80GB) and ``gpu-node-b`` (2 x NVIDIA-H100-80GB-HBM3); pods bound to them run as
  local processes. Ask for it in every test whose pods must run.
- ``k8s_namespace`` (function): a fresh namespace named after the test; at the end its pods are
  deleted (their processes killed) and then the namespace.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import secrets
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import kubernetes.client
import pytest
from kubernetes.client.exceptions import ApiException

from jupyter_dlinfra.testing.k8s import ControlPlane, FakeNode, K8sUnavailable, NodeAgent
from jupyter_dlinfra.testing.server import wait_until

__all__ = [
    "K8S_NODES",
    "k8s_agent",
    "k8s_api",
    "k8s_control_plane",
    "k8s_namespace",
]

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "test-artifacts" / "k8s"

#: the fake GPU nodes of the session's node agent
K8S_NODES = (
    FakeNode(name="gpu-node-a", gpus=4, model="NVIDIA-A100-SXM4-80GB"),
    FakeNode(name="gpu-node-b", gpus=2, model="NVIDIA-H100-80GB-HBM3"),
)


def _keep_logs(workdir: Path) -> None:
    with contextlib.suppress(OSError):
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        for path in [*workdir.glob("*.log"), *(workdir / "agent").glob("*.log")]:
            shutil.copy(path, ARTIFACTS / path.name)
        pods = workdir / "agent" / "pods"
        if pods.is_dir():
            shutil.copytree(pods, ARTIFACTS / "pods", dirs_exist_ok=True)


@pytest.fixture(scope="session")
def k8s_control_plane() -> Iterator[ControlPlane]:
    """A real control plane for the whole session; fails if it cannot be started."""
    workdir = Path(tempfile.mkdtemp(prefix="dlinfra-k8s-"))
    plane = ControlPlane(workdir)
    error = ""
    try:
        plane.start()
    except K8sUnavailable as err:
        error = f"Kubernetes control plane unavailable: {err}"
    except RuntimeError as err:
        error = f"Kubernetes control plane did not start: {err}"
    try:
        if not error:
            yield plane
    finally:
        plane.stop()
        _keep_logs(workdir)
        if os.environ.get("DLINFRA_KEEP_K8S", "").strip() != "1":
            shutil.rmtree(workdir, ignore_errors=True)
    if error:
        pytest.fail(error, pytrace=False)


@pytest.fixture(scope="session")
def k8s_api(k8s_control_plane: ControlPlane) -> Iterator[kubernetes.client.ApiClient]:
    """A client for the session's apiserver, as its admin."""
    with k8s_control_plane.api_client() as api:
        yield api


@pytest.fixture(scope="session")
def k8s_agent(k8s_control_plane: ControlPlane) -> Iterator[NodeAgent]:
    """The node agent of gpu-node-a (4 GPUs) and gpu-node-b (2 GPUs) for the whole session."""
    workdir = k8s_control_plane.workdir / "agent"
    workdir.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(workdir / "node-agent.log")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(threadName)s %(message)s"))
    logger = logging.getLogger("jupyter_dlinfra.testing.k8s")
    logger.addHandler(handler)
    if logger.level == logging.NOTSET or logger.level > logging.INFO:
        logger.setLevel(logging.INFO)
    try:
        with NodeAgent(k8s_control_plane.api_client(), K8S_NODES, workdir=workdir) as agent:
            yield agent
    finally:
        logger.removeHandler(handler)
        handler.close()


def _namespace_name(test_name: str) -> str:
    base = re.sub(r"[^a-z0-9-]+", "-", test_name.lower()).strip("-")[:50].strip("-") or "test"
    return f"{base}-{secrets.token_hex(3)}"


@pytest.fixture
def k8s_namespace(
    request: pytest.FixtureRequest, k8s_api: kubernetes.client.ApiClient
) -> Iterator[str]:
    """A fresh namespace for one test; its pods are deleted (and gone) before the test ends."""
    core = kubernetes.client.CoreV1Api(k8s_api)
    name = _namespace_name(request.node.name)
    core.create_namespace(
        kubernetes.client.V1Namespace(metadata=kubernetes.client.V1ObjectMeta(name=name))
    )
    yield name
    # jobs first (their controller would make new pods), then pods: the node agent kills their
    # processes and confirms the deletions, so a test's GPUs are free for the next test
    batch = kubernetes.client.BatchV1Api(k8s_api)
    with contextlib.suppress(ApiException):
        batch.delete_collection_namespaced_job(name, propagation_policy="Background")
    with contextlib.suppress(ApiException):
        core.delete_collection_namespaced_pod(name)

    def pods_gone() -> bool:
        return not core.list_namespaced_pod(name).items

    try:
        wait_until(pods_gone, timeout=30, interval=0.1, what=f"the pods of namespace {name} to go")
    except TimeoutError:
        # no node agent (or a stuck one): remove them without its confirmation
        with contextlib.suppress(ApiException):
            core.delete_collection_namespaced_pod(name, grace_period_seconds=0)
    with contextlib.suppress(ApiException):
        core.delete_namespace(name)
