"""One group commit's events in, outcomes out: insert, merge copies, learn profiles; and the
profile completion of claimed events. The outbox runs these inside its transactions.

Plain functions on a connection, like `rows.py` (the SQL) and `profiles.py`; the merge
rules themselves are pure (`gateway/pipeline/assembly.py`).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

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


async def store(
    conn: aiosqlite.Connection,
    rows: Sequence[NewEvent],
    holds: Sequence[float],
    *,
    sealer: Sealer,
    policy: ProfilePolicy | None,
    now: float,
    insight: InsightPolicy | None = None,
) -> list[Outcome]:
    """Insert new events, merge copies into stored ones, learn profiles, record insights
    (facts and touchpoints, with `insight`); per row its outcome."""
    first: dict[tuple[str, str, str], int] = {}
    for index, ev in enumerate(rows):
        first.setdefault((ev.pixel_id, ev.event_name, ev.event_id), index)
    heads = sorted(first.values())
    # Hashed once here: learning below and the completion at claim both use them.
    keys: list[list[str]] = (
        [profiles.visitor_keys(policy, ev.clear, ev.links) for ev in rows]
        if policy is not None
        else [[] for _ in rows]
    )
    inserted = await rows_sql.insert(
        conn,
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
        results = await rows_sql.assemble(
            conn,
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
        await _learn(conn, rows, outcomes, states, keys, policy, now)
    if insight is not None:
        new = {
            i for i in heads if (rows[i].pixel_id, rows[i].event_name, rows[i].event_id) in inserted
        }
        await insights.record(conn, insight, rows, outcomes, new, now, states)
    return outcomes


async def _learn(
    conn: aiosqlite.Connection,
    rows: Sequence[NewEvent],
    outcomes: Sequence[Outcome],
    states: Sequence[assembly.State | None],
    keys: Sequence[Sequence[str]],
    policy: ProfilePolicy,
    now: float,
) -> None:
    """One upsert per distinct profile of the batch (`profiles.learn` unites them).

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
        stored = await profiles.resolve(conn, wanted, now=now) if wanted else {}
        for ids, links in orphans:
            targets = {batch.get(k) or stored.get(k) for k in links}
            items += [(target, ids) for target in sorted(t for t in targets if t)]
    await profiles.link(conn, pairs, ttl=policy.ttl, now=now)
    await profiles.learn(conn, items, ttl=policy.ttl, now=now)


async def completions(
    conn: aiosqlite.Connection,
    events: Mapping[int, dict[str, Any]],
    policy: ProfilePolicy,
    now: float,
    stored_keys: Mapping[int, str | None] | None = None,
) -> dict[int, tuple[dict[str, Any], tuple[str, ...]]]:
    """Claimed events (row id -> event as sent) completed from their visitors' profiles,
    one read per batch: those that gained identifiers, with the keys added.

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
    found = await profiles.lookup(conn, (k for ks in keys.values() for k in ks), now=now)
    out: dict[int, tuple[dict[str, Any], tuple[str, ...]]] = {}
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
    """Record completed events on the rows `owner` holds (run in a write transaction)."""
    await rows_sql.record_completed(conn, {i: event for i, (event, _) in done.items()}, owner)
