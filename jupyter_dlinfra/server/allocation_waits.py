"""Long polls on waiting requests (``GET allocations/ID?wait=``), watched together.

Every write in this process, and each change another process makes, wakes whoever waits for a
change, most of the time for nothing that concerns them. So the waiting polls do not each wake
and read their request again: one watcher per server reads the ledger's version once per wake,
and reads the waiting requests again only when it moved. Where the ledger's memory is current
(``Ledger.kept_versioned``: the change feed listens), both come from there on the event loop,
and only the requests whose rows a change dropped are read from the database; otherwise the
version and the requests are read on the pool, all of them in a few calls (each one read of up
to READ_CHUNK requests).
A wait that runs out with the version unmoved is answered with the request as it was read (the
magic polls again within seconds, and that poll reads it anew). Then a wake costs one cheap read
however many wait, a change one read of each waiting request, and the pool stays free for the
other requests.
"""

from __future__ import annotations

import asyncio
import functools
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from jupyter_dlinfra.core.books.ledger import Ledger
from jupyter_dlinfra.core.errors import NotFound
from jupyter_dlinfra.core.models import Allocation, AllocationState
from jupyter_dlinfra.server.service import GpuService

__all__ = ["READ_CHUNK", "AllocationWaits", "allocation_waits"]

#: requests read again in one call on the pool: a longer call would hold one of its few threads
READ_CHUNK = 100
#: how long one listening for a change may last: longer than any wait (each pass listens anew)
_LISTEN_S = 3600.0


def _told(alloc: Allocation) -> tuple[Any, ...]:
    """What a waiting poll is told of: a change in any of these ends its wait."""
    return (alloc.state, alloc.position, alloc.waiting_reason)


def read_versioned(ledger: Ledger, allocation_id: int) -> tuple[int, Allocation]:
    """Blocking: the allocation and a ledger version no newer than what it shows (read first:
    a change between the two reads makes the watcher read the request again, never miss it)."""
    version = ledger.ledger_version()
    return version, ledger.allocation(allocation_id)


def _read_many(ledger: Ledger, ids: Sequence[int]) -> dict[int, Allocation | NotFound]:
    """The requests of ``ids`` in one read; one that is gone ends its own wait alone."""
    found: dict[int, Allocation | NotFound] = {a.id: a for a in ledger.allocations_by_id(ids)}
    for aid in ids:
        if aid not in found:
            found[aid] = NotFound(f"no allocation {aid}", reason="no_allocation")
    return found


@dataclass(eq=False)
class _Waiter:
    alloc: Allocation
    #: the ledger version ``alloc`` was read at (or after)
    version: int
    #: on the event loop's clock
    deadline: float
    answer: asyncio.Future[Allocation]
    told: tuple[Any, ...]


class AllocationWaits:
    """The waiting polls of one server; see the module's docstring."""

    def __init__(self, service: GpuService) -> None:
        self._service = service
        self._waiters: set[_Waiter] = set()
        self._task: asyncio.Task[None] | None = None
        self._kick = asyncio.Event()
        #: the version the watcher last read; None before its first pass
        self._version: int | None = None
        #: when the watcher's sleep ends (the first deadline); None while it reads
        self._timer: float | None = None
        #: passes the watcher made, and requests it read again (each read once per pass)
        self.passes = 0
        self.reads = 0

    @property
    def waiting(self) -> int:
        """How many polls wait now."""
        return len(self._waiters)

    @property
    def asleep(self) -> bool:
        """Whether the watcher sleeps until a change or a deadline (not reading)."""
        return self._timer is not None

    async def until_changed(self, alloc: Allocation, *, version: int, timeout: float) -> Allocation:
        """``alloc`` as it is once its state, place or reason changed, or after ``timeout``
        seconds; ``version``: the ledger version it was read at (:func:`read_versioned`)."""
        loop = asyncio.get_running_loop()
        waiter = _Waiter(
            alloc=alloc,
            version=version,
            deadline=loop.time() + timeout,
            answer=loop.create_future(),
            told=_told(alloc),
        )
        self._waiters.add(waiter)
        if self._task is None:
            self._task = asyncio.create_task(self._watch())
        elif (self._version is not None and version < self._version) or (
            self._timer is not None and waiter.deadline < self._timer
        ):
            # the watcher has already been woken by a change this poll has not seen, or sleeps
            # past its deadline
            self._kick.set()
        try:
            return await waiter.answer
        finally:
            self._waiters.discard(waiter)

    async def _watch(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while self._waiters:
                self._kick.clear()
                # listening from before the pass: a change while it reads wakes the next sleep
                change = asyncio.ensure_future(self._service.wait_for_change(_LISTEN_S))
                kick = asyncio.ensure_future(self._kick.wait())
                try:
                    await self._pass()
                    if not self._waiters or self._kick.is_set():
                        continue
                    self._timer = min(w.deadline for w in self._waiters)
                    await asyncio.wait(
                        {change, kick},
                        timeout=max(0.0, self._timer - loop.time()),
                        return_when=asyncio.FIRST_COMPLETED,
                    )
                finally:
                    self._timer = None
                    change.cancel()
                    kick.cancel()
        except Exception as err:
            # the database is away (or the pool closed): every poll answers as its own read would
            for waiter in self._waiters:
                if not waiter.answer.done():
                    waiter.answer.set_exception(err)
            self._waiters.clear()
        finally:
            self._task = None

    async def _pass(self) -> None:
        ledger = self._service.ledger
        loop = asyncio.get_running_loop()
        kept = await self._service.from_memory(
            functools.partial(ledger.kept_versioned, {w.alloc.id for w in self._waiters})
        )
        found: dict[int, Allocation | NotFound] = {}
        if kept is None:
            version = await self._service.call(ledger.ledger_version)
        else:
            version = kept[0]
            found.update(kept[1])
        self._version = version
        now = loop.time()
        for waiter in [w for w in self._waiters if w.version == version and w.deadline <= now]:
            # its wait is over, and nothing changed since it was read: told as it was read
            if not waiter.answer.done():
                waiter.answer.set_result(waiter.alloc)
            self._waiters.discard(waiter)
        due = [w for w in self._waiters if w.version != version]
        if not due:
            self.passes += 1
            return
        ids = sorted({w.alloc.id for w in due if w.alloc.id not in found})
        for start in range(0, len(ids), READ_CHUNK):
            part = ids[start : start + READ_CHUNK]
            found.update(await self._service.call(_read_many, ledger, part))
        self.reads += len(ids)
        now = loop.time()
        for waiter in due:
            if waiter not in self._waiters or waiter.answer.done():
                continue  # its poll has ended meanwhile
            got = found[waiter.alloc.id]
            if isinstance(got, NotFound):
                waiter.answer.set_exception(got)
            elif (
                got.state is not AllocationState.QUEUED
                or _told(got) != waiter.told
                or waiter.deadline <= now
            ):
                waiter.answer.set_result(got)
            else:
                waiter.alloc, waiter.version = got, version
                continue
            self._waiters.discard(waiter)
        self.passes += 1


_of_service: weakref.WeakKeyDictionary[GpuService, AllocationWaits] = weakref.WeakKeyDictionary()


def allocation_waits(service: GpuService) -> AllocationWaits:
    """The one watcher of the waiting polls of ``service``'s server."""
    waits = _of_service.get(service)
    if waits is None:
        waits = _of_service[service] = AllocationWaits(service)
    return waits
