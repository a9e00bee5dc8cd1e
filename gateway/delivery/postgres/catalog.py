"""Catalog item state on PostgreSQL, shared by replicas (the SQLite store's twin).

Same contract and the same rules (`gateway.delivery.catalogstate`) as
`gateway.delivery.catalog.SqliteCatalog`: a call reads the rows it touches `FOR UPDATE`,
the rules decide, and the rows are written back in the same transaction. Claims take due
rows `FOR UPDATE SKIP LOCKED` with a lease, so two replicas never send the same item.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from gateway.delivery.catalogstate import (
    COLUMNS,
    MAX_ERRORS,
    Done,
    PageSeen,
    Row,
    SeenOnePage,
    SeenResult,
    Work,
    content_ids_of,
    plan_done,
    plan_missed,
    plan_pages,
    status_of,
)
from gateway.delivery.postgres.payloadjson import PAYLOAD_JSONB
from gateway.delivery.postgres.pool import Database

if TYPE_CHECKING:
    from gateway.delivery.postgres.pool import Conn

_COLS = ", ".join(COLUMNS)
_UPSERT = (
    f"INSERT INTO catalog_items ({_COLS}) VALUES "
    f"({', '.join(f'${n}' for n in range(1, len(COLUMNS) + 1))}) "
    "ON CONFLICT (site, item_id) DO UPDATE SET "
    + ", ".join(f"{c}=excluded.{c}" for c in COLUMNS[2:])
)
_NOTE = (
    "INSERT INTO catalog_syncs (site, at, result, message) VALUES ($1, $2, $3, $4) "
    "ON CONFLICT (site) DO UPDATE SET at=COALESCE(excluded.at, catalog_syncs.at), "
    "result=excluded.result, message=excluded.message"
)


async def _by_ids(conn: Conn, site: str, ids: Sequence[str]) -> dict[str, Row]:
    found = await conn.fetch(
        f"SELECT {_COLS} FROM catalog_items WHERE site=$1 AND item_id = ANY($2::text[]) "
        "ORDER BY item_id FOR UPDATE",
        site,
        list(ids),
    )
    return {r["item_id"]: Row.of(tuple(r)) for r in found}


async def _at_url(conn: Conn, site: str, url: str) -> list[Row]:
    found = await conn.fetch(
        f"SELECT {_COLS} FROM catalog_items WHERE site=$1 AND url=$2 ORDER BY item_id FOR UPDATE",
        site,
        url,
    )
    return [Row.of(tuple(r)) for r in found]


async def _write(conn: Conn, rows: Sequence[Row]) -> None:
    if rows:
        await conn.executemany(_UPSERT, [r.values() for r in rows])


class PgCatalog(SeenOnePage):
    """The catalog store on the store's PostgreSQL database (the outbox's pool)."""

    def __init__(self, db: Database) -> None:
        self.db = db

    async def close(self) -> None:
        """Nothing of its own: the pool is the outbox's."""

    async def seen_pages(
        self, site: str, pages: Sequence[PageSeen], *, now: float, min_interval: float
    ) -> list[SeenResult]:
        """`seen` for several pages in one transaction (one read of their rows, one write)."""
        ids = sorted({i.item_id for p in pages for i in p.items})
        urls = sorted({p.url for p in pages if p.complete})

        async def work(conn: Conn) -> list[SeenResult]:
            found = await conn.fetch(
                f"SELECT {_COLS} FROM catalog_items WHERE site=$1 "
                "AND (item_id = ANY($2::text[]) OR url = ANY($3::text[])) "
                "ORDER BY item_id FOR UPDATE",
                site,
                ids,
                urls,
            )
            rows = {r["item_id"]: Row.of(tuple(r)) for r in found}
            writes, results = plan_pages(site, pages, rows, now=now, min_interval=min_interval)
            await _write(conn, writes)
            return results

        return await self.db.run(work)

    async def missed(self, site: str, url: str, *, now: float, delete_after: int) -> list[str]:
        """A 404/410 at `url`; the ids this deletes (after `delete_after` in a row)."""

        async def work(conn: Conn) -> list[str]:
            writes, deleted = plan_missed(
                await _at_url(conn, site, url), now=now, delete_after=delete_after
            )
            await _write(conn, writes)
            return deleted

        return await self.db.run(work)

    async def known_urls(self, site: str) -> set[str]:
        """URLs of the site's items that are not deleted."""

        async def read(conn: Conn) -> set[str]:
            found = await conn.fetch(
                "SELECT DISTINCT url FROM catalog_items WHERE site=$1 AND state != 'deleted'", site
            )
            return {str(r[0]) for r in found}

        return await self.db.run(read, transaction=False)

    async def claim(
        self, site: str, owner: str, *, limit: int, lease: float, now: float
    ) -> list[Work]:
        """Lease up to `limit` due pending items of `site` to `owner` (SKIP LOCKED)."""

        async def work(conn: Conn) -> list[Work]:
            found = await conn.fetch(
                "WITH due AS MATERIALIZED (SELECT item_id FROM catalog_items WHERE site=$1 "
                "AND state='pending' AND due_at<=$3 "
                "AND (lease_expires IS NULL OR lease_expires<$3) "
                "ORDER BY due_at LIMIT $4 FOR UPDATE SKIP LOCKED) "
                "UPDATE catalog_items c SET lease_owner=$2, lease_expires=$3 + $5 FROM due "
                "WHERE c.site=$1 AND c.item_id=due.item_id "
                "RETURNING c.item_id, c.action, c.data, c.content_hash, c.attempts",
                site,
                owner,
                now,
                limit,
                lease,
            )
            return [
                Work(str(r[0]), str(r[1]), json.loads(r[2]), str(r[3]), int(r[4])) for r in found
            ]

        return await self.db.run(work)

    async def set_handle(self, site: str, ids: Sequence[str], owner: str, handle: str) -> None:
        """Note the batch handle Meta gave the leased items."""

        async def work(conn: Conn) -> None:
            await conn.execute(
                "UPDATE catalog_items SET handle=$1 WHERE site=$2 AND item_id = ANY($3::text[]) "
                "AND lease_owner=$4",
                handle,
                site,
                list(ids),
                owner,
            )

        await self.db.run(work)

    async def finish(
        self, site: str, owner: str, done: Sequence[Done], *, now: float, min_interval: float
    ) -> None:
        """Record Meta's verdict per item (synced, deleted or error with its message)."""

        async def work(conn: Conn) -> None:
            rows = await _by_ids(conn, site, [d.item_id for d in done])
            await _write(conn, plan_done(rows, done, owner, now=now, min_interval=min_interval))

        await self.db.run(work)

    async def retry(
        self, site: str, ids: Sequence[str], owner: str, *, at: float, error: str
    ) -> None:
        """Give leased items back as pending, due at `at`, one attempt more."""

        async def work(conn: Conn) -> None:
            await conn.execute(
                "UPDATE catalog_items SET lease_owner=NULL, lease_expires=NULL, handle=NULL, "
                "due_at=$1, attempts=attempts+1 WHERE site=$2 AND item_id = ANY($3::text[]) "
                "AND lease_owner=$4",
                at,
                site,
                list(ids),
                owner,
            )
            await conn.execute(_NOTE, site, None, "retry", error)

        await self.db.run(work)

    async def release(self, site: str, ids: Sequence[str], owner: str) -> None:
        """Give leased items back untouched."""

        async def work(conn: Conn) -> None:
            await conn.execute(
                "UPDATE catalog_items SET lease_owner=NULL, lease_expires=NULL, handle=NULL "
                "WHERE site=$1 AND item_id = ANY($2::text[]) AND lease_owner=$3",
                site,
                list(ids),
                owner,
            )

        await self.db.run(work)

    async def note_sync(self, site: str, *, now: float, result: str, message: str = "") -> None:
        """Remember a sync's outcome (`ok`, `dry-run`, `error`, ...) for status."""

        async def work(conn: Conn) -> None:
            await conn.execute(_NOTE, site, now, result, message)

        await self.db.run(work)

    async def block(self, site: str, *, token_fingerprint: str, reason: str, now: float) -> None:
        """Park the site's catalog: Meta refused this token."""

        async def work(conn: Conn) -> None:
            await conn.execute(_NOTE, site, None, "blocked", reason)
            await conn.execute(
                "UPDATE catalog_syncs SET blocked_token=$1, blocked_reason=$2, blocked_at=$3 "
                "WHERE site=$4",
                token_fingerprint,
                reason,
                now,
                site,
            )

        await self.db.run(work)

    async def blocked(self, site: str) -> str | None:
        """The fingerprint of the refused token while parked, else None."""
        found = await self.db.fetchval(
            "SELECT blocked_token FROM catalog_syncs WHERE site=$1", site
        )
        return None if found is None else str(found)

    async def unblock(self, site: str) -> None:
        """Lift the park (a new token)."""

        async def work(conn: Conn) -> None:
            await conn.execute(
                "UPDATE catalog_syncs SET blocked_token=NULL, blocked_reason=NULL, "
                "blocked_at=NULL WHERE site=$1",
                site,
            )

        await self.db.run(work)

    async def request_sync(self, site: str, *, now: float) -> int:
        """Make every pending item of `site` due now; returns how many."""

        async def work(conn: Conn) -> int:
            await conn.execute(
                "UPDATE catalog_items SET due_at=$1 WHERE site=$2 AND state='pending' "
                "AND due_at>$1",
                now,
                site,
            )
            count = await conn.fetchval(
                "SELECT COUNT(*) FROM catalog_items WHERE site=$1 AND state='pending'", site
            )
            return int(count or 0)

        return await self.db.run(work)

    async def status(self, site: str, *, configured: bool = True) -> dict[str, Any]:
        """Items per state, last sync, parked token, erroring items with Meta's message."""

        async def read(conn: Conn) -> tuple[dict[str, int], Any]:
            found = await conn.fetch(
                "SELECT state, COUNT(*) FROM catalog_items WHERE site=$1 GROUP BY state", site
            )
            sync = await conn.fetchrow(
                "SELECT at, result, message, blocked_reason FROM catalog_syncs WHERE site=$1",
                site,
            )
            return {str(r[0]): int(r[1]) for r in found}, sync

        counts, found = await self.db.run(read, transaction=False)
        sync = None
        if found is not None:
            sync = {"at": found[0], "result": found[1], "message": found[2], "blocked": found[3]}
        errors = await self.rows(site, state="error", limit=MAX_ERRORS)
        return status_of(counts, errors, sync, configured=configured)

    async def rows(self, site: str, *, state: str | None = None, limit: int = 1000) -> list[Row]:
        """The site's items (of one state), most recently seen first."""
        order = "error_at DESC" if state == "error" else "last_seen DESC"

        async def read(conn: Conn) -> list[Row]:
            found = await conn.fetch(
                f"SELECT {_COLS} FROM catalog_items WHERE site=$1 "
                "AND ($2::text IS NULL OR state=$2) "
                f"ORDER BY {order}, item_id LIMIT $3",
                site,
                state,
                limit,
            )
            return [Row.of(tuple(r)) for r in found]

        return await self.db.run(read, transaction=False)

    async def feed(self, site: str) -> list[dict[str, Any]]:
        """Every item's Meta data except deleted ones (and those being deleted), by id."""

        async def read(conn: Conn) -> list[dict[str, Any]]:
            found = await conn.fetch(
                "SELECT data FROM catalog_items WHERE site=$1 AND state!='deleted' "
                "AND NOT (state='pending' AND action='DELETE') ORDER BY item_id",
                site,
            )
            return [json.loads(r[0]) for r in found]

        return await self.db.run(read, transaction=False)

    async def content_ids(
        self, site: str, events: Sequence[str], *, since: float, limit: int = 20000
    ) -> list[tuple[str, list[str]]]:
        """(event name, content_ids) of the site's stored events of `events` since `since`."""

        async def read(conn: Conn) -> list[tuple[str, list[str]]]:
            found = await conn.fetch(
                f"SELECT event_name, {PAYLOAD_JSONB}->'custom_data'->'content_ids' FROM event_data "
                "WHERE site IS NOT DISTINCT FROM $1 AND event_name = ANY($2::text[]) "
                "AND created_at>=$3 ORDER BY created_at DESC LIMIT $4",
                site or None,
                list(events),
                since,
                limit,
            )
            return [(str(r[0]), content_ids_of(r[1])) for r in found]

        return await self.db.run(read, transaction=False)
