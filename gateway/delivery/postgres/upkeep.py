"""The PostgreSQL outbox's upkeep: expiry, retention and bounds in batches, dead letters,
match-key coverage.

A mixin of `PgOutbox` (gateway/delivery/postgres/outbox.py), split out for size. Every
purge deletes at most `PURGE_BATCH` rows per transaction, so none holds long locks.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Collection, Sequence
from typing import TYPE_CHECKING, Any

from gateway.delivery.insightfacts import InsightPolicy
from gateway.delivery.postgres import inflight
from gateway.delivery.postgres.insights import PURGE_SQL
from gateway.delivery.postgres.pool import Database
from gateway.delivery.postgres.queue import Wakes, delete_events
from gateway.delivery.postgres.results import affected
from gateway.delivery.profiles import ProfilePolicy
from gateway.models import META_WINDOW

if TYPE_CHECKING:
    import asyncpg

    from gateway.delivery.postgres.pool import Conn

log = logging.getLogger("gateway.outbox")

# Rows per upkeep statement: each batch is its own short transaction.
PURGE_BATCH = 5000
# Dead letters kept at most (the oldest go first): a token refused for days must not
# grow the table without bound.
MAX_DEAD = 100_000


class Upkeep(Wakes):
    """Upkeep and dead-letter handling on the outbox's database."""

    db: Database
    new_work: asyncio.Event
    profiles: ProfilePolicy | None
    insights: InsightPolicy | None
    # The bounds, per instance so that tests can make them small.
    purge_batch: int = PURGE_BATCH
    max_dead: int = MAX_DEAD

    # housekeeping -----------------------------------------------------------------

    async def expire_and_purge(
        self, *, retention: float, dead_retention: float, now: float | None = None
    ) -> tuple[int, int]:
        """Dead-letter rows past Meta's window; delete old sent and dead rows, in batches
        (each its own short transaction); bound dead letters and profiles."""
        now = time.time() if now is None else now
        expired = await self._batched(
            "UPDATE event_queue SET state = 'dead', sent_at = $1, last_error = $2 WHERE id IN ("
            "SELECT id FROM events WHERE state IN ('pending', 'blocked') AND event_time < $3 "
            "LIMIT $4 FOR UPDATE SKIP LOCKED)",
            now,
            "expired: event_time is older than Meta's 7-day window",
            now - META_WINDOW,
        )
        purged = await self._batched(
            delete_events(
                "SELECT id FROM event_queue WHERE "
                "((state IN ('sent', 'sent-dry') AND sent_at < $1) "
                "OR (state = 'dead' AND sent_at < $2))"
                " LIMIT $3 FOR UPDATE SKIP LOCKED"
            ),
            now - retention,
            now - dead_retention,
        )
        # The bounds cut the excess from the oldest end: an OFFSET past the newest
        # `max_dead` (or `max_profiles`) would walk them all on every upkeep run, with
        # nothing to delete as a rule. The dead letters' number comes from the counters.
        dead = await self.db.fetchval(
            "SELECT coalesce(sum(n), 0)::bigint FROM queue_counts WHERE state = 'dead'"
        )
        purged += await self._trim(
            delete_events(
                "SELECT id FROM event_queue WHERE state = 'dead' "
                "ORDER BY sent_at, id LIMIT $1 FOR UPDATE SKIP LOCKED"
            ),
            int(str(dead)) - self.max_dead,
        )
        if self.profiles is not None:
            await self._batched(
                "DELETE FROM profiles WHERE key_hash IN (SELECT key_hash FROM profiles "
                "WHERE expires_at <= $1 LIMIT $2 FOR UPDATE SKIP LOCKED)",
                now,
            )
            # Every write sets expires_at = now + ttl: it orders profiles by last update
            # too (as on SQLite), so one index serves expiry and this cut.
            await self._trim(
                "DELETE FROM profiles WHERE key_hash IN (SELECT key_hash FROM profiles "
                "ORDER BY expires_at, key_hash LIMIT $1 FOR UPDATE SKIP LOCKED)",
                await self._profiles_over(self.profiles.max_profiles),
            )
            # Links lead nowhere once expired or once their profile is gone.
            await self._batched(
                "DELETE FROM profile_links WHERE key_hash IN (SELECT l.key_hash "
                "FROM profile_links AS l WHERE l.expires_at <= $1 OR NOT EXISTS "
                "(SELECT 1 FROM profiles AS p WHERE p.key_hash = l.profile) "
                "LIMIT $2 FOR UPDATE SKIP LOCKED)",
                now,
            )
        if self.insights is not None:
            for statement in PURGE_SQL:
                await self._batched(statement, int(now - self.insights.retention))

        # Registrations of group commits that ended without removing them (`inflight`).
        async def stale(conn: Conn) -> int:
            return await inflight.purge_stale(conn)

        await self.db.run(stale, transaction=False)
        return expired, purged

    async def _profiles_over(self, bound: int) -> int:
        """How many profiles are over `bound`: the planner's estimate while it is well
        under (no walk of the table every run), an exact count near or past it."""
        estimate = await self.db.fetchval(
            "SELECT reltuples::bigint FROM pg_class WHERE oid = to_regclass('profiles')"
        )
        # -1: never analyzed yet (a young table); autovacuum re-analyzes after 10 %
        # growth, so an estimate under half the bound cannot hide an excess.
        if estimate is not None and 0 <= int(str(estimate)) < bound // 2:
            return 0
        return int(str(await self.db.fetchval("SELECT count(*) FROM profiles"))) - bound

    async def _trim(self, sql: str, excess: int) -> int:
        """Run `sql` (its one parameter a row count) in batches until `excess` rows are
        gone or a batch comes back short (another replica trimmed meanwhile)."""
        total = 0
        while excess > 0:
            size = min(excess, self.purge_batch)

            async def work(conn: Conn, size: int = size) -> int:
                return affected(await conn.execute(sql, size))

            done = await self.db.run(work)
            total += done
            excess -= done
            if done < size:
                break
        return total

    async def _batched(self, sql: str, *args: object) -> int:
        """Run `sql` (its last parameter the batch size) until a batch comes back short."""
        total = 0
        while True:

            async def work(conn: Conn) -> int:
                return affected(await conn.execute(sql, *args, self.purge_batch))

            count = await self.db.run(work)
            total += count
            if count < self.purge_batch:
                return total

    async def purge_sent_oldest(self, *, fraction: float) -> int:
        """Delete the oldest share of delivered rows to make room."""

        async def work(conn: Conn) -> int:
            return affected(
                await conn.execute(
                    delete_events(
                        "SELECT id FROM event_queue WHERE state IN ('sent', 'sent-dry') "
                        "ORDER BY sent_at LIMIT (SELECT (count(*) * $1)::bigint + 1 "
                        "FROM event_queue WHERE state IN ('sent', 'sent-dry'))"
                    ),
                    fraction,
                )
            )

        count = await self.db.run(work)
        if count:
            log.warning("Store near max_buffer_mb: purged %d delivered rows early.", count)
        return count

    async def requeue_dead(
        self, ids: Sequence[int] | None = None, *, sites: Collection[str] | None = None
    ) -> int:
        """Queue dead letters (those of `ids`, or all; of `sites` only) for sending now;
        returns how many."""
        chosen = None if ids is None else [int(i) for i in ids]
        only = None if sites is None else sorted(sites)

        async def work(conn: Conn) -> int:
            status = await conn.execute(
                "UPDATE event_queue AS q SET state = 'pending', attempts = 0, "
                "next_attempt_at = $1, lease_owner = NULL, lease_expires = NULL "
                "FROM event_data AS d WHERE d.id = q.id AND q.state = 'dead' "
                "AND ($2::bigint[] IS NULL OR q.id = ANY($2::bigint[])) "
                "AND ($3::text[] IS NULL OR d.site = ANY($3::text[]))",
                time.time(),
                chosen,
                only,
            )
            await conn.execute(
                "DELETE FROM blocked_pixels WHERE pixel_id NOT IN "
                "(SELECT DISTINCT pixel_id FROM event_queue WHERE state = 'blocked')"
            )
            return affected(status)

        count = await self.db.run(work)
        self.wake()
        return count

    async def discard_dead(
        self, ids: Sequence[int], *, sites: Collection[str] | None = None
    ) -> int:
        """Delete the dead letters of `ids` (of `sites` only); returns how many."""
        chosen = [int(i) for i in ids]
        only = None if sites is None else sorted(sites)

        async def work(conn: Conn) -> int:
            return affected(
                await conn.execute(
                    delete_events(
                        "SELECT id FROM events WHERE state = 'dead' AND id = ANY($1::bigint[]) "
                        "AND ($2::text[] IS NULL OR site = ANY($2::text[])) FOR UPDATE"
                    ),
                    chosen,
                    only,
                )
            )

        return await self.db.run(work)

    async def match_key_coverage(self, *, since: float) -> dict[str, dict[str, Any]]:
        """Match keys as received and as sent, per event name (as the SQLite store's)."""

        async def read(conn: Conn) -> list[asyncpg.Record]:
            return await conn.fetch(
                "SELECT event_name, coalesce(received_keys, match_keys) AS received, "
                "match_keys AS sent, count(*) AS n FROM event_data "
                "WHERE created_at >= $1 AND match_keys IS NOT NULL GROUP BY 1, 2, 3",
                since,
            )

        out: dict[str, dict[str, Any]] = {}
        for r in await self.db.run(read, transaction=False):
            entry = out.setdefault(r["event_name"], {"events": 0, "keys": {}})
            entry["events"] += int(r["n"])
            for column in ("received", "sent"):
                for key in filter(None, (r[column] or "").split(",")):
                    counts = entry["keys"].setdefault(key, {"received": 0, "sent": 0})
                    counts[column] += int(r["n"])
        return dict(sorted(out.items()))
