"""The reads of the `queue` and `doctor` commands: rows by filter, and the file's health.

Plain functions over a read-only connection (queuereads.reading); the writes `queue`
makes live in housekeeping.py.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import aiosqlite

from gateway.delivery.queuereads import UNDELIVERED, scalar

# -- the queue command ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class EventFilter:
    """Which rows a `queue` subcommand acts on; `states` applies when `state` is None."""

    state: str | None = None
    event_name: str | None = None
    pixel_id: str | None = None
    ids: tuple[int, ...] = ()
    site: str | None = None
    states: tuple[str, ...] = ()

    def where(self) -> tuple[str, list[Any]]:
        """A ` WHERE ...` clause over fixed column names, and its bound values."""
        clauses: list[str] = []
        values: list[Any] = []
        for column, value in (
            ("state", self.state),
            ("event_name", self.event_name),
            ("pixel_id", self.pixel_id),
            ("site", self.site),
        ):
            if value is not None:
                clauses.append(f"{column} = ?")
                values.append(value)
        if self.ids:
            clauses.append(f"id IN ({','.join('?' * len(self.ids))})")
            values += self.ids
        if self.state is None and self.states:
            clauses.append(f"state IN ({','.join('?' * len(self.states))})")
            values += self.states
        return (" WHERE " + " AND ".join(clauses)) if clauses else "", values


async def list_events(
    conn: aiosqlite.Connection, which: EventFilter, *, limit: int | None
) -> list[aiosqlite.Row]:
    """The rows `which` selects, newest first, every column `queue list|export` shows."""
    where, values = which.where()
    sql = (
        "SELECT id, pixel_id, event_name, event_id, event_time, source, rule, "
        "test_event_code, payload, sealed, state, attempts, next_attempt_at, last_error, "
        f"fbtrace_id, created_at, sent_at, sources, late FROM events{where} ORDER BY id DESC"
    )
    if limit is not None:
        sql += f" LIMIT {int(limit)}"
    conn.row_factory = aiosqlite.Row
    async with conn.execute(sql, values) as cur:
        return list(await cur.fetchall())


# -- doctor -----------------------------------------------------------------------------------


async def schema_version(conn: aiosqlite.Connection) -> int:
    """The file's `user_version`: 0 for a file no release of the gateway has set up."""
    return int(await scalar(conn, "PRAGMA user_version") or 0)


async def table_count(conn: aiosqlite.Connection) -> int:
    """Tables, indexes and views in the file (another application's, at version 0)."""
    return int(await scalar(conn, "SELECT COUNT(*) FROM sqlite_master") or 0)


async def integrity_problems(conn: aiosqlite.Connection, limit: int = 5) -> list[str]:
    """SQLite's quick check: ["ok"], or up to `limit` problems."""
    async with conn.execute(f"PRAGMA quick_check({int(limit)})") as cur:
        return [str(row[0]) for row in await cur.fetchall()]


async def sealed_undelivered(conn: aiosqlite.Connection) -> int:
    """Rows still to be delivered whose clear fields are sealed (they need the key)."""
    marks = ",".join("?" * len(UNDELIVERED))
    async with conn.execute(
        f"SELECT COUNT(*) FROM events WHERE sealed IS NOT NULL AND state IN ({marks})",
        UNDELIVERED,
    ) as cur:
        row = await cur.fetchone()
    return int(row[0]) if row else 0
