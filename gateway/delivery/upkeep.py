"""The SQLite outbox's upkeep: expiry and retention, dead letters by hand, erasure, numbers.

A mixin of `Outbox` (gateway/delivery/outbox.py), split out for size as `results.py` is:
the operator's and the sender's maintenance, beside the intake and the claims.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Collection, Sequence
from typing import Any

import aiosqlite

from gateway.delivery import housekeeping, insights, profiles, reads
from gateway.delivery.forget import Person, add_counts
from gateway.delivery.forget import forget as forget_person
from gateway.delivery.insightfacts import InsightPolicy
from gateway.delivery.profiles import ProfilePolicy
from gateway.delivery.seal import Sealer

log = logging.getLogger("gateway.outbox")


class Upkeep:
    """Housekeeping on the outbox's connection."""

    _conn: aiosqlite.Connection
    _lock: asyncio.Lock
    sealer: Sealer
    profiles: ProfilePolicy | None
    insights: InsightPolicy | None

    # Provided by `Outbox`: its write transaction and the wake-up of an idle sender.
    def _transaction(self) -> contextlib.AbstractAsyncContextManager[aiosqlite.Connection]:
        raise NotImplementedError

    def wake(self, at: float = 0.0) -> None:
        """Tell an idle sender that rows become due at epoch `at` (0: now)."""
        raise NotImplementedError

    async def expire_and_purge(
        self, *, retention: float, dead_retention: float, now: float | None = None
    ) -> tuple[int, int]:
        """Dead-letter rows past Meta's window; delete old sent and dead rows (and
        expired visitor profiles, or the oldest past `profile_max`)."""
        async with self._lock:
            result = await housekeeping.expire_and_purge(
                self._conn, retention=retention, dead_retention=dead_retention, now=now
            )
        if self.profiles is not None:
            async with self._transaction() as conn:
                await profiles.purge(conn, max_profiles=self.profiles.max_profiles, now=now)
        if self.insights is not None:
            async with self._transaction() as conn:
                await insights.purge(
                    conn, retention=self.insights.retention, now=time.time() if now is None else now
                )
        return result

    async def purge_sent_oldest(self, *, fraction: float) -> int:
        """Delete the oldest share of delivered rows to make room."""
        async with self._lock:
            count = await housekeeping.purge_sent_oldest(self._conn, fraction=fraction)
        if count:
            log.warning("Outbox near max_buffer_mb: purged %d delivered rows early.", count)
        return count

    async def requeue_dead(
        self, ids: Sequence[int] | None = None, *, sites: Collection[str] | None = None
    ) -> int:
        """Queue dead letters (those of `ids`, or all; of `sites` only) for sending now;
        returns how many."""
        where, values = _dead(ids, sites)
        async with self._transaction() as conn:
            count = await housekeeping.requeue(conn, where, values)
        self.wake()
        return count

    async def discard_dead(
        self, ids: Sequence[int], *, sites: Collection[str] | None = None
    ) -> int:
        """Delete the dead letters of `ids` (of `sites` only); returns how many."""
        where, values = _dead(ids, sites)
        async with self._transaction() as conn:
            return await housekeeping.delete_rows(conn, where, values)

    async def match_key_coverage(self, *, since: float) -> dict[str, dict[str, Any]]:
        """Match keys as received and as sent, per event name (see housekeeping)."""
        async with self._lock:
            return await reads.match_key_coverage(self._conn, since=since)

    async def forget(
        self, person: Person, key: bytes, *, sites: Collection[str] | None = None
    ) -> dict[str, int]:
        """Erase a person from unsent events, profiles and stitched visits (see forget.py);
        `sites`: of those sites only (a tenant's erasure)."""
        async with self._transaction() as conn:
            if sites is None:
                return await forget_person(conn, self.sealer, key, person)
            return add_counts(
                [await forget_person(conn, self.sealer, key, person, site=s) for s in sites]
            )

    async def stats(self) -> dict[str, Any]:
        """Counts per state and per event name, oldest pending age, blocked pixels."""
        async with self._lock:
            return await reads.queue_stats(self._conn)


def _dead(ids: Sequence[int] | None, sites: Collection[str] | None = None) -> tuple[str, list[Any]]:
    """The WHERE clause selecting dead letters, all of them or those of `ids` (of `sites`)."""
    where, values = " WHERE state='dead'", []
    if ids is not None:
        chosen: list[Any] = [int(i) for i in ids]
        where += f" AND id IN ({','.join('?' * len(chosen))})"
        values += chosen
    if sites is not None:
        where += f" AND site IN ({','.join('?' * len(sites))})"
        values += sorted(sites)
    return where, values
