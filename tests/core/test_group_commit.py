"""Requests and releases that arrive together share one write transaction and one pass.

The batches are made deterministic by holding the ledger's lock while the callers' threads
leave their changes (each then waits for the lock), and letting go once all of them wait.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from sqlalchemy import event, select

from jupyter_dlinfra.core.books.group_commit import Combiner, CountedLock, Outcome
from jupyter_dlinfra.core.books.ledger import Ledger
from jupyter_dlinfra.core.errors import Conflict, NotFound
from jupyter_dlinfra.core.models import Allocation, AllocationState
from jupyter_dlinfra.core.store import holdings

from .kit import Kit

DEADLINE_S = 30.0


def _wait_for(predicate: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + DEADLINE_S
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.002)


def together(ledger: Ledger, calls: list[Callable[[], Allocation]]) -> list[Allocation | Exception]:
    """Run ``calls`` from one thread each, all left waiting before the first is made."""
    answers: list[Allocation | Exception | None] = [None] * len(calls)

    def run(i: int) -> None:
        try:
            answers[i] = calls[i]()
        except Exception as err:
            answers[i] = err

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(calls))]
    with ledger._lock:
        for t in threads:
            t.start()
        _wait_for(lambda: ledger._combiner.pending == len(calls), "every change to wait")
    for t in threads:
        t.join(DEADLINE_S)
        assert not t.is_alive()
    assert all(a is not None for a in answers)
    return answers  # type: ignore[return-value]


@contextmanager
def commits(kit: Kit) -> Iterator[list[int]]:
    """Counts the store's commits (one per write transaction)."""
    count = [0]

    def seen(conn: Any) -> None:
        count[0] += 1

    event.listen(kit.store.engine, "commit", seen)
    try:
        yield count
    finally:
        event.remove(kit.store.engine, "commit", seen)


def _state_as_stored(kit: Kit) -> tuple[list[tuple[int, str, int | None]], dict[str, int]]:
    """The queue as a fresh ledger on the same database reads it, and who holds each GPU."""
    fresh = Ledger(kit.store, kit.clock)
    queue = [(a.id, a.kernel_id, a.position) for a in fresh.queue()]
    with kit.store.read() as conn:
        held = {r.gpu_uuid: r.allocation_id for r in conn.execute(select(holdings))}
    return queue, held


def test_requests_that_come_together_share_one_transaction_and_one_pass(kit: Kit) -> None:
    kit.node("node-a")  # four GPUs
    for i in range(6):
        kit.kernel(f"k{i}", user=f"u{i}")
    with commits(kit) as count:
        answers = together(
            kit.ledger,
            [
                (lambda i=i: kit.ledger.request(kernel_id=f"k{i}", count=1))  # type: ignore[misc]
                for i in range(6)
            ],
        )
    assert count[0] == 1
    allocs = [a for a in answers if isinstance(a, Allocation)]
    assert len(allocs) == 6
    granted = [a for a in allocs if a.state is AllocationState.GRANTED]
    queued = [a for a in allocs if a.state is AllocationState.QUEUED]
    assert len(granted) == 4 and len(queued) == 2
    assert len({g for a in granted for g in a.gpus}) == 4
    # the ones that wait are told where they stand, as after a request of their own
    assert sorted(a.position for a in queued) == [1, 2]  # type: ignore[type-var]
    assert all(a.waiting_reason for a in queued)
    queue, held = _state_as_stored(kit)
    # ... and what they were told is what a fresh load of the database says
    assert {(aid, pos) for aid, _, pos in queue} == {(a.id, a.position) for a in queued}
    assert sorted(held.values()) == sorted(a.id for a in granted for _ in a.gpus)


def test_a_refused_change_fails_alone_and_the_others_are_made(kit: Kit) -> None:
    kit.node("node-a")
    for i in range(3):
        kit.kernel(f"k{i}", user=f"u{i}")
    first = kit.ledger.request(kernel_id="k0", count=2)
    with commits(kit) as count:
        answers = together(
            kit.ledger,
            [
                lambda: kit.ledger.request(kernel_id="k1", count=1),
                lambda: kit.ledger.request(kernel_id="nobody", count=1),
                lambda: kit.ledger.request(kernel_id="k0", count=3),  # k0 holds 2 already
                lambda: kit.ledger.release(first.id, reason="done"),
                lambda: kit.ledger.request(kernel_id="k2", count=2),
            ],
        )
    assert count[0] == 1
    one, unknown, again, released, two = answers
    assert isinstance(unknown, NotFound)
    assert isinstance(again, Conflict) and again.reason == "already_allocated"
    assert isinstance(released, Allocation) and released.state is AllocationState.RELEASED
    assert isinstance(one, Allocation) and one.state is AllocationState.GRANTED
    assert isinstance(two, Allocation) and two.state is AllocationState.GRANTED
    _, held = _state_as_stored(kit)
    assert sorted(held.values()) == sorted([one.id, two.id, two.id])


class NotYours(Exception):
    """What a handler's own check of an allocation raises (an HTTP 403 or 409 there)."""


def test_the_callers_check_refuses_its_change_alone_and_keeps_the_state(
    kit: Kit, monkeypatch: pytest.MonkeyPatch
) -> None:
    kit.node("node-a")
    for i in range(3):
        kit.kernel(f"k{i}", user=f"u{i}")
    theirs = kit.ledger.request(kernel_id="k0", count=2)
    loads: list[int] = []
    load = Ledger._load_state

    def counting(self: Ledger, *args: Any) -> Any:
        loads.append(1)
        return load(self, *args)

    monkeypatch.setattr(Ledger, "_load_state", counting)

    def not_yours(alloc: Allocation) -> None:
        raise NotYours(f"allocation {alloc.id} is not yours")

    with commits(kit) as count:
        answers = together(
            kit.ledger,
            [
                lambda: kit.ledger.request(kernel_id="k1", count=1),
                lambda: kit.ledger.release(theirs.id, reason="by mallory", check=not_yours),
                lambda: kit.ledger.request(kernel_id="k2", count=1),
            ],
        )
    one, refused, two = answers
    assert isinstance(refused, NotYours)
    assert isinstance(one, Allocation) and one.state is AllocationState.GRANTED
    assert isinstance(two, Allocation) and two.state is AllocationState.GRANTED
    # one transaction, and the state in memory kept: a refusal costs no reload of the ledger
    assert count[0] == 1
    assert loads == []
    assert kit.ledger.allocation(theirs.id).state is AllocationState.GRANTED


def test_a_change_that_fails_after_writing_undoes_the_batch_and_each_is_made_alone(
    kit: Kit, caplog: pytest.LogCaptureFixture
) -> None:
    kit.node("node-a")

    def groups_of(user: str) -> tuple[str, ...]:
        if user == "mallory":
            raise RuntimeError("the directory does not answer for mallory")
        return ()

    kit.ledger.groups_of = groups_of
    kit.kernel("k0", user="alice")
    kit.kernel("k1", user="mallory")
    kit.kernel("k2", user="bob")
    with commits(kit) as count:
        answers = together(
            kit.ledger,
            [
                lambda: kit.ledger.request(kernel_id="k0", count=1),
                lambda: kit.ledger.request(kernel_id="k1", count=1),
                lambda: kit.ledger.request(kernel_id="k2", count=1),
            ],
        )
    alice, mallory, bob = answers
    assert isinstance(mallory, RuntimeError)
    assert isinstance(alice, Allocation) and alice.state is AllocationState.GRANTED
    assert isinstance(bob, Allocation) and bob.state is AllocationState.GRANTED
    assert count[0] == 2  # alice's and bob's, each alone; the batch's was undone
    assert "3 changes of the ledger that came together failed" in caplog.text
    # nothing of the undone batch is left, in the database or in the ledger's memory
    queue, held = _state_as_stored(kit)
    assert queue == []
    assert sorted(held.values()) == [alice.id, bob.id]
    assert [a.id for a in kit.ledger.allocations()] == [alice.id, bob.id]
    assert kit.ledger.request(kernel_id="k0", count=1).id == alice.id  # held, as it was


def test_many_threads_at_once_leave_the_ledger_as_a_fresh_load_reads_it(kit: Kit) -> None:
    kit.node("node-a", (8, "NVIDIA A100-SXM4-80GB"))
    threads, rounds = 6, 12
    for t in range(threads):
        for r in range(rounds):
            kit.kernel(f"t{t}-{r}", user=f"u{t}")
    errors: list[BaseException] = []

    def work(t: int) -> None:
        try:
            for r in range(rounds):
                alloc = kit.ledger.request(kernel_id=f"t{t}-{r}", count=1 + (t + r) % 3)
                if r % 2:
                    kit.ledger.release(alloc.id, reason="done")
        except BaseException as err:
            errors.append(err)

    workers = [threading.Thread(target=work, args=(t,)) for t in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(DEADLINE_S)
    assert errors == []
    mine = kit.ledger.allocations()
    queue, held = _state_as_stored(kit)
    assert [(a.id, a.kernel_id, a.position) for a in kit.ledger.queue()] == queue
    granted = {a.id: a for a in mine if a.state is AllocationState.GRANTED}
    assert sorted(held.values()) == sorted(aid for aid, a in granted.items() for _ in a.gpus)
    assert sum(a.count for a in granted.values()) <= 8


class _Job:
    def __init__(self, value: int) -> None:
        self.value = value
        self.outcome: Outcome[int] = Outcome()


def test_the_combiner_hands_every_waiting_change_to_the_holder_of_the_lock() -> None:
    lock = CountedLock()
    batches: list[list[int]] = []

    def run(batch: list[_Job]) -> None:
        batches.append([job.value for job in batch])
        for job in batch:
            if job.value == 3:
                job.outcome.fail(ValueError("three is refused"))
            elif job.value != 4:  # four is forgotten: its caller must not wait for ever
                job.outcome.answer(job.value * 10)

    combiner: Combiner[_Job] = Combiner(lock, run, most=3)
    answers: dict[int, object] = {}

    def call(value: int) -> None:
        job = _Job(value)
        combiner.submit(job)
        try:
            answers[value] = job.outcome.value()
        except Exception as err:
            answers[value] = err

    threads = [threading.Thread(target=call, args=(v,)) for v in range(1, 6)]
    with lock:
        for started, t in enumerate(threads, start=1):
            t.start()
            # one at a time, so that the order they wait in is known
            _wait_for(lambda n=started: combiner.pending == n, "the change to wait")  # type: ignore[misc]
    for t in threads:
        t.join(DEADLINE_S)
    assert batches == [[1, 2, 3], [4, 5]]  # at most three at a time, in the order they came
    assert answers[1] == 10 and answers[2] == 20 and answers[5] == 50
    assert isinstance(answers[3], ValueError)
    assert isinstance(answers[4], RuntimeError)
    assert "not carried out" in str(answers[4])


def test_a_batch_holds_at_least_one_change() -> None:
    with pytest.raises(ValueError, match="at least one"):
        Combiner(CountedLock(), lambda batch: None, most=0)


def test_a_change_made_from_inside_a_batch_is_refused_not_left_waiting() -> None:
    lock = CountedLock()
    combiner: Combiner[_Job] = Combiner(lock, lambda batch: None)
    inner = _Job(2)

    def run(batch: list[_Job]) -> None:
        for job in batch:
            try:
                combiner.submit(inner)
            except RuntimeError as err:
                job.outcome.answer(0)
                inner.outcome.fail(err)

    combiner._run = run
    outer = _Job(1)
    combiner.submit(outer)
    assert outer.outcome.value() == 0
    with pytest.raises(RuntimeError, match="from inside a batch"):
        inner.outcome.value()


class _Told:
    """What posted changes' callbacks were given, and on which thread."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, Any]] = []
        self._lock = threading.Lock()

    def __call__(self, outcome: Outcome[Any]) -> None:
        try:
            value: Any = outcome.value()
        except Exception as err:
            value = err
        with self._lock:
            self.seen.append((threading.current_thread().name, value))


def test_posted_changes_run_on_the_writing_thread_as_one_batch_and_are_told() -> None:
    lock = CountedLock()
    batches: list[list[int]] = []

    def run(batch: list[_Job]) -> None:
        batches.append([job.value for job in batch])
        for job in batch:
            if job.value == 3:
                job.outcome.fail(ValueError("three is refused"))
            else:
                job.outcome.answer(job.value * 10)

    combiner: Combiner[_Job] = Combiner(lock, run)
    told = _Told()
    with lock:
        for value in range(1, 6):
            combiner.post(_Job(value), told)  # returns at once, the lock held here
        assert combiner.pending == 5 and told.seen == []
    _wait_for(lambda: len(told.seen) == 5, "every posted change to be told")
    assert batches == [[1, 2, 3, 4, 5]]  # whatever waited when the writer got the lock
    assert {name for name, _ in told.seen} == {"dlinfra-ledger-writer"}
    values = dict(enumerate((v for _, v in told.seen), start=1))
    assert [values[i] for i in (1, 2, 4, 5)] == [10, 20, 40, 50]
    assert isinstance(values[3], ValueError)


def test_a_caller_of_submit_and_posted_changes_share_a_batch() -> None:
    lock = CountedLock()
    batches: list[list[int]] = []

    def run(batch: list[_Job]) -> None:
        batches.append([job.value for job in batch])
        for job in batch:
            job.outcome.answer(job.value)

    combiner: Combiner[_Job] = Combiner(lock, run)
    told = _Told()
    blocking = _Job(1)
    caller = threading.Thread(target=combiner.submit, args=(blocking,))
    with lock:
        caller.start()
        _wait_for(lambda: combiner.pending == 1, "the blocking change to wait")
        combiner.post(_Job(2), told)
        combiner.post(_Job(3), told)
    caller.join(DEADLINE_S)
    _wait_for(lambda: len(told.seen) == 2, "the posted changes to be told")
    assert blocking.outcome.value() == 1
    assert batches == [[1, 2, 3]]


def test_a_callback_that_fails_does_not_keep_the_others_of_its_batch_from_being_told() -> None:
    lock = CountedLock()

    def run(batch: list[_Job]) -> None:
        for job in batch:
            job.outcome.answer(job.value)

    def broken(outcome: Outcome[Any]) -> None:
        raise RuntimeError("the loop has gone")

    combiner: Combiner[_Job] = Combiner(lock, run)
    told = _Told()
    with lock:
        combiner.post(_Job(1), broken)
        combiner.post(_Job(2), told)
    _wait_for(lambda: len(told.seen) == 1, "the second change to be told")
    assert told.seen[0][1] == 2
    combiner.post(_Job(3), told)  # the writing thread goes on
    _wait_for(lambda: len(told.seen) == 2, "a later change to be told")


def test_the_writing_thread_lets_a_waiting_reader_take_the_lock_before_it_takes_it_again() -> None:
    lock = CountedLock()
    reading = threading.Event()
    done = threading.Event()

    def reader() -> None:
        with lock:
            reading.set()
            done.wait(DEADLINE_S)

    lock.acquire()
    thread = threading.Thread(target=reader)
    thread.start()
    _wait_for(lambda: lock.waiting == 1, "the reader to wait for the lock")
    lock.release()
    lock.let_waiters_in(most_s=DEADLINE_S)
    # the reader had it first: the writer would now wait behind it
    assert reading.is_set() and lock.waiting == 0
    assert not lock.acquire(blocking=False)
    done.set()
    thread.join(DEADLINE_S)
    assert lock.acquire(blocking=False)
    lock.release()


def test_posted_requests_granted_in_their_own_batch_say_so_and_make_no_notice(kit: Kit) -> None:
    from jupyter_dlinfra.server.notices import notice_from_event

    kit.node("node-a")  # four GPUs
    for i in range(3):
        kit.kernel(f"k{i}", user=f"u{i}")
    ledger = kit.ledger
    told = _Told()
    with commits(kit) as count:
        with ledger._lock:
            for i in range(3):
                ledger.post(ledger.request_change(kernel_id=f"k{i}", count=2), told)
        _wait_for(lambda: len(told.seen) == 3, "the requests to be answered")
    assert count[0] == 1
    answers = [value for _, value in told.seen]
    assert sorted(a.state.value for a in answers) == ["granted", "granted", "queued"]
    waiting = next(a for a in answers if a.state is AllocationState.QUEUED)
    assert waiting.position == 1 and waiting.waiting_reason
    events = ledger.events()
    granted = [e for e in events if e.kind == "granted"]
    # the second request's event came between the first's and its grant: the grant was
    # immediate all the same, and is no "granted after a wait" notice
    assert len(granted) == 2 and all(e.detail.get("at_once") is True for e in granted)
    previous = None
    for e in events:
        assert notice_from_event(e, previous=previous, kernels={}, owner_of=lambda _: "u") is None
        previous = e
    # granted later, by a release: it waited, and says so
    ledger.release(
        answers[0].id if answers[0].state is AllocationState.GRANTED else answers[1].id,
        reason="done",
    )
    later = [e for e in ledger.events() if e.kind == "granted"][-1]
    assert later.allocation_id == waiting.id and "at_once" not in later.detail


def test_a_batch_reads_its_requests_kernels_in_one_statement(kit: Kit) -> None:
    kit.node("node-a")  # four GPUs
    for i in range(4):
        kit.kernel(f"k{i}", user=f"u{i}")
    seen: list[str] = []

    def count(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if "FROM dlinfra_kernels" in statement:
            seen.append(statement)

    event.listen(kit.store.engine, "before_cursor_execute", count)
    try:
        answers = together(
            kit.ledger,
            [
                (lambda i=i: kit.ledger.request(kernel_id=f"k{i}", count=1))  # type: ignore[misc]
                for i in range(4)
            ]
            + [lambda: kit.ledger.request(kernel_id="nobody", count=1)],
        )
    finally:
        event.remove(kit.store.engine, "before_cursor_execute", count)
    assert [a.state for a in answers[:4]] == [AllocationState.GRANTED] * 4  # type: ignore[union-attr]
    # an unknown kernel is refused alone, as before: looked for once more, then not found
    assert isinstance(answers[4], NotFound)
    assert len(seen) == 2


class _Fatal(BaseException):
    """Something no ``except Exception`` catches, raised inside a batch."""


def test_a_writing_thread_that_dies_leaves_later_changes_to_another() -> None:
    lock = CountedLock()

    def run(batch: list[_Job]) -> None:
        if any(job.value == 1 for job in batch):
            raise _Fatal("the batch blew up")
        for job in batch:
            job.outcome.answer(job.value)

    combiner: Combiner[_Job] = Combiner(lock, run)
    told = _Told()
    first = threading.excepthook
    threading.excepthook = lambda args: None  # the dying thread's traceback is expected
    try:
        combiner.post(_Job(1), told)
        _wait_for(lambda: len(told.seen) == 1, "the first change's failure")
        assert isinstance(told.seen[0][1], RuntimeError)  # "not carried out", never left hanging
        combiner.post(_Job(2), told)
        _wait_for(lambda: len(told.seen) == 2, "a later change to be made")
    finally:
        threading.excepthook = first
    assert told.seen[1][1] == 2
