"""Outbox upkeep on a connection: expiry past Meta's window, retention, and the numbers.

Plain functions over an aiosqlite connection, so the running outbox (under its lock) and
the `queue` command (on its own connection) share them.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import aiosqlite

from gateway.models import META_WINDOW


async def expire_and_purge(
    conn: aiosqlite.Connection, *, retention: float, dead_retention: float, now: float | None = None
) -> tuple[int, int]:
    """Dead-letter rows past Meta's window; delete old sent and dead rows."""
    now = time.time() if now is None else now
    # The tables, not the `events` view: SQLite counts no changes made through a view.
    cur = await conn.execute(
        "UPDATE event_queue SET state='dead', sent_at=?, last_error=? "
        "WHERE state IN ('pending','blocked') "
        "AND (SELECT event_time FROM event_data d WHERE d.id = event_queue.id) < ?",
        (now, "expired: event_time is older than Meta's 7-day window", now - META_WINDOW),
    )
    expired = int(cur.rowcount)
    # Deleting the event deletes its queue row (trigger `event_data_delete`).
    cur = await conn.execute(
        "DELETE FROM event_data WHERE id IN (SELECT id FROM event_queue "
        "WHERE (state IN ('sent','sent-dry') AND sent_at < ?) OR (state='dead' AND sent_at < ?))",
        (now - retention, now - dead_retention),
    )
    return expired, int(cur.rowcount)


async def requeue(
    conn: aiosqlite.Connection, where: str, values: Sequence[Any], *, now: float | None = None
) -> int:
    """Queue the rows `where` selects for sending now, with a fresh attempt budget.

    `where` is a ` WHERE ...` clause over fixed column names, `values` its bound values; run
    inside a write transaction. Returns how many rows were queued.
    """
    cur = await conn.execute(
        "UPDATE event_queue SET state='pending', attempts=0, next_attempt_at=?, lease_owner=NULL, "
        f"lease_expires=NULL WHERE id IN (SELECT id FROM events{where})",
        [time.time() if now is None else now, *values],
    )
    # Retrying a blocked pixel's events by hand lifts the block: the operator says it's fixed.
    await conn.execute(
        "DELETE FROM blocked_pixels WHERE pixel_id NOT IN "
        "(SELECT DISTINCT pixel_id FROM event_queue WHERE state='blocked')"
    )
    return int(cur.rowcount)


async def delete_rows(conn: aiosqlite.Connection, where: str, values: Sequence[Any]) -> int:
    """Delete the rows `where` (a ` WHERE ...` clause) selects; returns how many."""
    cur = await conn.execute(
        f"DELETE FROM event_data WHERE id IN (SELECT id FROM events{where})", list(values)
    )
    return int(cur.rowcount)


async def count_rows(conn: aiosqlite.Connection, where: str, values: Sequence[Any]) -> int:
    """How many rows `where` (a ` WHERE ...` clause) selects."""
    async with conn.execute(f"SELECT COUNT(*) FROM events{where}", list(values)) as cur:
        row = await cur.fetchone()
    return int(row[0]) if row else 0


async def purge_sent_oldest(conn: aiosqlite.Connection, *, fraction: float) -> int:
    """Delete the oldest `fraction` of delivered rows (they are kept only for the record)."""
    cur = await conn.execute(
        "DELETE FROM event_data WHERE id IN (SELECT id FROM event_queue WHERE state IN "
        "('sent','sent-dry') ORDER BY sent_at LIMIT (SELECT CAST(COUNT(*) * ? AS "
        "INTEGER) + 1 FROM event_queue WHERE state IN ('sent','sent-dry')))",
        (fraction,),
    )
    return int(cur.rowcount)
