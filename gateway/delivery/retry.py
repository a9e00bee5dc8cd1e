"""Retry policy for deliveries to the Graph API: exponential backoff with full jitter."""

from __future__ import annotations

import calendar
import math
import random
import time
from dataclasses import dataclass
from email.utils import parsedate_tz
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from gateway.settings import Settings

# A Retry-After beyond a day is almost certainly a bogus header; honouring it would park
# events past Meta's 7-day event_time limit after only a handful of attempts.
MAX_RETRY_AFTER = 86_400.0

# 2**63 seconds exceeds any sane cap; clamping the exponent keeps the float finite
# (2.0**1024 raises OverflowError) for callers that keep counting past max_attempts.
_MAX_EXPONENT = 63


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How long to wait before the next attempt, and when to give up."""

    base: float = 1.0
    cap: float = 900.0
    throttle_factor: float = 4.0
    max_attempts: int = 50

    def __post_init__(self) -> None:
        if not (self.base > 0 and math.isfinite(self.base)):
            raise ValueError(f"base must be a positive number of seconds, got {self.base!r}")
        if not (self.cap >= self.base and math.isfinite(self.cap)):
            raise ValueError(f"cap must be finite and >= base, got {self.cap!r}")
        if not (self.throttle_factor >= 1 and math.isfinite(self.throttle_factor)):
            raise ValueError(f"throttle_factor must be >= 1, got {self.throttle_factor!r}")
        if self.max_attempts < 1:
            raise ValueError(f"max_attempts must be >= 1, got {self.max_attempts!r}")

    @classmethod
    def from_settings(cls, settings: Settings) -> RetryPolicy:
        """The backoff `retry_base`, `retry_cap` and `max_attempts` configure."""
        return cls(
            base=settings.retry_base, cap=settings.retry_cap, max_attempts=settings.max_attempts
        )

    def delay(
        self,
        attempt: int,
        *,
        throttled: bool = False,
        retry_after: float | None = None,
        rng: random.Random | None = None,
    ) -> float:
        """Seconds to wait after failed attempt number `attempt` (1-based)."""
        if attempt < 1:
            raise ValueError(f"attempt is 1-based, got {attempt!r}")
        ceiling = min(self.cap, self.base * 2.0 ** min(attempt - 1, _MAX_EXPONENT))
        if throttled:
            # Throttling means Meta wants less traffic from us: widen the window, but the cap
            # still bounds how long one batch can sit idle.
            ceiling = min(self.cap, ceiling * self.throttle_factor)
        # Full jitter (uniform over [0, ceiling]) spreads retries of many batches that failed
        # together, so they do not come back as a synchronized burst.
        wait = (rng if rng is not None else random).uniform(0.0, ceiling)
        if retry_after is not None and math.isfinite(retry_after) and retry_after > 0:
            # The server's own estimate beats ours, even above the cap.
            wait = max(wait, min(retry_after, MAX_RETRY_AFTER))
        return wait

    def exhausted(self, attempts: int) -> bool:
        """True once `attempts` attempts have been made and no more are allowed."""
        return attempts >= self.max_attempts


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Retry-After as delta-seconds or HTTP-date -> seconds >= 0; None when absent/unparseable."""
    if value is None:
        return None
    text = value.strip()
    if not text:
        return None
    if text.isascii() and text.replace(".", "", 1).isdigit():
        seconds = float(text)
        return seconds if math.isfinite(seconds) else None
    parts = parsedate_tz(text)
    if parts is None:
        return None
    try:
        # HTTP dates are GMT by definition, so a missing zone means UTC, not local time.
        at = calendar.timegm(parts[:9]) - (parts[9] or 0)
    except (ValueError, OverflowError):
        return None
    current = time.time() if now is None else now
    return max(0.0, at - current)
