"""Fair share: recent GPU use per share, decayed with a half-life, as SLURM's fair-share factor.

Each user and each account (a group with a share) has a usage in GPU-seconds that decays by half
every ``half_life``; while GPUs are held it grows continuously. Kept exact in O(1) per change:
between two changes the held count is constant, so the decayed integral has a closed form.

Ordering uses ``usage / share`` (lower first), account first, then the user within the account
(SLURM's Fair Tree). GPUs held *now* also count as if held for one more half-life, so that a user
who has just been granted many GPUs goes behind others at once rather than after hours. Users see
SLURM's classic factor ``2 ** -(usage_share / share_share)`` (1: unused, 0.5: used exactly the
share, towards 0: used far more).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["Account", "Standing", "decayed", "factor"]

_LN2 = math.log(2.0)


def decayed(value: float, elapsed: float, half_life: float) -> float:
    return float(value * 2.0 ** (-max(elapsed, 0.0) / half_life))


def factor(usage_fraction: float, share_fraction: float) -> float:
    """SLURM's classic fair-share factor, in [0, 1]."""
    if share_fraction <= 0:
        return 0.0
    return float(2.0 ** (-usage_fraction / share_fraction))


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
        keep = 2.0 ** (-dt / half_life)
        return float(self.value * keep + self.held * half_life / _LN2 * (1.0 - keep))

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
        self.value += decayed(value, now - at, half_life)

    def key(self, now: float, half_life: float) -> float:
        """What ordering compares: used GPU-seconds plus one half-life of what is held now."""
        return self.usage(now, half_life) + self.held * half_life


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
