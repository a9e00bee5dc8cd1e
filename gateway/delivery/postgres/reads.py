"""Health, /status and /metrics reads of the PostgreSQL store: the numbers of `QueueSnapshot`.

Queue depth comes from the trigger-kept counters (`queue.queue_depth`), never COUNT(*) over
the events table; the other figures read small partial indexes.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

import asyncpg

from gateway.delivery.postgres import queue
from gateway.delivery.postgres.leanindexes import OLDEST_OPEN
from gateway.delivery.postgres.pool import Database, DatabaseUnavailable
from gateway.delivery.postgres.queue_schema import EVENTS_BYTES
from gateway.delivery.postgres.schema import STATES
from gateway.delivery.reads import BlockedPixel, DeadLetter, QueueSnapshot

if TYPE_CHECKING:
    from gateway.delivery.postgres.pool import Conn

T = TypeVar("T")


class PgReader:
    """The store's numbers, read on the outbox's pool (reads never wait for a group commit)."""

    def __init__(self, db: Database, *, limit_bytes: int) -> None:
        self.db = db
        self.limit_bytes = limit_bytes

    async def close(self) -> None:
        """Nothing of its own to close: the pool belongs to the outbox."""

    async def used_bytes(self) -> int:
        """Bytes of the events table with its indexes."""

        async def read(conn: Conn) -> int:
            return int(await conn.fetchval(EVENTS_BYTES))

        return await self._read(read)

    async def has_delivered(self) -> bool:
        """True when delivered rows exist (the outbox purges those first to make room)."""

        async def read(conn: Conn) -> bool:
            return bool(
                await conn.fetchval(
                    "SELECT EXISTS (SELECT 1 FROM events WHERE state IN ('sent', 'sent-dry'))"
                )
            )

        return await self._read(read)

    async def _read(self, work: Callable[[Conn], Awaitable[T]]) -> T:
        # Scrapes and health checks answer at once while the database is away (no retry
        # for reconnect_timeout), as the read errors of a SQLite file do: an OSError.
        try:
            return await self.db.run(work, transaction=False, retry=False)
        except (DatabaseUnavailable, asyncpg.PostgresError) as exc:
            raise OSError(f"the PostgreSQL store at {self.db.name}: {exc}") from exc

    async def snapshot(self, sites: Sequence[str] | None = None) -> QueueSnapshot:
        """Depth per state, oldest pending age, last delivery, blocks, newest dead letter.

        With `sites`, the numbers of those sites' events only (a tenant's view).
        """
        now = time.time()

        async def read(conn: Conn) -> QueueSnapshot:
            only, values = site_filter(sites, first=1)
            states = await state_counts(conn, sites)
            oldest = await oldest_pending(conn, sites)
            # Without sites these read the narrow rows alone (schema migration 11).
            table = "events" if only else "event_queue"
            last = await conn.fetchval(
                f"SELECT max(sent_at) FROM {table} WHERE state = 'sent'{only}", *values
            )
            dead = await conn.fetchrow(
                f"SELECT pixel_id, last_error, fbtrace_id, sent_at FROM {table} "
                f"WHERE state = 'dead'{only} ORDER BY sent_at DESC LIMIT 1",
                *values,
            )
            blocked = await conn.fetch(
                "SELECT pixel_id, reason, fbtrace_id, since FROM blocked_pixels ORDER BY pixel_id"
            )
            used = await conn.fetchval(EVENTS_BYTES)
            return QueueSnapshot(
                states=states,
                oldest_pending_age=max(0.0, now - oldest) if oldest is not None else None,
                last_delivery=float(last) if last is not None else None,
                blocked=tuple(
                    BlockedPixel(b["pixel_id"], b["reason"], b["fbtrace_id"], float(b["since"]))
                    for b in blocked
                ),
                last_dead=DeadLetter(
                    str(dead["pixel_id"]),
                    str(dead["last_error"] or ""),
                    dead["fbtrace_id"],
                    float(dead["sent_at"] or 0.0),
                )
                if dead is not None
                else None,
                used_bytes=int(used),
                limit_bytes=self.limit_bytes,
            )

        return await self._read(read)

    async def site_states(self, sites: Sequence[str]) -> dict[str, dict[str, int]]:
        """Rows per state of each of `sites` (every state present, every site listed)."""
        out = {site: dict.fromkeys(STATES, 0) for site in sites}
        if not sites:
            return out

        async def read(conn: Conn) -> None:
            for r in await conn.fetch(
                "SELECT site, state, count(*) AS n FROM events WHERE site = ANY($1::text[]) "
                "GROUP BY site, state",
                list(sites),
            ):
                out[str(r["site"])][str(r["state"])] = int(r["n"])

        await self._read(read)
        return out


def site_filter(sites: Sequence[str] | None, *, first: int) -> tuple[str, list[Any]]:
    """` AND site = ANY($first)` and its value for `sites` (None: every row, no clause).

    As on SQLite, events of the implicit default site (NULL) belong to no named site.
    """
    if sites is None:
        return "", []
    return f" AND site = ANY(${first}::text[])", [list(sites)]


async def state_counts(conn: Conn, sites: Sequence[str] | None = None) -> dict[str, int]:
    """Rows per state, every state present: from the counters, or (for `sites`) counted in
    those sites' rows, a tenant's share rather than the whole table."""
    if sites is None:
        return queue.totals(await queue.queue_depth(conn))
    states = dict.fromkeys(STATES, 0)
    for r in await conn.fetch(
        "SELECT state, count(*) AS n FROM events WHERE site = ANY($1::text[]) GROUP BY state",
        list(sites),
    ):
        states[str(r["state"])] = int(r["n"])
    return states


async def oldest_pending(conn: Conn, sites: Sequence[str] | None = None) -> float | None:
    """When the oldest event still waiting to be sent was stored (Unix time)."""
    only, values = site_filter(sites, first=1)
    if only:
        # The site is the event's (schema migration 11).
        oldest = await conn.fetchval(
            f"SELECT min(created_at) FROM events WHERE state IN ('pending', 'inflight'){only}",
            *values,
        )
    else:
        # The narrow rows alone, through their partial indexes (schema migration 13).
        oldest = await conn.fetchval(OLDEST_OPEN)
    return None if oldest is None else float(oldest)


async def queue_stats(db: Database, *, site: str | None = None) -> dict[str, Any]:
    """The numbers `queue stats` shows, in the SQLite store's shape: per state and event name
    (from the counters; counted in its rows for one `site`), oldest pending age, blocked
    pixels (whoever they belong to)."""
    now = time.time()
    sites = None if site is None else (site,)

    async def read(conn: Conn) -> dict[str, Any]:
        if sites is None:
            depth = await queue.queue_depth(conn)
        else:
            depth = {}
            for r in await conn.fetch(
                "SELECT event_name, state, count(*) AS n FROM events "
                "WHERE site = ANY($1::text[]) GROUP BY event_name, state",
                list(sites),
            ):
                depth.setdefault(r["event_name"], {})[r["state"]] = int(r["n"])
        oldest = await oldest_pending(conn, sites)
        blocked = await conn.fetch(
            "SELECT pixel_id, reason, fbtrace_id, since FROM blocked_pixels ORDER BY pixel_id"
        )
        return {
            "states": queue.totals(depth),
            "by_event_name": dict(sorted(depth.items())),
            "oldest_pending_age": now - oldest if oldest is not None else None,
            "blocked_pixels": [
                {
                    "pixel_id": b["pixel_id"],
                    "reason": b["reason"],
                    "fbtrace_id": b["fbtrace_id"],
                    "since": float(b["since"]),
                }
                for b in blocked
            ],
        }

    return await db.run(read, transaction=False)
