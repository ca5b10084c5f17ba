"""The Kubernetes API as the jobs backend and the kernel pod launcher use it.

Both talk to the API server through the official ``kubernetes`` client (the optional extra:
``pip install jupyter-dlinfra[kubernetes]``), with its ``ApiClient`` only: requests and answers are
plain JSON, so nothing depends on the client's model classes matching the cluster's version.

- :class:`KubeApi` holds the client and makes the requests. Credentials come from ``api_client``,
  else ``kubeconfig`` (and ``context``), else the pod's service account when
  ``KUBERNETES_SERVICE_HOST`` is set (the gateway runs in the cluster), else the default kubeconfig
  (``~/.kube/config``, ``$KUBECONFIG``). Every failure is a
  :class:`~jupyter_dlinfra.core.errors.BackendError` that says what could not be done; an answer
  with an error status is an :class:`ApiError` with the HTTP status and Kubernetes' own message.
- :func:`gpu_node_affinity` turns a GPU model (a substring such as ``"A100"``) into node affinity
  on the exact product label values the cluster's nodes carry.
- The readers (:func:`meta`, :func:`pending_reason`, :func:`terminated`...) take what an answer
  says about an object, in Kubernetes' own words.
- The labels and names every object of ours carries, and how a text becomes a valid label value,
  DNS name or environment variable name.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import threading
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from jupyter_dlinfra.core.errors import BackendError

if TYPE_CHECKING:
    from kubernetes.client import ApiClient

__all__ = [
    "DNS_BAD",
    "ENV_NAME",
    "GPU_PRODUCT_LABEL",
    "GPU_RESOURCE",
    "KUEUE_QUEUE_LABEL",
    "MANAGED_BY",
    "MANAGER",
    "PREFIX",
    "PRIORITY_CLASS_ANNOTATION",
    "USER_LABEL",
    "ApiError",
    "KubeApi",
    "annotations_of",
    "check_env_name",
    "conditions",
    "dns_name",
    "exit_code",
    "exit_text",
    "gpu_node_affinity",
    "import_kubernetes",
    "label_value",
    "meta",
    "node_name_affinity",
    "pending_reason",
    "terminated",
    "true_condition",
]

#: the label (and its value) on every object we create; lists select ours by it
MANAGED_BY = "app.kubernetes.io/managed-by"
MANAGER = "jupyter-dlinfra"
#: the prefix of our own labels and annotations
PREFIX = "dlinfra.jupyter.org/"
#: the user, made a valid label value (the exact name is in the annotation of the same key)
USER_LABEL = PREFIX + "user"
#: our scheduling class of what the object runs ("interactive")
PRIORITY_CLASS_ANNOTATION = PREFIX + "priority-class"
KUEUE_QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
#: the extended resource that counts GPUs, and the node label that names their product
#: (gpu-feature-discovery's, e.g. ``NVIDIA-A100-SXM4-80GB``)
GPU_RESOURCE = "nvidia.com/gpu"
GPU_PRODUCT_LABEL = "nvidia.com/gpu.product"
#: a valid environment variable name (what Kubernetes accepts)
ENV_NAME = re.compile(r"^[-._a-zA-Z][-._a-zA-Z0-9]*$")
#: what a DNS-1123 name may not hold (after lowering)
DNS_BAD = re.compile(r"[^a-z0-9-]+")
_LABEL_VALUE_BAD = re.compile(r"[^A-Za-z0-9_.-]+")


# --- the client ------------------------------------------------------------------------------


def import_kubernetes() -> Any:
    """The ``kubernetes`` package, or a BackendError that says how to install it."""
    try:
        import kubernetes
    except ImportError:
        raise BackendError(
            "the kubernetes backend needs the Kubernetes client: "
            "pip install jupyter-dlinfra[kubernetes]"
        ) from None
    return kubernetes


class ApiError(BackendError):
    """The API server answered with an error status (``status``: the HTTP status)."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


class KubeApi:
    """The REST calls to one API server, as JSON, through the official ``ApiClient``.

    The client is ``api_client`` (the caller's: never closed here), else built on first use from
    ``kubeconfig``/``context`` or the in-cluster service account (see the module's notes), and
    closed by :meth:`close`. A missing ``kubernetes`` package is a BackendError at construction.
    """

    def __init__(
        self,
        api_client: ApiClient | None = None,
        *,
        kubeconfig: str | None = None,
        context: str | None = None,
        timeout: float = 30.0,
    ) -> None:
        import_kubernetes()
        self.kubeconfig = kubeconfig
        self.context = context
        #: seconds one request may take
        self.timeout = timeout
        self._client = api_client
        self._owns_client = api_client is None
        self._lock = threading.Lock()

    def client(self) -> ApiClient:
        """The ``ApiClient``, built on first use (BackendError if no configuration is usable)."""
        with self._lock:
            if self._client is None:
                self._client = self._new_client()
            return self._client

    @property
    def host(self) -> str:
        """The API server's address (``?`` when the client does not say)."""
        return str(getattr(self.client().configuration, "host", "") or "?")

    def close(self) -> None:
        """Close a client this object built (the next request builds another); keep a given one."""
        with self._lock:
            client = self._client
            if client is None or not self._owns_client:
                return
            self._client = None
            with contextlib.suppress(Exception):
                client.close()  # type: ignore[no-untyped-call]

    def _new_client(self) -> ApiClient:
        kubernetes = import_kubernetes()
        config = kubernetes.config
        try:
            if self.kubeconfig or not os.environ.get("KUBERNETES_SERVICE_HOST"):
                client: ApiClient = config.new_client_from_config(
                    config_file=self.kubeconfig, context=self.context, persist_config=False
                )
                return client
            configuration = kubernetes.client.Configuration()
            config.load_incluster_config(client_configuration=configuration)
            in_cluster: ApiClient = kubernetes.client.ApiClient(configuration)
            return in_cluster
        except (config.ConfigException, OSError, ValueError, TypeError) as err:
            where = self.kubeconfig or "the default kubeconfig or the in-cluster service account"
            raise BackendError(
                f"no usable Kubernetes configuration ({where}): {err}".replace("\n", " ")
            ) from None

    def request(
        self,
        method: str,
        path: str,
        *,
        what: str,
        query: Sequence[tuple[str, str]] = (),
        body: Any = None,
        content_type: str = "application/json",
    ) -> Any:
        """One call: the answer's JSON (None if empty). ``what`` completes "Kubernetes refused
        to ..." and "cannot reach the Kubernetes API at ... to ..." in the errors."""
        kubernetes = import_kubernetes()
        import urllib3

        client = self.client()
        headers: dict[str, str] = {"Accept": "application/json"}
        if body is not None:
            headers["Content-Type"] = content_type
        try:
            request = client.param_serialize(
                method=method,
                resource_path=path,
                query_params=list(query),
                header_params=headers,
                body=body,
                auth_settings=["BearerToken"],
            )
            response = client.call_api(*request, _request_timeout=self.timeout)
            data = response.read()  # type: ignore[no-untyped-call]
        except kubernetes.client.exceptions.ApiException as err:
            if not err.status:  # the client's own failure (TLS...), not an answer
                raise BackendError(
                    f"cannot reach the Kubernetes API at {self.host} to {what}: "
                    + str(err.reason or err).replace("\n", ": ")
                ) from None
            raise ApiError(
                f"Kubernetes refused to {what}: {_api_message(err.status, err.reason, err.body)}",
                int(err.status or 0),
            ) from None
        except (urllib3.exceptions.HTTPError, OSError) as err:
            why = getattr(err, "reason", None) or err
            raise BackendError(
                f"cannot reach the Kubernetes API at {self.host} to {what}: {why}"
            ) from None
        if not 200 <= response.status <= 299:
            text = data.decode("utf-8", "replace") if isinstance(data, bytes) else data
            raise ApiError(
                f"Kubernetes refused to {what}: "
                f"{_api_message(response.status, response.reason, text)}",
                int(response.status),
            )
        if not data:
            return None
        try:
            return json.loads(data)
        except ValueError:
            raise BackendError(
                f"the Kubernetes API at {self.host} gave no JSON when asked to {what}"
            ) from None

    def items(self, path: str, *, what: str, query: Sequence[tuple[str, str]] = ()) -> list[Any]:
        """Every item of a list (following ``continue`` tokens)."""
        found: list[Any] = []
        token: str | None = None
        while True:
            extra = [("continue", token)] if token else []
            answer = self.request("GET", path, what=what, query=[*query, *extra]) or {}
            found.extend(answer.get("items") or [])
            token = (answer.get("metadata") or {}).get("continue")
            if not token:
                return found


def _api_message(status: Any, reason: Any, body: Any) -> str:
    """``403 Forbidden: jobs.batch is forbidden: ...`` from an error answer."""
    message = None
    if body:
        try:
            message = json.loads(body).get("message")
        except (ValueError, AttributeError):
            message = str(body).strip()[:500] or None
    head = " ".join(str(x) for x in (status, reason) if x)
    return f"{head}: {message}" if message else head or "no answer"


# --- GPU models ------------------------------------------------------------------------------


def node_name_affinity(node: str) -> dict[str, Any]:
    """Node affinity that requires the node named ``node`` (as DaemonSets pin their pods)."""
    term = {"matchFields": [{"key": "metadata.name", "operator": "In", "values": [node]}]}
    return {
        "nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [term]}
        }
    }


def gpu_node_affinity(
    api: KubeApi,
    model: str,
    *,
    label: str = GPU_PRODUCT_LABEL,
    products: Sequence[str] = (),
) -> dict[str, Any]:
    """Node affinity (``In``) for the GPU products that contain ``model``.

    The products are the values of ``label`` on the cluster's nodes plus ``products`` (for node
    pools that scale from zero); those that contain ``model``, case-insensitively, match, and an
    exact match alone wins. A model no product matches is a BackendError that lists the known
    products. Without the right to list nodes, ``model`` itself is taken as a label value.
    """
    known = set(products)
    listed = True
    try:
        nodes = api.items(
            "/api/v1/nodes", what="list the GPU nodes", query=[("labelSelector", label)]
        )
    except ApiError as err:
        if err.status not in (401, 403):
            raise
        listed = False
        nodes = []
    for node in nodes:
        value = (meta(node).get("labels") or {}).get(label)
        if value:
            known.add(value)
    wanted = model.lower()
    exact = sorted(p for p in known if p.lower() == wanted)
    matches = exact or sorted(p for p in known if wanted in p.lower())
    if not matches:
        if listed:
            names = ", ".join(sorted(known)) or "none"
            raise BackendError(
                f"no GPU model in the cluster matches {model!r} "
                f"(node label {label}; models: {names})"
            )
        # cannot see the nodes: the model must be a product label value itself
        matches = [model]
    term = {"matchExpressions": [{"key": label, "operator": "In", "values": matches}]}
    return {
        "nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [term]}
        }
    }


# --- reading objects -------------------------------------------------------------------------


def meta(obj: Mapping[str, Any]) -> Mapping[str, Any]:
    """An object's ``metadata`` (empty if it has none)."""
    return obj.get("metadata") or {}


def annotations_of(obj: Mapping[str, Any]) -> Mapping[str, str]:
    """An object's ``metadata.annotations`` (empty if it has none)."""
    return meta(obj).get("annotations") or {}


def conditions(obj: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """An object's ``status.conditions``."""
    return list((obj.get("status") or {}).get("conditions") or [])


def true_condition(obj: Mapping[str, Any], kind: str) -> Mapping[str, Any] | None:
    """The object's condition of type ``kind`` when its status is ``True``, else None."""
    for cond in conditions(obj):
        if cond.get("type") == kind and cond.get("status") == "True":
            return cond
    return None


def _container_status(pod: Mapping[str, Any], container: str) -> Mapping[str, Any] | None:
    """The status of the pod's container ``container``, else of its first one."""
    statuses = (pod.get("status") or {}).get("containerStatuses") or []
    for status in statuses:
        if status.get("name") == container:
            return dict(status)
    return dict(statuses[0]) if statuses else None


def terminated(pod: Mapping[str, Any], container: str) -> Mapping[str, Any] | None:
    """How the container ended (``exitCode``, ``reason``, ``message``), now or last time."""
    status = _container_status(pod, container)
    if status is None:
        return None
    for key in ("state", "lastState"):
        ended = (status.get(key) or {}).get("terminated")
        if ended:
            return dict(ended)
    return None


def exit_code(ended: Mapping[str, Any] | None) -> int | None:
    """The exit code of a :func:`terminated` state (None if it has no integer one)."""
    code = (ended or {}).get("exitCode")
    return code if isinstance(code, int) and not isinstance(code, bool) else None


def exit_text(ended: Mapping[str, Any] | None) -> str | None:
    """``exit code 137 (OOMKilled): message`` for a :func:`terminated` state; None without code."""
    if not ended or ended.get("exitCode") is None:
        return None
    reason = ended.get("reason")
    text = f"exit code {ended.get('exitCode')}" + (f" ({reason})" if reason else "")
    message = str(ended.get("message") or "").strip()
    return f"{text}: {message}" if message else text


def pending_reason(pod: Mapping[str, Any], container: str) -> str:
    """Why a pod does not run yet, in Kubernetes' own words: the scheduler's ``PodScheduled``
    message, else the container's waiting reason, else where it starts or that it waits."""
    for cond in conditions(pod):
        if cond.get("type") == "PodScheduled" and cond.get("status") == "False":
            return str(cond.get("message") or cond.get("reason") or "not scheduled yet")
    status = _container_status(pod, container)
    waiting = ((status or {}).get("state") or {}).get("waiting") or {}
    if waiting:
        reason, message = waiting.get("reason"), waiting.get("message")
        return f"{reason}: {message}" if reason and message else str(reason or message)
    node = (pod.get("spec") or {}).get("nodeName")
    return f"starting on {node}" if node else "waiting to be scheduled"


# --- names -----------------------------------------------------------------------------------


def label_value(text: str) -> str:
    """``text`` made a valid label value (63 characters, alphanumeric at both ends; may be "")."""
    value = _LABEL_VALUE_BAD.sub("_", text)[:63]
    return value.strip("_.-")


def dns_name(text: str) -> str:
    """``text`` lowered, with every run of other characters than ``a-z0-9-`` made ``-`` and no
    ``-`` at either end (may be ""; the caller bounds the length)."""
    return DNS_BAD.sub("-", text.lower()).strip("-")


def check_env_name(name: str) -> None:
    """BackendError unless ``name`` is a valid environment variable name."""
    if not ENV_NAME.match(name):
        raise BackendError(f"invalid environment variable name {name!r}")
