"""The SQLite store of Custom Audiences: the window's events and profiles in, sync state kept.

Reads what membership needs (gateway/pipeline/audiences.py) from the `events`, `profiles`
and `profile_links` tables, and keeps per (site, audience) its Meta id, last sync and the
rows last sent (`audiences`, `audience_members`), plus the lease that lets one process sync
at a time (`audience_lease`). Opened on a connection of its own, beside the outbox's.
The PostgreSQL twin is gateway/delivery/postgres/audiences.py.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiosqlite

from gateway.delivery import profiles
from gateway.delivery.schema import connect, write_transaction
from gateway.pipeline import assembly
from gateway.pipeline.audiences import Hit, Row

# Values per IN (...) list: far below SQLite's variable limit.
_CHUNK = 500


@dataclass(frozen=True, slots=True)
class AudienceState:
    """What the store knows of one audience: its Meta id and how its last sync went."""

    site: str | None
    name: str
    audience_id: str | None = None
    synced_at: float | None = None
    size: int = 0
    coverage: dict[str, float] = field(default_factory=dict)
    last_result: dict[str, Any] = field(default_factory=dict)
    last_error: str | None = None
    # Fingerprint of the token Meta refused (190): the audience waits for another token.
    blocked_token: str | None = None


def site_key(site: str | None) -> str:
    """The stored form of a site ('' without sites)."""
    return site or ""


def event_hit(visitor: str, event_name: str, event_time: int, payload: Mapping[str, Any]) -> Hit:
    """A stored event as a `Hit`: its visitor, name, time, value (and its currency) and
    whether it is restricted (opt_out or Limited Data Use)."""
    custom = payload.get("custom_data")
    raw = custom.get("value") if isinstance(custom, Mapping) else None
    value = float(raw) if isinstance(raw, int | float) and not isinstance(raw, bool) else 0.0
    code = custom.get("currency") if isinstance(custom, Mapping) else None
    currency = code.strip().upper() if isinstance(code, str) else ""
    return Hit(
        visitor, event_name, int(event_time), value, assembly.is_restricted(payload), currency
    )


def visitor_of(keys: Sequence[str], links: Mapping[str, str]) -> str | None:
    """The visitor of an event: its fbp key, else the profile one of its stitch keys leads to."""
    for key in keys:
        if not key.startswith(profiles.LINK):
            return key
    for key in keys:
        if key in links:
            return links[key]
    return None


def state_row(
    site: str,
    name: str,
    audience_id: str | None,
    synced_at: float | None,
    size: int,
    coverage: str | None,
    last_result: str | None,
    last_error: str | None,
    blocked_token: str | None,
) -> AudienceState:
    """An `AudienceState` from the columns of an `audiences` row (JSON as text)."""
    return AudienceState(
        site=site or None,
        name=name,
        audience_id=audience_id,
        synced_at=synced_at,
        size=int(size),
        coverage=json.loads(coverage) if coverage else {},
        last_result=json.loads(last_result) if last_result else {},
        last_error=last_error,
        blocked_token=blocked_token,
    )


_STATE_COLUMNS = (
    "site, name, audience_id, synced_at, size, coverage, last_result, last_error, blocked_token"
)


class SqliteAudiences:
    """`AudienceStore` on the outbox file (gateway/delivery/store.py)."""

    def __init__(self, conn: aiosqlite.Connection) -> None:
        self._conn = conn
        self._lock = asyncio.Lock()

    @classmethod
    async def open(cls, path: Path, *, create: bool = True) -> SqliteAudiences:
        """Open the outbox file at `path` on a connection of its own."""
        return cls(await connect(path, create=create))

    async def close(self) -> None:
        """Close the connection."""
        await self._conn.close()

    async def hits(
        self, site: str | None, names: Sequence[str], *, since: float, now: float
    ) -> list[Hit]:
        """The site's events named `names` with `event_time` >= `since`, each with its
        visitor (rows without one are left out)."""
        if not names:
            return []
        # created_at >= event_time always (times are clamped to now): the site index
        # narrows the scan to the window.
        sql = (
            "SELECT profile_keys, event_name, event_time, payload FROM events "
            "WHERE site IS ? AND created_at >= ? AND event_time >= ? "
            f"AND event_name IN ({','.join('?' * len(names))}) AND profile_keys IS NOT NULL"
        )
        async with self._conn.execute(sql, (site, since, int(since), *names)) as cur:
            rows = await cur.fetchall()
        keyed = [(profiles.split_keys(r[0]), r[1], r[2], r[3]) for r in rows]
        wanted = {
            k
            for keys, *_ in keyed
            if not any(not k.startswith(profiles.LINK) for k in keys)
            for k in keys
        }
        links = await profiles.resolve(self._conn, wanted, now=now) if wanted else {}
        out = []
        for keys, event_name, event_time, payload in keyed:
            visitor = visitor_of(keys, links)
            if visitor is not None:
                out.append(event_hit(visitor, event_name, event_time, json.loads(payload)))
        return out

    async def profiles(
        self, visitors: Iterable[str], *, now: float
    ) -> dict[str, dict[str, list[str]]]:
        """The live profiles (hashed identifiers) of `visitors` (fbp key hashes)."""
        found = await profiles.lookup(self._conn, visitors, now=now)
        return {key: json.loads(ids) for key, (_, ids) in found.items()}

    async def states(self, site: str | None = None) -> list[AudienceState]:
        """Every audience's state (of `site` only, when given), by site and name."""
        where, params = ("WHERE site = ?", (site_key(site),)) if site is not None else ("", ())
        async with self._conn.execute(
            f"SELECT {_STATE_COLUMNS} FROM audiences {where} ORDER BY site, name", params
        ) as cur:
            return [state_row(*r) for r in await cur.fetchall()]

    async def state(self, site: str | None, name: str) -> AudienceState:
        """One audience's state (a blank one when never synced)."""
        async with self._conn.execute(
            f"SELECT {_STATE_COLUMNS} FROM audiences WHERE site = ? AND name = ?",
            (site_key(site), name),
        ) as cur:
            r = await cur.fetchone()
        return state_row(*r) if r else AudienceState(site=site, name=name)

    async def sent_rows(self, site: str | None, name: str) -> dict[str, Row]:
        """The rows Meta holds for the audience (as last sent), by row hash."""
        async with self._conn.execute(
            "SELECT row_hash, row FROM audience_members WHERE site = ? AND name = ?",
            (site_key(site), name),
        ) as cur:
            return {h: tuple(json.loads(r)) for h, r in await cur.fetchall()}

    async def save(self, state: AudienceState) -> None:
        """Write an audience's state (id, last sync, size, coverage, result, block)."""
        async with write_transaction(self._conn, self._lock):
            await self._conn.execute(
                f"INSERT INTO audiences ({_STATE_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?) "
                "ON CONFLICT (site, name) DO UPDATE SET audience_id=excluded.audience_id, "
                "synced_at=excluded.synced_at, size=excluded.size, coverage=excluded.coverage, "
                "last_result=excluded.last_result, last_error=excluded.last_error, "
                "blocked_token=excluded.blocked_token",
                (
                    site_key(state.site),
                    state.name,
                    state.audience_id,
                    state.synced_at,
                    state.size,
                    json.dumps(state.coverage),
                    json.dumps(state.last_result),
                    state.last_error,
                    state.blocked_token,
                ),
            )

    async def apply(
        self,
        site: str | None,
        name: str,
        *,
        added: Mapping[str, Row] | None = None,
        removed: Iterable[str] = (),
    ) -> None:
        """Record rows Meta confirmed: `added` now held, `removed` (hashes) no longer."""
        key = site_key(site)
        async with write_transaction(self._conn, self._lock):
            await self._conn.executemany(
                "DELETE FROM audience_members WHERE site = ? AND name = ? AND row_hash = ?",
                [(key, name, h) for h in removed],
            )
            await self._conn.executemany(
                "INSERT OR REPLACE INTO audience_members (site, name, row_hash, row) "
                "VALUES (?,?,?,?)",
                [(key, name, h, json.dumps(list(r))) for h, r in (added or {}).items()],
            )

    async def claim(self, owner: str, *, lease: float, now: float) -> bool:
        """Take (or renew) the sync lease for `lease` seconds; False when another holds it."""
        async with (
            write_transaction(self._conn, self._lock),
            self._conn.execute(
                "INSERT INTO audience_lease (id, owner, expires) VALUES (1, ?, ?) "
                "ON CONFLICT (id) DO UPDATE SET owner=excluded.owner, expires=excluded.expires "
                "WHERE audience_lease.expires < ? OR audience_lease.owner = excluded.owner "
                "RETURNING owner",
                (owner, now + lease, now),
            ) as cur,
        ):
            return await cur.fetchone() is not None

    async def release(self, owner: str) -> None:
        """Give the sync lease back."""
        async with write_transaction(self._conn, self._lock):
            await self._conn.execute("DELETE FROM audience_lease WHERE owner = ?", (owner,))


async def stored_states(conn: aiosqlite.Connection) -> list[AudienceState] | None:
    """Every audience state on a read-only connection (doctor); None when the file has no
    audience tables yet (an older schema that `serve` will migrate)."""
    async with conn.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'audiences'"
    ) as cur:
        if await cur.fetchone() is None:
            return None
    return await SqliteAudiences(conn).states()
