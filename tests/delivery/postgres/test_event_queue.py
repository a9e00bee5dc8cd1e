"""Schema migration 11: an event's delivery state in `event_queue`, beside its write-once
`event_data` row; `events` is a view over both."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

from gateway.delivery.postgres import rows as rows_sql
from gateway.delivery.postgres.migrations import migrate
from gateway.delivery.postgres.outbox import PgOutbox
from gateway.delivery.postgres.pool import Database
from gateway.delivery.postgres.queue import queue_depth
from gateway.delivery.postgres.reads import PgReader
from gateway.delivery.postgres.schema import MIGRATIONS
from gateway.delivery.seal import Sealer
from gateway.models import NewEvent
from tests.delivery.stores import KEY

_ROW = (
    "INSERT INTO events (pixel_id, event_name, event_id, event_time, source, payload, state, "
    "lease_owner, lease_expires, attempts, next_attempt_at, last_error, fbtrace_id, "
    "created_at, sent_at, match_keys, twin, sources, late, site, profile_keys) "
    "VALUES ($1, $2, $3, $4, 'api', $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, 'em,fbp', "
    "$15, '[\"api\"]', $16, $17, $18) RETURNING id"
)


async def _rows(db: Database) -> list[dict[str, Any]]:
    return [dict(r) for r in await db.run(_fetch_events, transaction=False)]


async def _fetch_events(conn: Any) -> list[Any]:
    return list(await conn.fetch("SELECT * FROM events ORDER BY id"))


async def test_migration_11_keeps_every_row_in_flight(postgres_dsn: str) -> None:
    """Rows due, held, claimed, dead-lettered, sent and parked under schema 10 come through
    the migration whole (every column, counters included) and go on from where they were."""
    now = time.time()
    db = await Database.open(postgres_dsn, health_interval=0)
    try:
        assert await migrate(db, MIGRATIONS[:10]) == 10
        payload = json.dumps({"event_name": "Purchase", "user_data": {"em": ["a" * 64]}})
        late = json.dumps({"copies": 1, "fields": ["ph"], "sources": ["webhook"]})
        rows = {
            # event_id: pixel, name, state, lease owner, lease expiry, attempts, due,
            # error, fbtrace, sent_at, twin, late, site, profile keys
            "due": ("1", "Purchase", "pending", None, None, 0, 0.0, None, None, None),
            "held": ("1", "Lead", "pending", None, None, 0, now + 3600, None, None, None),
            "claimed": (
                "1",
                "Purchase",
                "inflight",
                "replica-a",
                now + 600,
                1,
                0.0,
                None,
                None,
                None,
            ),
            "retrying": (
                "1",
                "Purchase",
                "pending",
                None,
                None,
                2,
                now + 60,
                "HTTP 500",
                "tr-1",
                None,
            ),
            "dead": ("1", "Lead", "dead", None, None, 5, 0.0, "gave up", "tr-2", now - 5),
            "sent": ("1", "Purchase", "sent", None, None, 1, 0.0, None, "tr-3", now - 9),
            "parked": ("222", "Purchase", "blocked", None, None, 1, 0.0, "token", None, None),
        }
        for i, (event_id, r) in enumerate(rows.items()):
            await db.fetchval(
                _ROW, r[0], r[1], event_id, int(now), payload, r[2], r[3], r[4], r[5], r[6],
                r[7], r[8], now - 100 + i, r[9], i % 2 == 0, late if event_id == "sent" else None,
                "shop" if i % 3 == 0 else None, "p1,~s1" if event_id == "due" else None,
            )  # fmt: skip
        await db.fetchval(
            "INSERT INTO blocked_pixels (pixel_id, token_fingerprint, reason, since) "
            "VALUES ('222', 'fp', 'token refused', 0)"
        )
        before = await _rows(db)
        depth = await db.run(queue_depth, transaction=False)
        assert depth == {
            "Purchase": {"pending": 2, "inflight": 1, "sent": 1, "blocked": 1},
            "Lead": {"pending": 1, "dead": 1},
        }

        assert await migrate(db, MIGRATIONS[:11]) == 1

        # Every row, every column, in the same order under the same names.
        assert await _rows(db) == before
        assert await db.run(queue_depth, transaction=False) == depth
        assert await db.fetchval("SELECT count(*) FROM event_queue") == len(rows)
        assert await db.fetchval("SELECT count(*) FROM event_data") == len(rows)
    finally:
        await db.close()

    box = await PgOutbox.open(postgres_dsn, Sealer(KEY), group_commit_ms=1)
    try:
        ids = {r["event_id"]: int(r["id"]) for r in before}
        # Only the due row: the held one is not due, the claimed one still leased, the
        # parked one's pixel blocked, the retry not due yet.
        claimed = await box.claim("replica-b", limit=10, lease=60)
        assert [(c.id, c.event_id, c.attempts) for c in claimed] == [(ids["due"], "due", 1)]
        assert claimed[0].event["user_data"] == {"em": ["a" * 64]}
        # The lease taken before the migration is still its holder's to complete.
        await box.mark_sent([ids["claimed"]], "replica-a", fbtrace_id="tr-4")
        assert await box.requeue_dead([ids["dead"]]) == 1
        assert await box.unblock_pixel("222") == 1
        states = {r["event_id"]: r["state"] for r in await _rows(box.db)}
        assert states == {
            "due": "inflight",
            "held": "pending",
            "claimed": "sent",
            "retrying": "pending",
            "dead": "pending",
            "sent": "sent",
            "parked": "pending",
        }
        # New events continue the ids.
        assert await box.add([_event("new")]) == ["new"]
        new_id = await box.db.fetchval("SELECT id FROM events WHERE event_id = 'new'")
        assert isinstance(new_id, int) and new_id > max(ids.values())
        counted = await box.db.fetchval("SELECT count(*) FROM events WHERE state = 'pending'")
        assert (await box.stats())["states"]["pending"] == counted == 5
    finally:
        await box.close()


def _event(event_id: str) -> NewEvent:
    return NewEvent("1", "Purchase", event_id, int(time.time()), {}, {}, "api", hold=0)


async def test_a_claim_and_its_result_leave_the_event_row_as_stored(
    postgres_store_dsn: str,
) -> None:
    """Claiming and recording a send write the narrow queue row only: the event's
    `event_data` row keeps its first version (no copy of the payload per state change)."""
    box = await PgOutbox.open(postgres_store_dsn, Sealer(KEY), group_commit_ms=1)
    try:
        assert await box.add([_event("once")]) == ["new"]
        version = "SELECT ctid::text || '/' || xmin::text FROM {} WHERE id = $1"
        [row_id] = [int(r["id"]) for r in await _rows(box.db)]
        stored = await box.db.fetchval(version.format("event_data"), row_id)
        queued = await box.db.fetchval(version.format("event_queue"), row_id)

        [claimed] = await box.claim("replica-a", limit=10, lease=60)
        await box.mark_sent([claimed.id], "replica-a", fbtrace_id="tr")

        assert await box.db.fetchval(version.format("event_data"), row_id) == stored
        assert await box.db.fetchval(version.format("event_queue"), row_id) != queued
        [row] = await _rows(box.db)
        assert (row["state"], row["attempts"], row["fbtrace_id"]) == ("sent", 1, "tr")
    finally:
        await box.close()


async def test_the_buffer_size_counts_both_tables(postgres_store_dsn: str) -> None:
    """`max_buffer_mb` is judged on the events' bytes: `event_data` and `event_queue` with
    their indexes (the `events` view itself has none)."""
    box = await PgOutbox.open(postgres_store_dsn, Sealer(KEY), group_commit_ms=1)
    try:
        assert await box.add([_event(f"size-{i}") for i in range(200)]) == ["new"] * 200
        tables = await box.db.fetchval(
            "SELECT pg_total_relation_size('event_data') + pg_total_relation_size('event_queue')"
        )
        assert isinstance(tables, int) and tables > 0
        assert await box.used_bytes() == tables
        reader = PgReader(box.db, limit_bytes=1)
        assert await reader.used_bytes() == tables
        assert (await reader.snapshot()).used_bytes == tables
    finally:
        await box.close()


async def test_a_merge_holds_claims_off_but_not_a_senders_result(postgres_store_dsn: str) -> None:
    """While a group commit holds the rows its copies merge into, no claim takes them, but
    the result of a send already under way (a late copy's row) is recorded at once instead
    of waiting for that commit's end."""
    box = await PgOutbox.open(postgres_store_dsn, Sealer(KEY), group_commit_ms=1)
    try:
        assert await box.add([_event("sending"), _event("waiting")]) == ["new", "new"]
        [sending] = await box.claim("replica-a", limit=1, lease=60)
        assert sending.event_id == "sending"
        async with box.db.connection() as conn, conn.transaction():
            # The lock step of another group commit with a copy of each.
            locked = await conn.fetch(
                rows_sql._LOCK, ["1", "1"], ["Purchase", "Purchase"], ["sending", "waiting"]
            )
            assert {r["state"] for r in locked} == {"inflight", "pending"}
            await asyncio.wait_for(
                box.mark_sent([sending.id], "replica-a", fbtrace_id="tr"), timeout=3
            )
            assert await box.claim("replica-b", limit=10, lease=60) == []
        [waiting] = await box.claim("replica-b", limit=10, lease=60)
        assert waiting.event_id == "waiting"
    finally:
        await box.close()
