"""The pure core: models, the ledger and its store. No Jupyter, tornado or traitlets in here."""

from .clock import Clock, ManualClock, SystemClock
from .errors import Conflict, InvalidRequest, LedgerError, NotFound, PermissionDenied, Unsatisfiable
from .idle import IdlePolicy, IdleState, Phase, PolicyError, ReclaimAction, ReclaimPolicy
from .idle_book import IdleBook
from .ledger import Ledger, model_matches
from .models import Allocation, AllocationState, Gpu, KernelRecord, LedgerEvent
from .replay import ReplayReport, UsageSeries, replay
from .sched_policy import PriorityClass, SchedulingPolicy
from .store import SCHEMA_VERSION, Store

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
