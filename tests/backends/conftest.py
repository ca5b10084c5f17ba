"""Fixtures for the job backends' tests: a real single-node SLURM (see tests/slurm_cluster.py)
and, from tests/conftest.py's plugins, a real Kubernetes control plane (tests/k8s_cluster.py)."""

from __future__ import annotations

from slurm_cluster import slurm_cluster

__all__ = ["slurm_cluster"]
