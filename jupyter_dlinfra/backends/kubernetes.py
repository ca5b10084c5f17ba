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

Where the rest lives:

- the Job of a launch (names, labels, the job's directory in the pod, the log wrapper):
  :mod:`jupyter_dlinfra.backends.kubernetes_job`, and the wrapper itself in
  :mod:`jupyter_dlinfra.backends.kubernetes_wrapper`;
- how one poll reads the Jobs and pods it listed: :mod:`jupyter_dlinfra.backends.kubernetes_view`;
- a distributed job of several nodes (with ``admission``): one Job per node, created together
  once the ledger admitted every node, read back as one job:
  :mod:`jupyter_dlinfra.backends.kubernetes_gang`;
- the PriorityClasses of our classes (``priority_classes``): :mod:`jupyter_dlinfra.kube.priority`.

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

Admission by the ledger (``admission``)
---------------------------------------

With ``admission`` (the gateway turns it on when its kernels are pods, so that its GPU inventory
is the cluster's, and no ``kueue_queue`` is set), a Job is created only once the
ledger's scheduler admitted it: the job asks the ledger for GPUs of any node (a request of the
pool), waits in the team's order (class, fair share, age; quotas, borrowing, reservations for
big requests) with a place, a reason and an estimated start, and once granted is created with a
required node affinity on the granted node (``matchFields`` on ``metadata.name``), asking the
cluster for that many ``nvidia.com/gpu``: kube-scheduler binds it there, the device plugin picks
the devices. A preempted job's Job is deleted and the job queued again, as a local job is.

An admitted Job whose pod stays unbound on its node (a taint, a node selector, GPUs taken by
pods the ledger does not know of, a node that went away) shows kube-scheduler's reason; after
``bind_timeout_s`` (300 s) the Job is deleted and its GPUs handed back to the ledger, which asks
again at the job's place in the order, avoiding that node (``Ledger.hand_back``): the admission
never holds capacity it cannot use for longer than that.

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
Job has no pod yet (a :class:`~jupyter_dlinfra.backends.kubernetes_view.JobView`, whose
documentation says how each state is read). A held Job of a chain is answered here: PENDING while
it waits for its parents (with their names), then released or cancelled as "Chains" says.

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

import json
import os
import posixpath
import time
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from jupyter_dlinfra.backends.base import (
    BackendError,
    BackendState,
    BackendStatus,
    JobBackend,
    JobHandle,
    JobLaunch,
)
from jupyter_dlinfra.backends.kubernetes_gang import (
    GANG_ANNOTATION,
    NODE_RANK_LABEL,
    gang_manifests,
    gang_status,
)
from jupyter_dlinfra.backends.kubernetes_job import (
    AFTER_ANNOTATION,
    CANCELLED_ANNOTATION,
    JOB_ID_LABEL,
    WORKDIR_ANNOTATION,
    JobTemplate,
    jobs_path,
)
from jupyter_dlinfra.backends.kubernetes_view import JobView
from jupyter_dlinfra.jobs import nodes as job_nodes
from jupyter_dlinfra.kube.api import (
    GPU_PRODUCT_LABEL,
    GPU_RESOURCE,
    KUEUE_QUEUE_LABEL,
    MANAGED_BY,
    MANAGER,
    USER_LABEL,
    ApiError,
    KubeApi,
    annotations_of,
    meta,
)
from jupyter_dlinfra.kube.pod_template import PodTemplate

if TYPE_CHECKING:
    from kubernetes.client import ApiClient

__all__ = ["KubernetesBackend"]

#: describe() asks the API at most this often (seconds)
DESCRIBE_TTL_S = 10.0


def parse_time(stamp: Any) -> float | None:
    """A Kubernetes timestamp (``2021-01-02T03:04:05Z``) as seconds since the epoch, or None."""
    if not isinstance(stamp, str):
        return None
    try:
        parsed = datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%SZ")
        return parsed.replace(tzinfo=timezone.utc).timestamp()
    except ValueError:
        return None


def _parts(handle: JobHandle) -> list[str]:
    """The node Jobs of a distributed job's handle (kubernetes_gang.py); [] for one Job."""
    parts = handle.detail.get("parts")
    return [str(p) for p in parts] if isinstance(parts, list) else []


class KubernetesBackend(JobBackend):
    name = "kubernetes"
    places_gpus = True
    rank_nodes: int | None = 1
    # roles run on one node: the job's launcher starts them in order in its pod
    runs_roles = True
    rank_nodes_why = (
        "runs a job on more than one node only when the ledger admits its jobs (admission: "
        "true), which grants every node of the job at once"
    )

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
        # Jobs are created once the ledger admitted them, on the node it chose (see above)
        admission: bool = False,
        # with admission: seconds an admitted Job's pod may stay unbound before it goes back
        bind_timeout_s: float = 300.0,
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
        if admission and kueue_queue:
            raise ValueError(
                "admission and kueue_queue: admission is either the ledger's or Kueue's; "
                "unset one of them"
            )
        if isinstance(bind_timeout_s, bool) or not isinstance(bind_timeout_s, (int, float)):
            raise ValueError(f"bind_timeout_s must be seconds, not {bind_timeout_s!r}")
        if not bind_timeout_s > 0:
            raise ValueError(f"bind_timeout_s must be above 0 seconds, got {bind_timeout_s}")
        self.ledger_admits = bool(admission)
        # a job of several nodes is one pod per node, all admitted together by the ledger
        # (kubernetes_gang.py); without admission, nothing would start its pods together
        self.rank_nodes = None if admission else 1
        self.bind_timeout = float(bind_timeout_s) if admission else None
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
        self.job_template = JobTemplate(
            backend=self.name,
            kube=self.kube,
            pods=self.template,
            namespace=namespace,
            workdir_claim=workdir_claim,
            workdir_mount=workdir_mount,
            active_deadline_s=active_deadline_s,
            ttl_after_finished_s=ttl_after_finished_s,
        )
        #: (namespace, name) of Jobs this backend cancelled (they vanish once deleted)
        self._cancelled: set[tuple[str, str]] = set()
        self._described: tuple[float, dict[str, Any]] | None = None
        self._suspend_ok: bool | None = None

    def api(self) -> KubeApi:
        """The cluster's API (its requests raise BackendError if no configuration is usable)."""
        return self.kube

    @property
    def namespace(self) -> str:
        """The namespace of the Jobs."""
        return self.job_template.namespace

    @property
    def active_deadline_s(self) -> int | None:
        """Seconds a job may run once started (``activeDeadlineSeconds``); None: no limit."""
        return self.job_template.active_deadline_s

    # --- submit ----------------------------------------------------------------------------

    def job_manifest(self, launch: JobLaunch, *, name: str | None = None) -> dict[str, Any]:
        """The ``batch/v1`` Job for a launch (no API call, except to match a GPU model)."""
        return self.job_template.manifest(launch, name=name)

    def _check_suspend(self, manifest: Mapping[str, Any]) -> None:
        """Refuse Kueue on an API server that would drop ``spec.suspend`` (before 1.21)."""
        if self._suspend_ok is None:
            answer = self.api().request(
                "POST",
                jobs_path(self.namespace),
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
        if launch.nodes is not None and launch.nodes > 1:
            return self._submit_gang(launch)
        manifest = self.job_manifest(launch)
        if self.template.kueue_queue:
            self._check_suspend(manifest)
        name = manifest["metadata"]["name"]
        created = self.api().request(
            "POST",
            jobs_path(self.namespace),
            what=f"create the Job {name} in namespace {self.namespace}",
            body=manifest,
        )
        return self._handle(created or manifest, launch.workdir)

    def _submit_gang(self, launch: JobLaunch) -> JobHandle:
        """Every node's Job of a distributed job, or none (see kubernetes_gang.py)."""
        if not self.ledger_admits:
            raise BackendError(f"the kubernetes backend {self.rank_nodes_why}")
        gang, manifests = gang_manifests(self.job_template, launch)
        # nothing of an earlier attempt (a preempted run) speaks for this one
        job_nodes.clear(Path(launch.workdir))
        made: list[str] = []
        try:
            for manifest in manifests:
                name = manifest["metadata"]["name"]
                self.api().request(
                    "POST",
                    jobs_path(self.namespace),
                    what=f"create the Job {name} in namespace {self.namespace}",
                    body=manifest,
                )
                made.append(name)
        except BackendError:
            for name in made:
                self._delete(self.namespace, name, what=f"delete the Job {name}")
            raise
        return self._gang_handle(gang, made, launch.workdir)

    def _gang_handle(self, gang: str, parts: Sequence[str], workdir: str) -> JobHandle:
        return JobHandle(
            backend=self.name,
            ref=gang,
            detail={
                "namespace": self.namespace,
                "workdir": posixpath.normpath(os.path.abspath(workdir)),
                "parts": list(parts),
            },
        )

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
            jobs_path(self.namespace),
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
            if annotations_of(j).get(WORKDIR_ANNOTATION) == workdir
            and annotations_of(j).get(CANCELLED_ANNOTATION) != "true"
            and not meta(j).get("deletionTimestamp")
        ]
        if launch.nodes is not None and launch.nodes > 1:
            return self._recover_gang(mine, launch.nodes, workdir)
        if not mine:
            return None
        newest = max(mine, key=lambda j: str(meta(j).get("creationTimestamp") or ""))
        return self._handle(newest, launch.workdir)

    def _recover_gang(
        self, mine: list[Mapping[str, Any]], count: int, workdir: str
    ) -> JobHandle | None:
        """The whole gang of a launch; a gang left half made (a server that died while
        creating it) is deleted, and the launch starts again."""
        gangs: dict[str, dict[int, str]] = {}
        for job in mine:
            gang = annotations_of(job).get(GANG_ANNOTATION)
            rank = (meta(job).get("labels") or {}).get(NODE_RANK_LABEL)
            if gang and rank is not None and rank.isdigit():
                gangs.setdefault(gang, {})[int(rank)] = str(meta(job).get("name"))
        for gang, parts in gangs.items():
            if sorted(parts) == list(range(count)):
                return self._gang_handle(gang, [parts[k] for k in range(count)], workdir)
            for name in parts.values():
                self._delete(self.namespace, name, what=f"delete the half-made Job {name}")
        return None

    # --- poll ------------------------------------------------------------------------------

    def poll(self, handles: Sequence[JobHandle]) -> dict[str, BackendStatus]:
        view = JobView(self.kube, self._cancelled)
        statuses: dict[str, BackendStatus] = {}
        for handle in handles:
            namespace = str(handle.detail.get("namespace") or self.namespace)
            view.load(namespace)
        for handle in handles:
            namespace = str(handle.detail.get("namespace") or self.namespace)
            parts = _parts(handle)
            if parts:
                workdir = handle.detail.get("workdir")
                statuses[handle.ref] = gang_status(
                    view,
                    namespace,
                    parts,
                    str(workdir) if workdir else None,
                    cancelled=(namespace, handle.ref) in self._cancelled,
                    stop=lambda name, ns=namespace: self._delete(  # type: ignore[misc]
                        ns, name, what=f"stop the Job {name}: another node of its job failed"
                    ),
                )
                continue
            job = view.job(namespace, handle.ref)
            if job is not None and AFTER_ANNOTATION in annotations_of(job):
                statuses[handle.ref] = self._held(view, namespace, job)
            else:
                statuses[handle.ref] = view.status(namespace, handle.ref, handle.detail)
        return statuses

    def _held(self, view: JobView, namespace: str, job: Mapping[str, Any]) -> BackendStatus:
        """A chained Job waiting for its parents: release it, cancel it, or say why it waits."""
        name = str(meta(job).get("name"))
        if annotations_of(job).get(CANCELLED_ANNOTATION) == "true":
            return view.status(namespace, name, {})
        try:
            parents = json.loads(annotations_of(job)[AFTER_ANNOTATION])
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
                created = parse_time(meta(job).get("creationTimestamp")) or time.time()
                waited = max(0, int(time.time() - created))
                spec["activeDeadlineSeconds"] = int(self.active_deadline_s) + waited
            patch["spec"] = spec
        self.api().request(
            "PATCH",
            jobs_path(namespace, name),
            what=f"start the Job {name} after its parents",
            body=patch,
            content_type="application/merge-patch+json",
        )

    # --- cancel ----------------------------------------------------------------------------

    def cancel(self, handle: JobHandle) -> None:
        namespace = str(handle.detail.get("namespace") or self.namespace)
        parts = _parts(handle)
        if parts:
            self._cancelled.add((namespace, handle.ref))
            for name in parts:
                self._delete(namespace, name, what=f"cancel the Job {name}")
            return
        self._delete(namespace, handle.ref, what=f"cancel the Job {handle.ref}")

    def _delete(self, namespace: str, name: str, *, what: str) -> None:
        self._cancelled.add((namespace, name))
        path = jobs_path(namespace, name)
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
            "ledger_admits": self.ledger_admits,
            "available": False,
            "namespace": self.namespace,
        }
        try:
            api = self.api()
            info["server"] = api.host
            api.request(
                "GET",
                jobs_path(self.namespace),
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
