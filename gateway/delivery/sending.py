"""One claimed batch in, Graph API requests out, each answer recorded on its rows.

A mixin of `Sender` (gateway/delivery/sender.py, the claim loop), split out for size: the
batch is grouped per pixel, sent (split in halves around an event Meta refuses), and each
answer recorded: sent, retried later, dead-lettered, or the pixel parked as blocked.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Iterable
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
    linger: float = 0.0

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
            linger=s.send_linger,
        )


class Delivery:
    """Sending one claimed batch and recording the answers (see the module docstring)."""

    outbox: OutboxStore
    graph: GraphClient
    options: SenderOptions
    policy: RetryPolicy
    metrics: Metrics
    owner: str
    pixels: dict[str, PixelSettings]
    pixel_sites: dict[str, str]
    _buckets: dict[str, TokenBucket]
    _busy: dict[str, int]
    last_success: float | None
    last_error: dict[str, str | float | None] | None

    async def _release(self, ids: Iterable[int]) -> None:
        """Give rows back unanswered (provided by `Sender`)."""
        raise NotImplementedError

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
            self.metrics.profile_identifiers(
                sum(len(r.profile_added) for r in fresh), site=self.pixel_sites.get(pixel_id)
            )
            await self._send(pixel, fresh, open_ids)

    async def _send(self, pixel: PixelSettings, items: list[Claimed], open_ids: set[int]) -> None:
        ids = [r.id for r in items]
        if self.options.dry_run:
            await self.outbox.mark_sent(ids, self.owner, fbtrace_id=None, dry=True)
            open_ids.difference_update(ids)
            self.metrics.recorded_dry(len(ids), site=self.pixel_sites.get(pixel.id))
            log.info("Dry run: recorded %d event(s) for pixel %s.", len(ids), pixel.id)
            return
        bucket = self._buckets.get(pixel.id)
        if bucket is None:
            bucket = TokenBucket(self.options.pixel_rate, self.options.pixel_burst)
            self._buckets[pixel.id] = bucket
        waits, started = bucket.waits, time.monotonic()
        await bucket.take()
        if bucket.waits != waits:
            self.metrics.rate_limited(
                time.monotonic() - started, site=self.pixel_sites.get(pixel.id)
            )
        started = time.monotonic()
        result = await self.graph.send(
            pixel.id,
            [r.event for r in items],
            access_token=pixel.access_token or "",
            test_event_code=items[0].test_event_code,
            app_secret=pixel.app_secret,
        )
        self.metrics.sent(
            result.outcome.value,
            len(items),
            time.monotonic() - started,
            error=result.error_label(),
            site=self.pixel_sites.get(pixel.id),
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
    parts = [result.message or result.outcome.value]
    if result.code is not None:
        parts.append(f"code {result.code}" + (f"/{result.subcode}" if result.subcode else ""))
    if result.status is not None:
        parts.append(f"HTTP {result.status}")
    return "; ".join(parts)
