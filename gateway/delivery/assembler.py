"""One group commit's events in, outcomes out: insert, merge copies, learn profiles. Both
stores run this inside their transactions (the completion of claimed events from their
visitors' profiles is `gateway.delivery.completion`).

The orchestration is shared; the SQL comes from the backend as an `AssemblySql` (the SQLite
store's `SqliteSql` below, `gateway.delivery.postgres.rows.PgSql`). The merge rules
themselves are pure (`gateway/pipeline/assembly.py`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Protocol

import aiosqlite

from gateway.delivery import insights, profiles
from gateway.delivery import rows as rows_sql
from gateway.delivery.insightfacts import InsightPolicy
from gateway.delivery.profiles import ProfilePolicy
from gateway.delivery.seal import Sealer
from gateway.models import NewEvent
from gateway.pipeline import assembly
from gateway.pipeline.assembly import Outcome

log = logging.getLogger("gateway.outbox")

Merged = tuple[Outcome, assembly.State | None, list[str]]


def hold_of(ev: NewEvent, assembly_hold: float) -> float:
    """Seconds `ev` waits before its first send: its own hold, else none for a PageView
    and `assembly_hold` for every other event (both outboxes)."""
    if ev.hold is not None:
        return ev.hold
    return 0.0 if ev.event_name == "PageView" else assembly_hold


class AssemblySql(Protocol):
    """A backend's statements for one group commit, bound to its transaction's connection."""

    # Whether rows may be stored with `profile_seen` (schema migration 7): only where one
    # writer at a time commits, with `now` taken under its lock, so that a profile changed
    # by a later commit always has a later `updated_at`.
    tracks_seen: bool

    async def insert(
        self,
        rows: Sequence[NewEvent],
        sealed: Sequence[bytes | None],
        holds: Sequence[float],
        now: float,
        profile_keys: Sequence[str | None] | None,
        profile_seen: Sequence[float | None] | None,
    ) -> set[tuple[str, str, str]]:
        """Insert new rows; the keys of those inserted (the others are copies).

        `profile_seen`: per row, the time to record as `profile_seen` if no profile exists
        yet under its one profile key (None: not marked).
        """
        ...

    async def unsee(self, keys: Iterable[tuple[str, str, str]]) -> None:
        """Clear `profile_seen` of the rows of these event keys."""
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

    async def record_insights(
        self,
        policy: InsightPolicy,
        rows: Sequence[NewEvent],
        outcomes: Sequence[Outcome],
        new: set[int],
        now: float,
        states: Sequence[assembly.State | None],
    ) -> None:
        """Write the commit's report facts and touchpoints (`new`: the rows inserted)."""
        ...


class SqliteSql:
    """`AssemblySql` on the SQLite store's connection (rows.py and profiles.py)."""

    tracks_seen = True

    def __init__(self, conn: aiosqlite.Connection) -> None:
        self.conn = conn

    async def insert(
        self,
        rows: Sequence[NewEvent],
        sealed: Sequence[bytes | None],
        holds: Sequence[float],
        now: float,
        profile_keys: Sequence[str | None] | None,
        profile_seen: Sequence[float | None] | None,
    ) -> set[tuple[str, str, str]]:
        return await rows_sql.insert(
            self.conn, rows, sealed, holds, now, profile_keys, profile_seen
        )

    async def unsee(self, keys: Iterable[tuple[str, str, str]]) -> None:
        await rows_sql.unsee(self.conn, keys)

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

    async def record_insights(
        self,
        policy: InsightPolicy,
        rows: Sequence[NewEvent],
        outcomes: Sequence[Outcome],
        new: set[int],
        now: float,
        states: Sequence[assembly.State | None],
    ) -> None:
        await insights.record(self.conn, policy, rows, outcomes, new, now, states)


async def store(
    sql: AssemblySql,
    rows: Sequence[NewEvent],
    holds: Sequence[float],
    *,
    sealer: Sealer,
    policy: ProfilePolicy | None,
    now: float,
    key_order: bool = False,
    insight: InsightPolicy | None = None,
) -> list[Outcome]:
    """Insert new events, merge copies into stored ones, learn profiles, record insights
    (facts and touchpoints, with `insight`); per row its outcome.

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
        [profiles.visitor_keys(policy, ev.clear, ev.links, ev.site) for ev in rows]
        if policy is not None
        else [[] for _ in rows]
    )
    if insight is not None and policy is not None:
        # The facts' visitor is the same keyed hash of the fbp: not computed twice.
        insight.prime(policy, [ev.clear.get("fbp") for ev in rows], keys)
    seen = (
        _seen(rows, heads, keys, len(first) < len(rows), now)
        if policy is not None and sql.tracks_seen
        else {}
    )
    inserted = await sql.insert(
        [rows[i] for i in heads],
        [sealer.seal(rows[i].clear, rows[i].row_key()) for i in heads],
        [holds[i] for i in heads],
        now,
        [profiles.join_keys(keys[i]) for i in heads] if policy is not None else None,
        [seen.get(i) for i in heads] if seen else None,
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
        learned = await _learn(sql, rows, outcomes, states, keys, policy, now)
        # A row marked seen whose profile gained, in this same commit, an identifier it
        # lacks (another event of the visitor in the batch) must be compared at claim.
        # Only rows this commit inserted (a head that met a stored copy merged into it).
        stale = [
            key
            for i in seen
            if (key := (rows[i].pixel_id, rows[i].event_name, rows[i].event_id)) in inserted
            and _gained(learned.get(keys[i][0]), i, rows[i].payload)
        ]
        if stale:
            await sql.unsee(stale)
    if insight is not None:
        new = {
            i for i in heads if (rows[i].pixel_id, rows[i].event_name, rows[i].event_id) in inserted
        }
        await sql.record_insights(insight, rows, outcomes, new, now, states)
    return outcomes


def _gained(
    learned: tuple[set[str], set[int]] | None, row: int, payload: Mapping[str, Any]
) -> bool:
    """Whether a profile learned, in this commit, an identifier row `row` lacks."""
    if learned is None or learned[1] == {row}:
        return False  # nothing learned, or only what this row itself carries
    return bool(learned[0] - assembly.hashed_identifiers(payload).keys())


def _seen(
    rows: Sequence[NewEvent],
    heads: Sequence[int],
    keys: Sequence[Sequence[str]],
    has_copies: bool,
    now: float,
) -> dict[int, float]:
    """Rows (index -> `now`) that may be stored as carrying their whole profile: those found
    by their fbp alone (a stitch key leads to another visitor's profile through links that
    change on their own), none with a copy in this batch. The backend marks them only if
    no profile exists under their key yet; `store` unmarks those whose profile learns, in
    the same commit, an identifier they lack.
    """
    candidates = [
        i for i in heads if len(keys[i]) == 1 and not keys[i][0].startswith(profiles.LINK)
    ]
    if has_copies and candidates:
        count: dict[tuple[str, str, str], int] = {}
        for ev in rows:
            k = (ev.pixel_id, ev.event_name, ev.event_id)
            count[k] = count.get(k, 0) + 1
        candidates = [
            i
            for i in candidates
            if count[(rows[i].pixel_id, rows[i].event_name, rows[i].event_id)] == 1
        ]
    return dict.fromkeys(candidates, now)


async def _learn(
    sql: AssemblySql,
    rows: Sequence[NewEvent],
    outcomes: Sequence[Outcome],
    states: Sequence[assembly.State | None],
    keys: Sequence[Sequence[str]],
    policy: ProfilePolicy,
    now: float,
) -> dict[str, tuple[set[str], set[int]]]:
    """One upsert per distinct profile of the batch (the backend's `learn` unites them);
    per profile key, the names of the identifiers it learned and the rows they came from
    (-1: an event found the profile through a stitch link).

    A profile lives under the visitor's fbp; an event's stitch keys lead to it (a link
    written when an event carries both), so an event with stitch keys and no fbp (a
    webhook or backend call whose visit was not found) still feeds and finds it.
    """
    items: list[tuple[str, dict[str, list[str]]]] = []
    sources: list[int] = []  # per item, the row it came from (-1: through a stitch link)
    pairs: list[tuple[str, str]] = []  # (stitch key, fbp key)
    orphans: list[tuple[dict[str, list[str]], list[str]]] = []  # no fbp: ids, stitch keys
    for index, (ev, outcome, state, event_keys) in enumerate(
        zip(rows, outcomes, states, keys, strict=True)
    ):
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
                sources += [index] * len(fbps)
        elif ids and links:
            orphans.append((ids, links))
    if orphans:
        # Links of this batch first (the checkout page just stored), then stored ones.
        batch = dict(pairs)
        wanted = [k for _, links in orphans for k in links if k not in batch]
        stored = await sql.resolve(wanted, now=now) if wanted else {}
        for ids, links in orphans:
            targets = {batch.get(k) or stored.get(k) for k in links}
            found = sorted(t for t in targets if t)
            items += [(target, ids) for target in found]
            sources += [-1] * len(found)
    if pairs:
        await sql.link(pairs, ttl=policy.ttl, now=now)
    learned: dict[str, tuple[set[str], set[int]]] = {}
    if items:
        await sql.learn(items, ttl=policy.ttl, now=now)
        for (key, ids), source in zip(items, sources, strict=True):
            entry = learned.get(key)
            if entry is None:
                learned[key] = (set(ids), {source})
            else:
                entry[0].update(ids)
                entry[1].add(source)
    return learned
