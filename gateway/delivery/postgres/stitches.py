"""The stitch store on PostgreSQL: visitor contexts under keyed hashes, shared by replicas.

The same contract as the SQLite store (`gateway.delivery.stitch.Stitches`): keys only as
HMACs, contexts sealed and bound to their hash, a newer visit replaces an older one, puts
arriving together commit together. On PostgreSQL the page that kept the context and the
webhook that needs it may reach different replicas: the shared table joins them.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from gateway.delivery.postgres.pool import Database
from gateway.delivery.seal import Sealer, SealError
from gateway.delivery.stitch import (
    StitchesClosed,
    VisitorContext,
    derive_lookup_key,
    lookup_hash,
    purge_loop,
)

if TYPE_CHECKING:
    from gateway.delivery.postgres.pool import Conn

log = logging.getLogger("gateway.stitch")

_PURGE_CHUNK = 1000
_UPSERT = """
INSERT INTO stitches AS s (key_hash, kind, sealed, event_id, event_name, seen_at, expires_at)
SELECT DISTINCT ON (k) k, kind, sealed, eid, ename, seen, exp
FROM unnest($1::text[], $2::text[], $3::bytea[], $4::text[], $5::text[], $6::float8[],
    $7::float8[]) AS u(k, kind, sealed, eid, ename, seen, exp)
ORDER BY k, seen DESC
ON CONFLICT (key_hash) DO UPDATE SET kind = excluded.kind, sealed = excluded.sealed,
    event_id = excluded.event_id, event_name = excluded.event_name,
    seen_at = excluded.seen_at, expires_at = excluded.expires_at
WHERE excluded.seen_at >= s.seen_at
"""


class PgStitches:
    """Visitor contexts on the store's PostgreSQL database (the outbox's pool)."""

    def __init__(self, db: Database, sealer: Sealer, *, key: bytes, purge_every: float = 60.0):
        self.db = db
        self.path = db.name
        self._sealer = sealer
        self._lookup_key = derive_lookup_key(key)
        self._pending: list[tuple[list[tuple[Any, ...]], asyncio.Future[None]]] = []
        self._flusher: asyncio.Task[None] | None = None
        self._purge_every = purge_every
        self._stop = asyncio.Event()
        self._janitor: asyncio.Task[None] | None = None
        if purge_every > 0:
            self._janitor = asyncio.create_task(
                purge_loop(self._stop, self._purge_every, self.purge_expired),
                name="stitch-purge",
            )
        self._closed = False
        self.commits = 0
        self.committed_rows = 0

    def key_hash(self, kind: str, value: str) -> str:
        """The stored form of a key: hex HMAC-SHA256 of kind and value."""
        return lookup_hash(self._lookup_key, kind, value)

    async def put(self, keys: Mapping[str, str], ctx: VisitorContext, *, ttl: float) -> None:
        """Store `ctx` under every non-empty (kind, value) of `keys` for `ttl` seconds."""
        if not ttl > 0:
            raise ValueError(f"ttl must be a positive number of seconds, got {ttl!r}")
        if self._closed:
            raise StitchesClosed("the stitch store is closed")
        fields = {
            "user_data": ctx.user_data,
            "url": ctx.event_source_url,
            "consent": ctx.consent,
            "seen_at": ctx.seen_at,
        }
        rows = []
        for kind, value in keys.items():
            if value:
                digest = self.key_hash(kind, value)
                rows.append(
                    (
                        digest,
                        kind,
                        self._sealer.seal(fields, digest),
                        ctx.event_id,
                        ctx.event_name,
                        ctx.seen_at,
                        ctx.seen_at + ttl,
                    )
                )
        if not rows:
            return
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending.append((rows, done))
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush(), name="stitch-writer")
        await asyncio.shield(done)

    async def _flush(self) -> None:
        while self._pending:
            batch, self._pending = self._pending, []
            rows = [row for item, _ in batch for row in item]
            columns = [list(c) for c in zip(*rows, strict=True)]

            async def work(conn: Conn, columns: list[list[Any]] = columns) -> None:
                await conn.execute(_UPSERT, *columns)

            try:
                await self.db.run(work)
            except Exception as exc:
                log.error("Storing %d visitor context(s) failed: %s", len(rows), exc)
                for _, done in batch:
                    if not done.done():
                        done.set_exception(exc)
                        done.add_done_callback(lambda f: f.exception())
                continue
            self.commits += 1
            self.committed_rows += len(rows)
            for _, done in batch:
                if not done.done():
                    done.set_result(None)

    async def get(
        self, kind: str, value: str, *, now: float | None = None
    ) -> VisitorContext | None:
        """The context stored under (kind, value); None when absent, expired or unreadable."""
        return await self.find({kind: value}, now=now)

    async def find(
        self, keys: Mapping[str, str], *, now: float | None = None
    ) -> VisitorContext | None:
        """The context under the first of `keys` (in their order) that has one."""
        if self._closed:
            raise StitchesClosed("the stitch store is closed")
        at = time.time() if now is None else now
        hashes = [self.key_hash(kind, value) for kind, value in keys.items() if value]
        if not hashes:
            return None

        async def read(conn: Conn) -> list[Any]:
            return list(
                await conn.fetch(
                    "SELECT key_hash, kind, sealed, event_id, event_name FROM stitches "
                    "WHERE key_hash = ANY($1::text[]) AND expires_at > $2",
                    hashes,
                    at,
                )
            )

        by_hash = {r["key_hash"]: r for r in await self.db.run(read, transaction=False)}
        for digest in hashes:
            row = by_hash.get(digest)
            if row is None:
                continue
            try:
                fields = self._sealer.open(row["sealed"], digest)
            except SealError:
                log.warning(
                    "A stored visitor context (key kind %r) does not open with this key: it "
                    "was altered or the key changed. Treating it as absent.",
                    row["kind"],
                )
                continue
            return VisitorContext(
                user_data=dict(fields.get("user_data") or {}),
                event_source_url=fields.get("url"),
                consent=dict(fields.get("consent") or {}),
                event_id=row["event_id"],
                event_name=row["event_name"],
                seen_at=float(fields.get("seen_at") or 0.0),
            )
        return None

    async def purge_expired(self, now: float | None = None) -> int:
        """Delete expired contexts, a chunk per transaction; returns how many."""
        if self._closed:
            raise StitchesClosed("the stitch store is closed")
        at = time.time() if now is None else now
        total = 0
        while True:

            async def work(conn: Conn) -> int:
                status = await conn.execute(
                    "DELETE FROM stitches WHERE key_hash IN (SELECT key_hash FROM stitches "
                    "WHERE expires_at <= $1 LIMIT $2 FOR UPDATE SKIP LOCKED)",
                    at,
                    _PURGE_CHUNK,
                )
                return int(status.rsplit(" ", 1)[-1])

            count = await self.db.run(work)
            total += count
            if count < _PURGE_CHUNK:
                return total

    async def close(self) -> None:
        """Finish pending puts and stop purging (the pool belongs to the outbox)."""
        if self._closed:
            return
        self._stop.set()
        if self._janitor is not None:
            await self._janitor
        if self._flusher is not None:
            await self._flusher
        self._closed = True
