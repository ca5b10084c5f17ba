"""GPU readings of a whole cluster from NVIDIA's DCGM exporter, read through Prometheus' HTTP API.

dcgm-exporter runs on every GPU node (a DaemonSet) and Prometheus scrapes it. We read Prometheus,
never the exporters: one instant query (``POST /api/v1/query``) per sample, whatever the number of
nodes, selecting every metric we use with one ``__name__=~`` matcher:

- ``DCGM_FI_DEV_GPU_UTIL``: percent of time a kernel ran on the GPU (0-100);
- ``DCGM_FI_PROF_GR_ENGINE_ACTIVE``: share of time the graphics/compute engine was active (0-1).
  It is a profiling metric that not every exporter configuration watches; where a GPU has it, it
  is preferred, being the better idleness signal (``GPU_UTIL`` counts a tiny kernel as busy);
- ``DCGM_FI_DEV_FB_USED`` and ``DCGM_FI_DEV_FB_FREE``: frame-buffer memory in MiB.

The exporter labels every series with ``gpu`` (the index), ``UUID`` (``uuid`` with
``--use-old-namespace``), ``device`` (``nvidia0``), ``modelName``, ``pci_bus_id`` and ``Hostname``
(the ``NODE_NAME`` environment variable, which the Helm chart and the GPU operator set to the node's
name, else the exporter's host name); with pod mapping on Kubernetes also ``pod``, ``namespace``
and ``container`` (``pod_name``, ``pod_namespace``, ``container_name`` in the old namespace). When
Prometheus scrapes the exporter through a ServiceMonitor without ``honorLabels``, those three clash
with the target's own labels and arrive as ``exported_pod`` and so on: those win when present.
MIG instances (series with a ``GPU_I_ID`` label) are not whole GPUs and are left out.

An instant query honours Prometheus' staleness handling: a GPU whose exporter stopped answering, or
a pod label that ended, drops out at the next scrape, not after the lookback window.

``jupyter_dlinfra.testing.dcgm`` serves the same text for tests and demos. It adds one metric that
no DCGM exporter has, ``dlinfra_simulated_dcgm_exporter``; the client asks for it in the same query
and reports ``simulated=True`` when it sees it, so simulated numbers cannot pass for real ones.
"""

from __future__ import annotations

import json
import logging
import math
import re
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from jupyter_dlinfra.telemetry.cluster import ClusterTelemetryError, PodRef

__all__ = [
    "DCGM_FB_FREE",
    "DCGM_FB_USED",
    "DCGM_GPU_UTIL",
    "DCGM_GR_ENGINE_ACTIVE",
    "DEFAULT_NODE_LABELS",
    "SIMULATED_MARKER",
    "DcgmClient",
    "DcgmGpu",
    "DcgmSnapshot",
    "PrometheusError",
]

log = logging.getLogger(__name__)

DCGM_GPU_UTIL = "DCGM_FI_DEV_GPU_UTIL"
DCGM_GR_ENGINE_ACTIVE = "DCGM_FI_PROF_GR_ENGINE_ACTIVE"
DCGM_FB_USED = "DCGM_FI_DEV_FB_USED"
DCGM_FB_FREE = "DCGM_FI_DEV_FB_FREE"
#: served only by jupyter_dlinfra.testing.dcgm: the readings are simulated
SIMULATED_MARKER = "dlinfra_simulated_dcgm_exporter"
_METRICS = (DCGM_GPU_UTIL, DCGM_GR_ENGINE_ACTIVE, DCGM_FB_USED, DCGM_FB_FREE, SIMULATED_MARKER)

#: labels that may name a series' node, the first present wins: dcgm-exporter's own, its lower-case
#: spelling in some builds, then what Kubernetes service discovery relabelling usually adds
DEFAULT_NODE_LABELS = ("Hostname", "hostname", "node", "kubernetes_node")

_MIB = 2**20
_LABEL_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")
# (pod, namespace, container) label names, best first
_POD_LABELS = (
    ("exported_pod", "exported_namespace", "exported_container"),
    ("pod", "namespace", "container"),
    ("pod_name", "pod_namespace", "container_name"),
)


class PrometheusError(ClusterTelemetryError):
    """Prometheus could not be asked, or refused the query; ``status`` is the HTTP status if any."""

    def __init__(self, message: str, *, url: str, status: int | None = None) -> None:
        super().__init__(message)
        self.url = url
        self.status = status


@dataclass(frozen=True, kw_only=True)
class DcgmGpu:
    """What the exporters say about one GPU, gathered from its series."""

    #: the node name (see ``DEFAULT_NODE_LABELS``); "" when no series named one
    node: str
    #: the ``gpu`` label; None when absent
    index: int | None
    uuid: str | None
    model: str | None
    #: 0-100: ``GR_ENGINE_ACTIVE`` x 100 where present, else ``GPU_UTIL``; None when neither
    utilization_percent: float | None
    #: the metric ``utilization_percent`` came from
    utilization_metric: str | None
    memory_used_bytes: int | None
    memory_free_bytes: int | None
    #: the pods that use the GPU (several where the GPU is time-shared), sorted
    pods: tuple[PodRef, ...] = ()

    @property
    def memory_total_bytes(self) -> int | None:
        """Used + free frame buffer (a little less than the board's memory: DCGM's "reserved")."""
        if self.memory_used_bytes is None or self.memory_free_bytes is None:
            return None
        return self.memory_used_bytes + self.memory_free_bytes


@dataclass(frozen=True, kw_only=True)
class DcgmSnapshot:
    """One query's answer: the GPUs found, ordered by node then index."""

    gpus: tuple[DcgmGpu, ...]
    #: True when the series come from jupyter_dlinfra.testing.dcgm, not from GPUs
    simulated: bool = False
    #: series left out (MIG instances, values that are not numbers)
    skipped: int = 0

    def by_node(self) -> dict[str, list[DcgmGpu]]:
        nodes: dict[str, list[DcgmGpu]] = {}
        for gpu in self.gpus:
            nodes.setdefault(gpu.node, []).append(gpu)
        return nodes


@dataclass
class _Gathered:
    node: str
    index: int | None = None
    uuid: str | None = None
    model: str | None = None
    values: dict[str, float] = field(default_factory=dict)
    pods: set[PodRef] = field(default_factory=set)


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _matchers(label_filter: Mapping[str, str] | str | None) -> str:
    """The extra PromQL matchers of a label filter, each with a leading comma; "" for none."""
    if label_filter is None:
        return ""
    if isinstance(label_filter, str):
        text = label_filter.strip().strip(",")
        if "{" in text or "}" in text:
            raise ValueError(
                f"the Prometheus label filter takes matchers without braces, such as "
                f'cluster="a",zone=~"eu-.*"; got {label_filter!r}'
            )
        return f",{text}" if text else ""
    parts = []
    for name, value in sorted(label_filter.items()):
        if not _LABEL_NAME.match(name) or name == "__name__":
            raise ValueError(f"{name!r} is not a label name a Prometheus filter can use")
        parts.append(f',{name}="{_escape(str(value))}"')
    return "".join(parts)


class DcgmClient:
    """Reads the DCGM exporter metrics of many nodes from one Prometheus server.

    ``url`` is Prometheus' base URL (``http://prometheus:9090``, or with a path prefix such as
    ``http://gateway/prometheus``). ``label_filter`` narrows the series, for a Prometheus that
    scrapes several clusters: a mapping of exact label values (``{"cluster": "a"}``) or PromQL
    matchers without braces (``'cluster="a",zone=~"eu-.*"'``). ``timeout`` (seconds) bounds each
    query. ``headers`` are added to each request (``Authorization`` for a guarded Prometheus).

    Blocking; safe to call from one worker thread at a time. Proxies from the environment are not
    used: Prometheus is inside the cluster's network.
    """

    def __init__(
        self,
        url: str,
        *,
        label_filter: Mapping[str, str] | str | None = None,
        timeout: float = 5.0,
        node_labels: Sequence[str] = DEFAULT_NODE_LABELS,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        parsed = urllib.parse.urlsplit(url)
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise ValueError(
                f"the Prometheus URL must be http(s)://host[:port][/prefix], got {url!r}"
            )
        if timeout <= 0:
            raise ValueError(f"the Prometheus timeout must be positive seconds, got {timeout}")
        if isinstance(node_labels, str) or not node_labels:
            raise ValueError("node_labels must be a non-empty sequence of label names")
        self.url = url.rstrip("/")
        self.timeout = timeout
        self.node_labels = tuple(node_labels)
        self._headers = dict(headers or {})
        names = "|".join(_METRICS)
        self.query = f'{{__name__=~"{names}"{_matchers(label_filter)}}}'
        self._endpoint = self.url + "/api/v1/query"
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    def __repr__(self) -> str:
        return f"DcgmClient({self.url!r}, query={self.query!r})"

    def read(self) -> DcgmSnapshot:
        """Ask Prometheus once; raises ``PrometheusError`` with the URL and status on failure."""
        return self.parse(self._query(self.query))

    def _query(self, promql: str) -> list[dict[str, Any]]:
        body = urllib.parse.urlencode({"query": promql}).encode()
        request = urllib.request.Request(self._endpoint, data=body, method="POST")
        request.add_header("Content-Type", "application/x-www-form-urlencoded")
        request.add_header("Accept", "application/json")
        for name, value in self._headers.items():
            request.add_header(name, value)
        where = f"Prometheus at {self.url}"
        try:
            with self._opener.open(request, timeout=self.timeout) as response:
                raw = response.read()
                status = int(response.status)
        except urllib.error.HTTPError as err:
            detail = _error_detail(err.read())
            hint = ""
            if err.code in (401, 403):
                hint = "; Prometheus wants credentials: pass an Authorization header"
            elif detail is None:
                # not Prometheus' JSON error: something else answers at this URL
                hint = "; is this the base URL of a Prometheus server (it serves /api/v1/query)?"
            raise PrometheusError(
                f"{where} answered HTTP {err.code} to the DCGM query: {detail or err.reason}{hint}",
                url=self._endpoint,
                status=err.code,
            ) from None
        except TimeoutError as err:
            raise PrometheusError(
                f"{where} did not answer within {self.timeout:g} s ({err})", url=self._endpoint
            ) from None
        except (urllib.error.URLError, OSError) as err:
            reason = getattr(err, "reason", err)
            raise PrometheusError(
                f"cannot reach {where}: {reason}. Check the Prometheus URL and that the server "
                "runs and is reachable from the gateway",
                url=self._endpoint,
            ) from None
        try:
            doc = json.loads(raw)
        except ValueError:
            raise PrometheusError(
                f"{where} answered HTTP {status} with something that is not JSON; is this the "
                "base URL of a Prometheus server?",
                url=self._endpoint,
                status=status,
            ) from None
        if not isinstance(doc, dict) or doc.get("status") != "success":
            refusal = doc.get("error") if isinstance(doc, dict) else None
            raise PrometheusError(
                f"{where} refused the DCGM query: {refusal or doc!r}",
                url=self._endpoint,
                status=status,
            )
        data = doc.get("data") or {}
        if data.get("resultType") != "vector":
            raise PrometheusError(
                f"{where} answered a {data.get('resultType')!r} to an instant vector query",
                url=self._endpoint,
                status=status,
            )
        result = data.get("result") or []
        return [r for r in result if isinstance(r, dict)]

    def parse(self, series: Iterable[Mapping[str, Any]]) -> DcgmSnapshot:
        """Gather an instant vector's series (``{"metric": labels, "value": [t, "v"]}``) by GPU."""
        gathered: dict[tuple[str, str], _Gathered] = {}
        simulated = False
        skipped = 0
        for item in series:
            labels: Mapping[str, str] = item.get("metric") or {}
            name = labels.get("__name__", "")
            if name == SIMULATED_MARKER:
                simulated = True
                continue
            if name not in _METRICS or "GPU_I_ID" in labels:
                skipped += 1
                continue
            try:
                value = float(item["value"][1])
            except (KeyError, IndexError, TypeError, ValueError):
                skipped += 1
                continue
            if math.isnan(value) or math.isinf(value):
                skipped += 1
                continue
            node = next((labels[n] for n in self.node_labels if labels.get(n)), "")
            uuid = labels.get("UUID") or labels.get("uuid") or None
            index = _int(labels.get("gpu"))
            if uuid is None and index is None:
                skipped += 1
                continue
            key = (node, uuid if uuid is not None else f"#{index}")
            gpu = gathered.setdefault(key, _Gathered(node=node))
            gpu.uuid = gpu.uuid or uuid
            gpu.index = gpu.index if gpu.index is not None else index
            gpu.model = gpu.model or labels.get("modelName") or None
            # a GPU's series repeat per pod where it is time-shared: the device values are equal
            gpu.values.setdefault(name, value)
            pod = _pod(labels)
            if pod is not None:
                gpu.pods.add(pod)
        gpus = [_finish(g) for g in gathered.values()]
        gpus.sort(key=lambda g: (g.node, g.index if g.index is not None else -1, g.uuid or ""))
        return DcgmSnapshot(gpus=tuple(gpus), simulated=simulated, skipped=skipped)

    def close(self) -> None:
        """Nothing is held between queries; here for symmetry with the providers."""


def _int(text: str | None) -> int | None:
    try:
        return int(text) if text is not None else None
    except ValueError:
        return None


def _pod(labels: Mapping[str, str]) -> PodRef | None:
    for pod_label, namespace_label, container_label in _POD_LABELS:
        pod = labels.get(pod_label)
        if pod:
            return PodRef(
                namespace=labels.get(namespace_label) or "",
                pod=pod,
                container=labels.get(container_label) or None,
            )
    return None


def _finish(gpu: _Gathered) -> DcgmGpu:
    values = gpu.values
    utilization: float | None = None
    metric: str | None = None
    if DCGM_GR_ENGINE_ACTIVE in values:
        utilization, metric = values[DCGM_GR_ENGINE_ACTIVE] * 100.0, DCGM_GR_ENGINE_ACTIVE
    elif DCGM_GPU_UTIL in values:
        utilization, metric = values[DCGM_GPU_UTIL], DCGM_GPU_UTIL
    if utilization is not None:
        # 0.55 x 100 is 55.00000000000001: two decimals are more than DCGM measures
        utilization = round(min(100.0, max(0.0, utilization)), 2)

    def mib(name: str) -> int | None:
        return round(values[name] * _MIB) if name in values else None

    return DcgmGpu(
        node=gpu.node,
        index=gpu.index,
        uuid=gpu.uuid,
        model=gpu.model,
        utilization_percent=utilization,
        utilization_metric=metric,
        memory_used_bytes=mib(DCGM_FB_USED),
        memory_free_bytes=mib(DCGM_FB_FREE),
        pods=tuple(sorted(gpu.pods, key=lambda p: (p.namespace, p.pod, p.container or ""))),
    )


def _error_detail(raw: bytes) -> str | None:
    """Prometheus' own error sentence from an error body; None when the body is not Prometheus'."""
    try:
        doc = json.loads(raw or b"")
    except ValueError:
        return None
    if isinstance(doc, dict) and doc.get("error"):
        kind = doc.get("errorType")
        return f"{doc['error']} ({kind})" if kind else str(doc["error"])
    return None
