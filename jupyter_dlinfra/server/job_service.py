"""The job loop: notebooks submitted as batch jobs, started, watched and ended, across restarts.

A submission is validated, snapshotted and converted at once (``jobs/convert.py``) and recorded
queued in the ledger. Then, once per ``job_interval``:

- a queued job whose parents all succeeded starts. With a backend that does not place GPUs
  (``local``) the ledger grants its GPUs first, as to any kernel (it holds them under the name
  ``job-<id>``), so a job and a notebook never hold the same GPU; with a backend whose jobs the
  ledger admits (Kubernetes without Kueue) the ledger grants GPUs of any one node of the cluster
  first (a request of the pool) and the job runs on that node; a backend that places GPUs
  itself (SLURM) gets the job at once, with its parents' handles to chain on;
- every job a backend holds is polled; its end is recorded with how it ended (the runner's
  ``status.json``: which cell failed, and its error), its GPUs go back to the queue, and the jobs
  waiting on a job that did not succeed are cancelled with the reason.

Jobs outlive the server: at start-up the server adopts the active jobs of its user on its node
and polls them again by their stored handles.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import re
import sys
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path, PurePosixPath
from typing import Any

from jupyter_dlinfra.backends import (
    BackendError,
    BackendState,
    BackendStatus,
    JobBackend,
    JobHandle,
    JobLaunch,
)
from jupyter_dlinfra.backends.local import read_status
from jupyter_dlinfra.core.books.jobs import JOB_KERNEL_NAME, Job, JobBook, JobState, NewJob
from jupyter_dlinfra.core.books.ledger import Ledger
from jupyter_dlinfra.core.errors import InvalidRequest, NotFound
from jupyter_dlinfra.core.models import Allocation, AllocationState, KernelRecord
from jupyter_dlinfra.core.outage import database_unavailable
from jupyter_dlinfra.jobs.convert import prepare, read_notebook, snapshot
from jupyter_dlinfra.jobs.nodes import read_json
from jupyter_dlinfra.jobs.shape import (
    TORCHRUN,
    Role,
    Shape,
    ShapeError,
    job_shape,
    parse_roles,
    roles_gpus,
)
from jupyter_dlinfra.provisioning.provisioner import PROVISIONER_NAME
from jupyter_dlinfra.server.liveness import pid_alive, process_alive, process_started_at
from jupyter_dlinfra.server.settings import ServiceSettings

__all__ = ["JobService", "JobSettings", "Submission"]

_SLUG = re.compile(r"[^A-Za-z0-9._-]+")
#: names and models are stored in 255-character columns
_MAX_TEXT = 200
#: how far a queued job's estimated start may move before it is written again (seconds)
_ESTIMATE_SLACK_S = 30.0
#: the reason of a preempted job while it is being stopped
_STOPPING = "being stopped for a higher-priority request"
#: the reason of an admitted job whose pod never bound, while its Job is deleted
_HANDING_BACK = "handing its GPUs back"
_ENDS = {
    BackendState.SUCCEEDED: JobState.SUCCEEDED,
    BackendState.FAILED: JobState.FAILED,
    BackendState.CANCELLED: JobState.CANCELLED,
    BackendState.LOST: JobState.FAILED,
}


@dataclass(frozen=True, kw_only=True)
class _Granted:
    """A job's GPUs as the ledger granted them: their node (None without GPUs) and UUIDs."""

    node: str | None
    gpus: tuple[str, ...]
    #: a grant in whole nodes: its nodes, the first one's GPUs first
    nodes: tuple[str, ...] = ()


@dataclass(frozen=True, kw_only=True)
class JobSettings:
    #: the server's root (notebook paths are relative to it)
    root_dir: Path
    #: where job directories go; relative paths are under the root, so Lab can open outputs
    jobs_dir: str = "dlinfra-jobs"
    default_backend: str = "local"
    max_notebook_bytes: int = 16 * 2**20
    max_parameter_bytes: int = 64 * 2**10
    max_sweep_jobs: int = 100
    hide_unallocated_gpus: bool = True

    @property
    def jobs_root(self) -> Path:
        path = Path(self.jobs_dir).expanduser()
        return path if path.is_absolute() else self.root_dir / path


@dataclass(frozen=True, kw_only=True)
class Submission:
    user: str
    path: str
    name: str | None = None
    gpus: int | None = None
    model: str | None = None
    priority: int = 0
    #: the scheduling class; None: the policy's job class
    priority_class: str | None = None
    parameters: Mapping[str, Any] | None = None
    #: a grid: one job per combination of these values, merged over ``parameters``
    sweep: Mapping[str, Sequence[Any]] | None = None
    backend: str | None = None
    after: Sequence[int] = ()
    #: the notebook itself, when the server that submits it is not this one (a user's server
    #: forwarding to the team gateway): ``path`` then only names it
    content: bytes | None = None
    #: a distributed job's shape, as asked (see ``jobs/shape.py``): None where not said
    nodes: int | None = None
    gpus_per_node: int | None = None
    #: a job with roles, as asked (a list of {name, replicas, gpus, after, ready}); None: none
    roles: Any = None
    #: who starts a distributed job's ranks: None (the default launcher) or "torchrun"
    launcher: str | None = None


class JobService:
    def __init__(
        self,
        *,
        ledger: Ledger,
        book: JobBook,
        server: ServiceSettings,
        backends: Mapping[str, JobBackend],
        settings: JobSettings,
        log: logging.Logger,
        kernel_specs: Callable[[str], Any] | None = None,
    ) -> None:
        """``server``: who this server is (its node, id and owner); ``kernel_specs(name)``: the
        server's kernelspec lookup (GPU kernelspecs)."""
        self.kernel_specs = kernel_specs
        self.ledger = ledger
        self.book = book
        self.server = server
        self.backends = dict(backends)
        self.settings = settings
        self.log = log

    # -- submitting ------------------------------------------------------------------------------

    def notebook_path(self, raw: str, *, must_exist: bool = True) -> Path:
        """The notebook a submission names, checked to lie inside the server's root."""
        if not raw or not isinstance(raw, str):
            raise InvalidRequest("path (the notebook, relative to the server's root) is required")
        rel = PurePosixPath(raw.replace("\\", "/"))
        if rel.is_absolute() or ".." in rel.parts:
            raise InvalidRequest(
                f"path must be relative to the server's root, without '..': {raw!r}"
            )
        if rel.suffix != ".ipynb":
            raise InvalidRequest(f"only notebooks (.ipynb) can be submitted, not {raw!r}")
        root = self.settings.root_dir.resolve()
        try:
            full = (root / rel).resolve()
        except (OSError, RuntimeError, ValueError) as err:  # NUL, symlink loop, too long
            raise InvalidRequest(f"path {raw!r} cannot be used: {err}") from None
        if not full.is_relative_to(root):
            raise InvalidRequest(f"path {raw!r} leads outside the server's root")
        if must_exist and not _is_file(full):
            raise NotFound(f"no notebook {raw!r} under the server's root", reason="no_notebook")
        return full

    def submit(self, sub: Submission, *, source: Path | None = None) -> list[Job]:
        """Blocking: validate, snapshot, convert and record; one job per sweep point.

        ``source``: the notebook to run instead of the one at ``sub.path`` (a re-run runs the
        snapshot of the first run, not the notebook as it is now).
        """
        for field_name, value in (("name", sub.name), ("model", sub.model)):
            if value is not None and len(value) > _MAX_TEXT:
                raise InvalidRequest(f"{field_name} is longer than {_MAX_TEXT} characters")
        backend = sub.backend or self.settings.default_backend
        if backend not in self.backends:
            raise InvalidRequest(
                f"backend {backend!r} is not enabled here; enabled: "
                + ", ".join(sorted(self.backends))
            )
        if sub.gpus is not None and (isinstance(sub.gpus, bool) or sub.gpus < 0):
            raise InvalidRequest(f"gpus must be 0 or more, not {sub.gpus!r}")
        if source is not None:
            path = self.settings.root_dir / sub.path
        else:
            path = self.notebook_path(sub.path, must_exist=sub.content is None)
        size = len(sub.content) if sub.content is not None else (source or path).stat().st_size
        if size > self.settings.max_notebook_bytes:
            raise InvalidRequest(
                f"the notebook is {size / 2**20:.1f} MiB; the limit is "
                f"{self.settings.max_notebook_bytes / 2**20:.1f} MiB (c.DLInfra.max_notebook_bytes)"
            )
        raw = sub.content if sub.content is not None else (source or path).read_bytes()
        notebook = read_notebook(raw, max_bytes=self.settings.max_notebook_bytes)
        points = _grid(sub.parameters or {}, sub.sweep, self.settings.max_sweep_jobs)
        group = uuid.uuid4().hex[:12] if sub.sweep else None
        rel = path.relative_to(self.settings.root_dir.resolve()).as_posix()
        base_name = sub.name or path.stem
        # every point is converted before anything is recorded: one bad point fails them all
        limit = self.settings.max_parameter_bytes
        prepared = [prepare(notebook, parameters=p, max_parameter_bytes=limit) for p in points]
        policy = self.ledger.scheduling_policy()
        klass = sub.priority_class if sub.priority_class is not None else policy.job_class
        if sub.priority_class is not None and sub.priority_class not in policy.class_map:
            raise InvalidRequest(
                f"unknown priority class {sub.priority_class!r}; classes: {policy.class_names}",
                reason="unknown_class",
            )
        kernel_name, spec_gpus = _job_kernel(prepared[0].kernel_name, self.kernel_specs)
        wanted = sub.gpus if sub.gpus is not None else (prepared[0].gpus or spec_gpus)
        model = sub.model if sub.model is not None else prepared[0].model
        chosen = self.backends[backend]
        roles = self._roles(sub, chosen)
        shape = (
            None
            if roles is not None
            else self._shape(sub, wanted, prepared[0].nodes, chosen, model)
        )
        if sub.launcher is not None:
            self._check_launcher(sub.launcher, shape)
        if shape is not None:
            wanted = shape.gpus
        elif roles is not None:
            wanted = roles_gpus(roles)
        if wanted and chosen.gpus_from_ledger:
            # refused now, as %gpu would be, rather than failing at the job's first pass
            node = None if chosen.ledger_admits else self.server.node
            per_node = shape.gpus_per_node if shape is not None and chosen.ledger_admits else None
            self.ledger.check_satisfiable(node, wanted, model, per_node=per_node)
        created: list[Job] = []
        try:
            for point, ready in zip(points, prepared, strict=True):
                name = base_name if group is None else f"{base_name}[{_label(point, sub.sweep)}]"
                job = self.book.create(
                    NewJob(
                        user=sub.user,
                        name=name[:_MAX_TEXT],
                        path=rel,
                        backend=backend,
                        node=self.server.node,
                        server_id=self.server.server_id,
                        gpus=wanted
                        if shape is not None or roles is not None
                        else (sub.gpus if sub.gpus is not None else (ready.gpus or spec_gpus)),
                        model=sub.model if sub.model is not None else ready.model,
                        priority=sub.priority,
                        priority_class=klass,
                        parameters=ready.parameters,
                        after=sub.after,
                        group_id=group,
                        nodes=1 if roles is not None else (None if shape is None else shape.nodes),
                        roles=None if roles is None else [r.to_json() for r in roles],
                    ),
                    # a random part: a directory left by an older ledger is never reused
                    workdir_for=lambda job_id, n=name: (
                        self.settings.jobs_root
                        / f"{job_id}-{_SLUG.sub('-', n)[:60]}-{uuid.uuid4().hex[:6]}"
                    ),
                )
                created.append(job)
                workdir = Path(job.workdir)
                workdir.mkdir(parents=True, exist_ok=False)
                (workdir / "source.ipynb").write_bytes(raw)
                snapshot(
                    ready,
                    workdir,
                    spec={
                        "job_id": job.id,
                        "name": name,
                        "path": rel,
                        # a notebook sent from another server runs in its job's directory
                        "cwd": "." if sub.content is not None else str(path.parent),
                        "kernel_name": kernel_name,
                        "parameters": dict(ready.parameters),
                        # the ranks' launcher (jobs/ranks.py) reads the shape from here
                        **(
                            {}
                            if shape is None
                            else {"nodes": shape.nodes, "gpus_per_node": shape.gpus_per_node}
                        ),
                        **({} if roles is None else {"roles": [r.to_json() for r in roles]}),
                        **({} if sub.launcher is None else {"launcher": sub.launcher}),
                    },
                )
        except Exception as err:
            # all of a submission or none of it: what was recorded must not run
            for job in created:
                self.book.finish(job.id, JobState.FAILED, f"the submission failed: {err}")
            raise
        return created

    def _roles(self, sub: Submission, backend: JobBackend) -> tuple[Role, ...] | None:
        """A job's roles, checked (None: it has none), refused with a 400 that says why."""
        if sub.roles is None:
            return None
        try:
            roles = parse_roles(sub.roles)
        except ShapeError as err:
            raise InvalidRequest(str(err), reason="bad_roles") from None
        if sub.nodes is not None or sub.gpus_per_node is not None:
            raise InvalidRequest(
                "a job has roles or nodes x gpus_per_node, not both: each role says its "
                "replicas and their GPUs",
                reason="bad_roles",
            )
        if not backend.runs_roles:
            raise InvalidRequest(
                f"the {backend.name} backend does not run jobs with roles yet: submit them to "
                f"{self._backends_that(lambda b: b.runs_roles)}",
                reason="bad_roles",
            )
        total = roles_gpus(roles)
        if sub.gpus is not None and sub.gpus != total:
            raise InvalidRequest(
                f"gpus ({sub.gpus}) is not what the roles ask for ({total}): leave gpus out",
                reason="bad_roles",
            )
        return roles

    def _shape(
        self,
        sub: Submission,
        wanted: int,
        notebook_nodes: int | None,
        backend: JobBackend,
        model: str | None,
    ) -> Shape | None:
        """The job's ranks (None: one process), refused with a 400 that says what to ask where
        the backend cannot run them."""
        nodes = sub.nodes if sub.nodes is not None else notebook_nodes
        if sub.nodes is None and sub.gpus_per_node is None and sub.gpus is not None:
            # a submission that says its GPUs and no shape is one process, whatever the
            # notebook's --nodes
            nodes = None
        # the GPUs of this server's node, where the ledger grants the backend's jobs theirs, or
        # of the cluster's largest node, where the ledger admits them on any
        node_gpus: int | None = None
        if backend.gpus_from_ledger and not backend.ledger_admits:
            node_gpus = len(self.ledger.gpus(self.server.node))
        elif backend.ledger_admits:
            node_gpus = self.ledger.largest_node(model)
        else:
            node_gpus = backend.node_gpus(model)
        if sub.gpus is None and sub.nodes is not None and sub.gpus_per_node is not None:
            wanted = 0  # the submission's shape says how many, whatever the notebook's line
        try:
            shape = job_shape(
                gpus=wanted or None,
                nodes=nodes,
                gpus_per_node=sub.gpus_per_node,
                node_gpus=node_gpus or None,
                # more GPUs than a node: whole nodes, where the backend runs several
                split=backend.rank_nodes is None or backend.rank_nodes > 1,
            )
        except ShapeError as err:
            raise InvalidRequest(str(err), reason="bad_shape") from None
        if shape is None:
            # one process: more GPUs than a node has are refused as too many for it (local),
            # or by the cluster's scheduler
            return None
        most = backend.rank_nodes
        if most == 0:
            raise InvalidRequest(
                f"the {backend.name} backend does not run distributed jobs yet: submit "
                f"{shape.describe()} to {self._backends_that(lambda b: b.rank_nodes != 0)}, or "
                "ask for one process with gpus alone",
                reason="bad_shape",
            )
        if most is not None and shape.nodes > most:
            gpus_here = f" ({node_gpus} GPUs)" if node_gpus is not None else ""
            raise InvalidRequest(
                f"{shape.describe()}: the {backend.name} backend {backend.rank_nodes_why}"
                f"{gpus_here}; ask for --nodes {most} --gpus-per-node {shape.gpus_per_node}, "
                f"or submit to {self._backends_that(lambda b: b.rank_nodes is None)}",
                reason="bad_shape",
            )
        return shape

    @staticmethod
    def _check_launcher(launcher: object, shape: Shape | None) -> None:
        if launcher != TORCHRUN:
            raise InvalidRequest(
                f"launcher must be {TORCHRUN!r} (one torchrun per node starts the ranks) or "
                f"left out (the ranks are started with torchrun's environment), not {launcher!r}",
                reason="bad_shape",
            )
        if shape is None:
            raise InvalidRequest(
                "launcher torchrun starts a distributed job's ranks: say its nodes (and GPUs per "
                "node); a job with roles, or of one process, has no ranks for torchrun",
                reason="bad_shape",
            )

    def _backends_that(self, can: Callable[[JobBackend], bool]) -> str:
        """The enabled backends that can do something, for a refusal to name them."""
        names = sorted(name for name, b in self.backends.items() if can(b))
        if not names:
            return "a backend that can (none is enabled here)"
        return f"the {' or '.join(names)} backend"

    def rerun(self, job: Job, user: str) -> list[Job]:
        source = Path(job.workdir) / "source.ipynb"
        return self.submit(
            Submission(
                user=user,
                path=job.path,
                name=job.name,
                gpus=job.gpus,
                # a distributed job runs again as the same ranks (None: one process again)
                nodes=None if job.roles is not None else job.nodes,
                gpus_per_node=None if job.roles is not None else job.gpus_per_node,
                roles=None if job.roles is None else [dict(r) for r in job.roles],
                launcher=_launcher_of(job),
                model=job.model,
                priority=job.priority,
                priority_class=job.priority_class,
                parameters=job.parameters,
                backend=job.backend,
            ),
            source=source if source.is_file() else None,
        )

    # -- the loop --------------------------------------------------------------------------------

    def start(self) -> None:
        """Blocking, at start-up: say this server watches jobs, then adopt orphaned ones."""
        server = self.server
        pid = os.getpid()
        self.book.register_server(
            server_id=server.server_id,
            node=server.node,
            user=server.user,
            pid=pid,
            pid_started_at=process_started_at(pid),
        )
        for row in self.book.servers(server.node):
            if not pid_alive(row["pid"], row["pid_started_at"]):
                self.book.forget_server(str(row["server_id"]))  # crashed, never said goodbye
        self.adopt()

    def _live_servers(self) -> set[str]:
        """Servers of this node whose process runs (others' liveness cannot be told here)."""
        node = self.server.node
        live = set()
        for row in self.book.servers():
            if row["node"] != node or pid_alive(row["pid"], row["pid_started_at"]):
                live.add(str(row["server_id"]))
        return live

    def adopt(self) -> list[Job]:
        """Take over the active jobs of this server's user on this node whose server is gone."""
        server = self.server
        live = self._live_servers()
        adopted = []
        # a gateway runs everyone's jobs; a personal server only its user's
        owner = None if server.multi_user else server.user
        for job in self.book.jobs(active=True, node=server.node, user=owner):
            if job.server_id == server.server_id or job.server_id in live:
                continue
            if self.book.claim(job.id, server_id=server.server_id, unless_watched_by=live):
                adopted.append(job)
                self.log.info("dlinfra: re-attached job %s (%s)", job.id, job.state.value)
        return adopted

    def step(self) -> None:
        """Blocking: start what may start, poll what runs, record what ended."""
        self.adopt()  # a server of this user that died leaves its jobs to this one
        mine = [j for j in self.book.jobs(active=True) if j.server_id == self.server.server_id]
        mine.sort(key=lambda j: (-j.priority, j.id))
        for job in mine:
            if job.state is JobState.QUEUED and job.handle is None:
                try:
                    self._try_start(job)
                except Exception as err:  # one job's trouble must not stop the others
                    if database_unavailable(err):
                        # not the job's fault: the next pass tries again (and recovers what
                        # the backend already started)
                        raise
                    self.log.exception("dlinfra: starting job %s failed", job.id)
                    self._end(job, JobState.FAILED, f"could not start: {err}")
        mine_id = self.server.server_id
        held = self.book.jobs(active=True)
        polled = [j for j in held if j.handle is not None and j.server_id == mine_id]
        self._poll(self._stop_preempted(polled))

    def _try_start(self, job: Job) -> None:
        backend = self.backends.get(job.backend)
        if backend is None:
            self._end(job, JobState.FAILED, f"backend {job.backend!r} is not enabled here")
            return
        parents = [self.book.job(p) for p in job.after]
        waiting = [p for p in parents if p.state is not JobState.SUCCEEDED]
        after: list[JobHandle] = []
        if waiting:
            if backend.gpus_from_ledger:
                return  # the reason says which jobs it waits for
            # the cluster chains them itself, once every parent is with it
            if any(p.handle is None or p.backend != job.backend for p in waiting):
                return
            after = [JobHandle.from_json(p.handle) for p in waiting if p.handle]
        env: dict[str, str] = {"DLINFRA_JOB_ID": str(job.id)}
        node: str | None = None
        placed: tuple[str, ...] = ()
        if backend.gpus_from_ledger:
            several = backend.ledger_admits and job.nodes is not None and job.nodes > 1
            granted = self._granted(
                job,
                anywhere=backend.ledger_admits,
                # the gang in whole nodes: every node's share is granted at once
                per_node=job.gpus // job.nodes if several and job.nodes else None,
            )
            if granted is None:
                return
            if backend.ledger_admits:
                # admitted on a node of the cluster: the job runs there, and the cluster's
                # device plugin picks its devices
                node = granted.node
                placed = granted.nodes if several else ()
            else:
                visible = ",".join(granted.gpus)
                if visible or self.settings.hide_unallocated_gpus:
                    env["CUDA_VISIBLE_DEVICES"] = visible
        workdir = Path(job.workdir)
        launch = JobLaunch(
            job_id=job.id,
            name=job.name,
            user=job.user,
            workdir=str(workdir),
            # a distributed job's ranks are started, watched and stopped by their launcher
            argv=[
                sys.executable,
                "-m",
                "jupyter_dlinfra.jobs.ranks" if job.nodes else "jupyter_dlinfra.jobs.runner",
                str(workdir),
            ],
            env=env,
            gpus=job.gpus,
            model=job.model,
            priority=job.priority,
            # the class it is scheduled in: a backend maps it (a SLURM QOS, a PriorityClass)
            priority_class=job.priority_class or self.ledger.scheduling_policy().job_class,
            groups=tuple(self.ledger.groups_of(job.user)),
            after=after,
            node=node,
            log_path=str(workdir / "job.log"),
            nodes=job.nodes,
            placed_nodes=placed,
        )
        try:
            recovered = backend.recover(launch)
        except BackendError as err:
            # cannot tell whether it was started: try again at the next pass rather than twice
            reason = f"waiting for {backend.name} to answer: {err}"
            if reason != job.reason:
                self.book.update(job.id, reason=reason)
            return
        try:
            handle = recovered or backend.submit(launch)
        except BackendError as err:
            self._end(job, JobState.FAILED, f"{backend.name} refused the job: {err}")
            return
        if backend.places_gpus:
            # submitted: queued until the cluster runs it (the poll says when)
            self.book.update(job.id, handle=handle.to_json(), reason=f"submitted to {backend.name}")
            return
        self.book.start(job.id, handle=handle.to_json(), reason=None)
        pid = handle.detail.get("pid")
        if isinstance(pid, int) and job.gpus > 0:
            self.ledger.update_kernel(
                job.kernel_id, pid=pid, pid_started_at=process_started_at(pid)
            )

    def _granted(
        self, job: Job, *, anywhere: bool = False, per_node: int | None = None
    ) -> _Granted | None:
        """What the ledger granted a job that it must grant GPUs (of its node, or with
        ``anywhere`` of any one node of the cluster, or with ``per_node`` too that many on each
        of several nodes); None while it waits. A job without GPUs needs no grant."""
        if job.gpus == 0:
            return _Granted(node=None, gpus=())
        ledger = self.ledger
        alloc = None if job.allocation_id is None else ledger.allocation(job.allocation_id)
        if alloc is not None and not alloc.state.active and not self._holder_known(job):
            # given back by a reconcile while no server watched the job (another user's server
            # on this node): it asks again, as the queued jobs of a server that stopped do
            alloc = None
        if alloc is None:
            ledger.register_kernel(
                KernelRecord(
                    kernel_id=job.kernel_id,
                    user=job.user,
                    node=job.node,
                    server_id=self.server.server_id,
                    kernel_name=JOB_KERNEL_NAME,
                    path=job.path,
                ),
                token_hash=None,
            )
            alloc = ledger.request(
                kernel_id=job.kernel_id,
                count=job.gpus,
                model=job.model,
                priority_class=job.priority_class,
                kind="job",
                anywhere=anywhere,
                per_node=per_node,
            )
            job = self.book.update(job.id, allocation_id=alloc.id)
        if alloc.state is AllocationState.GRANTED:
            nodes = self._nodes_of(alloc.gpus) if alloc.per_node is not None else ()
            return _Granted(node=alloc.node, gpus=alloc.gpus, nodes=nodes)
        if alloc.state is AllocationState.QUEUED:
            gpus = f"{job.gpus} GPU{'s' if job.gpus != 1 else ''}"
            reason = f"waiting for {gpus} at position {alloc.position}: {alloc.waiting_reason}"
            if job.attempts:
                reason += f" (preempted {job.attempts} time{'s' if job.attempts > 1 else ''})"
            self._note_wait(job, reason, alloc.position, None, alloc.estimated_start)
            return None
        self._end(job, JobState.FAILED, f"its GPU request ended: {alloc.end_reason}")
        return None

    def _nodes_of(self, gpus: tuple[str, ...]) -> tuple[str, ...]:
        """The nodes of a grant's GPUs, in the order of its GPUs."""
        node_of = {g.uuid: g.node for g in self.ledger.gpus_of(gpus)}
        return tuple(dict.fromkeys(node_of[u] for u in gpus if u in node_of))

    def _holder_known(self, job: Job) -> bool:
        """Whether the ledger still has the record that holds the job's GPUs (a reconcile that
        found no server to start the job forgot it)."""
        try:
            self.ledger.kernel(job.kernel_id)
        except NotFound:
            return False
        return True

    def _poll(self, held: list[Job]) -> None:
        by_backend: dict[str, list[Job]] = {}
        for job in held:
            by_backend.setdefault(job.backend, []).append(job)
        for jobs in by_backend.values():
            # parents before children: a parent's end explains why the cluster cancelled its chain
            jobs.sort(key=lambda j: j.id)
        for name, jobs in by_backend.items():
            backend = self.backends.get(name)
            if backend is None:
                continue
            handles = {j.id: JobHandle.from_json(j.handle or {}) for j in jobs}
            try:
                statuses = backend.poll(list(handles.values()))
            except BackendError as err:
                self.log.warning("dlinfra: polling %s failed: %s", name, err)
                continue
            for job in jobs:
                status = statuses.get(handles[job.id].ref)
                if status is None:
                    continue
                try:
                    self._apply(job, name, status)
                except Exception as err:  # one job's trouble must not stop the others
                    if database_unavailable(err):
                        raise  # the others would fail alike: the pass ends and is tried again
                    self.log.exception("dlinfra: recording the state of job %s failed", job.id)

    def _apply(self, job: Job, name: str, status: BackendStatus) -> None:
        if status.state is BackendState.RUNNING and job.state is JobState.QUEUED:
            self.book.start(job.id, handle=None, reason=None)
        elif status.state is BackendState.PENDING and job.state is JobState.QUEUED:
            if status.unplaced and self._unbound(job, name, status.reason):
                return
            where = ""
            if status.position is not None:
                where = f" at position {status.position}"
                if status.queue_length is not None:
                    where += f" of {status.queue_length}"
            reason = f"queued in {name}{where}" + (f": {status.reason}" if status.reason else "")
            self._note_wait(
                job, reason, status.position, status.queue_length, status.estimated_start
            )
        elif status.state.ended:
            self._record_end(job, status.state, status.reason)

    def _unbound(self, job: Job, name: str, why: str | None) -> bool:
        """An admitted job whose pod the cluster has not bound on its granted node: say so,
        and once that lasted the backend's ``bind_timeout``, delete its Job (its GPUs go back
        to the queue once it is gone, see _record_end). True when that was said here."""
        backend = self.backends.get(name)
        timeout = backend.bind_timeout if backend is not None else None
        if backend is None or not backend.ledger_admits or timeout is None:
            return False
        if job.allocation_id is None or (job.reason or "").startswith(_HANDING_BACK):
            return False
        try:
            alloc = self.ledger.allocation(job.allocation_id)
        except NotFound:
            return False
        if alloc.state is not AllocationState.GRANTED or alloc.granted_at is None:
            return False
        waited = self.ledger.clock.now() - alloc.granted_at
        said = f"kubernetes has not placed it on {alloc.node}, where the ledger admitted it"
        said += f": {why}" if why else ""
        if waited < timeout:
            # no running count of seconds: the reason is written only when it changes
            reason = (
                f"{said} (its GPUs go back to the queue if it is not placed {timeout:.0f} s "
                "after admission)"
            )
            self._note_wait(job, reason, None, None, None)
            return True
        if job.handle is None:
            return False
        self._stop_saying(job, backend, f"{_HANDING_BACK}: {said} for {waited:.0f} s")
        return True

    def _stop_saying(self, job: Job, backend: JobBackend, reason: str) -> bool:
        """Stop a job's run in its backend, its reason saying why before it is done: a server
        that dies between the two leaves a job whose end its successor reads as what it was
        (a preemption, a hand-back), not as a failure. False when the backend refused (the
        reason is put back, and the next pass tries again)."""
        assert job.handle is not None
        self.book.update(job.id, reason=reason)
        try:
            backend.cancel(JobHandle.from_json(job.handle))
        except BackendError as err:
            self.log.warning("dlinfra: stopping job %s failed: %s", job.id, err)
            self.book.update(job.id, reason=job.reason)
            return False
        return True

    def _hand_back(self, job: Job) -> None:
        """The Job of an admitted job that never bound is gone: its GPUs go back to the ledger,
        which asks again at the job's place, avoiding that node; the job waits for it."""
        said = (job.reason or "").removeprefix(f"{_HANDING_BACK}: ")
        new_id: int | None = None
        if job.allocation_id is not None:
            try:
                again = self.ledger.hand_back(job.allocation_id, reason=said)
            except NotFound:
                again = None
            if again is not None and again.id != job.allocation_id:
                new_id = again.id
        self.book.update(
            job.id,
            handle=None,
            allocation_id=new_id,
            reason=f"{said}; its GPUs went back to the queue, to be admitted on another node",
            queue_position=None,
            queue_length=None,
            estimated_start=None,
        )

    def _note_wait(
        self,
        job: Job,
        reason: str,
        position: int | None,
        length: int | None,
        estimated_start: float | None,
    ) -> None:
        """Record why and where a queued job waits, when that changed (one write). An estimate
        that moved by less than ``_ESTIMATE_SLACK_S`` is not written again: estimates drift a
        little at every look, and each job-loop pass would otherwise write every queued job."""
        start = None if estimated_start is None else float(round(estimated_start))
        before = job.estimated_start
        moved = (before is None) != (start is None) or (
            before is not None and start is not None and abs(before - start) >= _ESTIMATE_SLACK_S
        )
        if moved or (job.reason, job.queue_position, job.queue_length) != (
            reason,
            position,
            length,
        ):
            self.book.update(
                job.id,
                reason=reason,
                queue_position=position,
                queue_length=length,
                estimated_start=start,
            )

    def _stop_preempted(self, running: list[Job]) -> list[Job]:
        """Stop the jobs whose GPUs the scheduler wants back; they are queued again once gone.
        Returns ``running`` as it now is: a stopped job's end, polled next, must read as the
        preemption it was, even when the request it was preempted for is withdrawn meanwhile
        (its allocation no longer says so)."""
        current: list[Job] = []
        for job in running:
            current.append(job)
            alloc = self._preemption(job)
            if alloc is None or (job.reason or "").startswith(_STOPPING):
                continue
            backend = self.backends.get(job.backend)
            if backend is None or job.handle is None:
                continue
            stopping = f"{_STOPPING}: {alloc.preempt_reason}"
            if self._stop_saying(job, backend, stopping):
                current[-1] = replace(job, reason=stopping)
        return current

    def _preemption(self, job: Job, *, active: bool = True) -> Allocation | None:
        """The job's allocation, if the scheduler preempted it; with ``active=False`` also one
        released since (its process ended by the preemption, a reconcile gave the GPUs back)."""
        if job.allocation_id is None or job.state is not JobState.RUNNING:
            return None
        try:
            alloc = self.ledger.allocation(job.allocation_id)
        except NotFound:
            return None
        if alloc.preempted_for is None or (active and not alloc.state.active):
            return None
        return alloc

    def _requeue(self, job: Job, why: str) -> None:
        """Queue a preempted job again; its last run's files are kept beside, renamed."""
        attempt = job.attempts + 1
        workdir = Path(job.workdir)
        for name in ("launched.json", "status.json"):
            with contextlib.suppress(OSError):
                (workdir / name).rename(workdir / f"{Path(name).stem}.attempt-{attempt}.json")
        reason = f"{why}; queued again to start afresh (attempt {attempt + 1})"
        with contextlib.suppress(OSError), (workdir / "job.log").open("a", encoding="utf-8") as log:
            log.write(f"\n--- {reason} ---\n\n")
        self._release(job, "job preempted")
        self.book.requeue(job.id, reason)

    def _record_end(self, job: Job, state: BackendState, reason: str | None) -> None:
        handing_back = job.state is JobState.QUEUED and (job.reason or "").startswith(_HANDING_BACK)
        if handing_back and state in (BackendState.CANCELLED, BackendState.LOST):
            self._hand_back(job)
            return
        preempted = self._preemption(job, active=False)
        stopping = (job.reason or "").startswith(_STOPPING)
        cancelling = (job.reason or "").startswith("cancelled by")
        if (preempted or stopping) and not cancelling and state is not BackendState.SUCCEEDED:
            said = preempted.preempt_reason if preempted is not None else None
            self._requeue(job, said or (job.reason or "").removeprefix(f"{_STOPPING}: "))
            return
        final = _ENDS[state]
        found = read_status(job.workdir) or {}
        if cancelling and not found and final is JobState.FAILED:
            # stopped before its runner could say so (SIGTERM during start-up)
            final, state = JobState.CANCELLED, BackendState.CANCELLED
        failed_cell = found.get("failed_cell") if final is JobState.FAILED else None
        error = found.get("error") if final is JobState.FAILED else None
        why: str | None
        if state is BackendState.LOST:
            why = f"lost: {reason}" if reason else "lost: the backend has no trace of it"
        elif final is JobState.FAILED:
            where = f"cell {failed_cell}: " if isinstance(failed_cell, int) else ""
            why = f"failed in {where}{error or reason or 'see the log'}"
        elif final is JobState.CANCELLED:
            own = job.reason if cancelling else None
            why = own or self._chain_reason(job) or reason or "cancelled"
        else:
            why = None
        self._end(
            job,
            final,
            why,
            failed_cell=failed_cell if isinstance(failed_cell, int) else None,
            error=str(error) if error else None,
        )

    def _chain_reason(self, job: Job) -> str | None:
        """Why a chain's job ended unrun: the first of its parents that did not succeed."""
        for parent_id in job.after:
            parent = self.book.job(parent_id)
            if parent.state in (JobState.FAILED, JobState.CANCELLED):
                return f"job {parent.id} it runs after {parent.state.value}"
        return None

    def _end(
        self,
        job: Job,
        state: JobState,
        reason: str | None,
        *,
        failed_cell: int | None = None,
        error: str | None = None,
    ) -> None:
        # GPUs first: whoever sees the job ended must see its GPUs free
        self._release(job, f"job {state.value}")
        ended = self.book.finish(job.id, state, reason, failed_cell=failed_cell, error=error)
        for done in ended:
            if done.id == job.id:
                continue
            self._release(done, f"job {done.state.value}")
            if done.handle is not None:
                # a child the cluster already holds: it must not run after all
                backend = self.backends.get(done.backend)
                if backend is not None:
                    try:
                        backend.cancel(JobHandle.from_json(done.handle))
                    except BackendError as err:
                        self.log.warning("dlinfra: cancelling job %s failed: %s", done.id, err)

    def _release(self, job: Job, reason: str) -> None:
        with contextlib.suppress(NotFound):
            self.ledger.forget_kernel(job.kernel_id, reason=reason)

    # -- cancelling ------------------------------------------------------------------------------

    def cancel(self, job: Job, *, by: str) -> Job:
        job = self.book.job(job.id)  # as it is now: a pass may have started it since
        if not job.state.active:
            return job
        if job.handle is None:
            self._end(job, JobState.CANCELLED, f"cancelled by {by}")
            return self.book.job(job.id)
        backend = self.backends.get(job.backend)
        if backend is None:
            self._end(job, JobState.CANCELLED, f"cancelled by {by}")
            return self.book.job(job.id)
        # the backend first: if it cannot stop the job, the job is not said to be cancelled
        backend.cancel(JobHandle.from_json(job.handle))
        return self.book.update(job.id, reason=f"cancelled by {by}")

    # -- the ledger's view of job holders ------------------------------------------------------

    def holder_alive(self, record: KernelRecord) -> bool:
        """Whether a ``job-<id>`` record of the ledger still stands for a live job."""
        try:
            job = self.book.job(int(record.kernel_id.removeprefix("job-")))
        except (ValueError, NotFound):
            return False
        if not job.state.active:
            return False
        if record.pid is not None:
            return process_alive(record)
        # queued: its GPUs wait for it only while a server is there to start it: its own, or
        # this one, which adopts it at its next pass (this reconcile may come first)
        return job.server_id in self._live_servers() or self._adopts(job)

    def _adopts(self, job: Job) -> bool:
        """Whether this server takes the job over when its server is gone (see :meth:`adopt`)."""
        server = self.server
        return (
            server.job_interval > 0
            and job.node == server.node
            and (server.multi_user or job.user == server.user)
        )

    def close(self) -> None:
        """Blocking, at stop: running jobs go on; queued ones give their GPUs back meanwhile."""
        server = self.server
        for job in self.book.jobs(active=True):
            if job.server_id != server.server_id or job.state is not JobState.QUEUED:
                continue
            if job.allocation_id is not None and job.handle is None:
                with contextlib.suppress(NotFound):
                    self.ledger.forget_kernel(job.kernel_id, reason="server stopped")
                self.book.update(
                    job.id, allocation_id=None, reason="waiting for a server to start it"
                )
        self.book.forget_server(server.server_id)
        for backend in self.backends.values():
            backend.close()


def _launcher_of(job: Job) -> str | None:
    """The launcher a job was submitted with (its spec.json says; None: the default)."""
    launcher = (read_json(Path(job.workdir) / "spec.json") or {}).get("launcher")
    return launcher if isinstance(launcher, str) else None


def _job_kernel(name: str, lookup: Callable[[str], Any] | None) -> tuple[str, int]:
    """The kernel a job runs, and the GPUs its notebook's kernelspec asks for.

    A kernelspec with the dlinfra provisioner (``python3-2gpu``) means "this kernel gets 2
    GPUs at launch": in a job the GPUs come with the job, so the job runs the plain kernel that
    spec starts, without a provisioner that needs a Jupyter server.
    """
    if lookup is None:
        return name, 0
    try:
        spec = lookup(name)
    except Exception:  # jupyter_client's NoSuchKernel, or a broken kernel.json
        return name, 0
    provisioner = (spec.metadata or {}).get("kernel_provisioner") or {}
    if provisioner.get("provisioner_name") != PROVISIONER_NAME:
        return name, 0
    gpus = (provisioner.get("config") or {}).get("gpus", 0)
    plain = "python3" if spec.language == "python" else name
    return plain, int(gpus) if isinstance(gpus, int) else 0


def _is_file(path: Path) -> bool:
    try:
        return path.is_file()
    except (OSError, ValueError):
        return False


def _grid(
    base: Mapping[str, Any], sweep: Mapping[str, Sequence[Any]] | None, limit: int
) -> list[dict[str, Any]]:
    if not sweep:
        return [dict(base)]
    if not isinstance(sweep, Mapping):
        raise InvalidRequest("sweep must be an object of parameter -> list of values")
    names = list(sweep)
    for name in names:
        values = sweep[name]
        if not isinstance(values, list) or not values:
            raise InvalidRequest(f"sweep.{name} must be a non-empty list of values")
    count = 1
    for name in names:
        count *= len(sweep[name])
    if count > limit:
        raise InvalidRequest(
            f"the sweep makes {count} jobs; the limit is {limit} (c.DLInfra.max_sweep_jobs)"
        )
    return [
        {**base, **dict(zip(names, combo, strict=True))}
        for combo in itertools.product(*(sweep[n] for n in names))
    ]


def _label(point: Mapping[str, Any], sweep: Mapping[str, Sequence[Any]] | None) -> str:
    return ",".join(f"{k}={point[k]}" for k in (sweep or {}))
