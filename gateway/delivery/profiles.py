"""Visitor profiles: the hashed identifiers a visitor gave once, for their later events.

Learned when the outbox stores an event of a consenting visitor that carries hashed
customer identifiers (em, ph, external_id, fn, ln, ...), keyed by the visitor's first-party
id (the `_fbp` value) and by the stitch keys that link its webhooks and backend calls to
the visit (an order id, a hashed email) — never in clear, only as HMAC-SHA256 under a key
derived from the outbox key. Applied when the sender claims an event of the same visitor:
the identifiers it lacks are added before the send (see `Outbox.claim`). Only hashes are
kept; profiles expire after `profile_ttl` and the table is cut back to `profile_max` rows,
least recently updated first.

Plain functions on a connection, run inside the caller's write transaction, like
`rows.py`: the outbox decides when, these decide how.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import aiosqlite

from gateway.pipeline.assembly import MAX_VALUES
from gateway.pipeline.keyedhash import keyed_sha256

_LOOKUP_LABEL = b"capi-gateway profile lookup key v1"
_SEP = "\x1f"
_CHUNK = 500
# Row ids per `changed` statement: below SQLite's default limit of bound values.
_ID_CHUNK = 900


@dataclass(frozen=True, slots=True)
class ProfilePolicy:
    """Whether and how long profiles are kept, and the key their lookup hashes use."""

    ttl: float  # seconds; 0 turns profiles off
    max_profiles: int
    lookup_key: bytes

    @classmethod
    def from_key(cls, key: bytes, *, ttl: float, max_profiles: int) -> ProfilePolicy:
        """The policy for an outbox whose encryption key is `key`."""
        return cls(ttl, max_profiles, hmac.new(key, _LOOKUP_LABEL, hashlib.sha256).digest())

    @property
    def enabled(self) -> bool:
        """False when `profile_ttl` is 0."""
        return self.ttl > 0

    def key_hash(self, kind: str, value: str) -> str:
        """The stored form of a visitor's first-party id (kind "fbp")."""
        message = f"{kind}{_SEP}{value}".encode("utf-8", "surrogatepass")
        # From states padded with the key once: less than half of even the one-shot
        # `hmac.digest`, and it runs per stored event (every PageView).
        return keyed_sha256(self.lookup_key).digest(message).hex()


# Marks a stitch key's hash in `profile_keys`: it leads to a profile through `profile_links`.
LINK = "~"


def visitor_keys(
    policy: ProfilePolicy,
    clear: Mapping[str, Any],
    links: Iterable[tuple[str, str]] = (),
    site: str | None = None,
) -> list[str]:
    """The profile keys of an event: its `fbp`, hashed, then its stitch keys
    (`NewEvent.links`: an order id, a hashed email), hashed and marked with `LINK`.

    With `site` every key is that site's (`site_key`): one site's events never complete
    from, or feed, another site's profiles, even under the same fbp or order id.
    """
    fbp = clear.get("fbp")
    keys = [site_key(site, policy.key_hash("fbp", fbp))] if isinstance(fbp, str) and fbp else []
    keys += [
        LINK + site_key(site, policy.key_hash(f"stitch.{name}", value))
        for name, value in links
        if value
    ]
    return keys


def site_key(site: str | None, key_hash: str) -> str:
    """A profile (or link) key of one `[[sites]]` site: `alpha:<hash>`; as is without."""
    return key_hash if site is None else f"{site}:{key_hash}"


def join_keys(keys: Iterable[str]) -> str | None:
    """The `profile_keys` column: key hashes, comma separated (None for none)."""
    return ",".join(keys) or None


def split_keys(column: str | None) -> list[str]:
    """The key hashes of a `profile_keys` column."""
    return column.split(",") if column else []


# A stored profile as `lookup` returns it: (updated_at, identifiers as JSON text). The text
# is parsed only when a claimed event needs it (`completion.completions`).
Dated = tuple[float, str]


def unchanged_since(rows: Iterable[tuple[str | None, float | None]]) -> dict[str, float] | None:
    """Per profile key of claimed rows ((`profile_keys`, `profile_seen`) each), the time
    after which its profile can add something to them: the earliest `profile_seen` of the
    rows under it, for keys whose rows are all marked. A profile not updated since would
    be read only to be skipped (`completion.completions`), so `lookup(newer=…)` does not
    read it back. None when a row has no `profile_keys` (its keys come from its fbp later).
    """
    floors: dict[str, float] = {}
    compared: set[str] = set()
    for column, seen_at in rows:
        if column is None:
            return None
        for key in split_keys(column):
            if seen_at is None:
                compared.add(key)
            else:
                floors[key] = min(floors.get(key, seen_at), float(seen_at))
    for key in compared:
        floors.pop(key, None)
    return floors


async def lookup(
    conn: aiosqlite.Connection,
    hashes: Iterable[str],
    *,
    now: float,
    newer: Mapping[str, float] | None = None,
) -> dict[str, Dated]:
    """The live profiles under `hashes` (`visitor_keys`): key -> (updated_at, identifiers
    as JSON); a stitch key finds the profile its link leads to.

    `newer`: per fbp key, a time; the profile is returned only if updated after it (the
    claim's rows that carried their whole profile then: most profiles are not read back).
    """
    wanted = {h for h in hashes if h}
    floors = newer or {}
    plain = sorted(h for h in wanted if not h.startswith(LINK) and h not in floors)
    dated = sorted((h, floors[h]) for h in wanted if h in floors and not h.startswith(LINK))
    linked = sorted(h[1:] for h in wanted if h.startswith(LINK))
    out: dict[str, Dated] = {}
    for start in range(0, len(dated), _CHUNK):
        pairs = dated[start : start + _CHUNK]
        for key_hash, updated_at, ids in await conn.execute_fetchall(
            "SELECT p.key_hash, p.updated_at, p.ids FROM (VALUES "
            f"{','.join(['(?,?)'] * len(pairs))}) AS w JOIN profiles p "
            "ON p.key_hash = w.column1 WHERE p.updated_at > w.column2 AND p.expires_at > ?",
            (*(v for pair in pairs for v in pair), now),
        ):
            out[key_hash] = (float(updated_at), ids)
    for start in range(0, len(plain), _CHUNK):
        part = plain[start : start + _CHUNK]
        for key_hash, updated_at, ids in await conn.execute_fetchall(
            "SELECT key_hash, updated_at, ids FROM profiles "
            f"WHERE key_hash IN ({','.join('?' * len(part))}) AND expires_at > ?",
            (*part, now),
        ):
            out[key_hash] = (float(updated_at), ids)
    for start in range(0, len(linked), _CHUNK):
        part = linked[start : start + _CHUNK]
        for key_hash, updated_at, ids in await conn.execute_fetchall(
            "SELECT l.key_hash, p.updated_at, p.ids FROM profile_links l JOIN profiles p ON "
            f"p.key_hash = l.profile WHERE l.key_hash IN ({','.join('?' * len(part))}) "
            "AND l.expires_at > ? AND p.expires_at > ?",
            (*part, now, now),
        ):
            out[LINK + key_hash] = (float(updated_at), ids)
    return out


def plain_key(column: str | None) -> bool:
    """Whether a `profile_keys` column is one fbp key (no stitch link, no second key): the
    rows `changed` compares in SQL."""
    return column is not None and column != "" and "," not in column and column[0] != LINK


async def changed(
    conn: aiosqlite.Connection, row_ids: Sequence[int], *, now: float
) -> list[tuple[int, str, str]]:
    """Of claimed rows whose `profile_keys` is one fbp key (`plain_key`), those a live
    profile may add to: (row id, profile key, identifiers as JSON).

    The test `lookup(newer=…)` and `completion.completions` make per row, done in SQL: the
    row was not stored carrying its whole profile (`profile_seen` NULL) or its profile was
    updated since. The rows are leased to the caller, so their columns are as claimed; most
    (nine in ten in a backlog of new visitors) cost one index probe and no Python.
    """
    out: list[tuple[int, str, str]] = []
    for start in range(0, len(row_ids), _ID_CHUNK):
        part = row_ids[start : start + _ID_CHUNK]
        # One trip to the connection's thread (a claim's hot path), as `lookup` does.
        rows = await conn.execute_fetchall(
            "SELECT e.id, p.key_hash, p.ids FROM event_data e JOIN profiles p "
            f"ON p.key_hash = e.profile_keys WHERE e.id IN ({','.join('?' * len(part))}) "
            "AND p.expires_at > ? AND (e.profile_seen IS NULL OR p.updated_at > e.profile_seen)",
            (*part, now),
        )
        out += [(int(r[0]), str(r[1]), str(r[2])) for r in rows]
    return out


async def resolve(
    conn: aiosqlite.Connection, links: Iterable[str], *, now: float
) -> dict[str, str]:
    """Stitch keys (`LINK`-marked) -> the fbp key of the profile each leads to, if any."""
    wanted = sorted({h[1:] for h in links if h.startswith(LINK)})
    out: dict[str, str] = {}
    for start in range(0, len(wanted), _CHUNK):
        part = wanted[start : start + _CHUNK]
        for key_hash, profile in await conn.execute_fetchall(
            "SELECT key_hash, profile FROM profile_links WHERE "
            f"key_hash IN ({','.join('?' * len(part))}) AND expires_at > ?",
            (*part, now),
        ):
            out[LINK + key_hash] = profile
    return out


async def link(
    conn: aiosqlite.Connection, pairs: Iterable[tuple[str, str]], *, ttl: float, now: float
) -> None:
    """Let each stitch key (`LINK`-marked) lead to a profile's fbp key; the newest visit's
    profile wins, as with stitched visits."""
    rows = {key[1:]: profile for key, profile in pairs if key.startswith(LINK)}
    if rows:
        await conn.executemany(
            "INSERT INTO profile_links (key_hash, profile, expires_at) VALUES (?,?,?) "
            "ON CONFLICT (key_hash) DO UPDATE SET profile=excluded.profile, "
            "expires_at=excluded.expires_at",
            [(key, profile, now + ttl) for key, profile in rows.items()],
        )


UNION_FUNCTION = "capigw_profile_union"


def union_ids(stored: str, added: str) -> str:
    """SQL function `capigw_profile_union(stored, added)`: two profiles' JSON, united.

    Values already known stay first; at most `MAX_VALUES` per identifier.
    """
    profile: dict[str, list[str]] = json.loads(stored)
    for name, values in json.loads(added).items():
        have = profile.setdefault(name, [])
        for value in values:
            if value not in have and len(have) < MAX_VALUES:
                have.append(value)
    return json.dumps(profile, separators=(",", ":"))


async def register(conn: aiosqlite.Connection) -> None:
    """Make `learn`'s SQL function known to a connection (once per connection)."""
    await conn.create_function(UNION_FUNCTION, 2, union_ids, deterministic=True)


async def learn(
    conn: aiosqlite.Connection,
    items: Sequence[tuple[str, Mapping[str, Sequence[str]]]],
    *,
    ttl: float,
    now: float,
) -> int:
    """Add identifiers to profiles (created as needed; the connection must have been
    through `register`); returns how many profile writes it made.

    One upsert per profile: a new one is inserted as is, a known one is united with it in
    SQL (`union_ids`), so learning costs no read before the write.
    """
    merged: dict[str, dict[str, list[str]]] = {}
    for key_hash, ids in items:
        profile = merged.get(key_hash)
        if profile is None:
            # The common case, a visitor's one event of the commit: its lists as they are
            # (copied: a later item of the same visitor extends them).
            merged[key_hash] = {name: list(values[:MAX_VALUES]) for name, values in ids.items()}
            continue
        for name, values in ids.items():
            have = profile.setdefault(name, [])
            have += [v for v in values if v not in have][: MAX_VALUES - len(have)]
    if not merged:
        return 0
    await conn.executemany(
        "INSERT INTO profiles (key_hash, ids, updated_at, expires_at) VALUES (?,?,?,?) "
        f"ON CONFLICT (key_hash) DO UPDATE SET ids={UNION_FUNCTION}(profiles.ids, excluded.ids), "
        "updated_at=excluded.updated_at, expires_at=excluded.expires_at",
        [
            (key_hash, json.dumps(profile, separators=(",", ":")), now, now + ttl)
            for key_hash, profile in merged.items()
        ],
    )
    return len(merged)


async def purge(conn: aiosqlite.Connection, *, max_profiles: int, now: float | None = None) -> int:
    """Delete expired profiles, then the least recently updated beyond `max_profiles`."""
    now = time.time() if now is None else now
    cur = await conn.execute("DELETE FROM profiles WHERE expires_at <= ?", (now,))
    count = int(cur.rowcount)
    # Every write sets expires_at = now + ttl: it orders profiles by last update too. The
    # excess is taken from the oldest end of the index: an OFFSET past the `max_profiles`
    # newest would walk them all on every purge, with nothing to delete as a rule. COUNT(*)
    # counts the index's pages' cells, not its rows one by one.
    async with conn.execute("SELECT COUNT(*) FROM profiles") as cur:
        row = await cur.fetchone()
    excess = (int(row[0]) if row else 0) - max_profiles
    if excess > 0:
        cur = await conn.execute(
            "DELETE FROM profiles WHERE key_hash IN (SELECT key_hash FROM profiles "
            "ORDER BY expires_at, key_hash LIMIT ?)",
            (excess,),
        )
        count += int(cur.rowcount)
    # Links lead nowhere once their profile is gone.
    await conn.execute(
        "DELETE FROM profile_links WHERE expires_at <= ? "
        "OR profile NOT IN (SELECT key_hash FROM profiles)",
        (now,),
    )
    return count


async def forget(
    conn: aiosqlite.Connection,
    *,
    key_hashes: Iterable[str],
    identifiers: Iterable[str],
    site: str | None = None,
) -> int:
    """Delete the profiles under `key_hashes` (unscoped hashes, see `site_key`) and those
    holding any of the hashed `identifiers` (64-hex SHA-256 values); returns how many.

    With `site`, that site's profiles only; without, every site's and the unscoped ones.
    """
    total = 0
    for key_hash in set(key_hashes):
        if site is not None:
            sql, args = "DELETE FROM profiles WHERE key_hash=?", [site_key(site, key_hash)]
        else:
            # Any site's profile under that hash: `<site>:<hash>` ends with ":<hash>".
            sql = "DELETE FROM profiles WHERE key_hash=? OR key_hash LIKE ?"
            args = [key_hash, f"%:{key_hash}"]
        cur = await conn.execute(sql, args)
        total += int(cur.rowcount)
    mine = "" if site is None else " AND substr(key_hash, 1, ?) = ?"
    scope = [] if site is None else [len(site) + 1, f"{site}:"]
    for value in set(identifiers):
        # A quoted 64-hex value only ever appears in `ids` as a whole identifier.
        cur = await conn.execute(
            f"DELETE FROM profiles WHERE instr(ids, ?) > 0{mine}", [json.dumps(value), *scope]
        )
        total += int(cur.rowcount)
    await conn.executemany(
        "DELETE FROM profile_links WHERE key_hash=?",
        [(k[1:],) for k in set(key_hashes) if k.startswith(LINK)],
    )
    await conn.execute(
        "DELETE FROM profile_links WHERE profile NOT IN (SELECT key_hash FROM profiles)"
    )
    return total


async def holding(conn: aiosqlite.Connection, identifiers: Iterable[str]) -> list[str]:
    """The key hashes of the profiles holding any of the hashed `identifiers`."""
    out: list[str] = []
    for value in sorted(set(identifiers)):
        async with conn.execute(
            "SELECT key_hash FROM profiles WHERE instr(ids, ?) > 0", (json.dumps(value),)
        ) as cur:
            out += [str(r[0]) for r in await cur.fetchall()]
    return out


async def count(conn: aiosqlite.Connection, *, now: float | None = None) -> int:
    """How many live profiles the file holds."""
    now = time.time() if now is None else now
    async with conn.execute("SELECT COUNT(*) FROM profiles WHERE expires_at > ?", (now,)) as cur:
        row = await cur.fetchone()
    return int(row[0]) if row else 0
