"""Catalog item state on the SQLite buffer file: pages' products in, items to sync out.

The rules (what a page, a 404 or Meta's verdict does to an item) are `catalogstate`'s; this
module reads the rows a call touches and writes back what those rules decided, in one
`BEGIN IMMEDIATE` transaction on a connection of its own (the outbox's writer shares the
file, so each transaction is one page's or one batch's rows, kept short).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import aiosqlite

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
from gateway.delivery.schema import connect, write_transaction

_COLS = ", ".join(COLUMNS)
_UPSERT = (
    f"INSERT INTO catalog_items ({_COLS}) VALUES ({', '.join('?' * len(COLUMNS))}) "
    "ON CONFLICT (site, item_id) DO UPDATE SET "
    + ", ".join(f"{c}=excluded.{c}" for c in COLUMNS[2:])
)
_CHUNK = 500  # bound parameters per IN (...) list, below SQLite's limit


class SqliteCatalog(SeenOnePage):
    """The catalog store on the buffer file. Create with `await SqliteCatalog.open(path)`."""

    def __init__(self, conn: aiosqlite.Connection, path: Path) -> None:
        self.path = path
        self._conn = conn
        self._lock = asyncio.Lock()

    @classmethod
    async def open(cls, path: Path, *, create: bool = True) -> SqliteCatalog:
        """Open (and migrate) the buffer file on a connection of its own."""
        # NORMAL: a catalog row lost to a power cut is read again from the next page view.
        return cls(await connect(path, durable=False, create=create), path)

    async def close(self) -> None:
        """Close the connection."""
        await self._conn.close()

    # reading rows ----------------------------------------------------------------------

    async def _read(self, sql: str, args: Sequence[Any]) -> list[Any]:
        """All rows of a SELECT outside a write: under the connection's lock, so that no
        statement of ours is open while another coroutine begins a write on it (its stale
        read snapshot would make BEGIN IMMEDIATE fail with "database is locked")."""
        async with self._lock, self._conn.execute(sql, tuple(args)) as cur:
            return list(await cur.fetchall())

    async def _by_ids(self, site: str, ids: Sequence[str]) -> dict[str, Row]:
        out: dict[str, Row] = {}
        for start in range(0, len(ids), _CHUNK):
            part = list(ids[start : start + _CHUNK])
            marks = ", ".join("?" * len(part))
            async with self._conn.execute(
                f"SELECT {_COLS} FROM catalog_items WHERE site=? AND item_id IN ({marks})",
                (site, *part),
            ) as cur:
                for values in await cur.fetchall():
                    row = Row.of(tuple(values))
                    out[row.item_id] = row
        return out

    async def _at_url(self, site: str, url: str) -> list[Row]:
        async with self._conn.execute(
            f"SELECT {_COLS} FROM catalog_items WHERE site=? AND url=?", (site, url)
        ) as cur:
            return [Row.of(tuple(v)) for v in await cur.fetchall()]

    async def _write(self, rows: Sequence[Row]) -> None:
        if rows:
            await self._conn.executemany(_UPSERT, [r.values() for r in rows])

    # what pages show ---------------------------------------------------------------------

    async def seen_pages(
        self, site: str, pages: Sequence[PageSeen], *, now: float, min_interval: float
    ) -> list[SeenResult]:
        """`seen` for several pages in one transaction (one read of their rows, one write)."""
        ids = sorted({i.item_id for p in pages for i in p.items})
        urls = sorted({p.url for p in pages if p.complete})
        async with write_transaction(self._conn, self._lock):
            rows = await self._by_ids(site, ids)
            for start in range(0, len(urls), _CHUNK):
                part = urls[start : start + _CHUNK]
                async with self._conn.execute(
                    f"SELECT {_COLS} FROM catalog_items WHERE site=? "
                    f"AND url IN ({', '.join('?' * len(part))})",
                    (site, *part),
                ) as cur:
                    for values in await cur.fetchall():
                        row = Row.of(tuple(values))
                        rows[row.item_id] = row
            writes, results = plan_pages(site, pages, rows, now=now, min_interval=min_interval)
            await self._write(writes)
        return results

    async def missed(self, site: str, url: str, *, now: float, delete_after: int) -> list[str]:
        """A 404/410 at `url`; the ids this deletes (after `delete_after` in a row)."""
        async with write_transaction(self._conn, self._lock):
            writes, deleted = plan_missed(
                await self._at_url(site, url), now=now, delete_after=delete_after
            )
            await self._write(writes)
        return deleted

    async def known_urls(self, site: str) -> set[str]:
        """URLs of the site's items that are not deleted."""
        found = await self._read(
            "SELECT DISTINCT url FROM catalog_items WHERE site=? AND state != 'deleted'", (site,)
        )
        return {str(r[0]) for r in found}

    # syncing ------------------------------------------------------------------------------

    async def claim(
        self, site: str, owner: str, *, limit: int, lease: float, now: float
    ) -> list[Work]:
        """Lease up to `limit` due pending items of `site` to `owner`."""
        async with write_transaction(self._conn, self._lock):
            async with self._conn.execute(
                "SELECT item_id, action, data, content_hash, attempts FROM catalog_items "
                "WHERE site=? AND state='pending' AND due_at<=? "
                "AND (lease_expires IS NULL OR lease_expires<?) ORDER BY due_at LIMIT ?",
                (site, now, now, limit),
            ) as cur:
                found = await cur.fetchall()
            await self._conn.executemany(
                "UPDATE catalog_items SET lease_owner=?, lease_expires=? "
                "WHERE site=? AND item_id=?",
                [(owner, now + lease, site, r[0]) for r in found],
            )
        return [Work(str(r[0]), str(r[1]), json.loads(r[2]), str(r[3]), int(r[4])) for r in found]

    async def set_handle(self, site: str, ids: Sequence[str], owner: str, handle: str) -> None:
        """Note the batch handle Meta gave the leased items."""
        async with write_transaction(self._conn, self._lock):
            await self._conn.executemany(
                "UPDATE catalog_items SET handle=? WHERE site=? AND item_id=? AND lease_owner=?",
                [(handle, site, i, owner) for i in ids],
            )

    async def finish(
        self, site: str, owner: str, done: Sequence[Done], *, now: float, min_interval: float
    ) -> None:
        """Record Meta's verdict per item (synced, deleted or error with its message)."""
        async with write_transaction(self._conn, self._lock):
            rows = await self._by_ids(site, [d.item_id for d in done])
            await self._write(plan_done(rows, done, owner, now=now, min_interval=min_interval))

    async def retry(
        self, site: str, ids: Sequence[str], owner: str, *, at: float, error: str
    ) -> None:
        """Give leased items back as pending, due at `at`, one attempt more."""
        async with write_transaction(self._conn, self._lock):
            await self._conn.executemany(
                "UPDATE catalog_items SET lease_owner=NULL, lease_expires=NULL, handle=NULL, "
                "due_at=?, attempts=attempts+1 WHERE site=? AND item_id=? AND lease_owner=?",
                [(at, site, i, owner) for i in ids],
            )
            await self._note(site, at=None, result="retry", message=error)

    async def release(self, site: str, ids: Sequence[str], owner: str) -> None:
        """Give leased items back untouched."""
        async with write_transaction(self._conn, self._lock):
            await self._conn.executemany(
                "UPDATE catalog_items SET lease_owner=NULL, lease_expires=NULL, handle=NULL "
                "WHERE site=? AND item_id=? AND lease_owner=?",
                [(site, i, owner) for i in ids],
            )

    async def _note(self, site: str, *, at: float | None, result: str, message: str) -> None:
        await self._conn.execute(
            "INSERT INTO catalog_syncs (site, at, result, message) VALUES (?, ?, ?, ?) "
            "ON CONFLICT (site) DO UPDATE SET at=COALESCE(excluded.at, catalog_syncs.at), "
            "result=excluded.result, message=excluded.message",
            (site, at, result, message),
        )

    async def note_sync(self, site: str, *, now: float, result: str, message: str = "") -> None:
        """Remember a sync's outcome (`ok`, `dry-run`, `error`, ...) for status."""
        async with write_transaction(self._conn, self._lock):
            await self._note(site, at=now, result=result, message=message)

    async def block(self, site: str, *, token_fingerprint: str, reason: str, now: float) -> None:
        """Park the site's catalog: Meta refused this token."""
        async with write_transaction(self._conn, self._lock):
            await self._note(site, at=None, result="blocked", message=reason)
            await self._conn.execute(
                "UPDATE catalog_syncs SET blocked_token=?, blocked_reason=?, blocked_at=? "
                "WHERE site=?",
                (token_fingerprint, reason, now, site),
            )

    async def blocked(self, site: str) -> str | None:
        """The fingerprint of the refused token while parked, else None."""
        found = await self._read("SELECT blocked_token FROM catalog_syncs WHERE site=?", (site,))
        return None if not found or found[0][0] is None else str(found[0][0])

    async def unblock(self, site: str) -> None:
        """Lift the park (a new token)."""
        async with write_transaction(self._conn, self._lock):
            await self._conn.execute(
                "UPDATE catalog_syncs SET blocked_token=NULL, blocked_reason=NULL, "
                "blocked_at=NULL WHERE site=?",
                (site,),
            )

    async def request_sync(self, site: str, *, now: float) -> int:
        """Make every pending item of `site` due now; returns how many."""
        async with write_transaction(self._conn, self._lock):
            cur = await self._conn.execute(
                "UPDATE catalog_items SET due_at=? WHERE site=? AND state='pending' AND due_at>?",
                (now, site, now),
            )
            changed = cur.rowcount
        found = await self._read(
            "SELECT COUNT(*) FROM catalog_items WHERE site=? AND state='pending'", (site,)
        )
        return int(found[0][0]) if found else changed

    # operator views ------------------------------------------------------------------------

    async def status(self, site: str, *, configured: bool = True) -> dict[str, Any]:
        """Items per state, last sync, parked token, erroring items with Meta's message."""
        counted = await self._read(
            "SELECT state, COUNT(*) FROM catalog_items WHERE site=? GROUP BY state", (site,)
        )
        counts = {str(s): int(n) for s, n in counted}
        errors = await self.rows(site, state="error", limit=MAX_ERRORS)
        last = await self._read(
            "SELECT at, result, message, blocked_reason FROM catalog_syncs WHERE site=?", (site,)
        )
        sync = None
        if last:
            found = last[0]
            sync = {"at": found[0], "result": found[1], "message": found[2], "blocked": found[3]}
        return status_of(counts, errors, sync, configured=configured)

    async def rows(self, site: str, *, state: str | None = None, limit: int = 1000) -> list[Row]:
        """The site's items (of one state), most recently seen first."""
        where, args = ("site=?", [site]) if state is None else ("site=? AND state=?", [site, state])
        order = "error_at DESC" if state == "error" else "last_seen DESC"
        found = await self._read(
            f"SELECT {_COLS} FROM catalog_items WHERE {where} ORDER BY {order}, item_id LIMIT ?",
            (*args, limit),
        )
        return [Row.of(tuple(v)) for v in found]

    async def feed(self, site: str) -> list[dict[str, Any]]:
        """Every item's Meta data except deleted ones (and those being deleted), by id."""
        found = await self._read(
            "SELECT data FROM catalog_items WHERE site=? AND state!='deleted' "
            "AND NOT (state='pending' AND action='DELETE') ORDER BY item_id",
            (site,),
        )
        return [json.loads(r[0]) for r in found]

    async def content_ids(
        self, site: str, events: Sequence[str], *, since: float, limit: int = 20000
    ) -> list[tuple[str, list[str]]]:
        """(event name, content_ids) of the site's stored events of `events` since `since`."""
        marks = ", ".join("?" * len(events))
        only = "site IS NULL" if site == "" else "site=?"
        args: list[Any] = [] if site == "" else [site]
        found = await self._read(
            f"SELECT event_name, json_extract(payload, '$.custom_data.content_ids') FROM events "
            f"WHERE {only} AND event_name IN ({marks}) AND created_at>=? "
            "ORDER BY created_at DESC LIMIT ?",
            (*args, *events, since, limit),
        )
        return [(str(name), content_ids_of(raw)) for name, raw in found]
