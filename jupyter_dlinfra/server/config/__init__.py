"""The extension's options, one mixin per subject; ``DLInfra`` composes them.

Each mixin is a plain ``HasTraits``: its traits are the ``DLInfra`` class's own once composed, so
every option stays ``c.DLInfra.<name>`` (a ``Configurable`` mixin would add a section of its own).
"""

from __future__ import annotations

from jupyter_dlinfra.server.config.access import AccessOptions
from jupyter_dlinfra.server.config.events import EventStreamOptions
from jupyter_dlinfra.server.config.jobs import JobOptions
from jupyter_dlinfra.server.config.kernels import KernelOptions
from jupyter_dlinfra.server.config.ledger import LedgerOptions, default_db_url
from jupyter_dlinfra.server.config.reclaim import ReclaimOptions
from jupyter_dlinfra.server.config.scheduling import SchedulingOptions
from jupyter_dlinfra.server.config.telemetry import TelemetryOptions

__all__ = [
    "AccessOptions",
    "DLInfraOptions",
    "EventStreamOptions",
    "JobOptions",
    "KernelOptions",
    "LedgerOptions",
    "ReclaimOptions",
    "SchedulingOptions",
    "TelemetryOptions",
    "default_db_url",
]


class DLInfraOptions(
    LedgerOptions,
    TelemetryOptions,
    EventStreamOptions,
    KernelOptions,
    ReclaimOptions,
    AccessOptions,
    JobOptions,
    SchedulingOptions,
):
    """Every option of the extension; what the wiring reads."""
