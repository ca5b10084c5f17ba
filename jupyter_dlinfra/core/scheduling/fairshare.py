"""Fair share: recent GPU use per share, decayed with a half-life, as SLURM's fair-share factor.

Each user and each account (a group with a share) has a usage in GPU-seconds that decays by half
every ``half_life``; while GPUs are held it grows continuously. Kept exact in O(1) per change:
between two changes the held count is constant, so the decayed integral has a closed form.

Ordering uses ``usage / share`` (lower first), account first, then the user within the account
(SLURM's Fair Tree). GPUs held *now* also count as if held for one more half-life, so that a user
who has just been granted many GPUs goes behind others at once rather than after hours. Users see
SLURM's classic factor ``2 ** -(usage_share / share_share)`` (1: unused, 0.5: used exactly the
share, towards 0: used far more).

Every figure is finite and within ``[0, MAX_USAGE]`` (:func:`bounded_usage`): the policy's ranges
keep the maths finite, and should a figure still overflow (a policy from before those ranges, a
stored figure), it must not become a NaN that orders nothing or that the database refuses.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["MAX_USAGE", "Account", "Standing", "bounded_usage", "decayed", "factor"]

_LN2 = math.log(2.0)
#: the most GPU-seconds a figure holds: far beyond real use (a million GPUs for 30 years)
MAX_USAGE = 1e15


def bounded_usage(value: float) -> float:
    """``value`` as a usable figure: NaN counts as nothing, the rest is kept in [0, MAX_USAGE]."""
    if math.isnan(value):
        return 0.0
    return min(max(float(value), 0.0), MAX_USAGE)


def _kept(elapsed: float, half_life: float) -> float:
    """The fraction of a use that still counts ``elapsed`` seconds later, in [0, 1]."""
    if not half_life > 0:
        return 0.0
    try:
        return float(2.0 ** (-max(elapsed, 0.0) / half_life))
    except (OverflowError, ZeroDivisionError):
        return 0.0


def decayed(value: float, elapsed: float, half_life: float) -> float:
    return bounded_usage(value * _kept(elapsed, half_life))


def factor(usage_fraction: float, share_fraction: float) -> float:
    """SLURM's classic fair-share factor, in [0, 1]."""
    if not share_fraction > 0:
        return 0.0
    exponent = -usage_fraction / share_fraction
    # NaN (usage unknown) counts as nothing used, as in bounded_usage
    if math.isnan(exponent) or exponent >= 0:
        return 1.0
    return float(2.0**exponent)


class Account:
    """Decayed GPU-seconds of one user or account, and the GPUs it holds now."""

    __slots__ = ("at", "held", "value")

    def __init__(self, value: float = 0.0, at: float = 0.0, held: int = 0) -> None:
        self.value = value
        self.at = at
        self.held = held

    def usage(self, now: float, half_life: float) -> float:
        """Decayed GPU-seconds used up to ``now``."""
        dt = max(now - self.at, 0.0)
        if dt == 0.0:
            return self.value
        keep = _kept(dt, half_life)
        # held * half_life overflows first for a huge half-life: bounded, never inf * 0
        grown = bounded_usage(self.held * half_life / _LN2) * (1.0 - keep)
        return bounded_usage(self.value * keep + grown)

    def advance(self, now: float, half_life: float) -> None:
        if now > self.at:
            self.value = self.usage(now, half_life)
            self.at = now

    def change(self, now: float, half_life: float, delta: int) -> None:
        self.advance(now, half_life)
        self.held += delta

    def load(self, value: float, at: float, half_life: float, now: float) -> None:
        """Add usage recorded at ``at`` (a stored figure), decayed to the account's time."""
        self.advance(now, half_life)
        self.value = bounded_usage(self.value + decayed(value, now - at, half_life))

    def key(self, now: float, half_life: float) -> float:
        """What ordering compares: used GPU-seconds plus one half-life of what is held now."""
        return bounded_usage(self.usage(now, half_life) + bounded_usage(self.held * half_life))


@dataclass(frozen=True, kw_only=True)
class Standing:
    """A user's fair-share position, as shown to them."""

    user: str
    account: str
    #: decayed GPU-hours used
    usage_gpu_hours: float
    held: int
    share: float
    account_share: float
    #: SLURM's classic factor within the account: 1 unused, 0.5 used its share, ~0 far over
    factor: float
    #: 1-based rank among users with waiting requests (lower is served first); None if none waits
    rank: int | None = None

    def to_json(self) -> dict[str, object]:
        return {
            "user": self.user,
            "account": self.account,
            "usage_gpu_hours": round(self.usage_gpu_hours, 3),
            "held": self.held,
            "share": self.share,
            "account_share": self.account_share,
            "factor": round(self.factor, 4),
            "rank": self.rank,
        }
