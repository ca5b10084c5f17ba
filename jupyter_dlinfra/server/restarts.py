"""One restart of a kernel at a time, wherever it comes from.

A restart is asked for by many hands: our API (``%gpu --restart``, a move into a GPU pod, the
sidebar), jupyter_server's ``POST /api/kernels/{id}/restart``, the reclaim loop, and
jupyter_client's restarter when a kernel dies. jupyter_client runs each of them at once: two
overlapping restarts launch two processes for one kernel on the same ports, the extra one dies,
its death is reported as the kernel's (releasing the GPUs the survivor still holds in
``CUDA_VISIBLE_DEVICES``), and ``KernelManager.ready`` is resolved twice (``InvalidStateError``).

:class:`SerialRestartKernelManager` is the per-kernel manager of every kernel this server starts:
a restart waits for the one under way, and every restart asked for while one waits joins it (it
launches after all of them were asked, so it reads the ledger as the last asker left it). A
shutdown waits for the restart under way and cancels those still waiting.
:class:`SerialRestartMappingKernelManager`, the server's kernel manager, makes that wait before
jupyter_client's own shutdown looks at the kernel (it cannot shut down a kernel whose restart has
not finished: ``InvalidStateError``, answered 500).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from jupyter_server.services.kernels.kernelmanager import (
    AsyncMappingKernelManager,
    ServerKernelManager,
)
from traitlets import default
from traitlets.utils.importstring import import_item

__all__ = [
    "RESTART_DELAY_S",
    "KernelStopped",
    "SerialRestartKernelManager",
    "SerialRestartMappingKernelManager",
    "check",
    "install",
    "restart_done",
    "restart_soon",
    "restarting_with",
    "track_restart",
]

_OUR_CLASS = f"{__name__}.SerialRestartKernelManager"

Prepare = Callable[[], Awaitable[None]]


class KernelStopped(RuntimeError):
    """A restart that was still waiting when its kernel was shut down."""


#: what a restart asked for in this context does first, once it is its turn (see
#: :func:`restarting_with`)
_prepare: contextvars.ContextVar[Prepare | None] = contextvars.ContextVar(
    "dlinfra_restart_prepare", default=None
)


@contextlib.contextmanager
def restarting_with(prepare: Prepare) -> Iterator[None]:
    """Restarts asked for inside this block run ``prepare`` right before they begin: a state
    the restart must see (GPUs kept over it) is set when no other restart can consume it."""
    reset = _prepare.set(prepare)
    try:
        yield
    finally:
        _prepare.reset(reset)


@dataclass
class _Waiting:
    """The restart waiting behind the one under way, and what those who joined it asked for."""

    done: asyncio.Future[None]
    prepares: list[Prepare] = field(default_factory=list)
    #: killed at once, and on new ports, if any of those who joined asked so (the restarter
    #: after a port collision)
    now: bool = False
    newports: bool = False


class SerialRestartKernelManager(ServerKernelManager):  # type: ignore[misc]
    """jupyter_server's kernel manager, with restarts of its kernel serialised."""

    _restart_lock: asyncio.Lock | None = None
    _waiting: _Waiting | None = None
    _stopped = False

    def _lock(self) -> asyncio.Lock:
        if self._restart_lock is None:
            self._restart_lock = asyncio.Lock()
        return self._restart_lock

    @property
    def restarting(self) -> bool:
        """A restart is under way or waiting."""
        return self._lock().locked() or self._waiting is not None

    async def restart_kernel(  # type: ignore[override]
        self, now: bool = False, newports: bool = False, **kw: Any
    ) -> None:
        if self._stopped:
            raise KernelStopped("the kernel was shut down")
        prepare = _prepare.get()
        # the restart starts the kernel's restarter, whose ticks would inherit this context:
        # its own restarts after a crash must not run this request's step
        _prepare.set(None)
        waiting = self._waiting
        if waiting is not None and not kw:
            # it has not begun: it will do this one's work, after all that was asked before
            if prepare is not None:
                waiting.prepares.append(prepare)
            waiting.now |= now
            waiting.newports |= newports
            await asyncio.shield(waiting.done)
            return
        mine = _Waiting(asyncio.get_running_loop().create_future(), now=now, newports=newports)
        if prepare is not None:
            mine.prepares.append(prepare)
        # the outcome is also for those who joined; nobody may be left to read it
        mine.done.add_done_callback(_consume)
        lock = self._lock()
        if lock.locked():
            self._waiting = mine  # for those asking while it waits to join
        try:
            async with lock:
                if self._waiting is mine:
                    self._waiting = None
                if self._stopped:
                    raise KernelStopped("the kernel was shut down while its restart waited")
                await _run_steps(self, mine.prepares)
                await super().restart_kernel(now=mine.now, newports=mine.newports, **kw)
        except BaseException as err:
            if self._waiting is mine:
                self._waiting = None
            if isinstance(err, asyncio.CancelledError):
                mine.done.cancel()
            else:
                mine.done.set_exception(err)
            raise
        mine.done.set_result(None)

    async def settle(self) -> None:
        """Before a shutdown: restarts still waiting give up, the one under way ends."""
        self._stopped = True
        async with self._lock():
            pass
        ready = self.ready
        if isinstance(ready, asyncio.Future) and not ready.done():
            await asyncio.wait({ready})

    async def shutdown_kernel(  # type: ignore[override]
        self, now: bool = False, restart: bool = False
    ) -> None:
        if not restart:
            await self.settle()
        await super().shutdown_kernel(now=now, restart=restart)


async def _run_steps(kernel: ServerKernelManager, steps: list[Prepare]) -> None:
    """What the askers of a restart want done right before it; one that fails (its database
    away, say) is logged and does not stop the restart the others asked for."""
    for step in steps:
        try:
            await step()
        except Exception:
            kernel.log.exception(
                "dlinfra: before restarting kernel %s: %s failed", kernel.kernel_id, step
            )


def _consume(future: asyncio.Future[None]) -> None:
    if not future.cancelled():
        future.exception()


class SerialRestartMappingKernelManager(AsyncMappingKernelManager):  # type: ignore[misc]
    """jupyter_server's kernel manager: its kernels restart one at a time, and a shutdown waits
    for a restart under way."""

    @default("kernel_manager_class")
    def _default_kernel_manager_class(self) -> str:
        return _OUR_CLASS

    async def _async_restart_kernel(self, kernel_id: str, now: bool = False) -> Any:
        kernel = self._kernels.get(kernel_id)
        if isinstance(kernel, SerialRestartKernelManager) and self._using_pending_kernels():
            # jupyter_client refuses a restart while the kernel is pending, and with pending
            # kernels a restart under way makes it pending: this one follows it instead
            while isinstance(kernel.ready, asyncio.Future) and not kernel.ready.done():
                await asyncio.wait({kernel.ready})
        return await super()._async_restart_kernel(  # type: ignore[no-untyped-call]
            kernel_id, now=now
        )

    restart_kernel = _async_restart_kernel  # type: ignore[assignment]

    async def _async_shutdown_kernel(  # type: ignore[override]
        self, kernel_id: str, now: bool | None = False, restart: bool | None = False
    ) -> None:
        kernel = self._kernels.get(kernel_id)
        if not restart and isinstance(kernel, SerialRestartKernelManager):
            await kernel.settle()
        await super()._async_shutdown_kernel(  # type: ignore[no-untyped-call]
            kernel_id, now=now, restart=restart
        )

    shutdown_kernel = _async_shutdown_kernel  # type: ignore[assignment]


def gateway_client(serverapp: Any) -> Any:
    """The server's GatewayClient (``--gateway-url``), before the server has made it."""
    from jupyter_server.gateway.gateway_client import GatewayClient

    return GatewayClient.instance(parent=serverapp)


def install(serverapp: Any) -> bool:
    """At link time, before the server makes its kernel manager: ours, unless someone configured
    another class or kernels run on a gateway. True if ours is in place."""
    if "kernel_manager_class" in serverapp.config.ServerApp:
        return issubclass(serverapp.kernel_manager_class, SerialRestartMappingKernelManager)
    if gateway_client(serverapp).gateway_enabled:
        return False  # the gateway's kernels are restarted by the gateway, which has ours
    serverapp.kernel_manager_class = SerialRestartMappingKernelManager
    return True


def check(kernel_manager: Any, log: Any) -> bool:
    """Once the server made its kernel manager: say so if its kernels' class is not ours (set
    in ``AsyncMappingKernelManager.kernel_manager_class``, say). True if it is."""
    if not isinstance(kernel_manager, SerialRestartMappingKernelManager):
        return False  # install() said so already
    per_kernel = import_item(kernel_manager.kernel_manager_class)
    if issubclass(per_kernel, SerialRestartKernelManager):
        return True
    log.warning(
        "dlinfra: kernel_manager_class %s of the kernel manager is not a %s: overlapping "
        "restarts of one kernel are not serialised and can run two processes of it",
        kernel_manager.kernel_manager_class,
        SerialRestartKernelManager.__name__,
    )
    return False


#: a restart asked by the kernel itself waits this long (seconds), so that what it printed just
#: before asking (%gpu's "Restarting...") reaches its clients before its channels close
RESTART_DELAY_S = 0.5

#: restarts under way (or about to begin), by kernel: a shutdown waits for them
_restarting: dict[str, asyncio.Future[Any]] = {}
_background: set[asyncio.Future[Any]] = set()


def track_restart(kernel_id: str, restart: Awaitable[Any]) -> asyncio.Future[Any]:
    """Run ``restart`` as the kernel's restart under way (see :func:`restart_done`)."""
    task = asyncio.ensure_future(restart)
    _restarting[kernel_id] = task

    def done(finished: asyncio.Future[Any]) -> None:
        if _restarting.get(kernel_id) is finished:
            del _restarting[kernel_id]

    task.add_done_callback(done)
    return task


async def restart_done(kernel_id: str, timeout: float) -> None:
    """Wait, ``timeout`` seconds at most, for the kernel's restart under way, if any."""
    task = _restarting.get(kernel_id)
    if task is not None:
        await asyncio.wait({task}, timeout=timeout)


async def _restart_later(km: Any, kernel_id: str, prepare: Prepare | None) -> None:
    await asyncio.sleep(RESTART_DELAY_S)
    if kernel_id not in km:  # shut down meanwhile
        return
    try:
        if prepare is None:
            await km.restart_kernel(kernel_id)
        elif isinstance(km.get_kernel(kernel_id), SerialRestartKernelManager):
            with restarting_with(prepare):
                await km.restart_kernel(kernel_id)
        else:
            await prepare()
            await km.restart_kernel(kernel_id)
    except KernelStopped:
        pass
    except Exception:
        # the caller was answered 202 long ago: the log is where this can be seen
        km.log.exception(
            "dlinfra: the restart of kernel %s (asked through the API) failed", kernel_id
        )


def restart_soon(km: Any, kernel_id: str, prepare: Prepare | None = None) -> asyncio.Future[Any]:
    """Restart the kernel after :data:`RESTART_DELAY_S`, in the background, tracked; ``prepare``
    runs right before the restart begins (see :func:`restarting_with`)."""
    task = track_restart(kernel_id, _restart_later(km, kernel_id, prepare))
    _background.add(task)
    task.add_done_callback(_background.discard)
    return task
