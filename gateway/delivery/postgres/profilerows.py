"""Visitor profiles' SQL on PostgreSQL: learn identifiers, read profiles, follow stitch links.

Plain functions on a connection inside the caller's transaction (`Database.run`), split out
of `rows.py` (the events' inserts and merges), whose `PgSql` and the claim's completions
call them; the same rules as the SQLite store's profile rows.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING

from gateway.delivery.profiles import LINK, Dated
from gateway.pipeline import jsonfast
from gateway.pipeline.assembly import MAX_VALUES

if TYPE_CHECKING:
    from gateway.delivery.postgres.pool import Conn

# The column is jsonb, which keeps the value, not the text: orjson's compact UTF-8 is as good
# as the stdlib's escapes, at a fraction of the cost (1.5 % of a replica's CPU at 7,000
# events/s, one profile per event).
_ENCODE = jsonfast.dumps


async def learn(
    conn: Conn,
    items: Sequence[tuple[str, Mapping[str, Sequence[str]]]],
    *,
    ttl: float,
    now: float,
) -> int:
    """Add identifiers to visitor profiles in one upsert (united in SQL, as on SQLite)."""
    # A batch's items for one profile united here by `union_ids`' rules, on dicts: one JSON
    # encoding per profile instead of a decode, union and encode per item.
    merged: dict[str, dict[str, list[str]]] = {}
    for key_hash, ids in items:
        profile = merged.setdefault(key_hash, {})
        for name, values in ids.items():
            have = profile.setdefault(name, [])
            for value in values:
                if value not in have and len(have) < MAX_VALUES:
                    have.append(value)
    if not merged:
        return 0
    added = {key_hash: _ENCODE(profile) for key_hash, profile in merged.items()}
    # Key order: replicas learning overlapping profiles lock them in one order.
    keys = sorted(added)
    await conn.execute(
        "INSERT INTO profiles AS p (key_hash, ids, updated_at, expires_at) "
        "SELECT k, i::jsonb, $3, $4 FROM unnest($1::text[], $2::text[]) AS u(k, i) "
        "ON CONFLICT (key_hash) DO UPDATE SET ids = capigw_profile_union(p.ids, excluded.ids), "
        "updated_at = excluded.updated_at, expires_at = excluded.expires_at",
        keys,
        [added[k] for k in keys],
        now,
        now + ttl,
    )
    return len(keys)


async def lookup(conn: Conn, hashes: Iterable[str], *, now: float) -> dict[str, Dated]:
    """The live profiles under `hashes` (`profiles.visitor_keys`): key -> (updated_at,
    identifiers as JSON); a stitch key (`LINK`-marked) finds the profile its link leads to."""
    wanted = {h for h in hashes if h}
    plain = sorted(h for h in wanted if not h.startswith(LINK))
    linked = sorted(h[1:] for h in wanted if h.startswith(LINK))
    out: dict[str, Dated] = {}
    if plain:
        for r in await conn.fetch(
            "SELECT key_hash, updated_at, ids::text AS ids FROM profiles "
            "WHERE key_hash = ANY($1::text[]) AND expires_at > $2",
            plain,
            now,
        ):
            out[r["key_hash"]] = (float(r["updated_at"]), r["ids"])
    if linked:
        for r in await conn.fetch(
            "SELECT l.key_hash, p.updated_at, p.ids::text AS ids FROM profile_links AS l "
            "JOIN profiles AS p ON p.key_hash = l.profile "
            "WHERE l.key_hash = ANY($1::text[]) AND l.expires_at > $2 AND p.expires_at > $2",
            linked,
            now,
        ):
            out[LINK + r["key_hash"]] = (float(r["updated_at"]), r["ids"])
    return out


async def resolve(conn: Conn, links: Iterable[str], *, now: float) -> dict[str, str]:
    """Stitch keys (`LINK`-marked) -> the fbp key of the profile each leads to, if any."""
    wanted = sorted({h[1:] for h in links if h.startswith(LINK)})
    if not wanted:
        return {}
    rows = await conn.fetch(
        "SELECT key_hash, profile FROM profile_links "
        "WHERE key_hash = ANY($1::text[]) AND expires_at > $2",
        wanted,
        now,
    )
    return {LINK + r["key_hash"]: str(r["profile"]) for r in rows}


async def link(conn: Conn, pairs: Iterable[tuple[str, str]], *, ttl: float, now: float) -> None:
    """Let each stitch key (`LINK`-marked) lead to a profile's fbp key; the newest visit's
    profile wins, as with stitched visits (and as on SQLite)."""
    rows = {key[1:]: profile for key, profile in pairs if key.startswith(LINK)}
    if not rows:
        return
    # Key order: replicas linking overlapping keys lock them in one order (no deadlock).
    keys = sorted(rows)
    await conn.execute(
        "INSERT INTO profile_links AS l (key_hash, profile, expires_at) "
        "SELECT k, p, $3 FROM unnest($1::text[], $2::text[]) AS u(k, p) "
        "ON CONFLICT (key_hash) DO UPDATE SET profile = excluded.profile, "
        "expires_at = excluded.expires_at",
        keys,
        [rows[k] for k in keys],
        now + ttl,
    )
