"""Health, /status and /metrics reads of the PostgreSQL store: the numbers of `QueueSnapshot`.

Queue depth comes from the trigger-kept counters (`queue.queue_depth`), never COUNT(*) over
the events table; the other figures read small partial indexes.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

import asyncpg

from gateway.delivery.postgres import queue
from gateway.delivery.postgres.pool import Database, DatabaseUnavailable
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
            return int(await conn.fetchval("SELECT pg_total_relation_size('events')"))

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

    async def snapshot(self) -> QueueSnapshot:
        """Depth per state, oldest pending age, last delivery, blocks, newest dead letter."""
        now = time.time()

        async def read(conn: Conn) -> QueueSnapshot:
            states = queue.totals(await queue.queue_depth(conn))
            oldest = await conn.fetchval(
                "SELECT min(created_at) FROM events WHERE state IN ('pending', 'inflight')"
            )
            last = await conn.fetchval("SELECT max(sent_at) FROM events WHERE state = 'sent'")
            dead = await conn.fetchrow(
                "SELECT pixel_id, last_error, fbtrace_id, sent_at FROM events "
                "WHERE state = 'dead' ORDER BY sent_at DESC LIMIT 1"
            )
            blocked = await conn.fetch(
                "SELECT pixel_id, reason, fbtrace_id, since FROM blocked_pixels ORDER BY pixel_id"
            )
            used = await conn.fetchval("SELECT pg_total_relation_size('events')")
            return QueueSnapshot(
                states=states,
                oldest_pending_age=max(0.0, now - float(oldest)) if oldest is not None else None,
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


async def queue_stats(db: Database) -> dict[str, Any]:
    """The numbers `queue stats` shows, in the SQLite store's shape: per state and event name
    (from the counters), oldest pending age, blocked pixels."""
    now = time.time()

    async def read(conn: Conn) -> dict[str, Any]:
        depth = await queue.queue_depth(conn)
        oldest = await conn.fetchval(
            "SELECT min(created_at) FROM events WHERE state IN ('pending', 'inflight')"
        )
        blocked = await conn.fetch(
            "SELECT pixel_id, reason, fbtrace_id, since FROM blocked_pixels ORDER BY pixel_id"
        )
        return {
            "states": queue.totals(depth),
            "by_event_name": dict(sorted(depth.items())),
            "oldest_pending_age": now - float(oldest) if oldest is not None else None,
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
