"""The pure core: models, the scheduling engine, the books over the store, the idle state machine.

No Jupyter, tornado or traitlets in here. The public names below are loaded on first use, so that
importing one module of the core (the scheduling engine, say) costs only what that module needs,
not SQLAlchemy and the whole ledger. Code inside the package imports from the defining modules.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

# bound now, not on first use: the function shares its name with its module, and a late binding
# would be shadowed by the module as soon as anything imported ``jupyter_dlinfra.core.replay``
# (the import system sets a package's attribute to a submodule when the submodule first loads).
# It costs only the idle state machine, no SQLAlchemy.
from jupyter_dlinfra.core.replay import ReplayReport, UsageSeries, replay

if TYPE_CHECKING:
    from jupyter_dlinfra.core.books.idle import IdleBook
    from jupyter_dlinfra.core.books.ledger import Ledger
    from jupyter_dlinfra.core.clock import Clock, ManualClock, SystemClock
    from jupyter_dlinfra.core.errors import (
        Conflict,
        InvalidRequest,
        LedgerError,
        NotFound,
        PermissionDenied,
        Unsatisfiable,
    )
    from jupyter_dlinfra.core.idle import (
        IdlePolicy,
        IdleState,
        Phase,
        PolicyError,
        ReclaimAction,
        ReclaimPolicy,
    )
    from jupyter_dlinfra.core.models import (
        Allocation,
        AllocationState,
        Gpu,
        KernelRecord,
        LedgerEvent,
    )
    from jupyter_dlinfra.core.scheduling.policy import PriorityClass, SchedulingPolicy
    from jupyter_dlinfra.core.scheduling.types import model_matches
    from jupyter_dlinfra.core.store import SCHEMA_VERSION, Store

_HOMES = {
    "books.idle": ["IdleBook"],
    "books.ledger": ["Ledger"],
    "clock": ["Clock", "ManualClock", "SystemClock"],
    "errors": [
        "Conflict",
        "InvalidRequest",
        "LedgerError",
        "NotFound",
        "PermissionDenied",
        "Unsatisfiable",
    ],
    "idle": ["IdlePolicy", "IdleState", "Phase", "PolicyError", "ReclaimAction", "ReclaimPolicy"],
    "models": ["Allocation", "AllocationState", "Gpu", "KernelRecord", "LedgerEvent"],
    "scheduling.policy": ["PriorityClass", "SchedulingPolicy"],
    "scheduling.types": ["model_matches"],
    "store": ["SCHEMA_VERSION", "Store"],
}
_HOME_OF = {name: module for module, names in _HOMES.items() for name in names}

__all__ = [
    "SCHEMA_VERSION",
    "Allocation",
    "AllocationState",
    "Clock",
    "Conflict",
    "Gpu",
    "IdleBook",
    "IdlePolicy",
    "IdleState",
    "InvalidRequest",
    "KernelRecord",
    "Ledger",
    "LedgerError",
    "LedgerEvent",
    "ManualClock",
    "NotFound",
    "PermissionDenied",
    "Phase",
    "PolicyError",
    "PriorityClass",
    "ReclaimAction",
    "ReclaimPolicy",
    "ReplayReport",
    "SchedulingPolicy",
    "Store",
    "SystemClock",
    "Unsatisfiable",
    "UsageSeries",
    "model_matches",
    "replay",
]


def __getattr__(name: str) -> Any:
    module = _HOME_OF.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
