"""Accepted events in, stored rows (or one refusal) out: the only way events reach the store.

Every source — the proxy's PageView, rules on proxied traffic, `/collect` beacons,
webhooks, the events API — stores through one `Intake`, which owns the outbox handle, the
counting, and the one policy for a store that is full, closing or failing: nothing is
stored, the rows are counted as refused, the fault is logged, and a request gets a 503
with Retry-After (never a 500). Background stores (PageViews, rule events) take the same
path and never raise into the page.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from gateway.delivery.stitch import StitchesClosed
from gateway.delivery.store import OutboxClosed, OutboxFull, OutboxStore
from gateway.errors import json_error
from gateway.metrics import Metrics
from gateway.models import NewEvent
from gateway.pipeline.assembly import Outcome, item_outcome

log = logging.getLogger("gateway.intake")


@dataclass(frozen=True, slots=True)
class Stored:
    """The rows are in the store (or will be within one group-commit window)."""

    rows: list[NewEvent]
    outcomes: list[Outcome]

    def outcome_of(self, event_id: str) -> Outcome:
        """What became of the event `event_id` over its target pixels (see `item_outcome`)."""
        return item_outcome(
            [o for r, o in zip(self.rows, self.outcomes, strict=True) if r.event_id == event_id]
        )

    def outcomes_by_event(self) -> dict[str, Outcome]:
        """`outcome_of` for every event id of the rows, in one pass over them (asked per
        event id, a request of 100 events compared 10,000 rows)."""
        by_event: dict[str, list[Outcome]] = {}
        for row, outcome in zip(self.rows, self.outcomes, strict=True):
            by_event.setdefault(row.event_id, []).append(outcome)
        return {event_id: item_outcome(found) for event_id, found in by_event.items()}


@dataclass(frozen=True, slots=True)
class Refused:
    """Nothing was stored; the caller should retry after `retry_after` seconds."""

    title: str
    detail: str
    retry_after: int

    def response(self) -> web.Response:
        """The 503 answer to a request whose events were refused."""
        return json_error(
            503, self.title, self.detail, headers={"Retry-After": str(self.retry_after)}
        )


def _refusal(exc: BaseException) -> Refused:
    if isinstance(exc, OutboxFull):
        return Refused("buffer full", "the outbox is over max_buffer_mb; retry later", 30)
    if isinstance(exc, OutboxClosed | StitchesClosed):
        return Refused("shutting down", "the gateway is stopping; retry", 5)
    # Disk full, I/O error, a database gone: nothing was stored and the caller must know.
    return Refused(
        "outbox unavailable", "the events could not be stored; nothing was accepted, retry", 10
    )


# How long background rows (PageViews) wait to be stored together. A commit has a fixed
# cost (a transaction, the facts, the sender's claim of what it made due) of several
# hundred µs: at a few hundred pages a second each page paid it alone, ~1.8 ms of CPU per
# page where a saturated gateway pays ~0.55 ms. Nobody waits on these rows (the page has
# gone out), so gathering them costs no latency; a crash loses at most this much more.
LATER_WINDOW = 0.05


class Intake:
    """Stores accepted events with one policy for store faults; counts what happened."""

    def __init__(
        self, outbox: OutboxStore, metrics: Metrics, *, later_window: float = LATER_WINDOW
    ) -> None:
        self.outbox = outbox
        self.metrics = metrics
        self.later_window = later_window
        self.refusals = 0  # stores refused since start (any source)
        self._tasks: set[asyncio.Task[None]] = set()
        # Background rows (PageViews) waiting for the one task that stores them, with
        # what to call with each hand-over's own result.
        self._waiting: list[tuple[list[NewEvent], Callable[[Stored | Refused], None]]] = []
        self._pump: asyncio.Task[None] | None = None

    async def store(self, rows: list[NewEvent]) -> Stored | Refused:
        """Store `rows`; a refusal (counted, logged) instead of raising on a store fault.

        Each row is "new", "merged" into the pending copy of the same event (event
        assembly: a beacon completing the proxy's PageView, a webhook completing a page's
        Purchase) or "late" (that event was already sent: recorded, never sent twice).
        """
        if not rows:
            return Stored([], [])
        try:
            outcomes = await self.outbox.add(rows)
        except Exception as exc:
            return self._refused(rows, exc)
        stored = Stored(rows, list(outcomes))
        self.metrics.stored(stored.rows, stored.outcomes)
        return stored

    def _refused(self, rows: list[NewEvent], exc: Exception) -> Refused:
        self.refusals += 1
        self.metrics.refused(rows)
        refusal = _refusal(exc)
        what = f"{len(rows)} {rows[0].source} event(s)"
        if isinstance(exc, OutboxFull | OutboxClosed):
            log.error("Not storing %s: %s", what, exc)
        else:
            log.error("Storing %s failed: %r", what, exc)
        return refusal

    def fault(self, exc: Exception, what: str) -> Refused:
        """The refusal for a store fault met before storing (a stitch lookup); logged."""
        self.refusals += 1
        cause = exc.__cause__ if isinstance(exc.__cause__, Exception) else exc
        log.error("%s failed: %r", what, cause)
        return _refusal(cause)

    def later(self, work: Coroutine[Any, Any, None], name: str) -> None:
        """Run a background store (a PageView, rule events) without holding the page."""
        task = asyncio.get_running_loop().create_task(work, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def store_later(self, rows: list[NewEvent], done: Callable[[Stored | Refused], None]) -> None:
        """Store `rows` in the background; `done` gets their own `Stored` or `Refused`.

        What is handed over within `later_window`, or while a store is under way, goes in
        one store: one task and one group-commit item per commit instead of a task per
        page. Counted and logged as `store` does; a refusal counts once per hand-over.
        """
        self._waiting.append((rows, done))
        if self._pump is None:
            self._pump = asyncio.get_running_loop().create_task(
                self._store_waiting(), name="pageview"
            )
            self._tasks.add(self._pump)
            self._pump.add_done_callback(self._tasks.discard)

    async def _store_waiting(self) -> None:
        try:
            while self._waiting:
                if self.later_window > 0:
                    await asyncio.sleep(self.later_window)
                waiting, self._waiting = self._waiting, []
                result = await self.store([row for rows, _ in waiting for row in rows])
                if isinstance(result, Refused):
                    self.refusals += len(waiting) - 1
                at = 0
                for rows, done in waiting:
                    if isinstance(result, Stored):
                        part = Stored(rows, result.outcomes[at : at + len(rows)])
                        at += len(rows)
                        done(part)
                    else:
                        done(result)
        finally:
            self._pump = None

    async def drain(self) -> None:
        """Wait until every background store handed over is stored or refused."""
        while self._tasks:
            await asyncio.wait(set(self._tasks))
