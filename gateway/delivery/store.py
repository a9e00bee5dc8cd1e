"""The store interface: what the app, the sender and the intake need of an outbox.

Two backends implement it: the SQLite file (`gateway.delivery.outbox.Outbox`, the embedded
default) and PostgreSQL shared by replicas (`gateway.delivery.postgres.outbox.PgOutbox`).
`--buffer` picks one: a file path or a `postgresql://` URL (`location`).

Exceptions callers see from any backend: `OutboxFull` (over `max_buffer_mb`), `OutboxClosed`
(shutting down); anything else from `add` is a store fault (the intake answers 503).
"""

from __future__ import annotations

import asyncio
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from gateway.delivery.audiences import AudienceState
from gateway.delivery.catalogstate import Done, PageSeen, Seen, SeenResult, Work
from gateway.delivery.catalogstate import Row as CatalogRow
from gateway.delivery.forget import Person
from gateway.delivery.insightfacts import InsightPolicy
from gateway.delivery.insightreads import ConversionRow, NameCount, TouchRow, Window
from gateway.delivery.reads import QueueSnapshot
from gateway.delivery.stitch import VisitorContext
from gateway.models import NewEvent
from gateway.pipeline.assembly import Outcome
from gateway.pipeline.audiences import Hit, Row


class OutboxFull(Exception):
    """The buffer is over `max_buffer_mb`; callers answer 503 with Retry-After."""


class OutboxClosed(Exception):
    """The outbox is shutting down and accepts nothing more."""


class KeyMismatch(Exception):
    """The encryption key does not open the clear fields already stored."""


@dataclass(frozen=True, slots=True)
class Claimed:
    """A leased row, with its clear fields opened, ready to send."""

    id: int
    pixel_id: str
    event_name: str
    event_id: str
    event_time: int
    attempts: int
    test_event_code: str | None
    event: dict[str, Any]
    # Identifiers the visitor's profile added to this event at claim time.
    profile_added: tuple[str, ...] = ()


class OutboxStore(Protocol):
    """The outbox of either backend: accepted events in, leased batches out, results kept."""

    new_work: asyncio.Event
    commits: int
    committed_rows: int
    merged: int
    late: int
    # Facts and touchpoints for reports, recorded with each commit (None: not recorded).
    insights: InsightPolicy | None

    async def close(self) -> None:
        """Flush what was accepted and close."""

    async def add(self, events: Sequence[NewEvent]) -> list[Outcome]:
        """Store events durably; per event "new", "merged" or "late"."""

    def hold_of(self, ev: NewEvent) -> float:
        """Seconds `ev` waits before its first send."""

    async def reclaim_dead_leases(self) -> int:
        """Rows leased by stopped processes of this host go back to pending."""

    async def used_bytes(self) -> int:
        """Bytes the store occupies (what `max_buffer_mb` bounds)."""

    def wake(self, at: float = 0.0) -> None:
        """Tell an idle sender that rows become due at epoch `at` (0: now)."""

    def take_wake_at(self) -> float:
        """The earliest due time announced by `wake` since the last call (inf: none)."""

    async def claim(
        self,
        owner: str,
        *,
        limit: int,
        lease: float,
        now: float | None = None,
        skip: Sequence[str] = (),
    ) -> list[Claimed]:
        """Lease up to `limit` due rows of unblocked pixels (none of `skip`) to `owner`."""

    async def next_due(self) -> float | None:
        """Epoch seconds when the earliest pending row becomes due, None when none."""

    async def mark_sent(
        self, ids: Iterable[int], owner: str, *, fbtrace_id: str | None, dry: bool = False
    ) -> None:
        """Record a confirmed delivery (or a dry-run record)."""

    async def mark_retry(
        self, ids: Iterable[int], owner: str, *, at: float, error: str, fbtrace_id: str | None
    ) -> None:
        """Put rows back as pending, due at `at`."""

    async def mark_dead(
        self, ids: Iterable[int], owner: str, *, error: str, fbtrace_id: str | None
    ) -> None:
        """Dead-letter rows with the reason."""

    async def release(self, ids: Iterable[int], owner: str) -> None:
        """Give leased rows back untouched (shutdown)."""

    async def block_pixel(
        self,
        pixel_id: str,
        ids: Iterable[int],
        owner: str,
        *,
        token_fingerprint: str,
        reason: str,
        fbtrace_id: str | None,
    ) -> None:
        """Park a pixel whose token Meta refused, with the rows of the failed batch."""

    async def blocked_pixels(self) -> dict[str, str]:
        """Blocked pixel id -> fingerprint of the token that was refused."""

    async def unblock_pixel(self, pixel_id: str) -> int:
        """Release a pixel's parked rows for sending now; returns how many."""

    async def expire_and_purge(
        self, *, retention: float, dead_retention: float, now: float | None = None
    ) -> tuple[int, int]:
        """Dead-letter rows past Meta's window; delete old sent and dead rows."""

    async def purge_sent_oldest(self, *, fraction: float) -> int:
        """Delete the oldest share of delivered rows to make room."""

    async def requeue_dead(
        self, ids: Sequence[int] | None = None, *, sites: Collection[str] | None = None
    ) -> int:
        """Queue dead letters (those of `ids`, or all; of `sites` only) for sending now."""

    async def discard_dead(
        self, ids: Sequence[int], *, sites: Collection[str] | None = None
    ) -> int:
        """Delete the dead letters of `ids` (of `sites` only)."""

    async def match_key_coverage(self, *, since: float) -> dict[str, dict[str, Any]]:
        """Match keys as received and as sent, per event name."""

    async def forget(
        self, person: Person, key: bytes, *, sites: Collection[str] | None = None
    ) -> dict[str, int]:
        """Erase a person from unsent events, profiles and stitched visits (of `sites`)."""

    async def stats(self) -> dict[str, Any]:
        """Counts per state and per event name, oldest pending age, blocked pixels."""


class StitchStore(Protocol):
    """Visitor contexts under keyed hashes, for webhooks to be stitched to their visit."""

    commits: int
    committed_rows: int

    def key_hash(self, kind: str, value: str) -> str:
        """The stored form of a key."""

    async def put(self, keys: Mapping[str, str], ctx: VisitorContext, *, ttl: float) -> None:
        """Store `ctx` under every non-empty (kind, value) of `keys` for `ttl` seconds."""

    async def get(
        self, kind: str, value: str, *, now: float | None = None
    ) -> VisitorContext | None:
        """The context stored under (kind, value)."""

    async def find(
        self, keys: Mapping[str, str], *, now: float | None = None
    ) -> VisitorContext | None:
        """The context under the first of `keys` that has one."""

    async def purge_expired(self, now: float | None = None) -> int:
        """Delete expired contexts; returns how many."""

    async def close(self) -> None:
        """Finish pending puts and close."""


class StoreReader(Protocol):
    """Health, /status and /metrics numbers, read apart from the write path."""

    limit_bytes: int

    async def close(self) -> None:
        """Release what the reader holds."""

    async def used_bytes(self) -> int:
        """Bytes the store occupies."""

    async def has_delivered(self) -> bool:
        """True when delivered rows exist."""

    async def snapshot(self, sites: Sequence[str] | None = None) -> QueueSnapshot:
        """Depth per state, oldest pending age, last delivery, blocks, newest dead letter;
        with `sites`, of those sites' events only."""

    async def site_states(self, sites: Sequence[str]) -> dict[str, dict[str, int]]:
        """Rows per state of each of `sites` (every state present, every site listed)."""


class AudienceStore(Protocol):
    """Custom Audiences: the window's events and profiles in, each audience's sync state kept
    (gateway/delivery/audiences.py, gateway/delivery/postgres/audiences.py)."""

    async def close(self) -> None:
        """Release what the store holds."""

    async def hits(
        self, site: str | None, names: Sequence[str], *, since: float, now: float
    ) -> list[Hit]:
        """The site's events named `names` since `since`, each with its visitor (the fbp
        key hash of its profile)."""

    async def profiles(
        self, visitors: Iterable[str], *, now: float
    ) -> dict[str, dict[str, list[str]]]:
        """The live profiles of `visitors`."""

    async def states(self, site: str | None = None) -> list[AudienceState]:
        """Every audience's state (of `site` only, when given)."""

    async def state(self, site: str | None, name: str) -> AudienceState:
        """One audience's state (blank when never synced)."""

    async def sent_rows(self, site: str | None, name: str) -> dict[str, Row]:
        """The rows Meta holds for the audience, by row hash."""

    async def save(self, state: AudienceState) -> None:
        """Write an audience's state."""

    async def apply(
        self,
        site: str | None,
        name: str,
        *,
        added: Mapping[str, Row] | None = None,
        removed: Iterable[str] = (),
    ) -> None:
        """Record rows Meta confirmed added and removed."""

    async def claim(self, owner: str, *, lease: float, now: float) -> bool:
        """Take or renew the sync lease; False when another process holds it."""

    async def release(self, owner: str) -> None:
        """Give the sync lease back."""


class InsightReader(Protocol):
    """What reports read: facts and touchpoints over a `Window` (see delivery/insightreads.py)."""

    async def close(self) -> None:
        """Release what the reader holds."""

    async def counts(self, w: Window) -> list[NameCount]:
        """Events per name of the range, with their value per currency."""

    async def visitors(self, w: Window, events: Sequence[str] | None = None) -> int:
        """Distinct visitors of the range (with one of `events`, when given)."""

    async def funnel(self, w: Window, steps: Sequence[str]) -> list[int]:
        """Visitors at each step, in order."""

    async def conversions(self, w: Window, events: Sequence[str]) -> list[ConversionRow]:
        """Conversion events of the range, oldest first."""

    async def touches(
        self, w: Window, converted: tuple[Window, Sequence[str]] | None = None
    ) -> list[TouchRow]:
        """Touchpoints of the range, oldest first; with `converted` (a range and event
        names), only those of visitors with such an event in that range."""

    async def idle_paths(
        self, w: Window, converted: tuple[Window, Sequence[str]], by: str
    ) -> list[tuple[tuple[str, ...], int]] | None:
        """The touchpoints of the range of visitors with no event of `converted` in its
        range, as distinct paths (their `by` keys in time order) with how many visitors
        took each; None when a key cannot be told apart in a path (read `touches`)."""

    async def daily(self, w: Window, events: Sequence[str]) -> list[tuple[int, str | None, float]]:
        """(UTC day number, currency, value) of `events`."""


class CatalogStore(Protocol):
    """Catalog item state per (site, item id) of either backend (rules in `catalogstate`).

    `site` is the `[[sites]]` name, '' without sites. Writes of one call are one transaction.
    """

    async def close(self) -> None:
        """Release what the store holds."""

    async def seen(
        self,
        site: str,
        url: str,
        items: Sequence[Seen],
        *,
        now: float,
        min_interval: float,
        complete: bool = True,
    ) -> SeenResult:
        """A 200 page at `url` showed `items` (with `complete`, the URL's other items go)."""

    async def seen_pages(
        self, site: str, pages: Sequence[PageSeen], *, now: float, min_interval: float
    ) -> list[SeenResult]:
        """`seen` for several pages in one transaction, in order; one result per page."""

    async def missed(self, site: str, url: str, *, now: float, delete_after: int) -> list[str]:
        """A 404/410 at `url`; the ids this deletes (after `delete_after` in a row)."""

    async def known_urls(self, site: str) -> set[str]:
        """URLs of the site's items that are not deleted."""

    async def claim(
        self, site: str, owner: str, *, limit: int, lease: float, now: float
    ) -> list[Work]:
        """Lease up to `limit` due pending items of `site` to `owner`."""

    async def set_handle(self, site: str, ids: Sequence[str], owner: str, handle: str) -> None:
        """Note the batch handle Meta gave the leased items."""

    async def finish(
        self, site: str, owner: str, done: Sequence[Done], *, now: float, min_interval: float
    ) -> None:
        """Record Meta's verdict per item (synced, deleted or error with its message)."""

    async def retry(
        self, site: str, ids: Sequence[str], owner: str, *, at: float, error: str
    ) -> None:
        """Give leased items back as pending, due at `at`, one attempt more."""

    async def release(self, site: str, ids: Sequence[str], owner: str) -> None:
        """Give leased items back untouched."""

    async def note_sync(self, site: str, *, now: float, result: str, message: str = "") -> None:
        """Remember a sync's outcome (`ok`, `dry-run`, `error`, ...) for status."""

    async def block(self, site: str, *, token_fingerprint: str, reason: str, now: float) -> None:
        """Park the site's catalog: Meta refused this token."""

    async def blocked(self, site: str) -> str | None:
        """The fingerprint of the refused token while parked, else None."""

    async def unblock(self, site: str) -> None:
        """Lift the park (a new token)."""

    async def request_sync(self, site: str, *, now: float) -> int:
        """Make every pending item of `site` due now; returns how many."""

    async def status(self, site: str, *, configured: bool = True) -> dict[str, Any]:
        """Items per state, last sync, parked token, erroring items with Meta's message."""

    async def rows(
        self, site: str, *, state: str | None = None, limit: int = 1000
    ) -> list[CatalogRow]:
        """The site's items (of one state), most recently seen first."""

    async def feed(self, site: str) -> list[dict[str, Any]]:
        """Every item's Meta data except deleted ones, by id."""

    async def content_ids(
        self, site: str, events: Sequence[str], *, since: float, limit: int = 20000
    ) -> list[tuple[str, list[str]]]:
        """(event name, content_ids) of the site's stored events of `events` since `since`."""
