"""Token buckets: smooth a burst (a backlog after an outage) into a steady rate."""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict


class TokenBucket:
    """`rate` tokens per second, at most `burst` saved up."""

    def __init__(self, rate: float, burst: int) -> None:
        self.rate = rate
        self.burst = float(burst)
        self._tokens = float(burst)
        self._stamp = time.monotonic()
        self.waits = 0

    def _refill(self) -> None:
        now = time.monotonic()
        self._tokens = min(self.burst, self._tokens + (now - self._stamp) * self.rate)
        self._stamp = now

    def due(self) -> float:
        """0 when a token is available now (none is taken), else the seconds until one is."""
        self._refill()
        return 0.0 if self._tokens >= 1.0 else (1.0 - self._tokens) / self.rate

    def try_take(self) -> float:
        """Take a token now and return 0, or return the seconds until one is due."""
        self._refill()
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return 0.0
        return (1.0 - self._tokens) / self.rate

    async def take(self) -> None:
        """Wait until a token is available, then take it."""
        while (wait := self.try_take()) > 0:
            self.waits += 1
            await asyncio.sleep(wait)


_MAX_KEYS = 10_000


class RateLimits:
    """One token bucket per client IP, the least recently seen forgotten first."""

    def __init__(self, rate: float, burst: int) -> None:
        self.rate = rate
        self.burst = burst
        self._buckets: OrderedDict[str, TokenBucket] = OrderedDict()

    def wait(self, key: str) -> float:
        """0 when the request may go ahead, else seconds until it may."""
        bucket = self._buckets.pop(key, None) or TokenBucket(self.rate, self.burst)
        self._buckets[key] = bucket
        if len(self._buckets) > _MAX_KEYS:
            self._buckets.popitem(last=False)
        return bucket.try_take()

    def due(self, key: str) -> float:
        """Like `wait`, without using up a token: 0 when a request may go ahead now."""
        bucket = self._buckets.get(key)
        return bucket.due() if bucket is not None else 0.0
