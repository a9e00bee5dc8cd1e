"""The outbox queue's claim and depth queries on PostgreSQL, shared by every replica.

Plain functions on a connection, run inside the caller's transaction (`Database.run`), like
the SQLite store's `rows.py`: the store decides when, these decide how. A claim locks due
rows with `FOR UPDATE SKIP LOCKED`, so replicas claiming at the same moment each get other
rows instead of waiting on one another, and leases them: a replica that dies holding rows
loses them when the lease expires, to whichever replica claims next.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from gateway.delivery.postgres.payloadjson import PAYLOAD
from gateway.delivery.postgres.schema import STATES

if TYPE_CHECKING:
    from gateway.delivery.postgres.pool import Conn

# Claimed rows come back in this column order: the SQLite store's `rows.CLAIMED_COLUMNS`.
CLAIMED_COLUMNS = (
    "id, pixel_id, event_name, event_id, event_time, attempts, test_event_code, payload, sealed, "
    "profile_keys, profile_seen"
)
_CLAIMED_NAMES = tuple(c.strip() for c in CLAIMED_COLUMNS.split(","))
# Columns read as an expression: the payload from whichever column holds it (migration 14).
_SELECTED = {"attempts": "0 AS attempts", "payload": f"{PAYLOAD} AS payload"}
# Expired leases taken back per claim: a dead replica's rows return over a few claims
# rather than in one long statement.
RECLAIM_BATCH = 1000

_RECLAIM = """
WITH expired AS (
    SELECT id FROM event_queue
    WHERE state = 'inflight' AND lease_expires < $1
    ORDER BY lease_expires LIMIT $2
    FOR UPDATE SKIP LOCKED
)
UPDATE event_queue AS e SET state = 'pending', lease_owner = NULL, lease_expires = NULL
WHERE e.id = ANY(ARRAY(SELECT id FROM expired))
"""
# Rows of a blocked pixel are parked when stored (`rows.insert`); those a transaction stored
# while the block was being committed are parked by the upkeep claims, once a second, and
# never claimed meanwhile. Parking on every claim scanned every pending row (the whole
# backlog) each time. The EXISTS is a one-time filter: with no pixel blocked the statement
# reads nothing (in the update too: the narrow `event_queue` looks cheap enough to the planner
# to scan whole while its statistics are young).
_PARK = """
WITH parkable AS (
    SELECT e.id FROM event_queue AS e JOIN blocked_pixels AS b ON b.pixel_id = e.pixel_id
    WHERE e.state = 'pending' AND EXISTS (SELECT 1 FROM blocked_pixels)
    FOR UPDATE OF e SKIP LOCKED
)
UPDATE event_queue AS e SET state = 'blocked'
WHERE e.id = ANY(ARRAY(SELECT id FROM parkable)) AND EXISTS (SELECT 1 FROM blocked_pixels)
"""
# Two shapes the planner would otherwise pick on plain tables, each reading every row of
# `events` per claim: blocked pixels' rows are filtered by a hashed subplan, not NOT EXISTS
# (as an anti-join, with one pixel in the table and any pixel blocked, it estimates that no
# row passes, then scans the table and sorts instead of reading `events_due` in order); the
# claimed rows are updated by primary key (`= ANY` of an array), not joined back to the CTE
# (a hash join over a sequential scan of the table while it has up to ~100k rows).
_CLAIM = """
WITH due AS (
    SELECT id FROM event_queue
    WHERE state = 'pending' AND next_attempt_at <= $3 AND pixel_id <> ALL($5::text[])
        AND (pixel_id IN (SELECT pixel_id FROM blocked_pixels)) IS NOT TRUE
    ORDER BY next_attempt_at, id LIMIT $4
    FOR UPDATE SKIP LOCKED
)
UPDATE event_queue AS e
SET state = 'inflight', lease_owner = $1, lease_expires = $2, attempts = e.attempts + 1
WHERE e.id = ANY(ARRAY(SELECT id FROM due))
RETURNING e.id, e.attempts
"""
# The claimed events, read by a statement of their own after the claim: one snapshot taken
# after the claim's row locks, so a copy merged (and committed) just before the claim took a
# row is in what is sent; once claimed, a copy only records itself as late.
# `attempts` lives on the queue row (read by the claim): a placeholder keeps the columns in
# `CLAIMED_COLUMNS` order for `dict(record)`.
_CLAIMED = f"""
SELECT {", ".join(_SELECTED.get(c, c) for c in _CLAIMED_NAMES)}
FROM event_data WHERE id = ANY($1::bigint[])
"""


def delete_events(chosen: str) -> str:
    """A DELETE of the events whose ids the query `chosen` selects, from both of their
    tables (schema migration 11); its status counts each event once."""
    return (
        f"WITH gone AS (DELETE FROM event_queue WHERE id IN ({chosen}) RETURNING id) "
        "DELETE FROM event_data WHERE id IN (SELECT id FROM gone)"
    )


class Wakes:
    """The outbox's wake-ups of an idle sender (the SQLite outbox's `wake`/`take_wake_at`)."""

    new_work: asyncio.Event
    # The earliest due time committed since the sender last looked (see `take_wake_at`).
    _wake_at: float = math.inf

    def wake(self, at: float = 0.0) -> None:
        """Tell an idle sender that rows become due at epoch `at` (0: now)."""
        self._wake_at = min(self._wake_at, at)
        self.new_work.set()

    def take_wake_at(self) -> float:
        """The earliest due time announced by `wake` since the last call (inf: none).

        Only this replica's commits announce theirs; rows another replica stored become due
        without a wake here, so the sender's idle poll bounds how late it sees them.
        """
        at, self._wake_at = self._wake_at, math.inf
        return at


async def claim(
    conn: Conn,
    owner: str,
    *,
    limit: int,
    lease: float,
    now: float,
    skip: Sequence[str] = (),
    upkeep: bool = True,
) -> list[dict[str, Any]]:
    """Lease up to `limit` due rows of unblocked pixels (none of `skip`) to `owner`; rows in
    id order.

    Rows another transaction holds (a claim, a merge) are skipped, never waited for. With
    `upkeep` expired leases are taken back and the pending rows of blocked pixels parked
    first. Run it in a transaction: the claim (on `event_queue`) and the read of the
    claimed events (`event_data`) are two statements, and a connection lost between them
    must not leave the rows leased to a sender that never saw them.
    """
    if upkeep:
        await conn.execute(_RECLAIM, now, RECLAIM_BATCH)
        await conn.execute(_PARK)
    taken = {
        int(r["id"]): int(r["attempts"])
        for r in await conn.fetch(_CLAIM, owner, now + lease, now, limit, list(skip))
    }
    if not taken:
        return []
    claimed = []
    # dict(record) in C, not a lookup by name per column: ~4 % of a replica's CPU.
    for r in sorted(await conn.fetch(_CLAIMED, list(taken)), key=_by_id):
        row = dict(r)
        row["attempts"] = taken[row["id"]]
        claimed.append(row)
    return claimed


def _by_id(r: Any) -> int:
    return int(r["id"])


async def queue_depth(conn: Conn) -> dict[str, dict[str, int]]:
    """Rows per event name and state, from the trigger-kept counters (no COUNT(*) scan)."""
    out: dict[str, dict[str, int]] = {}
    for r in await conn.fetch(
        "SELECT event_name, state, sum(n)::bigint AS n FROM queue_counts "
        "GROUP BY event_name, state HAVING sum(n) <> 0 ORDER BY event_name, state"
    ):
        out.setdefault(r["event_name"], {})[r["state"]] = int(r["n"])
    return out


def totals(depth: dict[str, dict[str, int]]) -> dict[str, int]:
    """Rows per state over all event names, every state present (0 when none)."""
    states = dict.fromkeys(STATES, 0)
    for by_state in depth.values():
        for state, n in by_state.items():
            states[state] = states.get(state, 0) + n
    return states
