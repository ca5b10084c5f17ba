"""Whether the ledger's database answers, as this server's periodic work last found it.

Every loop that reads or writes the ledger (watching its version, sampling and judging idleness,
reconciling, jobs, the event stream, kernel pods) reports here when the database does not answer
and when it answers again, so that the log says each once per outage, whichever loop saw it
first, instead of a traceback per loop per tick. A loop that failed waits with its own
:class:`~jupyter_dlinfra.core.outage.Backoff`, cut short when another loop finds the database back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from jupyter_dlinfra.core.clock import Clock
from jupyter_dlinfra.core.outage import Backoff, database_unavailable, describe

__all__ = ["LedgerHealth", "Sleep", "run_every"]

Sleep = Callable[[float], Awaitable[object]]

#: the longest wait between tries of a loop whose database is away (seconds), unless its own
#: interval is longer
BACKOFF_CAP_S = 30.0


class LedgerHealth:
    """The database's availability as last seen; said once each way. Use on the event loop."""

    def __init__(
        self,
        *,
        log: logging.Logger,
        clock: Clock,
        on_change: Callable[[bool], None] | None = None,
    ) -> None:
        """``on_change(available)`` runs at each change (to tell the event stream's clients)."""
        self.log = log
        self.clock = clock
        self.on_change = on_change
        self.available = True
        #: when the database was last found away (clock seconds); None while it answers
        self.down_since: float | None = None
        self._back = asyncio.Event()

    def failed(self, err: BaseException, *, where: str) -> None:
        """A call by ``where`` found the database away (``database_unavailable(err)``)."""
        if not self.available:
            self.log.debug("dlinfra: %s: the ledger's database is still away: %s", where, err)
            return
        self.available = False
        self.down_since = self.clock.now()
        self.log.error(
            "dlinfra: the GPU ledger's database does not answer (%s; seen by %s): API calls "
            "answer 503 and periodic work retries with backoff until it is back",
            describe(err),
            where,
        )
        self._changed()

    def recovered(self, *, where: str) -> None:
        """A call by ``where`` that needs the database has just succeeded."""
        if self.available:
            return
        away = self.clock.now() - (self.down_since or self.clock.now())
        self.available = True
        self.down_since = None
        self.log.warning(
            "dlinfra: the GPU ledger's database answers again after %.0f s (seen by %s); "
            "periodic work resumes",
            away,
            where,
        )
        back, self._back = self._back, asyncio.Event()
        back.set()
        self._changed()

    def _changed(self) -> None:
        if self.on_change is None:
            return
        try:
            self.on_change(self.available)
        except Exception:  # telling clients must never break the loop that noticed
            self.log.exception("dlinfra: could not announce the ledger's availability")

    async def pause(self, delay: float, sleep: Sleep = asyncio.sleep) -> None:
        """Wait ``delay`` seconds, or less if some loop finds the database back meanwhile."""
        if self.available:
            await sleep(delay)
            return
        back = asyncio.ensure_future(self._back.wait())
        slept = asyncio.ensure_future(sleep(delay))
        try:
            await asyncio.wait({back, slept}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (back, slept):
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task


async def run_every(
    step: Callable[[], Awaitable[object]],
    interval: float,
    *,
    name: str,
    health: LedgerHealth,
    log: logging.Logger,
    sleep: Sleep = asyncio.sleep,
    at_once: bool = False,
    backoff: Backoff | None = None,
) -> None:
    """Run ``step`` every ``interval`` seconds (first at once with ``at_once``) until cancelled.

    A step that fails is logged with its traceback and the loop goes on. A step that fails
    because the database is away is reported to ``health`` instead (logged once per outage) and
    tried again after ``backoff``'s waits (by default from the interval, or 1 s, doubling up to
    30 s or the interval), or as soon as another loop finds the database back.
    """
    if backoff is None:
        first = max(interval, 1.0)
        backoff = Backoff(first=first, cap=max(first, BACKOFF_CAP_S))
    delay = 0.0 if at_once else interval
    away = False
    while True:
        await (health.pause(delay, sleep) if away else sleep(delay))
        delay = interval
        try:
            await step()
        except Exception as err:
            if not database_unavailable(err):
                log.exception("dlinfra: periodic %s failed", name)
                continue
            away = True
            health.failed(err, where=name)
            delay = backoff.next()
            continue
        if away:
            away = False
            backoff.reset()
            health.recovered(where=name)
