"""Bring a PostgreSQL store's schema up to date, once, however many replicas start together.

The applied versions are rows of `capigw.schema_migrations`. A replica that finds the
schema current goes on without taking any lock. Otherwise it takes a session-level
`pg_advisory_lock` (one key for all of capi-gateway), reads the version again under it and
applies what is still missing, each migration in its own transaction together with its
version row: the replicas that waited find nothing left to do, and a replica killed halfway
leaves the database at the last migration it committed (the server frees its lock).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING

import asyncpg

from gateway.delivery.postgres.pool import LOST, SCHEMA, Database, DatabaseUnavailable
from gateway.delivery.postgres.schema import MIGRATIONS, Migration

if TYPE_CHECKING:
    from gateway.delivery.postgres.pool import Conn

log = logging.getLogger("gateway.postgres")

# pg_advisory_lock takes a bigint: the first 8 bytes of a hash of a name only we use.
LOCK_KEY = int.from_bytes(
    hashlib.sha256(b"capi-gateway schema migrations").digest()[:8], "big", signed=True
)
VERSIONS_TABLE = f"{SCHEMA}.schema_migrations"


class SchemaError(Exception):
    """The database holds a schema this release cannot use."""


async def current_version(db: Database) -> int:
    """The newest migration applied to the database, 0 when none."""

    async def read(conn: Conn) -> int:
        return await _version(conn)

    return await db.run(read, transaction=False)


async def migrate(db: Database, migrations: Sequence[Migration] = MIGRATIONS) -> int:
    """Apply the migrations the database has not seen; returns how many this call applied."""
    latest = len(migrations)
    if await current_version(db) == latest:
        return 0
    try:
        async with db.connection() as conn:
            await conn.execute("SELECT pg_advisory_lock($1)", LOCK_KEY)
            try:
                return await _apply(conn, migrations, db.name)
            finally:
                # A lost connection has freed the lock with its session already.
                with contextlib.suppress(asyncpg.PostgresError, asyncpg.InterfaceError, OSError):
                    await conn.execute("SELECT pg_advisory_unlock($1)", LOCK_KEY)
    except LOST as exc:
        raise DatabaseUnavailable(
            f"PostgreSQL at {db.name} went away while its schema was being migrated ({exc}); "
            "the next start continues from the last migration committed"
        ) from exc


async def _apply(conn: Conn, migrations: Sequence[Migration], name: str) -> int:
    latest = len(migrations)
    version = await _version(conn)
    if version > latest:
        raise SchemaError(
            f"PostgreSQL at {name}: store schema version {version} is newer than this "
            f"release knows ({latest}); upgrade capi-gateway (every replica) or point "
            "--buffer at another database"
        )
    if version == latest:
        return 0
    if version == 0:
        foreign = await conn.fetchval(
            "SELECT count(*) FROM pg_tables WHERE schemaname = $1 "
            "AND tablename <> 'schema_migrations'",
            SCHEMA,
        )
        if foreign:
            raise SchemaError(
                f"PostgreSQL at {name}: schema {SCHEMA!r} holds tables capi-gateway did not "
                "create; point --buffer at another database, or drop that schema"
            )
    await conn.execute(
        f"CREATE SCHEMA IF NOT EXISTS {SCHEMA}; "
        f"CREATE TABLE IF NOT EXISTS {VERSIONS_TABLE} ("
        "version integer PRIMARY KEY, description text NOT NULL, "
        "applied_at timestamptz NOT NULL DEFAULT now())"
    )
    for migration in migrations[version:]:
        async with conn.transaction():
            await conn.execute(migration.sql)
            await conn.execute(
                f"INSERT INTO {VERSIONS_TABLE} (version, description) VALUES ($1, $2)",
                migration.version,
                migration.description,
            )
        log.info(
            "PostgreSQL store at %s: applied migration %d (%s).",
            name,
            migration.version,
            migration.description,
        )
    return latest - version


async def _version(conn: Conn) -> int:
    # to_regclass: no error (and no aborted transaction) while the table does not exist.
    if await conn.fetchval("SELECT to_regclass($1)", VERSIONS_TABLE) is None:
        return 0
    return int(await conn.fetchval(f"SELECT coalesce(max(version), 0) FROM {VERSIONS_TABLE}"))
