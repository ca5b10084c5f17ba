"""The ``kubernetes`` backend: each job is a ``batch/v1`` Job, placed (GPUs included) by Kubernetes.

The backend talks to the API server through :class:`~jupyter_dlinfra.kube.api.KubeApi`:
the official ``kubernetes`` client (the optional extra:
``pip install jupyter-dlinfra[kubernetes]``), its ``ApiClient`` only, with plain-JSON requests and
answers. Credentials come from
``api_client``, else ``kubeconfig`` (and ``context``), else the pod's service account when
``KUBERNETES_SERVICE_HOST`` is set (the gateway runs in the cluster), else the default kubeconfig
(``~/.kube/config``, ``$KUBECONFIG``). The options it shares with the kernel pod launcher (image,
placement, resources, labels) make its pods through
:class:`~jupyter_dlinfra.kube.pod_template.PodTemplate`.

The Job
-------

One Job per launch, named ``dlinfra-job-<job id>-<8 hex>`` (the random part: a job queued again
after a preemption gets a new Job while the old one may still be terminating), in ``namespace``:

- labels ``app.kubernetes.io/managed-by=jupyter-dlinfra``, ``dlinfra.jupyter.org/job-id``,
  ``dlinfra.jupyter.org/user`` (the user made a valid label value; the exact name is in the
  annotation of the same key) and ``labels``, on the Job and on its pod; annotations with the
  job's directory and name;
- ``backoffLimit: 0`` and ``restartPolicy: Never``: a job runs once (the in-job runner is not
  idempotent; a retry is a new submission);
- one container, ``job``, from ``image``, with ``launch.env``, the job's directory as working
  directory, and ``limits: {nvidia.com/gpu: N}`` when the job wants GPUs (the device plugin then
  exposes exactly those GPUs in the container);
- ``priorityClassName`` from ``priority_classes`` (our class -> a Kubernetes PriorityClass, see
  :func:`ensure_priority_classes`); a class it does not map gets the cluster's default. The
  integer ``launch.priority`` has no Kubernetes equivalent without a class and is only recorded
  in an annotation;
- ``serviceAccountName``, ``nodeSelector``, ``tolerations``, ``activeDeadlineSeconds``,
  ``ttlSecondsAfterFinished`` from the options of the same names (the last is alpha before
  Kubernetes 1.21 and silently dropped by an older API server without its feature gate).

GPU model. Our API names a model by a substring (``"A100"``), Kubernetes selects nodes by exact
label values. The backend lists the nodes that carry ``gpu_product_label`` (gpu-feature-discovery's
``nvidia.com/gpu.product``, e.g. ``NVIDIA-A100-SXM4-80GB``) plus the names in ``gpu_products`` (for
node pools that scale from zero), keeps the products that contain the model (case-insensitive; an
exact match alone wins) and requires them through node affinity (``In``). A model no product
matches is refused with the list of known products. Without the right to list nodes, only
``gpu_products`` and the model itself, taken as an exact label value, are used.

The job's directory
-------------------

Every path in the launch (the runner's argument, the log) is inside ``launch.workdir``, which
the gateway wrote. The pod mounts that directory alone: from the PersistentVolumeClaim
``workdir_claim`` (whose root is the gateway's jobs root, the directory that holds every job
directory) with ``subPath`` = the directory's name, or, when ``workdir_claim`` is None, as a
``hostPath`` volume of the same path (a single-host cluster, or nodes that share that path). It is
mounted at ``<workdir_mount>/<name>``; ``workdir_mount`` defaults to the jobs root's own path on
the gateway, so the launch's paths work unchanged in the pod (otherwise they are rewritten).
``extra_volumes`` and ``extra_volume_mounts`` (Kubernetes JSON) add more, e.g. the users' homes:
the runner runs the kernel in the notebook's own directory, which must exist in the pod too.

Logs
----

The server shows ``launch.log_path``, a file on the shared volume; people and ``kubectl logs``
expect the pod's log. The container's command is a small Python wrapper (``python -c``) that
starts ``[python] + argv[1:]`` and copies its output, as it arrives, to both its own stdout (the
pod log) and the log file (appended). It forwards SIGTERM/SIGINT/SIGHUP to the command and exits
with the command's exit code (``128 + N`` for a death by signal N, like a shell). Python rather
than ``sh -c 'cmd | tee -a log'``: a POSIX shell has no ``pipefail`` (the pipe's status would be
``tee``'s), a shell as the container's PID 1 ignores SIGTERM unless it traps it (the runner would
never hear a cancel and be SIGKILLed after the grace period, without writing its notebook), and
the image is certain to have ``python`` (it runs the runner), not ``tee`` or ``mkfifo``.

Chains (``launch.after``)
-------------------------

Kubernetes has no dependencies between Jobs, and ``spec.suspend`` only exists from 1.21 (alpha;
beta and on by default from 1.22). A child is created at once but held: ``parallelism: 0`` (a Job
that may run no pod, which every version honours), with its parents in an annotation. Each
``poll`` looks at the held Jobs it is asked about: when every parent's Job is complete (or, for a
parent Kubernetes forgot, its ``status.json`` says it succeeded), it sets ``parallelism: 1`` and
the deadline (``active_deadline_s`` plus the time the child waited, since the Job's clock started
at its creation); when a parent failed, was cancelled or is lost, it cancels the child and answers
CANCELLED (``DependencyNeverSatisfied``, as SLURM says). The hold is in the cluster, so a restarted
server goes on where the last one stopped. Parents must be Jobs of this backend.

Kueue (``kueue_queue``)
-----------------------

The Job gets the label ``kueue.x-k8s.io/queue-name`` and is created with ``suspend: true``; Kueue
admits it (unsuspends it) when the queue's quota allows, and ``poll`` answers PENDING with a
reason saying so meanwhile. An API server that does not know ``spec.suspend`` (before 1.21, or
without the feature gate) would drop it silently and the Job would run past Kueue: the first
Kueue submission checks with a server-side dry run and refuses with a clear error. A held child
(a chain) is created suspended without the queue label, which ``poll`` adds once its parents
succeeded (Kueue ignores Jobs without it, unless it manages every Job of the namespace).

Polling
-------

``poll`` makes one list of our Jobs and one list of our pods (both by the managed-by label) per
namespace, whatever the number of handles, plus one list of Job events in a namespace where a
Job has no pod yet (to say why the Job controller cannot create it, e.g. an unknown
PriorityClass). It answers:

- a Job with condition ``Complete`` -> SUCCEEDED (exit code 0);
- a Job with condition ``Failed`` -> FAILED, with the pod's container exit code and reason
  (``exit code 3 (Error)``, ``OOMKilled``), or the condition's reason and message
  (``DeadlineExceeded: Job was active longer than specified deadline``);
- a Job cancelled through this backend -> RUNNING (reason ``stopping``) while its pod still
  runs, then CANCELLED;
- a pod that runs -> RUNNING;
- otherwise PENDING, with the scheduler's own words from the pod's ``PodScheduled`` condition
  (``0/2 nodes are available: 2 Insufficient nvidia.com/gpu.``), or the container's waiting
  reason (``ErrImagePull: ...``), or why the pod cannot be created, or that it waits for Kueue or
  for its parents;
- no Job: what the runner's ``status.json`` says (a Job removed by ``ttl_after_finished_s``),
  CANCELLED for a Job this backend deleted, else LOST.

Cancel
------

``cancel`` first marks the Job (annotation ``dlinfra.jupyter.org/cancelled=true``), then deletes it
with ``propagationPolicy=Foreground``: the pod gets SIGTERM and its grace period (the runner
writes the notebook so far and a ``cancelled`` status), and the Job stays visible, marked, until
its pod is gone, so that a restarted server still reads it as CANCELLED. Once the Job is gone,
a backend that cancelled it or saw its mark remembers the cancel in memory; a new server that
never saw the mark reads ``status.json`` (the runner's ``cancelled``), and with neither the job
reads as LOST (which the server records as cancelled, since it asked for the cancel). Deleting
is what Kubernetes offers: a cancelled Job does not stay around as a record, unlike a SLURM job.

Errors of the API become :class:`~jupyter_dlinfra.backends.base.BackendError` with the HTTP status
and Kubernetes' own message.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import posixpath
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from jupyter_dlinfra.backends.base import (
    BackendError,
    BackendState,
    BackendStatus,
    JobBackend,
    JobHandle,
    JobLaunch,
)
from jupyter_dlinfra.backends.local import status_from_file
from jupyter_dlinfra.core.scheduling.policy import PriorityClass
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
    conditions,
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
    "KubernetesBackend",
    "ensure_priority_classes",
    "priority_class_manifests",
    "priority_class_name",
]

JOB_ID_LABEL = PREFIX + "job-id"
#: annotations
WORKDIR_ANNOTATION = PREFIX + "workdir"
NAME_ANNOTATION = PREFIX + "name"
PRIORITY_ANNOTATION = PREFIX + "priority"
CANCELLED_ANNOTATION = PREFIX + "cancelled"
#: JSON list of the parents ({"namespace", "name", "workdir"}) of a held Job; removed on release
AFTER_ANNOTATION = PREFIX + "after"
#: the container's name in the job's pod
CONTAINER = "job"
#: PriorityClass values above this are reserved for the system (Kubernetes' own bound)
MAX_PRIORITY_VALUE = 1_000_000_000
#: describe() asks the API at most this often (seconds)
DESCRIBE_TTL_S = 10.0

#: the container's command: run argv, copy its output to the pod log AND the log file, forward
#: stop signals, exit with its code (see "Logs" in the module's documentation)
_TEE = r"""
import os, signal, subprocess, sys, threading
# the job runs with the wrapper's own Python, the image's
log_path, argv = sys.argv[1], [sys.executable, *sys.argv[2:]]
try:
    log = open(log_path, "ab")
except OSError as err:
    sys.stderr.write("dlinfra: cannot open the job log %s: %s\n" % (log_path, err))
    sys.exit(125)
try:
    child = subprocess.Popen(
        argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
except OSError as err:
    msg = "dlinfra: cannot start %s: %s\n" % (argv[0], err)
    sys.stderr.write(msg)
    log.write(msg.encode())
    sys.exit(127)
def forward(signum, frame):
    try:
        child.send_signal(signum)
    except OSError:
        pass
for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
    signal.signal(s, forward)
def copy():
    out = sys.stdout.buffer
    while True:
        chunk = os.read(child.stdout.fileno(), 65536)
        if not chunk:
            break
        for f in (out, log):
            try:
                f.write(chunk)
                f.flush()
            except (OSError, ValueError):
                pass
reader = threading.Thread(target=copy, daemon=True)
reader.start()
code = child.wait()
# a process the command left behind may hold the pipe open: do not wait for it for long
reader.join(10)
log.close()
sys.exit(128 - code if code < 0 else code)
"""


# --- names and labels ------------------------------------------------------------------------


def _job_name(job_id: int, workdir: str) -> str:
    """A fresh DNS-1123 name: the job id and 8 hex digits of its directory and a random part."""
    digest = hashlib.sha256(f"{workdir}\0{uuid.uuid4()}".encode()).hexdigest()[:8]
    return f"dlinfra-job-{job_id}-{digest}"


def priority_class_name(klass: str, prefix: str = "dlinfra-") -> str:
    """The Kubernetes PriorityClass for one of our classes: ``dlinfra-batch``."""
    name = dns_name(f"{prefix}{klass}")[:253]
    if not name:
        raise BackendError(f"priority class {klass!r} gives no valid Kubernetes name")
    return name


def _annotations(obj: Mapping[str, Any]) -> Mapping[str, str]:
    return meta(obj).get("annotations") or {}


def _condition(obj: Mapping[str, Any], kind: str) -> Mapping[str, Any] | None:
    for cond in conditions(obj):
        if cond.get("type") == kind and cond.get("status") == "True":
            return cond
    return None


def _parse_time(stamp: Any) -> float | None:
    if not isinstance(stamp, str):
        return None
    try:
        parsed = datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%SZ")
        return parsed.replace(tzinfo=timezone.utc).timestamp()
    except ValueError:
        return None


# --- priority classes ------------------------------------------------------------------------


def priority_class_manifests(
    classes: Iterable[PriorityClass], *, prefix: str = "dlinfra-", preemption: bool = True
) -> list[dict[str, Any]]:
    """``scheduling.k8s.io/v1`` PriorityClass objects for our classes (value = our priority).

    Our ``preemptible`` says whether a class's work may *be* stopped for others; Kubernetes'
    ``preemptionPolicy`` says whether a class's pods may *stop* lower ones, and any pod of a lower
    value may be a victim. So a class gets ``PreemptLowerPriority`` only when there is a class of
    ours below it and every one of them is preemptible: then a preemption never hits work we
    promised not to stop (with the defaults: ``interactive`` and ``batch`` preempt, ``low``, the
    lowest, never does, and so never stops other tenants' pods of a lower value either). Every
    other class, and every class when ``preemption`` is False, gets ``Never``.
    """
    ordered = sorted(classes, key=lambda c: (-c.priority, c.name))
    manifests: list[dict[str, Any]] = []
    seen: dict[str, str] = {}
    for klass in ordered:
        name = priority_class_name(klass.name, prefix)
        if name in seen:
            raise BackendError(
                f"priority classes {seen[name]!r} and {klass.name!r} both give "
                f"the Kubernetes name {name!r}"
            )
        seen[name] = klass.name
        if not -(2**31) <= klass.priority <= MAX_PRIORITY_VALUE:
            raise BackendError(
                f"priority class {klass.name!r}: a Kubernetes PriorityClass value must be at "
                f"most {MAX_PRIORITY_VALUE}, not {klass.priority}"
            )
        lower = [c for c in ordered if c.priority < klass.priority]
        preempts = preemption and bool(lower) and all(c.preemptible for c in lower)
        manifests.append(
            {
                "apiVersion": "scheduling.k8s.io/v1",
                "kind": "PriorityClass",
                "metadata": {
                    "name": name,
                    "labels": {MANAGED_BY: MANAGER},
                    "annotations": {PREFIX + "class": klass.name},
                },
                "value": klass.priority,
                "globalDefault": False,
                "preemptionPolicy": "PreemptLowerPriority" if preempts else "Never",
                "description": (
                    f"jupyter-dlinfra priority class {klass.name!r}"
                    + (" (preemptible)" if klass.preemptible else "")
                ),
            }
        )
    return manifests


def ensure_priority_classes(
    api: ApiClient,
    classes: Iterable[PriorityClass],
    *,
    prefix: str = "dlinfra-",
    preemption: bool = True,
    prune: bool = True,
    timeout: float = 30.0,
) -> dict[str, str]:
    """Create or update the PriorityClasses of our classes; our class -> its Kubernetes name.

    The gateway calls this at start and passes the answer as the backend's
    ``priority_classes``. A class whose value or preemption policy changed is deleted and created
    again (Kubernetes does not let them change; pods that run keep the priority they got). With
    ``prune``, PriorityClasses this function created for classes the policy no longer has go.
    Needs the right to get, list, create, patch and delete ``priorityclasses`` (cluster-wide).
    """
    rest = KubeApi(api, timeout=timeout)
    base = "/apis/scheduling.k8s.io/v1/priorityclasses"
    manifests = priority_class_manifests(classes, prefix=prefix, preemption=preemption)
    names: dict[str, str] = {}
    for manifest in manifests:
        name = manifest["metadata"]["name"]
        names[manifest["metadata"]["annotations"][PREFIX + "class"]] = name
        path = f"{base}/{quote(name, safe='')}"
        try:
            current = rest.request("GET", path, what=f"read PriorityClass {name}")
        except ApiError as err:
            if err.status != 404:
                raise
            current = None
        if current is not None:
            same = (
                current.get("value") == manifest["value"]
                and current.get("preemptionPolicy", "PreemptLowerPriority")
                == manifest["preemptionPolicy"]
            )
            if same:
                patch = {k: manifest[k] for k in ("metadata", "description")}
                rest.request(
                    "PATCH",
                    path,
                    what=f"update PriorityClass {name}",
                    body=patch,
                    content_type="application/merge-patch+json",
                )
                continue
            rest.request("DELETE", path, what=f"replace PriorityClass {name}")
        rest.request("POST", base, what=f"create PriorityClass {name}", body=manifest)
    if prune:
        wanted = set(names.values())
        for item in rest.items(
            base, what="list PriorityClasses", query=[("labelSelector", f"{MANAGED_BY}={MANAGER}")]
        ):
            name = meta(item).get("name", "")
            if name.startswith(prefix) and name not in wanted:
                with contextlib.suppress(ApiError):
                    rest.request(
                        "DELETE",
                        f"{base}/{quote(name, safe='')}",
                        what=f"delete PriorityClass {name}",
                    )
    return names


# --- the backend -----------------------------------------------------------------------------


class KubernetesBackend(JobBackend):
    name = "kubernetes"
    places_gpus = True

    def __init__(
        self,
        *,
        # the namespace of the Jobs
        namespace: str = "default",
        # the container image: Python with jupyter-dlinfra (and the notebooks' libraries)
        image: str = "jupyter-dlinfra:latest",
        # the image's Python; replaces argv[0] (the gateway's own interpreter)
        python: str = "python",
        # the pods' ServiceAccount; None: the namespace's default
        service_account: str | None = None,
        # node labels every job's pod requires (merged with the GPU model's affinity)
        node_selector: Mapping[str, str] | None = None,
        # pod tolerations in Kubernetes JSON form ({"key": ..., "operator": ..., "effect": ...})
        tolerations: Sequence[Mapping[str, Any]] = (),
        # PersistentVolumeClaim whose root is the jobs root; None: a hostPath volume
        workdir_claim: str | None = None,
        # where the jobs root is mounted in the pod; None: its path on the gateway
        workdir_mount: str | None = None,
        # our priority class -> Kubernetes PriorityClass; unmapped: the cluster's default
        priority_classes: Mapping[str, str] | None = None,
        # a Kueue LocalQueue: Jobs are created suspended with its label; None: no Kueue
        kueue_queue: str | None = None,
        # extra labels on every Job and pod
        labels: Mapping[str, str] | None = None,
        # extra pod volumes and container mounts, Kubernetes JSON form
        extra_volumes: Sequence[Mapping[str, Any]] = (),
        extra_volume_mounts: Sequence[Mapping[str, Any]] = (),
        # the container's image pull policy; None: Kubernetes' default
        image_pull_policy: str | None = None,
        # the container's resources besides GPUs, e.g. {"requests": {"cpu": "4"}}
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
        # seconds a job may run once started (activeDeadlineSeconds); None: no limit
        active_deadline_s: int | None = None,
        # seconds an ended Job stays before Kubernetes deletes it; None: it stays
        ttl_after_finished_s: int | None = None,
        # seconds one API request may take
        timeout: float = 30.0,
    ) -> None:
        # a missing client package is a configuration error now, not at the first job
        self.kube = KubeApi(api_client, kubeconfig=kubeconfig, context=context, timeout=timeout)
        self.template = PodTemplate(
            owner="the backend",
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
            reserved_labels=(MANAGED_BY, JOB_ID_LABEL, USER_LABEL, KUEUE_QUEUE_LABEL),
        )
        self.namespace = namespace
        self.workdir_claim = workdir_claim or None
        self.workdir_mount = workdir_mount or None
        self.active_deadline_s = active_deadline_s
        self.ttl_after_finished_s = ttl_after_finished_s
        #: (namespace, name) of Jobs this backend cancelled (they vanish once deleted)
        self._cancelled: set[tuple[str, str]] = set()
        self._described: tuple[float, dict[str, Any]] | None = None
        self._suspend_ok: bool | None = None

    def api(self) -> KubeApi:
        """The cluster's API (its requests raise BackendError if no configuration is usable)."""
        return self.kube

    # --- submit ----------------------------------------------------------------------------

    def _mount_root(self, workdir: str) -> tuple[str, str, str]:
        """(jobs root on the gateway, the directory's name, the job directory in the pod)."""
        workdir = posixpath.normpath(os.path.abspath(workdir))
        root, name = posixpath.split(workdir)
        if not name or not root:
            raise BackendError(f"the job directory {workdir!r} cannot be mounted in a pod")
        in_pod = posixpath.join(self.workdir_mount or root, name)
        return root, name, in_pod

    @staticmethod
    def _in_pod(path: str, workdir: str, in_pod: str) -> str:
        """A gateway path under ``workdir`` as the pod sees it."""
        if path == workdir:
            return in_pod
        if path.startswith(workdir + "/"):
            return in_pod + path[len(workdir) :]
        return path

    def _parents(self, after: Sequence[JobHandle]) -> list[dict[str, Any]]:
        parents = []
        for parent in after:
            if parent.backend != self.name:
                raise BackendError(
                    "a Kubernetes job can only wait for Kubernetes jobs, "
                    f"not {parent.backend}:{parent.ref}"
                )
            parents.append(
                {
                    "namespace": str(parent.detail.get("namespace") or self.namespace),
                    "name": parent.ref,
                    "workdir": parent.detail.get("workdir"),
                }
            )
        return parents

    def job_manifest(self, launch: JobLaunch, *, name: str | None = None) -> dict[str, Any]:
        """The ``batch/v1`` Job for a launch (no API call, except to match a GPU model)."""
        if not launch.argv:
            raise BackendError("the job has no command to run")
        workdir = posixpath.normpath(os.path.abspath(launch.workdir))
        _root, dirname, in_pod = self._mount_root(workdir)
        log_path = posixpath.normpath(
            os.path.abspath(launch.log_path or posixpath.join(workdir, "job.log"))
        )
        if not log_path.startswith(workdir + "/"):
            raise BackendError(
                f"the log {log_path!r} must be inside the job directory {workdir!r}, "
                "the only directory mounted in the job's pod"
            )
        python = self.template.python
        args = [self._in_pod(str(a), workdir, in_pod) for a in launch.argv[1:]]
        command = [python, "-c", _TEE, self._in_pod(log_path, workdir, in_pod), *args]
        name = name or _job_name(launch.job_id, workdir)
        labels = self.template.object_labels(launch.user, {JOB_ID_LABEL: str(launch.job_id)})
        annotations = {
            USER_LABEL: launch.user,
            WORKDIR_ANNOTATION: workdir,
            NAME_ANNOTATION: launch.name,
            PRIORITY_ANNOTATION: str(launch.priority),
        }
        if launch.priority_class is not None:
            annotations[PRIORITY_CLASS_ANNOTATION] = launch.priority_class
        if self.workdir_claim:
            volume: dict[str, Any] = {
                "name": "workdir",
                "persistentVolumeClaim": {"claimName": self.workdir_claim},
            }
            mount: dict[str, Any] = {"name": "workdir", "mountPath": in_pod, "subPath": dirname}
        else:
            volume = {"name": "workdir", "hostPath": {"path": workdir, "type": "Directory"}}
            mount = {"name": "workdir", "mountPath": in_pod}
        container = self.template.container(
            CONTAINER, command, self.template.env(launch.env), gpus=launch.gpus, mounts=[mount]
        )
        container["workingDir"] = in_pod
        pod = self.template.pod_spec(
            self.kube,
            container,
            gpus=launch.gpus,
            model=launch.model,
            priority_class=launch.priority_class,
            volumes=[volume],
        )
        spec: dict[str, Any] = {
            "backoffLimit": 0,
            "completions": 1,
            "parallelism": 1,
            "template": {"metadata": {"labels": dict(labels)}, "spec": pod},
        }
        if self.active_deadline_s is not None:
            spec["activeDeadlineSeconds"] = int(self.active_deadline_s)
        if self.ttl_after_finished_s is not None:
            spec["ttlSecondsAfterFinished"] = int(self.ttl_after_finished_s)
        parents = self._parents(launch.after)
        kueue_queue = self.template.kueue_queue
        if kueue_queue:
            spec["suspend"] = True
            if not parents:
                labels[KUEUE_QUEUE_LABEL] = kueue_queue
        if parents:
            # held until the parents succeeded: see "Chains" in the module's documentation
            annotations[AFTER_ANNOTATION] = json.dumps(parents)
            if not kueue_queue:
                spec["parallelism"] = 0
                spec.pop("activeDeadlineSeconds", None)
        return {
            "apiVersion": "batch/v1",
            "kind": "Job",
            "metadata": {
                "name": name,
                "namespace": self.namespace,
                "labels": labels,
                "annotations": annotations,
            },
            "spec": spec,
        }

    def _jobs_path(self, namespace: str, name: str | None = None) -> str:
        path = f"/apis/batch/v1/namespaces/{quote(namespace, safe='')}/jobs"
        return f"{path}/{quote(name, safe='')}" if name else path

    def _check_suspend(self, manifest: Mapping[str, Any]) -> None:
        """Refuse Kueue on an API server that would drop ``spec.suspend`` (before 1.21)."""
        if self._suspend_ok is None:
            answer = self.api().request(
                "POST",
                self._jobs_path(self.namespace),
                what="check that the cluster knows suspended Jobs (dry run)",
                query=[("dryRun", "All")],
                body=manifest,
            )
            self._suspend_ok = bool((answer or {}).get("spec", {}).get("suspend"))
        if not self._suspend_ok:
            raise BackendError(
                "this cluster's API server does not know spec.suspend (Kubernetes 1.21+ with "
                "the JobSuspend feature, on by default from 1.22), which Kueue needs: "
                "unset kueue_queue or upgrade the cluster"
            )

    def submit(self, launch: JobLaunch) -> JobHandle:
        manifest = self.job_manifest(launch)
        if self.template.kueue_queue:
            self._check_suspend(manifest)
        name = manifest["metadata"]["name"]
        created = self.api().request(
            "POST",
            self._jobs_path(self.namespace),
            what=f"create the Job {name} in namespace {self.namespace}",
            body=manifest,
        )
        return self._handle(created or manifest, launch.workdir)

    def _handle(self, job: Mapping[str, Any], workdir: str | None = None) -> JobHandle:
        metadata = meta(job)
        return JobHandle(
            backend=self.name,
            ref=str(metadata.get("name")),
            detail={
                "namespace": metadata.get("namespace") or self.namespace,
                "uid": metadata.get("uid"),
                "workdir": workdir or (metadata.get("annotations") or {}).get(WORKDIR_ANNOTATION),
            },
        )

    def recover(self, launch: JobLaunch) -> JobHandle | None:
        """The live Job of this launch: same job id and directory, neither cancelled nor deleted.

        A cancelled Job is never recovered: a job the server cancelled has a handle already, so
        a cancelled Job found here belongs to an earlier attempt (a preempted job queued again).
        """
        workdir = posixpath.normpath(os.path.abspath(launch.workdir))
        jobs = self.api().items(
            self._jobs_path(self.namespace),
            what=f"list the Jobs in namespace {self.namespace}",
            query=[
                (
                    "labelSelector",
                    f"{MANAGED_BY}={MANAGER},{JOB_ID_LABEL}={launch.job_id}",
                )
            ],
        )
        mine = [
            j
            for j in jobs
            if _annotations(j).get(WORKDIR_ANNOTATION) == workdir
            and _annotations(j).get(CANCELLED_ANNOTATION) != "true"
            and not meta(j).get("deletionTimestamp")
        ]
        if not mine:
            return None
        newest = max(mine, key=lambda j: str(meta(j).get("creationTimestamp") or ""))
        return self._handle(newest, launch.workdir)

    # --- poll ------------------------------------------------------------------------------

    def poll(self, handles: Sequence[JobHandle]) -> dict[str, BackendStatus]:
        view = _View(self)
        statuses: dict[str, BackendStatus] = {}
        for handle in handles:
            namespace = str(handle.detail.get("namespace") or self.namespace)
            view.load(namespace)
        for handle in handles:
            namespace = str(handle.detail.get("namespace") or self.namespace)
            job = view.job(namespace, handle.ref)
            if job is not None and AFTER_ANNOTATION in _annotations(job):
                statuses[handle.ref] = self._held(view, namespace, job)
            else:
                statuses[handle.ref] = view.status(namespace, handle.ref, handle.detail)
        return statuses

    def _held(self, view: _View, namespace: str, job: Mapping[str, Any]) -> BackendStatus:
        """A chained Job waiting for its parents: release it, cancel it, or say why it waits."""
        name = str(meta(job).get("name"))
        if _annotations(job).get(CANCELLED_ANNOTATION) == "true":
            return view.status(namespace, name, {})
        try:
            parents = json.loads(_annotations(job)[AFTER_ANNOTATION])
        except (ValueError, TypeError):
            parents = []
        waiting: list[str] = []
        for parent in parents if isinstance(parents, list) else []:
            ns, ref = str(parent.get("namespace") or namespace), str(parent.get("name"))
            view.load(ns)
            status = view.status(ns, ref, {"workdir": parent.get("workdir")})
            what = view.title(ns, ref)
            if status.state is BackendState.SUCCEEDED:
                continue
            if status.state.ended:
                self._delete(namespace, name, what=f"cancel the Job {name}")
                return BackendStatus(
                    state=BackendState.CANCELLED,
                    reason=f"DependencyNeverSatisfied: {what} it runs after {status.state.value}",
                )
            waiting.append(what)
        if waiting:
            return BackendStatus(
                state=BackendState.PENDING,
                reason=f"waiting for {', '.join(waiting)} to succeed",
            )
        self._release(namespace, job)
        return BackendStatus(state=BackendState.PENDING, reason="its parents succeeded; starting")

    def _release(self, namespace: str, job: Mapping[str, Any]) -> None:
        name = str(meta(job).get("name"))
        patch: dict[str, Any] = {"metadata": {"annotations": {AFTER_ANNOTATION: None}}}
        kueue_queue = self.template.kueue_queue
        if kueue_queue and (job.get("spec") or {}).get("suspend"):
            patch["metadata"]["labels"] = {KUEUE_QUEUE_LABEL: kueue_queue}
        else:
            spec: dict[str, Any] = {"parallelism": 1}
            if self.active_deadline_s is not None:
                # the Job's clock started at its creation: the wait does not count
                created = _parse_time(meta(job).get("creationTimestamp")) or time.time()
                waited = max(0, int(time.time() - created))
                spec["activeDeadlineSeconds"] = int(self.active_deadline_s) + waited
            patch["spec"] = spec
        self.api().request(
            "PATCH",
            self._jobs_path(namespace, name),
            what=f"start the Job {name} after its parents",
            body=patch,
            content_type="application/merge-patch+json",
        )

    # --- cancel ----------------------------------------------------------------------------

    def cancel(self, handle: JobHandle) -> None:
        namespace = str(handle.detail.get("namespace") or self.namespace)
        self._delete(namespace, handle.ref, what=f"cancel the Job {handle.ref}")

    def _delete(self, namespace: str, name: str, *, what: str) -> None:
        self._cancelled.add((namespace, name))
        path = self._jobs_path(namespace, name)
        try:
            self.api().request(
                "PATCH",
                path,
                what=what,
                body={"metadata": {"annotations": {CANCELLED_ANNOTATION: "true"}}},
                content_type="application/merge-patch+json",
            )
            self.api().request(
                "DELETE",
                path,
                what=what,
                body={
                    "apiVersion": "v1",
                    "kind": "DeleteOptions",
                    "propagationPolicy": "Foreground",
                },
            )
        except ApiError as err:
            if err.status != 404:  # gone already: nothing to stop
                raise

    # --- describe, close -------------------------------------------------------------------

    def describe(self) -> dict[str, Any]:
        now = time.monotonic()
        if self._described is not None and now - self._described[0] < DESCRIBE_TTL_S:
            return dict(self._described[1])
        info: dict[str, Any] = {
            "name": self.name,
            "places_gpus": self.places_gpus,
            "available": False,
            "namespace": self.namespace,
        }
        try:
            api = self.api()
            info["server"] = api.host
            api.request(
                "GET",
                self._jobs_path(self.namespace),
                what=f"list the Jobs in namespace {self.namespace}",
                query=[("limit", "1"), ("labelSelector", f"{MANAGED_BY}={MANAGER}")],
            )
        except BackendError as err:
            info["reason"] = str(err)
        else:
            info["available"] = True
        self._described = (now, info)
        return dict(info)

    def close(self) -> None:
        """Close the client this backend built (one given as ``api_client`` is the caller's)."""
        self.kube.close()


class _View:
    """What one poll saw: our Jobs and pods per namespace, listed once each."""

    def __init__(self, backend: KubernetesBackend) -> None:
        self.backend = backend
        self.jobs: dict[str, dict[str, Mapping[str, Any]]] = {}
        self.pods: dict[str, dict[str, list[Mapping[str, Any]]]] = {}
        self.events: dict[str, dict[str, str]] = {}

    def load(self, namespace: str) -> None:
        if namespace in self.jobs:
            return
        api = self.backend.api()
        selector = [("labelSelector", f"{MANAGED_BY}={MANAGER}")]
        ns = quote(namespace, safe="")
        jobs = api.items(
            f"/apis/batch/v1/namespaces/{ns}/jobs",
            what=f"list the Jobs in namespace {namespace}",
            query=selector,
        )
        pods = api.items(
            f"/api/v1/namespaces/{ns}/pods",
            what=f"list the pods in namespace {namespace}",
            query=selector,
        )
        self.jobs[namespace] = {str(meta(j).get("name")): j for j in jobs}
        by_uid: dict[str, list[Mapping[str, Any]]] = {}
        for pod in pods:
            for owner in meta(pod).get("ownerReferences") or []:
                if owner.get("kind") == "Job":
                    by_uid.setdefault(str(owner.get("uid")), []).append(pod)
        self.pods[namespace] = {
            name: by_uid.get(str(meta(job).get("uid")), [])
            for name, job in self.jobs[namespace].items()
        }

    def job(self, namespace: str, name: str) -> Mapping[str, Any] | None:
        return self.jobs.get(namespace, {}).get(name)

    def title(self, namespace: str, name: str) -> str:
        """``job 12`` (our id) for a Job, else its name."""
        job = self.job(namespace, name)
        job_id = (meta(job).get("labels") or {}).get(JOB_ID_LABEL) if job else None
        return f"job {job_id}" if job_id else name

    def _failed_create(self, namespace: str, name: str) -> str | None:
        """The Job controller's last ``FailedCreate`` message for a Job (one list per namespace)."""
        if namespace not in self.events:
            found: dict[str, tuple[str, str]] = {}
            try:
                events = self.backend.api().items(
                    f"/api/v1/namespaces/{quote(namespace, safe='')}/events",
                    what=f"list the Job events in namespace {namespace}",
                    query=[("fieldSelector", "involvedObject.kind=Job,reason=FailedCreate")],
                )
            except BackendError:
                events = []
            for event in events:
                job = str((event.get("involvedObject") or {}).get("name"))
                stamp = str(event.get("lastTimestamp") or event.get("eventTime") or "")
                if job not in found or stamp >= found[job][0]:
                    found[job] = (stamp, str(event.get("message") or ""))
            self.events[namespace] = {k: v[1] for k, v in found.items()}
        return self.events[namespace].get(name) or None

    def status(self, namespace: str, name: str, detail: Mapping[str, Any]) -> BackendStatus:
        job = self.job(namespace, name)
        if job is None:
            return self._gone(namespace, name, detail)
        pods = sorted(
            self.pods.get(namespace, {}).get(name, []),
            key=lambda p: str(meta(p).get("creationTimestamp") or ""),
        )
        pod = pods[-1] if pods else None
        ended = terminated(pod, CONTAINER) if pod is not None else None
        code = exit_code(ended)
        if _annotations(job).get(CANCELLED_ANNOTATION) == "true":
            # remembered: once deleted, the Job is gone with its mark
            self.backend._cancelled.add((namespace, name))
        cancelled = (namespace, name) in self.backend._cancelled
        if _condition(job, "Complete"):
            return BackendStatus(
                state=BackendState.SUCCEEDED,
                exit_code=code if code is not None else 0,
            )
        failed = _condition(job, "Failed")
        if cancelled:
            if any(_pod_active(p) for p in pods):
                return BackendStatus(state=BackendState.RUNNING, reason="stopping: cancelled")
            return BackendStatus(state=BackendState.CANCELLED, reason="cancelled", exit_code=code)
        if failed:
            return BackendStatus(
                state=BackendState.FAILED,
                reason=_failure(failed, ended),
                exit_code=code,
            )
        if pod is not None and (pod.get("status") or {}).get("phase") in (
            "Running",
            "Succeeded",
            "Failed",
        ):
            # Succeeded/Failed: the Job controller says so in a moment
            return BackendStatus(state=BackendState.RUNNING)
        spec = job.get("spec") or {}
        if spec.get("suspend"):
            queue = (meta(job).get("labels") or {}).get(KUEUE_QUEUE_LABEL)
            why = f"waiting for Kueue to admit it (queue {queue})" if queue else "suspended"
            return BackendStatus(state=BackendState.PENDING, reason=why)
        if pod is not None:
            return BackendStatus(state=BackendState.PENDING, reason=pending_reason(pod, CONTAINER))
        problem = self._failed_create(namespace, name)
        if problem:
            return BackendStatus(
                state=BackendState.PENDING,
                reason=f"the Job controller cannot create its pod: {problem}",
            )
        return BackendStatus(
            state=BackendState.PENDING, reason="waiting for the Job controller to create its pod"
        )

    def _gone(self, namespace: str, name: str, detail: Mapping[str, Any]) -> BackendStatus:
        """A Job Kubernetes does not have: cancelled here, else its status.json, else LOST."""
        if (namespace, name) in self.backend._cancelled:
            return BackendStatus(state=BackendState.CANCELLED, reason="cancelled")
        where = f"Kubernetes has no Job {name} in namespace {namespace}"
        return status_from_file(detail.get("workdir"), where)


def _pod_active(pod: Mapping[str, Any]) -> bool:
    """Whether a pod may still run its command (not ended, bound to a node)."""
    phase = (pod.get("status") or {}).get("phase")
    return phase not in ("Succeeded", "Failed") and bool((pod.get("spec") or {}).get("nodeName"))


def _failure(condition: Mapping[str, Any], ended: Mapping[str, Any] | None) -> str:
    """Why a Job failed: the container's exit, else the Job condition's reason and message."""
    text = exit_text(ended)
    if text:
        return text
    reason = str(condition.get("reason") or "Failed")
    said = condition.get("message")
    return f"{reason}: {said}" if said else reason
