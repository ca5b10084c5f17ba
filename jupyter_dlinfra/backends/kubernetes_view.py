"""What one ``poll`` of the ``kubernetes`` backend saw, and the statuses it reads from that.

A :class:`JobView` lists our Jobs and our pods (both by the managed-by label) once per namespace,
whatever the number of handles, plus, in a namespace where a Job has no pod yet, the Job
controller's ``FailedCreate`` events (to say why it cannot create the pod, e.g. an unknown
PriorityClass). It lives for one poll: the next poll lists again. From what it saw it answers:

- a Job with condition ``Complete`` -> SUCCEEDED (exit code 0);
- a Job with condition ``Failed`` -> FAILED, with the pod's container exit code and reason
  (``exit code 3 (Error)``, ``OOMKilled``), or the condition's reason and message
  (``DeadlineExceeded: Job was active longer than specified deadline``);
- a Job cancelled through the backend -> RUNNING (reason ``stopping``) while its pod still
  runs, then CANCELLED;
- a pod that runs -> RUNNING;
- otherwise PENDING, with the scheduler's own words from the pod's ``PodScheduled`` condition
  (``0/2 nodes are available: 2 Insufficient nvidia.com/gpu.``; ``unplaced`` while the pod is
  bound to no node), or the container's waiting
  reason (``ErrImagePull: ...``), or why the pod cannot be created, or that it waits for Kueue;
- no Job: CANCELLED for a Job the backend deleted, else what the runner's ``status.json`` says
  (a Job removed by ``ttl_after_finished_s``), else LOST.

``cancelled`` is the backend's memory of the Jobs it cancelled, (namespace, name): a Job seen
with the cancel mark is added to it, since the mark goes with the Job once it is deleted.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

from jupyter_dlinfra.backends.base import BackendError, BackendState, BackendStatus
from jupyter_dlinfra.backends.kubernetes_job import (
    CANCELLED_ANNOTATION,
    CONTAINER,
    JOB_ID_LABEL,
    jobs_path,
)
from jupyter_dlinfra.backends.local import status_from_file
from jupyter_dlinfra.kube.api import (
    KUEUE_QUEUE_LABEL,
    MANAGED_BY,
    MANAGER,
    KubeApi,
    annotations_of,
    exit_code,
    exit_text,
    meta,
    pending_reason,
    terminated,
    true_condition,
)

__all__ = ["JobView", "failure", "pod_active"]


class JobView:
    """What one poll saw: our Jobs and pods per namespace, listed once each."""

    def __init__(self, api: KubeApi, cancelled: set[tuple[str, str]]) -> None:
        self.api = api
        self.cancelled = cancelled
        self.jobs: dict[str, dict[str, Mapping[str, Any]]] = {}
        self.pods: dict[str, dict[str, list[Mapping[str, Any]]]] = {}
        self.events: dict[str, dict[str, str]] = {}

    def load(self, namespace: str) -> None:
        if namespace in self.jobs:
            return
        api = self.api
        selector = [("labelSelector", f"{MANAGED_BY}={MANAGER}")]
        ns = quote(namespace, safe="")
        jobs = api.items(
            jobs_path(namespace),
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
                events = self.api.items(
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
        if annotations_of(job).get(CANCELLED_ANNOTATION) == "true":
            # remembered: once deleted, the Job is gone with its mark
            self.cancelled.add((namespace, name))
        cancelled = (namespace, name) in self.cancelled
        if true_condition(job, "Complete"):
            return BackendStatus(
                state=BackendState.SUCCEEDED,
                exit_code=code if code is not None else 0,
            )
        failed = true_condition(job, "Failed")
        if cancelled:
            if any(pod_active(p) for p in pods):
                return BackendStatus(state=BackendState.RUNNING, reason="stopping: cancelled")
            return BackendStatus(state=BackendState.CANCELLED, reason="cancelled", exit_code=code)
        if failed:
            return BackendStatus(
                state=BackendState.FAILED,
                reason=failure(failed, ended),
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
            return BackendStatus(
                state=BackendState.PENDING,
                reason=pending_reason(pod, CONTAINER),
                unplaced=not (pod.get("spec") or {}).get("nodeName"),
            )
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
        if (namespace, name) in self.cancelled:
            return BackendStatus(state=BackendState.CANCELLED, reason="cancelled")
        where = f"Kubernetes has no Job {name} in namespace {namespace}"
        return status_from_file(detail.get("workdir"), where)


def pod_active(pod: Mapping[str, Any]) -> bool:
    """Whether a pod may still run its command (not ended, bound to a node)."""
    phase = (pod.get("status") or {}).get("phase")
    return phase not in ("Succeeded", "Failed") and bool((pod.get("spec") or {}).get("nodeName"))


def failure(condition: Mapping[str, Any], ended: Mapping[str, Any] | None) -> str:
    """Why a Job failed: the container's exit, else the Job condition's reason and message."""
    text = exit_text(ended)
    if text:
        return text
    reason = str(condition.get("reason") or "Failed")
    said = condition.get("message")
    return f"{reason}: {said}" if said else reason
