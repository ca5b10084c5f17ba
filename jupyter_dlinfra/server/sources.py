"""What the event stream reads to build a snapshot, as an interface of its own.

:class:`~jupyter_dlinfra.server.calls.LedgerCalls` provides it; the broadcaster depends on this
description only, so that nothing below the service imports the service.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Protocol, TypeVar

from jupyter_dlinfra.core.books.ledger import Ledger
from jupyter_dlinfra.core.models import KernelRecord
from jupyter_dlinfra.server.ledger_health import LedgerHealth
from jupyter_dlinfra.server.settings import ServiceSettings
from jupyter_dlinfra.telemetry import GpuSample, TelemetryProvider

__all__ = ["StreamSource"]

T = TypeVar("T")


class StreamSource(Protocol):
    ledger: Ledger
    settings: ServiceSettings
    health: LedgerHealth

    @property
    def log(self) -> Any: ...

    @property
    def provider(self) -> TelemetryProvider: ...

    @property
    def samples(self) -> Mapping[str, GpuSample]: ...

    async def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T: ...

    async def call_for_stream(self, fn: Callable[[], T]) -> T: ...

    def idle_view(self, kernels: Mapping[str, KernelRecord]) -> dict[str, Any]: ...
