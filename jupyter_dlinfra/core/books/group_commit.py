"""Changes that arrive together are written together (group commit, by flat combining).

A change of the ledger costs a write transaction (the store's write lock, a version check, a
commit) and a scheduling pass over the head of the queue, and only the writing of its own rows
grows with the change itself. When a server's threads bring changes at the same moment, each
waited for the ledger's lock and then paid all of it again. Here a caller leaves its change in a
queue; one caller at a time takes the ledger's lock and runs every change waiting there (at most
``most``) as one batch, and the callers whose change was in it leave when it is over. A caller
alone makes a batch of one, so a ledger used by one thread behaves as before, change by change.

A caller that must not block (a server's event loop) *posts* its change instead
(:meth:`Combiner.post`): a writing thread of the combiner's own leads the batches while posted
changes wait, and hands each its outcome through the callback it came with. On a busy server
the changes then wait in this queue, not for a thread of a pool each: one thread takes
whatever has come while the last batch ran, so batches grow with the load, and no thread per
change has to wake, take the interpreter's lock and report back.

The batch itself (what runs in one transaction, and what happens when one change of it fails)
is the book's: :class:`Combiner` only hands over, and guarantees that every change it took is
answered, with a result or an error, whatever the batch did.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any, Generic, Protocol, TypeVar

__all__ = ["Combiner", "CountedLock", "Outcome"]

T = TypeVar("T")

_log = logging.getLogger(__name__)


class Outcome(Generic[T]):
    """What became of one change: its result, or the error to raise in its caller's thread."""

    __slots__ = ("done", "error", "result", "then")

    def __init__(self) -> None:
        self.done = False
        self.result: T | None = None
        self.error: BaseException | None = None
        #: a posted change's callback, called on the writing thread once the batch is over
        self.then: Callable[[Outcome[T]], None] | None = None

    def answer(self, result: T) -> None:
        self.result = result
        self.done = True

    def fail(self, error: BaseException) -> None:
        self.error = error
        self.done = True

    def value(self) -> T:
        if self.error is not None:
            raise self.error
        assert self.done, "a change was left unanswered"
        return self.result  # type: ignore[return-value]


#: how long the writing thread steps aside, at most, for threads waiting to read, between
#: batches (a read under the lock takes a millisecond or less)
YIELD_S = 0.005
_STEP_S = 0.0002


class CountedLock:
    """A re-entrant lock that counts the threads blocked on it, so that a thread which takes it
    again and again (the combiner's writing thread, batch after batch) can let them in first:
    Python's locks are not fair, and a thread that releases one and takes it back at once
    nearly always wins it over a thread that was woken to take it (that one still has to get
    the interpreter's lock to run), so readers waited behind a stream of batches."""

    __slots__ = ("_lock", "waiting")

    def __init__(self) -> None:
        self._lock = threading.RLock()
        #: threads blocked in acquire (changed under the interpreter's lock by ``+=`` of
        #: different threads: a count that may be off for a moment, never for long)
        self.waiting = 0

    def acquire(self, blocking: bool = True) -> bool:
        if self._lock.acquire(blocking=False):
            return True
        if not blocking:
            return False
        self.waiting += 1
        try:
            return self._lock.acquire()
        finally:
            self.waiting -= 1

    def release(self) -> None:
        self._lock.release()

    def __enter__(self) -> bool:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self._lock.release()

    def let_waiters_in(self, most_s: float = YIELD_S) -> None:
        """Before taking the lock again: while threads wait for it, step aside (up to
        ``most_s``) so that they get it first; they take it for a read, not for long."""
        if self.waiting <= 0:
            return
        until = time.monotonic() + most_s
        while self.waiting > 0 and time.monotonic() < until:
            time.sleep(_STEP_S)


class _Change(Protocol):
    @property
    def outcome(self) -> Outcome[Any]: ...


C = TypeVar("C", bound=_Change)

#: seconds the writing thread waits for a posted change before it ends (the next post starts
#: another): a ledger nobody posts to keeps no thread
WRITER_IDLE_S = 10.0


class Combiner(Generic[C]):
    """Hands the changes waiting for ``lock`` to one caller at a time, ``most`` at a time;
    ``run`` answers each change of the batch it is given (see :class:`Outcome`).

    Callers whose change another ran wait on a condition, not on ``lock``: they leave as soon
    as the batch is over, instead of each taking the lock in turn only to find their change
    done (which, with the interpreter's lock besides, left batches of one)."""

    def __init__(
        self, lock: CountedLock, run: Callable[[list[C]], None], *, most: int = 64
    ) -> None:
        if most < 1:
            raise ValueError(f"a batch holds at least one change, not {most}")
        self._lock = lock
        self._run = run
        self.most = most
        self._pending: deque[C] = deque()
        self._turn = threading.Condition(threading.Lock())
        #: a caller is running a batch: the thread's id
        self._leading: int | None = None
        #: posted changes not yet taken into a batch (they are in ``_pending`` too)
        self._posted = 0
        self._writer: threading.Thread | None = None

    @property
    def pending(self) -> int:
        """Changes left by their callers and not yet taken into a batch."""
        return len(self._pending)

    def submit(self, change: C) -> None:
        """Run ``change``, alone or with others, and return once it is answered."""
        me = threading.get_ident()
        if self._leading == me:
            # it would wait for the batch it is part of, for ever
            raise RuntimeError("a change was submitted from inside a batch of changes")
        with self._turn:
            self._pending.append(change)
        while True:
            with self._turn:
                while self._leading is not None and not change.outcome.done:
                    self._turn.wait()
                if change.outcome.done:
                    return
                self._leading = me
            self._lead()

    def post(self, change: C, then: Callable[[Outcome[Any]], None]) -> None:
        """Have ``change`` run by the combiner's writing thread, and return at once; ``then``
        gets its outcome on that thread (keep it short: the next batch waits for it)."""
        if self._leading == threading.get_ident():
            raise RuntimeError("a change was posted from inside a batch of changes")
        change.outcome.then = then
        with self._turn:
            self._pending.append(change)
            self._posted += 1
            if self._writer is None:
                self._start_writer()
            else:
                self._turn.notify_all()

    def _start_writer(self) -> None:
        """(``_turn`` held.)"""
        self._writer = threading.Thread(
            target=self._write, name="dlinfra-ledger-writer", daemon=True
        )
        self._writer.start()

    def _write(self) -> None:
        """The writing thread: leads a batch while posted changes wait, ends when none comes."""
        me = threading.get_ident()
        try:
            while True:
                with self._turn:
                    while self._posted == 0 or self._leading is not None:
                        if not self._turn.wait(WRITER_IDLE_S) and self._posted == 0:
                            self._writer = None
                            return
                self._lock.let_waiters_in()
                with self._turn:
                    if self._leading is not None:
                        continue  # a caller of submit leads: its batch may take ours
                    self._leading = me
                self._lead()
        except BaseException:
            # whatever ended this thread (its batch was answered, see _lead), the changes
            # posted after it must not wait for ever: another thread takes them
            with self._turn:
                if self._writer is threading.current_thread():
                    self._writer = None
                    if self._posted:
                        self._start_writer()
            raise

    def _lead(self) -> None:
        """Run one batch of what waits (this thread leads: ``_leading`` is set)."""
        batch: list[C] = []
        try:
            with self._lock:
                with self._turn:
                    batch = [
                        self._pending.popleft() for _ in range(min(self.most, len(self._pending)))
                    ]
                    self._posted -= sum(1 for taken in batch if taken.outcome.then is not None)
                try:
                    self._run(batch)
                finally:
                    for taken in batch:
                        if not taken.outcome.done:
                            taken.outcome.fail(RuntimeError("the change was not carried out"))
        finally:
            with self._turn:
                self._leading = None
                self._turn.notify_all()
            for taken in batch:
                then = taken.outcome.then
                if then is not None:
                    try:
                        then(taken.outcome)
                    except Exception:
                        # the others of the batch are told all the same
                        _log.exception("dlinfra: telling a posted change's outcome failed")
