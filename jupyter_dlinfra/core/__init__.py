"""The pure core: models, the ledger and its store. No Jupyter, tornado or traitlets in here."""

from .clock import Clock, ManualClock, SystemClock
from .errors import Conflict, InvalidRequest, LedgerError, NotFound, PermissionDenied, Unsatisfiable
from .ledger import Ledger, model_matches
from .models import Allocation, AllocationState, Gpu, KernelRecord, LedgerEvent
from .store import SCHEMA_VERSION, Store

__all__ = [
    "SCHEMA_VERSION",
    "Allocation",
    "AllocationState",
    "Clock",
    "Conflict",
    "Gpu",
    "InvalidRequest",
    "KernelRecord",
    "Ledger",
    "LedgerError",
    "LedgerEvent",
    "ManualClock",
    "NotFound",
    "PermissionDenied",
    "Store",
    "SystemClock",
    "Unsatisfiable",
    "model_matches",
]
