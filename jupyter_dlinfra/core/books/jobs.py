"""Batch jobs made from notebooks: their record, their life, their chains.

``queued -> running -> succeeded | failed | cancelled``; a queued job waits for the jobs named in
``after`` to succeed and for its GPUs. When a job fails or is cancelled, every queued job that
waits on it (directly or through others) is cancelled with the reason. Each change is written with
a ledger event in one transaction, like every other change of the ledger.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection, Row, insert, select, update

from jupyter_dlinfra.core.books.events import write_event
from jupyter_dlinfra.core.clock import Clock
from jupyter_dlinfra.core.errors import Conflict, InvalidRequest, NotFound
from jupyter_dlinfra.core.store import Store, job_deps, jobs, servers

__all__ = ["JOB_KERNEL_NAME", "Job", "JobBook", "JobState", "NewJob", "job_kernel_id"]

#: the kernel name of the ledger records that hold a job's GPUs (their id is ``job-<id>``)
JOB_KERNEL_NAME = "dlinfra-job"


class JobState(str, enum.Enum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def active(self) -> bool:
        return self in (JobState.QUEUED, JobState.RUNNING)


@dataclass(frozen=True, kw_only=True)
class NewJob:
    """What a submission asks for, once validated."""

    user: str
    name: str
    #: the notebook, relative to the server's root
    path: str
    backend: str
    node: str
    server_id: str
    gpus: int = 0
    model: str | None = None
    priority: int = 0
    #: the scheduling policy's class; None: the policy's job class
    priority_class: str | None = None
    parameters: Mapping[str, Any] = field(default_factory=dict)
    after: Sequence[int] = ()
    #: jobs of one sweep share a group id
    group_id: str | None = None
    #: a distributed job's nodes (a rank per GPU, ``gpus / nodes`` per node); None: one process
    nodes: int | None = None
    #: a job with roles: each role as JSON ({name, replicas, gpus, after, ready}); None: none
    roles: Sequence[Mapping[str, Any]] | None = None


@dataclass(frozen=True, kw_only=True)
class Job:
    id: int
    user: str
    name: str
    path: str
    backend: str
    node: str
    #: the server that watches the job (re-attach changes it)
    server_id: str
    gpus: int
    model: str | None
    priority: int
    parameters: Mapping[str, Any]
    after: tuple[int, ...]
    group_id: str | None
    state: JobState
    #: why a queued job waits, or how the job ended, in words
    reason: str | None
    #: the job's directory: snapshot, spec, log, outputs
    workdir: str
    created_at: float
    started_at: float | None = None
    ended_at: float | None = None
    #: the ledger allocation of a job whose GPUs the ledger grants (local backend)
    allocation_id: int | None = None
    #: the backend's JSON handle, to find the job again after a restart
    handle: Mapping[str, Any] | None = None
    #: for a failed job: which cell (1-based) and its error
    failed_cell: int | None = None
    error: str | None = None
    priority_class: str | None = None
    #: how many times it was stopped by preemption and queued again
    attempts: int = 0
    #: a queued job's place in the queue that decides its start (1-based: the ledger's for
    #: GPUs the ledger grants, the backend's own for SLURM), among ``queue_length`` when known,
    #: and the estimate of its start (epoch seconds) of that queue; None when not known
    queue_position: int | None = None
    queue_length: int | None = None
    estimated_start: float | None = None
    #: a distributed job's nodes; None: one process with all the job's GPUs
    nodes: int | None = None
    #: a job with roles (on one node): its roles as submitted; None: none
    roles: tuple[Mapping[str, Any], ...] | None = None

    @property
    def gpus_per_node(self) -> int | None:
        """A distributed job's GPUs per node (its ranks per node, without roles); None for a
        one-process job."""
        return None if self.nodes is None else self.gpus // self.nodes

    @property
    def world_size(self) -> int | None:
        """A distributed job's processes (ranks) in all; None for a one-process job."""
        if self.roles is not None:
            return sum(int(r.get("replicas", 1)) for r in self.roles)
        return self.gpus if self.nodes else None

    @property
    def kernel_id(self) -> str:
        """The ledger's holder name for this job's GPUs."""
        return f"job-{self.id}"


def job_kernel_id(job_id: int) -> str:
    return f"job-{job_id}"


_ENDED = (JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED)
#: where a queued job stands; cleared when it starts or ends
_STANDING = ("queue_position", "queue_length", "estimated_start")
_NO_STANDING: dict[str, Any] = dict.fromkeys(_STANDING)


class JobBook:
    def __init__(self, store: Store, clock: Clock) -> None:
        self.store = store
        self.clock = clock

    # -- submitting ------------------------------------------------------------------------------

    def create(self, new: NewJob, *, workdir_for: Any) -> Job:
        """Record a queued job; ``workdir_for(job_id)`` names its directory once its id exists."""
        if new.gpus < 0:
            raise InvalidRequest(f"a job asks for 0 GPUs or more, not {new.gpus}")
        with self.store.write() as tx:
            conn = tx.conn
            parents = self._load(conn, jobs.c.id.in_(list(new.after))) if new.after else []
            missing = sorted(set(new.after) - {p.id for p in parents})
            if missing:
                raise NotFound(
                    f"no job {', '.join(map(str, missing))} to run after", reason="no_job"
                )
            for parent in parents:
                if parent.user != new.user:
                    raise InvalidRequest(
                        f"job {parent.id} belongs to {parent.user}: a job runs only after "
                        "jobs of its own user"
                    )
            failed = [p for p in parents if p.state in (JobState.FAILED, JobState.CANCELLED)]
            now = self.clock.now()
            inserted = conn.execute(
                insert(jobs).values(
                    user=new.user,
                    name=new.name,
                    path=new.path,
                    backend=new.backend,
                    node=new.node,
                    server_id=new.server_id,
                    gpus=new.gpus,
                    model=new.model,
                    priority=new.priority,
                    priority_class=new.priority_class,
                    parameters=json.dumps(dict(new.parameters)),
                    group_id=new.group_id,
                    nodes=new.nodes,
                    roles=None if new.roles is None else json.dumps([dict(r) for r in new.roles]),
                    state=JobState.QUEUED.value,
                    reason=_waiting_reason(parents, new.gpus),
                    created_at=now,
                )
            ).inserted_primary_key
            assert inserted is not None
            job_id = int(inserted[0])
            conn.execute(
                update(jobs).where(jobs.c.id == job_id).values(workdir=str(workdir_for(job_id)))
            )
            for parent in parents:
                conn.execute(insert(job_deps).values(job_id=job_id, after_id=parent.id))
            write_event(
                tx,
                "job_submitted",
                at=now,
                kernel_id=job_kernel_id(job_id),
                detail={"job": job_id, "user": new.user, "name": new.name},
            )
            if failed:
                self._end(
                    tx,
                    job_id,
                    JobState.CANCELLED,
                    f"job {failed[0].id} it runs after {failed[0].state.value}",
                )
        return self.job(job_id)

    # -- servers ---------------------------------------------------------------------------------

    def register_server(
        self, *, server_id: str, node: str, user: str, pid: int, pid_started_at: float | None
    ) -> None:
        """Say that a server watches jobs now (its jobs are not orphans while it lives)."""
        with self.store.write() as tx:
            tx.conn.execute(
                insert(servers).values(
                    server_id=server_id,
                    node=node,
                    user=user,
                    pid=pid,
                    pid_started_at=pid_started_at,
                    started_at=self.clock.now(),
                )
            )

    def forget_server(self, server_id: str) -> None:
        with self.store.write() as tx:
            tx.conn.execute(servers.delete().where(servers.c.server_id == server_id))

    def servers(self, node: str | None = None) -> list[dict[str, Any]]:
        query = select(servers)
        if node is not None:
            query = query.where(servers.c.node == node)
        with self.store.read() as conn:
            return [dict(r._mapping) for r in conn.execute(query)]

    def claim(self, job_id: int, *, server_id: str, unless_watched_by: Iterable[str]) -> bool:
        """Make ``server_id`` watch the job unless one of the given servers already does."""
        with self.store.write() as tx:
            current = self._one(tx.conn, job_id)
            if current.server_id == server_id:
                return True
            if current.server_id in set(unless_watched_by) or not current.state.active:
                return False
            tx.conn.execute(update(jobs).where(jobs.c.id == job_id).values(server_id=server_id))
            tx.touch()
        return True

    # -- reading ---------------------------------------------------------------------------------

    def job(self, job_id: int) -> Job:
        with self.store.read() as conn:
            found = self._load(conn, jobs.c.id == job_id)
        if not found:
            raise NotFound(f"no job {job_id}", reason="no_job")
        return found[0]

    def jobs(
        self,
        *,
        user: str | None = None,
        active: bool | None = None,
        node: str | None = None,
        group_id: str | None = None,
        limit: int | None = None,
    ) -> list[Job]:
        cond: Any = jobs.c.id > 0
        if user is not None:
            cond = cond & (jobs.c.user == user)
        if active is True:
            cond = cond & jobs.c.state.in_([JobState.QUEUED.value, JobState.RUNNING.value])
        elif active is False:
            cond = cond & jobs.c.state.in_([s.value for s in _ENDED])
        if node is not None:
            cond = cond & (jobs.c.node == node)
        if group_id is not None:
            cond = cond & (jobs.c.group_id == group_id)
        with self.store.read() as conn:
            return self._load(conn, cond, newest_first=True, limit=limit)

    # -- changing --------------------------------------------------------------------------------

    def update(self, job_id: int, **changes: Any) -> Job:
        """Change bookkeeping fields (reason, allocation_id, handle, server_id, workdir, and
        where a queued job stands: queue_position, queue_length, estimated_start)."""
        allowed = {
            "reason",
            "allocation_id",
            "handle",
            "server_id",
            "workdir",
            *_STANDING,
        }
        unknown = set(changes) - allowed
        if unknown:
            raise ValueError(f"cannot update {', '.join(sorted(unknown))} of a job this way")
        if "handle" in changes and changes["handle"] is not None:
            changes["handle"] = json.dumps(dict(changes["handle"]))
        with self.store.write() as tx:
            tx.conn.execute(update(jobs).where(jobs.c.id == job_id).values(**changes))
            tx.touch()
        return self.job(job_id)

    def start(self, job_id: int, *, handle: Mapping[str, Any] | None, reason: str | None) -> Job:
        with self.store.write() as tx:
            current = self._one(tx.conn, job_id)
            if current.state is not JobState.QUEUED:
                raise Conflict(f"job {job_id} is {current.state.value}, not queued")
            tx.conn.execute(
                update(jobs)
                .where(jobs.c.id == job_id)
                .values(
                    state=JobState.RUNNING.value,
                    started_at=self.clock.now(),
                    reason=reason,
                    handle=json.dumps(dict(handle if handle is not None else current.handle or {})),
                    **_NO_STANDING,
                )
            )
            write_event(
                tx,
                "job_started",
                at=self.clock.now(),
                kernel_id=job_kernel_id(job_id),
                detail={"job": job_id},
            )
        return self.job(job_id)

    def requeue(self, job_id: int, reason: str) -> Job:
        """A running job was preempted: it waits again, to start afresh from its snapshot."""
        with self.store.write() as tx:
            current = self._one(tx.conn, job_id)
            if current.state is not JobState.RUNNING:
                raise Conflict(f"job {job_id} is {current.state.value}, not running")
            tx.conn.execute(
                update(jobs)
                .where(jobs.c.id == job_id)
                .values(
                    state=JobState.QUEUED.value,
                    started_at=None,
                    handle=None,
                    allocation_id=None,
                    reason=reason,
                    attempts=current.attempts + 1,
                    **_NO_STANDING,
                )
            )
            write_event(
                tx,
                "job_requeued",
                at=self.clock.now(),
                kernel_id=job_kernel_id(job_id),
                detail={"job": job_id, "user": current.user, "reason": reason},
            )
        return self.job(job_id)

    def finish(
        self,
        job_id: int,
        state: JobState,
        reason: str | None,
        *,
        failed_cell: int | None = None,
        error: str | None = None,
    ) -> list[Job]:
        """End a job, and cancel the queued jobs that wait on it unless it succeeded.

        Returns the jobs that ended (this one first). Ending an ended job changes nothing.
        """
        if state not in _ENDED:
            raise ValueError(f"{state.value} is not an end")
        with self.store.write() as tx:
            ended = self._end(tx, job_id, state, reason, failed_cell=failed_cell, error=error)
        return [self.job(i) for i in ended]

    def waiting_on(self, job_id: int) -> list[int]:
        """Jobs that name ``job_id`` in their ``after``."""
        with self.store.read() as conn:
            return _children(conn, job_id)

    # -- internals -------------------------------------------------------------------------------

    def _end(
        self,
        tx: Any,
        job_id: int,
        state: JobState,
        reason: str | None,
        *,
        failed_cell: int | None = None,
        error: str | None = None,
    ) -> list[int]:
        conn = tx.conn
        current = self._one(conn, job_id)
        if current.state in _ENDED:
            return []
        conn.execute(
            update(jobs)
            .where(jobs.c.id == job_id)
            .values(
                state=state.value,
                reason=reason,
                ended_at=self.clock.now(),
                failed_cell=failed_cell,
                error=error,
                **_NO_STANDING,
            )
        )
        write_event(
            tx,
            "job_ended",
            at=self.clock.now(),
            kernel_id=job_kernel_id(job_id),
            detail={
                "job": job_id,
                "user": current.user,
                "name": current.name,
                "state": state.value,
                "reason": reason,
            },
        )
        ended = [job_id]
        if state is not JobState.SUCCEEDED:
            for child in _children(conn, job_id):
                ended += self._end(
                    tx,
                    child,
                    JobState.CANCELLED,
                    f"job {job_id} it runs after {state.value}",
                )
        return ended

    def _one(self, conn: Connection, job_id: int) -> Job:
        found = self._load(conn, jobs.c.id == job_id)
        if not found:
            raise NotFound(f"no job {job_id}", reason="no_job")
        return found[0]

    @staticmethod
    def _load(
        conn: Connection, cond: Any, *, newest_first: bool = False, limit: int | None = None
    ) -> list[Job]:
        order = jobs.c.id.desc() if newest_first else jobs.c.id
        query = select(jobs).where(cond).order_by(order)
        if limit is not None:
            query = query.limit(limit)
        rows = conn.execute(query).all()
        ids = [r.id for r in rows]
        after: dict[int, list[int]] = {i: [] for i in ids}
        if ids:
            for dep in conn.execute(
                select(job_deps).where(job_deps.c.job_id.in_(ids)).order_by(job_deps.c.after_id)
            ):
                after[dep.job_id].append(dep.after_id)
        return [_job(r, after[r.id]) for r in rows]


def _children(conn: Connection, job_id: int) -> list[int]:
    query = select(job_deps.c.job_id).where(job_deps.c.after_id == job_id)
    return [int(r.job_id) for r in conn.execute(query)]


def _job(r: Row[Any], after: Iterable[int]) -> Job:
    return Job(
        id=r.id,
        user=r.user,
        name=r.name,
        path=r.path,
        backend=r.backend,
        node=r.node,
        server_id=r.server_id,
        gpus=r.gpus,
        model=r.model,
        priority=r.priority,
        parameters=json.loads(r.parameters or "{}"),
        after=tuple(after),
        group_id=r.group_id,
        state=JobState(r.state),
        reason=r.reason,
        workdir=r.workdir,
        created_at=r.created_at,
        started_at=r.started_at,
        ended_at=r.ended_at,
        allocation_id=r.allocation_id,
        handle=json.loads(r.handle) if r.handle else None,
        failed_cell=r.failed_cell,
        error=r.error,
        priority_class=r.priority_class,
        attempts=r.attempts or 0,
        queue_position=r.queue_position,
        queue_length=r.queue_length,
        estimated_start=r.estimated_start,
        nodes=r.nodes,
        roles=_roles(r.roles),
    )


def _roles(raw: str | None) -> tuple[Mapping[str, Any], ...] | None:
    if not raw:
        return None
    try:
        parsed = json.loads(raw)
    except ValueError:
        return None
    return tuple(r for r in parsed if isinstance(r, dict)) if isinstance(parsed, list) else None


def _waiting_reason(parents: Sequence[Job], gpus: int) -> str:
    pending = [p.id for p in parents if p.state is not JobState.SUCCEEDED]
    if pending:
        return f"waiting for job{'s' if len(pending) > 1 else ''} {', '.join(map(str, pending))}"
    return f"waiting for {gpus} GPU{'s' if gpus != 1 else ''}" if gpus else "waiting to start"
