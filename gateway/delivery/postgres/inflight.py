"""Event keys in open group commits, so that a copy of one does not stall another commit.

A copy's `INSERT … ON CONFLICT` of a key that another open transaction has just inserted
waits for that whole transaction (PostgreSQL must know whether the key commits). In a group
commit that wait held up every other event of the batch, and the keys the batch had
inserted so far held up the other replicas' copies in turn: with copies of recent events
arriving at any replica, two replicas' commits took turns instead of overlapping (half of
the active backends at two replicas were such waits; none without copies).

So while other replicas write, each group commit first registers its keys in
`event_inflight` (UNLOGGED: no WAL, and a server crash empties it, which is all it needs)
in a statement of its own, committed at once, which also returns the batch's keys that
other open commits registered. One row per open commit, its keys as an array of 64-bit
hashes: a row in and a row out per commit (one row per key cost ≈ 7 µs of database time
per event, mostly index entries). A replica alone knows its own open commits' keys and
registers nothing. The rows whose key is held go into a second transaction after the
first one commits; the first removes its keys in the transaction that commits them, so
they are "in flight" exactly while another insert of them would wait. The registry only
steers which transaction a row goes in: a key it misses (registered a moment later) waits
as before, and one left behind by a replica that died mid-commit stops counting after
`STALE_AFTER` seconds and is deleted by the upkeep.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from gateway.delivery.postgres.pool import Conn

# Seconds after which a registration no longer counts (its commit ended long ago: a
# replica killed mid-commit, a cleanup lost with its connection).
STALE_AFTER = 10.0

# Schema migration 12.
V12 = """
CREATE UNLOGGED TABLE event_inflight (
    owner text PRIMARY KEY,
    keys bigint[] NOT NULL,
    since timestamptz NOT NULL DEFAULT now()
);
"""

# A hash collision only sets a row apart that need not have been. ON CONFLICT: a run again
# after a lost connection, when the first one had registered.
_REGISTER = """
WITH mine AS (SELECT k, hashtextextended(k, 0) AS h FROM unnest($2::text[]) AS k),
reg AS (
    INSERT INTO event_inflight (owner, keys) SELECT $1, array_agg(h) FROM mine
    ON CONFLICT (owner) DO UPDATE SET keys = excluded.keys, since = now()
),
busy AS (
    SELECT DISTINCT unnest(keys) AS h FROM event_inflight
    WHERE owner <> $1 AND since > now() - make_interval(secs => $3)
)
SELECT DISTINCT k FROM mine JOIN busy USING (h)
"""

_RELEASE = "DELETE FROM event_inflight WHERE owner = $1"

_PURGE = "DELETE FROM event_inflight WHERE since < now() - make_interval(secs => $1)"


async def register(conn: Conn, owner: str, keys: Sequence[str]) -> set[str]:
    """Register `keys` as in flight for `owner` (outside any transaction); the ones other
    open commits registered."""
    rows = await conn.fetch(_REGISTER, owner, list(keys), STALE_AFTER)
    return {str(r["k"]) for r in rows}


async def release(conn: Conn, owner: str) -> None:
    """Remove `owner`'s registration (in the transaction that commits its keys)."""
    await conn.execute(_RELEASE, owner)


async def purge_stale(conn: Conn) -> int:
    """Delete registrations older than `STALE_AFTER`: those of commits that ended badly."""
    status = await conn.execute(_PURGE, STALE_AFTER)
    return int(status.split()[-1])
