"""REST handlers of batch jobs: submit, list, read, log, outputs, cancel, re-run."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Awaitable
from pathlib import Path
from typing import Any

from jupyter_dlinfra.backends import BackendError
from jupyter_dlinfra.core.books.jobs import Job
from jupyter_dlinfra.jobs.ranks import rank_dir
from jupyter_dlinfra.jobs.shape import MAX_GPUS_PER_NODE, MAX_NODES
from jupyter_dlinfra.server.errors import ApiError
from jupyter_dlinfra.server.handlers.base import DLInfraHandler, authorized
from jupyter_dlinfra.server.job_service import JobService, Submission
from jupyter_dlinfra.server.parsing import (
    MAX_BODY_BYTES,
    MAX_COUNT,
    MAX_ID,
    MAX_NAME,
    json_field_int,
    path_id,
    query_int,
    query_name,
    shown,
)
from jupyter_dlinfra.server.views import iso

__all__ = [
    "BackendsHandler",
    "JobHandler",
    "JobLogHandler",
    "JobOutputHandler",
    "JobRerunHandler",
    "JobsHandler",
    "job_json",
]

#: the most jobs one submission may wait for (each is looked up)
MAX_AFTER = 100
#: the longest notebook path taken (Linux's PATH_MAX)
_MAX_PATH = 4096
#: the most log text one call returns (bytes); the caller asks again from next_offset
MAX_LOG_CHUNK = 256 * 2**10
_OUTPUTS = {
    "notebook": ("executed.ipynb", "application/x-ipynb+json"),
    "html": ("report.html", "text/html; charset=utf-8"),
    "script": ("script.py", "text/x-python; charset=utf-8"),
    "log": ("job.log", "text/plain; charset=utf-8"),
}
_SUBMIT_FIELDS = {
    "path",
    "name",
    "gpus",
    "nodes",
    "gpus_per_node",
    "launcher",
    "roles",
    "model",
    "priority",
    "priority_class",
    "parameters",
    "sweep",
    "backend",
    "after",
    "notebook",
}


def _notebook(body: dict[str, Any]) -> bytes | None:
    """The notebook sent inline (by a user's server forwarding to the gateway), as bytes."""
    notebook = body.get("notebook")
    if notebook is None:
        return None
    if not isinstance(notebook, dict) or "cells" not in notebook:
        raise ApiError(
            400, "notebook must be the notebook itself (a JSON object with cells)", code="bad_field"
        )
    return json.dumps(notebook).encode()


def _relative(path: Path, root: Path) -> str | None:
    try:
        return path.resolve().relative_to(root.resolve()).as_posix()
    except ValueError:
        return None


def job_json(job: Job, root: Path, now: float) -> dict[str, Any]:
    workdir = Path(job.workdir)
    outputs: dict[str, str | None] = {}
    for key, (name, _) in _OUTPUTS.items():
        target = workdir / name
        outputs[key] = _relative(target, root) if target.exists() else None
    end = job.ended_at if job.ended_at is not None else now
    return {
        "id": job.id,
        "name": job.name,
        "user": job.user,
        "path": job.path,
        "backend": job.backend,
        "node": job.node,
        "gpus": job.gpus,
        # a distributed job: a rank per GPU, gpus_per_node of them on each of its nodes
        "nodes": job.nodes,
        "gpus_per_node": job.gpus_per_node,
        "world_size": job.world_size,
        "roles": None if job.roles is None else [dict(r) for r in job.roles],
        "model": job.model,
        "priority": job.priority,
        "priority_class": job.priority_class,
        "attempts": job.attempts,
        "parameters": dict(job.parameters),
        "after": list(job.after),
        "group_id": job.group_id,
        "state": job.state.value,
        "reason": job.reason,
        "position": job.queue_position,
        "queue_length": job.queue_length,
        "estimated_start": iso(job.estimated_start),
        "created_at": iso(job.created_at),
        "started_at": iso(job.started_at),
        "ended_at": iso(job.ended_at),
        "duration_s": round(end - job.started_at, 3) if job.started_at is not None else None,
        "allocation_id": job.allocation_id,
        "failed_cell": job.failed_cell,
        "error": job.error,
        "workdir": _relative(workdir, root),
        "outputs": outputs,
    }


class _JobBase(DLInfraHandler):
    @property
    def jobs(self) -> JobService:
        if self.kernel_scope is not None:
            # a kernel's token acts for its kernel only, and a job is no kernel's business
            raise ApiError(
                403,
                "batch jobs are managed by people (JupyterLab, jupyter dlinfra), not by a "
                "kernel's token",
                code="forbidden",
            )
        jobs = self.service.jobs
        if jobs is None:
            raise ApiError(503, "batch jobs are not enabled on this server", code="no_jobs")
        return jobs

    def view(self, job: Job) -> dict[str, Any]:
        return job_json(job, self.jobs.settings.root_dir, self.service.ledger.clock.now())

    async def own_job(self, raw_id: str) -> Job:
        job = await self.service.call(self.jobs.book.job, path_id(raw_id, "job"))
        if job.user != self.person() and not self.is_admin():
            raise ApiError(403, f"job {job.id} belongs to {job.user}", code="forbidden")
        return job


class JobsHandler(_JobBase):
    @authorized("read")
    async def get(self) -> None:
        state = self.get_query_argument("state", "all")
        if state not in ("active", "ended", "all"):
            raise ApiError(400, "state must be 'active', 'ended' or 'all'", code="bad_query")
        who = query_name(self.get_query_argument("user", None), "user")
        others = who == "*" or (who is not None and who != self.person())
        if others and not self.is_admin():
            raise ApiError(403, "only admins see other users' jobs", code="not_admin")
        user = None if who == "*" else (who or self.person())
        active = {"active": True, "ended": False, "all": None}[state]
        found = await self.service.call(self.jobs.book.jobs, user=user, active=active, limit=500)
        # each view looks at the job's files: off the event loop (they may be on NFS)
        views = await self.service.call(lambda: [self.view(j) for j in found])
        self.answer({"jobs": views})

    @authorized("write")
    async def post(self) -> None:
        # the notebook may come inline (JSON escapes can double its size)
        body = self.json_body(MAX_BODY_BYTES + 2 * self.jobs.settings.max_notebook_bytes)
        unknown = set(body) - _SUBMIT_FIELDS
        if unknown:
            raise ApiError(
                400,
                f"unknown field(s): {shown(', '.join(sorted(unknown)))}; expected "
                + ", ".join(sorted(_SUBMIT_FIELDS)),
                code="bad_field",
            )
        sub = Submission(
            user=self.person(),
            path=_string(body, "path", required=True) or "",
            name=_string(body, "name"),
            gpus=json_field_int(body, "gpus", minimum=0, maximum=MAX_COUNT),
            model=_string(body, "model"),
            priority=json_field_int(body, "priority", minimum=-1000, maximum=1000) or 0,
            priority_class=_string(body, "priority_class"),
            parameters=_object(body, "parameters"),
            sweep=_object(body, "sweep"),
            backend=_string(body, "backend"),
            after=_ids(body.get("after", [])),
            content=_notebook(body),
            nodes=json_field_int(body, "nodes", minimum=1, maximum=MAX_NODES),
            gpus_per_node=json_field_int(
                body, "gpus_per_node", minimum=1, maximum=MAX_GPUS_PER_NODE
            ),
            # checked by the service (jobs/shape.py's parse_roles): its errors are 400s
            roles=body.get("roles"),
            launcher=_string(body, "launcher"),
        )
        created = await self.service.jobs_call(self.jobs.submit, sub)
        # start it now rather than at the loop's next pass
        _background(self.service.jobs_pass())
        first = created[0]
        self.set_header("Location", self.base_url.rstrip("/") + f"/dlinfra/api/jobs/{first.id}")
        # a sweep's views look at every job's files: off the event loop, as in get()
        views = await self.service.call(lambda: [self.view(j) for j in created])
        if sub.sweep:
            self.answer({"group_id": first.group_id, "jobs": views}, status=201)
        else:
            self.answer(views[0], status=201)


class BackendsHandler(_JobBase):
    """The backends jobs can be submitted to, and the one used when a submission names none."""

    @authorized("read")
    async def get(self) -> None:
        jobs = self.jobs
        described = await self.service.call(lambda: [b.describe() for b in jobs.backends.values()])
        self.answer({"default": jobs.settings.default_backend, "backends": described})


class JobHandler(_JobBase):
    @authorized("read")
    async def get(self, job_id: str) -> None:
        self.answer(self.view(await self.own_job(job_id)))

    @authorized("write")
    async def delete(self, job_id: str) -> None:
        """Cancel: a queued job ends at once; a running one is stopped, its end follows."""
        job = await self.own_job(job_id)
        try:
            cancelled = await self.service.jobs_call(self.jobs.cancel, job, by=self.person())
        except BackendError as err:
            raise ApiError(
                502, f"{job.backend} could not cancel job {job.id}: {err}", code="backend_error"
            ) from None
        self.answer(self.view(cancelled))


class JobRerunHandler(_JobBase):
    @authorized("write")
    async def post(self, job_id: str) -> None:
        if self.json_body():
            raise ApiError(400, "a re-run takes no fields: send {}", code="bad_field")
        job = await self.own_job(job_id)
        created = await self.service.jobs_call(self.jobs.rerun, job, self.person())
        _background(self.service.jobs_pass())
        self.set_header(
            "Location", self.base_url.rstrip("/") + f"/dlinfra/api/jobs/{created[0].id}"
        )
        self.answer(self.view(created[0]), status=201)


class JobLogHandler(_JobBase):
    """The job's log from ``offset`` on: ask again from ``next_offset`` to follow it live."""

    @authorized("read")
    async def get(self, job_id: str) -> None:
        job = await self.own_job(job_id)
        offset = query_int(
            self.get_query_argument("offset", "0"), "offset (bytes)", minimum=0, maximum=MAX_ID
        )
        rank = self.get_query_argument("rank", None)
        if rank is None:
            path = Path(job.workdir) / "job.log"
        else:
            if not job.nodes:
                raise ApiError(
                    400, f"job {job.id} is one process: it has no ranks", code="bad_query"
                )
            number = query_int(rank, "rank", minimum=0, maximum=(job.world_size or 1) - 1)
            path = rank_dir(Path(job.workdir), number) / "job.log"
        start, data, size = await self.service.call(_read_from, path, offset, MAX_LOG_CHUNK)
        self.answer(
            {
                "job_id": job.id,
                "state": job.state.value,
                "offset": start,
                "next_offset": start + len(data),
                "size": size,
                "text": data.decode("utf-8", errors="replace"),
                "complete": not job.state.active and start + len(data) >= size,
            }
        )


class JobOutputHandler(_JobBase):
    """The executed notebook, the HTML report, the exported script or the log, as a file."""

    @authorized("read")
    async def get(self, job_id: str) -> None:
        job = await self.own_job(job_id)
        kind = self.get_query_argument("format", "notebook")
        if kind not in _OUTPUTS:
            raise ApiError(
                400,
                f"format must be one of {', '.join(_OUTPUTS)}, not {shown(kind)}",
                code="bad_query",
            )
        name, content_type = _OUTPUTS[kind]
        path = Path(job.workdir) / name
        if not path.is_file():
            state = job.state.value
            raise ApiError(
                404, f"job {job.id} has no {kind} output yet (it is {state})", code="no_output"
            )
        body = await self.service.call(path.read_bytes)
        self.set_header(
            "Content-Disposition", f'inline; filename="{job.id}-{os.path.basename(name)}"'
        )
        # a report holds whatever the notebook printed: it must not run in the server's origin
        self.set_header("Content-Security-Policy", "sandbox")
        self.finish(body, set_content_type=content_type)


_tasks: set[asyncio.Future[Any]] = set()


def _background(work: Awaitable[None]) -> None:
    task = asyncio.ensure_future(work)
    _tasks.add(task)
    task.add_done_callback(_tasks.discard)


def _read_from(path: Path, offset: int, limit: int) -> tuple[int, bytes, int]:
    """(where the text starts, the bytes, the file's size); never ends inside a character."""
    try:
        with path.open("rb") as f:
            size = os.fstat(f.fileno()).st_size
            start = min(offset, size)
            f.seek(start)
            data = f.read(limit)
    except FileNotFoundError:
        return 0, b"", 0
    if len(data) == limit:
        data = data[: len(data) - _partial_tail(data)]
    return start, data, size


def _partial_tail(data: bytes) -> int:
    """How many bytes at the end start a UTF-8 character that the chunk cuts."""
    for back in range(1, min(4, len(data)) + 1):
        byte = data[-back]
        if byte & 0xC0 != 0x80:  # not a continuation byte: the start of a character
            length = 1 if byte < 0x80 else 2 if byte >> 5 == 6 else 3 if byte >> 4 == 14 else 4
            return back if length > back else 0
    return 0


def _string(body: dict[str, Any], key: str, *, required: bool = False) -> str | None:
    value = body.get(key)
    if value is None:
        if required:
            raise ApiError(400, f"{key} is required", code="bad_field")
        return None
    if not isinstance(value, str) or not value.strip():
        raise ApiError(400, f"{key} must be a non-empty string", code="bad_field")
    # a path is checked as a path (jobs.notebook_path); names go to the ledger's columns,
    # whose PostgreSQL text refuses NUL
    limit = _MAX_PATH if key == "path" else MAX_NAME
    if len(value) > limit or (key != "path" and "\x00" in value):
        raise ApiError(
            400,
            f"{key} must be at most {limit} characters, without NUL, not {shown(value)}",
            code="bad_field",
        )
    return value


def _object(body: dict[str, Any], key: str) -> dict[str, Any] | None:
    value = body.get(key)
    if value is None:
        return None
    if not isinstance(value, dict):
        raise ApiError(400, f"{key} must be a JSON object", code="bad_field")
    return value


def _ids(value: Any) -> list[int]:
    if isinstance(value, int) and not isinstance(value, bool):
        value = [value]
    if (
        not isinstance(value, list)
        or len(value) > MAX_AFTER
        or not all(
            isinstance(v, int) and not isinstance(v, bool) and 0 < v <= MAX_ID for v in value
        )
    ):
        raise ApiError(
            400,
            f"after must be a list of at most {MAX_AFTER} job ids (from 1 to {MAX_ID}), such as "
            f"[3, 4], not {shown(value)}",
            code="bad_field",
        )
    return list(dict.fromkeys(value))
