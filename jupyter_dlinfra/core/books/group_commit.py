"""Changes that arrive together are written together (group commit, by flat combining).

A change of the ledger costs a write transaction (the store's write lock, a version check, a
commit) and a scheduling pass over the head of the queue, and only the writing of its own rows
grows with the change itself. When a server's threads bring changes at the same moment, each
waited for the ledger's lock and then paid all of it again. Here a caller leaves its change in a
queue; one caller at a time takes the ledger's lock and runs every change waiting there (at most
``most``) as one batch, and the callers whose change was in it leave when it is over. A caller
alone makes a batch of one, so a ledger used by one thread behaves as before, change by change.

The batch itself (what runs in one transaction, and what happens when one change of it fails)
is the book's: :class:`Combiner` only hands over, and guarantees that every change it took is
answered, with a result or an error, whatever the batch did.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from typing import Any, Generic, Protocol, TypeVar

__all__ = ["Combiner", "Outcome"]

T = TypeVar("T")


class Outcome(Generic[T]):
    """What became of one change: its result, or the error to raise in its caller's thread."""

    __slots__ = ("done", "error", "result")

    def __init__(self) -> None:
        self.done = False
        self.result: T | None = None
        self.error: BaseException | None = None

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


class _Change(Protocol):
    @property
    def outcome(self) -> Outcome[Any]: ...


C = TypeVar("C", bound=_Change)


class Combiner(Generic[C]):
    """Hands the changes waiting for ``lock`` to one caller at a time, ``most`` at a time;
    ``run`` answers each change of the batch it is given (see :class:`Outcome`).

    Callers whose change another ran wait on a condition, not on ``lock``: they leave as soon
    as the batch is over, instead of each taking the lock in turn only to find their change
    done (which, with the interpreter's lock besides, left batches of one)."""

    def __init__(
        self, lock: threading.RLock, run: Callable[[list[C]], None], *, most: int = 64
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
            try:
                with self._lock:
                    with self._turn:
                        batch = [
                            self._pending.popleft()
                            for _ in range(min(self.most, len(self._pending)))
                        ]
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
