"""Idle-GPU detection: the reclaim policy and the per-kernel state machine, on an injected clock.

A kernel that holds GPUs moves ``active -> idle -> warned -> reclaimed`` while *all* its GPUs stay
under ``idle_util_percent``, and back to ``active`` as soon as any of them is used again. Only GPU
utilisation counts: a kernel busy with CPU work while its GPUs wait is idle here, and a silent cell
that keeps a GPU busy is active. Times are measured from the start of the idle stretch.

Nothing is taken without a warning first: a reclaim happens at an observation later than the
warning, and never sooner than ``reclaim_after - warn_after`` seconds after it, whatever gaps the
sampling had. "Keep" moves the hold forward by ``keep_extension`` seconds, at most ``max_keeps``
times per idle stretch (the count starts again when the kernel is active again).
"""

from __future__ import annotations

import enum
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any

from jupyter_dlinfra.core.errors import Conflict, InvalidRequest
from jupyter_dlinfra.core.quoting import shown

__all__ = [
    "MAX_POLICY_NAME",
    "POLICY_FIELDS",
    "RANGES",
    "IdlePolicy",
    "IdleState",
    "Phase",
    "PolicyError",
    "PolicyOverride",
    "ReclaimAction",
    "ReclaimPolicy",
    "Transition",
    "check_range",
    "keep",
    "observe",
    "policy_name",
]

#: the longest user or group name a policy names (the audit's field, ``groups.NAME.FIELD``,
#: must fit the ledger's column)
MAX_POLICY_NAME = 128
#: the longest a field's name is quoted in a message
_FIELD_SHOWN = 200


class Phase(str, enum.Enum):
    ACTIVE = "active"
    IDLE = "idle"
    WARNED = "warned"
    RECLAIMED = "reclaimed"


class ReclaimAction(str, enum.Enum):
    #: end the kernel's allocations and restart it without GPUs, telling the notebook why
    RELEASE = "release"
    #: shut the kernel down
    SHUTDOWN = "shutdown"
    #: take nothing; record what would have happened (a dry run)
    NOTIFY = "notify"
    #: checkpoint the kernel's GPU memory to the host and lend its GPUs until its next cell;
    #: a kernel that cannot be parked is released instead, with the reason
    PARK = "park"


class PolicyError(InvalidRequest):
    """A policy value is wrong; ``field`` names it (``groups.interns.reclaim_after``)."""

    reason = "bad_policy"

    def __init__(self, field_name: str, message: str) -> None:
        # a field's name can hold a caller's key: quote the start of a long one
        quoted = field_name if len(field_name) <= _FIELD_SHOWN else shown(field_name, _FIELD_SHOWN)
        super().__init__(f"{quoted}: {message}")
        self.field = field_name


@dataclass(frozen=True, kw_only=True)
class IdlePolicy:
    """The thresholds one kernel is judged by. Seconds throughout; 0 switches a stage off."""

    #: a GPU under this utilisation (%) is idle; 0 switches detection off
    idle_util_percent: float = 5.0
    #: idle this long before the kernel shows as idle; 0 switches detection off
    idle_after: float = 600.0
    #: idle this long before the user is warned; 0 switches warnings and reclaim off
    warn_after: float = 1800.0
    #: idle this long before the GPUs are reclaimed; 0 switches reclaim off (warnings only)
    reclaim_after: float = 3600.0
    action: ReclaimAction = ReclaimAction.RELEASE
    #: each "keep" holds the GPUs this much longer; 0 disables keeping
    keep_extension: float = 3600.0
    #: keeps allowed per idle stretch; 0 disables keeping
    max_keeps: int = 3

    @property
    def detects(self) -> bool:
        return self.idle_util_percent > 0 and self.idle_after > 0

    @property
    def warns(self) -> bool:
        return self.detects and self.warn_after > 0

    @property
    def reclaims(self) -> bool:
        return self.warns and self.reclaim_after > 0

    @property
    def keeps_allowed(self) -> bool:
        return self.keep_extension > 0 and self.max_keeps > 0

    @property
    def lead(self) -> float:
        """The least time between a warning and the reclaim it announces."""
        return max(0.0, self.reclaim_after - self.warn_after) if self.reclaims else 0.0

    def to_json(self) -> dict[str, Any]:
        return {f.name: _plain(getattr(self, f.name)) for f in fields(self)}


#: the fields of IdlePolicy, in documentation order
POLICY_FIELDS = tuple(f.name for f in fields(IdlePolicy))
_SECONDS = ("idle_after", "warn_after", "reclaim_after", "keep_extension")
#: (least, most) of each number of the policy (seconds: at most about 31.7 years)
RANGES: dict[str, tuple[float, float]] = {
    "idle_util_percent": (0.0, 100.0),
    **dict.fromkeys(_SECONDS, (0.0, 1e9)),
    "max_keeps": (0, 1000),
}


def check_range(where: str, value: float, least: float, most: float, unit: str = "") -> None:
    """Refuse a number outside ``[least, most]``, saying which end it passed."""
    if value < least:
        if least == 0:
            bound = "0 or more"
        elif value <= 0:
            bound = f"more than 0 (at least {least:g}{unit})"
        else:
            bound = f"at least {least:g}{unit}"
        raise PolicyError(where, f"must be {bound}, not {shown(value)}")
    if value > most:
        raise PolicyError(where, f"must be at most {most:g}{unit}, not {shown(value)}")


def policy_name(where: str, name: Any) -> str:
    """A user's or group's name as a policy's key: printable, at most ``MAX_POLICY_NAME``."""
    if (
        not isinstance(name, str)
        or not name.strip()
        or len(name) > MAX_POLICY_NAME
        or not name.isprintable()
    ):
        raise PolicyError(
            where,
            f"names must be non-empty printable strings of at most {MAX_POLICY_NAME} "
            f"characters, not {shown(name)}",
        )
    return name


def _plain(value: Any) -> Any:
    return value.value if isinstance(value, enum.Enum) else value


@dataclass(frozen=True, kw_only=True)
class PolicyOverride:
    """What differs for one user or group: some fields, or an exemption from reclaim."""

    exempt: bool = False
    changes: Mapping[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        body = {k: _plain(v) for k, v in self.changes.items()}
        if self.exempt:
            body["exempt"] = True
        return body


@dataclass(frozen=True, kw_only=True)
class ReclaimPolicy:
    """The whole policy: a default, and overrides per user and per group.

    For a user, group overrides apply in alphabetical order of the group names, then the user's
    own; an exemption anywhere exempts. Each override is valid alone, but two groups' overrides
    can clash (one moves the warning later, the other the reclaim earlier): then the later
    stages are pushed back, so that a user is never warned after the reclaim.
    """

    default: IdlePolicy = field(default_factory=IdlePolicy)
    users: Mapping[str, PolicyOverride] = field(default_factory=dict)
    groups: Mapping[str, PolicyOverride] = field(default_factory=dict)

    def for_user(self, user: str, groups: Iterable[str] = ()) -> IdlePolicy | None:
        """The policy that applies to ``user``; None when the user is exempt."""
        chain = [self.groups[g] for g in sorted(set(groups)) if g in self.groups]
        if user in self.users:
            chain.append(self.users[user])
        if any(o.exempt for o in chain):
            return None
        changes: dict[str, Any] = {}
        for override in chain:
            changes.update(override.changes)
        if not changes:
            return self.default
        return _keep_order(replace(self.default, **changes), self.default)

    def to_json(self) -> dict[str, Any]:
        body = self.default.to_json()
        body["users"] = {name: o.to_json() for name, o in sorted(self.users.items())}
        body["groups"] = {name: o.to_json() for name, o in sorted(self.groups.items())}
        return body

    @classmethod
    def from_json(cls, doc: Any, *, base: ReclaimPolicy | None = None) -> ReclaimPolicy:
        """Validate a policy document; fields it leaves out keep ``base``'s values."""
        if not isinstance(doc, Mapping):
            raise PolicyError("policy", "must be a JSON object")
        start = base or cls()
        unknown = set(doc) - set(POLICY_FIELDS) - {"users", "groups"}
        if unknown:
            name = sorted(unknown)[0]
            raise PolicyError(
                name, f"unknown field; the policy has {', '.join(POLICY_FIELDS)}, users, groups"
            )
        changes = _parse_fields(doc, prefix="")
        default = replace(start.default, **changes)
        _check_order(default, "")
        users = _parse_overrides(doc.get("users", start.users), "users", default)
        groups = _parse_overrides(doc.get("groups", start.groups), "groups", default)
        return cls(default=default, users=users, groups=groups)


def _keep_order(policy: IdlePolicy, default: IdlePolicy) -> IdlePolicy:
    """Push warn and reclaim back until idle <= warn < reclaim holds again (lenient merge)."""
    if not policy.detects:
        return policy
    warn, reclaim = policy.warn_after, policy.reclaim_after
    if warn and warn < policy.idle_after:
        warn = policy.idle_after
    if warn and reclaim and reclaim <= warn:
        lead = default.lead or max(warn - policy.idle_after, 60.0)
        reclaim = warn + lead
    if (warn, reclaim) == (policy.warn_after, policy.reclaim_after):
        return policy
    return replace(policy, warn_after=warn, reclaim_after=reclaim)


def _parse_fields(doc: Mapping[str, Any], *, prefix: str) -> dict[str, Any]:
    changes: dict[str, Any] = {}
    for name in POLICY_FIELDS:
        if name not in doc:
            continue
        value, where = doc[name], prefix + name
        if name == "action":
            try:
                changes[name] = ReclaimAction(value)
            except (ValueError, TypeError):  # TypeError: an unhashable value, such as a list
                options = ", ".join(a.value for a in ReclaimAction)
                raise PolicyError(where, f"must be one of {options}, not {shown(value)}") from None
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise PolicyError(where, f"must be a number, not {shown(value)}")
        # ints are compared as they are: float() of one with hundreds of digits overflows
        if isinstance(value, float) and not math.isfinite(value):
            raise PolicyError(where, f"must be a finite number, not {shown(value)}")
        if name == "idle_util_percent" and not 0 <= value <= 100:
            raise PolicyError(where, f"is a percentage: 0-100, not {shown(value)}")
        check_range(where, value, *RANGES[name], unit=" s" if name in _SECONDS else "")
        if name == "max_keeps":
            if value != int(value):
                raise PolicyError(where, f"must be a whole number, not {shown(value)}")
            value = int(value)
        elif name in _SECONDS:
            value = float(value)
        changes[name] = value
    return changes


def _check_order(policy: IdlePolicy, prefix: str) -> None:
    if policy.detects and policy.warn_after and policy.warn_after < policy.idle_after:
        raise PolicyError(
            prefix + "warn_after",
            f"must be at least idle_after ({policy.idle_after:g} s), not {policy.warn_after:g}",
        )
    if policy.reclaim_after and policy.warn_after == 0 and policy.detects:
        raise PolicyError(
            prefix + "reclaim_after",
            "needs warn_after > 0: GPUs are never taken without a warning first (set "
            "reclaim_after to 0 to switch reclaim off)",
        )
    if policy.warns and policy.reclaim_after and policy.reclaim_after <= policy.warn_after:
        raise PolicyError(
            prefix + "reclaim_after",
            f"must be later than warn_after ({policy.warn_after:g} s), "
            f"not {policy.reclaim_after:g}",
        )


def _parse_overrides(raw: Any, where: str, default: IdlePolicy) -> dict[str, PolicyOverride]:
    if isinstance(raw, Mapping) and all(isinstance(v, PolicyOverride) for v in raw.values()):
        raw = {name: o.to_json() for name, o in raw.items()}
    if not isinstance(raw, Mapping):
        raise PolicyError(where, "must be an object of name -> overrides")
    parsed: dict[str, PolicyOverride] = {}
    for name, body in raw.items():
        policy_name(where, name)
        prefix = f"{where}.{name}."
        if not isinstance(body, Mapping):
            raise PolicyError(f"{where}.{name}", 'must be an object such as {"exempt": true}')
        unknown = set(body) - set(POLICY_FIELDS) - {"exempt"}
        if unknown:
            raise PolicyError(prefix + sorted(unknown)[0], "unknown field")
        exempt = body.get("exempt", False)
        if not isinstance(exempt, bool):
            raise PolicyError(prefix + "exempt", f"must be true or false, not {shown(exempt)}")
        changes = _parse_fields(body, prefix=prefix)
        _check_order(replace(default, **changes), prefix)
        parsed[name] = PolicyOverride(exempt=exempt, changes=changes)
    return parsed


# -- the state machine ---------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class IdleState:
    kernel_id: str
    phase: Phase = Phase.ACTIVE
    #: start of the current stretch with every GPU under the threshold
    idle_since: float | None = None
    warned_at: float | None = None
    keeps: int = 0
    #: a keep holds the GPUs at least until then
    hold_until: float | None = None
    reclaimed_at: float | None = None
    #: the utilisation read at the last change (max over the kernel's GPUs, %)
    last_util: float | None = None
    #: when the state last changed (the store skips readings that change nothing else)
    updated_at: float = 0.0

    def warn_at(self, policy: IdlePolicy) -> float | None:
        if not policy.warns or self.idle_since is None:
            return None
        at = self.idle_since + policy.warn_after
        if self.hold_until is not None:
            at = max(at, self.hold_until - policy.lead)
        return at

    def reclaim_at(self, policy: IdlePolicy) -> float | None:
        if not policy.reclaims or self.idle_since is None:
            return None
        at = self.idle_since + policy.reclaim_after
        if self.hold_until is not None:
            at = max(at, self.hold_until)
        if self.warned_at is not None:
            at = max(at, self.warned_at + policy.lead)
        return at

    def keeps_left(self, policy: IdlePolicy) -> int:
        return max(0, policy.max_keeps - self.keeps) if policy.keeps_allowed else 0


@dataclass(frozen=True, kw_only=True)
class Transition:
    kernel_id: str
    #: the phase entered, or "kept"
    kind: str
    at: float
    detail: Mapping[str, Any] = field(default_factory=dict)


def observe(
    state: IdleState, utilization: float, at: float, policy: IdlePolicy | None
) -> tuple[IdleState, list[Transition]]:
    """Feed one reading (the highest utilisation among the kernel's GPUs) taken at ``at``.

    ``policy`` None means the kernel's owner is exempt: the kernel is treated as active.
    """
    out: list[Transition] = []
    kid = state.kernel_id
    # reclaimed is terminal for the idle stretch: only use of the GPUs again, or their release,
    # ends it
    if (
        state.phase is Phase.RECLAIMED
        and policy is not None
        and utilization < policy.idle_util_percent
    ):
        return replace(state, last_util=utilization, updated_at=at), out
    if policy is None or not policy.detects or utilization >= policy.idle_util_percent:
        if state.phase is not Phase.ACTIVE:
            idle_for = at - state.idle_since if state.idle_since is not None else 0.0
            out.append(
                Transition(
                    kernel_id=kid,
                    kind=Phase.ACTIVE.value,
                    at=at,
                    detail={"was": state.phase.value, "idle_s": round(idle_for, 3)},
                )
            )
        return IdleState(kernel_id=kid, last_util=utilization, updated_at=at), out

    current = replace(
        state,
        idle_since=state.idle_since if state.idle_since is not None else at,
        last_util=utilization,
        updated_at=at,
    )
    assert current.idle_since is not None
    idle_for = at - current.idle_since
    if current.phase is Phase.ACTIVE and idle_for >= policy.idle_after:
        current = replace(current, phase=Phase.IDLE)
        out.append(Transition(kernel_id=kid, kind="idle", at=at, detail={"idle_s": idle_for}))
    warn_at = current.warn_at(policy)
    if current.phase is Phase.IDLE and warn_at is not None and at >= warn_at:
        current = replace(current, phase=Phase.WARNED, warned_at=at)
        out.append(
            Transition(
                kernel_id=kid,
                kind=Phase.WARNED.value,
                at=at,
                detail={
                    "idle_s": idle_for,
                    "reclaim_at": current.reclaim_at(policy),
                    "action": policy.action.value,
                    "keeps_left": current.keeps_left(policy),
                },
            )
        )
        # the warning must be seen before anything is taken: reclaim waits for a later reading
        return current, out
    reclaim_at = current.reclaim_at(policy)
    if current.phase is Phase.WARNED and reclaim_at is not None and at >= reclaim_at:
        current = replace(current, phase=Phase.RECLAIMED, reclaimed_at=at)
        out.append(
            Transition(
                kernel_id=kid,
                kind=Phase.RECLAIMED.value,
                at=at,
                detail={"idle_s": idle_for, "action": policy.action.value},
            )
        )
    return current, out


def keep(state: IdleState, at: float, policy: IdlePolicy | None) -> tuple[IdleState, Transition]:
    """The user asks to keep the GPUs: hold them ``keep_extension`` longer."""
    if policy is None:
        raise Conflict("your GPUs are exempt from idle reclaim: there is nothing to keep")
    if not policy.keeps_allowed:
        raise Conflict("the reclaim policy allows no keeps (keep_extension or max_keeps is 0)")
    if state.phase is Phase.RECLAIMED:
        raise Conflict("these GPUs were already reclaimed; ask for GPUs again with %gpu")
    if state.phase is Phase.ACTIVE:
        raise Conflict("these GPUs are in use, not idle: there is nothing to keep")
    if state.keeps >= policy.max_keeps:
        raise Conflict(
            f"kept {state.keeps} times already in this idle stretch, the most the policy "
            "allows; use the GPUs or release them"
        )
    kept = replace(
        state,
        phase=Phase.IDLE if state.phase is Phase.WARNED else state.phase,
        warned_at=None,
        keeps=state.keeps + 1,
        hold_until=at + policy.keep_extension,
        updated_at=at,
    )
    return kept, Transition(
        kernel_id=state.kernel_id,
        kind="kept",
        at=at,
        detail={
            "hold_until": kept.hold_until,
            "keeps_left": kept.keeps_left(policy),
        },
    )
