"""The SQLite outbox's send results: sent, retry, dead, release, blocked pixels.

A mixin of `Outbox` (gateway/delivery/outbox.py), split out for size, like the PostgreSQL
store's `postgres/results.py`: every result is recorded only on rows the caller still
holds the lease of (`queuerows.update_leased`), on its narrow queue row.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterable
from typing import Any

import aiosqlite

from gateway.delivery import queuerows


class Results:
    """Send results and blocked pixels on the outbox's connection."""

    _conn: aiosqlite.Connection
    _lock: asyncio.Lock

    # Provided by `Outbox`: its write transaction and the wake-up of an idle sender.
    def _transaction(self) -> contextlib.AbstractAsyncContextManager[aiosqlite.Connection]:
        raise NotImplementedError

    def wake(self, at: float = 0.0) -> None:
        """Tell an idle sender that rows become due at epoch `at` (0: now)."""
        raise NotImplementedError

    async def next_due(self) -> float | None:
        """Epoch seconds when the earliest pending row becomes due, None when none."""
        async with self._lock:  # one trip to the connection's thread, not three
            found = list(
                await self._conn.execute_fetchall(
                    "SELECT MIN(next_attempt_at) FROM event_queue WHERE state='pending'"
                )
            )
        row = found[0] if found else None
        return float(row[0]) if row and row[0] is not None else None

    async def mark_sent(
        self, ids: Iterable[int], owner: str, *, fbtrace_id: str | None, dry: bool = False
    ) -> None:
        """Record a confirmed delivery (or a dry-run record)."""
        state = "sent-dry" if dry else "sent"
        await self._update(
            ids,
            owner,
            "state=?, sent_at=?, fbtrace_id=?, last_error=NULL, lease_owner=NULL, "
            "lease_expires=NULL",
            (state, time.time(), fbtrace_id),
        )

    async def mark_retry(
        self, ids: Iterable[int], owner: str, *, at: float, error: str, fbtrace_id: str | None
    ) -> None:
        """Put rows back as pending, due at `at`."""
        await self._update(
            ids,
            owner,
            "state='pending', next_attempt_at=?, last_error=?, fbtrace_id=?, "
            "lease_owner=NULL, lease_expires=NULL",
            (at, error, fbtrace_id),
        )

    async def mark_dead(
        self, ids: Iterable[int], owner: str, *, error: str, fbtrace_id: str | None
    ) -> None:
        """Dead-letter rows with the reason (kept for `dead_retention`)."""
        await self._update(
            ids,
            owner,
            "state='dead', sent_at=?, last_error=?, fbtrace_id=?, lease_owner=NULL, "
            "lease_expires=NULL",
            (time.time(), error, fbtrace_id),
        )

    async def release(self, ids: Iterable[int], owner: str) -> None:
        """Give leased rows back untouched (shutdown): the attempt did not happen."""
        await self._update(
            ids,
            owner,
            "state='pending', attempts=MAX(attempts-1, 0), lease_owner=NULL, lease_expires=NULL",
            (),
        )

    async def _update(
        self, ids: Iterable[int], owner: str, assignments: str, values: tuple[Any, ...]
    ) -> None:
        id_list = list(ids)
        if not id_list:
            return
        if len(id_list) <= queuerows.ID_CHUNK:
            # One UPDATE is a transaction of its own (the connection autocommits, and a
            # write statement takes the write lock as BEGIN IMMEDIATE does): two trips to
            # the connection's thread fewer than BEGIN, UPDATE, COMMIT, the same one commit.
            async with self._lock:
                await queuerows.update_leased(self._conn, id_list, owner, assignments, values)
            return
        async with self._transaction() as conn:
            await queuerows.update_leased(conn, id_list, owner, assignments, values)

    # blocked pixels -------------------------------------------------------------

    async def block_pixel(
        self,
        pixel_id: str,
        ids: Iterable[int],
        owner: str,
        *,
        token_fingerprint: str,
        reason: str,
        fbtrace_id: str | None,
    ) -> None:
        """Park a pixel whose token Meta refused, with the rows of the failed batch."""
        async with self._transaction() as conn:
            await queuerows.update_leased(
                conn,
                list(ids),
                owner,
                "state='blocked', last_error=?, fbtrace_id=?, lease_owner=NULL, lease_expires=NULL",
                (reason, fbtrace_id),
            )
            await queuerows.park_pixel(
                conn,
                pixel_id,
                token_fingerprint=token_fingerprint,
                reason=reason,
                fbtrace_id=fbtrace_id,
            )

    async def blocked_pixels(self) -> dict[str, str]:
        """Blocked pixel id -> fingerprint of the token that was refused."""
        async with (
            self._lock,
            self._conn.execute("SELECT pixel_id, token_fingerprint FROM blocked_pixels") as cur,
        ):
            return {r[0]: r[1] for r in await cur.fetchall()}

    async def unblock_pixel(self, pixel_id: str) -> int:
        """Release a pixel's parked rows for sending now; returns how many."""
        async with self._transaction() as conn:
            count = await queuerows.release_pixel(conn, pixel_id)
        self.wake()
        return int(count)
