"""One group commit's events in, outcomes out: insert, merge copies, learn profiles; and the
profile completion of claimed events. Both stores run these inside their transactions.

The orchestration is shared; the SQL comes from the backend as an `AssemblySql` (the SQLite
store's `SqliteSql` below, `gateway.delivery.postgres.rows.PgSql`). The merge rules
themselves are pure (`gateway/pipeline/assembly.py`).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import Any, Protocol

import aiosqlite

from gateway.delivery import profiles
from gateway.delivery import rows as rows_sql
from gateway.delivery.profiles import ProfilePolicy
from gateway.delivery.seal import Sealer
from gateway.models import NewEvent
from gateway.pipeline import assembly
from gateway.pipeline.assembly import Outcome

log = logging.getLogger("gateway.outbox")

Merged = tuple[Outcome, assembly.State | None, list[str]]
Found = dict[str, dict[str, list[str]]]


class AssemblySql(Protocol):
    """A backend's statements for one group commit, bound to its transaction's connection."""

    async def insert(
        self,
        rows: Sequence[NewEvent],
        sealed: Sequence[bytes | None],
        holds: Sequence[float],
        now: float,
        profile_keys: Sequence[str | None] | None,
    ) -> set[tuple[str, str, str]]:
        """Insert new rows; the keys of those inserted (the others are copies)."""
        ...

    async def assemble(
        self,
        copies: Sequence[NewEvent],
        holds: Sequence[float],
        open_sealed: Callable[[bytes | None, str], dict[str, Any]],
        seal: Callable[[dict[str, Any], str], bytes | None],
        now: float,
        profile_keys: Sequence[Sequence[str]] | None,
    ) -> list[Merged]:
        """Merge copies into their stored rows: per copy its outcome, state and keys."""
        ...

    async def resolve(self, links: Iterable[str], *, now: float) -> dict[str, str]:
        """Stitch-key links -> the profile key they lead to."""
        ...

    async def link(self, pairs: Iterable[tuple[str, str]], *, ttl: float, now: float) -> None:
        """Record (stitch key, profile key) links."""
        ...

    async def learn(
        self,
        items: Sequence[tuple[str, Mapping[str, Sequence[str]]]],
        *,
        ttl: float,
        now: float,
    ) -> int:
        """Unite identifiers into profiles; how many profiles were written."""
        ...


class SqliteSql:
    """`AssemblySql` on the SQLite store's connection (rows.py and profiles.py)."""

    def __init__(self, conn: aiosqlite.Connection) -> None:
        self.conn = conn

    async def insert(
        self,
        rows: Sequence[NewEvent],
        sealed: Sequence[bytes | None],
        holds: Sequence[float],
        now: float,
        profile_keys: Sequence[str | None] | None,
    ) -> set[tuple[str, str, str]]:
        return await rows_sql.insert(self.conn, rows, sealed, holds, now, profile_keys)

    async def assemble(
        self,
        copies: Sequence[NewEvent],
        holds: Sequence[float],
        open_sealed: Callable[[bytes | None, str], dict[str, Any]],
        seal: Callable[[dict[str, Any], str], bytes | None],
        now: float,
        profile_keys: Sequence[Sequence[str]] | None,
    ) -> list[Merged]:
        return await rows_sql.assemble(
            self.conn, copies, holds, open_sealed, seal, now, profile_keys
        )

    async def resolve(self, links: Iterable[str], *, now: float) -> dict[str, str]:
        return await profiles.resolve(self.conn, links, now=now)

    async def link(self, pairs: Iterable[tuple[str, str]], *, ttl: float, now: float) -> None:
        await profiles.link(self.conn, pairs, ttl=ttl, now=now)

    async def learn(
        self,
        items: Sequence[tuple[str, Mapping[str, Sequence[str]]]],
        *,
        ttl: float,
        now: float,
    ) -> int:
        return await profiles.learn(self.conn, items, ttl=ttl, now=now)


async def store(
    sql: AssemblySql,
    rows: Sequence[NewEvent],
    holds: Sequence[float],
    *,
    sealer: Sealer,
    policy: ProfilePolicy | None,
    now: float,
    key_order: bool = False,
) -> list[Outcome]:
    """Insert new events, merge copies into stored ones, learn profiles; per row its outcome.

    `key_order`: insert in event-key order (PostgreSQL: two replicas inserting overlapping
    batches then take the index locks in one order and wait instead of deadlocking);
    otherwise in arrival order.
    """
    first: dict[tuple[str, str, str], int] = {}
    for index, ev in enumerate(rows):
        first.setdefault((ev.pixel_id, ev.event_name, ev.event_id), index)
    heads = sorted(first.values(), key=(lambda i: rows[i].row_key()) if key_order else None)
    # Hashed once here: learning below and the completion at claim both use them.
    keys: list[list[str]] = (
        [profiles.visitor_keys(policy, ev.clear, ev.links) for ev in rows]
        if policy is not None
        else [[] for _ in rows]
    )
    inserted = await sql.insert(
        [rows[i] for i in heads],
        [sealer.seal(rows[i].clear, rows[i].row_key()) for i in heads],
        [holds[i] for i in heads],
        now,
        [profiles.join_keys(keys[i]) for i in heads] if policy is not None else None,
    )
    outcomes: list[Outcome] = ["new"] * len(rows)
    states: list[assembly.State | None] = [None] * len(rows)
    copies = [
        i
        for i, ev in enumerate(rows)
        if first[(ev.pixel_id, ev.event_name, ev.event_id)] != i
        or (ev.pixel_id, ev.event_name, ev.event_id) not in inserted
    ]
    if copies:
        results = await sql.assemble(
            [rows[i] for i in copies],
            [holds[i] for i in copies],
            sealer.open,
            sealer.seal,
            now,
            [keys[i] for i in copies] if policy is not None else None,
        )
        for i, (outcome, state, row_keys) in zip(copies, results, strict=True):
            outcomes[i], states[i] = outcome, state
            if policy is not None:
                keys[i] = row_keys
            if outcome == "late":
                log.info(
                    "A copy of event %s (%s) came after its send: recorded, not sent.",
                    rows[i].event_id,
                    rows[i].event_name,
                )
    if policy is not None:
        await _learn(sql, rows, outcomes, states, keys, policy, now)
    return outcomes


async def _learn(
    sql: AssemblySql,
    rows: Sequence[NewEvent],
    outcomes: Sequence[Outcome],
    states: Sequence[assembly.State | None],
    keys: Sequence[Sequence[str]],
    policy: ProfilePolicy,
    now: float,
) -> None:
    """One upsert per distinct profile of the batch (the backend's `learn` unites them).

    A profile lives under the visitor's fbp; an event's stitch keys lead to it (a link
    written when an event carries both), so an event with stitch keys and no fbp (a
    webhook or backend call whose visit was not found) still feeds and finds it.
    """
    items: list[tuple[str, dict[str, list[str]]]] = []
    pairs: list[tuple[str, str]] = []  # (stitch key, fbp key)
    orphans: list[tuple[dict[str, list[str]], list[str]]] = []  # no fbp: ids, stitch keys
    for ev, outcome, state, event_keys in zip(rows, outcomes, states, keys, strict=True):
        if outcome == "late" or not event_keys:
            continue
        payload = state.payload if state else ev.payload
        if assembly.is_restricted(payload):
            continue
        ids = assembly.hashed_identifiers(payload)
        fbps = [k for k in event_keys if not k.startswith(profiles.LINK)]
        links = [k for k in event_keys if k.startswith(profiles.LINK)]
        if fbps:
            pairs += [(link, fbps[0]) for link in links]
            if ids:
                items += [(key, ids) for key in fbps]
        elif ids and links:
            orphans.append((ids, links))
    if orphans:
        # Links of this batch first (the checkout page just stored), then stored ones.
        batch = dict(pairs)
        wanted = [k for _, links in orphans for k in links if k not in batch]
        stored = await sql.resolve(wanted, now=now) if wanted else {}
        for ids, links in orphans:
            targets = {batch.get(k) or stored.get(k) for k in links}
            items += [(target, ids) for target in sorted(t for t in targets if t)]
    if pairs:
        await sql.link(pairs, ttl=policy.ttl, now=now)
    if items:
        await sql.learn(items, ttl=policy.ttl, now=now)


async def completions(
    lookup: Callable[[list[str]], Awaitable[Found]],
    events: Mapping[int, dict[str, Any]],
    policy: ProfilePolicy,
    stored_keys: Mapping[int, str | None] | None = None,
) -> dict[int, tuple[dict[str, Any], tuple[str, ...]]]:
    """Claimed events (row id -> event as sent) completed from their visitors' profiles,
    one `lookup` (profile keys -> live profiles) per batch: those that gained identifiers,
    with the keys added.

    `stored_keys`: the rows' `profile_keys` columns; a row without one (stored while
    profiles were off) is found by its fbp.
    """
    stored = stored_keys or {}
    keys = {
        row_id: profiles.split_keys(stored[row_id])
        if stored.get(row_id) is not None
        else profiles.visitor_keys(policy, event.get("user_data", {}))
        for row_id, event in events.items()
    }
    wanted = [k for ks in keys.values() for k in ks]
    out: dict[int, tuple[dict[str, Any], tuple[str, ...]]] = {}
    if not wanted:
        return out
    found = await lookup(wanted)
    if not found:
        return out
    for row_id, event in events.items():
        added: tuple[str, ...] = ()
        for key in keys[row_id]:
            profile = found.get(key)
            # Most events of a known visitor carry what their profile holds already.
            if profile is not None and not assembly.carries(event, profile):
                event, more = assembly.complete(event, profile)
                added += more
        if added:
            out[row_id] = (event, added)
    return out


async def record(
    conn: aiosqlite.Connection,
    done: Mapping[int, tuple[dict[str, Any], tuple[str, ...]]],
    owner: str,
) -> None:
    """Record completed events on the rows `owner` holds (SQLite; run in a write transaction)."""
    await rows_sql.record_completed(conn, {i: event for i, (event, _) in done.items()}, owner)
