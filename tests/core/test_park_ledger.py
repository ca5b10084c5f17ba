"""Parking in the ledger, on SQLite and PostgreSQL: each step is written with its event, parked
GPUs are lent only to preemptible jobs, a resume takes them back, and a reopened ledger (a server
restart) carries on from any step."""

from __future__ import annotations

import pytest

from jupyter_dlinfra.core.books.parking import ParkBook
from jupyter_dlinfra.core.errors import Conflict
from jupyter_dlinfra.core.models import AllocationState

from .kit import Kit


@pytest.fixture
def parked(kit: Kit) -> tuple[Kit, int]:
    """Node a has 2 GPUs, both granted to ann's kernel, which is then parked."""
    kit.node("node-a", (2, "NVIDIA A100-SXM4-80GB"))
    kit.kernel("k-ann", user="ann")
    alloc = kit.ledger.request(kernel_id="k-ann", count=2)
    book = ParkBook(kit.ledger)
    book.begin(alloc.id, reason="idle for 2 min")
    book.parked(alloc.id, gpu_bytes=3 << 30, seconds=1.5)
    return kit, alloc.id


def kinds(kit: Kit, allocation_id: int) -> list[str]:
    return [e.kind for e in kit.ledger.events() if e.allocation_id == allocation_id]


def test_park_steps_are_events_and_the_gpus_go_to_a_preemptible_job_only(
    parked: tuple[Kit, int],
) -> None:
    kit, aid = parked
    ledger = kit.ledger
    alloc = ledger.allocation(aid)
    assert alloc.park_state == "parked" and alloc.parked and alloc.park_bytes == 3 << 30
    assert kinds(kit, aid) == ["requested", "granted", "parking", "parked"]
    assert ledger.held_on("node-a") == set()
    kit.kernel("k-bob", user="bob")
    kernel = ledger.request(kernel_id="k-bob", count=1)
    assert kernel.state is AllocationState.QUEUED  # a kernel never borrows parked GPUs
    kit.kernel("job-1", user="cat")
    loan = ledger.request(kernel_id="job-1", count=2, kind="job", priority_class="batch")
    assert loan.state is AllocationState.GRANTED and loan.on_loan
    assert set(loan.gpus) == set(alloc.gpus)
    assert ParkBook(ledger).parked_bytes("node-a") == 3 << 30


def test_resume_preempts_the_loan_and_returns_the_gpus_once_it_ended(
    parked: tuple[Kit, int],
) -> None:
    kit, aid = parked
    ledger, book = kit.ledger, ParkBook(kit.ledger)
    kit.kernel("job-1", user="cat")
    loan = ledger.request(kernel_id="job-1", count=2, kind="job", priority_class="batch")
    resuming = book.resume(aid)
    assert resuming.park_state == "resuming"
    marked = ledger.allocation(loan.id)
    assert marked.preempted_for == aid and "resumed" in (marked.preempt_reason or "")
    assert book.resume(aid).park_state == "resuming"  # asked twice: the same
    with pytest.raises(Conflict, match="resuming, not restoring"):
        book.resumed(aid, seconds=1.0)
    ledger.release(loan.id, reason="job preempted")
    back = ledger.allocation(aid)
    assert back.park_state == "restoring"
    assert ledger.held_on("node-a") == set(back.gpus)
    done = book.resumed(aid, seconds=2.0)
    assert done.park_state is None and done.parked_at is None
    assert kinds(kit, aid)[-3:] == ["resuming", "park_returned", "resumed"]


def test_resume_with_nothing_lent_is_at_once(parked: tuple[Kit, int]) -> None:
    kit, aid = parked
    book = ParkBook(kit.ledger)
    assert book.resume(aid).park_state == "restoring"
    assert kit.ledger.held_on("node-a") == set(kit.ledger.allocation(aid).gpus)


def test_an_abandoned_park_keeps_the_gpus_and_says_why(kit: Kit) -> None:
    kit.node("node-a", (1, "NVIDIA A100-SXM4-80GB"))
    kit.kernel("k-ann", user="ann")
    alloc = kit.ledger.request(kernel_id="k-ann", count=1)
    book = ParkBook(kit.ledger)
    book.begin(alloc.id, reason="idle")
    with pytest.raises(Conflict, match="parking already"):
        book.begin(alloc.id, reason="again")
    back = book.abandon(alloc.id, why="NCCL communicators are open")
    assert back.park_state is None and kit.ledger.held_on("node-a") == set(alloc.gpus)
    failed = [e for e in kit.ledger.events() if e.kind == "park_failed"]
    assert failed[-1].detail["reason"] == "NCCL communicators are open"


def test_jobs_and_queued_requests_are_not_parked(kit: Kit) -> None:
    kit.node("node-a", (1, "NVIDIA A100-SXM4-80GB"))
    kit.kernel("job-1", user="cat")
    job = kit.ledger.request(kernel_id="job-1", count=1, kind="job", priority_class="batch")
    kit.kernel("k-ann", user="ann")
    queued = kit.ledger.request(kernel_id="k-ann", count=1)
    book = ParkBook(kit.ledger)
    with pytest.raises(Conflict, match="only a notebook kernel"):
        book.begin(job.id, reason="idle")
    with pytest.raises(Conflict, match="queued, not granted"):
        book.begin(queued.id, reason="idle")


def test_a_failed_restore_ends_the_grant(parked: tuple[Kit, int]) -> None:
    kit, aid = parked
    book = ParkBook(kit.ledger)
    book.resume(aid)
    ended = book.restore_failed(aid, why="CUDA_ERROR_ILLEGAL_STATE")
    assert ended.state is AllocationState.RELEASED
    assert "resuming its parked GPUs failed" in (ended.end_reason or "")
    assert kit.ledger.held_on("node-a") == set()
    assert kit.ledger.gpus("node-a")  # the GPUs are everyone's again
    kit.kernel("k-bob", user="bob")
    assert kit.ledger.request(kernel_id="k-bob", count=2).state is AllocationState.GRANTED


def test_a_reopened_ledger_keeps_parked_grants_and_their_loans(parked: tuple[Kit, int]) -> None:
    kit, aid = parked
    kit.kernel("job-1", user="cat")
    loan = kit.ledger.request(kernel_id="job-1", count=1, kind="job", priority_class="batch")
    assert loan.on_loan
    kit.reopen()
    ledger, book = kit.ledger, ParkBook(kit.ledger)
    assert ledger.allocation(aid).park_state == "parked"
    kit.kernel("job-2", user="dan")
    second = ledger.request(kernel_id="job-2", count=1, kind="job", priority_class="batch")
    assert second.on_loan and set(second.gpus).isdisjoint(loan.gpus)
    assert book.resume(aid).park_state == "resuming"
    kit.reopen()
    ledger, book = kit.ledger, ParkBook(kit.ledger)
    ledger.release(loan.id, reason="job preempted")
    assert ledger.allocation(aid).park_state == "resuming"
    ledger.release(second.id, reason="job preempted")
    assert ledger.allocation(aid).park_state == "restoring"
    assert [a.id for a in book.in_progress(["k-ann"])] == [aid]
    book.resumed(aid, seconds=1.0)
    assert book.in_progress(["k-ann"]) == []
