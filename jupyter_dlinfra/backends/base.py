"""Where batch jobs run: the backend contract, and who calls what, when.

The server's job loop (``server/job_service.py``) owns every job's record in the ledger; a backend
only starts, watches and stops the job's process somewhere. Calls come from a worker thread of the
server, never from the event loop, one at a time per backend instance:

- ``recover(launch)`` then ``submit(launch)`` once per job, when the job may start
  (``recover`` finds a job that a crashed server started but could not record). For a backend
  that does not place GPUs itself (``places_gpus = False``, e.g. ``local``) that is after the
  ledger granted the job's GPUs (``launch.env`` then carries ``CUDA_VISIBLE_DEVICES``); for one
  that does (``slurm``, ``kubernetes``), as soon as the job is submitted, with its parents'
  handles in ``launch.after`` so that the cluster's scheduler enforces the chain. A backend
  whose jobs the ledger admits (``ledger_admits = True``: Kubernetes without Kueue) is called
  once the ledger granted the job GPUs of one node of the cluster (``launch.node``), and its
  parents succeeded; it runs the job there, asking the cluster for that many GPUs. ``submit``
  returns a :class:`JobHandle`, which the server stores: it must be enough to find the job
  again after a restart of the server (JSON: ``to_json``/``from_json``).
- ``poll(handles)`` once per job-loop interval with the handles of the jobs it runs; it answers
  one :class:`BackendStatus` per handle it knows. A handle it cannot find any more (the process
  and its status are gone) is answered ``LOST``.
- ``cancel(handle)`` when the user cancels; the job's end is then seen by the next ``poll``.
- ``close()`` once, when the server stops. Jobs must keep running: the server re-attaches later.

Backends are found through the entry-point group ``jupyter_dlinfra.backends`` and chosen by name
(``c.DLInfra.job_backends``, and per job by the ``backend`` field of a submission).
"""

from __future__ import annotations

import abc
import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

# defined below kube/ and backends/ both; re-exported here, where backends' users import it
from jupyter_dlinfra.core.errors import BackendError

__all__ = ["BackendError", "BackendState", "BackendStatus", "JobBackend", "JobHandle", "JobLaunch"]


class BackendState(str, enum.Enum):
    #: accepted, not running yet (waiting for resources or for parents)
    PENDING = "pending"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    #: the backend has no trace of the job any more
    LOST = "lost"

    @property
    def ended(self) -> bool:
        return self not in (BackendState.PENDING, BackendState.RUNNING)


@dataclass(frozen=True, kw_only=True)
class JobLaunch:
    """Everything a backend needs to start one job."""

    job_id: int
    name: str
    user: str
    #: the job's directory: input notebook, spec, log, outputs; shared with the backend's nodes
    workdir: str
    #: the command that runs the job (the in-job runner), argv form
    argv: Sequence[str]
    #: extra environment for the command
    env: Mapping[str, str] = field(default_factory=dict)
    gpus: int = 0
    #: GPU model wanted (a backend may map it to a GRES type or a node selector), None: any
    model: str | None = None
    #: larger runs first; backends map it to their own notion (SLURM nice, PriorityClass)
    priority: int = 0
    #: the job's scheduling class in our policy (``"batch"``), None: the policy's default;
    #: backends map it to their own notion (kubernetes: a PriorityClass name)
    priority_class: str | None = None
    #: the groups of the job's user, in the order the server's ``user_groups`` gives them
    #: (backends may map them to their own notion: SLURM accounts)
    groups: Sequence[str] = ()
    #: handles of jobs that must succeed first (for backends with ``places_gpus``)
    after: Sequence[JobHandle] = ()
    #: the node the ledger admitted the job on (backends with ``ledger_admits``): it runs there
    node: str | None = None
    #: where the command's stdout and stderr go
    log_path: str = ""
    #: a distributed job's nodes (``jobs/ranks.py``): ``argv`` then runs one node's ranks, and a
    #: backend that places nodes starts it once on each (a task per node, with ``--slurm`` under
    #: srun, or ``--node-rank K``), then, once all ended, once more with ``--gather`` for the
    #: job's status; None: ``argv`` is the whole job, one process
    nodes: int | None = None
    #: the nodes the ledger admitted a job of several ``nodes`` on (backends with
    #: ``ledger_admits``), in node-rank order: node K's ranks run on the K-th
    placed_nodes: Sequence[str] = ()


@dataclass(frozen=True, kw_only=True)
class JobHandle:
    """How a backend finds a job again: its name and a JSON-serialisable reference."""

    backend: str
    ref: str
    detail: Mapping[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"backend": self.backend, "ref": self.ref, "detail": dict(self.detail)}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> JobHandle:
        return cls(
            backend=str(data["backend"]), ref=str(data["ref"]), detail=dict(data.get("detail", {}))
        )


@dataclass(frozen=True, kw_only=True)
class BackendStatus:
    state: BackendState
    #: why it waits, or how it ended, in words (SLURM's reason, an exit code...)
    reason: str | None = None
    exit_code: int | None = None
    #: where a pending job stands in the backend's own queue (1-based), and among how many;
    #: None where the backend does not say
    position: int | None = None
    queue_length: int | None = None
    #: the backend's own estimate of when a pending job starts (epoch seconds)
    estimated_start: float | None = None
    #: pending and not placed on a node by the cluster (its pod exists, unbound)
    unplaced: bool = False


class JobBackend(abc.ABC):
    #: the short name used in configuration and in submissions
    name: str = "abstract"
    #: True when the backend's own scheduler places GPUs (the ledger then does not grant them)
    places_gpus: bool = False
    #: True when the ledger's scheduler admits the backend's jobs before they are submitted: it
    #: grants each GPUs of one node of the cluster (a request of the pool) in the team's order,
    #: and the job runs on that node; preempted, it is stopped and queued again
    ledger_admits: bool = False
    #: with ``ledger_admits``: seconds an admitted job's pod may stay unbound on its node
    #: before its GPUs go back to the queue (None: never)
    bind_timeout: float | None = None
    #: the most nodes a distributed job's ranks may span here (``launch.nodes``: the ranks'
    #: launcher, ``jobs/ranks.py``, started once per node): 0 none (such jobs are refused at
    #: submission), None any
    rank_nodes: int | None = 0
    #: why a job of more than ``rank_nodes`` nodes cannot run here, after the backend's name
    #: ("runs a job on this node only")
    rank_nodes_why: str = ""
    #: whether jobs with roles (processes that start in order, on one node) run here
    runs_roles: bool = False

    @property
    def gpus_from_ledger(self) -> bool:
        """Whether the ledger grants a job's GPUs before it is submitted (on its node, or, for
        a backend it admits jobs of, on a node of the cluster)."""
        return self.ledger_admits or not self.places_gpus

    @abc.abstractmethod
    def submit(self, launch: JobLaunch) -> JobHandle:
        """Start (or enqueue) the job; raise BackendError with a reason if it cannot."""

    @abc.abstractmethod
    def poll(self, handles: Sequence[JobHandle]) -> dict[str, BackendStatus]:
        """The status of each job, by ``handle.ref``."""

    @abc.abstractmethod
    def cancel(self, handle: JobHandle) -> None:
        """Stop the job (no error if it already ended)."""

    def recover(self, launch: JobLaunch) -> JobHandle | None:
        """The handle of a job this backend already started for ``launch``, if any.

        Called before ``submit`` for a job the ledger still shows as not started: the server may
        have crashed between starting it and recording that, and must not start it twice.
        """
        return None

    def node_gpus(self, model: str | None) -> int | None:
        """The most GPUs (of ``model``; None: any) one node of this backend has, for a backend
        that places GPUs itself; None when it cannot tell. A submission of more GPUs without a
        shape is split into whole nodes of that many (see ``jobs/shape.py``)."""
        return None

    def describe(self) -> dict[str, Any]:
        """What the API shows about this backend (name, whether it is usable, why not)."""
        return {"name": self.name, "places_gpus": self.places_gpus, "available": True}

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release what the backend holds; jobs keep running."""
