"""The SQL over the outbox's narrow `event_queue` rows: leases, results, parked pixels.

Plain functions on a connection, each meant to run inside a write transaction the caller
holds (`Outbox._transaction`). They write delivery state only (schema migration 11,
queueschema.py): the event's own row in `event_data` is not rewritten by a lease or a
result. The claim itself, which also reads the events, is `rows.claim`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import aiosqlite

from gateway.delivery.leases import pid_of

# Ids per statement: far below SQLite's variable limit. A result for at most this many rows
# is one statement, which may run as its own transaction (see `update_leased`).
ID_CHUNK = 900


async def reclaim_leases(conn: aiosqlite.Connection, host: str, dead: Callable[[int], bool]) -> int:
    """Give back rows leased by processes of `host` that `dead(pid)` says are gone."""
    async with conn.execute(
        "SELECT DISTINCT lease_owner FROM event_queue WHERE state='inflight'"
    ) as cur:
        owners = [str(r[0]) for r in await cur.fetchall() if r[0] is not None]
    count = 0
    for owner in owners:
        pid = pid_of(owner, host)
        if pid is None or not dead(pid):
            continue
        cur = await conn.execute(
            "UPDATE event_queue SET state='pending', lease_owner=NULL, lease_expires=NULL "
            "WHERE state='inflight' AND lease_owner=?",
            (owner,),
        )
        count += cur.rowcount
    return count


async def update_leased(
    conn: aiosqlite.Connection,
    ids: Sequence[int],
    owner: str,
    assignments: str,
    values: tuple[Any, ...],
) -> None:
    """Apply `assignments` (to queue columns) to the rows of `ids` that `owner` still holds.

    Up to ID_CHUNK ids this is one statement: it needs no transaction around it.
    """
    for start in range(0, len(ids), ID_CHUNK):
        part = ids[start : start + ID_CHUNK]
        marks = ",".join("?" * len(part))
        # Only the lease holder may record a result: a row whose lease expired and was
        # taken by another worker belongs to that worker now.
        await conn.execute(
            f"UPDATE event_queue SET {assignments} WHERE id IN ({marks}) "
            "AND state='inflight' AND lease_owner=?",
            (*values, *part, owner),
        )


async def park_pixel(
    conn: aiosqlite.Connection,
    pixel_id: str,
    *,
    token_fingerprint: str,
    reason: str,
    fbtrace_id: str | None,
) -> None:
    """Record the pixel as blocked and park its pending rows."""
    await conn.execute(
        "INSERT INTO blocked_pixels (pixel_id, token_fingerprint, reason, fbtrace_id, since) "
        "VALUES (?,?,?,?,?) ON CONFLICT (pixel_id) DO UPDATE SET "
        "token_fingerprint=excluded.token_fingerprint, reason=excluded.reason, "
        "fbtrace_id=excluded.fbtrace_id",
        (pixel_id, token_fingerprint, reason, fbtrace_id, time.time()),
    )
    await conn.execute(
        "UPDATE event_queue SET state='blocked' WHERE state='pending' AND pixel_id=?",
        (pixel_id,),
    )


async def release_pixel(conn: aiosqlite.Connection, pixel_id: str) -> int:
    """Lift a pixel's block; its parked rows are due now. Returns how many."""
    await conn.execute("DELETE FROM blocked_pixels WHERE pixel_id=?", (pixel_id,))
    cur = await conn.execute(
        "UPDATE event_queue SET state='pending', next_attempt_at=? "
        "WHERE state='blocked' AND pixel_id=?",
        (time.time(), pixel_id),
    )
    return int(cur.rowcount)
