"""Erasure on the PostgreSQL store: the same contract as `gateway/delivery/forget.py`.

One transaction: every unsent event carrying the person's hashed email, phone or external
id, or their `_fbp`, loses its hashed identifiers and its fbp/fbc; the visitor profiles
under those fbp values or holding those hashes are deleted; so are the stitched visits kept
under those identifiers or for those fbp values. The rows scrubbed are locked
(`FOR UPDATE`), so a replica merging a copy into one of them at the same moment waits and
merges into the scrubbed row.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from gateway.delivery.forget import Person, stitch_kinds
from gateway.delivery.postgres import insights
from gateway.delivery.profiles import ProfilePolicy, site_key
from gateway.delivery.rows import match_keys
from gateway.delivery.seal import Sealer, SealError
from gateway.delivery.stitch import derive_lookup_key, kind_site, lookup_hash
from gateway.models import row_key
from gateway.pipeline.normalize import HASHED_FIELDS

if TYPE_CHECKING:
    from gateway.delivery.postgres.pool import Conn

_UNSENT = ["pending", "inflight", "blocked", "dead"]
_CLEAR_IDS = ("fbp", "fbc")


async def forget(
    conn: Conn, sealer: Sealer, key: bytes, person: Person, *, site: str | None = None
) -> dict[str, int]:
    """Erase `person` (inside the caller's transaction); counts of what was removed.

    With `site`, only that site's events, profiles (keys `site:<hash>`) and stitched
    visits (kinds `<kind>@site`) are erased; without, every site's (as on SQLite).
    """
    events, seen = await _scrub_events(conn, sealer, person, site)
    fbps = person.fbps | seen
    policy = ProfilePolicy.from_key(key, ttl=1, max_profiles=1)
    hashes = [policy.key_hash("fbp", fbp) for fbp in sorted(fbps)]
    held = (
        "EXISTS (SELECT 1 FROM jsonb_each(ids) AS e, jsonb_array_elements_text(e.value) AS v "
        "WHERE v = ANY($2::text[]))"
    )
    if site is None:
        # Any site's profile under those hashes: `<site>:<hash>` ends with ":<hash>".
        gone = await conn.fetch(
            "DELETE FROM profiles WHERE key_hash = ANY($1::text[]) "
            f"OR split_part(key_hash, ':', 2) = ANY($1::text[]) OR {held} RETURNING key_hash",
            hashes,
            sorted(person.hashes),
        )
    else:
        gone = await conn.fetch(
            f"DELETE FROM profiles WHERE key_hash = ANY($1::text[]) OR ({held} "
            "AND left(key_hash, $3) = $4) RETURNING key_hash",
            [site_key(site, h) for h in hashes],
            sorted(person.hashes),
            len(site) + 1,
            f"{site}:",
        )
    profiles = len(gone)
    # A visitor is known by their fbp's key, or by the key of a profile holding their hashes.
    touchpoints = await insights.forget(conn, [*hashes, *(r["key_hash"] for r in gone)], site=site)
    # Links lead nowhere once their profile is gone.
    await conn.execute(
        "DELETE FROM profile_links AS l WHERE NOT EXISTS "
        "(SELECT 1 FROM profiles AS p WHERE p.key_hash = l.profile)"
    )
    stitches = await _forget_stitches(conn, sealer, derive_lookup_key(key), person, fbps, site)
    return {
        "events": events,
        "profiles": profiles,
        "stitches": stitches,
        "touchpoints": touchpoints,
    }


async def _scrub_events(
    conn: Conn, sealer: Sealer, person: Person, site: str | None
) -> tuple[int, set[str]]:
    sql = (
        "SELECT id, pixel_id, event_name, event_id, payload::text AS payload, sealed "
        "FROM events WHERE state = ANY($1::text[])"
    )
    args: list[Any] = [_UNSENT]
    if site is not None:
        args.append(site)
        sql += f" AND site = ${len(args)}"
    if not person.fbps:
        # Hashes sit in the payload in clear: skip the rows without them in SQL.
        args.append([f"%{h}%" for h in sorted(person.hashes)])
        sql += f" AND payload::text LIKE ANY(${len(args)}::text[])"
    fbps: set[str] = set()
    updates: list[tuple[str, bytes | None, str, int]] = []
    for r in await conn.fetch(sql + " ORDER BY id FOR UPDATE", *args):
        ident = row_key(r["pixel_id"], r["event_name"], r["event_id"])
        payload = json.loads(r["payload"])
        try:
            clear = sealer.open(r["sealed"], ident)
        except SealError:
            clear = {}
        user_data = payload.get("user_data") or {}
        if not person.matches(user_data, clear):
            continue
        if isinstance(clear.get("fbp"), str):
            fbps.add(clear["fbp"])
        payload["user_data"] = {k: v for k, v in user_data.items() if k not in HASHED_FIELDS}
        kept = {k: v for k, v in clear.items() if k not in _CLEAR_IDS}
        updates.append(
            (
                json.dumps(payload, separators=(",", ":")),
                sealer.seal(kept, ident),
                match_keys(payload["user_data"], kept),
                int(r["id"]),
            )
        )
    if updates:
        await conn.executemany(
            # profile_keys go too: what links the row to a profile was the person's.
            "UPDATE event_data SET payload = $1::json, payload_jsonb = NULL, sealed = $2, "
            "match_keys = $3, "
            "profile_keys = NULL WHERE id = $4",
            updates,
        )
    return len(updates), fbps


async def _forget_stitches(
    conn: Conn,
    sealer: Sealer,
    lookup_key: bytes,
    person: Person,
    fbps: frozenset[str] | set[str],
    site: str | None,
) -> int:
    kinds = [r["kind"] for r in await conn.fetch("SELECT DISTINCT kind FROM stitches")]
    named = [
        lookup_hash(lookup_key, kind, value)
        for kind in stitch_kinds(kinds, person.hashed, site)
        for value in person.hashed[kind.split("@", 1)[0]]
    ]
    status = await conn.execute("DELETE FROM stitches WHERE key_hash = ANY($1::text[])", named)
    total = int(status.rsplit(" ", 1)[-1])
    if not fbps:
        return total
    # Visits kept under an order id or a lead id: only their sealed context names the fbp.
    doomed = []
    for r in await conn.fetch("SELECT key_hash, kind, sealed FROM stitches"):
        if site is not None and kind_site(r["kind"]) != site:
            continue
        try:
            context = sealer.open(r["sealed"], r["key_hash"])
        except SealError:
            continue
        if (context.get("user_data") or {}).get("fbp") in fbps:
            doomed.append(r["key_hash"])
    if doomed:
        status = await conn.execute("DELETE FROM stitches WHERE key_hash = ANY($1::text[])", doomed)
        total += int(status.rsplit(" ", 1)[-1])
    return total
