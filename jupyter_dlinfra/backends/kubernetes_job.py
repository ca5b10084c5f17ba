"""The ``batch/v1`` Job of a launch: what the ``kubernetes`` backend creates, and its names.

:class:`JobTemplate` holds what every Job of one backend shares (namespace, the pod options of
:class:`~jupyter_dlinfra.kube.pod_template.PodTemplate`, how the job's directory is mounted,
deadlines) and makes the manifest of a launch; it asks the API nothing, except the nodes' GPU
products to match a GPU model. The labels and annotations here are how the backend finds its Jobs
again (:mod:`jupyter_dlinfra.backends.kubernetes`).

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
  :func:`~jupyter_dlinfra.kube.priority.ensure_priority_classes`); a class it does not map gets
  the cluster's default. The integer ``launch.priority`` has no Kubernetes equivalent without a
  class and is only recorded in an annotation;
- ``serviceAccountName``, ``nodeSelector``, ``tolerations``, ``activeDeadlineSeconds``,
  ``ttlSecondsAfterFinished`` from the options of the same names (the last is alpha before
  Kubernetes 1.21 and silently dropped by an older API server without its feature gate).

GPU model. Our API names a model by a substring (``"A100"``), Kubernetes selects nodes by exact
label values. The template lists the nodes that carry ``gpu_product_label`` (gpu-feature-discovery's
``nvidia.com/gpu.product``, e.g. ``NVIDIA-A100-SXM4-80GB``) plus the names in ``gpu_products`` (for
node pools that scale from zero), keeps the products that contain the model (case-insensitive; an
exact match alone wins) and requires them through node affinity (``In``). A model no product
matches is refused with the list of known products. Without the right to list nodes, only
``gpu_products`` and the model itself, taken as an exact label value, are used.

A chained launch (``launch.after``) is created held: ``parallelism: 0`` and no deadline, or, with
Kueue, suspended without the queue label; its parents are in the ``after`` annotation (see
"Chains" in :mod:`jupyter_dlinfra.backends.kubernetes`).

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
expect the pod's log. The container's command is a small Python wrapper (``python -c``, the source
of :mod:`jupyter_dlinfra.backends.kubernetes_wrapper`) that starts ``[python] + argv[1:]`` and
copies its output, as it arrives, to both its own stdout (the pod log) and the log file
(appended). It forwards SIGTERM/SIGINT/SIGHUP to the command and exits with the command's exit
code (``128 + N`` for a death by signal N, like a shell). Python rather than
``sh -c 'cmd | tee -a log'``: a POSIX shell has no ``pipefail`` (the pipe's status would be
``tee``'s), a shell as the container's PID 1 ignores SIGTERM unless it traps it (the runner would
never hear a cancel and be SIGKILLed after the grace period, without writing its notebook), and
the image is certain to have ``python`` (it runs the runner), not ``tee`` or ``mkfifo``.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import posixpath
import uuid
from collections.abc import Sequence
from importlib import resources
from typing import Any
from urllib.parse import quote

from jupyter_dlinfra.backends.base import BackendError, JobHandle, JobLaunch
from jupyter_dlinfra.kube.api import (
    KUEUE_QUEUE_LABEL,
    PREFIX,
    PRIORITY_CLASS_ANNOTATION,
    USER_LABEL,
    KubeApi,
)
from jupyter_dlinfra.kube.pod_template import PodTemplate

__all__ = [
    "AFTER_ANNOTATION",
    "CANCELLED_ANNOTATION",
    "CONTAINER",
    "JOB_ID_LABEL",
    "NAME_ANNOTATION",
    "PRIORITY_ANNOTATION",
    "WORKDIR_ANNOTATION",
    "JobTemplate",
    "job_name",
    "jobs_path",
    "wrapper_source",
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


@functools.cache
def wrapper_source() -> str:
    """The container's program (``python -c``): run argv, copy its output to the pod log AND the
    log file, forward stop signals, exit with its code (see "Logs" above)."""
    module = resources.files("jupyter_dlinfra.backends") / "kubernetes_wrapper.py"
    return module.read_text(encoding="utf-8")


def job_name(job_id: int, workdir: str) -> str:
    """A fresh DNS-1123 name: the job id and 8 hex digits of its directory and a random part."""
    digest = hashlib.sha256(f"{workdir}\0{uuid.uuid4()}".encode()).hexdigest()[:8]
    return f"dlinfra-job-{job_id}-{digest}"


def jobs_path(namespace: str, name: str | None = None) -> str:
    """The API path of the Jobs of ``namespace``, or of the Job ``name`` there."""
    path = f"/apis/batch/v1/namespaces/{quote(namespace, safe='')}/jobs"
    return f"{path}/{quote(name, safe='')}" if name else path


class JobTemplate:
    """What every Job of one backend shares, and the manifest of a launch.

    ``backend`` is the backend's name, which a parent's handle must carry.
    """

    def __init__(
        self,
        *,
        backend: str,
        kube: KubeApi,
        pods: PodTemplate,
        namespace: str,
        workdir_claim: str | None = None,
        workdir_mount: str | None = None,
        active_deadline_s: int | None = None,
        ttl_after_finished_s: int | None = None,
    ) -> None:
        self.backend = backend
        self.kube = kube
        self.pods = pods
        self.namespace = namespace
        self.workdir_claim = workdir_claim or None
        self.workdir_mount = workdir_mount or None
        self.active_deadline_s = active_deadline_s
        self.ttl_after_finished_s = ttl_after_finished_s

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
            if parent.backend != self.backend:
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

    def manifest(self, launch: JobLaunch, *, name: str | None = None) -> dict[str, Any]:
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
        python = self.pods.python
        args = [self._in_pod(str(a), workdir, in_pod) for a in launch.argv[1:]]
        command = [python, "-c", wrapper_source(), self._in_pod(log_path, workdir, in_pod), *args]
        name = name or job_name(launch.job_id, workdir)
        labels = self.pods.object_labels(launch.user, {JOB_ID_LABEL: str(launch.job_id)})
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
        container = self.pods.container(
            CONTAINER, command, self.pods.env(launch.env), gpus=launch.gpus, mounts=[mount]
        )
        container["workingDir"] = in_pod
        pod = self.pods.pod_spec(
            self.kube,
            container,
            gpus=launch.gpus,
            model=launch.model,
            priority_class=launch.priority_class,
            volumes=[volume],
            node=launch.node,
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
        kueue_queue = self.pods.kueue_queue
        if kueue_queue:
            spec["suspend"] = True
            if not parents:
                labels[KUEUE_QUEUE_LABEL] = kueue_queue
        if parents:
            # held until the parents succeeded: see "Chains" in the backend's documentation
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
