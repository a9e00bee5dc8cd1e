"""Shared helpers for the PostgreSQL store tests: an open, migrated database per test."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Sequence
from typing import TYPE_CHECKING, Any

import pytest

from gateway.delivery.postgres.pool import Database
from gateway.models import NewEvent

if TYPE_CHECKING:
    from gateway.delivery.postgres.pool import Conn


@pytest.fixture
async def db(postgres_store_dsn: str) -> AsyncIterator[Database]:
    """The store's pool on this test's own database, schema migrated."""
    database = await Database.open(postgres_store_dsn, health_interval=0)
    try:
        yield database
    finally:
        await database.close()


async def add_rows(
    db: Database, count: int, *, event_name: str = "Purchase", pixel_id: str = "1", due: float = 0
) -> list[int]:
    """Insert `count` pending rows (plain rows: the store's merging insert is not ported yet)."""
    now = time.time()

    async def insert(conn: Conn) -> list[int]:
        rows: Sequence[Any] = await conn.fetch(
            "INSERT INTO events (pixel_id, event_name, event_id, event_time, source, payload, "
            "next_attempt_at, created_at) "
            "SELECT $1, $2, $3 || g, $4, 'api', $5, $6, $7 "
            "FROM generate_series(1, $8) AS g RETURNING id",
            pixel_id,
            event_name,
            f"ev-{now:.6f}-",
            int(now),
            json.dumps({"event_name": event_name}),
            due,
            now,
            count,
        )
        return [int(r["id"]) for r in rows]

    return await db.run(insert)


def purchase(event_id: str) -> NewEvent:
    """A Purchase of pixel 1, due at once, for the intake's tests."""
    return NewEvent("1", "Purchase", event_id, int(time.time()), {}, {}, "api", hold=0)


async def hold_key(other: Any, event_id: str) -> Any:
    """Another replica's open group commit on connection `other`: `purchase(event_id)`'s key
    inserted, not committed; the transaction is returned to commit or roll back."""
    blocker = other.transaction()
    await blocker.start()
    await other.execute(
        "INSERT INTO events (pixel_id, event_name, event_id, event_time, source, payload, "
        "next_attempt_at, created_at) VALUES ('1', 'Purchase', $2, 1, 'api', $1, 0, 0)",
        json.dumps({"event_name": "Purchase"}),
        event_id,
    )
    return blocker
