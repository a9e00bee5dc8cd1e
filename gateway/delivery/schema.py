"""The outbox's SQLite schema, its connection settings and its forward migrations.

The schema version lives in `PRAGMA user_version`; each migration is applied once, in
order, inside one transaction, so a buffer written by an older release opens in a newer one.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import aiosqlite

from gateway.delivery.queueschema import V11

# The page cache of each connection, in KiB (SQLite's default is 2 MiB). One group commit
# of 100 events touches ~100 random leaf pages in each of the event key index, the facts'
# visitor and event id indexes and the profiles table; at 2 MiB (500 pages) those B-trees
# evict one another's pages between commits, so each insert re-reads its page from the OS
# (measured: the facts' INSERT cost 1.7x as much with profiles on as off, the same with
# 32 MiB). The cache fills only as pages are read: a small file never uses it all.
CACHE_KIB = 32 * 1024

# Every state a row can be in; `sent-dry` is what --dry-run records instead of a send.
STATES = ("pending", "inflight", "sent", "sent-dry", "blocked", "dead")

MIGRATIONS: tuple[str, ...] = (
    # 1: the outbox and the per-pixel block list
    """
    CREATE TABLE events (
        id INTEGER PRIMARY KEY,
        pixel_id TEXT NOT NULL,
        event_name TEXT NOT NULL,
        event_id TEXT NOT NULL,
        event_time INTEGER NOT NULL,
        source TEXT NOT NULL,
        rule TEXT,
        test_event_code TEXT,
        payload TEXT NOT NULL,
        sealed BLOB,
        state TEXT NOT NULL DEFAULT 'pending',
        lease_owner TEXT,
        lease_expires REAL,
        attempts INTEGER NOT NULL DEFAULT 0,
        next_attempt_at REAL NOT NULL,
        last_error TEXT,
        fbtrace_id TEXT,
        created_at REAL NOT NULL,
        sent_at REAL,
        UNIQUE (pixel_id, event_name, event_id)
    );
    CREATE INDEX events_state_due ON events (state, next_attempt_at);
    CREATE INDEX events_state_sent ON events (state, sent_at);
    CREATE TABLE blocked_pixels (
        pixel_id TEXT PRIMARY KEY,
        token_fingerprint TEXT NOT NULL,
        reason TEXT NOT NULL,
        fbtrace_id TEXT,
        since REAL NOT NULL
    );
    """,
    # 2: what the dashboard reads without unsealing: the user_data keys an event carries
    # (comma list), whether the other side (browser vs server) sent it too, and a time index
    # for its last-hour / last-24-hours windows
    """
    ALTER TABLE events ADD COLUMN match_keys TEXT;
    ALTER TABLE events ADD COLUMN twin INTEGER NOT NULL DEFAULT 0;
    CREATE INDEX events_created ON events (created_at);
    """,
    # 3: visitor context stored under an identifying key (order id, lead id, ...) for
    # webhooks to stitch back; the key only as a keyed hash, the context sealed
    # (gateway/delivery/stitch.py)
    """
    CREATE TABLE stitches (
        key_hash TEXT PRIMARY KEY,
        kind TEXT NOT NULL,
        sealed BLOB NOT NULL,
        event_id TEXT,
        event_name TEXT,
        seen_at REAL NOT NULL,
        expires_at REAL NOT NULL
    );
    CREATE INDEX stitches_expires ON stitches (expires_at);
    """,
    # 4: event assembly and visitor profiles (gateway/pipeline/assembly.py,
    # gateway/delivery/profiles.py). `sources`: JSON list of the copies' labels; `ranks`:
    # where each contested field came from (NULL until a copy merged); `received_keys`:
    # the match keys of the first copy (`match_keys` is what is sent); `late`: copies that
    # came after the send (how many, the fields they would have added). The hold before
    # the first send is `next_attempt_at`: the sender claims what is due through
    # `events_state_due`, so holding costs no poll per event. Profiles: a visitor's hashed
    # identifiers under a keyed hash of their first-party id (WITHOUT ROWID: one B-tree
    # per write instead of two; `expires_at` also orders them by last update).
    """
    ALTER TABLE events ADD COLUMN sources TEXT;
    ALTER TABLE events ADD COLUMN ranks TEXT;
    ALTER TABLE events ADD COLUMN received_keys TEXT;
    ALTER TABLE events ADD COLUMN late TEXT;
    UPDATE events SET received_keys = match_keys;
    CREATE TABLE profiles (
        key_hash TEXT PRIMARY KEY,
        ids TEXT NOT NULL,
        updated_at REAL NOT NULL,
        expires_at REAL NOT NULL
    ) WITHOUT ROWID;
    CREATE INDEX profiles_expires ON profiles (expires_at);
    """,
    # 5: profiles found by stitch keys too (gateway/delivery/profiles.py). `profile_keys`:
    # the keyed hashes of an event's fbp and its stitch keys (`visitor_keys`), comma
    # separated, united over merged copies; NULL for rows stored with profiles off (their
    # fbp is hashed at claim). `profile_links`: a stitch key's hash -> the fbp key hash of
    # the profile it leads to, written when an event carries both.
    """
    ALTER TABLE events ADD COLUMN profile_keys TEXT;
    CREATE TABLE profile_links (
        key_hash TEXT PRIMARY KEY,
        profile TEXT NOT NULL,
        expires_at REAL NOT NULL
    ) WITHOUT ROWID;
    CREATE INDEX profile_links_profile ON profile_links (profile);
    """,
    # 6: the `[[sites]]` site each event came through (NULL: stored without sites), so that
    # a tenant's views and `--site` commands read their own rows only.
    """
    ALTER TABLE events ADD COLUMN site TEXT;
    CREATE INDEX events_site ON events (site, created_at);
    """,
    # 7: `profile_seen`: the time of the commit that stored the row when, as of that commit,
    # the row carried every identifier its visitor's profile held (NULL: not known). The
    # claim completes such a row only if its profile changed later, instead of reading and
    # comparing every claimed row's profile (gateway/delivery/assembler.py).
    "ALTER TABLE events ADD COLUMN profile_seen REAL;",
    # 8: Custom Audiences (gateway/delivery/audiences.py): per (site, audience) its Meta id
    # and last sync; the rows last sent to Meta (so a sync sends only changes); one lease
    # row so that one process syncs at a time. `site` is '' without sites.
    """
    CREATE TABLE audiences (
        site TEXT NOT NULL,
        name TEXT NOT NULL,
        audience_id TEXT,
        synced_at REAL,
        size INTEGER NOT NULL DEFAULT 0,
        coverage TEXT,
        last_result TEXT,
        last_error TEXT,
        blocked_token TEXT,
        PRIMARY KEY (site, name)
    );
    CREATE TABLE audience_members (
        site TEXT NOT NULL,
        name TEXT NOT NULL,
        row_hash TEXT NOT NULL,
        row TEXT NOT NULL,
        PRIMARY KEY (site, name, row_hash)
    ) WITHOUT ROWID;
    CREATE TABLE audience_lease (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        owner TEXT NOT NULL,
        expires REAL NOT NULL
    );
    """,
    # 9: insights (gateway/delivery/insights.py): one compact fact per accepted event
    # (reports outlive the outbox's `retention` and read no payload JSON) and one touchpoint
    # per visit; `site` is '' without sites, `visitor` the profile key of the `_fbp` (16 hex
    # digits). The indexes cover the report reads (no table lookups over a million rows).
    """
    CREATE TABLE insight_events (
        id INTEGER PRIMARY KEY,
        site TEXT NOT NULL DEFAULT '',
        visitor TEXT,
        event_name TEXT NOT NULL,
        at INTEGER NOT NULL,
        value REAL,
        currency TEXT,
        content_ids TEXT,
        match_keys TEXT,
        event_id TEXT
    );
    CREATE INDEX insight_events_event ON insight_events (event_id) WHERE event_id IS NOT NULL;
    CREATE INDEX insight_events_name ON insight_events
        (event_name, at, visitor, currency, value, site);
    CREATE INDEX insight_events_visitor ON insight_events (visitor, event_name, at, site);
    CREATE TABLE touchpoints (
        id INTEGER PRIMARY KEY,
        site TEXT NOT NULL DEFAULT '',
        visitor TEXT NOT NULL,
        at INTEGER NOT NULL,
        channel TEXT NOT NULL,
        source TEXT,
        medium TEXT,
        campaign TEXT,
        click_id TEXT,
        referrer_host TEXT,
        landing_path TEXT
    );
    CREATE INDEX touchpoints_visitor ON touchpoints
        (visitor, at, site, channel, source, campaign, landing_path);
    CREATE INDEX touchpoints_at ON touchpoints (at);
    """,
    # 10: catalog sync (gateway/delivery/catalog.py, rules in catalogstate.py): one row per
    # (site, item id) seen on a product page ('' without sites), what Meta holds of it and
    # what is still to send; `catalog_syncs`: each site's last sync and a parked token.
    """
    CREATE TABLE catalog_items (
        site TEXT NOT NULL,
        item_id TEXT NOT NULL,
        url TEXT NOT NULL,
        content_hash TEXT NOT NULL,
        data TEXT NOT NULL,
        state TEXT NOT NULL,
        action TEXT NOT NULL,
        synced_hash TEXT,
        first_seen REAL NOT NULL,
        last_seen REAL NOT NULL,
        due_at REAL NOT NULL,
        last_sent_at REAL,
        error TEXT,
        error_at REAL,
        misses INTEGER NOT NULL DEFAULT 0,
        handle TEXT,
        lease_owner TEXT,
        lease_expires REAL,
        attempts INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY (site, item_id)
    );
    CREATE INDEX catalog_items_url ON catalog_items (site, url);
    CREATE INDEX catalog_items_due ON catalog_items (site, state, due_at);
    CREATE TABLE catalog_syncs (
        site TEXT PRIMARY KEY,
        at REAL,
        result TEXT,
        message TEXT,
        blocked_token TEXT,
        blocked_reason TEXT,
        blocked_at REAL
    );
    """,
    # 11: an event written once (`event_data`), its delivery state in a narrow row
    # (`event_queue`), `events` a view over both (gateway/delivery/queueschema.py)
    V11,
)

SCHEMA_VERSION = len(MIGRATIONS)


@contextlib.asynccontextmanager
async def write_transaction(
    conn: aiosqlite.Connection, lock: asyncio.Lock
) -> AsyncIterator[aiosqlite.Connection]:
    """One write transaction on a shared connection, taken before any other writer's
    (BEGIN IMMEDIATE), rolled back when the body raises."""
    async with lock:
        await conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            await conn.execute("ROLLBACK")
            raise
        await conn.execute("COMMIT")


class SchemaError(Exception):
    """The buffer file cannot be used by this release."""


async def connect(path: Path, *, durable: bool = True, create: bool = True) -> aiosqlite.Connection:
    """Open the buffer in WAL mode and bring its schema up to date.

    With `create=False` (the queue command) a file that is not already an outbox is
    refused instead of being turned into one.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    # isolation_level=None: we issue BEGIN IMMEDIATE ourselves so writers never deadlock
    # upgrading a read transaction.
    conn = await aiosqlite.connect(str(path), isolation_level=None)
    try:
        await conn.execute("PRAGMA busy_timeout = 10000")
        await conn.execute(f"PRAGMA cache_size = -{CACHE_KIB}")
        await _wal(conn)
        # FULL syncs the WAL at every commit: a 202 survives power loss, not just a crash.
        # Group commit keeps that affordable.
        await conn.execute(f"PRAGMA synchronous = {'FULL' if durable else 'NORMAL'}")
        await migrate(conn, path, create=create)
    except sqlite3.DatabaseError as exc:
        await conn.close()
        raise SchemaError(
            f"{path} is not a capi-gateway outbox ({exc}); point --buffer at the outbox file"
        ) from exc
    except BaseException:
        await conn.close()
        raise
    return conn


async def migrate(conn: aiosqlite.Connection, path: Path, *, create: bool = True) -> None:
    """Apply the migrations this file has not seen yet."""
    if await _version(conn) == SCHEMA_VERSION:
        return
    # Every decision below is taken under the write lock: workers opening a new file
    # together must see either nothing or the finished schema, never each other's half.
    await conn.execute("BEGIN IMMEDIATE")
    try:
        version = await _version(conn)
        if version == 0:
            async with conn.execute("SELECT COUNT(*) FROM sqlite_master") as cur:
                row = await cur.fetchone()
            foreign = bool(row and row[0])
            if not create or foreign:
                raise SchemaError(
                    f"{path} is not a capi-gateway outbox"
                    + (" (it holds another application's tables)" if foreign else "")
                    + "; point --buffer at the outbox file, or at a new file to start one"
                )
        if version > SCHEMA_VERSION:
            raise SchemaError(
                f"{path}: buffer schema version {version} is newer than this release knows "
                f"({SCHEMA_VERSION}); upgrade capi-gateway or point --buffer at another file"
            )
        for number in range(version, SCHEMA_VERSION):
            for statement in statements(MIGRATIONS[number]):
                await conn.execute(statement)
        await conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        await conn.execute("COMMIT")
    except BaseException:
        await conn.execute("ROLLBACK")
        raise


def statements(script: str) -> list[str]:
    """The statements of a migration, in order (a trigger's body holds `;` too)."""
    out: list[str] = []
    part = ""
    for piece in script.split(";"):
        part += piece + ";"
        if sqlite3.complete_statement(part):
            if part.strip(" \n;"):
                out.append(part.strip())
            part = ""
    if part.strip(" \n;"):
        out.append(part.strip())
    return out


async def _wal(conn: aiosqlite.Connection) -> None:
    # Switching a new file to WAL takes an exclusive lock without waiting on the busy
    # handler: workers opening it together retry for a while instead of failing.
    for attempt in range(100):
        try:
            await conn.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or attempt == 99:
                raise
            await asyncio.sleep(0.02)


async def _version(conn: aiosqlite.Connection) -> int:
    async with conn.execute("PRAGMA user_version") as cur:
        row = await cur.fetchone()
    return int(row[0]) if row else 0
