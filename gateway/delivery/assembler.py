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

from gateway.delivery import profiles
from gateway.delivery import rows as rows_sql
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
) -> list[Outcome]:
    """Insert new events, merge copies into stored ones, learn profiles; per row its outcome."""
    first: dict[tuple[str, str, str], int] = {}
    for index, ev in enumerate(rows):
        first.setdefault((ev.pixel_id, ev.event_name, ev.event_id), index)
    heads = sorted(first.values())
    inserted = await rows_sql.insert(
        conn,
        [rows[i] for i in heads],
        [sealer.seal(rows[i].clear, rows[i].row_key()) for i in heads],
        [holds[i] for i in heads],
        now,
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
        )
        for i, (outcome, state) in zip(copies, results, strict=True):
            outcomes[i], states[i] = outcome, state
            if outcome == "late":
                log.info(
                    "A copy of event %s (%s) came after its send: recorded, not sent.",
                    rows[i].event_id,
                    rows[i].event_name,
                )
    if policy is not None:
        await _learn(conn, rows, outcomes, states, policy, now)
    return outcomes


async def _learn(
    conn: aiosqlite.Connection,
    rows: Sequence[NewEvent],
    outcomes: Sequence[Outcome],
    states: Sequence[assembly.State | None],
    policy: ProfilePolicy,
    now: float,
) -> None:
    items: list[tuple[str, dict[str, list[str]]]] = []
    for ev, outcome, state in zip(rows, outcomes, states, strict=True):
        if outcome == "late":
            continue
        payload, clear = (state.payload, state.clear) if state else (ev.payload, ev.clear)
        ids = assembly.learnable(payload)
        if ids:
            items += [(key, ids) for key in profiles.visitor_keys(policy, clear)]
    await profiles.learn(conn, items, ttl=policy.ttl, now=now)


async def completions(
    conn: aiosqlite.Connection,
    events: Mapping[int, dict[str, Any]],
    policy: ProfilePolicy,
    now: float,
) -> dict[int, tuple[dict[str, Any], tuple[str, ...]]]:
    """Claimed events (row id -> event as sent) completed from their visitors' profiles,
    one read per batch: those that gained identifiers, with the keys added."""
    keys = {
        row_id: profiles.visitor_keys(policy, event.get("user_data", {}))
        for row_id, event in events.items()
    }
    found = await profiles.lookup(conn, (k for ks in keys.values() for k in ks), now=now)
    out: dict[int, tuple[dict[str, Any], tuple[str, ...]]] = {}
    if not found:
        return out
    for row_id, event in events.items():
        added: tuple[str, ...] = ()
        for key in keys[row_id]:
            if key in found:
                event, more = assembly.complete(event, found[key])
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
    for row_id, (event, _) in done.items():
        await rows_sql.record_completed(conn, row_id, event, owner)
