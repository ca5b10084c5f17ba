"""DCGM exporter metrics read back through a real Prometheus (see conftest.py for the setup)."""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterator

import pytest

from jupyter_dlinfra.telemetry.cluster import PodRef
from jupyter_dlinfra.telemetry.dcgm import (
    DCGM_GPU_UTIL,
    DCGM_GR_ENGINE_ACTIVE,
    DcgmClient,
    DcgmGpu,
    DcgmSnapshot,
    PrometheusError,
)
from jupyter_dlinfra.testing.dcgm import SimulatedDcgmExporter
from jupyter_dlinfra.testing.prometheus import PrometheusServer
from jupyter_dlinfra.testing.server import free_port, wait_until

MIB = 2**20
MAIN = {"cluster": "main"}


def read_until(
    client: DcgmClient, check: Callable[[DcgmSnapshot], bool], *, timeout: float = 20.0
) -> DcgmSnapshot:
    """Query until ``check`` holds: Prometheus sees an exporter change at its next scrape (1 s)."""
    last: list[DcgmSnapshot] = []

    def seen() -> DcgmSnapshot | None:
        snapshot = client.read()
        last[:] = [snapshot]
        return snapshot if check(snapshot) else None

    try:
        found: DcgmSnapshot = wait_until(seen, timeout=timeout, interval=0.2)
    except TimeoutError:
        pytest.fail(f"Prometheus never showed the change; last answer: {last}")
    return found


def gpu(snapshot: DcgmSnapshot, node: str, index: int) -> DcgmGpu:
    return next(g for g in snapshot.gpus if (g.node, g.index) == (node, index))


# -- through a real Prometheus ---------------------------------------------------------------------


def test_reads_every_gpu_of_the_cluster_in_one_query(prometheus: PrometheusServer) -> None:
    snapshot = DcgmClient(prometheus.url, label_filter=MAIN).read()
    assert [(g.node, g.index) for g in snapshot.gpus] == [
        ("gpu-node-a", 0),
        ("gpu-node-a", 1),
        ("gpu-node-a", 2),
        ("gpu-node-a", 3),
        ("gpu-node-b", 0),
        ("gpu-node-b", 1),
    ]
    assert gpu(snapshot, "gpu-node-a", 2).uuid == "GPU-gpu-node-a-2"
    assert {g.model for g in snapshot.gpus} == {"NVIDIA A100-SXM4-80GB", "NVIDIA H100 80GB HBM3"}
    # the simulator's marker metric is asked for in the same query
    assert snapshot.simulated
    assert all(g.utilization_percent == 0.0 for g in snapshot.gpus)


def test_utilisation_set_at_runtime_shows_up(
    prometheus: PrometheusServer, main_gpus: SimulatedDcgmExporter
) -> None:
    client = DcgmClient(prometheus.url, label_filter=MAIN)
    main_gpus.set(("gpu-node-b", 1), util=73)
    snapshot = read_until(client, lambda s: gpu(s, "gpu-node-b", 1).utilization_percent == 73.0)
    reading = gpu(snapshot, "gpu-node-b", 1)
    # node b's exporter serves no profiling metric: GPU_UTIL it is
    assert reading.utilization_metric == DCGM_GPU_UTIL
    assert gpu(snapshot, "gpu-node-b", 0).utilization_percent == 0.0


def test_gr_engine_active_is_preferred_where_served(
    prometheus: PrometheusServer, main_gpus: SimulatedDcgmExporter
) -> None:
    client = DcgmClient(prometheus.url, label_filter=MAIN)
    # a tiny kernel running all the time: GPU_UTIL says busy, the engine is mostly idle
    main_gpus.set(("gpu-node-a", 0), util=100, gr_engine_active=0.04)
    snapshot = read_until(client, lambda s: gpu(s, "gpu-node-a", 0).utilization_percent != 0.0)
    reading = gpu(snapshot, "gpu-node-a", 0)
    assert reading.utilization_metric == DCGM_GR_ENGINE_ACTIVE
    assert reading.utilization_percent == pytest.approx(4.0)


def test_memory_is_converted_from_mib(
    prometheus: PrometheusServer, main_gpus: SimulatedDcgmExporter
) -> None:
    client = DcgmClient(prometheus.url, label_filter=MAIN)
    main_gpus.set(("gpu-node-a", 3), fb_used_mib=30_000)
    snapshot = read_until(client, lambda s: gpu(s, "gpu-node-a", 3).memory_used_bytes != 0)
    reading = gpu(snapshot, "gpu-node-a", 3)
    assert reading.memory_used_bytes == 30_000 * MIB
    assert reading.memory_free_bytes == (81920 - 30_000) * MIB
    assert reading.memory_total_bytes == 81920 * MIB


def test_pod_labels_name_the_holder_and_go_when_the_pod_does(
    prometheus: PrometheusServer, main_gpus: SimulatedDcgmExporter
) -> None:
    client = DcgmClient(prometheus.url, label_filter=MAIN)
    main_gpus.set(
        ("gpu-node-a", 1), util=90, pod="train-7", namespace="team-vision", container="trainer"
    )
    snapshot = read_until(client, lambda s: bool(gpu(s, "gpu-node-a", 1).pods))
    assert gpu(snapshot, "gpu-node-a", 1).pods == (
        PodRef(namespace="team-vision", pod="train-7", container="trainer"),
    )
    assert not gpu(snapshot, "gpu-node-a", 0).pods
    main_gpus.set(("gpu-node-a", 1), pod=None)
    # the series with the pod labels is marked stale at the next scrape, not kept for 5 minutes
    snapshot = read_until(client, lambda s: not gpu(s, "gpu-node-a", 1).pods)
    assert len([g for g in snapshot.gpus if g.node == "gpu-node-a"]) == 4


def test_label_filter_keeps_other_clusters_out(prometheus: PrometheusServer) -> None:
    everything = DcgmClient(prometheus.url).read()
    assert {g.node for g in everything.gpus} == {
        "gpu-node-a",
        "gpu-node-b",
        "gpu-node-z",
        "GPU-Node-A.example.internal",
    }
    other = DcgmClient(prometheus.url, label_filter={"cluster": "other"}).read()
    assert [g.node for g in other.gpus] == ["gpu-node-z"]
    regex = DcgmClient(prometheus.url, label_filter='cluster=~"ma.*"').read()
    assert {g.node for g in regex.gpus} == {"gpu-node-a", "gpu-node-b"}
    assert DcgmClient(prometheus.url, label_filter={"cluster": "nope"}).read().gpus == ()


def test_an_exporter_that_stops_drops_out_and_comes_back(
    prometheus: PrometheusServer, other_exporter: SimulatedDcgmExporter
) -> None:
    client = DcgmClient(prometheus.url, label_filter={"cluster": "other"})
    assert client.read().gpus
    other_exporter.stop()
    try:
        # the failed scrape marks its series stale at once
        read_until(client, lambda s: not s.gpus)
    finally:
        other_exporter.start()
    read_until(client, lambda s: bool(s.gpus))


def test_a_bad_query_gets_prometheus_own_words_and_status(prometheus: PrometheusServer) -> None:
    client = DcgmClient(prometheus.url, label_filter='cluster=~"("')
    with pytest.raises(PrometheusError) as caught:
        client.read()
    assert caught.value.status == 400
    assert prometheus.url in str(caught.value)
    assert "HTTP 400" in str(caught.value)
    assert "bad_data" in str(caught.value)


def test_a_url_that_is_not_prometheus_says_so(dcgm_exporter: SimulatedDcgmExporter) -> None:
    client = DcgmClient(f"http://{dcgm_exporter.target}")
    with pytest.raises(PrometheusError) as caught:
        client.read()
    assert caught.value.status == 404
    assert "base URL of a Prometheus server" in str(caught.value)


# -- failures without Prometheus ----------------------------------------------------------------


def test_prometheus_down_is_a_clear_error() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(PrometheusError) as caught:
        DcgmClient(url, timeout=2).read()
    message = str(caught.value)
    assert message.startswith(f"cannot reach Prometheus at {url}")
    assert "Connection refused" in message
    assert caught.value.status is None
    assert caught.value.url == f"{url}/api/v1/query"


@pytest.fixture
def silent_server() -> Iterator[str]:
    """A TCP server that accepts connections and never answers."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(8)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        sock.settimeout(0.1)
        while not stop.is_set():
            try:
                held.append(sock.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    stop.set()
    thread.join()
    for conn in held:
        conn.close()
    sock.close()


def test_a_prometheus_that_hangs_times_out(silent_server: str) -> None:
    with pytest.raises(PrometheusError, match=r"did not answer within 0\.3 s"):
        DcgmClient(silent_server, timeout=0.3).read()


@pytest.mark.parametrize(
    ("label_filter", "problem"),
    [
        ({"bad-name": "x"}, "not a label name"),
        ({"__name__": "x"}, "not a label name"),
        ('{cluster="a"}', "without braces"),
    ],
)
def test_bad_label_filters_are_refused_up_front(label_filter: object, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        DcgmClient("http://prometheus:9090", label_filter=label_filter)  # type: ignore[arg-type]


def test_filter_values_are_escaped_and_the_query_is_one_selector() -> None:
    client = DcgmClient("http://prometheus:9090/", label_filter={"zone": 'a"b', "cluster": "c"})
    assert client.url == "http://prometheus:9090"
    assert client.query.startswith('{__name__=~"DCGM_FI_DEV_GPU_UTIL|')
    assert client.query.endswith(',cluster="c",zone="a\\"b"}')


@pytest.mark.parametrize("url", ["prometheus:9090", "ftp://x", ""])
def test_urls_must_be_http(url: str) -> None:
    with pytest.raises(ValueError, match="http"):
        DcgmClient(url)


# -- gathering series (the shapes real deployments produce) ------------------------------------


def series(name: str, value: str, **labels: str) -> dict[str, object]:
    return {"metric": {"__name__": name, **labels}, "value": [1.0, value]}


def test_exported_pod_labels_win_over_the_scrape_targets_own() -> None:
    # a ServiceMonitor without honorLabels: pod/namespace are the exporter's, exported_* the user's
    found = DcgmClient("http://p:9090").parse(
        [
            series(
                DCGM_GPU_UTIL,
                "12",
                gpu="0",
                UUID="GPU-1",
                Hostname="n1",
                pod="dcgm-exporter-x7",
                namespace="gpu-operator",
                exported_pod="nb-alice",
                exported_namespace="jupyter",
                exported_container="notebook",
            )
        ]
    )
    assert found.gpus[0].pods == (
        PodRef(namespace="jupyter", pod="nb-alice", container="notebook"),
    )


def test_old_namespace_labels_mig_instances_and_nan_values() -> None:
    found = DcgmClient("http://p:9090").parse(
        [
            # --use-old-namespace: uuid, pod_name, pod_namespace
            series(DCGM_GPU_UTIL, "55", gpu="1", uuid="GPU-2", Hostname="n1", pod_name="p"),
            series("DCGM_FI_DEV_FB_USED", "100", gpu="1", uuid="GPU-2", Hostname="n1"),
            # a MIG instance is not a whole GPU
            series(
                DCGM_GR_ENGINE_ACTIVE, "0.5", gpu="0", UUID="GPU-3", GPU_I_ID="1", Hostname="n1"
            ),
            series(DCGM_GPU_UTIL, "NaN", gpu="2", UUID="GPU-4", Hostname="n1"),
        ]
    )
    assert [(g.uuid, g.utilization_percent, g.memory_used_bytes) for g in found.gpus] == [
        ("GPU-2", 55.0, 100 * MIB)
    ]
    assert found.gpus[0].pods == (PodRef(namespace="", pod="p"),)
    assert found.skipped == 2
    assert not found.simulated


def test_the_node_comes_from_the_first_label_present() -> None:
    client = DcgmClient("http://p:9090", node_labels=("Hostname", "node"))
    found = client.parse(
        [
            series(DCGM_GPU_UTIL, "1", gpu="0", UUID="GPU-a", node="from-relabel"),
            series(DCGM_GPU_UTIL, "2", gpu="0", UUID="GPU-b", Hostname="n2", node="ignored"),
            series(DCGM_GPU_UTIL, "150", gpu="0", UUID="GPU-c"),
        ]
    )
    assert [(g.node, g.uuid, g.utilization_percent) for g in found.gpus] == [
        ("", "GPU-c", 100.0),  # no node label at all; clamped to 100 %
        ("from-relabel", "GPU-a", 1.0),
        ("n2", "GPU-b", 2.0),
    ]
