"""The `max_buffer_mb` bound both stores keep on what they accept."""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable

from gateway.delivery.store import OutboxFull

log = logging.getLogger("gateway.outbox")


class SizeGuard:
    """Refuses new events (`OutboxFull`) while the store is over its bound.

    The size is measured at most once every `every` seconds (a store's own figure is not
    free to read) and the answer kept in between; over the bound, delivered rows (kept only
    for the record) give their room back first.
    """

    def __init__(
        self,
        name: str,
        max_bytes: int,
        *,
        every: float,
        used: Callable[[], Awaitable[int]],
        purge: Callable[[], Awaitable[int]],
    ) -> None:
        self.name = name
        self.max_bytes = max_bytes
        self.every = every
        self._used = used
        self._purge = purge
        self.checked_at = -float("inf")
        self._over = False

    async def check(self) -> None:
        """Raise `OutboxFull` when the store is (or was at the last look) over its bound."""
        now = time.monotonic()
        if now - self.checked_at >= self.every:
            self.checked_at = now
            used = await self._used()
            if used > self.max_bytes:
                await self._purge()
                used = await self._used()
            self._over = used > self.max_bytes
            if self._over:
                log.error(
                    "Outbox %s holds %.1f MiB, over max_buffer_mb: refusing new events.",
                    self.name,
                    used / 1048576,
                )
        if self._over:
            raise OutboxFull(f"the store at {self.name} is over max_buffer_mb")
