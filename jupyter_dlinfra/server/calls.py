"""How this server's parts reach the ledger: blocking calls on a small pool, and word of changes.

Ledger and telemetry calls block (SQLite locks, NVML), so they run on a few threads, never on the
event loop. A write (:meth:`LedgerCalls.mutate`) wakes this process's waiters and the event
stream at once; :class:`~jupyter_dlinfra.server.ledger_health.LedgerHealth` keeps whether the
database answers, and its changes are told to the stream's clients. The broadcaster reads the
snapshot's parts from here (:class:`~jupyter_dlinfra.server.sources.StreamSource`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Any, TypeVar

from jupyter_dlinfra.core.books.group_commit import Outcome
from jupyter_dlinfra.core.books.ledger import Ledger, LedgerChange
from jupyter_dlinfra.core.models import Allocation, KernelRecord
from jupyter_dlinfra.core.outage import LedgerUnavailable, database_unavailable
from jupyter_dlinfra.server.events import Broadcaster, settle
from jupyter_dlinfra.server.ledger_health import LedgerHealth
from jupyter_dlinfra.server.sampling import Sampler
from jupyter_dlinfra.server.settings import ServiceSettings
from jupyter_dlinfra.telemetry import GpuSample, TelemetryProvider

__all__ = ["IdleViewFn", "LedgerCalls"]

T = TypeVar("T")

#: the idle states and hints of the ledger's kernels, as the event stream shows them (blocking)
IdleViewFn = Callable[[Mapping[str, KernelRecord]], dict[str, Any]]


#: threads that call the ledger for requests; changes they bring at once share a transaction
#: and a pass (core/books/group_commit.py). More threads made a loaded gateway slower: each
#: thread hop waits for the interpreter's lock, and the more threads want it, the longer
LEDGER_THREADS = 4
#: how long an answer from the ledger's memory waits on the event loop for the write that holds
#: it to make it (a batch takes milliseconds) before the pool is asked instead
MEMORY_WAIT_S = 0.05


@contextlib.contextmanager
def _outage_as_domain_error() -> Iterator[None]:
    """One domain error for every caller of the ledger when its database does not answer:
    handlers answer 503, loops back off."""
    try:
        yield
    except LedgerUnavailable:
        raise
    except Exception as err:
        if database_unavailable(err):
            raise LedgerUnavailable.from_error(err) from err
        raise


def _settled_from_thread(
    loop: asyncio.AbstractEventLoop, future: asyncio.Future[T]
) -> Callable[[T], None]:
    """A callback for the ledger's writing thread that gives ``future`` its value on ``loop``."""

    def deliver(value: T) -> None:
        with contextlib.suppress(RuntimeError):  # the loop has closed: the server stopped
            loop.call_soon_threadsafe(settle, future, value)

    return deliver


class LedgerCalls:
    def __init__(
        self,
        *,
        ledger: Ledger,
        sampler: Sampler,
        idle_view: IdleViewFn,
        settings: ServiceSettings,
        log: logging.Logger,
    ) -> None:
        self.ledger = ledger
        self.settings = settings
        self.log = log
        self._sampler = sampler
        self._idle_view = idle_view
        self._executor = ThreadPoolExecutor(
            max_workers=LEDGER_THREADS, thread_name_prefix="dlinfra"
        )
        # the event stream's builds wait behind no request: a change reaches the open
        # dashboards while hundreds of calls queue in the pool
        self._stream_executor = ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="dlinfra-stream"
        )
        self._tick = asyncio.Event()
        # the stream and the health tell each other: built here, as this object's own parts
        self.events = Broadcaster(
            self,
            debounce=settings.events_debounce,
            fanout_rate=settings.events_fanout_rate,
            keepalive=settings.events_keepalive,
        )
        #: whether the ledger's database answers, as the loops last found it
        self.health = LedgerHealth(log=log, clock=ledger.clock, on_change=self._announce_health)

    # -- what the event stream reads ---------------------------------------------------------

    @property
    def provider(self) -> TelemetryProvider:
        return self._sampler.provider

    @property
    def samples(self) -> dict[str, GpuSample]:
        return self._sampler.samples

    def idle_view(self, kernels: Mapping[str, KernelRecord]) -> dict[str, Any]:
        """Blocking: the idle states (with their deadlines) and hints, for the event stream."""
        return self._idle_view(kernels)

    # -- running blocking work -----------------------------------------------------------------

    async def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run ``fn`` on the pool; a database that does not answer raises LedgerUnavailable."""
        return await self._run(self._executor, partial(fn, *args, **kwargs))

    async def call_for_stream(self, fn: Callable[[], T]) -> T:
        """Like :meth:`call`, on the event stream's own thread."""
        return await self._run(self._stream_executor, fn)

    async def _run(self, executor: ThreadPoolExecutor, fn: Callable[[], T]) -> T:
        loop = asyncio.get_running_loop()
        with _outage_as_domain_error():
            return await loop.run_in_executor(executor, fn)

    async def from_memory(self, answer: Callable[[], T | None]) -> T | None:
        """``answer()``: an answer from the ledger's memory, on the event loop (None where it
        would wait or read). While a write holds the ledger, that write's thread makes it once
        it is over (``Ledger.answer_after_write``), within MEMORY_WAIT_S: no thread of the pool
        is taken, where the read would queue behind the writes. None: ask the pool."""
        found = answer()
        if found is not None:
            return found
        loop = asyncio.get_running_loop()
        made: asyncio.Future[T | None] = loop.create_future()

        if not self.ledger.answer_after_write(answer, _settled_from_thread(loop, made)):
            return None
        timer = loop.call_later(MEMORY_WAIT_S, settle, made, None)
        try:
            return await made
        finally:
            timer.cancel()

    async def change(self, change: LedgerChange) -> Allocation:
        """A request or a release (``Ledger.request_change``/``release_change``), carried out on
        the ledger's writing thread (``Ledger.post``) with the others that wait there: no thread
        of the pool waits for the ledger's lock, so reads are not held up behind writes, and a
        busy server's changes go in batches as large as the load brings. Waiters in this
        process hear of it at once, as after :meth:`mutate`."""
        loop = asyncio.get_running_loop()
        done: asyncio.Future[Outcome[Allocation]] = loop.create_future()
        try:
            self.ledger.post(change, _settled_from_thread(loop, done))
            outcome = await done
            with _outage_as_domain_error():
                return outcome.value()
        finally:
            self.notify()

    async def mutate(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Like :meth:`call`, for ledger writes: waiters in this process hear of it at once."""
        try:
            return await self.call(fn, *args, **kwargs)
        finally:
            self.notify()

    def notify(self) -> None:
        tick, self._tick = self._tick, asyncio.Event()
        tick.set()
        self.events.poke()

    async def wait_for_change(self, timeout: float) -> None:
        """Return after the next ledger change (in any process sharing the store) or ``timeout``."""
        tick = self._tick
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(tick.wait(), timeout)

    def shutdown(self) -> None:
        """Wait for the pool's calls under way, and take no more."""
        self._executor.shutdown(wait=True)
        self._stream_executor.shutdown(wait=True)

    def _announce_health(self, available: bool) -> None:
        """Tell the event stream's clients, who would otherwise see the view stop moving."""
        if available:
            self.events.publish_notice(
                "ledger_available", "info", "The GPU ledger's database answers again."
            )
            self.events.poke()
            return
        self.events.publish_notice(
            "ledger_unavailable",
            "error",
            "The GPU ledger's database is unreachable: GPU requests, releases and jobs fail "
            "until it is back, and this view is not updated. The server retries by itself.",
        )
