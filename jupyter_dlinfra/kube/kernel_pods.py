"""Kernels as Kubernetes pods: create, list, watch and delete one pod per kernel (blocking).

:class:`PodLauncher` is the Kubernetes side of a kernel provisioner that runs each kernel in its
own pod, placed (GPUs included) by the cluster's scheduler. It is blocking: its caller runs it in a
worker thread, never on the event loop. It shares the jobs backend's client and conventions:
:class:`~jupyter_dlinfra.kube.api.KubeApi` (the same credentials: ``api_client``, else
``kubeconfig``/``context``, else the in-cluster service account, else the default kubeconfig;
plain-JSON requests through the official ``ApiClient``; every API error a
:class:`~jupyter_dlinfra.core.errors.BackendError` with the HTTP status and Kubernetes' own
message) and :class:`~jupyter_dlinfra.kube.pod_template.PodTemplate` (the same labels,
placement options and GPU-model matching).

The pod
-------

``create(spec)`` makes one pod per kernel *generation* (a restart of the kernel is a new
generation, so a new pod may start while the old one terminates), named
``dlinfra-kernel-<first 8 of the kernel id>-<generation>``, in ``namespace``:

- labels ``app.kubernetes.io/managed-by=jupyter-dlinfra``, ``app.kubernetes.io/component=kernel``,
  ``dlinfra.jupyter.org/kernel-id``, ``dlinfra.jupyter.org/generation``,
  ``dlinfra.jupyter.org/user`` (made a valid label value; the exact user and kernel id are in
  annotations of the same keys), the Kueue queue label when ``kueue_queue`` is set, and
  ``labels``;
- ``restartPolicy: Never`` (a dead kernel is reported, not silently restarted with an empty
  namespace), ``enableServiceLinks: false``, and no service-account token unless
  ``service_account`` is named (a kernel runs its user's code);
- one container, ``kernel``, from ``image``, running ``[python, -m, jupyter_dlinfra.kernel_pod]``,
  which writes the connection file from ``DLINFRA_CONNECTION`` (the ports and key, JSON) and runs
  ``ipykernel`` listening on all the pod's interfaces (see :mod:`jupyter_dlinfra.kernel_pod`);
  ``spec.env`` plus ``DLINFRA_CONNECTION`` (both from the kernel's Secret where ``SECRET_ENV``
  says so, see below) and ``POD_NAME``, ``POD_NAMESPACE``, ``NODE_NAME``
  (downward API); the five ports as named ``containerPort``\\ s; ``limits: {nvidia.com/gpu: N}``
  only when the kernel wants GPUs (the device plugin then exposes exactly those GPUs);
- a GPU model becomes node affinity on ``gpu_product_label`` exactly as for jobs: the products the
  cluster's nodes carry (plus ``gpu_products``) that contain the model, case-insensitively, an
  exact match alone winning; a model no product matches is refused with the known products;
- ``priorityClassName`` from ``priority_classes`` (our class -> a Kubernetes PriorityClass; an
  unmapped class gets the cluster's default), ``serviceAccountName``, ``nodeSelector`` and
  ``tolerations`` from the options of the same names.

The kernel's secrets, its connection (with the key that signs every message) and its ledger token
``DLINFRA_TOKEN``, are not in the pod's spec: they are in a Secret of the pod's name, created just
before the pod, which the container's ``env`` names (``secretKeyRef``). The Secret is then made
the pod's dependent (``ownerReferences``), so Kubernetes' garbage collector deletes it with the
pod, whoever deletes the pod; ``delete`` deletes both at once. Reading pods in the namespace thus
no longer gives a kernel away: reading Secrets there still does.

What the launcher reports
-------------------------

``pods()`` makes one list call (our kernel pods, by label) and answers a :class:`KernelPod` per
pod: phase, node, pod IP, whether it is ready (running with an IP and not being deleted), why a
pending pod waits in Kubernetes' own words (the scheduler's ``PodScheduled`` message such as
``0/2 nodes are available: 2 Insufficient nvidia.com/gpu.``, or ``waiting to be scheduled`` before
the scheduler wrote one, or the container's waiting reason such as ``ImagePullBackOff: ...``), and
how an ended pod ended (exit code and reason). ``pod(name)`` is the same for one pod (one get).
``wait_ready`` polls one pod until it runs, ends, or ``startup_timeout_s`` passes.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from jupyter_dlinfra.core.errors import BackendError
from jupyter_dlinfra.kernel_pod import ENV_VAR as CONNECTION_ENV
from jupyter_dlinfra.kernel_pod import PORT_NAMES, connection_file_content
from jupyter_dlinfra.kube.api import (
    GPU_PRODUCT_LABEL,
    GPU_RESOURCE,
    KUEUE_QUEUE_LABEL,
    MANAGED_BY,
    MANAGER,
    PREFIX,
    PRIORITY_CLASS_ANNOTATION,
    USER_LABEL,
    ApiError,
    KubeApi,
    dns_name,
    exit_code,
    exit_text,
    meta,
    pending_reason,
    terminated,
)
from jupyter_dlinfra.kube.pod_template import PodTemplate

if TYPE_CHECKING:
    from kubernetes.client import ApiClient

__all__ = [
    "COMPONENT",
    "COMPONENT_LABEL",
    "CONTAINER",
    "GENERATION_LABEL",
    "KERNEL_ID_LABEL",
    "SECRET_ENV",
    "KernelPod",
    "KernelPodSpec",
    "PodLauncher",
    "kernel_pod_name",
]

COMPONENT_LABEL = "app.kubernetes.io/component"
COMPONENT = "kernel"
KERNEL_ID_LABEL = PREFIX + "kernel-id"
GENERATION_LABEL = PREFIX + "generation"
#: the container's name in a kernel's pod
CONTAINER = "kernel"
#: what the container's ports are called (IANA service names: 15 characters at most)
_PORT_LABELS = {
    "shell_port": "shell",
    "iopub_port": "iopub",
    "stdin_port": "stdin",
    "control_port": "control",
    "hb_port": "hb",
}
#: the variables that go into the kernel's Secret, not into its pod's spec
SECRET_ENV = frozenset({CONNECTION_ENV, "DLINFRA_TOKEN"})
#: environment variables the launcher sets itself
_RESERVED_ENV = frozenset({CONNECTION_ENV, "POD_NAME", "POD_NAMESPACE", "NODE_NAME"})
_RESERVED_LABELS = frozenset(
    {MANAGED_BY, COMPONENT_LABEL, KERNEL_ID_LABEL, GENERATION_LABEL, USER_LABEL, KUEUE_QUEUE_LABEL}
)


@dataclass(frozen=True, kw_only=True)
class KernelPodSpec:
    """One kernel generation to start in a pod."""

    kernel_id: str
    #: 0 for the first start, +1 at each restart: part of the pod's name
    generation: int
    user: str
    gpus: int
    #: GPU model wanted (a substring of the node label's product, e.g. "A100"); None: any
    model: str | None = None
    #: our scheduling class ("interactive"), mapped through ``priority_classes``; None: default
    priority_class: str | None = None
    #: the kernel's environment (identity, token...); the launcher adds its own variables
    env: Mapping[str, str] = field(default_factory=dict)
    #: ``shell_port``, ``iopub_port``, ``stdin_port``, ``control_port``, ``hb_port``, ``key``
    #: (str or bytes), optionally ``transport`` ("tcp"), ``signature_scheme``, ``kernel_name``
    connection: Mapping[str, Any] = field(default_factory=dict)
    #: the kernel's working directory in the pod; None: the image's
    cwd: str | None = None
    #: the node the ledger admitted its GPUs on: the pod is required to run there
    node: str | None = None


@dataclass(frozen=True, kw_only=True)
class KernelPod:
    """What Kubernetes says about one kernel pod."""

    name: str
    kernel_id: str
    generation: int
    #: Pending, Running, Succeeded, Failed or Unknown
    phase: str
    node: str | None
    pod_ip: str | None
    #: running with an IP and not being deleted: the kernel's process runs (it may need a
    #: moment more to listen on its ports: wait for its ``kernel_info`` reply)
    ready: bool
    #: why a pending pod waits, in Kubernetes' own words; None otherwise
    waiting_reason: str | None
    #: the kernel process's exit code once the pod ended (128 + N for signal N)
    exit_code: int | None
    gpus: int
    #: how an ended pod ended ("exit code 1 (Error)"), or why it could not start; None otherwise
    end_reason: str | None = None
    #: Kubernetes is deleting the pod (its process may still run for its grace period)
    deleting: bool = False


def kernel_pod_name(kernel_id: str, generation: int) -> str:
    """``dlinfra-kernel-<first 8 of the kernel id>-<generation>``, DNS-1123 safe."""
    if generation < 0:
        raise BackendError(f"a kernel generation is 0 or more, not {generation}")
    short = dns_name(kernel_id[:8])
    if not short:
        short = hashlib.sha256(kernel_id.encode()).hexdigest()[:8]
    return f"dlinfra-kernel-{short}-{generation}"


class PodLauncher:
    """Starts, lists and deletes kernel pods; see the module's documentation."""

    def __init__(
        self,
        *,
        # the namespace of the kernel pods
        namespace: str = "default",
        # the container image: Python with jupyter-dlinfra and ipykernel (and the users' libraries)
        image: str = "jupyter-dlinfra:latest",
        # the image's Python
        python: str = "python",
        # the pods' ServiceAccount (its token is mounted); None: none mounted
        service_account: str | None = None,
        # node labels every kernel's pod requires (with the GPU model's affinity)
        node_selector: Mapping[str, str] | None = None,
        # pod tolerations in Kubernetes JSON form ({"key": ..., "operator": ..., "effect": ...})
        tolerations: Sequence[Mapping[str, Any]] = (),
        # our priority class -> Kubernetes PriorityClass; unmapped: the cluster's default
        priority_classes: Mapping[str, str] | None = None,
        # a Kueue LocalQueue (label kueue.x-k8s.io/queue-name on the pod); None: no Kueue
        kueue_queue: str | None = None,
        # extra labels on every kernel pod
        labels: Mapping[str, str] | None = None,
        # extra pod volumes and container mounts (e.g. the users' homes), Kubernetes JSON form
        extra_volumes: Sequence[Mapping[str, Any]] = (),
        extra_volume_mounts: Sequence[Mapping[str, Any]] = (),
        # the container's image pull policy; None: Kubernetes' default
        image_pull_policy: str | None = None,
        # the container's resources besides GPUs, e.g. {"requests": {"cpu": "2"}}
        resources: Mapping[str, Mapping[str, Any]] | None = None,
        # node label holding the GPU product, and known products of nodes that may not exist now
        gpu_product_label: str = GPU_PRODUCT_LABEL,
        gpu_products: Sequence[str] = (),
        # the extended resource that counts GPUs
        gpu_resource: str = GPU_RESOURCE,
        # a ready client (tests, embedding); else from kubeconfig/context or in-cluster config
        api_client: ApiClient | None = None,
        kubeconfig: str | None = None,
        context: str | None = None,
        # seconds wait_ready() waits for a pod to run (scheduling, image pull, start)
        startup_timeout_s: float = 300.0,
        # seconds one API request may take
        timeout: float = 30.0,
    ) -> None:
        # a missing client package is a configuration error now, not at the first kernel
        self.kube = KubeApi(api_client, kubeconfig=kubeconfig, context=context, timeout=timeout)
        self.template = PodTemplate(
            owner="the pod launcher",
            image=image,
            python=python,
            service_account=service_account,
            node_selector=node_selector,
            tolerations=tolerations,
            priority_classes=priority_classes,
            kueue_queue=kueue_queue,
            labels=labels,
            extra_volumes=extra_volumes,
            extra_volume_mounts=extra_volume_mounts,
            image_pull_policy=image_pull_policy,
            resources=resources,
            gpu_product_label=gpu_product_label,
            gpu_products=gpu_products,
            gpu_resource=gpu_resource,
            reserved_labels=_RESERVED_LABELS,
            reserved_env=_RESERVED_ENV,
        )
        self.namespace = namespace
        self.startup_timeout_s = float(startup_timeout_s)

    # --- the client ----------------------------------------------------------------------

    def api(self) -> KubeApi:
        """The cluster's API (its requests raise BackendError if no configuration is usable)."""
        return self.kube

    def close(self) -> None:
        """Close the client this launcher built (one given as ``api_client`` is the caller's)."""
        self.kube.close()

    def _pods_path(self, name: str | None = None) -> str:
        return self._path("pods", name)

    def _path(self, kind: str, name: str | None = None) -> str:
        path = f"/api/v1/namespaces/{quote(self.namespace, safe='')}/{kind}"
        return f"{path}/{quote(name, safe='')}" if name else path

    # --- create ----------------------------------------------------------------------------

    def _connection(self, spec: KernelPodSpec) -> dict[str, Any]:
        """The connection file's content for ``spec``, without an ip (the pod listens on all)."""
        if spec.gpus < 0:
            raise BackendError(f"a kernel wants 0 GPUs or more, not {spec.gpus}")
        if not spec.kernel_id:
            raise BackendError("a kernel pod needs the kernel's id")
        connection = dict(spec.connection)
        if isinstance(connection.get("key"), bytes):
            connection["key"] = connection["key"].decode("ascii")
        try:
            info = connection_file_content(json.dumps(connection))
        except ValueError as err:
            raise BackendError(f"cannot start kernel {spec.kernel_id}: {err}") from None
        info.pop("ip", None)
        return info

    def secret_manifest(self, spec: KernelPodSpec) -> dict[str, Any]:
        """The Secret of ``spec``'s pod: its connection and the secret part of ``spec.env``."""
        name = kernel_pod_name(spec.kernel_id, spec.generation)
        values = {CONNECTION_ENV: json.dumps(self._connection(spec), sort_keys=True)}
        self.template.env(spec.env)  # the same refusals as for the pod
        values.update({k: str(v) for k, v in spec.env.items() if k in SECRET_ENV})
        return {
            "apiVersion": "v1",
            "kind": "Secret",
            "type": "Opaque",
            "metadata": {
                "name": name,
                "namespace": self.namespace,
                "labels": self._labels(spec),
                "annotations": {KERNEL_ID_LABEL: spec.kernel_id},
            },
            "data": {k: base64.b64encode(v.encode()).decode("ascii") for k, v in values.items()},
        }

    def _labels(self, spec: KernelPodSpec) -> dict[str, str]:
        """The labels of a kernel generation's pod and Secret."""
        labels: dict[str, str] = self.template.object_labels(
            spec.user,
            {COMPONENT_LABEL: COMPONENT, GENERATION_LABEL: str(spec.generation)},
            {KERNEL_ID_LABEL: spec.kernel_id},
        )
        return labels

    def pod_manifest(self, spec: KernelPodSpec) -> dict[str, Any]:
        """The pod for ``spec`` (no API call, except to match a GPU model); its secrets are named,
        from the Secret of :meth:`secret_manifest`."""
        info = self._connection(spec)
        name = kernel_pod_name(spec.kernel_id, spec.generation)
        env = [
            {"name": e["name"], "valueFrom": {"secretKeyRef": {"name": name, "key": e["name"]}}}
            if e["name"] in SECRET_ENV
            else e
            for e in self.template.env(spec.env)
        ]
        env.append(
            {
                "name": CONNECTION_ENV,
                "valueFrom": {"secretKeyRef": {"name": name, "key": CONNECTION_ENV}},
            }
        )
        for var, path in (
            ("POD_NAME", "metadata.name"),
            ("POD_NAMESPACE", "metadata.namespace"),
            ("NODE_NAME", "spec.nodeName"),
        ):
            env.append({"name": var, "valueFrom": {"fieldRef": {"fieldPath": path}}})
        labels = self._labels(spec)
        if self.template.kueue_queue:
            labels[KUEUE_QUEUE_LABEL] = self.template.kueue_queue
        annotations = {USER_LABEL: spec.user, KERNEL_ID_LABEL: spec.kernel_id}
        if spec.priority_class is not None:
            annotations[PRIORITY_CLASS_ANNOTATION] = spec.priority_class
        command = [self.template.python, "-m", "jupyter_dlinfra.kernel_pod"]
        container = self.template.container(CONTAINER, command, env, gpus=spec.gpus)
        container["ports"] = [
            {"name": _PORT_LABELS[port], "containerPort": info[port], "protocol": "TCP"}
            for port in PORT_NAMES
        ]
        if spec.cwd:
            container["workingDir"] = spec.cwd
        pod = self.template.pod_spec(
            self.kube,
            container,
            gpus=spec.gpus,
            model=spec.model,
            priority_class=spec.priority_class,
            node=spec.node,
        )
        # a kernel runs its user's code: no service-account token unless one is named
        pod["automountServiceAccountToken"] = self.template.service_account is not None
        return {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": name,
                "namespace": self.namespace,
                "labels": labels,
                "annotations": annotations,
            },
            "spec": pod,
        }

    def create(self, spec: KernelPodSpec) -> str:
        """Create the Secret and the pod of one kernel generation; the pod's name. BackendError if
        Kubernetes refuses (a pod of that name exists, an unknown PriorityClass, no right to
        create pods or Secrets...); then neither is left behind."""
        manifest = self.pod_manifest(spec)
        secret = self.secret_manifest(spec)
        name = str(manifest["metadata"]["name"])
        where = f"in namespace {self.namespace}"

        def create_secret() -> None:
            self.api().request(
                "POST", self._path("secrets"), what=f"create the Secret {name} {where}", body=secret
            )

        try:
            create_secret()
        except ApiError as err:
            if err.status != 409:
                raise
            if self.pod(name) is not None:
                raise BackendError(f"the kernel pod {name} exists already {where}") from None
            # left by a gateway that stopped between the Secret and its pod
            self._delete_secret(name)
            create_secret()
        try:
            created = self.api().request(
                "POST",
                self._pods_path(),
                what=f"create the kernel pod {name} {where}",
                body=manifest,
            )
            # the Secret goes with its pod, whoever deletes the pod
            self.api().request(
                "PATCH",
                self._path("secrets", name),
                what=f"make the Secret {name} its pod's dependent {where}",
                body={"metadata": {"ownerReferences": [_owner(created or {})]}},
                content_type="application/merge-patch+json",
            )
        except BackendError:
            with contextlib.suppress(BackendError):
                self._delete_secret(name)
            raise
        return name

    def _delete_secret(self, name: str) -> None:
        try:
            self.api().request(
                "DELETE",
                self._path("secrets", name),
                what=f"delete the Secret {name} in namespace {self.namespace}",
            )
        except ApiError as err:
            if err.status != 404:
                raise

    def remove_secrets(self, keep: Sequence[str] = ()) -> list[str]:
        """Delete the kernel Secrets of this namespace but those named in ``keep``; their names.
        For a gateway's start, when no kernel of a previous one can be reached."""
        items = self.api().items(
            self._path("secrets"),
            what=f"list the kernel Secrets in namespace {self.namespace}",
            query=[("labelSelector", f"{MANAGED_BY}={MANAGER},{COMPONENT_LABEL}={COMPONENT}")],
        )
        removed = sorted(str(meta(i).get("name")) for i in items if meta(i).get("name") not in keep)
        for name in removed:
            self._delete_secret(name)
        return removed

    # --- read ------------------------------------------------------------------------------

    def pods(self) -> dict[str, KernelPod]:
        """Every kernel pod of this launcher's namespace, by name (one list call)."""
        items = self.api().items(
            self._pods_path(),
            what=f"list the kernel pods in namespace {self.namespace}",
            query=[("labelSelector", f"{MANAGED_BY}={MANAGER},{COMPONENT_LABEL}={COMPONENT}")],
        )
        found: dict[str, KernelPod] = {}
        for item in items:
            pod = self._kernel_pod(item)
            found[pod.name] = pod
        return found

    def pod(self, name: str) -> KernelPod | None:
        """One kernel pod (one get); None if there is none of that name (or it is no kernel's)."""
        try:
            item = self.api().request(
                "GET",
                self._pods_path(name),
                what=f"read the kernel pod {name} in namespace {self.namespace}",
            )
        except ApiError as err:
            if err.status == 404:
                return None
            raise
        labels = meta(item or {}).get("labels") or {}
        if labels.get(MANAGED_BY) != MANAGER or labels.get(COMPONENT_LABEL) != COMPONENT:
            return None
        return self._kernel_pod(item)

    def _kernel_pod(self, item: Mapping[str, Any]) -> KernelPod:
        metadata = meta(item)
        labels = metadata.get("labels") or {}
        annotations = metadata.get("annotations") or {}
        spec = item.get("spec") or {}
        status = item.get("status") or {}
        phase = str(status.get("phase") or "Pending")
        try:
            generation = int(labels.get(GENERATION_LABEL, 0))
        except ValueError:
            generation = 0
        gpus = 0
        for container in spec.get("containers") or []:
            limit = ((container.get("resources") or {}).get("limits") or {}).get(
                self.template.gpu_resource
            )
            with contextlib.suppress(TypeError, ValueError):
                gpus += int(limit or 0)
        pod_ip = status.get("podIP") or None
        deleting = bool(metadata.get("deletionTimestamp"))
        waiting: str | None = None
        if phase == "Pending":
            gates = spec.get("schedulingGates") or []
            queue = labels.get(KUEUE_QUEUE_LABEL)
            if gates and queue:
                waiting = f"waiting for Kueue to admit it (queue {queue})"
            else:
                waiting = pending_reason(item, CONTAINER)
        ended = terminated(item, CONTAINER) if phase in ("Succeeded", "Failed") else None
        end_reason = _ended(status, ended) if phase in ("Succeeded", "Failed") else None
        return KernelPod(
            name=str(metadata.get("name")),
            kernel_id=str(annotations.get(KERNEL_ID_LABEL) or labels.get(KERNEL_ID_LABEL) or ""),
            generation=generation,
            phase=phase,
            node=spec.get("nodeName") or None,
            pod_ip=pod_ip,
            ready=phase == "Running" and bool(pod_ip) and not deleting,
            waiting_reason=waiting,
            exit_code=exit_code(ended),
            gpus=gpus,
            end_reason=end_reason,
            deleting=deleting,
        )

    def wait_ready(
        self, name: str, *, timeout: float | None = None, interval: float = 0.25
    ) -> KernelPod:
        """Poll pod ``name`` until it is ready (blocking); BackendError if it ended, vanished, or
        ``timeout`` (default ``startup_timeout_s``) passed, saying why it still waits."""
        limit = self.startup_timeout_s if timeout is None else timeout
        deadline = time.monotonic() + limit
        while True:
            pod = self.pod(name)
            if pod is None:
                raise BackendError(f"the kernel pod {name} is gone (deleted before it ran)")
            if pod.ready:
                return pod
            if pod.phase in ("Succeeded", "Failed"):
                raise BackendError(
                    f"the kernel pod {name} ended before the kernel was reached: "
                    f"{pod.end_reason or pod.phase}"
                )
            if time.monotonic() >= deadline:
                why = pod.waiting_reason or ("being deleted" if pod.deleting else pod.phase)
                raise BackendError(f"the kernel pod {name} did not start within {limit:g} s: {why}")
            time.sleep(interval)

    # --- delete ----------------------------------------------------------------------------

    def delete(self, name: str, *, grace_s: int = 5) -> None:
        """Delete a kernel pod (SIGTERM now, SIGKILL after ``grace_s`` seconds) and its Secret
        (the process has read it); gone: fine."""
        try:
            self.api().request(
                "DELETE",
                self._pods_path(name),
                what=f"delete the kernel pod {name} in namespace {self.namespace}",
                body={
                    "apiVersion": "v1",
                    "kind": "DeleteOptions",
                    "gracePeriodSeconds": max(0, int(grace_s)),
                },
            )
        except ApiError as err:
            if err.status != 404:
                raise
        self._delete_secret(name)

    # --- adopt ----------------------------------------------------------------------------

    def kernel_of(self, name: str) -> tuple[dict[str, str], dict[str, Any]] | None:
        """What kernel pod ``name`` was started with, for a new gateway to adopt its kernel:
        its environment (plain values and those of its Secret, without what the launcher sets
        itself) and its connection (ports and key). None if the pod or its Secret is gone."""
        where = f"in namespace {self.namespace}"
        try:
            pod = self.api().request(
                "GET", self._pods_path(name), what=f"read the kernel pod {name} {where}"
            )
            secret = self.api().request(
                "GET", self._path("secrets", name), what=f"read the Secret {name} {where}"
            )
        except ApiError as err:
            if err.status == 404:
                return None
            raise
        data = {
            k: base64.b64decode(v).decode("utf-8", "replace")
            for k, v in ((secret or {}).get("data") or {}).items()
        }
        containers = ((pod or {}).get("spec") or {}).get("containers") or []
        container = next((c for c in containers if c.get("name") == CONTAINER), None)
        env: dict[str, str] = {}
        for item in (container or {}).get("env") or []:
            ref = (item.get("valueFrom") or {}).get("secretKeyRef")
            if "value" in item:
                env[item["name"]] = str(item["value"])
            elif ref and ref.get("name") == name and ref.get("key") in data:
                env[item["name"]] = data[ref["key"]]
        try:
            connection = json.loads(env.pop(CONNECTION_ENV))
        except (KeyError, ValueError):
            return None
        if not isinstance(connection, dict) or not connection.get("key"):
            return None
        for launcher_set in _RESERVED_ENV:
            env.pop(launcher_set, None)
        return env, connection

    # --- connect ---------------------------------------------------------------------------

    def connection_info(self, pod: KernelPod, connection: Mapping[str, Any]) -> dict[str, Any]:
        """What jupyter_client needs to reach the kernel in ``pod`` (``key`` as bytes)."""
        if not pod.pod_ip:
            raise BackendError(f"the kernel pod {pod.name} has no IP yet ({pod.phase})")
        key = connection.get("key", b"")
        info: dict[str, Any] = {
            "ip": pod.pod_ip,
            "transport": str(connection.get("transport") or "tcp"),
            "signature_scheme": str(connection.get("signature_scheme") or "hmac-sha256"),
            "key": key if isinstance(key, bytes) else str(key).encode("ascii"),
        }
        try:
            for port in PORT_NAMES:
                info[port] = int(connection[port])
        except (KeyError, TypeError, ValueError) as err:
            raise BackendError(f"the kernel's connection has no valid {err}") from None
        return info


def _owner(pod: Mapping[str, Any]) -> dict[str, Any]:
    """An ownerReference to ``pod`` (as the API server answered its creation)."""
    metadata = meta(pod)
    if not metadata.get("uid"):
        raise BackendError(f"the API server gave no uid for the kernel pod {metadata.get('name')}")
    return {"apiVersion": "v1", "kind": "Pod", "name": metadata["name"], "uid": metadata["uid"]}


def _ended(status: Mapping[str, Any], ended: Mapping[str, Any] | None) -> str:
    """How a pod ended: its container's exit, else the pod's own reason and message."""
    text = exit_text(ended)
    if text:
        return text
    reason, message = status.get("reason"), status.get("message")
    if reason and message:
        return f"{reason}: {message}"
    return str(reason or message or status.get("phase") or "ended")
