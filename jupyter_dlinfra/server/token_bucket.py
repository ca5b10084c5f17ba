"""A token bucket: work allowed at ``rate`` units a second on average, in bursts of a second's."""

from __future__ import annotations

__all__ = ["TokenBucket"]


class TokenBucket:
    """Holds at most ``rate`` tokens (a second's worth), refilled at ``rate`` a second; work
    that costs more than the bucket holds waits until it is paid, and may leave it in debt
    (a cost above a second's worth waits for that second, then for its debt)."""

    def __init__(self, rate: float, now: float) -> None:
        """``rate``: tokens a second (0: no bound); ``now``: the clock's reading at the start
        (the bucket starts full)."""
        if rate < 0:
            raise ValueError(f"rate must be 0 or more, not {rate}")
        self.rate = rate
        self._tokens = rate
        self._at = now

    def delay(self, now: float, cost: float) -> float:
        """Seconds from ``now`` until work of ``cost`` tokens may go (0: at once)."""
        if self.rate <= 0:
            return 0.0
        return max(0.0, (min(cost, self.rate) - self._level(now)) / self.rate)

    def spend(self, now: float, cost: float) -> None:
        """Work of ``cost`` tokens went at ``now``."""
        if self.rate <= 0:
            return
        self._tokens = self._level(now) - cost
        self._at = now

    def _level(self, now: float) -> float:
        return min(self.rate, self._tokens + max(0.0, now - self._at) * self.rate)
