"""The queue counters: a group commit's insert and a claim never share a counter row.

A group commit holds the counter row its insert added to until it commits. A claim on a
backend whose shard was the same waited for the whole group commit, and deadlocked with
it when the commit went on to lock a row the claim held (a copy to merge into).
"""

from __future__ import annotations

import asyncio
import contextlib
import json

import asyncpg

from gateway.delivery.postgres.pool import SCHEMA, Database
from gateway.delivery.postgres.queue import queue_depth
from gateway.delivery.postgres.schema import COUNTER_SHARDS_V10
from tests.delivery.postgres.conftest import add_rows

_INSERT = (
    "INSERT INTO events (pixel_id, event_name, event_id, event_time, source, payload, "
    "next_attempt_at, created_at) VALUES ('1', 'Purchase', 'open', 1, 'api', $1, 0, 0)"
)


async def _same_shard(dsn: str) -> tuple[asyncpg.Connection[asyncpg.Record], ...]:
    """Two connections whose backends' pids are equal modulo the shard count."""
    opened: list[asyncpg.Connection[asyncpg.Record]] = []
    by_shard: dict[int, asyncpg.Connection[asyncpg.Record]] = {}
    try:
        for _ in range(COUNTER_SHARDS_V10 + 1):
            conn = await asyncpg.connect(dsn, server_settings={"search_path": SCHEMA})
            opened.append(conn)
            shard = conn.get_server_pid() % COUNTER_SHARDS_V10
            if shard in by_shard:
                pair = (by_shard[shard], conn)
                for other in opened:
                    if other not in pair:
                        await other.close()
                return pair
            by_shard[shard] = conn
    except BaseException:
        for conn in opened:
            await conn.close()
        raise
    raise AssertionError("unreachable: more connections than shards")


async def test_a_claim_does_not_wait_for_an_open_group_commit_of_the_same_shard(
    db: Database, postgres_store_dsn: str
) -> None:
    [row] = await add_rows(db, 1)
    writer, claimer = await _same_shard(postgres_store_dsn)
    try:
        commit = writer.transaction()
        await commit.start()
        await writer.execute(_INSERT, json.dumps({"event_name": "Purchase"}))  # counted

        # A claim's state change, counted on its own backend, while the insert is open.
        await asyncio.wait_for(
            claimer.execute("UPDATE events SET state = 'inflight' WHERE id = $1", row), 3
        )

        await commit.commit()
        depth = await db.run(queue_depth, transaction=False)
        assert depth == {"Purchase": {"pending": 1, "inflight": 1}}
    finally:
        with contextlib.suppress(asyncpg.PostgresError, asyncpg.InterfaceError):
            await writer.close()
        await claimer.close()
