"""A distributed job on the ``kubernetes`` backend: one Job per node of the job, created together
once the ledger admitted every node, and read back as one job.

Kubernetes 1.20 has neither Indexed Jobs (alpha in 1.21) nor gang scheduling of its own. The
ledger's admission is the gang: it grants the job's GPUs on ``nodes`` different nodes at once (a
request in whole nodes, see docs/scheduling.md), and only then are the Jobs created, all of
them, each with a required node affinity on its node and that node's share of the GPUs; no pod
exists while the rest of the gang waits. Each runs node K's ranks:
``python -m jupyter_dlinfra.jobs.ranks JOBDIR --node-rank K``.

Names. The gang's name is a Job name (:func:`~jupyter_dlinfra.backends.kubernetes_job.job_name`)
and the handle's ``ref``; node K's Job is ``<name>-n<K>``, labelled ``NODE_RANK_LABEL=K`` and
annotated with the gang's name (``GANG_ANNOTATION``), so that a restarted server finds the
whole gang again.

Where the ranks meet. Node 0's launcher is told its pod's IP (``--master-addr`` from the
downward API's ``status.podIP``), picks a free port and writes both to ``rendezvous.json`` in the
job's directory, which every pod of the job mounts; the other nodes' launchers read it
(``jobs/nodes.py``). No Service and no cluster DNS are needed: pod IPs reach other pods in every
conformant cluster, and the shared job directory is a requirement of every job already.

How it reads (:func:`gang_status`):

- PENDING while any node's pod is not running yet, with that node's reason (the scheduler's
  words; ``unplaced`` when its pod is bound to no node, which the job loop hands back after
  ``bind_timeout_s`` as for one Job);
- RUNNING while they run (a node that ended well waits for the others);
- one node failing (its Job Failed, or gone without a cancel) stops the others: their Jobs are
  deleted with the cancel mark, and the job reads RUNNING ("stopping") until they are gone;
- once every node's Job ended: the job's ``status.json`` is made from the nodes' own
  (:func:`~jupyter_dlinfra.jobs.nodes.gather`: the first rank that failed on its own decides),
  and the job is what it says; a gang cancelled through the backend is CANCELLED.
"""

from __future__ import annotations

import dataclasses
import posixpath
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from jupyter_dlinfra.backends.base import (
    BackendError,
    BackendState,
    BackendStatus,
    JobLaunch,
)
from jupyter_dlinfra.backends.kubernetes_job import CONTAINER, JobTemplate, job_name
from jupyter_dlinfra.backends.kubernetes_view import JobView
from jupyter_dlinfra.backends.local import status_from_file
from jupyter_dlinfra.jobs import nodes as job_nodes
from jupyter_dlinfra.kube.api import PREFIX

__all__ = [
    "GANG_ANNOTATION",
    "NODE_RANK_LABEL",
    "POD_IP_ENV",
    "gang_manifests",
    "gang_status",
    "part_name",
]

GANG_ANNOTATION = PREFIX + "gang"
NODE_RANK_LABEL = PREFIX + "node-rank"
#: node 0's pod IP (the downward API), where its rank 0 listens
POD_IP_ENV = "DLINFRA_POD_IP"


def part_name(gang: str, node_rank: int) -> str:
    return f"{gang}-n{node_rank}"


def gang_manifests(template: JobTemplate, launch: JobLaunch) -> tuple[str, list[dict[str, Any]]]:
    """The gang's name and its Jobs, node 0 first (no API call, except to match a GPU model)."""
    count = launch.nodes or 1
    placed = list(launch.placed_nodes)
    if len(placed) != count or len(set(placed)) != count:
        raise BackendError(
            f"a job of {count} nodes needs as many different admitted nodes, not {placed}"
        )
    if launch.gpus % count:
        raise BackendError(f"{launch.gpus} GPUs do not split over {count} nodes")
    workdir = posixpath.normpath(launch.workdir)
    gang = job_name(launch.job_id, workdir)
    manifests = []
    for rank, node in enumerate(placed):
        argv = [*launch.argv, "--node-rank", str(rank)]
        if rank == 0:
            # Kubernetes expands $(VAR) in a container's command from its own env
            argv += ["--master-addr", f"$({POD_IP_ENV})"]
        part = dataclasses.replace(launch, argv=argv, gpus=launch.gpus // count, node=node)
        manifest = template.manifest(part, name=part_name(gang, rank))
        metadata = manifest["metadata"]
        metadata["labels"][NODE_RANK_LABEL] = str(rank)
        metadata["annotations"][GANG_ANNOTATION] = gang
        pod = manifest["spec"]["template"]
        pod["metadata"]["labels"][NODE_RANK_LABEL] = str(rank)
        if rank == 0:
            [container] = [c for c in pod["spec"]["containers"] if c["name"] == CONTAINER]
            container.setdefault("env", []).append(
                {"name": POD_IP_ENV, "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}
            )
        manifests.append(manifest)
    return gang, manifests


def gang_status(
    view: JobView,
    namespace: str,
    parts: Sequence[str],
    workdir: str | None,
    *,
    cancelled: bool,
    stop: Callable[[str], None],
) -> BackendStatus:
    """The job's status from its nodes' Jobs (see the module's documentation). ``cancelled``:
    the gang was cancelled through the backend; ``stop(name)`` deletes one node's Job."""
    # a node's Job removed by ttl_after_finished_s reads as its launcher's own status says
    details = [
        {} if workdir is None else {"workdir": job_nodes.node_status_path(Path(workdir), k).parent}
        for k in range(len(parts))
    ]
    statuses = [view.status(namespace, name, d) for name, d in zip(parts, details, strict=True)]
    if all(s.state.ended for s in statuses):
        return _ended(statuses, len(parts), workdir, cancelled=cancelled)
    bad = [
        k
        for k, s in enumerate(statuses)
        if s.state in (BackendState.FAILED, BackendState.LOST)
        or (s.state is BackendState.CANCELLED and not cancelled)
    ]
    if bad and not cancelled:
        for k, s in enumerate(statuses):
            if not s.state.ended and (namespace, parts[k]) not in view.cancelled:
                stop(parts[k])
        first = bad[0]
        said = statuses[first].reason or statuses[first].state.value
        return BackendStatus(
            state=BackendState.RUNNING,
            reason=f"stopping: node {first} of {len(parts)} {statuses[first].state.value}: {said}",
        )
    waiting = [(k, s) for k, s in enumerate(statuses) if s.state is BackendState.PENDING]
    if waiting and not cancelled:
        k, s = waiting[0]
        return BackendStatus(
            state=BackendState.PENDING,
            reason=f"node {k} of {len(parts)}: {s.reason or 'pending'}",
            unplaced=any(s.unplaced for _, s in waiting),
        )
    stopping = "stopping: cancelled" if cancelled else None
    return BackendStatus(state=BackendState.RUNNING, reason=stopping)


def _ended(
    statuses: list[BackendStatus], count: int, workdir: str | None, *, cancelled: bool
) -> BackendStatus:
    if cancelled:
        return BackendStatus(state=BackendState.CANCELLED, reason="cancelled")
    if workdir is None:
        first = next((s for s in statuses if s.state is not BackendState.SUCCEEDED), None)
        return first or BackendStatus(state=BackendState.SUCCEEDED, exit_code=0)
    jobdir = Path(workdir)
    found = job_nodes.read_json(jobdir / "status.json")
    if found is None or found.get("nodes") != count:
        job_nodes.gather(jobdir, count)
    return status_from_file(jobdir, f"the {count} nodes' Jobs ended")
