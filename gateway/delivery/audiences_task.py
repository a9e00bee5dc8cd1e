"""The periodic audience sync in `serve`: every `audiences_sync_interval`, the one process
holding the sync lease (a row in the store) syncs every audience (audiences_sync.py).

A live holder renews the lease at each run; a stopped one's runs out, and another worker or
replica takes over. Nothing starts without `[[audiences]]`; `AudienceService` starts the
loop when a reload brings the first audiences and stops it when a reload removes the last.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import socket
import time
from collections.abc import Awaitable, Callable, Sequence

import aiohttp

from gateway.delivery.audiences_sync import AudienceSync, Target, targets
from gateway.delivery.graph import GraphClient
from gateway.delivery.retry import RetryPolicy
from gateway.delivery.store import AudienceStore
from gateway.metrics import Metrics
from gateway.settings import PARTNER_AGENT, Settings

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


class AudienceService:
    """The audience store and periodic sync of one `serve` process, kept in step with the
    configuration: `apply` at start-up and after every reload (SIGHUP)."""

    def __init__(
        self,
        open_store: Callable[[], Awaitable[AudienceStore]],
        settings: Callable[[], Settings],
        *,
        metrics: Metrics | None = None,
    ) -> None:
        self._open_store = open_store
        self._settings = settings
        self._metrics = metrics
        # Opened with the first audiences and kept until shutdown (the dashboard and
        # /metrics read the state of audiences synced before a reload too).
        self.store: AudienceStore | None = None
        self.syncer: AudienceSyncer | None = None
        self._session: aiohttp.ClientSession | None = None

    async def apply(self) -> None:
        """Start the sync when audiences are configured and it is not running; stop it when
        none are left."""
        settings = self._settings()
        if not targets(settings):
            if self.syncer is not None:
                await self.syncer.stop()
                self.syncer = None
                log.info("No audiences are configured any more: the audience sync stopped.")
            return
        if self.syncer is not None:
            if self.syncer.sync.dry_run == settings.dry_run:
                self.syncer.interval = settings.audiences_sync_interval
                return
            # dry_run turned on or off: a loop of the other kind replaces this one.
            await self.syncer.stop()
            self.syncer = None
        if self.store is None:
            self.store = await self._open_store()
        if self._session is None:
            self._session = aiohttp.ClientSession(trust_env=False)
        graph = GraphClient(
            self._session,
            graph_url=settings.graph_url,
            graph_version=settings.graph_version,
            # Uploads of 10,000 rows take longer than an event batch.
            timeout=max(settings.send_timeout, 60.0),
            partner_agent=PARTNER_AGENT,
        )
        policy = RetryPolicy(
            base=settings.retry_base, cap=settings.retry_cap, max_attempts=settings.max_attempts
        )
        sync = AudienceSync(
            self.store, None if settings.dry_run else graph, policy, metrics=self._metrics
        )
        self.syncer = AudienceSyncer(
            sync,
            lambda: targets(self._settings()),
            interval=settings.audiences_sync_interval,
        )
        self.syncer.start()

    async def close(self) -> None:
        """Stop the sync and release the store and the HTTP session."""
        if self.syncer is not None:
            await self.syncer.stop()
            self.syncer = None
        if self._session is not None:
            await self._session.close()
            self._session = None
        if self.store is not None:
            await self.store.close()
            self.store = None
