"""Cluster telemetry of a Kubernetes cluster: GPU inventory from the nodes, utilisation from DCGM.

Inventory. ``CoreV1Api.list_node`` (narrowed by a label selector) gives every node whose
``status.allocatable["nvidia.com/gpu"]`` is above zero: the GPUs the device plugin reports healthy.
The model is the ``nvidia.com/gpu.product`` label of GPU feature discovery (without the ``-SHARED``
suffix it adds to time-shared GPUs), else "unknown"; the memory is its ``nvidia.com/gpu.memory``
label (MiB), else DCGM's used + free frame buffer, else 0 (unknown). Where time-slicing advertises
each GPU ``nvidia.com/gpu.replicas`` times, the count is divided back to physical GPUs.

Cordoned and NotReady nodes are left out of ``inventory()`` (and listed in ``excluded`` and in
``reason``): the scheduler places no new pod there, so the ledger must not grant their GPUs. The
ledger marks their GPUs absent, not deleted: a grant that holds one stays visible until released,
and the GPUs come back, with the same UUIDs, when the node does.

Joining DCGM. The exporter on a node labels its series ``Hostname`` (the node's name: the Helm chart
and the GPU operator set ``NODE_NAME``) and ``gpu`` (the index). A node's GPU ``i`` takes the
``UUID`` of the DCGM series with that node and index; nodes match exactly, else case-insensitively,
else by short host name (the part before the first dot) when that is unambiguous. A GPU that no
exporter reports gets a stable synthetic id, ``k8s-<node>-<index>``; ``sample()`` still joins
readings to it by node and index. What DCGM said of a GPU (UUID, memory, model) is kept for the
life of the object, so a Prometheus outage changes nothing in the ledger; after a restart with
Prometheus down the ledger sees synthetic ids until it is back (then the synthetic ones are marked
absent: a grant made on one stays visible until released). Note that the device plugin, not the
ledger, picks which physical GPU a pod gets: ``holders()`` (DCGM's pod labels) says which pod
really uses which GPU.

Utilisation. With a Prometheus URL, ``sample()`` runs one query (see ``dcgm.py``) and answers one
reading per inventory GPU that DCGM reports with both utilisation and memory. Without one, or when
Prometheus fails, it answers nothing: the API then shows no live metrics for those GPUs and the idle
reclaimer judges no kernel (it skips kernels without readings) rather than seeing a made-up 0 %.
Readings carry no processes (pids mean nothing across nodes); attribution goes by the ledger's
grants and ``holders()``.

All calls block; the gateway makes them from a worker thread.
"""

from __future__ import annotations

import importlib
import logging
import os
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from jupyter_dlinfra.kube.api import MANAGED_BY, MANAGER
from jupyter_dlinfra.telemetry.base import GpuDevice, GpuSample
from jupyter_dlinfra.telemetry.cluster import ClusterTelemetry, ClusterTelemetryError, PodRef
from jupyter_dlinfra.telemetry.dcgm import DcgmClient, DcgmGpu, DcgmSnapshot
from jupyter_dlinfra.telemetry.errors import TelemetryUnavailable

__all__ = [
    "GPU_MEMORY_LABEL",
    "GPU_PRODUCT_LABEL",
    "GPU_REPLICAS_LABEL",
    "GPU_RESOURCE",
    "GpuNode",
    "KubernetesTelemetry",
    "synthetic_uuid",
]

log = logging.getLogger(__name__)

GPU_RESOURCE = "nvidia.com/gpu"
GPU_PRODUCT_LABEL = "nvidia.com/gpu.product"
GPU_MEMORY_LABEL = "nvidia.com/gpu.memory"
GPU_REPLICAS_LABEL = "nvidia.com/gpu.replicas"
_SHARED_SUFFIX = "-SHARED"
_MIB = 2**20
_PAGE = 500


def synthetic_uuid(node: str, index: int) -> str:
    """The id of GPU ``index`` of ``node`` when no DCGM exporter tells its UUID."""
    return f"k8s-{node}-{index}"


@dataclass(frozen=True, kw_only=True)
class GpuNode:
    """A node with GPUs, as the Kubernetes API describes it."""

    name: str
    #: physical GPUs the device plugin reports allocatable
    gpus: int
    model: str
    #: per GPU, from the GPU feature discovery label; 0: unknown
    memory_bytes: int
    ready: bool
    schedulable: bool
    labels: Mapping[str, str] = field(default_factory=dict)

    @property
    def excluded_because(self) -> str | None:
        """Why the inventory leaves the node out, or None when it is in."""
        if not self.ready:
            return "NotReady"
        if not self.schedulable:
            return "cordoned"
        return None


def _int(text: object) -> int | None:
    try:
        return int(str(text).strip())
    except (TypeError, ValueError):
        return None


def _short(host: str) -> str:
    """``Node-A.example.org`` -> ``node-a``."""
    return host.lower().split(".")[0]


def _node_info(node: Any) -> GpuNode | None:
    """A GpuNode from a V1Node, or None when it has no allocatable GPU."""
    name = node.metadata.name
    labels: dict[str, str] = dict(node.metadata.labels or {})
    allocatable = (node.status.allocatable if node.status else None) or {}
    raw = allocatable.get(GPU_RESOURCE)
    count = _int(raw) if raw is not None else 0
    if count is None:
        log.warning("node %s: allocatable %s is %r, not a whole number", name, GPU_RESOURCE, raw)
        count = 0
    replicas = _int(labels.get(GPU_REPLICAS_LABEL)) or 1
    if replicas > 1:
        count //= replicas
    if count <= 0:
        return None
    model = labels.get(GPU_PRODUCT_LABEL, "").strip()
    if model.endswith(_SHARED_SUFFIX):
        model = model[: -len(_SHARED_SUFFIX)]
    memory_mib = _int(labels.get(GPU_MEMORY_LABEL)) or 0
    conditions = (node.status.conditions if node.status else None) or []
    ready = any(c.type == "Ready" and c.status == "True" for c in conditions)
    schedulable = not bool(node.spec.unschedulable if node.spec else False)
    return GpuNode(
        name=name,
        gpus=count,
        model=model or "unknown",
        memory_bytes=max(0, memory_mib) * _MIB,
        ready=ready,
        schedulable=schedulable,
        labels=labels,
    )


def _pod_gpus(pod: Any) -> int:
    """GPUs a pod asks for, as kube-scheduler counts them (its requests, else its limits)."""

    def asked(container: Any) -> int:
        resources = container.resources
        if resources is None:
            return 0
        raw = (resources.requests or {}).get(GPU_RESOURCE) or (resources.limits or {}).get(
            GPU_RESOURCE
        )
        return max(_int(raw) or 0, 0) if raw is not None else 0

    spec = pod.spec
    if spec is None:
        return 0
    running = sum(asked(c) for c in spec.containers or [])
    starting = max((asked(c) for c in spec.init_containers or []), default=0)
    return max(running, starting)


class _NodeIndex:
    """Finds a node's DCGM GPUs: exact name, then case-insensitive, then unique short name."""

    def __init__(self, snapshot: DcgmSnapshot) -> None:
        self._exact = snapshot.by_node()
        self._lower: dict[str, list[DcgmGpu]] = {}
        short: dict[str, list[str]] = {}
        for name, gpus in self._exact.items():
            self._lower.setdefault(name.lower(), []).extend(gpus)
            short.setdefault(_short(name), []).append(name)
        self._short = {s: self._exact[names[0]] for s, names in short.items() if len(names) == 1}

    def gpus(self, node: str) -> list[DcgmGpu]:
        found = self._exact.get(node) or self._lower.get(node.lower())
        if found is None:
            found = self._short.get(_short(node), [])
        return found


class KubernetesTelemetry(ClusterTelemetry):
    """GPU nodes from the Kubernetes API, utilisation from DCGM exporter metrics in Prometheus.

    ``api_client`` is a ``kubernetes.client.ApiClient``; without one, credentials load at the first
    call: in-cluster (service account) when running in a pod and no ``kubeconfig`` is given, else
    from ``kubeconfig`` (default ``$KUBECONFIG`` or ``~/.kube/config``) and ``context``. A client
    passed in is the caller's to close. The gateway needs ``list`` on ``nodes`` (a ClusterRole),
    and on ``pods`` cluster-wide for :meth:`outside_use`.

    ``node_selector`` is a Kubernetes label selector (``"pool=gpu,!preemptible"``); "" takes every
    node. ``prometheus_url`` ("" or None: no live utilisation) and ``prometheus_filter`` (see
    ``DcgmClient``) say where DCGM metrics are; ``dcgm`` passes a ready client instead. ``timeout``
    bounds each API call and query (seconds). ``clock`` stamps the readings (seconds since the
    epoch). ``simulated`` marks the readings as simulated; it also turns on by itself when the
    metrics come from ``jupyter_dlinfra.testing.dcgm``.
    """

    name = "kubernetes"

    def __init__(
        self,
        *,
        api_client: Any = None,
        kubeconfig: str | None = None,
        context: str | None = None,
        node_selector: str = "",
        prometheus_url: str | None = None,
        prometheus_filter: Mapping[str, str] | str | None = None,
        dcgm: DcgmClient | None = None,
        timeout: float = 10.0,
        clock: Callable[[], float] = time.time,
        simulated: bool = False,
    ) -> None:
        if timeout <= 0:
            raise ValueError(f"the Kubernetes timeout must be positive seconds, got {timeout}")
        try:
            # imported here, not at module level, so the package imports without the client
            self._k8s: Any = importlib.import_module("kubernetes.client")
        except ImportError as exc:
            raise TelemetryUnavailable(
                "Kubernetes telemetry needs the kubernetes package: pip install kubernetes"
            ) from exc
        self._api_client = api_client
        self._own_client = api_client is None
        self._kubeconfig = kubeconfig
        self._context = context
        self.node_selector = node_selector.strip()
        self.timeout = timeout
        self._clock = clock
        self._simulated = simulated
        if dcgm is None and prometheus_url:
            dcgm = DcgmClient(prometheus_url, label_filter=prometheus_filter, timeout=timeout)
        self.dcgm = dcgm
        #: node name -> why the last inventory left it out ("cordoned", "NotReady")
        self.excluded: dict[str, str] = {}
        self._nodes: list[GpuNode] | None = None
        self._inventory: dict[str, list[GpuDevice]] = {}
        self._by_uuid: dict[str, GpuDevice] = {}
        self._slots: dict[tuple[str, int], str] = {}
        self._aliases: dict[tuple[str, int], str] = {}
        # (node, index) -> what DCGM reported last (UUID, memory, model): kept through outages
        self._learned: dict[tuple[str, int], DcgmGpu] = {}
        self._holders: dict[str, PodRef] = {}
        self._dcgm_error: str | None = None
        self._seen_simulated = False
        self._closed = False
        #: why the pods could not be listed last time (said once)
        self._pods_error: str | None = None

    # -- the contract -----------------------------------------------------------------------------

    @property
    def simulated(self) -> bool:
        return self._simulated or self._seen_simulated

    @property
    def reason(self) -> str:
        selector = f" matching {self.node_selector!r}" if self.node_selector else ""
        if self._nodes is None:
            text = f"Kubernetes GPU nodes{selector} (not read yet)"
        else:
            gpus = sum(len(d) for d in self._inventory.values())
            nodes = len(self._inventory)
            text = (
                f"{gpus} GPU{'' if gpus == 1 else 's'} on {nodes} Kubernetes "
                f"node{'' if nodes == 1 else 's'}{selector}"
            )
            if self.excluded:
                left = ", ".join(f"{n} ({why})" for n, why in sorted(self.excluded.items()))
                text += f"; left out: {left}"
        if self.dcgm is None:
            text += "; no Prometheus URL is configured, so no live utilisation"
        else:
            text += f"; utilisation from DCGM exporter metrics in Prometheus at {self.dcgm.url}"
            if self._dcgm_error:
                text += f", failing now: {self._dcgm_error}"
        if self.simulated:
            text += " (simulated DCGM exporter: no GPU is read)"
        return text

    def nodes(self) -> list[GpuNode]:
        """Every node with allocatable GPUs that the selector matches, excluded ones too."""
        query = {"label_selector": self.node_selector} if self.node_selector else {}
        found = [
            info
            for item in self._listed("list nodes", self._core().list_node, **query)
            if (info := _node_info(item)) is not None
        ]
        found.sort(key=lambda n: n.name)
        return found

    def _listed(self, what: str, list_call: Callable[..., Any], **query: Any) -> Iterator[Any]:
        """Every item of a list call, page by page (``_PAGE`` a request)."""
        token: str | None = None
        while True:
            kwargs: dict[str, Any] = {"limit": _PAGE, "_request_timeout": self.timeout, **query}
            if token:
                kwargs["_continue"] = token
            page = self._call(what, list_call, **kwargs)
            yield from page.items or []
            token = getattr(page.metadata, "_continue", None) if page.metadata else None
            if not token:
                return

    def inventory(self) -> dict[str, list[GpuDevice]]:
        nodes = self.nodes()
        index = self._dcgm_index(when="the inventory")
        inventory: dict[str, list[GpuDevice]] = {}
        excluded: dict[str, str] = {}
        slots: dict[tuple[str, int], str] = {}
        for node in nodes:
            why = node.excluded_because
            if why is not None:
                excluded[node.name] = why
                continue
            reported = {
                g.index: g for g in (index.gpus(node.name) if index else []) if g.index is not None
            }
            devices = []
            for i in range(node.gpus):
                dcgm_gpu = reported.get(i)
                if dcgm_gpu is not None and dcgm_gpu.uuid:
                    self._learned[(node.name, i)] = dcgm_gpu
                # what DCGM said last, so that an outage changes nothing in the ledger
                known = self._learned.get((node.name, i))
                uuid = known.uuid if known and known.uuid else synthetic_uuid(node.name, i)
                memory = node.memory_bytes or (known.memory_total_bytes if known else None) or 0
                model = node.model
                if model == "unknown" and known is not None and known.model:
                    model = known.model
                devices.append(
                    GpuDevice(uuid=uuid, index=i, model=model, memory_total_bytes=memory)
                )
                slots[(node.name, i)] = uuid
            inventory[node.name] = devices
        if excluded != self.excluded:
            for name, why in sorted(excluded.items()):
                if self.excluded.get(name) != why:
                    log.info("GPU node %s left out of the inventory: %s", name, why)
        self._nodes = nodes
        self.excluded = excluded
        self._inventory = inventory
        self._slots = slots
        shorts: dict[str, set[str]] = {}
        for name in inventory:
            shorts.setdefault(_short(name), set()).add(name)
        self._aliases = {
            (_short(node), i): uuid
            for (node, i), uuid in slots.items()
            if len(shorts[_short(node)]) == 1
        }
        self._by_uuid = {d.uuid: d for devices in inventory.values() for d in devices}
        return {name: list(devices) for name, devices in inventory.items()}

    def outside_use(self) -> dict[str, tuple[int, tuple[str, ...]]] | None:
        """The GPUs that pods we did not create ask for, by node: one paged list of the
        cluster's bound, unfinished pods without our managed-by label (the gateway needs
        ``list`` on ``pods`` cluster-wide). A pod counts what kube-scheduler counts: the most of
        its containers' GPUs together and of any one init container's. None when the pods
        cannot be listed (the ledger then keeps what it was told last)."""
        found: dict[str, tuple[int, list[str]]] = {}
        pods = self._listed(
            "list pods",
            self._core().list_pod_for_all_namespaces,
            label_selector=f"{MANAGED_BY}!={MANAGER}",
            field_selector="status.phase!=Succeeded,status.phase!=Failed",
        )
        try:
            for pod in pods:
                node = pod.spec.node_name if pod.spec else None
                gpus = _pod_gpus(pod)
                if not node or gpus <= 0:
                    continue
                count, names = found.get(node, (0, []))
                names.append(f"{pod.metadata.namespace}/{pod.metadata.name}")
                found[node] = (count + gpus, names)
        except ClusterTelemetryError as err:
            if str(err) != self._pods_error:
                log.warning("GPUs used by other pods are not known: %s", err)
            self._pods_error = str(err)
            return None
        self._pods_error = None
        return {node: (count, tuple(sorted(names))) for node, (count, names) in found.items()}

    def sample(self) -> list[GpuSample]:
        if self.dcgm is None or self._closed:
            self._holders = {}
            return []
        if self._nodes is None:
            try:
                self.inventory()
            except ClusterTelemetryError as err:
                log.warning("no GPU readings: %s", err)
                return []
        try:
            snapshot = self._read_dcgm()
        except ClusterTelemetryError:
            self._holders = {}
            return []
        now = self._clock()
        readings: dict[str, GpuSample] = {}
        holders: dict[str, PodRef] = {}
        for gpu in snapshot.gpus:
            uuid = self._resolve(gpu)
            if uuid is None or uuid in readings:
                continue
            if gpu.pods:
                holders[uuid] = gpu.pods[0]
            if gpu.utilization_percent is None or gpu.memory_used_bytes is None:
                continue  # a half reading: left out, never filled with a made-up 0
            total = self._by_uuid[uuid].memory_total_bytes or gpu.memory_total_bytes or 0
            readings[uuid] = GpuSample(
                uuid=uuid,
                at=now,
                utilization_percent=gpu.utilization_percent,
                memory_used_bytes=gpu.memory_used_bytes,
                memory_total_bytes=max(total, gpu.memory_used_bytes),
            )
        self._holders = holders
        order = {d.uuid: n for n, d in enumerate(self._by_uuid.values())}
        return sorted(readings.values(), key=lambda s: order[s.uuid])

    def holders(self) -> dict[str, PodRef]:
        return dict(self._holders)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self.dcgm is not None:
            self.dcgm.close()
        if self._own_client and self._api_client is not None:
            try:
                self._api_client.close()
            except Exception:  # closing must never fail a shutdown
                log.exception("could not close the Kubernetes API client")

    # -- internals ------------------------------------------------------------------------------

    def _resolve(self, gpu: DcgmGpu) -> str | None:
        """The inventory UUID of a DCGM GPU: by UUID, else by (node, index); None when unknown."""
        if gpu.uuid and gpu.uuid in self._by_uuid:
            return gpu.uuid
        if gpu.index is None:
            return None
        uuid = self._slots.get((gpu.node, gpu.index))
        if uuid is None:
            # the node under another spelling (case, domain), as the inventory matched it
            uuid = self._aliases.get((_short(gpu.node), gpu.index))
        return uuid

    def _read_dcgm(self) -> DcgmSnapshot:
        assert self.dcgm is not None
        try:
            snapshot = self.dcgm.read()
        except ClusterTelemetryError as err:
            if str(err) != self._dcgm_error:
                log.warning("no GPU utilisation from DCGM: %s", err)
            else:
                log.debug("still no GPU utilisation from DCGM: %s", err)
            self._dcgm_error = str(err)
            raise
        if self._dcgm_error is not None:
            log.info("GPU utilisation from DCGM is back (%s)", self.dcgm.url)
            self._dcgm_error = None
        if snapshot.simulated and not self._seen_simulated:
            log.info("the DCGM metrics at %s come from a simulated exporter", self.dcgm.url)
            self._seen_simulated = True
        return snapshot

    def _dcgm_index(self, *, when: str) -> _NodeIndex | None:
        if self.dcgm is None:
            return None
        try:
            return _NodeIndex(self._read_dcgm())
        except ClusterTelemetryError:
            log.info("%s goes on without DCGM UUIDs (known ones are kept)", when)
            return None

    def _core(self) -> Any:
        if self._closed:
            raise ClusterTelemetryError("the Kubernetes telemetry is closed")
        if self._api_client is None:
            self._api_client = self._load_client()
        return self._k8s.CoreV1Api(self._api_client)

    def _load_client(self) -> Any:
        config: Any = importlib.import_module("kubernetes.config")
        try:
            if self._kubeconfig is None and os.environ.get("KUBERNETES_SERVICE_HOST"):
                configuration = self._k8s.Configuration()
                config.load_incluster_config(client_configuration=configuration)
                return self._k8s.ApiClient(configuration)
            return config.new_client_from_config(
                config_file=self._kubeconfig, context=self._context
            )
        except (config.ConfigException, OSError, TypeError, KeyError) as err:
            where = self._kubeconfig or os.environ.get("KUBECONFIG") or "~/.kube/config"
            raise ClusterTelemetryError(
                f"cannot load Kubernetes credentials ({err}): give a kubeconfig (checked {where}) "
                "or run the gateway in a pod with a service account"
            ) from None

    def _call(self, what: str, fn: Callable[..., Any], **kwargs: Any) -> Any:
        host = getattr(getattr(self._api_client, "configuration", None), "host", "?")
        api_exception = self._k8s.exceptions.ApiException
        try:
            return fn(**kwargs)
        except api_exception as err:
            hint = ""
            if err.status in (401, 403):
                verb, _, resource = what.partition(" ")
                hint = (
                    f"; the gateway's identity needs a ClusterRole that allows {verb} on {resource}"
                    if err.status == 403
                    else "; the credentials were refused (expired token?)"
                )
            raise ClusterTelemetryError(
                f"the Kubernetes API at {host} refused to {what}: HTTP {err.status} "
                f"{err.reason}{hint}"
            ) from None
        except Exception as err:  # urllib3's connection and timeout errors, among others
            if isinstance(err, ClusterTelemetryError):
                raise
            raise ClusterTelemetryError(
                f"cannot reach the Kubernetes API at {host} to {what}: {err}"
            ) from None
