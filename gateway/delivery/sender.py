"""Leased outbox rows in, Graph API requests out, each answer recorded on its rows.

A row leaves the outbox only once Meta confirmed it (or it is dead-lettered with a
reason). Invalid events are isolated by splitting the batch; a refused token parks the
pixel (`blocked`) until the token changes, instead of burning retries or dropping rows.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import socket
import time
import uuid
from collections.abc import Iterable, Sequence

from gateway.delivery.graph import GraphClient, Outcome
from gateway.delivery.ratelimit import TokenBucket
from gateway.delivery.retry import RetryPolicy
from gateway.delivery.sending import Delivery, SenderOptions, token_fingerprint
from gateway.delivery.store import OutboxStore
from gateway.metrics import Metrics
from gateway.settings import PixelSettings

log = logging.getLogger("gateway.sender")

__all__ = ["Sender", "SenderOptions", "token_fingerprint"]

_MAINTENANCE_EVERY = 60.0


class Sender(Delivery):
    """Drains the outbox to the Graph API; start with `run()`, end with `stop()`."""

    def __init__(
        self,
        outbox: OutboxStore,
        graph: GraphClient,
        pixels: Sequence[PixelSettings],
        options: SenderOptions,
        policy: RetryPolicy,
        *,
        metrics: Metrics | None = None,
    ) -> None:
        self.outbox = outbox
        self.metrics = metrics or Metrics()
        self.graph = graph
        self.options = options
        self.policy = policy
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.pixels = {p.id: p for p in pixels}
        # Pixel -> its [[sites]] site, for the `site` label of the send series (set by the
        # app from the config, like `pixels`; empty without sites).
        self.pixel_sites: dict[str, str] = {}
        self._buckets: dict[str, TokenBucket] = {}
        self._slots = asyncio.Semaphore(options.concurrency)
        # Batches in flight per pixel: a pixel at its share of the slots is left out of the
        # next claim, so its backlog, rate limit or slow answers never hold another's sends.
        self._busy: dict[str, int] = {}
        self._freed = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        self._stopping = asyncio.Event()
        self._next_probe = 0.0
        # When the last claim began (monotonic): rows due on a timer wait for `linger`
        # after it, so that a steady trickle of held rows is claimed once a linger, not
        # once per group commit.
        self._claimed_at = -math.inf
        # Releases of rows whose send was cut short: stop() waits for every one of them,
        # even when the task that started it was cancelled meanwhile.
        self._releases: set[asyncio.Future[None]] = set()
        self._run_task: asyncio.Task[None] | None = None
        self._stop_task: asyncio.Task[None] | None = None
        self.last_success: float | None = None
        self.last_error: dict[str, str | float | None] | None = None

    def start(self) -> None:
        """Start the claim loop in the background; end it with `stop()`."""
        self._run_task = asyncio.create_task(self.run(), name="sender")

    async def run(self) -> None:
        """Claim and send until `stop()`."""
        await self.reconcile_blocks()
        next_maintenance = 0.0
        drained = False
        while not self._stopping.is_set():
            if time.monotonic() >= next_maintenance:
                next_maintenance = time.monotonic() + _MAINTENANCE_EVERY
                await self._maintain()
            # On its own clock: a probe interval under a minute is kept, not rounded up.
            await self._probe_if_due()
            if drained:
                # The last claim took every due row it could see: claiming again at once
                # would be an empty write transaction. Wait for a commit or a due row.
                drained = False
                await self._idle()
                continue
            await self._slots.acquire()
            if self._stopping.is_set():
                self._slots.release()
                break
            self.outbox.new_work.clear()
            self._freed.clear()
            skip = self._saturated()
            self._claimed_at = time.monotonic()
            try:
                rows = await self.outbox.claim(
                    self.owner, limit=self.options.batch_size, lease=self.options.lease, skip=skip
                )
            except Exception as exc:
                self._slots.release()
                log.error("Claiming events from the outbox failed: %s", exc)
                await self._sleep(self.options.poll_interval)
                continue
            if not rows:
                self._slots.release()
                # Rows of a saturated pixel may be due: wait for a send to end, not for them.
                await (self._until_freed() if skip else self._idle())
                continue
            if self._stopping.is_set():
                # stop() came while we were claiming: hand these straight back.
                self._slots.release()
                await self._release([r.id for r in rows])
                break
            pixels = {r.pixel_id for r in rows}
            for pixel_id in pixels:
                self._busy[pixel_id] = self._busy.get(pixel_id, 0) + 1
            task = asyncio.create_task(self._deliver(rows, pixels), name="sender-batch")
            self._tasks.add(task)
            task.add_done_callback(self._finished)
            drained = not skip and len(rows) < self.options.batch_size

    def _saturated(self) -> tuple[str, ...]:
        """Pixels holding their share of the send slots (half of them, with several pixels)."""
        if len(self.pixels) < 2:
            return ()
        share = max(1, self.options.concurrency // 2)
        return tuple(sorted(p for p, n in self._busy.items() if n >= share))

    async def _until_freed(self) -> None:
        waits = {
            asyncio.ensure_future(self._freed.wait()),
            asyncio.ensure_future(self.outbox.new_work.wait()),
        }
        try:
            await asyncio.wait(
                waits, timeout=self.options.poll_interval, return_when="FIRST_COMPLETED"
            )
        finally:
            for waiting in waits:
                waiting.cancel()

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self._slots.release()
        self._freed.set()
        if not task.cancelled() and task.exception() is not None:
            log.error("A send task failed: %r", task.exception())

    async def stop(self, grace: float) -> None:
        """Stop claiming; let sends in flight finish within `grace`, release the rest.

        Safe to call more than once: later calls wait for the first.
        """
        if self._stop_task is None:
            self._stop_task = asyncio.create_task(self._stop(grace), name="sender-stop")
        await asyncio.shield(self._stop_task)

    async def _stop(self, grace: float) -> None:
        deadline = time.monotonic() + grace
        self._stopping.set()
        self.outbox.new_work.set()
        if self._run_task is not None:
            # The loop ends on its own at the next check; cancel only a stuck one.
            done, _ = await asyncio.wait({self._run_task}, timeout=max(grace, 0.1))
            if not done:
                self._run_task.cancel()
                await asyncio.wait({self._run_task})
        if self._tasks:
            remaining = max(0.0, deadline - time.monotonic())
            _, pending = await asyncio.wait(set(self._tasks), timeout=remaining)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending)
        while self._releases:
            await asyncio.wait(set(self._releases))

    async def _release(self, ids: Iterable[int]) -> None:
        release = asyncio.ensure_future(self.outbox.release(list(ids), self.owner))
        self._releases.add(release)
        release.add_done_callback(self._releases.discard)
        await asyncio.shield(release)

    async def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), seconds)

    async def _idle(self) -> None:
        timeout = self.options.poll_interval
        try:
            due = await self.outbox.next_due()
        except Exception as exc:
            # A store that is away (a database restarting) must not end the sender: wait a
            # poll interval and claim again, as after a failed claim.
            log.error("Reading when the next event is due failed: %s", exc)
            due = None
        if due is not None:
            timeout = max(0.0, min(timeout, due - time.time()))
        # Rows due on a timer (a hold that ended, a retry's backoff, another process's
        # commit) are not waited on by anyone: they go at most `linger` after the last claim.
        linger_until = self._claimed_at + self.options.linger
        end = max(time.monotonic() + timeout, linger_until)
        while not self._stopping.is_set():
            remaining = end - time.monotonic()
            if remaining <= 0:
                return
            try:
                await asyncio.wait_for(self.outbox.new_work.wait(), remaining)
            except TimeoutError:
                return
            # Woken by a commit: claim only once something is due. Held rows (the
            # assembly hold) would otherwise cost an empty claim transaction per commit.
            # Rows stored without a hold are claimed at once: someone may wait on them.
            wake_at = self.outbox.take_wake_at()
            wait = wake_at - time.time()
            if wait <= 0:
                return
            self.outbox.new_work.clear()
            end = max(min(end, time.monotonic() + wait), linger_until)

    async def _maintain(self) -> None:
        try:
            expired, purged = await self.outbox.expire_and_purge(
                retention=self.options.retention, dead_retention=self.options.dead_retention
            )
            if expired:
                log.error(
                    "Dead-lettered %d event(s) that aged past Meta's 7-day window unsent.",
                    expired,
                )
            if purged:
                log.info("Purged %d delivered or dead event(s) past retention.", purged)
        except Exception as exc:
            log.error("Outbox maintenance failed: %s", exc)

    async def _probe_if_due(self) -> None:
        if time.monotonic() < self._next_probe:
            return
        self._next_probe = time.monotonic() + self.options.probe_interval
        try:
            await self._probe_blocked()
        except Exception as exc:
            log.error("Checking blocked pixels failed: %s", exc)

    # blocked pixels ------------------------------------------------------------

    async def reconcile_blocks(self) -> None:
        """Release pixels parked for a token that has since been replaced."""
        for pixel_id, fingerprint in (await self.outbox.blocked_pixels()).items():
            pixel = self.pixels.get(pixel_id)
            if pixel is None:
                continue
            current = "dry-run" if self.options.dry_run else token_fingerprint(pixel.access_token)
            if current != fingerprint:
                count = await self.outbox.unblock_pixel(pixel_id)
                log.warning(
                    "Pixel %s has a new access token: releasing %d parked event(s).",
                    pixel_id,
                    count,
                )

    async def _probe_blocked(self) -> None:
        # A permission can be granted without changing the token: ask Meta now and then.
        if self.options.dry_run:
            return
        for pixel_id in await self.outbox.blocked_pixels():
            pixel = self.pixels.get(pixel_id)
            if pixel is None or not pixel.access_token:
                continue
            result = await self.graph.check_token(
                pixel_id, access_token=pixel.access_token, app_secret=pixel.app_secret
            )
            if result.outcome is Outcome.SENT:
                count = await self.outbox.unblock_pixel(pixel_id)
                log.warning(
                    "Meta accepts pixel %s's token again: releasing %d parked event(s).",
                    pixel_id,
                    count,
                )
