"""The dashboard's queries on the outbox file: traffic per minute, undelivered and delivered
rows, dead letters and the hour's match keys per event name, source and rule.

`gateway.delivery.dashboard.SqliteDashboard` runs them on a read-only connection
(queuereads.reading); the PostgreSQL store has its own (postgres/dashboard.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import aiosqlite

from gateway.delivery.queuereads import scalar, site_filter


async def events_per_minute(
    conn: aiosqlite.Connection, start: float, sites: Sequence[str] | None = None
) -> list[tuple[str, int, int]]:
    """(event name, minute since `start`, rows) for the rows stored since `start`."""
    only, values = site_filter(sites)
    async with conn.execute(
        "SELECT event_name, CAST((created_at - ?) / 60 AS INTEGER) AS minute, COUNT(*) "
        f"FROM events WHERE created_at >= ?{only} GROUP BY event_name, minute",
        (start, start, *values),
    ) as cur:
        return [(str(n), int(m), int(c)) for n, m, c in await cur.fetchall()]


async def undelivered_counts(
    conn: aiosqlite.Connection, sites: Sequence[str] | None = None
) -> dict[tuple[str, bool], int]:
    """Rows not delivered, by (state, tried at least once)."""
    only, values = site_filter(sites)
    async with conn.execute(
        "SELECT state, attempts > 0, COUNT(*) FROM events "
        f"WHERE state IN ('pending','inflight','dead','blocked'){only} GROUP BY 1, 2",
        values,
    ) as cur:
        return {(str(s), bool(tried)): int(n) for s, tried, n in await cur.fetchall()}


async def delivered_since(
    conn: aiosqlite.Connection, since: float, sites: Sequence[str] | None = None
) -> dict[str, int]:
    """Rows sent (or recorded by --dry-run) since `since`, by state."""
    only, values = site_filter(sites)
    async with conn.execute(
        "SELECT state, COUNT(*) FROM events WHERE state IN ('sent','sent-dry') AND sent_at >= ?"
        f"{only} GROUP BY state",
        (since, *values),
    ) as cur:
        return {str(s): int(n) for s, n in await cur.fetchall()}


@dataclass(frozen=True, slots=True)
class DeadRow:
    """A dead letter as the dashboard lists it."""

    id: int
    pixel_id: str
    event_name: str
    event_id: str
    source: str
    attempts: int
    error: str | None
    fbtrace_id: str | None
    died_at: float | None


async def dead_letters(
    conn: aiosqlite.Connection, limit: int, sites: Sequence[str] | None = None
) -> tuple[DeadRow, ...]:
    """The newest `limit` dead letters, newest first."""
    only, values = site_filter(sites)
    async with conn.execute(
        "SELECT id, pixel_id, event_name, event_id, source, attempts, last_error, fbtrace_id, "
        f"sent_at FROM events WHERE state='dead'{only} ORDER BY sent_at DESC, id DESC LIMIT ?",
        (*values, limit),
    ) as cur:
        return tuple(
            DeadRow(int(r[0]), r[1], r[2], r[3], r[4], int(r[5]), r[6], r[7], r[8])
            for r in await cur.fetchall()
        )


async def has_match_keys(conn: aiosqlite.Connection) -> bool:
    """False for an outbox of an older schema, written before the `match_keys` column."""
    return (
        await scalar(conn, "SELECT 1 FROM pragma_table_info('events') WHERE name='match_keys'")
        is not None
    )


async def hour_groups(
    conn: aiosqlite.Connection,
    start: float,
    end: float,
    keys: Sequence[str],
    sites: Sequence[str] | None = None,
) -> list[tuple[Any, ...]]:
    """One pass over the rows stored in [start, end), grouped by event name, source and rule.

    Each row: event name, source, rule, distinct event ids the rule made, rows, rows with a
    twin, rows with known keys, then rows carrying each of `keys` (match keys, in order) as
    sent (after assembly and profiles), then as received (the first copy), in the same order.
    """
    sums = ", ".join(
        [f"SUM(instr({col}, ',' || ? || ',') > 0)" for col in ("k", "r") for _ in keys]
    )
    only, values = site_filter(sites)
    # Rows written before the match_keys column existed have NULL keys: COUNT(k) leaves
    # them out of the coverage denominator instead of counting them as carrying nothing.
    # One event per pixel shares its event_id: a rule's firing is counted once.
    async with conn.execute(
        f"SELECT event_name, source, rule, COUNT(DISTINCT CASE WHEN rule IS NOT NULL "
        f"THEN event_id END), COUNT(*), SUM(twin), COUNT(k), {sums} "
        "FROM (SELECT event_name, source, rule, event_id, twin, ',' || match_keys || ',' AS k, "
        "',' || COALESCE(received_keys, match_keys) || ',' AS r "
        f"FROM events WHERE created_at >= ? AND created_at < ?{only}) "
        "GROUP BY event_name, source, rule",
        (*keys, *keys, start, end, *values),
    ) as cur:
        return [tuple(r) for r in await cur.fetchall()]
