"""The job book on both stores: lifecycle, chains, cancellation of dependents, events."""

from __future__ import annotations

from typing import Any

import pytest

from jupyter_dlinfra.core.books.jobs import JobBook, JobState, NewJob
from jupyter_dlinfra.core.errors import Conflict, InvalidRequest, NotFound

from .kit import Kit


def submit(book: JobBook, name: str = "train", **extra: Any) -> Any:
    fields: dict[str, Any] = {
        "user": "alice",
        "name": name,
        "path": f"{name}.ipynb",
        "backend": "local",
        "node": "node-a",
        "server_id": "srv-1",
        **extra,
    }
    return book.create(NewJob(**fields), workdir_for=lambda i: f"/jobs/{i}-{name}")


@pytest.fixture
def book(kit: Kit) -> JobBook:
    return JobBook(kit.store, kit.clock)


def test_a_job_lives_queued_running_succeeded(kit: Kit, book: JobBook) -> None:
    t0 = kit.clock.now()
    job = submit(book, gpus=2, priority=5, parameters={"lr": 0.1})
    assert (job.id, job.state, job.workdir, job.reason) == (
        1,
        JobState.QUEUED,
        "/jobs/1-train",
        "waiting for 2 GPUs",
    )
    assert job.parameters == {"lr": 0.1} and job.kernel_id == "job-1" and job.created_at == t0
    kit.clock.advance(5)
    running = book.start(job.id, handle={"backend": "local", "ref": "42"}, reason=None)
    assert running.state is JobState.RUNNING and running.started_at == t0 + 5
    assert running.handle == {"backend": "local", "ref": "42"}
    with pytest.raises(Conflict):
        book.start(job.id, handle=None, reason=None)
    kit.clock.advance(10)
    [done] = book.finish(job.id, JobState.SUCCEEDED, None)
    assert done.state is JobState.SUCCEEDED and done.ended_at == t0 + 15
    # ending twice changes nothing
    assert book.finish(job.id, JobState.FAILED, "late") == []
    assert book.job(job.id).state is JobState.SUCCEEDED
    kinds = [e.kind for e in kit.ledger.events() if e.kernel_id == "job-1"]
    assert kinds == ["job_submitted", "job_started", "job_ended"]


def test_a_failure_cancels_the_whole_chain_below_it(kit: Kit, book: JobBook) -> None:
    first = submit(book, "prep")
    second = submit(book, "train", after=[first.id])
    third = submit(book, "eval", after=[second.id])
    other = submit(book, "other")
    assert second.reason == f"waiting for job {first.id}" and second.after == (first.id,)
    assert book.waiting_on(first.id) == [second.id]
    ended = book.finish(first.id, JobState.FAILED, "failed in cell 2", failed_cell=2, error="E")
    assert [(j.id, j.state) for j in ended] == [
        (first.id, JobState.FAILED),
        (second.id, JobState.CANCELLED),
        (third.id, JobState.CANCELLED),
    ]
    assert book.job(first.id).failed_cell == 2 and book.job(first.id).error == "E"
    assert book.job(second.id).reason == f"job {first.id} it runs after failed"
    assert book.job(third.id).reason == f"job {second.id} it runs after cancelled"
    assert book.job(other.id).state is JobState.QUEUED


def test_a_success_leaves_the_chain_queued(book: JobBook) -> None:
    first = submit(book, "prep")
    second = submit(book, "train", after=[first.id])
    book.start(first.id, handle=None, reason=None)
    assert [j.id for j in book.finish(first.id, JobState.SUCCEEDED, None)] == [first.id]
    assert book.job(second.id).state is JobState.QUEUED


def test_after_a_job_that_already_failed_is_cancelled_at_once(book: JobBook) -> None:
    first = submit(book, "prep")
    book.finish(first.id, JobState.FAILED, "boom")
    late = submit(book, "train", after=[first.id])
    assert late.state is JobState.CANCELLED
    assert late.reason == f"job {first.id} it runs after failed"


def test_bad_submissions_are_refused(book: JobBook) -> None:
    with pytest.raises(NotFound, match="no job 99 to run after"):
        submit(book, after=[99])
    mine = submit(book)
    with pytest.raises(InvalidRequest, match="belongs to alice"):
        submit(book, user="bob", after=[mine.id])
    with pytest.raises(InvalidRequest, match="0 GPUs or more"):
        submit(book, gpus=-1)
    with pytest.raises(NotFound):
        book.job(12345)


def test_listing_filters_and_sweeps_share_a_group(book: JobBook) -> None:
    a = submit(book, "a", group_id="g1")
    b = submit(book, "b", group_id="g1")
    c = submit(book, "c", user="bob")
    book.finish(a.id, JobState.CANCELLED, "cancelled by alice")
    assert [j.id for j in book.jobs(user="alice")] == [b.id, a.id]  # newest first
    assert [j.id for j in book.jobs(active=True)] == [c.id, b.id]
    assert [j.id for j in book.jobs(active=False)] == [a.id]
    assert [j.id for j in book.jobs(group_id="g1")] == [b.id, a.id]
    assert [j.id for j in book.jobs(limit=1)] == [c.id]


def test_bookkeeping_updates_are_limited(book: JobBook) -> None:
    job = submit(book)
    updated = book.update(job.id, reason="waiting", allocation_id=7, handle={"ref": "x"})
    assert (updated.reason, updated.allocation_id, updated.handle) == ("waiting", 7, {"ref": "x"})
    with pytest.raises(ValueError, match="cannot update state"):
        book.update(job.id, state="running")


def test_jobs_survive_reopening_the_store(kit: Kit) -> None:
    book = JobBook(kit.store, kit.clock)
    first = submit(book, "prep")
    submit(book, "train", after=[first.id])
    kit.reopen()
    again = JobBook(kit.store, kit.clock)
    assert [j.after for j in again.jobs()] == [(first.id,), ()]


def test_a_distributed_jobs_nodes_are_kept(kit: Kit, book: JobBook) -> None:
    job = submit(book, gpus=16, nodes=2)
    assert (job.nodes, job.gpus_per_node) == (2, 8)
    assert book.job(job.id).nodes == 2
    one = submit(book, "one", gpus=4)
    assert (one.nodes, one.gpus_per_node) == (None, None)


def test_a_ledger_from_before_distributed_jobs_gains_their_column(tmp_path: Any) -> None:
    from sqlalchemy import text

    from jupyter_dlinfra.core.store import Store

    url = f"sqlite:///{tmp_path}/old.sqlite"
    Store(url).dispose()
    old = Store(url)
    with old.engine.begin() as conn:  # as schema 11 made it: no nodes column
        conn.execute(text("ALTER TABLE dlinfra_jobs DROP COLUMN nodes"))
    old.dispose()
    store = Store(url)
    try:
        with store.engine.connect() as conn:
            columns = {r[1] for r in conn.execute(text("PRAGMA table_info(dlinfra_jobs)"))}
        assert "nodes" in columns
    finally:
        store.dispose()
