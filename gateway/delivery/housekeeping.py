"""Outbox upkeep on a connection: expiry past Meta's window, retention, and the numbers.

Plain functions over an aiosqlite connection, so the running outbox (under its lock) and
the `queue` command (on its own connection) share them.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import aiosqlite

from gateway.delivery.schema import STATES
from gateway.models import META_WINDOW


async def expire_and_purge(
    conn: aiosqlite.Connection, *, retention: float, dead_retention: float, now: float | None = None
) -> tuple[int, int]:
    """Dead-letter rows past Meta's window; delete old sent and dead rows."""
    now = time.time() if now is None else now
    cur = await conn.execute(
        "UPDATE events SET state='dead', sent_at=?, last_error=? "
        "WHERE state IN ('pending','blocked') AND event_time < ?",
        (now, "expired: event_time is older than Meta's 7-day window", now - META_WINDOW),
    )
    expired = int(cur.rowcount)
    cur = await conn.execute(
        "DELETE FROM events WHERE (state IN ('sent','sent-dry') AND sent_at < ?) "
        "OR (state='dead' AND sent_at < ?)",
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
        "UPDATE events SET state='pending', attempts=0, next_attempt_at=?, lease_owner=NULL, "
        f"lease_expires=NULL{where}",
        [time.time() if now is None else now, *values],
    )
    # Retrying a blocked pixel's events by hand lifts the block: the operator says it's fixed.
    await conn.execute(
        "DELETE FROM blocked_pixels WHERE pixel_id NOT IN "
        "(SELECT DISTINCT pixel_id FROM events WHERE state='blocked')"
    )
    return int(cur.rowcount)


async def delete_rows(conn: aiosqlite.Connection, where: str, values: Sequence[Any]) -> int:
    """Delete the rows `where` (a ` WHERE ...` clause) selects; returns how many."""
    cur = await conn.execute(f"DELETE FROM events{where}", list(values))
    return int(cur.rowcount)


async def purge_sent_oldest(conn: aiosqlite.Connection, *, fraction: float) -> int:
    """Delete the oldest `fraction` of delivered rows (they are kept only for the record)."""
    cur = await conn.execute(
        "DELETE FROM events WHERE id IN (SELECT id FROM events WHERE state IN "
        "('sent','sent-dry') ORDER BY sent_at LIMIT (SELECT CAST(COUNT(*) * ? AS "
        "INTEGER) + 1 FROM events WHERE state IN ('sent','sent-dry')))",
        (fraction,),
    )
    return int(cur.rowcount)


async def queue_stats(conn: aiosqlite.Connection, now: float | None = None) -> dict[str, Any]:
    """The numbers `queue stats` and the status endpoint show."""
    now = time.time() if now is None else now
    states: dict[str, int] = dict.fromkeys(STATES, 0)
    by_name: dict[str, dict[str, int]] = {}
    async with conn.execute(
        "SELECT event_name, state, COUNT(*) FROM events GROUP BY event_name, state"
    ) as cur:
        for name, state, count in await cur.fetchall():
            states[state] = states.get(state, 0) + count
            by_name.setdefault(name, {})[state] = count
    async with conn.execute(
        "SELECT MIN(created_at) FROM events WHERE state IN ('pending','inflight')"
    ) as cur:
        row = await cur.fetchone()
    oldest = now - float(row[0]) if row and row[0] is not None else None
    async with conn.execute(
        "SELECT pixel_id, reason, fbtrace_id, since FROM blocked_pixels ORDER BY pixel_id"
    ) as cur:
        blocked = [
            {"pixel_id": r[0], "reason": r[1], "fbtrace_id": r[2], "since": r[3]}
            for r in await cur.fetchall()
        ]
    return {
        "states": states,
        "by_event_name": dict(sorted(by_name.items())),
        "oldest_pending_age": oldest,
        "blocked_pixels": blocked,
    }


async def match_key_coverage(
    conn: aiosqlite.Connection, *, since: float
) -> dict[str, dict[str, Any]]:
    """Per event name: how many events since `since`, and per user_data key how many
    carried it as received (the first copy) and as sent (after assembly and profiles).

    `{"Purchase": {"events": 10, "keys": {"em": {"received": 0, "sent": 10}, ...}}}`;
    rows of releases before assembly count their keys as both.
    """
    out: dict[str, dict[str, Any]] = {}
    async with conn.execute(
        "SELECT event_name, received_keys, match_keys FROM events "
        "WHERE created_at >= ? AND match_keys IS NOT NULL",
        (since,),
    ) as cur:
        async for name, received, sent in cur:
            entry = out.setdefault(name, {"events": 0, "keys": {}})
            entry["events"] += 1
            for column, keys in (("received", received or sent), ("sent", sent)):
                for key in filter(None, keys.split(",")):
                    counts = entry["keys"].setdefault(key, {"received": 0, "sent": 0})
                    counts[column] += 1
    return dict(sorted(out.items()))
