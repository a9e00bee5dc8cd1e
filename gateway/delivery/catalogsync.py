"""Due catalog items in, Catalog Batch API calls out, each item's verdict recorded.

Per configured catalog: lease due items (≤ `batch_size`, Meta allows 5,000 per call), POST
them to `{catalog_id}/items_batch` as UPDATE/DELETE requests, poll
`check_batch_request_status` with the handle until Meta has processed the batch, and record
each item as synced (or deleted), or in error with Meta's message. The Graph client, its
answer classifier and the retry policy are the events sender's: a network fault, a 5xx or a
rate limit puts the items back with backoff; a refused token (code 190, permissions) parks
the catalog — the items stay pending, no attempt is spent — until the token changes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from gateway.catalogsettings import CatalogTarget
from gateway.delivery.catalogstate import Done, Work
from gateway.delivery.graph import GraphClient, Outcome, SendResult
from gateway.delivery.retry import RetryPolicy
from gateway.delivery.sending import describe_result, token_fingerprint
from gateway.delivery.store import CatalogStore
from gateway.metrics import Metrics

log = logging.getLogger("gateway.catalog")

MAX_REQUESTS = 5000  # Meta's limit per items_batch call
_FINISHED = frozenset({"finished", "error", "failed", "canceled", "cancelled"})


@dataclass(frozen=True, slots=True)
class CatalogSyncOptions:
    """The catalog sender's knobs (derived from the event sender's settings)."""

    batch_size: int = 3000  # Meta recommends fewer than 3,000 requests per call
    lease: float = 900.0
    poll_interval: float = 10.0
    status_interval: float = 2.0
    status_timeout: float = 600.0
    dry_run: bool = False

    @classmethod
    def from_settings(cls, *, poll_interval: float, dry_run: bool) -> CatalogSyncOptions:
        """Items are gathered for ten event polls (10 s by default, never above 30 s), so a
        crawl's products go out in few calls while a first sight still goes within a minute."""
        return cls(
            poll_interval=min(30.0, poll_interval * 10),
            status_interval=min(5.0, poll_interval * 2),
            dry_run=dry_run,
        )


@dataclass(frozen=True, slots=True)
class SyncReport:
    """What one sync of one catalog did."""

    site: str
    outcome: str  # idle, ok, dry-run, retry, blocked, error
    sent: int = 0
    synced: int = 0
    deleted: int = 0
    errors: int = 0
    message: str = ""


class CatalogSender:
    """Syncs every configured catalog; `start()` in the background, or `sync_site` once."""

    def __init__(
        self,
        store: CatalogStore,
        graph: GraphClient,
        targets: Sequence[CatalogTarget],
        options: CatalogSyncOptions,
        policy: RetryPolicy,
        *,
        metrics: Metrics | None = None,
    ) -> None:
        self.store = store
        self.graph = graph
        self.options = options
        self.policy = policy
        self.metrics = metrics or Metrics()
        self.targets = {t.site: t for t in targets}
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}:catalog"
        self.wake = asyncio.Event()
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def configure(self, targets: Iterable[CatalogTarget], policy: RetryPolicy) -> None:
        """Swap in reloaded catalogs and credentials (a new token lifts a park)."""
        self.targets = {t.site: t for t in targets}
        self.policy = policy
        self.wake.set()

    def start(self) -> None:
        """Run the sync loop in the background until `stop()`."""
        self._task = asyncio.create_task(self.run(), name="catalog-sender")

    async def stop(self) -> None:
        """End the loop; a batch in flight keeps its lease and is retried after it expires."""
        self._stopping.set()
        self.wake.set()
        if self._task is not None:
            done, _ = await asyncio.wait({self._task}, timeout=2.0)
            if not done:
                self._task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._task

    async def run(self) -> None:
        """Sync every catalog, then wait for the poll interval (or a wake) and again."""
        while not self._stopping.is_set():
            busy = False
            for target in list(self.targets.values()):
                try:
                    report = await self.sync_site(target)
                except Exception as exc:
                    log.error("Catalog sync of site %r failed: %s", target.site, exc)
                    continue
                busy = busy or report.outcome in ("ok", "dry-run")
            if busy:
                continue  # more may be due (a crawl's thousands): claim again at once
            self.wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.wake.wait(), self.options.poll_interval)

    async def sync_site(self, target: CatalogTarget, *, now: float | None = None) -> SyncReport:
        """One batch of the catalog's due items: send, await Meta's verdict, record it."""
        site = target.site
        store = self.store
        dry = self.options.dry_run
        fingerprint = "dry-run" if dry else token_fingerprint(target.access_token)
        parked = await store.blocked(site)
        if parked is not None:
            if parked == fingerprint:
                return SyncReport(site, "blocked")
            await store.unblock(site)
            log.warning("Catalog of site %r has a new access token: syncing again.", site)
        limit = min(self.options.batch_size, MAX_REQUESTS)
        started = time.time() if now is None else now
        work = await store.claim(
            site, self.owner, limit=limit, lease=self.options.lease, now=started
        )
        if not work:
            return SyncReport(site, "idle")
        if dry:
            return await self._record_dry(target, work)
        result = await self.graph.items_batch(
            target.catalog.catalog_id,
            [w.request() for w in work],
            access_token=target.access_token or "",
            app_secret=target.app_secret,
        )
        self.metrics.catalog_batch(result.outcome.value)
        if result.outcome is Outcome.SENT:
            return await self._await_verdicts(target, work, result)
        return await self._failed(target, work, result)

    async def _record_dry(self, target: CatalogTarget, work: Sequence[Work]) -> SyncReport:
        site = target.site
        done = [Done(w.item_id, w.content_hash, w.action) for w in work]
        now = time.time()
        await self.store.finish(
            site, self.owner, done, now=now, min_interval=target.catalog.min_interval
        )
        await self.store.note_sync(site, now=now, result="dry-run", message=f"{len(work)} item(s)")
        self.metrics.catalog_batch("dry_run")
        self.metrics.catalog_items("dry_run", len(work))
        log.info("Dry run: recorded %d catalog item(s) of site %r.", len(work), site)
        return SyncReport(site, "dry-run", sent=len(work), synced=len(work))

    async def _await_verdicts(
        self, target: CatalogTarget, work: Sequence[Work], result: SendResult
    ) -> SyncReport:
        site = target.site
        ids = [w.item_id for w in work]
        handles = [h for h in (result.body or {}).get("handles", []) if isinstance(h, str)]
        if not handles:
            return await self._retry(target, work, "Meta answered without a batch handle")
        await self.store.set_handle(site, ids, self.owner, handles[0])
        errors: dict[str, str] = {}
        for handle in handles:
            verdict = await self._poll(target, handle, work)
            if verdict is None:
                return await self._retry(target, work, f"batch {handle} was not processed in time")
            errors.update(verdict)
        done = [Done(w.item_id, w.content_hash, w.action, errors.get(w.item_id)) for w in work]
        now = time.time()
        await self.store.finish(
            site, self.owner, done, now=now, min_interval=target.catalog.min_interval
        )
        failed = sum(1 for d in done if d.error is not None)
        deleted = sum(1 for d in done if d.error is None and d.action == "DELETE")
        synced = len(done) - failed - deleted
        await self.store.note_sync(
            site,
            now=now,
            result="ok",
            message=f"{synced} synced, {deleted} deleted, {failed} error",
        )
        self.metrics.catalog_items("synced", synced)
        self.metrics.catalog_items("deleted", deleted)
        self.metrics.catalog_items("error", failed)
        log.info(
            "Catalog %s (site %r): %d item(s) synced, %d deleted, %d refused by Meta.",
            target.catalog.catalog_id,
            site,
            synced,
            deleted,
            failed,
        )
        return SyncReport(site, "ok", len(done), synced, deleted, failed)

    async def _poll(
        self, target: CatalogTarget, handle: str, work: Sequence[Work]
    ) -> dict[str, str] | None:
        """Item id -> Meta's message for the batch's refused items; None when it never ended."""
        deadline = time.monotonic() + self.options.status_timeout
        while time.monotonic() < deadline and not self._stopping.is_set():
            answer = await self.graph.batch_status(
                target.catalog.catalog_id,
                handle,
                access_token=target.access_token or "",
                app_secret=target.app_secret,
            )
            if answer.outcome is Outcome.SENT:
                entry = _status_entry(answer.body)
                if str(entry.get("status", "")).lower() in _FINISHED:
                    return item_errors(entry, work)
            elif answer.outcome in (Outcome.BLOCKED, Outcome.INVALID):
                log.error("Checking catalog batch %s failed: %s", handle, describe_result(answer))
                return None
            await asyncio.sleep(self.options.status_interval)
        return None

    async def _failed(
        self, target: CatalogTarget, work: Sequence[Work], result: SendResult
    ) -> SyncReport:
        site = target.site
        error = describe_result(result)
        if result.outcome is Outcome.BLOCKED:
            await self.store.release(site, [w.item_id for w in work], self.owner)
            await self.store.block(
                site,
                token_fingerprint=token_fingerprint(target.access_token),
                reason=error,
                now=time.time(),
            )
            log.error(
                "Meta refused the access token of catalog %s (site %r): %s. Its items wait, "
                "none is lost: replace the token and reload, and they are sent.",
                target.catalog.catalog_id,
                site,
                error,
            )
            return SyncReport(site, "blocked", message=error)
        if result.outcome in (Outcome.INVALID, Outcome.REJECTED):
            # The whole call was refused (a wrong catalog id, a malformed request): every
            # item shows Meta's message; a changed page sends it again.
            done = [Done(w.item_id, w.content_hash, w.action, error) for w in work]
            now = time.time()
            await self.store.finish(
                site, self.owner, done, now=now, min_interval=target.catalog.min_interval
            )
            await self.store.note_sync(site, now=now, result="error", message=error)
            self.metrics.catalog_items("error", len(done))
            log.error("Meta refused a catalog batch of site %r: %s", site, error)
            return SyncReport(site, "error", len(done), errors=len(done), message=error)
        return await self._retry(target, work, error, result)

    async def _retry(
        self,
        target: CatalogTarget,
        work: Sequence[Work],
        error: str,
        result: SendResult | None = None,
    ) -> SyncReport:
        site = target.site
        now = time.time()
        spent = [w for w in work if self.policy.exhausted(w.attempts + 1)]
        if spent:
            message = f"gave up after {self.policy.max_attempts} attempts: {error}"
            done = [Done(w.item_id, w.content_hash, w.action, message) for w in spent]
            await self.store.finish(
                site, self.owner, done, now=now, min_interval=target.catalog.min_interval
            )
        again = [w.item_id for w in work if w not in spent]
        if again:
            delay = self.policy.delay(
                min(w.attempts for w in work) + 1,
                throttled=result is not None and result.outcome is Outcome.THROTTLED,
                retry_after=result.retry_after if result is not None else None,
            )
            await self.store.retry(site, again, self.owner, at=now + delay, error=error)
            log.warning(
                "Catalog sync of site %r failed (%s); retrying %d item(s) in %.1f s.",
                site,
                error,
                len(again),
                delay,
            )
        return SyncReport(site, "retry", len(work), message=error)


def _status_entry(body: Mapping[str, Any] | None) -> Mapping[str, Any]:
    data = (body or {}).get("data")
    if isinstance(data, list) and data and isinstance(data[0], Mapping):
        return data[0]
    return {}


def item_errors(entry: Mapping[str, Any], work: Sequence[Work]) -> dict[str, str]:
    """Item id -> message from a `check_batch_request_status` entry's `errors` (an error
    names its item by `id`, else by `line`, its index in the request)."""
    out: dict[str, str] = {}
    errors = entry.get("errors")
    if not isinstance(errors, list):
        errors = []
    for error in errors:
        if not isinstance(error, Mapping):
            continue
        item_id = error.get("id") or error.get("retailer_id")
        line = error.get("line")
        if not item_id and isinstance(line, int) and 0 <= line < len(work):
            item_id = work[line].item_id
        if not item_id:
            continue
        message = str(error.get("message") or "refused by Meta")
        out[str(item_id)] = f"{out[str(item_id)]}; {message}" if str(item_id) in out else message
    status = str(entry.get("status", "")).lower()
    if status != "finished" and not out:
        # The whole batch failed without per-item errors: every item carries why.
        reason = f"Meta's batch status is {status!r}"
        return {w.item_id: reason for w in work}
    return out
