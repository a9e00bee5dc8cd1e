"""Catalog item state and its transitions, shared by both store backends (no SQL here).

A row per (site, item id) says what the gateway last saw on the product's page
(`content_hash`, `data`), what Meta holds (`synced_hash`), and what is still to send
(`state` pending with `action` UPDATE or DELETE, not before `due_at`). The backends read
the affected rows in one transaction, let these functions decide, and write the rows back;
the rules live here once, so SQLite and PostgreSQL cannot drift apart.

States: `pending` (to send), `synced` (Meta has it), `error` (Meta refused it; its message
in `error`), `deleted` (Meta was told to delete it, or it never reached Meta).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

STATES = ("pending", "synced", "error", "deleted")
UPDATE = "UPDATE"
DELETE = "DELETE"
# Rows listed in a status's `errors` (the dashboard shows them all; the newest first).
MAX_ERRORS = 50

COLUMNS = (
    "site",
    "item_id",
    "url",
    "content_hash",
    "data",
    "state",
    "action",
    "synced_hash",
    "first_seen",
    "last_seen",
    "due_at",
    "last_sent_at",
    "error",
    "error_at",
    "misses",
    "handle",
    "lease_owner",
    "lease_expires",
    "attempts",
)


@dataclass(frozen=True, slots=True)
class Seen:
    """One product as read from a page: its id, its Meta `data` and the hash of that."""

    item_id: str
    content_hash: str
    data: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class Row:
    """One stored catalog item (all columns; `data` as JSON text)."""

    site: str
    item_id: str
    url: str
    content_hash: str
    data: str
    state: str
    action: str
    synced_hash: str | None
    first_seen: float
    last_seen: float
    due_at: float
    last_sent_at: float | None
    error: str | None
    error_at: float | None
    misses: int
    handle: str | None
    lease_owner: str | None
    lease_expires: float | None
    attempts: int

    @classmethod
    def of(cls, values: Sequence[Any]) -> Row:
        """A row from its column values in `COLUMNS` order."""
        return cls(*values)

    def values(self) -> tuple[Any, ...]:
        """Column values in `COLUMNS` order."""
        # Not dataclasses.astuple: it deep-copies every field (a tenth of a millisecond a
        # row, on the path of every page that shows a new product).
        return tuple(getattr(self, name) for name in COLUMNS)

    def item(self) -> dict[str, Any]:
        """The item's Meta data as a dict."""
        data = json.loads(self.data)
        return data if isinstance(data, dict) else {}


@dataclass(frozen=True, slots=True)
class Work:
    """A leased item to send: UPDATE with its data, or DELETE by id."""

    item_id: str
    action: str
    data: dict[str, Any]
    content_hash: str
    attempts: int

    def request(self) -> dict[str, Any]:
        """This item's entry in an items_batch `requests` list."""
        if self.action == DELETE:
            return {"method": DELETE, "data": {"id": self.item_id}}
        return {"method": UPDATE, "data": self.data}


@dataclass(frozen=True, slots=True)
class Done:
    """Meta's verdict on one sent item: None for accepted, else its message."""

    item_id: str
    content_hash: str
    action: str
    error: str | None = None


@dataclass(frozen=True, slots=True)
class SeenResult:
    """What a page changed: ids new to the catalog, changed, unchanged, and removed from it."""

    new: tuple[str, ...] = ()
    changed: tuple[str, ...] = ()
    unchanged: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class PageSeen:
    """One 200 page's products (`complete`: the page was read whole, so a product of the
    URL missing from it is gone)."""

    url: str
    items: Sequence[Seen]
    complete: bool = True


class SeenOnePage:
    """`seen` of one page as `seen_pages` of a list of one: shared by both backends."""

    __slots__ = ()

    async def seen_pages(
        self, site: str, pages: Sequence[PageSeen], *, now: float, min_interval: float
    ) -> list[SeenResult]:
        """`seen` for several pages in one transaction, in order; one result per page."""
        raise NotImplementedError

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
        page = PageSeen(url, items, complete)
        return (await self.seen_pages(site, [page], now=now, min_interval=min_interval))[0]


def plan_pages(
    site: str,
    pages: Sequence[PageSeen],
    rows: Mapping[str, Row],
    *,
    now: float,
    min_interval: float,
) -> tuple[list[Row], list[SeenResult]]:
    """`plan_seen` for several pages in order (`rows`: every row of their ids and URLs), each
    page seeing what the pages before it wrote; the rows to write, one result per page."""
    current = dict(rows)
    results: list[SeenResult] = []
    for page in pages:
        existing = {i.item_id: current[i.item_id] for i in page.items if i.item_id in current}
        at_url = [r for r in current.values() if r.url == page.url] if page.complete else []
        writes, result = plan_seen(
            site, page.url, page.items, existing, at_url,
            now=now, min_interval=min_interval, complete=page.complete,
        )  # fmt: skip
        current.update((w.item_id, w) for w in writes)
        results.append(result)
    changed = [current[k] for k in current if k not in rows or current[k] != rows[k]]
    return changed, results


def _due(row: Row | None, now: float, min_interval: float) -> float:
    # First sight goes out at the next sync; a change waits out the item's interval.
    if row is None or row.last_sent_at is None:
        return now
    return max(now, row.last_sent_at + min_interval)


def plan_seen(
    site: str,
    url: str,
    seen: Sequence[Seen],
    existing: Mapping[str, Row],
    at_url: Iterable[Row],
    *,
    now: float,
    min_interval: float,
    complete: bool,
) -> tuple[list[Row], SeenResult]:
    """The rows to write for a 200 page at `url` showing `seen` (`existing`: their rows by id,
    `at_url`: rows last seen at this URL). With `complete`, products of the URL missing from
    the page are deleted."""
    writes: list[Row] = []
    new: list[str] = []
    changed: list[str] = []
    unchanged: list[str] = []
    ids = set()
    for item in seen:
        if item.item_id in ids:
            continue  # a page listing one product twice (JSON-LD and microdata)
        ids.add(item.item_id)
        row = existing.get(item.item_id)
        data = json.dumps(dict(item.data), separators=(",", ":"), sort_keys=True)
        if row is None:
            new.append(item.item_id)
            writes.append(
                Row(
                    site=site,
                    item_id=item.item_id,
                    url=url,
                    content_hash=item.content_hash,
                    data=data,
                    state="pending",
                    action=UPDATE,
                    synced_hash=None,
                    first_seen=now,
                    last_seen=now,
                    due_at=now,
                    last_sent_at=None,
                    error=None,
                    error_at=None,
                    misses=0,
                    handle=None,
                    lease_owner=None,
                    lease_expires=None,
                    attempts=0,
                )
            )
            continue
        base = dataclasses.replace(row, url=url, last_seen=now, misses=0)
        live = row.state != "deleted" and not (row.state == "pending" and row.action == DELETE)
        if row.content_hash == item.content_hash and live:
            unchanged.append(item.item_id)
            writes.append(base)
            continue
        changed.append(item.item_id)
        if item.content_hash == row.synced_hash and row.action == UPDATE and live:
            # Back to what Meta already holds (a change undone before it was sent).
            writes.append(
                dataclasses.replace(
                    base, content_hash=item.content_hash, data=data, state="synced", error=None
                )
            )
            continue
        writes.append(
            dataclasses.replace(
                base,
                content_hash=item.content_hash,
                data=data,
                state="pending",
                action=UPDATE,
                due_at=_due(row, now, min_interval),
                attempts=0,
            )
        )
    removed: list[str] = []
    if complete:
        for row in at_url:
            if row.item_id in ids:
                continue
            deletion = _deletion(row, now)
            if deletion is not None:
                removed.append(row.item_id)
                writes.append(deletion)
    return writes, SeenResult(tuple(new), tuple(changed), tuple(unchanged), tuple(removed))


def _deletion(row: Row, now: float) -> Row | None:
    """The row set to be deleted from Meta (None: nothing to do)."""
    if row.state == "deleted" or (row.state == "pending" and row.action == DELETE):
        return None
    if row.synced_hash is None and row.state != "error":
        # Never reached Meta: nothing to delete there.
        return dataclasses.replace(row, state="deleted", action=DELETE, misses=0)
    return dataclasses.replace(
        row, state="pending", action=DELETE, due_at=now, misses=0, attempts=0
    )


def plan_missed(
    rows: Iterable[Row], *, now: float, delete_after: int
) -> tuple[list[Row], list[str]]:
    """A 404/410 at the rows' URL: one more miss each; deleted at `delete_after` in a row."""
    writes: list[Row] = []
    deleted: list[str] = []
    for row in rows:
        if row.state == "deleted" or (row.state == "pending" and row.action == DELETE):
            continue
        misses = row.misses + 1
        if misses >= delete_after:
            deletion = _deletion(row, now)
            if deletion is not None:
                writes.append(deletion)
                deleted.append(row.item_id)
            continue
        writes.append(dataclasses.replace(row, misses=misses))
    return writes, deleted


def plan_done(
    rows: Mapping[str, Row],
    done: Sequence[Done],
    owner: str,
    *,
    now: float,
    min_interval: float,
) -> list[Row]:
    """Record Meta's verdicts on rows leased to `owner` (a row changed meanwhile stays due)."""
    writes: list[Row] = []
    for verdict in done:
        row = rows.get(verdict.item_id)
        if row is None or row.lease_owner != owner:
            continue  # the lease expired and another worker took it: its result wins
        freed = dataclasses.replace(row, lease_owner=None, lease_expires=None, handle=None)
        moved = row.content_hash != verdict.content_hash or row.action != verdict.action
        if verdict.error is not None:
            writes.append(
                dataclasses.replace(
                    freed,
                    state="pending" if moved else "error",
                    error=verdict.error,
                    error_at=now,
                    last_sent_at=now,
                    due_at=now + min_interval,
                )
            )
            continue
        sent = dataclasses.replace(
            freed,
            synced_hash=verdict.content_hash if verdict.action == UPDATE else None,
            last_sent_at=now,
            error=None,
            error_at=None,
            attempts=0,
        )
        if moved:
            writes.append(dataclasses.replace(sent, state="pending", due_at=now + min_interval))
        else:
            state = "deleted" if verdict.action == DELETE else "synced"
            writes.append(dataclasses.replace(sent, state=state))
    return writes


def status_of(
    counts: Mapping[str, int],
    errors: Sequence[Row],
    sync: Mapping[str, Any] | None,
    *,
    configured: bool,
) -> dict[str, Any]:
    """The catalog status JSON (`catalog status --json`, `{prefix}/catalog`)."""
    return {
        "configured": configured,
        "items": {state: int(counts.get(state, 0)) for state in STATES},
        "last_sync": (sync or {}).get("at"),
        "last_result": (sync or {}).get("result"),
        "blocked": (sync or {}).get("blocked"),
        "errors": [
            {"id": r.item_id, "url": r.url, "message": r.error, "at": r.error_at} for r in errors
        ],
    }


def content_ids_of(raw: Any) -> list[str]:
    """An event's `content_ids` as stored (JSON text, a list, or one bare id) as strings."""
    if raw is None:
        return []
    try:
        value = json.loads(raw) if isinstance(raw, str) else raw
    except ValueError:
        return [str(raw)]
    if isinstance(value, list):
        return [str(v) for v in value if v is not None]
    return [str(value)]
