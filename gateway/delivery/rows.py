"""The SQL over the outbox's events: stored, merged, claimed, completed.

Plain functions on a connection, each meant to run inside a write transaction the
caller holds (`Outbox._transaction`); the outbox decides when, these decide how.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import aiosqlite

from gateway.delivery.queuerows import ID_CHUNK
from gateway.models import NewEvent, row_key
from gateway.pipeline import assembly, jsonfast
from gateway.pipeline.normalize import CLEAR_FIELDS

# Rows per INSERT statement: 17 bound values each stays far below SQLite's variable limit.
_INSERT_CHUNK = 500
_COLUMNS = (
    "pixel_id, event_name, event_id, event_time, source, rule, test_event_code, payload, "
    "sealed, created_at, match_keys, received_keys, sources, site, profile_keys, profile_seen"
)
# `profile_seen` is recorded only while no profile exists under the row's key (the key
# passed twice: once for the column, once for this test, one index probe in the insert).
_ROW_SQL = (
    "(?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,"
    "CASE WHEN EXISTS (SELECT 1 FROM profiles WHERE key_hash = ?) THEN NULL ELSE ? END)"
)
# The browser's side of a twin pair: a beacon mirroring a browser-pixel event. Every other
# source (proxy PageView, rule, /events, webhook) is the server's side.
BROWSER_SOURCE = "collect"
# A copy of a stored event is not inserted: `assemble` merges it into the stored row.
_ON_CONFLICT = (
    " ON CONFLICT (pixel_id, event_name, event_id) DO NOTHING"
    " RETURNING id, pixel_id, event_name, event_id"
)
# Rows a later copy may still merge into: not sent, not being sent.
MERGEABLE_STATES = ("pending", "blocked")
# Claimed rows come back in this column order (see `claim`): `attempts` from the queue row,
# the others from `event_data`, read by the claimed ids.
CLAIMED_COLUMNS = (
    "id, pixel_id, event_name, event_id, event_time, attempts, test_event_code, payload, sealed, "
    "profile_keys, profile_seen"
)
_CLAIMED_DATA = CLAIMED_COLUMNS.replace("attempts", "NULL")


async def insert(
    conn: aiosqlite.Connection,
    rows: Sequence[NewEvent],
    sealed: Sequence[bytes | None],
    holds: Sequence[float],
    now: float,
    profile_keys: Sequence[str | None] | None = None,
    profile_seen: Sequence[float | None] | None = None,
) -> set[tuple[str, str, str]]:
    """Insert rows as pending, due after their hold; the keys that were new.

    A row whose key is already stored is skipped here (see `assemble`). `profile_keys`:
    per row, its column (see `profiles.join_keys`); `profile_seen`: per row, the time to
    record if no profile exists yet under its `profile_keys` (schema migration 7).
    """
    pkeys = profile_keys if profile_keys is not None else [None] * len(rows)
    seen = profile_seen if profile_seen is not None else [None] * len(rows)
    inserted: set[tuple[str, str, str]] = set()
    due: dict[str, float] = {}
    for start in range(0, len(rows), _INSERT_CHUNK):
        chunk = rows[start : start + _INSERT_CHUNK]
        params: list[Any] = []
        for ev, blob, hold, pkey, seen_at in zip(
            chunk,
            sealed[start : start + _INSERT_CHUNK],
            holds[start : start + _INSERT_CHUNK],
            pkeys[start : start + _INSERT_CHUNK],
            seen[start : start + _INSERT_CHUNK],
            strict=True,
        ):
            keys = match_keys(ev.payload.get("user_data"), ev.clear)
            params += (
                ev.pixel_id,
                ev.event_name,
                ev.event_id,
                ev.event_time,
                ev.source,
                ev.rule,
                ev.test_event_code,
                jsonfast.dumps(ev.payload),
                blob,
                now,
                keys,
                keys,
                _sources(ev.source, ev.rule),
                ev.site,
                pkey,
                pkey if seen_at is not None else None,
                seen_at,
            )
            # A key twice in one commit: the first copy is the row, as ON CONFLICT decides.
            due.setdefault(ev.row_key(), now + hold)
        sql = f"INSERT INTO event_data ({_COLUMNS}) VALUES " + ",".join([_ROW_SQL] * len(chunk))
        # One trip to the connection's thread, not three (execute, fetch, close).
        queue: list[Any] = []
        for r in await conn.execute_fetchall(sql + _ON_CONFLICT, params):
            inserted.add((r[1], r[2], r[3]))
            queue += (r[0], r[1], due[row_key(r[1], r[2], r[3])])
        if queue:
            # Each new event's delivery state: its narrow queue row, pending until due.
            await conn.execute(
                "INSERT INTO event_queue (id, pixel_id, next_attempt_at) VALUES "
                + ",".join(["(?,?,?)"] * (len(queue) // 3)),
                queue,
            )
    return inserted


@lru_cache(maxsize=256)
def _sources(source: str, rule: str | None) -> str:
    """The `sources` column of a new row: a handful of (source, rule) pairs recur."""
    return json.dumps([assembly.label(source, rule)])


@dataclass(slots=True)
class _Stored:
    id: int
    state: str
    attempts: int
    due: float
    twin: int
    browser: bool  # the first copy came from the browser (a /collect beacon)
    assembled: assembly.State
    late: dict[str, Any] | None
    profile_keys: list[str]
    changed: bool = False
    due_changed: bool = False  # `due` moved: the queue row is written too


async def assemble(
    conn: aiosqlite.Connection,
    copies: Sequence[NewEvent],
    holds: Sequence[float],
    open_sealed: Callable[[bytes | None, str], dict[str, Any]],
    seal: Callable[[dict[str, Any], str], bytes | None],
    now: float,
    profile_keys: Sequence[Sequence[str]] | None = None,
) -> list[tuple[assembly.Outcome, assembly.State | None, list[str]]]:
    """Merge copies of stored events into them, in order; per copy its outcome.

    "merged": the stored row was unsent and now carries what the copy added (the state is
    returned, with the row's profile keys united with the copy's `profile_keys`); "late":
    it was already sent or being sent, so the copy is only recorded in the row's `late`
    column (how many, and the fields they would have added).
    """
    found: dict[tuple[str, str, str], _Stored] = {}
    out: list[tuple[assembly.Outcome, assembly.State | None, list[str]]] = []
    copy_keys = profile_keys if profile_keys is not None else [()] * len(copies)
    for ev, hold, keys in zip(copies, holds, copy_keys, strict=True):
        key = (ev.pixel_id, ev.event_name, ev.event_id)
        row = found.get(key)
        if row is None:
            row = await _load(conn, ev, open_sealed)
            found[key] = row
        browser = ev.source == BROWSER_SOURCE
        if browser != row.browser and not row.twin:
            # The browser's and the server's side of one event: the pair deduplicates.
            row.twin, row.changed = 1, True
        copy = assembly.Copy(ev.payload, ev.clear, ev.source, assembly.label(ev.source, ev.rule))
        merged = assembly.merge(row.assembled, copy)
        if row.state not in MERGEABLE_STATES:
            late = row.late or {"copies": 0, "fields": []}
            late["copies"] = int(late.get("copies", 0)) + 1
            fields = list(late.get("fields", []))
            late["fields"] = fields + [f for f in merged.added if f not in fields]
            if copy.label not in late.setdefault("sources", []):
                late["sources"].append(copy.label)
            row.late, row.changed = late, True
            out.append(("late", None, []))
            continue
        fresh = [k for k in keys if k not in row.profile_keys]
        if fresh:
            row.profile_keys, row.changed = row.profile_keys + fresh, True
        if merged.added or merged.state.sources != row.assembled.sources:
            row.assembled, row.changed = merged.state, True
        if row.attempts == 0 and now + hold < row.due:
            # A copy that may go at once (hold 0: its source has nothing more to wait for).
            row.due, row.changed, row.due_changed = now + hold, True, True
        out.append(("merged", row.assembled, row.profile_keys))
    for (pixel_id, event_name, event_id), row in found.items():
        if row.changed:
            await _save(conn, row, row_key(pixel_id, event_name, event_id), seal)
    return out


_LOAD_SQL = (
    "SELECT id, payload, sealed, state, source, rule, sources, ranks, twin, next_attempt_at, "
    "attempts, late, profile_keys FROM events WHERE pixel_id=? AND event_name=? AND event_id=?"
)


async def _load(
    conn: aiosqlite.Connection,
    ev: NewEvent,
    open_sealed: Callable[[bytes | None, str], dict[str, Any]],
) -> _Stored:
    async with conn.execute(_LOAD_SQL, (ev.pixel_id, ev.event_name, ev.event_id)) as cur:
        r = await cur.fetchone()
    if r is None:  # pragma: no cover - called only for keys the INSERT found stored
        raise LookupError(f"event {ev.row_key()!r} vanished inside its transaction")
    state = assembly.restore(
        jsonfast.loads(r[1]),
        open_sealed(r[2], ev.row_key()),
        source=r[4],
        rule=r[5],
        sources=json.loads(r[6]) if r[6] else None,
        ranks=json.loads(r[7]) if r[7] else None,
    )
    return _Stored(
        id=int(r[0]),
        state=str(r[3]),
        attempts=int(r[10]),
        due=float(r[9]),
        twin=int(r[8]),
        browser=r[4] == BROWSER_SOURCE,
        assembled=state,
        late=json.loads(r[11]) if r[11] else None,
        profile_keys=r[12].split(",") if r[12] else [],
    )


async def _save(
    conn: aiosqlite.Connection,
    row: _Stored,
    ident: str,
    seal: Callable[[dict[str, Any], str], bytes | None],
) -> None:
    state = row.assembled
    if row.state in MERGEABLE_STATES:
        await conn.execute(
            "UPDATE event_data SET payload=?, sealed=?, sources=?, ranks=?, match_keys=?, "
            # A merged row may carry other profile keys than when it was stored: its
            # profile is compared again at claim (profile_seen cleared).
            "event_time=?, twin=?, profile_keys=?, profile_seen=NULL WHERE id=?",
            (
                jsonfast.dumps(state.payload),
                seal(state.clear, ident),
                json.dumps(list(state.sources)),
                json.dumps(state.ranks, separators=(",", ":"), sort_keys=True),
                match_keys(state.payload.get("user_data"), state.clear),
                int(state.payload.get("event_time", 0)),
                row.twin,
                ",".join(row.profile_keys) or None,
                row.id,
            ),
        )
        if row.due_changed:
            await conn.execute(
                "UPDATE event_queue SET next_attempt_at=? WHERE id=?", (row.due, row.id)
            )
        return
    await conn.execute(
        "UPDATE event_data SET late=?, twin=? WHERE id=?",
        (jsonfast.dumps(row.late), row.twin, row.id),
    )


def match_keys(hashed: Any, clear: Mapping[str, Any]) -> str:
    """The `match_keys` column: the user_data keys an event carries, comma separated."""
    return ",".join((*(hashed or ()), *clear))


async def claim(
    conn: aiosqlite.Connection,
    owner: str,
    *,
    limit: int,
    lease: float,
    now: float,
    skip: Sequence[str] = (),
) -> list[Any]:
    """Lease due rows of unblocked pixels (none of `skip`); raw rows in CLAIMED_COLUMNS order.

    The lease is written on the narrow queue rows only; the events are then read by id.
    Unlike the other functions here this needs no transaction around it (the outbox runs
    it on its connection in autocommit): each write is one statement, atomic on its own,
    and the events read last are leased to `owner` by then. A row deleted in between (a
    purge) is left out.
    """
    # Leases of crashed or stuck workers come back to the pool.
    await conn.execute(
        "UPDATE event_queue SET state='pending', lease_owner=NULL, lease_expires=NULL "
        "WHERE state='inflight' AND lease_expires < ?",
        (now,),
    )
    # Read first: the UPDATE walks every pending row (held ones too) even when no pixel is
    # blocked, which is almost always; at a 50,000-row backlog that was ~10 ms per claim.
    blocked = [
        str(r[0]) for r in await conn.execute_fetchall("SELECT pixel_id FROM blocked_pixels")
    ]
    if blocked:
        await conn.execute(
            "UPDATE event_queue SET state='blocked' WHERE state='pending' "
            f"AND pixel_id IN ({','.join('?' * len(blocked))})",
            blocked,
        )
    others = f" AND pixel_id NOT IN ({','.join('?' * len(skip))})" if skip else ""
    leased = await conn.execute_fetchall(
        "UPDATE event_queue SET state='inflight', lease_owner=?, lease_expires=?, "
        "attempts=attempts+1 WHERE id IN (SELECT id FROM event_queue "
        f"WHERE state='pending' AND next_attempt_at <= ?{others} "
        "ORDER BY next_attempt_at, id LIMIT ?) RETURNING id, attempts",
        (owner, now + lease, now, *skip, limit),
    )
    attempts = {int(r[0]): int(r[1]) for r in leased}
    ids = list(attempts)
    claimed: list[Any] = []
    for start in range(0, len(ids), ID_CHUNK):
        part = ids[start : start + ID_CHUNK]
        for r in await conn.execute_fetchall(
            f"SELECT {_CLAIMED_DATA} FROM event_data WHERE id IN ({','.join('?' * len(part))})",
            part,
        ):
            claimed.append((*r[:5], attempts[int(r[0])], *r[6:]))
    return claimed


async def record_completed(
    conn: aiosqlite.Connection,
    done: Mapping[int, tuple[dict[str, Any], tuple[str, ...]]],
    owner: str,
) -> None:
    """Record on claimed rows `owner` holds (row id -> event as sent, clear fields included;
    they stay sealed and out of the payload) the identifiers their visitors' profiles added,
    in one statement."""
    params = []
    for row_id, (event, _) in done.items():
        user_data = dict(event.get("user_data") or {})
        hashed = {k: v for k, v in user_data.items() if k not in CLEAR_FIELDS}
        clear = {k: v for k, v in user_data.items() if k in CLEAR_FIELDS}
        params.append(
            (
                jsonfast.dumps({**event, "user_data": hashed}),
                match_keys(hashed, clear),
                row_id,
                owner,
            )
        )
    await conn.executemany(
        "UPDATE event_data SET payload=?, match_keys=? WHERE id=? AND EXISTS "
        "(SELECT 1 FROM event_queue q WHERE q.id = event_data.id AND q.lease_owner=?)",
        params,
    )


async def unsee(conn: aiosqlite.Connection, keys: Iterable[tuple[str, str, str]]) -> None:
    """Clear `profile_seen` on the rows of these event keys: their profile gained more."""
    await conn.executemany(
        "UPDATE event_data SET profile_seen=NULL WHERE pixel_id=? AND event_name=? AND event_id=?",
        list(keys),
    )
