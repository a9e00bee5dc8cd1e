"""The SQL of the PostgreSQL outbox's writes: insert, merge copies (profiles: `profilerows`).

Plain functions on a connection inside the caller's transaction (`Database.run`), like the
SQLite store's `rows.py`. A group commit's events go in with one `INSERT ... ON CONFLICT DO
NOTHING RETURNING`; the copies of events already stored are locked (`SELECT ... FOR UPDATE`),
merged by the same pure rules as on SQLite (`gateway/pipeline/assembly.py`), and written
back. The merge is not one `ON CONFLICT DO UPDATE` because the clear fields are sealed: only
Python holds the key that opens them. One transaction holding the row locks makes it just as
atomic, and a replica merging the same event at once waits for the lock rather than losing
a copy.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from gateway.delivery.insightfacts import InsightPolicy
from gateway.delivery.postgres.payloadjson import PAYLOAD_D
from gateway.delivery.postgres.profilerows import learn, link, resolve
from gateway.delivery.rows import BROWSER_SOURCE, MERGEABLE_STATES, match_keys
from gateway.models import NewEvent, row_key
from gateway.pipeline import assembly, jsonfast
from gateway.pipeline.assembly import Outcome
from gateway.pipeline.normalize import CLEAR_FIELDS

if TYPE_CHECKING:
    from gateway.delivery.postgres.pool import Conn

Key = tuple[str, str, str]

# The event goes into `event_data` once and its delivery state into the narrow `event_queue`
# row (schema migration 11), due after its hold; a copy of a stored key inserts neither.
# DISTINCT ON: two rows of one key in a batch get one queue row, as they get one event.
_INSERT = """
WITH u AS (
    SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::bigint[], $5::text[],
        $6::text[], $7::text[], $8::text[], $9::bytea[], $10::float8[], $11::text[],
        $12::text[], $14::text[], $15::text[], $16::float8[])
        WITH ORDINALITY AS u(p, n, i, t, s, r, tc, pl, se, due, mk, src, st, pk, ps, o)
), stored AS (
    INSERT INTO event_data (pixel_id, event_name, event_id, event_time, source, rule,
        test_event_code, payload, sealed, created_at, match_keys, received_keys, sources,
        site, profile_keys, profile_seen)
    SELECT p, n, i, t, s, r, tc, pl::json, se, $13, mk, mk, src::jsonb, st, pk, ps
    FROM u ORDER BY o
    ON CONFLICT (pixel_id, event_name, event_id) DO NOTHING
    RETURNING id, pixel_id, event_name, event_id
), queued AS (
    INSERT INTO event_queue (id, pixel_id, event_name, state, next_attempt_at, created_at)
    SELECT DISTINCT ON (stored.id) stored.id, stored.pixel_id, stored.event_name,
        CASE WHEN stored.pixel_id IN (SELECT pixel_id FROM blocked_pixels)
            THEN 'blocked' ELSE 'pending' END,
        u.due, $13
    FROM stored JOIN u ON (u.p, u.n, u.i) = (stored.pixel_id, stored.event_name, stored.event_id)
    ORDER BY stored.id, u.o
)
SELECT pixel_id, event_name, event_id FROM stored
"""
# The event rows a batch's copies merge into, locked; their queue rows locked `FOR KEY SHARE`
# only: enough to keep claims (`FOR UPDATE SKIP LOCKED`) and expiry off an event while a copy
# merges into it, not enough to make a sender's result (an UPDATE of non-key columns) wait
# for the group commit's end. Whether a copy merges or comes late is decided on the state
# read here: a row being sent (inflight) is late either way.
_LOCK = f"""
SELECT d.id, d.pixel_id, d.event_name, d.event_id, {PAYLOAD_D} AS payload, d.sealed, q.state,
    d.source, d.rule, d.sources::text AS sources, d.ranks::text AS ranks, d.twin,
    q.next_attempt_at, q.attempts, d.late::text AS late, d.profile_keys
FROM event_data AS d JOIN event_queue AS q ON q.id = d.id
WHERE (d.pixel_id, d.event_name, d.event_id) IN (
    SELECT * FROM unnest($1::text[], $2::text[], $3::text[]))
ORDER BY d.id
FOR UPDATE OF d FOR KEY SHARE OF q
"""
# The queue row is written only when the copy moved the due time (a copy without a hold).
_SAVE_MERGED = """
WITH u AS (
    SELECT * FROM unnest($1::bigint[], $2::text[], $3::bytea[], $4::text[], $5::text[],
        $6::text[], $7::bigint[], $8::float8[], $9::bool[], $10::text[])
        AS u(id, payload, sealed, sources, ranks, match_keys, event_time, due, twin,
            profile_keys)
), due AS (
    UPDATE event_queue AS q SET next_attempt_at = u.due
    FROM u WHERE q.id = u.id AND q.next_attempt_at IS DISTINCT FROM u.due
)
UPDATE event_data AS e SET payload = u.payload::json, payload_jsonb = NULL, sealed = u.sealed,
    sources = u.sources::jsonb, ranks = u.ranks::jsonb, match_keys = u.match_keys,
    event_time = u.event_time, twin = u.twin, profile_keys = u.profile_keys
FROM u WHERE e.id = u.id
"""
_SAVE_LATE = """
UPDATE event_data AS e SET late = u.late::jsonb, twin = u.twin
FROM unnest($1::bigint[], $2::text[], $3::bool[]) AS u(id, late, twin)
WHERE e.id = u.id
"""


# Payloads go in as `json` text (migration 14, `payloadjson`): orjson's compact UTF-8.
_dumps = jsonfast.dumps


@functools.lru_cache(maxsize=256)
def _sources_of(label: str) -> str:
    """A new row's `sources` column: a few labels (sources, rules, mappings) over and over."""
    return json.dumps([label])


def column(values: list[Any]) -> list[Any] | None:
    """An `unnest` argument: NULL for a column of NULLs (`unnest` of several arrays pads a
    NULL or shorter one with NULLs). asyncpg checks every element of an array it encodes
    (a few ABC `isinstance` calls each); most events have no rule, test code, site or
    `profile_seen`."""
    return None if all(v is None for v in values) else values


async def insert(
    conn: Conn,
    rows: Sequence[NewEvent],
    sealed: Sequence[bytes | None],
    holds: Sequence[float],
    now: float,
    profile_keys: Sequence[str | None] | None = None,
    profile_seen: Sequence[float | None] | None = None,
) -> set[Key]:
    """Insert rows as pending, due after their hold (parked at once if their pixel is
    blocked: claims do not look for them); the keys that were new.

    `profile_keys`: per row, its `profile_keys` column (see `profiles.join_keys`).
    """
    if not rows:
        return set()
    keys = [match_keys(ev.payload.get("user_data"), ev.clear) for ev in rows]
    inserted = await conn.fetch(
        _INSERT,
        [ev.pixel_id for ev in rows],
        [ev.event_name for ev in rows],
        [ev.event_id for ev in rows],
        [ev.event_time for ev in rows],
        [ev.source for ev in rows],
        column([ev.rule for ev in rows]),
        column([ev.test_event_code for ev in rows]),
        [jsonfast.dumps(ev.payload) for ev in rows],
        list(sealed),
        [now + hold for hold in holds],
        keys,
        [_sources_of(assembly.label(ev.source, ev.rule)) for ev in rows],
        now,
        column([ev.site for ev in rows]),
        column(list(profile_keys)) if profile_keys is not None else None,
        column(list(profile_seen)) if profile_seen is not None else None,
    )
    return {(r["pixel_id"], r["event_name"], r["event_id"]) for r in inserted}


@dataclass(slots=True)
class _Stored:
    id: int
    state: str
    attempts: int
    due: float
    twin: bool
    browser: bool
    assembled: assembly.State
    late: dict[str, Any] | None
    profile_keys: list[str]
    changed: bool = False


async def assemble(
    conn: Conn,
    copies: Sequence[NewEvent],
    holds: Sequence[float],
    open_sealed: Callable[[bytes | None, str], dict[str, Any]],
    seal: Callable[[dict[str, Any], str], bytes | None],
    now: float,
    profile_keys: Sequence[Sequence[str]] | None = None,
) -> list[tuple[assembly.Outcome, assembly.State | None, list[str]]]:
    """Merge copies of stored events into them (rows locked), in order; per copy its outcome.

    The same rules as the SQLite store's `rows.assemble`: "merged" into an unsent row (with
    the row's profile keys united with the copy's `profile_keys`), "late" (recorded in the
    row's `late` column) once it was sent or is being sent.
    """
    wanted = sorted({(ev.pixel_id, ev.event_name, ev.event_id) for ev in copies})
    found: dict[Key, _Stored] = {}
    for r in await conn.fetch(
        _LOCK, [k[0] for k in wanted], [k[1] for k in wanted], [k[2] for k in wanted]
    ):
        key = (r["pixel_id"], r["event_name"], r["event_id"])
        found[key] = _Stored(
            id=int(r["id"]),
            state=str(r["state"]),
            attempts=int(r["attempts"]),
            due=float(r["next_attempt_at"]),
            twin=bool(r["twin"]),
            browser=r["source"] == BROWSER_SOURCE,
            assembled=assembly.restore(
                jsonfast.loads(r["payload"]),
                open_sealed(r["sealed"], row_key(*key)),
                source=r["source"],
                rule=r["rule"],
                sources=json.loads(r["sources"]) if r["sources"] else None,
                ranks=json.loads(r["ranks"]) if r["ranks"] else None,
            ),
            late=json.loads(r["late"]) if r["late"] else None,
            profile_keys=str(r["profile_keys"]).split(",") if r["profile_keys"] else [],
        )
    out: list[tuple[assembly.Outcome, assembly.State | None, list[str]]] = []
    copy_keys: Sequence[Sequence[str]] = (
        profile_keys if profile_keys is not None else [()] * len(copies)
    )
    for ev, hold, keys in zip(copies, holds, copy_keys, strict=True):
        row = found.get((ev.pixel_id, ev.event_name, ev.event_id))
        if row is None:
            # Deleted between the insert and the lock (a purge): nothing to merge into.
            raise LookupError(f"event {ev.row_key()!r} vanished inside its transaction")
        out.append(_merge_one(row, ev, hold, now, keys))
    merged = [(k, r) for k, r in found.items() if r.changed and r.state in MERGEABLE_STATES]
    late = [(k, r) for k, r in found.items() if r.changed and r.state not in MERGEABLE_STATES]
    if merged:
        states = [r.assembled for _, r in merged]
        await conn.execute(
            _SAVE_MERGED,
            [r.id for _, r in merged],
            [_dumps(s.payload) for s in states],
            [seal(s.clear, row_key(*k)) for (k, _), s in zip(merged, states, strict=True)],
            [json.dumps(list(s.sources)) for s in states],
            [json.dumps(s.ranks, separators=(",", ":"), sort_keys=True) for s in states],
            [match_keys(s.payload.get("user_data"), s.clear) for s in states],
            [int(s.payload.get("event_time", 0)) for s in states],
            [r.due for _, r in merged],
            [r.twin for _, r in merged],
            [",".join(r.profile_keys) or None for _, r in merged],
        )
    if late:
        await conn.execute(
            _SAVE_LATE,
            [r.id for _, r in late],
            [_dumps(r.late) for _, r in late],
            [r.twin for _, r in late],
        )
    return out


def _merge_one(
    row: _Stored, ev: NewEvent, hold: float, now: float, keys: Sequence[str]
) -> tuple[assembly.Outcome, assembly.State | None, list[str]]:
    browser = ev.source == BROWSER_SOURCE
    if browser != row.browser and not row.twin:
        # The browser's and the server's side of one event: the pair deduplicates.
        row.twin, row.changed = True, True
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
        return ("late", None, [])
    fresh = [k for k in keys if k not in row.profile_keys]
    if fresh:
        row.profile_keys, row.changed = row.profile_keys + fresh, True
    if merged.added or merged.state.sources != row.assembled.sources:
        row.assembled, row.changed = merged.state, True
    if row.attempts == 0 and now + hold < row.due:
        # A copy that may go at once (hold 0: its source has nothing more to wait for).
        row.due, row.changed = now + hold, True
    return ("merged", row.assembled, row.profile_keys)


async def record_completed(
    conn: Conn, done: Mapping[int, tuple[dict[str, Any], tuple[str, ...]]], owner: str
) -> None:
    """Record on claimed rows `owner` holds the identifiers their visitors' profiles added."""
    params = []
    for row_id, (event, _) in done.items():
        user_data = dict(event.get("user_data") or {})
        hashed = {k: v for k, v in user_data.items() if k not in CLEAR_FIELDS}
        clear = {k: v for k, v in user_data.items() if k in CLEAR_FIELDS}
        params.append((_dumps({**event, "user_data": hashed}), match_keys(hashed, clear), row_id))
    # One statement over arrays, not one execution per completed row.
    await conn.execute(
        "UPDATE event_data AS e SET payload = u.payload::json, payload_jsonb = NULL, "
        "match_keys = u.match_keys "
        "FROM unnest($1::text[], $2::text[], $3::bigint[]) AS u(payload, match_keys, id), "
        "event_queue AS q WHERE e.id = u.id AND q.id = u.id AND q.lease_owner = $4",
        [p[0] for p in params],
        [p[1] for p in params],
        [p[2] for p in params],
        owner,
    )


class PgSql:
    """`gateway.delivery.assembler.AssemblySql` on a connection in a PostgreSQL transaction."""

    def __init__(self, conn: Conn, record: Callable[..., Awaitable[None]] | None = None) -> None:
        self.conn = conn
        # `postgres.insights.record`, handed in by the outbox: that module reads through
        # this one, so this one cannot import it.
        self._record = record

    # Replicas' clocks and concurrent transactions make `profile_seen` unsafe here: every
    # claimed row's profile is compared (the rows are stored without it).
    tracks_seen = False

    async def insert(
        self,
        rows: Sequence[NewEvent],
        sealed: Sequence[bytes | None],
        holds: Sequence[float],
        now: float,
        profile_keys: Sequence[str | None] | None,
        profile_seen: Sequence[float | None] | None,
    ) -> set[Key]:
        return await insert(self.conn, rows, sealed, holds, now, profile_keys, profile_seen)

    async def unsee(self, keys: Iterable[Key]) -> None:
        return None

    async def assemble(
        self,
        copies: Sequence[NewEvent],
        holds: Sequence[float],
        open_sealed: Callable[[bytes | None, str], dict[str, Any]],
        seal: Callable[[dict[str, Any], str], bytes | None],
        now: float,
        profile_keys: Sequence[Sequence[str]] | None,
    ) -> list[tuple[assembly.Outcome, assembly.State | None, list[str]]]:
        return await assemble(self.conn, copies, holds, open_sealed, seal, now, profile_keys)

    async def resolve(self, links: Iterable[str], *, now: float) -> dict[str, str]:
        return await resolve(self.conn, links, now=now)

    async def link(self, pairs: Iterable[tuple[str, str]], *, ttl: float, now: float) -> None:
        await link(self.conn, pairs, ttl=ttl, now=now)

    async def learn(
        self,
        items: Sequence[tuple[str, Mapping[str, Sequence[str]]]],
        *,
        ttl: float,
        now: float,
    ) -> int:
        return await learn(self.conn, items, ttl=ttl, now=now)

    async def record_insights(
        self,
        policy: InsightPolicy,
        rows: Sequence[NewEvent],
        outcomes: Sequence[Outcome],
        new: set[int],
        now: float,
        states: Sequence[assembly.State | None],
    ) -> None:
        if self._record is None:
            raise RuntimeError("PgSql: insights recorded without a recorder")
        await self._record(self.conn, policy, rows, outcomes, new, now, states)
