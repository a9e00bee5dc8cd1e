"""The store's read side: every query the operator side runs, on connections of its own.

/status, /health and /metrics (through `BufferReader`), the dashboard, `queue` and `doctor`
read the outbox file here and nowhere else. They read on a read-only connection of their
own instead of the outbox's: WAL lets them read while every worker writes, so a scrape, a
page load or a health check never waits behind a group commit or a claim, and the numbers
are the same whichever worker answers (the file is the shared truth). The writes live
beside the outbox (rows.py, housekeeping.py).

The queries themselves are split by who asks: queuereads.py (the queue's numbers and the
connections), dashboardreads.py (the dashboard) and commandreads.py (`queue`, `doctor`).
Every name stays importable from here.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from pathlib import Path

import aiosqlite

from gateway.delivery.commandreads import (
    EventFilter,
    integrity_problems,
    list_events,
    schema_version,
    sealed_undelivered,
    table_count,
)
from gateway.delivery.dashboardreads import (
    DeadRow,
    dead_letters,
    delivered_since,
    events_per_minute,
    has_match_keys,
    hour_groups,
    undelivered_counts,
)
from gateway.delivery.queuereads import (
    APART,
    UNDELIVERED,
    BlockedPixel,
    DeadLetter,
    InsightBytes,
    QueueSnapshot,
    blocked_pixels,
    match_key_coverage,
    oldest_pending,
    open_reader,
    queue_stats,
    reading,
    scalar,
    site_filter,
    state_counts,
    used_bytes,
)
from gateway.delivery.schema import STATES

__all__ = [
    "APART",
    "UNDELIVERED",
    "BlockedPixel",
    "BufferReader",
    "DeadLetter",
    "DeadRow",
    "EventFilter",
    "InsightBytes",
    "QueueSnapshot",
    "blocked_pixels",
    "dead_letters",
    "delivered_since",
    "events_per_minute",
    "has_match_keys",
    "hour_groups",
    "integrity_problems",
    "list_events",
    "match_key_coverage",
    "oldest_pending",
    "open_reader",
    "queue_stats",
    "reading",
    "schema_version",
    "sealed_undelivered",
    "site_filter",
    "state_counts",
    "table_count",
    "undelivered_counts",
    "used_bytes",
]


class BufferReader:
    """Reads the buffer on a connection of its own, never taking the outbox's write path.

    WAL lets it read while the workers write; scrapes and health checks therefore never
    wait behind a group commit or a claim.
    """

    def __init__(self, conn: aiosqlite.Connection, limit_bytes: int) -> None:
        self._conn = conn
        self._lock = asyncio.Lock()
        self.limit_bytes = limit_bytes
        self._insights = InsightBytes(limit=limit_bytes)

    @classmethod
    async def open(cls, path: Path, *, limit_bytes: int) -> BufferReader:
        """Open a read-only view of the (already created) buffer file."""
        return cls(await open_reader(path), limit_bytes)

    async def close(self) -> None:
        """Close the connection."""
        async with self._lock:
            await self._conn.close()

    async def used_bytes(self) -> int:
        """Bytes of pages in use (free pages are reused before the file grows), as the outbox."""
        async with self._lock:
            return await used_bytes(self._conn, self._insights)

    async def has_delivered(self) -> bool:
        """True when delivered rows exist: the outbox purges those first to make room."""
        async with self._lock:
            return bool(
                await scalar(
                    self._conn,
                    "SELECT EXISTS (SELECT 1 FROM events WHERE state IN ('sent','sent-dry'))",
                )
            )

    async def site_states(self, sites: Sequence[str]) -> dict[str, dict[str, int]]:
        """Rows per state of each of `sites` (every state present, every site listed)."""
        out = {site: dict.fromkeys(STATES, 0) for site in sites}
        if not sites:
            return out
        only, values = site_filter(sites)
        async with (
            self._lock,
            self._conn.execute(
                f"SELECT site, state, COUNT(*) FROM events WHERE 1{only} GROUP BY site, state",
                values,
            ) as cur,
        ):
            for site, state, count in await cur.fetchall():
                out[str(site)][str(state)] = int(count)
        return out

    async def snapshot(self, sites: Sequence[str] | None = None) -> QueueSnapshot:
        """Depth per state, oldest pending age, last delivery, blocks, newest dead letter.

        With `sites`, the numbers of those sites' events only (a tenant's view).
        """
        now = time.time()
        async with self._lock:
            # One read transaction: the numbers belong to the same moment.
            await self._conn.execute("BEGIN")
            try:
                return await self._snapshot(now, sites)
            finally:
                await self._conn.execute("COMMIT")

    async def _snapshot(self, now: float, sites: Sequence[str] | None) -> QueueSnapshot:
        conn = self._conn
        only, values = site_filter(sites)
        oldest = await oldest_pending(conn, sites)
        last = await scalar(
            conn, f"SELECT MAX(sent_at) FROM events WHERE state='sent'{only}", *values
        )
        async with conn.execute(
            "SELECT pixel_id, last_error, fbtrace_id, sent_at FROM events "
            f"WHERE state='dead'{only} ORDER BY sent_at DESC LIMIT 1",
            values,
        ) as cur:
            row = await cur.fetchone()
        dead = None
        if row is not None:
            dead = DeadLetter(str(row[0]), str(row[1] or ""), row[2], float(row[3] or 0.0))
        return QueueSnapshot(
            states=await state_counts(conn, sites),
            oldest_pending_age=max(0.0, now - oldest) if oldest is not None else None,
            last_delivery=float(last) if last is not None else None,
            blocked=await blocked_pixels(conn),
            last_dead=dead,
            used_bytes=await used_bytes(conn, self._insights),
            limit_bytes=self.limit_bytes,
        )
