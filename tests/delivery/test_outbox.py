"""The outbox on both backends (a real SQLite file, a real PostgreSQL database): group commit,
durability, leases, sealing, bounds."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import time
from pathlib import Path

import pytest

from gateway.delivery.outbox import Outbox, OutboxClosed
from gateway.delivery.postgres.outbox import PgOutbox
from gateway.delivery.schema import CACHE_KIB, SCHEMA_VERSION, SchemaError, connect
from gateway.delivery.seal import Sealer, SealError
from gateway.delivery.store import OutboxFull, OutboxStore
from gateway.models import NewEvent
from tests.delivery.stores import count_rows, fetch

KEY = bytes(range(32))


def event(event_id: str, *, name: str = "Lead", pixel: str = "111111", age: float = 0) -> NewEvent:
    return NewEvent(
        pixel_id=pixel,
        event_name=name,
        event_id=event_id,
        event_time=int(time.time() - age),
        payload={"event_name": name, "event_id": event_id, "user_data": {"em": "ab" * 32}},
        clear={"client_ip_address": "192.0.2.1", "client_user_agent": "UA/1"},
        source="api",
    )


@pytest.fixture
async def box(store: OutboxStore) -> OutboxStore:
    return store


async def count(box: OutboxStore | Path, where: str = "1=1") -> int:
    """Rows of the events table, read on a connection of its own (what was committed)."""
    return await count_rows(box, where)


async def test_add_is_durable_when_it_returns(box: OutboxStore) -> None:
    assert await box.add([event("a"), event("b")]) == ["new", "new"]
    assert await count(box) == 2


async def test_group_commit_batches_concurrent_adds(box: OutboxStore) -> None:
    results = await asyncio.gather(*(box.add([event(f"e{i}")]) for i in range(200)))
    assert all(r == ["new"] for r in results)
    assert await count(box) == 200
    # 200 concurrent requests must not cost 200 transactions.
    assert box.commits <= 20, box.commits
    assert box.committed_rows == 200


async def test_duplicates_are_acknowledged_once(box: OutboxStore) -> None:
    assert await box.add([event("x"), event("x"), event("x", name="Purchase")]) == [
        "new",
        "merged",
        "new",
    ]
    assert await box.add([event("x")]) == ["merged"]
    assert await count(box) == 2


async def test_clear_fields_are_sealed_and_bound_to_their_row(box: OutboxStore) -> None:
    await box.add([event("s1"), event("s2")])
    blobs = {str(k): bytes(v) for k, v in await fetch(box, "SELECT event_id, sealed FROM events")}  # type: ignore[arg-type]
    assert b"192.0.2.1" not in blobs["s1"]
    sealer = Sealer(KEY)
    assert sealer.open(blobs["s1"], "111111\x1fLead\x1fs1")["client_user_agent"] == "UA/1"
    with pytest.raises(SealError):
        sealer.open(blobs["s1"], "111111\x1fLead\x1fs2")
    with pytest.raises(SealError):
        Sealer(bytes(32)).open(blobs["s1"], "111111\x1fLead\x1fs1")


async def test_claim_leases_and_merges_clear_fields(box: OutboxStore) -> None:
    await box.add([event("c1"), event("c2")])
    rows = await box.claim("w1", limit=10, lease=30)
    assert [r.event_id for r in rows] == ["c1", "c2"]
    assert rows[0].event["user_data"]["client_ip_address"] == "192.0.2.1"
    assert rows[0].attempts == 1
    # Leased rows are not handed to another worker.
    assert await box.claim("w2", limit=10, lease=30) == []


async def test_expired_lease_goes_to_another_worker_and_the_first_cannot_record(
    box: OutboxStore,
) -> None:
    await box.add([event("l1")])
    (first,) = await box.claim("w1", limit=10, lease=30)
    (second,) = await box.claim("w2", limit=10, lease=30, now=time.time() + 31)
    assert second.id == first.id and second.attempts == 2
    await box.mark_retry([first.id], "w1", at=time.time(), error="late", fbtrace_id=None)
    assert await count(box, "state='inflight' AND lease_owner='w2'") == 1
    await box.mark_sent([second.id], "w2", fbtrace_id="T1")
    assert await count(box, "state='sent' AND fbtrace_id='T1'") == 1


async def test_retry_is_due_later_and_release_undoes_the_attempt(box: OutboxStore) -> None:
    await box.add([event("r1"), event("r2")])
    r1, r2 = await box.claim("w", limit=10, lease=30)
    await box.mark_retry([r1.id], "w", at=time.time() + 60, error="HTTP 500", fbtrace_id=None)
    await box.release([r2.id], "w")
    (again,) = await box.claim("w", limit=10, lease=30)
    assert again.event_id == "r2" and again.attempts == 1
    assert await box.next_due() is not None


async def test_blocked_pixel_parks_new_events_until_unblocked(box: OutboxStore) -> None:
    await box.add([event("b1")])
    (row,) = await box.claim("w", limit=10, lease=30)
    await box.block_pixel(
        "111111", [row.id], "w", token_fingerprint="fp", reason="code 190", fbtrace_id="F"
    )
    await box.add([event("b2"), event("other", pixel="222222")])
    claimed = await box.claim("w", limit=10, lease=30)
    assert [r.event_id for r in claimed] == ["other"]
    assert await count(box, "state='blocked'") == 2
    assert await box.blocked_pixels() == {"111111": "fp"}
    assert await box.unblock_pixel("111111") == 2
    assert sorted(r.event_id for r in await box.claim("w", limit=10, lease=30)) == ["b1", "b2"]


async def test_expiry_and_retention(box: OutboxStore) -> None:
    await box.add([event("old", age=8 * 86400), event("done")])
    rows = {r.event_id: r for r in await box.claim("w", limit=10, lease=30)}
    await box.release([rows["old"].id], "w")
    await box.mark_sent([rows["done"].id], "w", fbtrace_id=None)
    expired, purged = await box.expire_and_purge(retention=3600, dead_retention=86400)
    assert (expired, purged) == (1, 0)
    assert await count(box, "state='dead' AND last_error LIKE 'expired%'") == 1
    later = time.time() + 7200
    assert await box.expire_and_purge(retention=3600, dead_retention=86400, now=later) == (0, 1)
    assert await count(box, "state='sent'") == 0


async def test_over_the_disk_bound_refuses_instead_of_dropping(tmp_path: Path) -> None:
    outbox = await Outbox.open(tmp_path / "full.db", Sealer(KEY))
    outbox._size.max_bytes = await outbox.used_bytes() + 64 * 1024
    try:
        with pytest.raises(OutboxFull):
            for i in range(50):
                await outbox.add([event(f"f{i}-{j}") for j in range(50)])
                outbox._size.checked_at = 0  # re-measure on every call in this test
        # Nothing already accepted was dropped.
        assert await count(outbox) >= 50
    finally:
        await outbox.close()


async def test_delivered_rows_make_room_before_refusing(tmp_path: Path) -> None:
    outbox = await Outbox.open(tmp_path / "room.db", Sealer(KEY), max_buffer_mb=1000)
    try:
        await outbox.add([event(f"d{i}") for i in range(400)])
        rows = await outbox.claim("w", limit=400, lease=30)
        await outbox.mark_sent([r.id for r in rows], "w", fbtrace_id=None)
        outbox._size.max_bytes = await outbox.used_bytes() - 1
        outbox._size.checked_at = 0
        await outbox.add([event("fits")])
        assert await count(outbox, "state='sent'") < 400
        assert await count(outbox, "event_id='fits'") == 1
    finally:
        await outbox.close()


async def test_close_flushes_and_then_refuses(tmp_path: Path) -> None:
    outbox = await Outbox.open(tmp_path / "c.db", Sealer(KEY), group_commit_ms=50)
    outbox._size.checked_at = time.monotonic()  # no size check: the add queues at once
    pending = asyncio.ensure_future(outbox.add([event("late")]))
    await asyncio.sleep(0)
    await outbox.close()
    assert await pending == ["new"]
    with pytest.raises(OutboxClosed):
        await outbox.add([event("after")])
    assert await count(tmp_path / "c.db") == 1


async def test_schema_version_and_newer_file_refused(tmp_path: Path) -> None:
    path = tmp_path / "v.db"
    outbox = await Outbox.open(path, Sealer(KEY))
    await outbox.close()
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    with pytest.raises(SchemaError, match="newer"):
        await Outbox.open(path, Sealer(KEY))


async def test_generated_key_file_is_private(tmp_path: Path) -> None:
    from gateway.delivery.seal import load_key
    from gateway.settings import Settings

    settings = Settings(buffer=tmp_path / "k.db")
    key = load_key(settings)
    path = tmp_path / "k.db.key"
    assert path.exists()
    assert os.stat(path).st_mode & 0o777 == 0o600
    # Loaded again, it is the same key.
    assert load_key(settings) == key


async def test_postgres_purges_in_batches_and_bounds_dead_letters(
    postgres_store_dsn: str,
) -> None:
    box = await PgOutbox.open(postgres_store_dsn, Sealer(KEY), group_commit_ms=5)
    try:
        box.purge_batch, box.max_dead = 2, 3
        await box.add([event(f"s{i}") for i in range(5)] + [event(f"d{i}") for i in range(5)])
        rows = {r.event_id: r for r in await box.claim("w", limit=20, lease=30)}
        await box.mark_sent([rows[f"s{i}"].id for i in range(5)], "w", fbtrace_id=None)
        for i in range(5):  # one at a time: each dead letter newer than the last
            await box.mark_dead([rows[f"d{i}"].id], "w", error=f"bad {i}", fbtrace_id=None)
        later = time.time() + 7200
        # Five delivered rows past retention leave in batches of two; of five dead letters
        # (all within dead_retention) the newest three stay.
        assert await box.expire_and_purge(retention=3600, dead_retention=86400, now=later) == (
            0,
            7,
        )
        assert await count(box, "state='sent'") == 0
        kept = await fetch(box, "SELECT event_id FROM events WHERE state='dead' ORDER BY 1")
        assert [r[0] for r in kept] == ["d2", "d3", "d4"]
        assert (await box.stats())["states"]["dead"] == 3
    finally:
        await box.close()


async def test_sqlite_connections_keep_a_page_cache_for_the_random_indexes(tmp_path: Path) -> None:
    # At SQLite's default 2 MiB the profiles and the facts' indexes evict one another's
    # pages between group commits (issue 14: the facts cost more with profiles on).
    conn = await connect(tmp_path / "o.db")
    try:
        async with conn.execute("PRAGMA cache_size") as cur:
            row = await cur.fetchone()
    finally:
        await conn.close()
    assert row is not None and row[0] == -CACHE_KIB and CACHE_KIB >= 32 * 1024
