"""The PostgreSQL outbox's send results: sent, retry, dead, release, blocked pixels.

A mixin of `PgOutbox` (gateway/delivery/postgres/outbox.py), split out for size: every
result is recorded only on rows the caller still holds the lease of.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from gateway.delivery.postgres.pool import Database
from gateway.delivery.postgres.queue import Wakes

if TYPE_CHECKING:
    import asyncpg

    from gateway.delivery.postgres.pool import Conn


# Seconds an idle sender waits before claiming again when the earliest pending row is one
# the claim skipped: held by another transaction (a claim, a group commit merging a copy
# into it: its commit wakes the sender anyway) or of a blocked pixel (parked by the next
# upkeep claim, within `CLAIM_UPKEEP_EVERY`).
HELD_RETRY = 0.05
# The first pending row in `events_due` order and whether its pixel is blocked. Not a
# filter on blocked pixels: with one it plans as a scan of every pending row.
NEXT_DUE = """
SELECT next_attempt_at, pixel_id IN (SELECT pixel_id FROM blocked_pixels) AS blocked
FROM event_queue WHERE state = 'pending' ORDER BY next_attempt_at, id LIMIT 1
"""


class Results(Wakes):
    """Send results and blocked pixels on the outbox's database."""

    db: Database
    new_work: asyncio.Event
    # When the last claim without skipped pixels found nothing (epoch seconds; 0: never).
    empty_claim_at: float = 0.0

    async def next_due(self) -> float | None:
        """Epoch seconds when the earliest pending row becomes due, None when none.

        A row that a claim would skip (held by another transaction: it was due when the last
        claim came back empty; or of a blocked pixel, not parked yet) counts as due in
        `HELD_RETRY` seconds, or the idle sender would claim again and again without sleeping.
        """

        async def first(conn: Conn) -> asyncpg.Record | None:
            return await conn.fetchrow(NEXT_DUE)

        row = await self.db.run(first, transaction=False)
        if row is None:
            return None
        at = float(row["next_attempt_at"])
        if row["blocked"] or at <= self.empty_claim_at:
            return max(at, time.time() + HELD_RETRY)
        return at

    async def mark_sent(
        self, ids: Iterable[int], owner: str, *, fbtrace_id: str | None, dry: bool = False
    ) -> None:
        """Record a confirmed delivery (or a dry-run record)."""
        await self._update(
            ids,
            owner,
            "state = $3, sent_at = $4, fbtrace_id = $5, last_error = NULL",
            ("sent-dry" if dry else "sent", time.time(), fbtrace_id),
        )

    async def mark_retry(
        self, ids: Iterable[int], owner: str, *, at: float, error: str, fbtrace_id: str | None
    ) -> None:
        """Put rows back as pending, due at `at`."""
        await self._update(
            ids,
            owner,
            "state = 'pending', next_attempt_at = $3, last_error = $4, fbtrace_id = $5",
            (at, error, fbtrace_id),
        )

    async def mark_dead(
        self, ids: Iterable[int], owner: str, *, error: str, fbtrace_id: str | None
    ) -> None:
        """Dead-letter rows with the reason (kept for `dead_retention`)."""
        await self._update(
            ids,
            owner,
            "state = 'dead', sent_at = $3, last_error = $4, fbtrace_id = $5",
            (time.time(), error, fbtrace_id),
        )

    async def release(self, ids: Iterable[int], owner: str) -> None:
        """Give leased rows back untouched (shutdown): the attempt did not happen."""
        await self._update(
            ids, owner, "state = 'pending', attempts = greatest(attempts - 1, 0)", ()
        )

    async def _update(
        self, ids: Iterable[int], owner: str, assignments: str, values: tuple[Any, ...]
    ) -> None:
        id_list = [int(i) for i in ids]
        if not id_list:
            return

        async def work(conn: Conn) -> None:
            await update_leased(conn, id_list, owner, assignments, values)

        # One statement: atomic on its own, no BEGIN/COMMIT round trips.
        await self.db.run(work, transaction=False)

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
        id_list = [int(i) for i in ids]

        async def work(conn: Conn) -> None:
            await update_leased(
                conn,
                id_list,
                owner,
                "state = 'blocked', last_error = $3, fbtrace_id = $4",
                (reason, fbtrace_id),
            )
            await conn.execute(
                "INSERT INTO blocked_pixels (pixel_id, token_fingerprint, reason, fbtrace_id, "
                "since) VALUES ($1, $2, $3, $4, $5) ON CONFLICT (pixel_id) DO UPDATE SET "
                "token_fingerprint = excluded.token_fingerprint, reason = excluded.reason, "
                "fbtrace_id = excluded.fbtrace_id",
                pixel_id,
                token_fingerprint,
                reason,
                fbtrace_id,
                time.time(),
            )
            await conn.execute(
                "UPDATE event_queue SET state = 'blocked' "
                "WHERE state = 'pending' AND pixel_id = $1",
                pixel_id,
            )

        await self.db.run(work)

    async def blocked_pixels(self) -> dict[str, str]:
        """Blocked pixel id -> fingerprint of the token that was refused."""

        async def read(conn: Conn) -> dict[str, str]:
            rows = await conn.fetch("SELECT pixel_id, token_fingerprint FROM blocked_pixels")
            return {r["pixel_id"]: r["token_fingerprint"] for r in rows}

        return await self.db.run(read, transaction=False)

    async def unblock_pixel(self, pixel_id: str) -> int:
        """Release a pixel's parked rows for sending now; returns how many."""

        async def work(conn: Conn) -> int:
            await conn.execute("DELETE FROM blocked_pixels WHERE pixel_id = $1", pixel_id)
            status = await conn.execute(
                "UPDATE event_queue SET state = 'pending', next_attempt_at = $1 "
                "WHERE state = 'blocked' AND pixel_id = $2",
                time.time(),
                pixel_id,
            )
            return affected(status)

        count = await self.db.run(work)
        self.wake()
        return count


async def update_leased(
    conn: Conn, ids: list[int], owner: str, assignments: str, values: tuple[Any, ...]
) -> None:
    """Record a result (`assignments`, values from $3) on the rows of `ids` `owner` holds."""
    await conn.execute(leased_update(assignments), ids, owner, *values)


def leased_update(assignments: str) -> str:
    """The UPDATE of `update_leased`: $1 the ids, $2 the lease owner."""
    # Only the lease holder may record a result: a row whose lease expired and was taken
    # by another replica belongs to that replica now. `IS TRUE` is no filter but a plan:
    # `state = 'inflight'` as such matches the partial index `events_leases`, which the
    # planner, on young statistics, read whole per result (ANDed with the primary key, or
    # filtered: every inflight row of every replica, and the dead entries of rows since
    # sent, ~10,000 at two replicas) instead of the batch's ids by primary key alone.
    return (
        f"UPDATE event_queue SET {assignments}, lease_owner = NULL, lease_expires = NULL "
        "WHERE id = ANY($1::bigint[]) AND (state = 'inflight') IS TRUE AND lease_owner = $2"
    )


def affected(status: str) -> int:
    """Rows a statement touched, from asyncpg's status string ("UPDATE 3", "DELETE 0")."""
    tail = status.rsplit(" ", 1)[-1]
    return int(tail) if tail.isdigit() else 0
