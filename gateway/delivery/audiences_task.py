"""The periodic audience sync in `serve`: every `audiences_sync_interval`, the one process
holding the sync lease (a row in the store) syncs every audience (audiences_sync.py).

A live holder renews the lease at each run; a stopped one's runs out, and another worker or
replica takes over. Nothing starts without `[[audiences]]`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import socket
import time
from collections.abc import Callable, Sequence

from gateway.delivery.audiences_sync import AudienceSync, Target

log = logging.getLogger("gateway.audiences")


class AudienceSyncer:
    """The periodic sync in `serve`: every `interval`, the process holding the lease syncs."""

    def __init__(
        self,
        sync: AudienceSync,
        chosen: Sequence[Target] | Callable[[], Sequence[Target]],
        *,
        interval: float,
    ) -> None:
        self.sync = sync
        # A callable is read at every run: a reload's new token or audiences apply.
        self._chosen = chosen if callable(chosen) else (lambda: list(chosen))
        self.interval = interval
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"
        self.runs = 0
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Start the loop (nothing to do without audiences)."""
        if self._chosen() and self._task is None:
            self._task = asyncio.create_task(self._loop(), name="audience-sync")

    async def stop(self) -> None:
        """Stop the loop and give the lease back."""
        if self._task is None:
            return
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self._task = None
        with contextlib.suppress(Exception):
            await self.sync.store.release(self.owner)

    async def run_once(self) -> bool:
        """Sync every audience if this process holds (or takes) the lease; True if it did."""
        # The lease outlives one interval: a live holder renews it each run, a dead one's runs out.
        if not await self.sync.store.claim(self.owner, lease=self.interval * 1.5, now=time.time()):
            return False
        await self.sync.sync_all(self._chosen())
        self.runs += 1
        return True

    async def _loop(self) -> None:
        while True:
            try:
                await self.run_once()
            except Exception:
                # A storage fault or a bug in one run must not end the loop.
                log.exception("The audience sync failed; it runs again in %.0f s.", self.interval)
            await asyncio.sleep(self.interval)
