"""Fixtures for the job backends' tests: from tests/conftest.py's plugins, a real single-node
SLURM (tests/slurm_cluster.py) and a real Kubernetes control plane (tests/k8s_cluster.py), with
a backend on each that the contract suite and the backend's own tests share."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from typing import Any

import kubernetes.client
import pytest
from slurm_cluster import SlurmCluster

from jupyter_dlinfra.backends.kubernetes import KubernetesBackend
from jupyter_dlinfra.backends.slurm import SlurmBackend

__all__ = ["make_k8s_backend", "slurm_backend"]


@pytest.fixture
def slurm_backend(slurm_cluster: SlurmCluster) -> Iterator[SlurmBackend]:
    """A backend on the session's SLURM; the test's jobs are cancelled at its end."""
    yield SlurmBackend(env=slurm_cluster.env, timeout=20)
    # no job of one test may hold GPUs in the next
    slurm_cluster.cancel_all()


@pytest.fixture
def make_k8s_backend(
    k8s_api: kubernetes.client.ApiClient, k8s_namespace: str, k8s_agent: Any
) -> Iterator[Callable[..., KubernetesBackend]]:
    """Makes backends on the session's control plane, in the test's namespace (their pods run
    on the node agent, with this interpreter as the image's Python); closed at the end."""
    made: list[KubernetesBackend] = []

    def make(**kwargs: Any) -> KubernetesBackend:
        options: dict[str, Any] = {
            "api_client": k8s_api,
            "namespace": k8s_namespace,
            "python": sys.executable,
            "timeout": 20,
        }
        options.update(kwargs)
        backend = KubernetesBackend(**options)
        made.append(backend)
        return backend

    yield make
    for backend in made:
        backend.close()
