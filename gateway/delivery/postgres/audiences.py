"""The PostgreSQL store of Custom Audiences: the twin of gateway/delivery/audiences.py.

Same tables and meaning; the sync lease is the `audience_lease` row, taken with an upsert
that only succeeds when the lease expired or is already ours, so two replicas never sync
at once (a crashed replica's lease runs out).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from gateway.delivery import profiles
from gateway.delivery.audiences import AudienceState, event_hit, site_key, visitor_of
from gateway.delivery.postgres import profilerows
from gateway.delivery.postgres.payloadjson import PAYLOAD
from gateway.delivery.postgres.pool import Database
from gateway.pipeline.audiences import Hit, Row

if TYPE_CHECKING:
    from gateway.delivery.postgres.pool import Conn

_STATE_COLUMNS = (
    "site, name, audience_id, synced_at, size, coverage::text AS coverage, "
    "last_result::text AS last_result, last_error, blocked_token"
)


def _state(r: Any) -> AudienceState:
    coverage, result = r["coverage"], r["last_result"]
    return AudienceState(
        site=str(r["site"]) or None,
        name=str(r["name"]),
        audience_id=r["audience_id"] if isinstance(r["audience_id"], str) else None,
        synced_at=float(r["synced_at"]) if isinstance(r["synced_at"], float | int) else None,
        size=int(r["size"]) if isinstance(r["size"], int) else 0,
        coverage=json.loads(coverage) if isinstance(coverage, str) else {},
        last_result=json.loads(result) if isinstance(result, str) else {},
        last_error=r["last_error"] if isinstance(r["last_error"], str) else None,
        blocked_token=r["blocked_token"] if isinstance(r["blocked_token"], str) else None,
    )


class PgAudiences:
    """`AudienceStore` on the shared PostgreSQL store (gateway/delivery/store.py)."""

    def __init__(self, db: Database, *, owns: bool = False) -> None:
        self.db = db
        self._owns = owns

    async def close(self) -> None:
        """Close the pool when this object opened it."""
        if self._owns:
            await self.db.close()

    async def hits(
        self, site: str | None, names: Sequence[str], *, since: float, now: float
    ) -> list[Hit]:
        """See `SqliteAudiences.hits`."""
        if not names:
            return []

        async def read(conn: Conn) -> list[Hit]:
            # `site = $1` rather than IS NOT DISTINCT FROM: the planner can use an index
            # on site only for a plain comparison.
            rows = await conn.fetch(
                f"SELECT profile_keys, event_name, event_time, {PAYLOAD} AS payload "
                f"FROM event_data WHERE {'site IS NULL' if site is None else 'site = $4'} "
                "AND created_at >= $1 AND event_time >= $2 AND event_name = ANY($3::text[]) "
                "AND profile_keys IS NOT NULL",
                since,
                int(since),
                list(names),
                *([] if site is None else [site]),
            )
            keyed = [
                (
                    profiles.split_keys(r["profile_keys"]),
                    r["event_name"],
                    r["event_time"],
                    r["payload"],
                )
                for r in rows
            ]
            wanted = {
                k
                for keys, *_ in keyed
                if not any(not k.startswith(profiles.LINK) for k in keys)
                for k in keys
            }
            links = await profilerows.resolve(conn, wanted, now=now) if wanted else {}
            out = []
            for keys, event_name, event_time, payload in keyed:
                visitor = visitor_of(keys, links)
                if visitor is not None:
                    out.append(event_hit(visitor, event_name, event_time, json.loads(payload)))
            return out

        return await self.db.run(read, transaction=False)

    async def profiles(
        self, visitors: Iterable[str], *, now: float
    ) -> dict[str, dict[str, list[str]]]:
        """The live profiles (hashed identifiers) of `visitors` (fbp key hashes)."""
        wanted = list(visitors)

        async def read(conn: Conn) -> dict[str, dict[str, list[str]]]:
            found = await profilerows.lookup(conn, wanted, now=now)
            return {key: json.loads(ids) for key, (_, ids) in found.items()}

        return await self.db.run(read, transaction=False)

    async def states(self, site: str | None = None) -> list[AudienceState]:
        """Every audience's state (of `site` only, when given), by site and name."""

        async def read(conn: Conn) -> list[AudienceState]:
            if site is None:
                rows = await conn.fetch(
                    f"SELECT {_STATE_COLUMNS} FROM audiences ORDER BY site, name"
                )
            else:
                rows = await conn.fetch(
                    f"SELECT {_STATE_COLUMNS} FROM audiences WHERE site = $1 ORDER BY name",
                    site_key(site),
                )
            return [_state(r) for r in rows]

        return await self.db.run(read, transaction=False)

    async def state(self, site: str | None, name: str) -> AudienceState:
        """One audience's state (a blank one when never synced)."""

        async def read(conn: Conn) -> AudienceState:
            r = await conn.fetchrow(
                f"SELECT {_STATE_COLUMNS} FROM audiences WHERE site = $1 AND name = $2",
                site_key(site),
                name,
            )
            return _state(r) if r is not None else AudienceState(site=site, name=name)

        return await self.db.run(read, transaction=False)

    async def sent_rows(self, site: str | None, name: str) -> dict[str, Row]:
        """The rows Meta holds for the audience (as last sent), by row hash."""

        async def read(conn: Conn) -> dict[str, Row]:
            rows = await conn.fetch(
                'SELECT row_hash, "row"::text AS r FROM audience_members '
                "WHERE site = $1 AND name = $2",
                site_key(site),
                name,
            )
            return {r["row_hash"]: tuple(json.loads(r["r"])) for r in rows}

        return await self.db.run(read, transaction=False)

    async def save(self, state: AudienceState) -> None:
        """Write an audience's state (id, last sync, size, coverage, result, block)."""

        async def write(conn: Conn) -> None:
            await conn.execute(
                "INSERT INTO audiences (site, name, audience_id, synced_at, size, coverage, "
                "last_result, last_error, blocked_token) "
                "VALUES ($1, $2, $3, $4, $5, $6::jsonb, $7::jsonb, $8, $9) "
                "ON CONFLICT (site, name) DO UPDATE SET audience_id = excluded.audience_id, "
                "synced_at = excluded.synced_at, size = excluded.size, "
                "coverage = excluded.coverage, last_result = excluded.last_result, "
                "last_error = excluded.last_error, blocked_token = excluded.blocked_token",
                site_key(state.site),
                state.name,
                state.audience_id,
                state.synced_at,
                state.size,
                json.dumps(state.coverage),
                json.dumps(state.last_result),
                state.last_error,
                state.blocked_token,
            )

        await self.db.run(write)

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
        gone = list(removed)
        new = dict(added or {})

        async def write(conn: Conn) -> None:
            if gone:
                await conn.execute(
                    "DELETE FROM audience_members WHERE site = $1 AND name = $2 "
                    "AND row_hash = ANY($3::text[])",
                    key,
                    name,
                    gone,
                )
            if new:
                await conn.execute(
                    'INSERT INTO audience_members (site, name, row_hash, "row") '
                    "SELECT $1, $2, h, r::jsonb FROM unnest($3::text[], $4::text[]) AS u(h, r) "
                    'ON CONFLICT (site, name, row_hash) DO UPDATE SET "row" = excluded."row"',
                    key,
                    name,
                    list(new),
                    [json.dumps(list(r)) for r in new.values()],
                )

        await self.db.run(write)

    async def claim(self, owner: str, *, lease: float, now: float) -> bool:
        """Take (or renew) the sync lease for `lease` seconds; False when another holds it."""

        async def write(conn: Conn) -> bool:
            got = await conn.fetchval(
                "INSERT INTO audience_lease AS l (id, owner, expires) VALUES (1, $1, $2) "
                "ON CONFLICT (id) DO UPDATE SET owner = excluded.owner, "
                "expires = excluded.expires WHERE l.expires < $3 OR l.owner = excluded.owner "
                "RETURNING owner",
                owner,
                now + lease,
                now,
            )
            return got is not None

        return await self.db.run(write)

    async def release(self, owner: str) -> None:
        """Give the sync lease back."""

        async def write(conn: Conn) -> None:
            await conn.execute("DELETE FROM audience_lease WHERE owner = $1", owner)

        await self.db.run(write)


async def stored_states(db: Database) -> list[AudienceState] | None:
    """Every audience state, never migrating (doctor); None when the store has no audience
    tables yet."""
    if await db.fetchval("SELECT to_regclass('audiences')") is None:
        return None
    return await PgAudiences(db).states()
