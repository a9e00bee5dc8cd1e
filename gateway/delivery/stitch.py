"""Visitor context stored under identifying keys, so a later webhook can be stitched to its visit.

When a page or form rule fires with an order id, lead id, hashed email, ... the visitor's
clear context (fbp, fbc, IP, user agent, page URL, consent) is kept under that key in the
buffer file; a webhook or `/events` call carrying the same key gets it merged back
(`gateway.edge.stitching` decides what is kept and how it merges).

The store treats key values as opaque strings: callers normalize them first (an email as
its lowercase trimmed address or its SHA-256 hex, the same way on both sides). A key is
never stored in clear, only as HMAC-SHA256 under a key derived from the outbox key, and
the context is sealed like the outbox's clear fields, bound to that hash.

Writes share the file with the outbox's group-commit writer, so they are kept short:
concurrent puts are committed together in one `BEGIN IMMEDIATE` transaction, and expired
rows are purged in small chunks by a background task every `purge_every` seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiosqlite

from gateway.delivery.schema import connect, write_transaction
from gateway.delivery.seal import Sealer, SealError
from gateway.models import META_WINDOW

log = logging.getLogger("gateway.stitch")

# Meta attributes a conversion to a visit for up to 7 days; a context older than that
# would only join an event Meta refuses anyway.
DEFAULT_TTL = float(META_WINDOW)
_SEP = "\x1f"
_LOOKUP_LABEL = b"capi-gateway stitch lookup key v1"
_PURGE_CHUNK = 500
_COLUMNS = "key_hash, kind, sealed, event_id, event_name, seen_at"
# A newer visit replaces an older one, never the reverse (puts can land out of order).
_UPSERT = (
    "INSERT INTO stitches (key_hash, kind, sealed, event_id, event_name, seen_at, expires_at) "
    "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (key_hash) DO UPDATE SET kind=excluded.kind, "
    "sealed=excluded.sealed, event_id=excluded.event_id, event_name=excluded.event_name, "
    "seen_at=excluded.seen_at, expires_at=excluded.expires_at "
    "WHERE excluded.seen_at >= stitches.seen_at"
)


class StitchesClosed(Exception):
    """The store is closed and takes no more calls."""


@dataclass(frozen=True, slots=True)
class VisitorContext:
    """What a visit leaves behind for a later server event to reuse."""

    # Clear fields only: fbp, fbc, client_ip_address, client_user_agent (those present).
    user_data: dict[str, str]
    event_source_url: str | None
    # Event-level consent fields to carry over (`Consent.event_fields()`).
    consent: dict[str, Any]
    # The browser-side event id to reuse, if the rule asked for it.
    event_id: str | None
    event_name: str | None
    seen_at: float


def site_kind(kind: str, site: str | None) -> str:
    """A stitch key kind as one `[[sites]]` site keeps it: `order_id@alpha` (as is without
    sites). Site B's webhook never finds the visit site A kept under the same order id,
    and `forget --site` tells each site's rows by their `kind`."""
    return kind if site is None else f"{kind}@{site}"


def kind_site(kind: str) -> str | None:
    """The site a stored `kind` belongs to (None: kept without sites)."""
    return kind.rsplit("@", 1)[1] if "@" in kind else None


def derive_lookup_key(key: bytes) -> bytes:
    """The HMAC key for key hashes, derived from the outbox key (never used for both jobs)."""
    return hmac.new(key, _LOOKUP_LABEL, hashlib.sha256).digest()


def lookup_hash(lookup_key: bytes, kind: str, value: str) -> str:
    """The stored form of a stitch key under `lookup_key` (see `derive_lookup_key`)."""
    if not kind or _SEP in kind:
        raise ValueError(f"stitch key kind must be a non-empty name, got {kind!r}")
    # surrogatepass: JSON can carry lone surrogates; they must hash, not raise.
    message = f"{kind}{_SEP}{value}".encode("utf-8", "surrogatepass")
    return hmac.new(lookup_key, message, hashlib.sha256).hexdigest()


@dataclass(slots=True)
class _Put:
    rows: list[tuple[Any, ...]]
    done: asyncio.Future[None]


class Stitches:
    """The stitch store on the buffer file. Create with `await Stitches.open(...)`."""

    def __init__(
        self,
        conn: aiosqlite.Connection,
        sealer: Sealer,
        lookup_key: bytes,
        *,
        path: Path,
        purge_every: float,
    ) -> None:
        self.path = path
        self._conn = conn
        self._sealer = sealer
        self._lookup_key = lookup_key
        self._lock = asyncio.Lock()
        self._pending: list[_Put] = []
        self._flusher: asyncio.Task[None] | None = None
        self._janitor: asyncio.Task[None] | None = None
        self._purge_every = purge_every
        self._stop = asyncio.Event()
        self._closed = False
        # Write transactions and the rows they carried (batching shows as rows > commits).
        self.commits = 0
        self.committed_rows = 0

    @classmethod
    async def open(
        cls, path: Path, sealer: Sealer, *, key: bytes, purge_every: float = 60.0
    ) -> Stitches:
        """Open (and migrate) the buffer on a connection of its own.

        `key` is the outbox encryption key (`seal.load_key`); the lookup key is derived
        from it. `purge_every` seconds between purges of expired rows; 0 turns it off.
        """
        # NORMAL, not FULL: in WAL mode a commit stays atomic, and losing the last few
        # stitches to a power cut costs a join, not an event. Skipping the fsync keeps
        # our write lock short for the outbox writer sharing the file.
        conn = await connect(path, durable=False)
        store = cls(conn, sealer, derive_lookup_key(key), path=path, purge_every=purge_every)
        if purge_every > 0:
            store._janitor = asyncio.create_task(
                purge_loop(store._stop, store._purge_every, store.purge_expired),
                name="stitch-purge",
            )
        return store

    def key_hash(self, kind: str, value: str) -> str:
        """The stored form of a key: hex HMAC-SHA256 of kind and value."""
        return lookup_hash(self._lookup_key, kind, value)

    # writing --------------------------------------------------------------------------------

    async def put(self, keys: Mapping[str, str], ctx: VisitorContext, *, ttl: float) -> None:
        """Store `ctx` under every non-empty (kind, value) of `keys` for `ttl` seconds.

        A newer visit under the same key replaces an older one. Call only for a visitor
        who consented: without consent nothing may be stored. Returns once committed.
        """
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
        rows: list[tuple[Any, ...]] = []
        for kind, value in keys.items():
            if not value:
                continue
            digest = self.key_hash(kind, value)
            sealed = self._sealer.seal(fields, digest)
            expires = ctx.seen_at + ttl
            rows.append((digest, kind, sealed, ctx.event_id, ctx.event_name, ctx.seen_at, expires))
        if not rows:
            return
        item = _Put(rows, asyncio.get_running_loop().create_future())
        self._pending.append(item)
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush(), name="stitch-writer")
        await asyncio.shield(item.done)

    async def _flush(self) -> None:
        # Puts arriving while a transaction runs wait for it and then go in together.
        while self._pending:
            batch, self._pending = self._pending, []
            rows = [row for item in batch for row in item.rows]
            try:
                async with self._transaction() as conn:
                    await conn.executemany(_UPSERT, rows)
            except Exception as exc:
                log.error("Storing %d visitor context(s) failed: %s", len(rows), exc)
                for item in batch:
                    _settle(item.done, exc)
                continue
            self.commits += 1
            self.committed_rows += len(rows)
            for item in batch:
                _settle(item.done, None)

    @contextlib.asynccontextmanager
    async def _transaction(self) -> AsyncIterator[aiosqlite.Connection]:
        async with write_transaction(self._conn, self._lock) as conn:
            yield conn

    # reading --------------------------------------------------------------------------------

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
        now = time.time() if now is None else now
        hashes = [self.key_hash(kind, value) for kind, value in keys.items() if value]
        if not hashes:
            return None
        marks = ", ".join("?" * len(hashes))
        # Under the lock: never read a batch of puts that is not committed yet.
        async with self._lock:
            rows = await self._conn.execute_fetchall(
                f"SELECT {_COLUMNS} FROM stitches WHERE key_hash IN ({marks}) AND expires_at > ?",
                (*hashes, now),
            )
        by_hash = {row[0]: row for row in rows}
        for digest in hashes:
            row = by_hash.get(digest)
            if row is not None and (ctx := self._open(row)) is not None:
                return ctx
        return None

    def _open(self, row: Any) -> VisitorContext | None:
        digest, kind, sealed, event_id, event_name, _ = row
        try:
            fields = self._sealer.open(sealed, digest)
        except SealError:
            log.warning(
                "A stored visitor context (key kind %r) does not open with this key: it was "
                "altered or the key changed. Treating it as absent.",
                kind,
            )
            return None
        return VisitorContext(
            user_data=dict(fields.get("user_data") or {}),
            event_source_url=fields.get("url"),
            consent=dict(fields.get("consent") or {}),
            event_id=event_id,
            event_name=event_name,
            seen_at=float(fields.get("seen_at") or 0.0),
        )

    # upkeep ---------------------------------------------------------------------------------

    async def purge_expired(self, now: float | None = None) -> int:
        """Delete expired contexts, a chunk per transaction; returns how many."""
        if self._closed:
            raise StitchesClosed("the stitch store is closed")
        now = time.time() if now is None else now
        total = 0
        while True:
            async with self._transaction() as conn:
                cur = await conn.execute(
                    "DELETE FROM stitches WHERE key_hash IN (SELECT key_hash FROM stitches "
                    "WHERE expires_at <= ? LIMIT ?)",
                    (now, _PURGE_CHUNK),
                )
                count = int(cur.rowcount)
            total += count
            if count < _PURGE_CHUNK:
                return total
            # Leave a gap between chunks for the outbox writer waiting on the file lock.
            await asyncio.sleep(0.01)

    async def close(self) -> None:
        """Finish pending puts, stop purging and close the connection."""
        if self._closed:
            return
        self._stop.set()
        if self._janitor is not None:
            await self._janitor
        if self._flusher is not None:
            await self._flusher
        self._closed = True
        async with self._lock:
            await self._conn.close()


def _settle(future: asyncio.Future[None], error: BaseException | None) -> None:
    if future.done():
        return
    if error is None:
        future.set_result(None)
        return
    future.set_exception(error)
    # A caller cancelled meanwhile never reads it: mark it read so asyncio does not log it.
    future.add_done_callback(lambda f: f.exception())


async def purge_loop(
    stop: asyncio.Event, every: float, purge: Callable[[], Awaitable[int]]
) -> None:
    """Purge expired visitor contexts every `every` seconds until `stop` is set (both stores)."""
    while True:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), every)
            return
        try:
            count = await purge()
        except Exception as exc:
            log.error("Purging expired visitor contexts failed: %s", exc)
            continue
        if count:
            log.info("Purged %d expired visitor context(s).", count)
