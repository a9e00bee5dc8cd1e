"""`queue list|export|retry|purge` on the PostgreSQL store: the SQLite versions' semantics.

The rows come back as plain dicts shaped like the SQLite rows (JSON columns as text), so the
command prints both backends' rows with one function.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from gateway.delivery.postgres.queue import delete_events
from gateway.delivery.postgres.results import affected
from gateway.delivery.reads import EventFilter

if TYPE_CHECKING:
    from gateway.delivery.postgres.pool import Conn, Database

# Purges delete in batches, each its own transaction, so no lock is held for long.
PURGE_BATCH = 5000


def where(which: EventFilter) -> tuple[str, list[Any]]:
    """A ` WHERE ...` clause with `$n` parameters over fixed column names, and its values."""
    clauses: list[str] = []
    values: list[Any] = []
    for column, value in (
        ("state", which.state),
        ("event_name", which.event_name),
        ("pixel_id", which.pixel_id),
        ("site", which.site),
    ):
        if value is not None:
            values.append(value)
            clauses.append(f"{column} = ${len(values)}")
    if which.ids:
        values.append([int(i) for i in which.ids])
        clauses.append(f"id = ANY(${len(values)}::bigint[])")
    if which.state is None and which.states:
        values.append(list(which.states))
        clauses.append(f"state = ANY(${len(values)}::text[])")
    return (" WHERE " + " AND ".join(clauses)) if clauses else "", values


async def list_events(
    db: Database, which: EventFilter, *, limit: int | None
) -> list[dict[str, Any]]:
    """The rows `which` selects, newest first, every column `queue list|export` shows."""
    clause, values = where(which)
    sql = (
        "SELECT id, pixel_id, event_name, event_id, event_time, source, rule, "
        "test_event_code, payload::text AS payload, sealed, state, attempts, next_attempt_at, "
        "last_error, fbtrace_id, created_at, sent_at, sources::text AS sources, "
        f"late::text AS late FROM events{clause} ORDER BY id DESC"
    )
    if limit is not None:
        sql += f" LIMIT {int(limit)}"

    async def read(conn: Conn) -> list[dict[str, Any]]:
        return [dict(r) for r in await conn.fetch(sql, *values)]

    return await db.run(read, transaction=False)


async def count_rows(db: Database, which: EventFilter) -> int:
    """How many rows `which` selects."""
    clause, values = where(which)

    async def read(conn: Conn) -> int:
        return int(await conn.fetchval(f"SELECT count(*) FROM events{clause}", *values))

    return await db.run(read, transaction=False)


async def requeue(db: Database, which: EventFilter) -> int:
    """Queue the rows `which` selects for sending now, with a fresh attempt budget."""
    clause, values = where(which)
    now_mark = f"${len(values) + 1}"

    async def work(conn: Conn) -> int:
        status = await conn.execute(
            "UPDATE event_queue SET state = 'pending', attempts = 0, "
            f"next_attempt_at = {now_mark}, lease_owner = NULL, lease_expires = NULL "
            f"WHERE id IN (SELECT id FROM events{clause})",
            *values,
            time.time(),
        )
        # Retrying a blocked pixel's events by hand lifts the block: the operator says it's
        # fixed (as on SQLite).
        await conn.execute(
            "DELETE FROM blocked_pixels WHERE pixel_id NOT IN "
            "(SELECT DISTINCT pixel_id FROM event_queue WHERE state = 'blocked')"
        )
        return affected(status)

    return await db.run(work)


async def delete_rows(db: Database, which: EventFilter) -> int:
    """Delete the rows `which` selects, in batches; returns how many."""
    clause, values = where(which)
    sql = delete_events(f"SELECT id FROM events{clause} ORDER BY id LIMIT {PURGE_BATCH}")

    async def batch(conn: Conn) -> int:
        return affected(await conn.execute(sql, *values))

    total = 0
    while True:
        done = await db.run(batch)
        total += done
        if done < PURGE_BATCH:
            return total
