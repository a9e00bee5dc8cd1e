"""A group commit inserts its new rows last (`postgres/deferred.py`): a copy taken by another
replica meanwhile does not wait for the rest of the commit, and the commit, finding the row
stored at its insert, runs again and merges into it."""

from __future__ import annotations

import asyncio
import json
import time

import asyncpg

from gateway.delivery.postgres.outbox import PgOutbox
from gateway.delivery.postgres.pool import SCHEMA
from gateway.delivery.seal import Sealer
from gateway.models import NewEvent
from tests.delivery.stores import KEY

_INSERT = (
    "INSERT INTO events (pixel_id, event_name, event_id, event_time, source, payload, "
    "next_attempt_at, created_at) VALUES ('1', 'Purchase', $1, 1, 'api', $2, 0, 0)"
)
_PAYLOAD = json.dumps({"event_name": "Purchase"})


def _event(event_id: str) -> NewEvent:
    return NewEvent("1", "Purchase", event_id, int(time.time()), {}, {}, "api", hold=0)


async def _connect(dsn: str) -> asyncpg.Connection[asyncpg.Record]:
    return await asyncpg.connect(dsn, server_settings={"search_path": SCHEMA})


async def test_another_replicas_copy_does_not_wait_for_a_commit_still_merging(
    postgres_store_dsn: str,
) -> None:
    box = await PgOutbox.open(postgres_store_dsn, Sealer(KEY), group_commit_ms=1)
    holder, other = await _connect(postgres_store_dsn), await _connect(postgres_store_dsn)
    try:
        assert await box.add([_event("stored")]) == ["new"]
        # The commit below merges a copy of "stored": it waits for this row lock, after
        # having decided that "fresh" is new.
        hold = holder.transaction()
        await hold.start()
        await holder.execute("SELECT 1 FROM events WHERE event_id = 'stored' FOR UPDATE")
        commit = asyncio.create_task(box.add([_event("stored"), _event("fresh")]))
        await asyncio.sleep(0.3)
        assert not commit.done()

        # Another replica stores "fresh" meanwhile: the stalled commit holds no lock on it.
        await asyncio.wait_for(other.execute(_INSERT, "fresh", _PAYLOAD), 3)

        await hold.rollback()
        # Its insert finds "fresh" stored: the commit runs again and merges into it.
        assert await asyncio.wait_for(commit, 5) == ["merged", "merged"]
        assert box.raced == 1
        assert await other.fetchval("SELECT count(*) FROM events") == 2
    finally:
        await holder.close()
        await other.close()
        await box.close()


async def test_a_row_committed_while_the_insert_waited_is_merged_into_not_taken_for_new(
    postgres_store_dsn: str,
) -> None:
    box = await PgOutbox.open(postgres_store_dsn, Sealer(KEY), group_commit_ms=1)
    other = await _connect(postgres_store_dsn)
    try:
        # Not committed yet when the commit looks: it takes "late-seen" for new.
        tx = other.transaction()
        await tx.start()
        await other.execute(_INSERT, "late-seen", _PAYLOAD)
        commit = asyncio.create_task(box.add([_event("late-seen"), _event("own")]))
        await asyncio.sleep(0.3)
        assert not commit.done()  # its insert waits for the other transaction

        await tx.commit()
        assert await asyncio.wait_for(commit, 5) == ["merged", "new"]
        assert await other.fetchval("SELECT count(*) FROM events") == 2
    finally:
        await other.close()
        await box.close()
