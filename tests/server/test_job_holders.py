"""A queued job of a server that crashed keeps its GPU request until a server adopts it.

Found by the crash soak (seed 1313): the surviving server's reconcile judged the dead server's
queued job before its job loop adopted it, cancelled the job's request, and the adopted job then
failed with "its GPU request ended: kernel no longer exists".
"""

from __future__ import annotations

from typing import Any

import pytest

from jupyter_dlinfra.backends.base import BackendState, JobHandle
from jupyter_dlinfra.core.books.jobs import JOB_KERNEL_NAME, Job, JobState, NewJob
from jupyter_dlinfra.core.models import AllocationState, KernelRecord


@pytest.fixture
def dlinfra_config() -> dict[str, Any]:
    # a job loop that is on, but whose first pass is far off: the test makes the passes
    return {"simulated_gpus": 2, "user_name": "alice", "job_interval": 3600}


def _orphan(app: Any, user: str) -> tuple[Job, int]:
    """A queued job of a crashed server with the GPU request its job loop made for it."""
    service = app.service
    book = service.jobs.book
    job = book.create(
        NewJob(
            user=user,
            name="orphan",
            path="orphan.ipynb",
            backend="local",
            node=service.settings.node,
            server_id="crashed-server",
            gpus=1,
        ),
        workdir_for=lambda i: service.jobs.settings.jobs_root / f"{i}-orphan",
    )
    service.ledger.register_kernel(
        KernelRecord(
            kernel_id=job.kernel_id,
            user=user,
            node=service.settings.node,
            server_id="crashed-server",
            kernel_name=JOB_KERNEL_NAME,
        )
    )
    alloc = service.ledger.request(kernel_id=job.kernel_id, count=1, kind="job")
    return book.update(job.id, allocation_id=alloc.id), alloc.id


def _hold_every_gpu(app: Any) -> None:
    ledger = app.service.ledger
    settings = app.service.settings
    ledger.register_kernel(
        KernelRecord(
            kernel_id="busy",
            user="carol",
            node=settings.node,
            server_id=settings.server_id,
            pid=None,
        )
    )
    assert ledger.request(kernel_id="busy", count=2).state is AllocationState.GRANTED


async def test_the_reconcile_keeps_the_request_of_a_job_this_server_adopts(
    dlinfra_app: Any,
) -> None:
    service = dlinfra_app.service
    job, alloc_id = _orphan(dlinfra_app, "alice")
    await service.reconcile()
    assert service.ledger.allocation(alloc_id).state is AllocationState.GRANTED
    assert [j.id for j in await service.call(service.jobs.adopt)] == [job.id]


async def test_a_job_whose_request_was_given_back_asks_again_once_adopted(
    dlinfra_app: Any,
) -> None:
    service = dlinfra_app.service
    _hold_every_gpu(dlinfra_app)
    # bob's job: this server (alice's) does not adopt it, so its request goes back
    job, alloc_id = _orphan(dlinfra_app, "bob")
    await service.reconcile()
    assert service.ledger.allocation(alloc_id).state is AllocationState.CANCELLED
    # bob's server adopts it (this server stands in for it) and its pass starts it
    service.jobs.book.update(job.id, server_id=service.settings.server_id)
    await service.jobs_pass()
    now = service.jobs.book.job(job.id)
    assert now.state is JobState.QUEUED, now
    assert now.allocation_id not in (None, alloc_id)
    assert service.ledger.allocation(now.allocation_id).state is AllocationState.QUEUED
    assert "waiting for 1 GPU at position 1" in (now.reason or "")


def _preempted_running_job(app: Any, backend: str) -> Job:
    """A batch job of this server that runs on both GPUs, then preempted for a notebook."""
    service = app.service
    book = service.jobs.book
    job = book.create(
        NewJob(
            user="alice",
            name="train",
            path="train.ipynb",
            backend=backend,
            node=service.settings.node,
            server_id=service.settings.server_id,
            gpus=2,
        ),
        workdir_for=lambda i: service.jobs.settings.jobs_root / f"{i}-train",
    )
    service.ledger.register_kernel(
        KernelRecord(
            kernel_id=job.kernel_id,
            user="alice",
            node=service.settings.node,
            server_id=service.settings.server_id,
            kernel_name=JOB_KERNEL_NAME,
        )
    )
    alloc = service.ledger.request(
        kernel_id=job.kernel_id, count=2, kind="job", priority_class="batch"
    )
    assert alloc.state is AllocationState.GRANTED
    book.update(job.id, allocation_id=alloc.id)
    book.start(job.id, handle={"backend": backend, "ref": str(job.id), "detail": {}}, reason=None)
    _hold_every_gpu_later(app)
    assert service.ledger.allocation(alloc.id).preempted_for is not None
    return book.job(job.id)


def _hold_every_gpu_later(app: Any) -> None:
    ledger = app.service.ledger
    settings = app.service.settings
    ledger.register_kernel(
        KernelRecord(kernel_id="notebook", user="carol", node=settings.node, server_id="x")
    )
    assert ledger.request(kernel_id="notebook", count=2).state is AllocationState.QUEUED


async def test_a_preempted_job_whose_gpus_a_reconcile_gave_back_is_queued_again(
    dlinfra_app: Any,
) -> None:
    """Found by the crash soak (seed 1313, PostgreSQL): the preemption's SIGTERM ended the job's
    process, a reconcile (the crashed server's successor's) released its GPUs before the job
    loop saw the end, and the job was recorded as failed ("killed by signal 15")."""
    service = dlinfra_app.service
    job = _preempted_running_job(dlinfra_app, "local")
    service.ledger.forget_kernel(job.kernel_id, reason="kernel no longer exists")
    service.jobs._record_end(job, BackendState.FAILED, "the job's process was killed by signal 15")
    now = service.jobs.book.job(job.id)
    assert (now.state, now.attempts) == (JobState.QUEUED, job.attempts + 1), now
    assert "preempted for request" in (now.reason or "")


class _Recording:
    """A backend that remembers what the ledger said of the job when it was told to stop it."""

    places_gpus = False

    def __init__(self, book: Any) -> None:
        self.book = book
        self.reasons: list[str | None] = []

    def cancel(self, handle: JobHandle) -> None:
        self.reasons.append(self.book.job(int(handle.ref)).reason)

    def close(self) -> None:
        pass


async def test_a_preemption_is_recorded_before_the_job_is_stopped(dlinfra_app: Any) -> None:
    service = dlinfra_app.service
    backend = _Recording(service.jobs.book)
    service.jobs.backends["recording"] = backend
    job = _preempted_running_job(dlinfra_app, "recording")
    service.jobs._stop_preempted([job])
    assert len(backend.reasons) == 1
    assert (backend.reasons[0] or "").startswith("being stopped for a higher-priority"), backend


async def test_a_job_stopped_for_a_preemption_then_withdrawn_is_queued_again(
    dlinfra_app: Any,
) -> None:
    """Found by the crash soak (seed 1313, PostgreSQL, under load): the request a job was
    stopped for was withdrawn (its allocation then says nothing of a preemption) and the job's
    process ended before the next pass; the pass that stopped it polled it with the reason it
    had read before, and recorded the SIGTERM as a failure."""
    service = dlinfra_app.service
    backend = _Recording(service.jobs.book)
    service.jobs.backends["recording"] = backend
    job = _preempted_running_job(dlinfra_app, "recording")
    polled = service.jobs._stop_preempted([job])
    assert backend.reasons, "the job was not stopped"
    alloc = service.ledger.allocation(job.allocation_id)
    assert alloc.preempted_for is not None
    service.ledger.release(alloc.preempted_for, reason="released by the user")
    assert service.ledger.allocation(job.allocation_id).preempted_for is None
    service.jobs._record_end(polled[0], BackendState.FAILED, "killed by signal 15")
    now = service.jobs.book.job(job.id)
    assert (now.state, now.attempts) == (JobState.QUEUED, job.attempts + 1), now
