"""Migrations of the PostgreSQL store: once under concurrent starters, forward only."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest

from gateway.delivery.postgres.migrations import (
    VERSIONS_TABLE,
    SchemaError,
    current_version,
    migrate,
)
from gateway.delivery.postgres.pool import Database
from gateway.delivery.postgres.schema import MIGRATIONS, SCHEMA_VERSION, Migration
from tests.delivery.postgres.conftest import add_rows

STARTERS = 6
TABLES = {
    # `events` is a view over these two since migration 11.
    "event_data",
    "event_inflight",
    "event_queue",
    "blocked_pixels",
    "stitches",
    "profiles",
    "profile_links",
    "queue_counts",
    "schema_migrations",
    "audiences",
    "audience_members",
    "audience_lease",
    "insight_events",
    "touchpoints",
    "catalog_items",
    "catalog_syncs",
}


async def _tables(db: Database) -> set[str]:
    async def read(conn: asyncpg.Connection) -> set[str]:
        rows = await conn.fetch("SELECT tablename FROM pg_tables WHERE schemaname = 'capigw'")
        return {r["tablename"] for r in rows}

    return await db.run(read)


async def _versions(db: Database) -> list[int]:
    async def read(conn: asyncpg.Connection) -> list[int]:
        return [r[0] for r in await conn.fetch(f"SELECT version FROM {VERSIONS_TABLE}")]

    return await db.run(read)


def test_migrations_are_numbered_in_order() -> None:
    assert [m.version for m in MIGRATIONS] == list(range(1, SCHEMA_VERSION + 1))


async def test_concurrent_starters_migrate_once(postgres_dsn: str) -> None:
    pools = await asyncio.gather(
        *(Database.open(postgres_dsn, health_interval=0) for _ in range(STARTERS))
    )
    try:
        # Every starter sees an empty database before any of them takes the lock.
        assert {await current_version(db) for db in pools} == {0}
        applied = await asyncio.gather(*(migrate(db) for db in pools))
        assert sorted(applied) == [0] * (STARTERS - 1) + [SCHEMA_VERSION]
        assert await _versions(pools[0]) == list(range(1, SCHEMA_VERSION + 1))
        assert await _tables(pools[0]) == TABLES
        assert {await current_version(db) for db in pools} == {SCHEMA_VERSION}
    finally:
        await asyncio.gather(*(db.close() for db in pools))


async def test_running_again_changes_nothing(db: Database) -> None:
    ids = await add_rows(db, 3)
    assert await migrate(db) == 0
    assert await _versions(db) == list(range(1, SCHEMA_VERSION + 1))
    assert await db.fetchval("SELECT count(*) FROM events") == len(ids)


async def test_a_new_migration_is_applied_forward(db: Database) -> None:
    await add_rows(db, 2)
    extra = Migration(SCHEMA_VERSION + 1, "a test column", "ALTER TABLE event_data ADD note text")
    assert await migrate(db, (*MIGRATIONS, extra)) == 1
    assert await current_version(db) == SCHEMA_VERSION + 1
    assert await db.fetchval("SELECT count(*) FROM event_data WHERE note IS NULL") == 2
    # An older release refuses the newer schema instead of writing into it.
    with pytest.raises(SchemaError, match="newer than this release knows"):
        await migrate(db)


async def test_a_failing_migration_leaves_the_last_good_version(db: Database) -> None:
    broken = Migration(SCHEMA_VERSION + 1, "broken", "ALTER TABLE event_data ADD x text; SELEC 1")
    with pytest.raises(asyncpg.PostgresSyntaxError):
        await migrate(db, (*MIGRATIONS, broken))
    assert await current_version(db) == SCHEMA_VERSION
    assert (
        await db.fetchval(
            "SELECT count(*) FROM information_schema.columns "
            "WHERE table_schema = 'capigw' AND table_name = 'event_data' AND column_name = 'x'"
        )
        == 0
    )
    # The lock was given back: the next start migrates.
    fixed = Migration(SCHEMA_VERSION + 1, "fixed", "ALTER TABLE event_data ADD x text")
    assert await migrate(db, (*MIGRATIONS, fixed)) == 1


async def test_a_schema_of_someone_else_is_refused(postgres_dsn: str) -> None:
    db = await Database.open(postgres_dsn, health_interval=0)
    try:
        await db.fetchval("CREATE SCHEMA capigw")
        await db.fetchval("CREATE TABLE capigw.events (x int)")
        with pytest.raises(SchemaError, match="did not create"):
            await migrate(db)
    finally:
        await db.close()
