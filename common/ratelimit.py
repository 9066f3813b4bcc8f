"""A token bucket: the per-connection rate limit.

The caller passes the current time (any monotonic clock, in seconds), so the
bucket has no clock of its own and is deterministic in tests.
"""

from __future__ import annotations


class TokenBucket:
    """Allow ``rate`` events per second on average, ``burst`` at once.

    The bucket starts full.
    """

    __slots__ = ("_last", "_tokens", "burst", "rate")

    def __init__(self, rate: float, burst: int, now: float) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError("rate must be positive and burst at least 1")
        self.rate = rate
        self.burst = burst
        self._tokens = float(burst)
        self._last = now

    def allow(self, now: float) -> bool:
        """Take one token if there is one; return whether the event may go."""
        elapsed = now - self._last
        if elapsed > 0:
            self._tokens = min(self.burst, self._tokens + elapsed * self.rate)
            self._last = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        return False
