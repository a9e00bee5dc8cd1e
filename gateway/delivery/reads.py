"""The buffer as the operator endpoints see it: one read-only connection, numbers out.

Health, status and metrics read the outbox file on a connection of their own instead of
the outbox's: WAL lets them read while every worker writes, so a scrape or a health check
never waits behind a group commit or a claim, and the numbers are the same whichever
worker answers (the file is the shared truth).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiosqlite

from gateway.delivery.schema import STATES


@dataclass(frozen=True, slots=True)
class BlockedPixel:
    """A pixel parked because Meta refused its token."""

    pixel_id: str
    reason: str
    fbtrace_id: str | None
    since: float


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """The newest dead-lettered event's error."""

    pixel_id: str
    error: str
    fbtrace_id: str | None
    at: float


@dataclass(frozen=True, slots=True)
class QueueSnapshot:
    """The outbox's numbers at one moment."""

    states: dict[str, int]
    oldest_pending_age: float | None
    last_delivery: float | None
    blocked: tuple[BlockedPixel, ...]
    last_dead: DeadLetter | None
    used_bytes: int
    limit_bytes: int


class BufferReader:
    """Reads the buffer on a connection of its own, never taking the outbox's write path.

    WAL lets it read while the workers write; scrapes and health checks therefore never
    wait behind a group commit or a claim.
    """

    def __init__(self, conn: aiosqlite.Connection, limit_bytes: int) -> None:
        self._conn = conn
        self._lock = asyncio.Lock()
        self.limit_bytes = limit_bytes

    @classmethod
    async def open(cls, path: Path, *, limit_bytes: int) -> BufferReader:
        """Open a read-only view of the (already created) buffer file."""
        conn = await aiosqlite.connect(str(path), isolation_level=None)
        try:
            await conn.execute("PRAGMA busy_timeout = 5000")
            await conn.execute("PRAGMA query_only = 1")
        except BaseException:
            await conn.close()
            raise
        return cls(conn, limit_bytes)

    async def close(self) -> None:
        """Close the connection."""
        async with self._lock:
            await self._conn.close()

    async def used_bytes(self) -> int:
        """Bytes of pages in use (free pages are reused before the file grows), as the outbox."""
        async with self._lock:
            return await self._used()

    async def has_delivered(self) -> bool:
        """True when delivered rows exist: the outbox purges those first to make room."""
        async with self._lock:
            return bool(
                await self._scalar(
                    "SELECT EXISTS (SELECT 1 FROM events WHERE state IN ('sent','sent-dry'))"
                )
            )

    async def snapshot(self) -> QueueSnapshot:
        """Depth per state, oldest pending age, last delivery, blocks, newest dead letter."""
        now = time.time()
        async with self._lock:
            # One read transaction: the numbers belong to the same moment.
            await self._conn.execute("BEGIN")
            try:
                return await self._snapshot(now)
            finally:
                await self._conn.execute("COMMIT")

    async def _snapshot(self, now: float) -> QueueSnapshot:
        states = dict.fromkeys(STATES, 0)
        async with self._conn.execute("SELECT state, COUNT(*) FROM events GROUP BY state") as cur:
            for state, count in await cur.fetchall():
                states[str(state)] = int(count)
        oldest = await self._scalar(
            "SELECT MIN(created_at) FROM events WHERE state IN ('pending','inflight')"
        )
        last = await self._scalar("SELECT MAX(sent_at) FROM events WHERE state='sent'")
        async with self._conn.execute(
            "SELECT pixel_id, reason, fbtrace_id, since FROM blocked_pixels ORDER BY pixel_id"
        ) as cur:
            blocked = tuple(
                BlockedPixel(str(r[0]), str(r[1]), r[2], float(r[3])) for r in await cur.fetchall()
            )
        async with self._conn.execute(
            "SELECT pixel_id, last_error, fbtrace_id, sent_at FROM events "
            "WHERE state='dead' ORDER BY sent_at DESC LIMIT 1"
        ) as cur:
            row = await cur.fetchone()
        dead = None
        if row is not None:
            dead = DeadLetter(str(row[0]), str(row[1] or ""), row[2], float(row[3] or 0.0))
        return QueueSnapshot(
            states=states,
            oldest_pending_age=max(0.0, now - float(oldest)) if oldest is not None else None,
            last_delivery=float(last) if last is not None else None,
            blocked=blocked,
            last_dead=dead,
            used_bytes=await self._used(),
            limit_bytes=self.limit_bytes,
        )

    async def _used(self) -> int:
        pages = await self._scalar("PRAGMA page_count")
        free = await self._scalar("PRAGMA freelist_count")
        size = await self._scalar("PRAGMA page_size")
        return int((pages - free) * size)

    async def _scalar(self, sql: str) -> Any:
        async with self._conn.execute(sql) as cur:
            row = await cur.fetchone()
        return row[0] if row else None
