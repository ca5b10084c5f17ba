"""Fixtures for cluster telemetry: simulated DCGM exporters scraped by a real Prometheus, and a
real Kubernetes control plane with fake GPU nodes (``tests/k8s_cluster.py``).

One Prometheus for the session scrapes three simulated exporters every second:

- cluster ``main``: gpu-node-a (4 A100; its exporter serves the DCP profiling metric) and
  gpu-node-b (2 H100; its exporter does not). GPUs are named ``GPU-<node>-<index>``, as the node
  agent's fake device plugin names them for the pods it runs;
- cluster ``other``: gpu-node-z (1 GPU), which label filters must keep out;
- cluster ``fqdn``: 4 GPUs on ``GPU-Node-A.example.internal``, a host name where Kubernetes says
  ``gpu-node-a``.

Prometheus attaches the ``cluster`` label to their series, as a multi-cluster Prometheus would.
Fails, never skips, when Prometheus cannot be started.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from jupyter_dlinfra.testing.dcgm import SimulatedDcgmExporter
from jupyter_dlinfra.testing.prometheus import (
    PrometheusServer,
    PrometheusUnavailable,
    wait_for_query,
)

MAIN_NODES: dict[str, int | tuple[str, int]] = {
    "gpu-node-a": ("NVIDIA A100-SXM4-80GB", 4),
    "gpu-node-b": ("NVIDIA H100 80GB HBM3", 2),
}


def agent_uuid(node: str, index: int) -> str:
    """The UUID the node agent gives fake GPU ``index`` of ``node`` (DLINFRA_FAKE_GPU_UUIDS)."""
    return f"GPU-{node}-{index}"


def reset(exporter: SimulatedDcgmExporter) -> None:
    """Every GPU idle, empty and unused; node b's exporter without profiling metrics."""
    for gpu in exporter.gpus():
        exporter.set(
            gpu.uuid,
            util=0,
            fb_used_mib=0,
            gr_engine_active=None if gpu.node == "gpu-node-b" else 0.0,
            pod=None,
        )


@pytest.fixture(scope="session")
def dcgm_exporter() -> Iterator[SimulatedDcgmExporter]:
    exporter = SimulatedDcgmExporter(MAIN_NODES, profiling=True, uuid_for=agent_uuid)
    reset(exporter)
    with exporter:
        yield exporter


@pytest.fixture(scope="session")
def other_exporter() -> Iterator[SimulatedDcgmExporter]:
    with SimulatedDcgmExporter({"gpu-node-z": 1}) as exporter:
        yield exporter


@pytest.fixture(scope="session")
def fqdn_exporter() -> Iterator[SimulatedDcgmExporter]:
    with SimulatedDcgmExporter({"GPU-Node-A.example.internal": 4}) as exporter:
        yield exporter


@pytest.fixture(scope="session")
def prometheus(
    dcgm_exporter: SimulatedDcgmExporter,
    other_exporter: SimulatedDcgmExporter,
    fqdn_exporter: SimulatedDcgmExporter,
) -> Iterator[PrometheusServer]:
    targets = {
        dcgm_exporter.target: {"cluster": "main"},
        other_exporter.target: {"cluster": "other"},
        fqdn_exporter.target: {"cluster": "fqdn"},
    }
    try:
        server = PrometheusServer(targets).start()
    except PrometheusUnavailable as err:
        pytest.fail(f"Prometheus unavailable: {err}", pytrace=False)
    try:
        # the first scrape of both targets has landed
        wait_for_query(server, "count(count by (cluster) (DCGM_FI_DEV_GPU_UTIL)) == 3", timeout=60)
        yield server
    finally:
        server.stop()


@pytest.fixture
def main_gpus(dcgm_exporter: SimulatedDcgmExporter) -> Iterator[SimulatedDcgmExporter]:
    """The main cluster's exporter, put back to idle after the test."""
    yield dcgm_exporter
    reset(dcgm_exporter)
