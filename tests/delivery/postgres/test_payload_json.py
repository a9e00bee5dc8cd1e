"""Schema migration 14: payloads stored as `json` text in `event_data.payload`; rows stored
before keep their `jsonb` payload (now `payload_jsonb`) and read the same, and the migration
does not rewrite the table."""

from __future__ import annotations

import json
import time
from typing import Any

import asyncpg
import pytest

from gateway.delivery.postgres.migrations import migrate
from gateway.delivery.postgres.outbox import PgOutbox
from gateway.delivery.postgres.pool import Database
from gateway.delivery.postgres.schema import MIGRATIONS
from gateway.delivery.seal import Sealer
from gateway.models import NewEvent
from tests.delivery.stores import KEY

_OLD_ROW = (
    "INSERT INTO events (pixel_id, event_name, event_id, event_time, source, payload, "
    "next_attempt_at, created_at, match_keys, sources) "
    "VALUES ('1', 'Purchase', $1, $2, 'api', $3::jsonb, 0, $4, 'em', '[\"api\"]') RETURNING id"
)
# Where each event's payload is held: (jsonb column set, json column set).
_WHERE = "SELECT event_id, payload_jsonb IS NOT NULL, payload IS NOT NULL FROM event_data"


def _event(event_id: str, user_data: dict[str, Any], value: float) -> NewEvent:
    now = int(time.time())
    payload = {
        "event_name": "Purchase",
        "event_time": now,
        "event_id": event_id,
        "action_source": "website",
        "user_data": user_data,
        "custom_data": {"value": value, "currency": "EUR"},
    }
    return NewEvent("1", "Purchase", event_id, now, payload, {}, "api", hold=0)


async def _where(db: Database) -> dict[str, tuple[bool, bool]]:
    return {r[0]: (r[1], r[2]) for r in await db.run(_fetch_where, transaction=False)}


async def _fetch_where(conn: Any) -> list[Any]:
    return list(await conn.fetch(_WHERE))


async def test_migration_keeps_the_table_and_reads_older_rows(postgres_dsn: str) -> None:
    """A row stored under schema 13 is claimed with its payload after migration 14, which
    changes the catalog only (the table's file stays: no rewrite under an exclusive lock);
    a copy merged into it moves its payload to the `json` column."""
    payload = {"event_name": "Purchase", "event_id": "old", "user_data": {"em": ["a" * 64]}}
    db = await Database.open(postgres_dsn, health_interval=0)
    try:
        assert await migrate(db, MIGRATIONS[:13]) == 13
        await db.fetchval(_OLD_ROW, "old", int(time.time()), json.dumps(payload), time.time())
        await db.fetchval(_OLD_ROW, "older", int(time.time()), json.dumps(payload), time.time())
        filenode = await db.fetchval("SELECT pg_relation_filenode('event_data')")
        assert await migrate(db, MIGRATIONS[:14]) == 1
        assert await db.fetchval("SELECT pg_relation_filenode('event_data')") == filenode
        assert await _where(db) == {"old": (True, False), "older": (True, False)}
    finally:
        await db.close()

    box = await PgOutbox.open(postgres_dsn, Sealer(KEY), group_commit_ms=1)
    try:
        copy = _event("old", {"ph": ["b" * 64]}, 5.0)
        assert await box.add([copy, _event("new", {"em": ["c" * 64]}, 7.5)]) == ["merged", "new"]
        assert await _where(box.db) == {
            "old": (False, True),
            "older": (True, False),
            "new": (False, True),
        }
        claimed = {c.event_id: c.event for c in await box.claim("r", limit=10, lease=60)}
        assert claimed["older"] == payload
        assert sorted(claimed["old"]["user_data"]) == ["em", "ph"]  # the copy merged
        assert claimed["new"]["custom_data"] == {"value": 7.5, "currency": "EUR"}
        # The view shows every payload as jsonb, whichever column holds it.
        view = {
            r["event_id"]: json.loads(r["payload"])
            for r in await box.db.run(_fetch_view, transaction=False)
        }
        assert view == claimed
    finally:
        await box.close()


async def _fetch_view(conn: Any) -> list[Any]:
    return list(await conn.fetch("SELECT event_id, payload FROM events"))


async def test_a_payload_written_through_the_view_replaces_the_stored_one(
    postgres_store_dsn: str,
) -> None:
    """An operator's UPDATE of the view's payload is what is read and sent after, and no
    copy of the old payload stays behind in `payload_jsonb` (an erasure by hand)."""
    box = await PgOutbox.open(postgres_store_dsn, Sealer(KEY), group_commit_ms=1)
    try:
        assert await box.add([_event("e1", {"em": ["d" * 64]}, 1.0)]) == ["new"]
        # As if stored before migration 14 and completed since: both columns hold it.
        await box.db.fetchval("UPDATE event_data SET payload_jsonb = payload::jsonb")
        scrubbed = {"event_name": "Purchase", "event_id": "e1", "user_data": {}}
        await box.db.fetchval(
            "UPDATE events SET payload = $1::jsonb WHERE event_id = 'e1'", json.dumps(scrubbed)
        )
        assert await _where(box.db) == {"e1": (False, True)}
        (claimed,) = await box.claim("r", limit=10, lease=60)
        assert claimed.event == scrubbed
    finally:
        await box.close()


async def test_a_row_needs_a_payload(postgres_store_dsn: str) -> None:
    """`payload` may be NULL now, but not both columns (the NOT VALID check)."""
    db = await Database.open(postgres_store_dsn, health_interval=0)
    try:
        with pytest.raises(asyncpg.CheckViolationError, match="event_data_payload"):
            await db.fetchval(
                "INSERT INTO event_data (pixel_id, event_name, event_id, event_time, source, "
                "created_at) VALUES ('1', 'Purchase', 'none', 0, 'api', 0)"
            )
    finally:
        await db.close()
