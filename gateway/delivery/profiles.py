"""Visitor profiles: the hashed identifiers a visitor gave once, for their later events.

Learned when the outbox stores an event of a consenting visitor that carries hashed
customer identifiers (em, ph, external_id, fn, ln, ...), keyed by the visitor's first-party
id (the `_fbp` value) — never in clear, only as HMAC-SHA256 under a key derived from the
outbox key. Applied when the sender claims an event of the same visitor: the identifiers it
lacks are added before the send (see `Outbox.claim`). Only hashes are kept; profiles expire
after `profile_ttl` and the table is cut back to `profile_max` rows, least recently
updated first.

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

_LOOKUP_LABEL = b"capi-gateway profile lookup key v1"
_SEP = "\x1f"
_CHUNK = 500


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
        return hmac.new(self.lookup_key, message, hashlib.sha256).hexdigest()


def visitor_keys(policy: ProfilePolicy, clear: Mapping[str, Any]) -> list[str]:
    """The profile keys of an event: its `fbp`, hashed."""
    fbp = clear.get("fbp")
    return [policy.key_hash("fbp", fbp)] if isinstance(fbp, str) and fbp else []


async def lookup(
    conn: aiosqlite.Connection, hashes: Iterable[str], *, now: float
) -> dict[str, dict[str, list[str]]]:
    """The live profiles under `hashes`: key hash -> identifier -> hashed values."""
    wanted = sorted(set(hashes))
    out: dict[str, dict[str, list[str]]] = {}
    for start in range(0, len(wanted), _CHUNK):
        part = wanted[start : start + _CHUNK]
        async with conn.execute(
            f"SELECT key_hash, ids FROM profiles WHERE key_hash IN ({','.join('?' * len(part))})"
            " AND expires_at > ?",
            (*part, now),
        ) as cur:
            for key_hash, ids in await cur.fetchall():
                out[key_hash] = json.loads(ids)
    return out


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
        profile = merged.setdefault(key_hash, {})
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
    # Every write sets expires_at = now + ttl: it orders profiles by last update too.
    cur = await conn.execute(
        "DELETE FROM profiles WHERE key_hash IN (SELECT key_hash FROM profiles "
        "ORDER BY expires_at DESC LIMIT -1 OFFSET ?)",
        (max_profiles,),
    )
    return count + int(cur.rowcount)


async def forget(
    conn: aiosqlite.Connection, *, key_hashes: Iterable[str], identifiers: Iterable[str]
) -> int:
    """Delete the profiles under `key_hashes` and those holding any of the hashed
    `identifiers` (64-hex SHA-256 values); returns how many."""
    total = 0
    for key_hash in set(key_hashes):
        cur = await conn.execute("DELETE FROM profiles WHERE key_hash=?", (key_hash,))
        total += int(cur.rowcount)
    for value in set(identifiers):
        # A quoted 64-hex value only ever appears in `ids` as a whole identifier.
        cur = await conn.execute(
            "DELETE FROM profiles WHERE instr(ids, ?) > 0", (json.dumps(value),)
        )
        total += int(cur.rowcount)
    return total


async def count(conn: aiosqlite.Connection, *, now: float | None = None) -> int:
    """How many live profiles the file holds."""
    now = time.time() if now is None else now
    async with conn.execute("SELECT COUNT(*) FROM profiles WHERE expires_at > ?", (now,)) as cur:
        row = await cur.fetchone()
    return int(row[0]) if row else 0
