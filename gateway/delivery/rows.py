"""The SQL over the outbox's `events` and `blocked_pixels` tables.

Plain functions on a connection, each meant to run inside a write transaction the
caller holds (`Outbox._transaction`); the outbox decides when, these decide how.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import aiosqlite

from gateway.models import NewEvent

# Rows per INSERT statement: 12 bound values each stays far below SQLite's variable limit.
_INSERT_CHUNK = 500
_COLUMNS = (
    "pixel_id, event_name, event_id, event_time, source, rule, test_event_code, payload, "
    "sealed, state, next_attempt_at, created_at, attempts, match_keys"
)
_ROW_SQL = "(?,?,?,?,?,?,?,?,?,'pending',?,?,0,?)"
# The browser's side of a twin pair: a beacon mirroring a browser-pixel event. Every other
# source (proxy PageView, rule, /events, webhook) is the server's side.
BROWSER_SOURCE = "collect"
# A duplicate from the other side marks the kept row as a twin; RETURNING then yields the row
# with twin=1, which is how `insert` tells it from a new row (always twin=0).
_ON_CONFLICT = (
    " ON CONFLICT (pixel_id, event_name, event_id) DO UPDATE SET twin=1"
    f" WHERE events.twin=0 AND (events.source='{BROWSER_SOURCE}')"
    f" <> (excluded.source='{BROWSER_SOURCE}')"
    " RETURNING pixel_id, event_name, event_id, twin"
)
# Claimed rows come back in this column order (see `claim`).
CLAIMED_COLUMNS = (
    "id, pixel_id, event_name, event_id, event_time, attempts, test_event_code, payload, sealed"
)


async def insert(
    conn: aiosqlite.Connection,
    rows: Sequence[NewEvent],
    sealed: Sequence[bytes | None],
    now: float,
) -> set[tuple[str, str, str]]:
    """Insert new rows as pending; the keys that were new (duplicates are skipped)."""
    inserted: set[tuple[str, str, str]] = set()
    for start in range(0, len(rows), _INSERT_CHUNK):
        chunk = rows[start : start + _INSERT_CHUNK]
        params: list[Any] = []
        for ev, blob in zip(chunk, sealed[start : start + _INSERT_CHUNK], strict=True):
            params += (
                ev.pixel_id,
                ev.event_name,
                ev.event_id,
                ev.event_time,
                ev.source,
                ev.rule,
                ev.test_event_code,
                json.dumps(ev.payload, separators=(",", ":")),
                blob,
                now + ev.hold,
                now,
                match_keys(ev.payload.get("user_data"), ev.clear),
            )
        sql = f"INSERT INTO events ({_COLUMNS}) VALUES " + ",".join([_ROW_SQL] * len(chunk))
        async with conn.execute(sql + _ON_CONFLICT, params) as cur:
            for r in await cur.fetchall():
                if not r[3]:
                    inserted.add((r[0], r[1], r[2]))
    return inserted


def match_keys(hashed: Any, clear: Mapping[str, Any]) -> str:
    """The `match_keys` column: the user_data keys an event carries, comma separated."""
    return ",".join((*(hashed or ()), *clear))


async def claim(
    conn: aiosqlite.Connection, owner: str, *, limit: int, lease: float, now: float
) -> list[Any]:
    """Lease due rows of unblocked pixels; raw rows in CLAIMED_COLUMNS order."""
    # Leases of crashed or stuck workers come back to the pool.
    await conn.execute(
        "UPDATE events SET state='pending', lease_owner=NULL, lease_expires=NULL "
        "WHERE state='inflight' AND lease_expires < ?",
        (now,),
    )
    await conn.execute(
        "UPDATE events SET state='blocked' WHERE state='pending' "
        "AND pixel_id IN (SELECT pixel_id FROM blocked_pixels)"
    )
    async with conn.execute(
        "UPDATE events SET state='inflight', lease_owner=?, lease_expires=?, "
        "attempts=attempts+1 WHERE id IN (SELECT id FROM events "
        "WHERE state='pending' AND next_attempt_at <= ? "
        f"ORDER BY next_attempt_at, id LIMIT ?) RETURNING {CLAIMED_COLUMNS}",
        (owner, now + lease, now, limit),
    ) as cur:
        return list(await cur.fetchall())


async def reclaim_leases(conn: aiosqlite.Connection, host: str, dead: Callable[[int], bool]) -> int:
    """Give back rows leased by processes of `host` that `dead(pid)` says are gone."""
    async with conn.execute(
        "SELECT DISTINCT lease_owner FROM events WHERE state='inflight'"
    ) as cur:
        owners = [str(r[0]) for r in await cur.fetchall() if r[0] is not None]
    count = 0
    for owner in owners:
        pid = _pid_of(owner, host)
        if pid is None or not dead(pid):
            continue
        cur = await conn.execute(
            "UPDATE events SET state='pending', lease_owner=NULL, lease_expires=NULL "
            "WHERE state='inflight' AND lease_owner=?",
            (owner,),
        )
        count += cur.rowcount
    return count


def _pid_of(owner: str, host: str) -> int | None:
    """The pid in an owner `host:pid:nonce` (gateway.delivery.sender) of this host."""
    if not owner.startswith(host + ":"):
        return None
    parts = owner[len(host) + 1 :].split(":")
    return int(parts[0]) if len(parts) == 2 and parts[0].isdigit() else None


async def update_leased(
    conn: aiosqlite.Connection,
    ids: Sequence[int],
    owner: str,
    assignments: str,
    values: tuple[Any, ...],
) -> None:
    """Apply `assignments` to the rows of `ids` that `owner` still holds."""
    for start in range(0, len(ids), 900):
        part = ids[start : start + 900]
        marks = ",".join("?" * len(part))
        # Only the lease holder may record a result: a row whose lease expired and was
        # taken by another worker belongs to that worker now.
        await conn.execute(
            f"UPDATE events SET {assignments} WHERE id IN ({marks}) "
            "AND state='inflight' AND lease_owner=?",
            (*values, *part, owner),
        )


async def park_pixel(
    conn: aiosqlite.Connection,
    pixel_id: str,
    *,
    token_fingerprint: str,
    reason: str,
    fbtrace_id: str | None,
) -> None:
    """Record the pixel as blocked and park its pending rows."""
    await conn.execute(
        "INSERT INTO blocked_pixels (pixel_id, token_fingerprint, reason, fbtrace_id, since) "
        "VALUES (?,?,?,?,?) ON CONFLICT (pixel_id) DO UPDATE SET "
        "token_fingerprint=excluded.token_fingerprint, reason=excluded.reason, "
        "fbtrace_id=excluded.fbtrace_id",
        (pixel_id, token_fingerprint, reason, fbtrace_id, time.time()),
    )
    await conn.execute(
        "UPDATE events SET state='blocked' WHERE state='pending' AND pixel_id=?", (pixel_id,)
    )


async def enrich_pending(
    conn: aiosqlite.Connection, row: NewEvent, open_sealed: Any, seal: Any
) -> bool | None:
    """Add the clear fields the stored twin of `row` lacks, while it waits to be sent.

    True: enriched (or nothing to add); False: the twin was already sent; None: no twin.
    Values already stored are never replaced: the server's own view of IP and user agent wins.
    A stored row from the other side (browser vs server) is marked as a twin either way.
    """
    async with conn.execute(
        "SELECT id, sealed, state, source, twin, match_keys FROM events "
        "WHERE pixel_id=? AND event_name=? AND event_id=?",
        (row.pixel_id, row.event_name, row.event_id),
    ) as cur:
        found = await cur.fetchone()
    if found is None:
        return None
    twin = int(found[4]) or int((found[3] == BROWSER_SOURCE) != (row.source == BROWSER_SOURCE))
    if found[2] != "pending":
        if twin != found[4]:
            await conn.execute("UPDATE events SET twin=? WHERE id=?", (twin, found[0]))
        return False
    clear: dict[str, Any] = open_sealed(found[1])
    missing = {k: v for k, v in row.clear.items() if k not in clear}
    if missing:
        # NULL keys (a row from before the column) stay unknown rather than become partial.
        keys = None if found[5] is None else ",".join(filter(None, (found[5], *missing)))
        await conn.execute(
            "UPDATE events SET sealed=?, match_keys=?, twin=? WHERE id=?",
            (seal({**clear, **missing}), keys, twin, found[0]),
        )
    elif twin != found[4]:
        await conn.execute("UPDATE events SET twin=? WHERE id=?", (twin, found[0]))
    return True


async def release_pixel(conn: aiosqlite.Connection, pixel_id: str) -> int:
    """Lift a pixel's block; its parked rows are due now. Returns how many."""
    await conn.execute("DELETE FROM blocked_pixels WHERE pixel_id=?", (pixel_id,))
    cur = await conn.execute(
        "UPDATE events SET state='pending', next_attempt_at=? WHERE state='blocked' AND pixel_id=?",
        (time.time(), pixel_id),
    )
    return int(cur.rowcount)
