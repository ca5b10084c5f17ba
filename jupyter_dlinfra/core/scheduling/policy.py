"""The scheduling policy admins set: priority classes, fair shares, quotas, borrowing, preemption.

A plain value, validated field by field (errors name the field, ``classes.batch.priority``), so
the same document comes from traitlets, from ``PUT /dlinfra/api/scheduling`` and from the ledger.
Every number has a range (:data:`RANGES`, documented in docs/scheduling.md and the API): fair
share's decay maths must stay finite for any value admitted, since the ledger records each
release's usage with it.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from functools import cached_property
from typing import Any

from jupyter_dlinfra.core.idle import PolicyError, check_range, policy_name
from jupyter_dlinfra.core.quoting import shown

__all__ = ["DEFAULT_CLASSES", "RANGES", "PriorityClass", "SchedulingPolicy"]

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")

#: seconds: about 31.7 years, the longest half-life or starvation limit
MAX_SECONDS = 1e9
#: GPUs: more than any cluster has (quotas), and blocked requests kept per pass
MAX_QUOTA = 1_000_000
MAX_RESERVATIONS = 10_000
#: class priorities lie within plus or minus this
MAX_PRIORITY = 1_000_000
#: (least, most) of each number of the policy; shares apply to every entry of the share maps
RANGES: dict[str, tuple[float, float]] = {
    "half_life": (1.0, MAX_SECONDS),
    "starvation_limit": (0.0, MAX_SECONDS),
    "default_share": (1e-6, 1e6),
    "user_shares": (1e-6, 1e6),
    "group_shares": (1e-6, 1e6),
    "default_user_quota": (0, MAX_QUOTA),
    "user_quotas": (0, MAX_QUOTA),
    "group_quotas": (0, MAX_QUOTA),
    "reservations": (0, MAX_RESERVATIONS),
    "priority": (-MAX_PRIORITY, MAX_PRIORITY),
}


@dataclass(frozen=True, kw_only=True)
class PriorityClass:
    name: str
    #: higher is served first; classes are strict tiers, fair share orders within a tier
    priority: int
    #: its batch jobs may be stopped and requeued for a higher class; kernels never are
    preemptible: bool = False

    def to_json(self) -> dict[str, Any]:
        return {"priority": self.priority, "preemptible": self.preemptible}


DEFAULT_CLASSES = (
    PriorityClass(name="interactive", priority=100, preemptible=False),
    PriorityClass(name="batch", priority=50, preemptible=True),
    PriorityClass(name="low", priority=10, preemptible=True),
)

_SECONDS_FIELDS = ("half_life", "starvation_limit")
_BOOL_FIELDS = ("fair_share", "borrowing", "preemption")
_SHARE_MAPS = ("user_shares", "group_shares")
_QUOTA_MAPS = ("user_quotas", "group_quotas")
FIELDS = (
    "classes",
    "kernel_class",
    "job_class",
    "fair_share",
    "half_life",
    "default_share",
    *_SHARE_MAPS,
    "default_user_quota",
    *_QUOTA_MAPS,
    "borrowing",
    "preemption",
    "reservations",
    "starvation_limit",
)


@dataclass(frozen=True, kw_only=True)
class SchedulingPolicy:
    """How waiting requests are ordered and what may be taken back. Times in seconds."""

    classes: tuple[PriorityClass, ...] = DEFAULT_CLASSES
    #: the class of a kernel's ``%gpu`` request, and of a job submitted without one
    kernel_class: str = "interactive"
    job_class: str = "batch"
    #: order users within a class by recent GPU use per share (off: first come, first served)
    fair_share: bool = True
    #: past GPU use counts half as much after this long (SLURM's PriorityDecayHalfLife)
    half_life: float = 7 * 86400.0
    default_share: float = 1.0
    user_shares: Mapping[str, float] = field(default_factory=dict)
    group_shares: Mapping[str, float] = field(default_factory=dict)
    #: GPUs one user may hold at once; None: no limit
    default_user_quota: int | None = None
    user_quotas: Mapping[str, int] = field(default_factory=dict)
    group_quotas: Mapping[str, int] = field(default_factory=dict)
    #: over-quota work of a preemptible class may use GPUs nobody within quota wants
    borrowing: bool = True
    #: stop preemptible jobs of lower classes, and borrowed GPUs, for a waiting claim
    preemption: bool = True
    #: how many blocked requests keep free GPUs for themselves in each pass (0: pure backfill)
    reservations: int = 16
    #: a request waiting this long goes ahead of fair-share order in its class; 0: never
    starvation_limit: float = 86400.0

    # -- lookups ---------------------------------------------------------------------------------

    @cached_property
    def class_map(self) -> dict[str, PriorityClass]:
        return {c.name: c for c in self.classes}

    def klass(self, name: str | None) -> PriorityClass:
        found = self.class_map.get(name or "")
        if found is not None:
            return found
        raise PolicyError(
            "class", f"unknown priority class {shown(name)}; classes: {self.class_names}"
        )

    @property
    def class_names(self) -> str:
        return ", ".join(c.name for c in self.classes)

    def share_of_user(self, user: str) -> float:
        return float(self.user_shares.get(user, self.default_share))

    def share_of_group(self, group: str) -> float:
        return float(self.group_shares.get(group, self.default_share))

    def account_of(self, groups: Iterable[str]) -> str:
        """The fair-share account of a member of ``groups``: the first with a share, else ''."""
        for g in sorted(groups):
            if g in self.group_shares:
                return g
        return ""

    def quota_of_user(self, user: str) -> int | None:
        return self.user_quotas.get(user, self.default_user_quota)

    # -- documents -------------------------------------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        return {
            "classes": {c.name: c.to_json() for c in self.classes},
            "kernel_class": self.kernel_class,
            "job_class": self.job_class,
            "fair_share": self.fair_share,
            "half_life": self.half_life,
            "default_share": self.default_share,
            "user_shares": dict(sorted(self.user_shares.items())),
            "group_shares": dict(sorted(self.group_shares.items())),
            "default_user_quota": self.default_user_quota,
            "user_quotas": dict(sorted(self.user_quotas.items())),
            "group_quotas": dict(sorted(self.group_quotas.items())),
            "borrowing": self.borrowing,
            "preemption": self.preemption,
            "reservations": self.reservations,
            "starvation_limit": self.starvation_limit,
        }

    @classmethod
    def from_json(cls, doc: Any, *, base: SchedulingPolicy | None = None) -> SchedulingPolicy:
        """Validate a policy document; fields it leaves out keep ``base``'s values."""
        if not isinstance(doc, Mapping):
            raise PolicyError("scheduling", "must be a JSON object")
        unknown = sorted(set(doc) - set(FIELDS))
        if unknown:
            raise PolicyError(unknown[0], f"unknown field; the policy has {', '.join(FIELDS)}")
        changes: dict[str, Any] = {}
        for name, value in doc.items():
            if name == "classes":
                changes[name] = _classes(value)
            elif name in ("kernel_class", "job_class"):
                if not isinstance(value, str):
                    raise PolicyError(name, f"must be the name of a class, not {shown(value)}")
                changes[name] = value
            elif name in _BOOL_FIELDS:
                if not isinstance(value, bool):
                    raise PolicyError(name, f"must be true or false, not {shown(value)}")
                changes[name] = value
            elif name in _SECONDS_FIELDS or name == "default_share":
                changes[name] = _number(name, value, RANGES[name])
            elif name in _SHARE_MAPS:
                bounds = RANGES[name]
                changes[name] = _mapping(name, value, lambda w, v, b=bounds: _number(w, v, b))
            elif name in _QUOTA_MAPS:
                bounds = RANGES[name]
                changes[name] = _mapping(name, value, lambda w, v, b=bounds: _count(w, v, b))
            elif name == "default_user_quota":
                changes[name] = None if value is None else _count(name, value, RANGES[name])
            elif name == "reservations":
                changes[name] = _count(name, value, RANGES[name])
        policy = replace(base or cls(), **changes)
        names = {c.name for c in policy.classes}
        for name in ("kernel_class", "job_class"):
            if getattr(policy, name) not in names:
                raise PolicyError(
                    name,
                    f"{shown(getattr(policy, name))} is not a class; classes: {policy.class_names}",
                )
        if policy.klass(policy.kernel_class).preemptible:
            raise PolicyError(
                "kernel_class",
                "kernels are never preempted: their class must have preemptible false",
            )
        return policy


def _is_number(value: Any) -> bool:
    # an int of hundreds of digits is a number too, but float() of it overflows: compare as is
    return not isinstance(value, bool) and (
        isinstance(value, int) or (isinstance(value, float) and math.isfinite(value))
    )


def _number(where: str, value: Any, bounds: tuple[float, float]) -> float:
    if not _is_number(value):
        raise PolicyError(where, f"must be a number, not {shown(value)}")
    check_range(where, value, *bounds)
    return float(value)


def _count(where: str, value: Any, bounds: tuple[float, float]) -> int:
    if not _is_number(value) or value != int(value):
        raise PolicyError(where, f"must be a whole number of GPUs, not {shown(value)}")
    check_range(where, value, *bounds)
    return int(value)


def _mapping(where: str, value: Any, parse: Any) -> dict[str, Any]:
    if not isinstance(value, Mapping):
        raise PolicyError(where, "must be an object of name -> value")
    out = {}
    for key, item in value.items():
        name = policy_name(where, key)
        out[name] = parse(f"{where}.{name}", item)
    return out


def _classes(value: Any) -> tuple[PriorityClass, ...]:
    if not isinstance(value, Mapping) or not value:
        raise PolicyError(
            "classes",
            'must be a non-empty object such as {"interactive": {"priority": 100}}',
        )
    out = []
    for name, body in value.items():
        where = f"classes.{name}"
        if not isinstance(name, str) or not _NAME.match(name):
            raise PolicyError(
                "classes",
                f"{shown(name)} is not a usable class name (letters, digits, ._-; at most 64)",
            )
        if not isinstance(body, Mapping):
            raise PolicyError(where, 'must be an object such as {"priority": 50}')
        extra = sorted(set(body) - {"priority", "preemptible"})
        if extra:
            raise PolicyError(
                f"{where}.{extra[0]}", "unknown field; a class has priority, preemptible"
            )
        if "priority" not in body:
            raise PolicyError(f"{where}.priority", "is required (a whole number, higher first)")
        prio = body["priority"]
        if isinstance(prio, bool) or not isinstance(prio, int):
            raise PolicyError(f"{where}.priority", f"must be a whole number, not {shown(prio)}")
        check_range(f"{where}.priority", prio, *RANGES["priority"])
        pre = body.get("preemptible", False)
        if not isinstance(pre, bool):
            raise PolicyError(f"{where}.preemptible", f"must be true or false, not {shown(pre)}")
        out.append(PriorityClass(name=name, priority=prio, preemptible=pre))
    out.sort(key=lambda c: (-c.priority, c.name))
    return tuple(out)
