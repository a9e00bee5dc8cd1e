"""Leased outbox rows in, Graph API requests out, each answer recorded on its rows.

A row leaves the outbox only once Meta confirmed it (or it is dead-lettered with a
reason). Invalid events are isolated by splitting the batch; a refused token parks the
pixel (`blocked`) until the token changes, instead of burning retries or dropping rows.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import socket
import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from gateway.delivery.graph import GraphClient, Outcome, SendResult
from gateway.delivery.ratelimit import TokenBucket
from gateway.delivery.retry import RetryPolicy
from gateway.delivery.store import Claimed, OutboxStore
from gateway.metrics import Metrics
from gateway.models import META_WINDOW
from gateway.settings import PixelSettings, Settings

log = logging.getLogger("gateway.sender")

# Do not start a send for an event this close to Meta's 7-day limit: it could age out
# in flight and void its whole batch.
_EXPIRY_MARGIN = 120.0
_MAINTENANCE_EVERY = 60.0


def token_fingerprint(token: str | None) -> str:
    """A short, irreversible tag telling whether the token changed."""
    if not token:
        return ""
    return hashlib.sha256(token.encode()).hexdigest()[:16]


@dataclass(frozen=True, slots=True)
class SenderOptions:
    """The sender's share of the settings."""

    batch_size: int
    concurrency: int
    lease: float
    poll_interval: float
    retention: float
    dead_retention: float
    probe_interval: float
    dry_run: bool
    pixel_rate: float
    pixel_burst: int

    @classmethod
    def from_settings(cls, s: Settings) -> SenderOptions:
        """Pick the sender's keys out of the settings."""
        return cls(
            batch_size=s.batch_size,
            concurrency=s.send_concurrency,
            lease=s.lease,
            poll_interval=s.poll_interval,
            retention=s.retention,
            dead_retention=s.dead_retention,
            probe_interval=s.blocked_probe_interval,
            dry_run=s.dry_run,
            pixel_rate=s.pixel_rate,
            pixel_burst=s.pixel_burst,
        )


class Sender:
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
        self._buckets: dict[str, TokenBucket] = {}
        self._slots = asyncio.Semaphore(options.concurrency)
        # Batches in flight per pixel: a pixel at its share of the slots is left out of the
        # next claim, so its backlog, rate limit or slow answers never hold another's sends.
        self._busy: dict[str, int] = {}
        self._freed = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        self._stopping = asyncio.Event()
        self._next_probe = 0.0
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
        while not self._stopping.is_set():
            if time.monotonic() >= next_maintenance:
                next_maintenance = time.monotonic() + _MAINTENANCE_EVERY
                await self._maintain()
            # On its own clock: a probe interval under a minute is kept, not rounded up.
            await self._probe_if_due()
            await self._slots.acquire()
            if self._stopping.is_set():
                self._slots.release()
                break
            self.outbox.new_work.clear()
            self._freed.clear()
            skip = self._saturated()
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
        end = time.monotonic() + timeout
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
            wake_at = self.outbox.take_wake_at()
            wait = wake_at - time.time()
            if wait <= 0:
                return
            self.outbox.new_work.clear()
            end = min(end, time.monotonic() + wait)

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

    # sending -------------------------------------------------------------------

    async def _deliver(self, rows: list[Claimed], pixels: set[str]) -> None:
        open_ids = {r.id for r in rows}
        try:
            groups: dict[tuple[str, str | None], list[Claimed]] = {}
            for row in rows:
                groups.setdefault((row.pixel_id, row.test_event_code), []).append(row)
            # Side by side: one pixel's rate limit or slow answer does not hold the others'.
            await asyncio.gather(
                *(
                    self._deliver_group(pixel_id, items, open_ids)
                    for (pixel_id, _), items in groups.items()
                )
            )
        finally:
            for pixel_id in pixels:
                left = self._busy.get(pixel_id, 1) - 1
                if left > 0:
                    self._busy[pixel_id] = left
                else:
                    self._busy.pop(pixel_id, None)
            if open_ids:
                # Cancelled at shutdown (or failed): these rows were never answered.
                await self._release(open_ids)

    async def _deliver_group(self, pixel_id: str, items: list[Claimed], open_ids: set[int]) -> None:
        pixel = self.pixels.get(pixel_id)
        if pixel is None:
            await self.outbox.block_pixel(
                pixel_id,
                [r.id for r in items],
                self.owner,
                token_fingerprint="unconfigured",  # noqa: S106 - a marker, not a secret
                reason=f"pixel {pixel_id} is not configured any more; add it back to send",
                fbtrace_id=None,
            )
            open_ids.difference_update(r.id for r in items)
            log.error("Parked %d event(s) for unconfigured pixel %s.", len(items), pixel_id)
            return
        limit = time.time() - META_WINDOW + _EXPIRY_MARGIN
        expired = [r for r in items if r.event_time < limit]
        if expired:
            await self.outbox.mark_dead(
                [r.id for r in expired],
                self.owner,
                error="expired: event_time is older than Meta's 7-day window",
                fbtrace_id=None,
            )
            open_ids.difference_update(r.id for r in expired)
            log.error(
                "Dead-lettered %d event(s) for pixel %s: older than Meta's 7-day window.",
                len(expired),
                pixel_id,
            )
        fresh = [r for r in items if r.event_time >= limit]
        if fresh:
            self.metrics.profile_identifiers(sum(len(r.profile_added) for r in fresh))
            await self._send(pixel, fresh, open_ids)

    async def _send(self, pixel: PixelSettings, items: list[Claimed], open_ids: set[int]) -> None:
        ids = [r.id for r in items]
        if self.options.dry_run:
            await self.outbox.mark_sent(ids, self.owner, fbtrace_id=None, dry=True)
            open_ids.difference_update(ids)
            self.metrics.recorded_dry(len(ids))
            log.info("Dry run: recorded %d event(s) for pixel %s.", len(ids), pixel.id)
            return
        bucket = self._buckets.get(pixel.id)
        if bucket is None:
            bucket = TokenBucket(self.options.pixel_rate, self.options.pixel_burst)
            self._buckets[pixel.id] = bucket
        waits, started = bucket.waits, time.monotonic()
        await bucket.take()
        if bucket.waits != waits:
            self.metrics.rate_limited(time.monotonic() - started)
        started = time.monotonic()
        result = await self.graph.send(
            pixel.id,
            [r.event for r in items],
            access_token=pixel.access_token or "",
            test_event_code=items[0].test_event_code,
            app_secret=pixel.app_secret,
        )
        self.metrics.sent(
            result.outcome.value, len(items), time.monotonic() - started, error=result.error_label()
        )
        await self._record(pixel, items, result, open_ids)

    async def _record(
        self, pixel: PixelSettings, items: list[Claimed], result: SendResult, open_ids: set[int]
    ) -> None:
        ids = [r.id for r in items]
        outcome = result.outcome
        if outcome is Outcome.SENT:
            await self.outbox.mark_sent(ids, self.owner, fbtrace_id=result.fbtrace_id)
            open_ids.difference_update(ids)
            self.last_success = time.time()
            log.info(
                "Delivered %d event(s) to pixel %s (fbtrace_id %s).",
                len(ids),
                pixel.id,
                result.fbtrace_id,
                extra=_log_ids(items, result),
            )
            return
        self._note_error(pixel.id, result)
        error = describe_result(result)
        if outcome is Outcome.INVALID and len(items) > 1:
            # One bad event voids the whole request: split to find it, send the rest.
            half = len(items) // 2
            await self._send(pixel, items[:half], open_ids)
            await self._send(pixel, items[half:], open_ids)
            return
        if outcome in (Outcome.INVALID, Outcome.REJECTED):
            await self.outbox.mark_dead(ids, self.owner, error=error, fbtrace_id=result.fbtrace_id)
            open_ids.difference_update(ids)
            log.error(
                "Meta refused %d event(s) for pixel %s; dead-lettered: %s",
                len(ids),
                pixel.id,
                error,
                extra=_log_ids(items, result),
            )
            return
        if outcome is Outcome.BLOCKED:
            await self.outbox.block_pixel(
                pixel.id,
                ids,
                self.owner,
                token_fingerprint=token_fingerprint(pixel.access_token),
                reason=error,
                fbtrace_id=result.fbtrace_id,
            )
            open_ids.difference_update(ids)
            log.error(
                "Meta refused the access token of pixel %s (%s). Its events are parked, not "
                "lost: replace the token and restart or reload, and they are sent.",
                pixel.id,
                error,
            )
            return
        await self._retry_later(pixel.id, items, result, error, open_ids)

    async def _retry_later(
        self,
        pixel_id: str,
        items: list[Claimed],
        result: SendResult,
        error: str,
        open_ids: set[int],
    ) -> None:
        exhausted = [r.id for r in items if self.policy.exhausted(r.attempts)]
        if exhausted:
            await self.outbox.mark_dead(
                exhausted,
                self.owner,
                error=f"gave up after {self.policy.max_attempts} attempts: {error}",
                fbtrace_id=result.fbtrace_id,
            )
            open_ids.difference_update(exhausted)
        retry = [r for r in items if r.id not in set(exhausted)]
        if not retry:
            return
        attempt = min(r.attempts for r in retry)
        delay = self.policy.delay(
            attempt,
            throttled=result.outcome is Outcome.THROTTLED,
            retry_after=result.retry_after,
        )
        ids = [r.id for r in retry]
        await self.outbox.mark_retry(
            ids, self.owner, at=time.time() + delay, error=error, fbtrace_id=result.fbtrace_id
        )
        open_ids.difference_update(ids)
        log.warning(
            "Sending %d event(s) to pixel %s failed (%s); retrying in %.1f s.",
            len(ids),
            pixel_id,
            error,
            delay,
            extra=_log_ids(retry, result),
        )

    def _note_error(self, pixel_id: str, result: SendResult) -> None:
        self.last_error = {
            "pixel_id": pixel_id,
            "message": describe_result(result),
            "fbtrace_id": result.fbtrace_id,
            "at": time.time(),
        }


def _log_ids(items: list[Claimed], result: SendResult) -> dict[str, Any]:
    """Structured log fields: which events (at most 100 ids) and Meta's trace id."""
    ids = [str(r.event.get("event_id", "")) for r in items[:100]]
    return {"event_ids": ids, "fbtrace_id": result.fbtrace_id}


def describe_result(result: SendResult) -> str:
    """Meta's message, error code and HTTP status of a failed call, for logs and rows."""
    parts = [result.message or result.outcome.value]
    if result.code is not None:
        parts.append(f"code {result.code}" + (f"/{result.subcode}" if result.subcode else ""))
    if result.status is not None:
        parts.append(f"HTTP {result.status}")
    return "; ".join(parts)
