"""The dashboard's reads on the PostgreSQL store: delivery/reads.py's dashboard queries.

The same questions and the same answers as on SQLite (`gateway.delivery.dashboard`), each
bounded by `created_at` (the events_created BRIN index, migration 13), by state or by
`sent_at`. They run on the outbox's pool outside a transaction, without retrying: a page
load while the database is away answers at once (as an OSError, which the dashboard turns
into a 503).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

import asyncpg

from gateway.delivery.postgres.pool import Database, DatabaseUnavailable
from gateway.delivery.postgres.reads import site_filter
from gateway.delivery.reads import BlockedPixel, DeadRow

if TYPE_CHECKING:
    from gateway.delivery.postgres.pool import Conn

T = TypeVar("T")


class PgDashboard:
    """`DashboardReads` on the PostgreSQL store's pool."""

    def __init__(self, db: Database) -> None:
        self.db = db

    async def _read(self, work: Callable[[Conn], Awaitable[T]]) -> T:
        try:
            return await self.db.run(work, transaction=False, retry=False)
        except (DatabaseUnavailable, asyncpg.PostgresError) as exc:
            raise OSError(f"the PostgreSQL store at {self.db.name}: {exc}") from exc

    async def events_per_minute(
        self, start: float, sites: Sequence[str] | None = None
    ) -> list[tuple[str, int, int]]:
        """(event name, minute since `start`, rows) for the rows stored since `start`."""
        only, values = site_filter(sites, first=2)

        async def read(conn: Conn) -> list[tuple[str, int, int]]:
            # floor, not a cast: a cast to integer rounds where SQLite's truncates. The
            # event's own columns: no join with its queue row (schema migration 11).
            rows = await conn.fetch(
                "SELECT event_name, floor((created_at - $1) / 60)::bigint AS minute, "
                f"count(*) AS n FROM event_data WHERE created_at >= $1{only} "
                "GROUP BY event_name, minute",
                float(start),
                *values,
            )
            return [(str(r["event_name"]), int(r["minute"]), int(r["n"])) for r in rows]

        return await self._read(read)

    async def undelivered_counts(
        self, sites: Sequence[str] | None = None
    ) -> dict[tuple[str, bool], int]:
        """Rows not delivered, by (state, tried at least once)."""
        only, values = site_filter(sites, first=1)

        async def read(conn: Conn) -> dict[tuple[str, bool], int]:
            rows = await conn.fetch(
                f"SELECT state, attempts > 0 AS tried, count(*) AS n FROM {_queue(only)} "
                f"WHERE state IN ('pending', 'inflight', 'dead', 'blocked'){only} "
                "GROUP BY 1, 2",
                *values,
            )
            return {(str(r["state"]), bool(r["tried"])): int(r["n"]) for r in rows}

        return await self._read(read)

    async def delivered_since(
        self, since: float, sites: Sequence[str] | None = None
    ) -> dict[str, int]:
        """Rows sent (or recorded by --dry-run) since `since`, by state."""
        only, values = site_filter(sites, first=2)

        async def read(conn: Conn) -> dict[str, int]:
            rows = await conn.fetch(
                f"SELECT state, count(*) AS n FROM {_queue(only)} "
                f"WHERE state IN ('sent', 'sent-dry') AND sent_at >= $1{only} GROUP BY state",
                float(since),
                *values,
            )
            return {str(r["state"]): int(r["n"]) for r in rows}

        return await self._read(read)

    async def blocked_pixels(self) -> tuple[BlockedPixel, ...]:
        """Pixels parked because Meta refused their token, by pixel id."""

        async def read(conn: Conn) -> tuple[BlockedPixel, ...]:
            rows = await conn.fetch(
                "SELECT pixel_id, reason, fbtrace_id, since FROM blocked_pixels ORDER BY pixel_id"
            )
            return tuple(
                BlockedPixel(
                    str(r["pixel_id"]), str(r["reason"]), r["fbtrace_id"], float(r["since"])
                )
                for r in rows
            )

        return await self._read(read)

    async def dead_letters(
        self, limit: int, sites: Sequence[str] | None = None
    ) -> tuple[DeadRow, ...]:
        """The newest `limit` dead letters, newest first."""
        only, values = site_filter(sites, first=2)

        async def read(conn: Conn) -> tuple[DeadRow, ...]:
            rows = await conn.fetch(
                "SELECT id, pixel_id, event_name, event_id, source, attempts, last_error, "
                f"fbtrace_id, sent_at FROM events WHERE state = 'dead'{only} "
                "ORDER BY sent_at DESC NULLS LAST, id DESC LIMIT $1",
                int(limit),
                *values,
            )
            return tuple(
                DeadRow(
                    int(r["id"]),
                    r["pixel_id"],
                    r["event_name"],
                    r["event_id"],
                    r["source"],
                    int(r["attempts"]),
                    r["last_error"],
                    r["fbtrace_id"],
                    None if r["sent_at"] is None else float(r["sent_at"]),
                )
                for r in rows
            )

        return await self._read(read)

    async def hour_groups(
        self,
        start: float,
        end: float,
        keys: Sequence[str],
        sites: Sequence[str] | None = None,
    ) -> list[tuple[Any, ...]]:
        """The rows stored in [start, end) grouped by event name, source and rule, in the
        columns of `gateway.delivery.reads.hour_groups`."""
        # $1, $2: the hour; then one parameter per key, used for both columns.
        marks = [f"${i}::text" for i in range(3, 3 + len(keys))]
        sums = ", ".join(
            f"sum((strpos({col}, ',' || {mark} || ',') > 0)::int)"
            for col in ("k", "r")
            for mark in marks
        )
        only, values = site_filter(sites, first=3 + len(keys))

        async def read(conn: Conn) -> list[tuple[Any, ...]]:
            # As on SQLite: rows without match_keys (NULL k) stay out of count(k), and a
            # rule's firing is counted once per event id (one event per pixel shares it).
            rows = await conn.fetch(
                "SELECT event_name, source, rule, count(DISTINCT CASE WHEN rule IS NOT NULL "
                f"THEN event_id END), count(*), sum(twin::int), count(k), {sums} "
                "FROM (SELECT event_name, source, rule, event_id, twin, "
                "',' || match_keys || ',' AS k, "
                "',' || COALESCE(received_keys, match_keys) || ',' AS r "
                f"FROM event_data WHERE created_at >= $1 AND created_at < $2{only}) AS hour "
                "GROUP BY event_name, source, rule",
                float(start),
                float(end),
                *keys,
                *values,
            )
            return [tuple(r) for r in rows]

        return await self._read(read)


def _queue(only: str) -> str:
    """Where to count by delivery state: the narrow rows alone, or with a site filter the
    `events` view (the site is the event's; schema migration 11)."""
    return "events" if only else "event_queue"
