"""The store's read side on a real outbox file: read-only connections, filters, numbers."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from gateway.delivery import reads
from gateway.delivery.outbox import Outbox
from gateway.delivery.reads import BufferReader, EventFilter
from gateway.delivery.seal import Sealer
from tests.delivery.test_outbox import event

KEY = bytes(range(32))


@pytest.fixture
async def box(tmp_path: Path) -> AsyncIterator[Outbox]:
    outbox = await Outbox.open(tmp_path / "o.db", Sealer(KEY), group_commit_ms=1)
    yield outbox
    await outbox.close()


async def _seed(box: Outbox) -> None:
    await box.add([event("a", name="Lead"), event("b", name="Purchase"), event("c")])
    (first, *_) = await box.claim("w", limit=1, lease=30)
    await box.mark_dead([first.id], "w", error="Invalid parameter", fbtrace_id="T")


async def test_a_reader_cannot_write_and_must_exist_creates_nothing(
    box: Outbox, tmp_path: Path
) -> None:
    async with reads.reading(box.path) as conn:
        with pytest.raises(sqlite3.OperationalError, match="readonly"):
            await conn.execute("DELETE FROM events")
    missing = tmp_path / "missing.db"
    with pytest.raises(sqlite3.OperationalError):
        await reads.open_reader(missing, must_exist=True)
    assert not missing.exists()


async def test_filters_select_what_the_queue_command_names(box: Outbox) -> None:
    await _seed(box)
    async with reads.reading(box.path) as conn:
        everything = await reads.list_events(conn, EventFilter(), limit=None)
        assert [r["event_id"] for r in everything] == ["c", "b", "a"]
        dead = await reads.list_events(conn, EventFilter(state="dead"), limit=None)
        assert [r["event_id"] for r in dead] == ["a"]
        # `states` stands for the states meant when no --state is given.
        otherwise = EventFilter(states=("dead", "sent"))
        assert [r["event_id"] for r in await reads.list_events(conn, otherwise, limit=5)] == ["a"]
        named = EventFilter(event_name="Lead", ids=(everything[0]["id"],))
        assert [r["event_id"] for r in await reads.list_events(conn, named, limit=5)] == ["c"]
        assert len(await reads.list_events(conn, EventFilter(), limit=1)) == 1


async def test_the_queue_numbers_agree_between_readers(box: Outbox) -> None:
    await _seed(box)
    reader = await BufferReader.open(box.path, limit_bytes=10**9)
    try:
        snapshot = await reader.snapshot()
    finally:
        await reader.close()
    async with reads.reading(box.path) as conn:
        stats = await reads.queue_stats(conn)
        assert await reads.sealed_undelivered(conn) == 2
        assert await reads.integrity_problems(conn) == ["ok"]
        assert await reads.schema_version(conn) > 0 and await reads.has_match_keys(conn)
        (dead,) = await reads.dead_letters(conn, 10)
    assert stats["states"] == snapshot.states == {**snapshot.states, "pending": 2, "dead": 1}
    assert stats["by_event_name"]["Lead"] == {"pending": 1, "dead": 1}
    assert snapshot.last_dead is not None and snapshot.last_dead.error == "Invalid parameter"
    assert (dead.event_id, dead.error, dead.fbtrace_id) == ("a", "Invalid parameter", "T")
    assert snapshot.oldest_pending_age is not None and stats["oldest_pending_age"] is not None
    assert abs(snapshot.oldest_pending_age - stats["oldest_pending_age"]) < 5
    assert time.time() - 60 < (await _oldest(box.path)) <= time.time()


async def _oldest(path: Path) -> float:
    async with reads.reading(path) as conn:
        oldest = await reads.oldest_pending(conn)
    assert oldest is not None
    return oldest
