"""A stand-in kubelet for fake GPU nodes: runs the pods bound to them as local processes.

:class:`NodeAgent` registers :class:`FakeNode` objects with a real apiserver (see
:mod:`jupyter_dlinfra.testing.k8s`), keeps them Ready, and does for the pods that the real
kube-scheduler binds to them what a kubelet would, as far as a machine without containers allows:

- **Process.** The pod's *first* container's ``command + args`` runs as a local process in its own
  session (``$(VAR)`` references expanded as Kubernetes does). ``python``/``python3`` as argv[0]
  becomes the agent's interpreter. A container without ``command`` runs its ``args``; one with
  neither fails the pod (reason ``NoCommand``): there is no image to take an entrypoint from.
  Other containers and init containers are not run. The working directory is the container's
  ``workingDir`` when it exists here, else the pod's directory under the agent's workdir; stdout
  and stderr go to ``<workdir>/pods/<namespace>_<pod>_<uid8>/<container>.log``.
- **Environment.** The agent's own environment, then the container's ``envFrom`` and ``env``:
  ``value``; ``valueFrom`` with ``fieldRef`` (metadata.name/namespace/uid, labels and annotations,
  spec.nodeName, spec.serviceAccountName, status.podIP and status.hostIP, both 127.0.0.1),
  ``resourceFieldRef`` (limits or requests of cpu, memory and ephemeral-storage, divided by the
  divisor and rounded up as a kubelet does; the apiserver allows no other resource there),
  ``configMapKeyRef`` and ``secretKeyRef``. Then, as a device plugin would,
  ``NVIDIA_VISIBLE_DEVICES`` and ``CUDA_VISIBLE_DEVICES`` with the node-level indices of the fake
  GPUs given to the pod (``"0,1"``; two pods on one node get disjoint indices; ``"void"`` and
  ``""`` for a pod without GPUs) and ``DLINFRA_FAKE_GPU_UUIDS`` with their stable fake UUIDs
  ``GPU-<node>-<index>``. A pod's GPU count is the sum of its containers' ``nvidia.com/gpu``
  limits.
- **Volumes.** There is no mount namespace, so a volume is "mounted" only where it already is: every
  ``volumeMount``'s ``mountPath`` must exist on this machine, whatever the volume's kind
  (persistentVolumeClaim, hostPath, emptyDir, ...); otherwise the pod fails with reason
  ``VolumeUnavailable`` and a message naming the path. For a PVC, create a hostPath PersistentVolume
  whose path is the mountPath (the controller-manager binds the claim). For ``configMap`` and
  ``secret`` volumes the agent also writes the keys (or ``items``) as files into the mountPath.
- **Status.** Running (podIP and hostIP 127.0.0.1, all conditions True, a running container
  status) once the process starts; Succeeded or Failed with the container's exit code when it ends
  (a signal N gives 128+N). A pod that cannot start is Failed with a reason
  (``VolumeUnavailable``, ``NoCommand``, ``CreateContainerConfigError``, ``StartError``,
  ``UnexpectedAdmissionError``). ``restartPolicy`` is ignored: nothing is ever restarted.
- **Deletion.** A pod being deleted (deletionTimestamp set) or gone: SIGTERM to the process group,
  SIGKILL after its grace period (capped at 5 s), then, if the pod still exists, the agent deletes
  it with grace period 0 as a kubelet confirms a deletion.
- **Logs.** An HTTPS server on 127.0.0.1 (self-signed, made with ``openssl``) serves the kubelet's
  ``/containerLogs/{namespace}/{pod}/{container}`` (``follow``, ``tailLines``, ``limitBytes``) so
  that ``read_namespaced_pod_log`` works through the apiserver.
- A pod found Running at start (left by an agent that died) is marked Failed
  (``NodeAgentRestarted``).

Node status is written through the status subresource and refreshed every 10 s. Every action is
logged on the ``jupyter_dlinfra.testing.k8s`` logger; an error with one pod is logged and the agent
goes on.
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import math
import os
import platform
import re
import signal
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from fractions import Fraction
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, cast
from urllib.parse import parse_qs, unquote, urlsplit

import kubernetes.client
from kubernetes.client.exceptions import ApiException

from jupyter_dlinfra.testing.server import StartStop, close_response, response_lines

__all__ = ["GPU_RESOURCE", "FakeNode", "NodeAgent"]

log = logging.getLogger("jupyter_dlinfra.testing.k8s")

GPU_RESOURCE = "nvidia.com/gpu"
HOST_IP = "127.0.0.1"
MERGE_PATCH = "application/merge-patch+json"
#: longest a deleted pod's process gets between SIGTERM and SIGKILL
MAX_GRACE_SECONDS = 5.0
HEARTBEAT_SECONDS = 10.0
#: how long a pod waits for GPU indices that a deleted pod's process still holds
GPU_WAIT_SECONDS = 10.0
_PYTHON = re.compile(r"python(3(\.\d+)?)?")
_VAR_REF = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)")

JSON = dict[str, Any]


@dataclass(frozen=True, kw_only=True)
class FakeNode:
    """A node the agent registers: ``gpus`` fake GPUs of ``model``, plus extra ``labels``."""

    name: str
    gpus: int
    model: str = "NVIDIA-A100-SXM4-80GB"
    labels: Mapping[str, str] = field(default_factory=dict)

    def node_labels(self) -> dict[str, str]:
        return {
            "kubernetes.io/hostname": self.name,
            "kubernetes.io/os": "linux",
            "kubernetes.io/arch": "amd64",
            "nvidia.com/gpu.product": self.model,
            "nvidia.com/gpu.count": str(self.gpus),
            **self.labels,
        }


class _PodFailure(Exception):
    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


@dataclass(eq=False)
class _PodRun:
    """What the agent knows about one pod bound to one of its nodes."""

    uid: str
    namespace: str
    name: str
    node: str
    container: str
    image: str
    directory: Path
    grace: float
    gpus: tuple[int, ...] = ()
    proc: subprocess.Popen[bytes] | None = None
    started_at: str = ""
    terminating: bool = False
    delete_requested: bool = False
    #: set once the process has ended (or will never start)
    done: threading.Event = field(default_factory=threading.Event)

    @property
    def log_path(self) -> Path:
        return self.directory / f"{self.container}.log"

    @property
    def ref(self) -> str:
        return f"{self.namespace}/{self.name}"


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _expand(text: str, env: Mapping[str, str]) -> str:
    """Kubernetes' ``$(VAR)`` expansion: defined names are replaced, ``$$`` is a literal ``$``."""

    def repl(match: re.Match[str]) -> str:
        name = match.group(1)
        if name is None:
            return "$"
        return env.get(name, match.group(0))

    return _VAR_REF.sub(repl, text)


_SUFFIXES: dict[str, Fraction] = {
    **{s: Fraction(1024**i) for i, s in enumerate(("", "Ki", "Mi", "Gi", "Ti", "Pi", "Ei"))},
    **{s: Fraction(1000**i) for i, s in enumerate(("", "k", "M", "G", "T", "P", "E"))},
    "m": Fraction(1, 1000),
}


def _quantity(text: str) -> Fraction:
    """A Kubernetes quantity (``500m``, ``1Gi``, ``2``, ``1e3``) as an exact number."""
    match = re.fullmatch(r"([+-]?[0-9.]+(?:[eE][+-]?[0-9]+)?)([a-zA-Z]*)", text.strip())
    if not match or match.group(2) not in _SUFFIXES:
        raise _PodFailure("CreateContainerConfigError", f"bad quantity {text!r}")
    return Fraction(match.group(1)) * _SUFFIXES[match.group(2)]


def _raw(result: object) -> Any:
    """The JSON body of a call made with ``_preload_content=False``."""
    return json.loads(cast(Any, result).data)


def _gpu_count(spec: JSON) -> int:
    total = 0
    for container in spec.get("containers", []):
        resources = container.get("resources") or {}
        value = (resources.get("limits") or {}).get(GPU_RESOURCE) or (
            resources.get("requests") or {}
        ).get(GPU_RESOURCE)
        if value:
            total += int(value)
    return total


def _kill_group(proc: subprocess.Popen[bytes], signum: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signum)


class NodeAgent(StartStop):
    """Plays the kubelet of ``nodes`` against the apiserver behind ``api``.

    ``start()`` registers the nodes, starts the log server, the pod watch and the heartbeat and
    returns once the pods already bound to the nodes are being handled. ``stop()`` kills every pod
    process it started and writes nothing more to the apiserver. Also a context manager.
    """

    def __init__(
        self,
        api: kubernetes.client.ApiClient,
        nodes: Sequence[FakeNode],
        *,
        workdir: Path,
        python: str = sys.executable,
    ) -> None:
        names = [node.name for node in nodes]
        if len(set(names)) != len(names):
            raise ValueError(f"node names must be distinct: {names}")
        self.api = api
        self.core = kubernetes.client.CoreV1Api(api)
        self.nodes: dict[str, FakeNode] = {node.name: node for node in nodes}
        self.workdir = Path(workdir)
        self.python = python
        #: the port of the kubelet endpoint (logs), set by start()
        self.port = 0
        self._lock = threading.Condition()
        self._runs: dict[str, _PodRun] = {}
        self._by_name: dict[tuple[str, str], _PodRun] = {}
        self._gpu_owner: dict[str, dict[int, str]] = {name: {} for name in self.nodes}
        self._deleting: set[str] = set()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._workers: set[threading.Thread] = set()
        self._server: _LogServer | None = None
        self._stream: Any = None
        self._since = _now()
        self._started = False

    # -- lifecycle ---------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self._started

    def start(self) -> None:
        if self._started:
            return
        self._started = True
        self._stop.clear()
        (self.workdir / "pods").mkdir(parents=True, exist_ok=True)
        self._server = _LogServer(self, *self._make_cert())
        self.port = int(self._server.server_address[1])
        self._spawn_daemon("node-agent-logs", self._server.serve_forever)
        self._since = _now()
        for node in self.nodes.values():
            self._register(node)
        rv = self._relist()
        self._spawn_daemon("node-agent-watch", lambda: self._watch_loop(rv))
        self._spawn_daemon("node-agent-heartbeat", self._heartbeat_loop)
        log.info(
            "node agent: nodes %s registered, kubelet endpoint on port %d",
            ", ".join(f"{n.name} ({n.gpus} GPUs)" for n in self.nodes.values()),
            self.port,
        )

    def stop(self, timeout: float = 5.0) -> None:
        """Kill every pod process this agent started; update nothing in the apiserver."""
        if not self._started:
            return
        self._started = False
        self._stop.set()
        self._close_stream()
        with self._lock:
            runs = list(self._runs.values())
            for run in runs:
                run.terminating = True
            self._lock.notify_all()
        procs = [run.proc for run in runs if run.proc is not None and run.proc.poll() is None]
        for proc in procs:
            _kill_group(proc, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for proc in procs:
            try:
                proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                _kill_group(proc, signal.SIGKILL)
                proc.wait()
            _kill_group(proc, signal.SIGKILL)
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        with self._lock:
            workers = list(self._workers)
        for thread in [*self._threads, *workers]:
            thread.join(timeout=max(0.5, deadline - time.monotonic()))
        self._threads.clear()
        log.info("node agent stopped (%d pod processes killed)", len(procs))

    def log_path(self, namespace: str, name: str) -> Path | None:
        """Where the latest pod ``namespace/name`` seen here writes its output."""
        with self._lock:
            run = self._by_name.get((namespace, name))
        return None if run is None else run.log_path

    # -- threads -----------------------------------------------------------------------------

    def _spawn_daemon(self, name: str, target: Callable[[], object]) -> None:
        thread = threading.Thread(target=target, name=name, daemon=True)
        self._threads.append(thread)
        thread.start()

    def _spawn_worker(self, name: str, target: Callable[[], object]) -> None:
        def run() -> None:
            try:
                target()
            except Exception:
                log.exception("node agent: %s failed", name)
            finally:
                with self._lock:
                    self._workers.discard(threading.current_thread())

        thread = threading.Thread(target=run, name=name, daemon=True)
        with self._lock:
            self._workers.add(thread)
        thread.start()

    def _heartbeat_loop(self) -> None:
        while not self._stop.wait(HEARTBEAT_SECONDS):
            for node in list(self.nodes.values()):
                try:
                    self.core.patch_node_status(
                        node.name,
                        {"status": {"conditions": self._conditions()}},
                        _content_type=MERGE_PATCH,
                    )
                except Exception as err:
                    log.warning("node agent: heartbeat of %s failed: %s", node.name, err)

    def _field_selector(self) -> str:
        return "spec.nodeName!="

    def _relist(self) -> str:
        """Handle every pod bound to a node now; forget those gone; return the list's version."""
        doc = _raw(
            self.core.list_pod_for_all_namespaces(
                field_selector=self._field_selector(), _preload_content=False
            )
        )
        present = set()
        for pod in doc.get("items") or []:
            present.add(pod["metadata"]["uid"])
            self._on_pod(pod, deleted=False)
        with self._lock:
            gone = [run for uid, run in self._runs.items() if uid not in present]
        for run in gone:
            self._forget(run)
        return str(doc["metadata"]["resourceVersion"])

    def _watch_loop(self, rv: str | None) -> None:
        while not self._stop.is_set():
            try:
                if rv is None:
                    rv = self._relist()
                response = cast(
                    Any,
                    self.core.list_pod_for_all_namespaces(
                        field_selector=self._field_selector(),
                        watch=True,
                        resource_version=rv,
                        allow_watch_bookmarks=True,
                        timeout_seconds=240,
                        _preload_content=False,
                        _request_timeout=(10, 300),
                    ),
                )
                with self._lock:  # stop() closes what it finds here, or we see it stopping
                    self._stream = None if self._stop.is_set() else response
                if self._stream is None:
                    close_response(response)
                    break
                try:
                    for line in response_lines(response):
                        if self._stop.is_set():
                            break
                        event = json.loads(line)
                        obj = event.get("object") or {}
                        if event.get("type") == "ERROR":
                            log.info("node agent: pod watch ended: %s", obj.get("message"))
                            rv = None
                            break
                        rv = obj["metadata"]["resourceVersion"]
                        if event["type"] == "BOOKMARK":
                            continue
                        try:
                            self._on_pod(obj, deleted=event["type"] == "DELETED")
                        except Exception:
                            log.exception("node agent: handling a pod event failed")
                finally:
                    with self._lock:
                        self._stream = None
                    close_response(response)
            except Exception as err:
                if self._stop.is_set():
                    break
                log.warning("node agent: pod watch failed (%s); listing again", err)
                rv = None
                self._stop.wait(1.0)

    def _close_stream(self) -> None:
        with self._lock:
            response = self._stream
        if response is None:
            return
        with contextlib.suppress(Exception):
            response.shutdown()
        with contextlib.suppress(Exception):
            response.close()

    # -- nodes -------------------------------------------------------------------------------

    def _conditions(self) -> list[JSON]:
        now = _now()

        def cond(kind: str, status: str, reason: str, message: str) -> JSON:
            return {
                "type": kind,
                "status": status,
                "reason": reason,
                "message": message,
                "lastHeartbeatTime": now,
                "lastTransitionTime": self._since,
            }

        return [
            cond("MemoryPressure", "False", "KubeletHasSufficientMemory", "fake node"),
            cond("DiskPressure", "False", "KubeletHasNoDiskPressure", "fake node"),
            cond("PIDPressure", "False", "KubeletHasSufficientPID", "fake node"),
            cond("Ready", "True", "KubeletReady", "dlinfra node agent is posting ready status"),
        ]

    def _node_status(self, node: FakeNode) -> JSON:
        resources = {
            GPU_RESOURCE: str(node.gpus),
            "cpu": "64",
            "memory": "512Gi",
            "pods": "110",
            "ephemeral-storage": "1Ti",
        }
        return {
            "capacity": resources,
            "allocatable": resources,
            "conditions": self._conditions(),
            "addresses": [
                {"type": "InternalIP", "address": HOST_IP},
                {"type": "Hostname", "address": node.name},
            ],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": self.port}},
            "nodeInfo": {
                "machineID": f"dlinfra-{node.name}",
                "systemUUID": f"dlinfra-{node.name}",
                "bootID": self._since,
                "kernelVersion": platform.release(),
                "osImage": "dlinfra fake GPU node",
                "containerRuntimeVersion": "dlinfra-node-agent://1",
                "kubeletVersion": "v1.20.2",
                "kubeProxyVersion": "v1.20.2",
                "operatingSystem": "linux",
                "architecture": "amd64",
            },
        }

    def _register(self, node: FakeNode) -> None:
        labels = node.node_labels()
        body = kubernetes.client.V1Node(
            api_version="v1",
            kind="Node",
            metadata=kubernetes.client.V1ObjectMeta(name=node.name, labels=labels),
        )
        try:
            self.core.create_node(body)
            log.info("node agent: created node %s", node.name)
        except ApiException as err:
            if err.status != 409:
                raise
            self.core.patch_node(
                node.name,
                {"metadata": {"labels": labels}, "spec": {"unschedulable": None}},
                _content_type=MERGE_PATCH,
            )
            log.info("node agent: node %s existed; labels updated", node.name)
        # the TaintNodesByCondition admission plugin taints every new node not-ready
        current = _raw(self.core.read_node(node.name, _preload_content=False))
        taints = [
            taint
            for taint in (current.get("spec") or {}).get("taints") or []
            if not str(taint.get("key", "")).startswith("node.kubernetes.io/")
        ]
        self.core.patch_node(
            node.name, {"spec": {"taints": taints or None}}, _content_type=MERGE_PATCH
        )
        self.core.patch_node_status(
            node.name, {"status": self._node_status(node)}, _content_type=MERGE_PATCH
        )

    # -- pod events --------------------------------------------------------------------------

    def _on_pod(self, pod: JSON, *, deleted: bool) -> None:
        meta = pod.get("metadata") or {}
        spec = pod.get("spec") or {}
        node = spec.get("nodeName")
        if node not in self.nodes:
            return
        uid = meta["uid"]
        with self._lock:
            run = self._runs.get(uid)
        if deleted:
            if run is not None:
                self._forget(run)
            return
        if meta.get("deletionTimestamp"):
            grace = min(
                float(
                    meta.get("deletionGracePeriodSeconds")
                    or spec.get("terminationGracePeriodSeconds")
                    or 30
                ),
                MAX_GRACE_SECONDS,
            )
            if run is not None:
                run.grace = min(run.grace, grace)
                self._terminate(run, delete=True)
            else:
                self._confirm_deletion(meta["namespace"], meta["name"], uid)
            return
        if run is not None:
            return
        phase = (pod.get("status") or {}).get("phase") or "Pending"
        if phase in ("Succeeded", "Failed"):
            return
        run = self._new_run(pod)
        with self._lock:
            if uid in self._runs:
                return
            self._runs[uid] = run
            self._by_name[(run.namespace, run.name)] = run
        if phase == "Running":
            run.done.set()
            self._spawn_worker(
                f"pod-{run.ref}",
                lambda: self._fail(
                    run,
                    "NodeAgentRestarted",
                    "the node agent that ran this pod's process is gone",
                ),
            )
            return
        self._spawn_worker(f"pod-{run.ref}", lambda: self._run_pod(run, pod))

    def _new_run(self, pod: JSON) -> _PodRun:
        meta, spec = pod["metadata"], pod["spec"]
        containers = spec.get("containers") or [{}]
        first = containers[0]
        namespace, name, uid = meta["namespace"], meta["name"], meta["uid"]
        directory = self.workdir / "pods" / f"{namespace}_{name}_{uid[:8]}"
        directory.mkdir(parents=True, exist_ok=True)
        run = _PodRun(
            uid=uid,
            namespace=namespace,
            name=name,
            node=spec["nodeName"],
            container=str(first.get("name", "main")),
            image=str(first.get("image", "")),
            directory=directory,
            grace=min(float(spec.get("terminationGracePeriodSeconds", 30)), MAX_GRACE_SECONDS),
        )
        run.log_path.touch()
        return run

    def _forget(self, run: _PodRun) -> None:
        """The pod is gone from the apiserver: kill its process, drop the record."""
        self._terminate(run, delete=False)
        with self._lock:
            self._runs.pop(run.uid, None)
            if self._by_name.get((run.namespace, run.name)) is run:
                del self._by_name[(run.namespace, run.name)]

    def _terminate(self, run: _PodRun, *, delete: bool) -> None:
        with self._lock:
            run.delete_requested = run.delete_requested or delete
            if run.terminating:
                return
            run.terminating = True
            proc = run.proc
            self._lock.notify_all()

        def terminate() -> None:
            if proc is not None and proc.poll() is None:
                log.info("node agent: stopping %s (grace %.0f s)", run.ref, run.grace)
                _kill_group(proc, signal.SIGTERM)
                try:
                    proc.wait(timeout=run.grace)
                except subprocess.TimeoutExpired:
                    _kill_group(proc, signal.SIGKILL)
                    proc.wait()
            run.done.wait(timeout=MAX_GRACE_SECONDS + GPU_WAIT_SECONDS)
            if run.delete_requested and not self._stop.is_set():
                self._delete_now(run.namespace, run.name, run.uid)

        self._spawn_worker(f"stop-{run.ref}", terminate)

    def _confirm_deletion(self, namespace: str, name: str, uid: str) -> None:
        with self._lock:
            if uid in self._deleting:
                return
            self._deleting.add(uid)
        self._spawn_worker(
            f"delete-{namespace}/{name}", lambda: self._delete_now(namespace, name, uid)
        )

    def _delete_now(self, namespace: str, name: str, uid: str) -> None:
        try:
            self.core.delete_namespaced_pod(
                name,
                namespace,
                body=kubernetes.client.V1DeleteOptions(
                    grace_period_seconds=0,
                    preconditions=kubernetes.client.V1Preconditions(uid=uid),
                ),
            )
            log.info("node agent: pod %s/%s deleted", namespace, name)
        except ApiException as err:
            if err.status not in (404, 409):
                log.warning("node agent: deleting %s/%s failed: %s", namespace, name, err)
        finally:
            with self._lock:
                self._deleting.discard(uid)

    # -- running a pod -----------------------------------------------------------------------

    def _run_pod(self, run: _PodRun, pod: JSON) -> None:
        try:
            argv, env, cwd = self._plan(run, pod)
        except _PodFailure as failure:
            self._abort(run, failure.reason, failure.message)
            return
        except Exception as err:
            log.exception("node agent: preparing %s failed", run.ref)
            self._abort(run, "NodeAgentError", f"the node agent could not prepare the pod: {err}")
            return
        start_error = ""
        proc: subprocess.Popen[bytes] | None = None
        with self._lock:
            if not (run.terminating or self._stop.is_set()):
                try:
                    with run.log_path.open("ab") as out:
                        proc = run.proc = subprocess.Popen(
                            argv,
                            env=env,
                            cwd=cwd,
                            stdin=subprocess.DEVNULL,
                            stdout=out,
                            stderr=subprocess.STDOUT,
                            start_new_session=True,
                        )
                except OSError as err:
                    start_error = f"cannot run {argv[0]!r}: {err}"
        if proc is None:
            self._abort(run, "StartError" if start_error else "", start_error)
            return
        run.started_at = _now()
        log.info(
            "node agent: %s runs on %s as pid %d with GPUs %s: %s",
            run.ref,
            run.node,
            proc.pid,
            list(run.gpus),
            " ".join(argv),
        )
        self._patch_status(run, self._running_status(run))
        code = proc.wait()
        _kill_group(proc, signal.SIGKILL)  # what the main process left behind, as a container
        finished = _now()
        self._release(run)
        run.done.set()
        exit_code = code if code >= 0 else 128 - code
        log.info("node agent: %s exited with status %d", run.ref, exit_code)
        if run.terminating or self._stop.is_set():
            return
        self._patch_status(run, self._terminated_status(run, exit_code, finished))

    def _plan(self, run: _PodRun, pod: JSON) -> tuple[list[str], dict[str, str], str]:
        spec = pod["spec"]
        container = spec["containers"][0]
        env = self._container_env(pod, container)
        argv = [
            _expand(str(a), env)
            for a in [*container.get("command", []), *container.get("args", [])]
        ]
        if not argv:
            raise _PodFailure(
                "NoCommand",
                f"container {run.container!r} has no command or args: the node agent runs "
                "commands on the host and has no image entrypoint",
            )
        if _PYTHON.fullmatch(os.path.basename(argv[0])):
            argv[0] = self.python
        self._mount_volumes(run, pod, container)
        gpus = self._allocate(run, _gpu_count(spec))
        node = run.node
        env.update(
            {
                "NVIDIA_VISIBLE_DEVICES": ",".join(map(str, gpus)) if gpus else "void",
                "CUDA_VISIBLE_DEVICES": ",".join(map(str, gpus)),
                "DLINFRA_FAKE_GPU_UUIDS": ",".join(f"GPU-{node}-{i}" for i in gpus),
            }
        )
        working_dir = container.get("workingDir")
        cwd = working_dir if working_dir and os.path.isdir(working_dir) else str(run.directory)
        return argv, {**os.environ, "HOSTNAME": run.name, **env}, cwd

    def _container_env(self, pod: JSON, container: JSON) -> dict[str, str]:
        namespace = pod["metadata"]["namespace"]
        env: dict[str, str] = {}
        for source in container.get("envFrom") or []:
            prefix = source.get("prefix", "")
            if "configMapRef" in source:
                ref = source["configMapRef"]
                data = self._config_data("configmap", namespace, ref["name"], ref.get("optional"))
            elif "secretRef" in source:
                ref = source["secretRef"]
                data = self._config_data("secret", namespace, ref["name"], ref.get("optional"))
            else:
                continue
            env.update(
                {prefix + key: value.decode(errors="replace") for key, value in data.items()}
            )
        for item in container.get("env") or []:
            name = item["name"]
            if "valueFrom" in item:
                value = self._value_from(pod, container, item["valueFrom"])
                if value is not None:
                    env[name] = value
            else:
                env[name] = _expand(str(item.get("value", "")), env)
        return env

    def _value_from(self, pod: JSON, container: JSON, source: JSON) -> str | None:
        meta, spec = pod["metadata"], pod["spec"]
        if "fieldRef" in source:
            path = str(source["fieldRef"]["fieldPath"])
            simple = {
                "metadata.name": meta.get("name"),
                "metadata.namespace": meta.get("namespace"),
                "metadata.uid": meta.get("uid"),
                "spec.nodeName": spec.get("nodeName"),
                "spec.serviceAccountName": spec.get("serviceAccountName", ""),
                "status.podIP": HOST_IP,
                "status.podIPs": HOST_IP,
                "status.hostIP": HOST_IP,
            }
            if path in simple:
                return str(simple[path] or "")
            match = re.fullmatch(r"metadata\.(labels|annotations)\['(.+)'\]", path)
            if match:
                return str((meta.get(match.group(1)) or {}).get(match.group(2), ""))
            raise _PodFailure("CreateContainerConfigError", f"unsupported fieldRef {path!r}")
        if "resourceFieldRef" in source:
            ref = source["resourceFieldRef"]
            target = container
            if ref.get("containerName"):
                target = next(
                    (c for c in spec["containers"] if c.get("name") == ref["containerName"]),
                    container,
                )
            kind, _, resource = str(ref["resource"]).partition(".")
            resources = target.get("resources") or {}
            value = (resources.get(kind) or {}).get(resource)
            if value is None and kind == "requests":
                value = (resources.get("limits") or {}).get(resource)
            if value is None:  # no limit: the node's allocatable, as a kubelet says
                value = {"cpu": "64", "memory": "512Gi", "ephemeral-storage": "1Ti"}.get(resource)
            # the apiserver sends an unset divisor as "0", which means 1
            divisor = _quantity(str(ref.get("divisor") or "1")) or Fraction(1)
            if value is None:
                return "0"
            return str(math.ceil(_quantity(str(value)) / divisor))
        for key, kind in (("configMapKeyRef", "configmap"), ("secretKeyRef", "secret")):
            if key in source:
                ref = source[key]
                data = self._config_data(kind, meta["namespace"], ref["name"], ref.get("optional"))
                if ref["key"] not in data:
                    if ref.get("optional"):
                        return None
                    raise _PodFailure(
                        "CreateContainerConfigError",
                        f"couldn't find key {ref['key']} in {kind} {ref['name']}",
                    )
                return data[ref["key"]].decode(errors="replace")
        return None

    def _config_data(
        self, kind: str, namespace: str, name: str, optional: bool | None
    ) -> dict[str, bytes]:
        """The keys of a ConfigMap or Secret as bytes ({} if it is optional and missing)."""
        try:
            if kind == "secret":
                doc = _raw(
                    self.core.read_namespaced_secret(name, namespace, _preload_content=False)
                )
                return {k: base64.b64decode(v) for k, v in (doc.get("data") or {}).items()}
            doc = _raw(
                self.core.read_namespaced_config_map(name, namespace, _preload_content=False)
            )
        except ApiException as err:
            if err.status == 404 and optional:
                return {}
            if err.status == 404:
                raise _PodFailure(
                    "CreateContainerConfigError", f'{kind} "{name}" not found'
                ) from None
            raise
        data = {k: str(v).encode() for k, v in (doc.get("data") or {}).items()}
        data.update({k: base64.b64decode(v) for k, v in (doc.get("binaryData") or {}).items()})
        return data

    def _mount_volumes(self, run: _PodRun, pod: JSON, container: JSON) -> None:
        volumes = {v["name"]: v for v in pod["spec"].get("volumes") or []}
        for mount in container.get("volumeMounts") or []:
            volume = volumes.get(mount["name"], {})
            kind = next((k for k in volume if k != "name"), "unknown")
            path = Path(mount["mountPath"])
            if not path.exists():
                raise _PodFailure(
                    "VolumeUnavailable",
                    f"volume {mount['name']!r} ({kind}) cannot be mounted at {path}: that path "
                    "does not exist on this host (the node agent runs pods on the host, so a "
                    "volume must already be at its mountPath)",
                )
            if kind in ("configMap", "secret"):
                ref = volume[kind]
                name = ref.get("name") or ref.get("secretName") or ""
                data = self._config_data(kind.lower(), run.namespace, name, ref.get("optional"))
                items = ref.get("items") or [{"key": k, "path": k} for k in data]
                for item in items:
                    if item["key"] in data:
                        target = path / item["path"]
                        target.parent.mkdir(parents=True, exist_ok=True)
                        target.write_bytes(data[item["key"]])

    def _allocate(self, run: _PodRun, count: int) -> tuple[int, ...]:
        """Take ``count`` GPU indices on the pod's node (waits for ones a dying pod holds)."""
        if count == 0:
            return ()
        total = self.nodes[run.node].gpus
        deadline = time.monotonic() + GPU_WAIT_SECONDS
        with self._lock:
            while True:
                owners = self._gpu_owner[run.node]
                free = [i for i in range(total) if i not in owners]
                if len(free) >= count:
                    run.gpus = tuple(free[:count])
                    owners.update(dict.fromkeys(run.gpus, run.uid))
                    return run.gpus
                remaining = deadline - time.monotonic()
                if remaining <= 0 or count > total or run.terminating or self._stop.is_set():
                    raise _PodFailure(
                        "UnexpectedAdmissionError",
                        f"Allocate failed due to requested number of devices unavailable for "
                        f"{GPU_RESOURCE}. Requested: {count}, Available: {len(free)}",
                    )
                self._lock.wait(min(remaining, 0.5))

    def _release(self, run: _PodRun) -> None:
        with self._lock:
            owners = self._gpu_owner[run.node]
            for index in run.gpus:
                if owners.get(index) == run.uid:
                    del owners[index]
            run.gpus = ()
            self._lock.notify_all()

    # -- pod status --------------------------------------------------------------------------

    def _pod_conditions(self, ready: bool, reason: str | None = None) -> list[JSON]:
        now = _now()
        conditions = []
        for kind in ("Initialized", "Ready", "ContainersReady", "PodScheduled"):
            value = ready or kind in ("Initialized", "PodScheduled")
            condition: JSON = {
                "type": kind,
                "status": "True" if value else "False",
                "lastProbeTime": None,
                "lastTransitionTime": now,
            }
            if not value and reason:
                condition["reason"] = reason
            conditions.append(condition)
        return conditions

    def _container_status(self, run: _PodRun, state: JSON, *, ready: bool) -> JSON:
        pid = run.proc.pid if run.proc is not None else 0
        return {
            "name": run.container,
            "ready": ready,
            "started": ready,
            "restartCount": 0,
            "image": run.image,
            "imageID": f"dlinfra-fake://{run.image}",
            "containerID": f"dlinfra-fake://{run.node}/{pid}",
            "state": state,
        }

    def _running_status(self, run: _PodRun) -> JSON:
        return {
            "phase": "Running",
            "hostIP": HOST_IP,
            "podIP": HOST_IP,
            "podIPs": [{"ip": HOST_IP}],
            "startTime": run.started_at,
            "conditions": self._pod_conditions(True),
            "containerStatuses": [
                self._container_status(run, {"running": {"startedAt": run.started_at}}, ready=True)
            ],
        }

    def _terminated_status(self, run: _PodRun, exit_code: int, finished: str) -> JSON:
        terminated = {
            "exitCode": exit_code,
            "reason": "Completed" if exit_code == 0 else "Error",
            "startedAt": run.started_at,
            "finishedAt": finished,
            "containerID": f"dlinfra-fake://{run.node}/{run.proc.pid if run.proc else 0}",
        }
        return {
            "phase": "Succeeded" if exit_code == 0 else "Failed",
            "conditions": self._pod_conditions(False, "PodCompleted"),
            "containerStatuses": [
                self._container_status(run, {"terminated": terminated}, ready=False)
            ],
        }

    def _abort(self, run: _PodRun, reason: str, message: str) -> None:
        """The pod's process will not run: free its GPUs, and fail the pod if ``reason``."""
        self._release(run)
        run.done.set()
        if reason:
            self._fail(run, reason, message)

    def _fail(self, run: _PodRun, reason: str, message: str) -> None:
        log.warning("node agent: pod %s failed: %s: %s", run.ref, reason, message)
        with contextlib.suppress(OSError), run.log_path.open("a") as out:
            out.write(f"dlinfra node agent: {reason}: {message}\n")
        if self._stop.is_set():
            return
        self._patch_status(
            run,
            {
                "phase": "Failed",
                "reason": reason,
                "message": message,
                "hostIP": HOST_IP,
                "startTime": _now(),
                "conditions": self._pod_conditions(False, reason),
                "containerStatuses": [
                    self._container_status(
                        run, {"waiting": {"reason": reason, "message": message}}, ready=False
                    )
                ],
            },
        )

    def _patch_status(self, run: _PodRun, status: JSON) -> None:
        try:
            self.core.patch_namespaced_pod_status(
                run.name,
                run.namespace,
                {"metadata": {"uid": run.uid}, "status": status},
                _content_type=MERGE_PATCH,
            )
        except ApiException as err:
            if err.status in (404, 409):
                log.info("node agent: %s is gone; status not written", run.ref)
            else:
                log.warning("node agent: writing the status of %s failed: %s", run.ref, err)

    # -- logs --------------------------------------------------------------------------------

    def _run_for_logs(self, namespace: str, name: str) -> _PodRun | None:
        with self._lock:
            return self._by_name.get((namespace, name))

    def _make_cert(self) -> tuple[Path, Path]:
        cert, key = self.workdir / "kubelet.crt", self.workdir / "kubelet.key"
        if not (cert.exists() and key.exists()):
            subprocess.run(
                [
                    "openssl", "req", "-x509", "-newkey", "ec",
                    "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                    "-keyout", str(key), "-out", str(cert), "-days", "3650",
                    "-subj", "/CN=dlinfra-node-agent", "-addext", f"subjectAltName=IP:{HOST_IP}",
                ],
                check=True,
                capture_output=True,
            )  # fmt: skip
        return cert, key


class _LogServer(ThreadingHTTPServer):
    """The kubelet's HTTPS endpoint, as far as logs go."""

    daemon_threads = True

    def __init__(self, agent: NodeAgent, cert: Path, key: Path) -> None:
        super().__init__((HOST_IP, 0), _LogHandler)
        self.agent = agent
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert, key)
        # the handshake happens in the handler's thread, not in the accept loop
        self.socket = context.wrap_socket(
            self.socket, server_side=True, do_handshake_on_connect=False
        )


class _LogHandler(BaseHTTPRequestHandler):
    server: _LogServer

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("node agent: kubelet endpoint: " + format, *args)

    def _text(self, status: int, text: str) -> None:
        body = text.encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        url = urlsplit(self.path)
        parts = [unquote(p) for p in url.path.strip("/").split("/")]
        if parts == ["healthz"]:
            self._text(200, "ok")
            return
        if len(parts) != 4 or parts[0] != "containerLogs":
            self._text(404, f"not found: {url.path}")
            return
        _, namespace, name, container = parts
        agent = self.server.agent
        run = agent._run_for_logs(namespace, name)
        if run is None or container != run.container:
            self._text(404, f'container "{container}" in pod "{name}" is not on this node')
            return
        query = parse_qs(url.query)

        def number(key: str) -> int | None:
            values = query.get(key)
            return int(values[0]) if values and values[0].lstrip("-").isdigit() else None

        follow = query.get("follow", ["false"])[0].lower() in ("true", "1")
        tail, limit = number("tailLines"), number("limitBytes")
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.end_headers()
        with contextlib.suppress(BrokenPipeError, ConnectionResetError, ssl.SSLError):
            self._stream(run, follow=follow, tail=tail, limit=limit)

    def _stream(self, run: _PodRun, *, follow: bool, tail: int | None, limit: int | None) -> None:
        stop = self.server.agent._stop
        with run.log_path.open("rb") as f:
            if tail is not None and tail >= 0:
                data = f.read()
                keep = data.splitlines(keepends=True)[-tail:] if tail > 0 else []
                f.seek(len(data) - sum(map(len, keep)))
            sent, finished = 0, False
            while not stop.is_set():
                chunk = f.read(64 * 1024)
                if chunk:
                    if limit is not None:
                        chunk = chunk[: max(0, limit - sent)]
                    self.wfile.write(chunk)
                    self.wfile.flush()
                    sent += len(chunk)
                    if limit is not None and sent >= limit:
                        return
                    continue
                if not follow or finished:
                    return
                finished = run.done.is_set()  # one more read after the process ended
                if not finished:
                    run.done.wait(0.2)
