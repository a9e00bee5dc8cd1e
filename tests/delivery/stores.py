"""Both store backends for the store's own tests: the `store` fixture and backend-neutral reads.

`store` yields an open outbox on a fresh SQLite file or a fresh PostgreSQL database (the
session's throwaway cluster, tests/postgres.py), so each test parametrized over it runs on
both. `count_rows` reads what was committed on a connection of its own.
"""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from gateway.delivery.catalog import SqliteCatalog
from gateway.delivery.outbox import Outbox
from gateway.delivery.postgres.catalog import PgCatalog
from gateway.delivery.postgres.outbox import PgOutbox
from gateway.delivery.postgres.pool import SCHEMA, Database
from gateway.delivery.seal import Sealer
from gateway.delivery.store import CatalogStore, OutboxStore

KEY = bytes(range(32))
BACKENDS = ("sqlite", "postgresql")


@pytest.fixture(params=BACKENDS)
def store_location(request: pytest.FixtureRequest, tmp_path: Path) -> Path | str:
    """A fresh store of each backend: a SQLite file path or a PostgreSQL URL.

    Synchronous, so that the session's PostgreSQL server can start outside any event loop.
    """
    if request.param == "sqlite":
        return tmp_path / "o.db"
    return str(request.getfixturevalue("postgres_store_dsn"))


@pytest.fixture
async def store(store_location: Path | str) -> AsyncIterator[OutboxStore]:
    """An open outbox on `store_location`, closed after the test."""
    box: OutboxStore
    if isinstance(store_location, Path):
        box = await Outbox.open(store_location, Sealer(KEY), group_commit_ms=5)
    else:
        box = await PgOutbox.open(store_location, Sealer(KEY), group_commit_ms=5)
    yield box
    await box.close()


async def count_rows(box: OutboxStore | Path, where: str = "1=1") -> int:
    """Rows of the events table matching `where`, on a separate connection."""
    sql = f"SELECT COUNT(*) FROM events WHERE {where}"
    if isinstance(box, Path):
        path = box
    elif isinstance(box, Outbox):
        path = box.path
    else:
        assert isinstance(box, PgOutbox)
        return int(await box.db.fetchval(sql.replace("FROM events", f"FROM {SCHEMA}.events")))
    with sqlite3.connect(path) as conn:
        return int(conn.execute(sql).fetchone()[0])


async def fetch(box: OutboxStore, sql: str) -> list[tuple[object, ...]]:
    """Rows of a SELECT on either backend (the test's own SQL, both dialects' common part)."""
    if isinstance(box, Outbox):
        with sqlite3.connect(box.path) as conn:
            return [tuple(r) for r in conn.execute(sql).fetchall()]
    assert isinstance(box, PgOutbox)

    async def read(conn: asyncpg.Connection) -> list[tuple[object, ...]]:  # type: ignore[type-arg]
        return [tuple(r) for r in await conn.fetch(sql)]

    return await box.db.run(read, transaction=False)


Opener = Callable[..., Awaitable[OutboxStore]]


@pytest.fixture
async def open_store(store_location: Path | str, tmp_path: Path) -> AsyncIterator[Opener]:
    """`await open_store(name, **options)`: an outbox of the test's backend, closed after it.

    On SQLite each name is a file of its own; on PostgreSQL every name opens the test's one
    database (the tests using it keep their event ids apart).
    """
    opened: list[OutboxStore] = []

    async def opener(name: str = "o.db", **options: Any) -> OutboxStore:
        box: OutboxStore
        if isinstance(store_location, Path):
            box = await Outbox.open(tmp_path / name, Sealer(KEY), **options)
        else:
            box = await PgOutbox.open(store_location, Sealer(KEY), **options)
        opened.append(box)
        return box

    yield opener
    for box in opened:
        await box.close()


async def event_rows(box: OutboxStore) -> list[dict[str, Any]]:
    """Every row of the events table as a dict, in id order (JSON columns as text)."""
    if isinstance(box, Outbox):
        with sqlite3.connect(box.path) as conn:
            conn.row_factory = sqlite3.Row
            return [dict(r) for r in conn.execute("SELECT * FROM events ORDER BY id")]
    assert isinstance(box, PgOutbox)

    async def read(conn: Any) -> list[dict[str, Any]]:
        return [dict(r) for r in await conn.fetch("SELECT * FROM events ORDER BY id")]

    return await box.db.run(read, transaction=False)


@pytest.fixture
async def catalog_store(store_location: Path | str) -> AsyncIterator[CatalogStore]:
    """The catalog store of each backend on `store_location`, closed after the test."""
    store: CatalogStore
    db: Database | None = None
    if isinstance(store_location, Path):
        store = await SqliteCatalog.open(store_location)
    else:
        db = await Database.open(store_location, health_interval=0)
        store = PgCatalog(db)
    yield store
    await store.close()
    if db is not None:
        await db.close()
