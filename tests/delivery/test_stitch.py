"""The stitch store on both backends (a buffer file, PostgreSQL): round trip, expiry, upsert,
secrecy, sharing."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from gateway.delivery.outbox import Outbox
from gateway.delivery.postgres.migrations import migrate
from gateway.delivery.postgres.pool import Database
from gateway.delivery.postgres.stitches import PgStitches
from gateway.delivery.schema import MIGRATIONS, SCHEMA_VERSION
from gateway.delivery.seal import Sealer
from gateway.delivery.stitch import (
    DEFAULT_TTL,
    Stitches,
    StitchesClosed,
    VisitorContext,
    derive_lookup_key,
)
from gateway.delivery.store import StitchStore
from gateway.edge.identity import Consent
from gateway.models import NewEvent

KEY = bytes(range(32))
FBP = "fb.1.1763840000000.1234567890"
FBC = "fb.1.1763840000000.IwAR0secretclickid"
IP = "203.0.113.77"
UA = "Mozilla/5.0 (X11; Linux x86_64) StitchTestBrowser/1.0"
ORDER = "ORD-2025-000123"
EMAIL_SHA = "a" * 63 + "b"
DAY = 86400.0


def context(*, seen_at: float | None = None, fbp: str = FBP, **kw: object) -> VisitorContext:
    values: dict[str, object] = {
        "user_data": {
            "fbp": fbp,
            "fbc": FBC,
            "client_ip_address": IP,
            "client_user_agent": UA,
        },
        "event_source_url": "https://shop.example/checkout?step=pay",
        "consent": Consent(track=True, opt_out=False, ldu=True).event_fields(),
        "event_id": "ic.42",
        "event_name": "InitiateCheckout",
        "seen_at": time.time() if seen_at is None else seen_at,
    }
    values.update(kw)
    return VisitorContext(**values)  # type: ignore[arg-type]


@pytest.fixture
async def store(store_location: Path | str) -> AsyncIterator[StitchStore]:
    """A stitch store of each backend (on PostgreSQL, over a migrated database's pool)."""
    stitches: StitchStore
    if isinstance(store_location, Path):
        stitches = await Stitches.open(store_location, Sealer(KEY), key=KEY)
        yield stitches
        await stitches.close()
        return
    db = await Database.open(store_location, health_interval=0)
    await migrate(db)
    stitches = PgStitches(db, Sealer(KEY), key=KEY)
    yield stitches
    await stitches.close()
    await db.close()


@pytest.fixture
async def file_store(tmp_path: Path) -> AsyncIterator[Stitches]:
    """The SQLite store, for what only a file shows (bytes on disk, rows edited by hand)."""
    stitches = await Stitches.open(tmp_path / "buffer.db", Sealer(KEY), key=KEY)
    yield stitches
    await stitches.close()


def rows(path: Path) -> list[tuple[object, ...]]:
    with sqlite3.connect(path) as conn:
        return conn.execute("SELECT * FROM stitches").fetchall()


async def count(store: StitchStore) -> int:
    """Rows of the stitches table, expired ones included."""
    if isinstance(store, Stitches):
        return len(rows(store.path))
    assert isinstance(store, PgStitches)
    return int(str(await store.db.fetchval("SELECT count(*) FROM stitches")))


async def test_put_get_round_trip(store: StitchStore) -> None:
    ctx = context()
    await store.put({"order_id": ORDER, "email": EMAIL_SHA}, ctx, ttl=DEFAULT_TTL)
    assert await store.get("order_id", ORDER) == ctx
    assert await store.get("email", EMAIL_SHA) == ctx
    assert ctx.consent == {
        "data_processing_options": ["LDU"],
        "data_processing_options_country": 0,
        "data_processing_options_state": 0,
    }
    # Another value, or the same value under another kind, is a different key.
    assert await store.get("order_id", ORDER + "x") is None
    assert await store.get("booking_id", ORDER) is None
    assert await count(store) == 2


async def test_empty_values_are_skipped_and_bad_input_refused(store: StitchStore) -> None:
    await store.put({"order_id": "", "lead_id": "L-1"}, context(), ttl=60)
    assert await count(store) == 1
    await store.put({}, context(), ttl=60)
    with pytest.raises(ValueError, match="ttl"):
        await store.put({"lead_id": "L-2"}, context(), ttl=0)
    with pytest.raises(ValueError, match="kind"):
        await store.put({"a\x1fb": "c"}, context(), ttl=60)
    assert await store.get("order_id", "") is None


async def test_expiry(store: StitchStore) -> None:
    now = time.time()
    await store.put({"order_id": ORDER}, context(seen_at=now), ttl=DAY)
    assert await store.get("order_id", ORDER, now=now + DAY - 1) is not None
    assert await store.get("order_id", ORDER, now=now + DAY) is None
    assert await store.find({"order_id": ORDER}, now=now + DAY + 1) is None
    # Purging removes only what expired.
    await store.put({"lead_id": "L-9"}, context(seen_at=now), ttl=3 * DAY)
    assert await store.purge_expired(now=now + 2 * DAY) == 1
    assert await store.get("lead_id", "L-9", now=now + 2 * DAY) is not None
    assert await count(store) == 1


async def test_purge_works_in_chunks(store: StitchStore) -> None:
    now = time.time()
    keys = {f"k{i}": f"v{i}" for i in range(1200)}
    await store.put(keys, context(seen_at=now - 10), ttl=5)
    await store.put({"order_id": ORDER}, context(seen_at=now), ttl=DAY)
    assert await store.purge_expired(now=now) == 1200
    assert await count(store) == 1


async def test_background_purge(tmp_path: Path) -> None:
    stitches = await Stitches.open(tmp_path / "p.db", Sealer(KEY), key=KEY, purge_every=0.05)
    try:
        await stitches.put({"order_id": ORDER}, context(seen_at=time.time() - 10), ttl=5)
        await stitches.put({"lead_id": "L-1"}, context(), ttl=DAY)
        for _ in range(100):
            if len(rows(stitches.path)) == 1:
                break
            await asyncio.sleep(0.02)
        assert len(rows(stitches.path)) == 1
    finally:
        await stitches.close()


async def test_upsert_newer_visit_wins(store: StitchStore) -> None:
    now = time.time()
    old = context(seen_at=now - 100, fbp="fb.1.1.old", event_id="old")
    new = context(seen_at=now, fbp="fb.1.1.new", event_id="new")
    await store.put({"order_id": ORDER}, old, ttl=DAY)
    await store.put({"order_id": ORDER}, new, ttl=DAY)
    assert await store.get("order_id", ORDER) == new
    # A put that lands late with an older visit does not undo the newer one.
    await store.put({"order_id": ORDER}, old, ttl=DAY)
    assert await store.get("order_id", ORDER) == new
    assert await count(store) == 1


async def test_find_takes_the_first_key_in_order(store: StitchStore) -> None:
    by_order = context(event_id="from-order")
    by_email = context(event_id="from-email")
    await store.put({"order_id": ORDER}, by_order, ttl=DAY)
    await store.put({"email": EMAIL_SHA}, by_email, ttl=DAY)
    assert await store.find({"email": EMAIL_SHA, "order_id": ORDER}) == by_email
    assert await store.find({"order_id": ORDER, "email": EMAIL_SHA}) == by_order
    assert await store.find({"lead_id": "nope", "order_id": ORDER}) == by_order
    assert await store.find({"lead_id": "nope"}) is None
    assert await store.find({}) is None


async def test_concurrent_puts_are_batched(store: StitchStore) -> None:
    ctx = context()
    await asyncio.gather(*(store.put({"order_id": f"O-{i}"}, ctx, ttl=DAY) for i in range(200)))
    assert store.committed_rows == 200
    assert store.commits < 50, store.commits
    assert await count(store) == 200


async def test_key_and_clear_fields_never_stored_in_clear(file_store: Stitches) -> None:
    await file_store.put({"order_id": ORDER, "email": EMAIL_SHA}, context(), ttl=DAY)
    # Everything on disk: the database file, its WAL and shared-memory index.
    raw = b"".join(p.read_bytes() for p in file_store.path.parent.iterdir() if p.is_file())
    assert raw, "nothing on disk"
    for secret in (ORDER, EMAIL_SHA, FBP, FBC, IP, UA, "shop.example", "data_processing"):
        assert secret.encode() not in raw, secret
    for row in rows(file_store.path):
        text = repr(row)
        assert ORDER not in text and FBP not in text and IP not in text
    # The stored hash is keyed: without the outbox key it cannot be recomputed.
    hashes = {row[0] for row in rows(file_store.path)}
    assert file_store.key_hash("order_id", ORDER) in hashes
    other = await Stitches.open(file_store.path, Sealer(bytes(32)), key=bytes(32), purge_every=0)
    try:
        assert other.key_hash("order_id", ORDER) not in hashes
        assert await other.get("order_id", ORDER) is None
    finally:
        await other.close()
    assert derive_lookup_key(KEY) != KEY


async def test_tampered_or_swapped_blob_is_absent_and_logged(
    file_store: Stitches, caplog: pytest.LogCaptureFixture
) -> None:
    await file_store.put({"order_id": ORDER}, context(event_id="a"), ttl=DAY)
    await file_store.put({"lead_id": "L-1"}, context(event_id="b"), ttl=DAY)
    order_hash = file_store.key_hash("order_id", ORDER)
    lead_hash = file_store.key_hash("lead_id", "L-1")
    with sqlite3.connect(file_store.path) as conn:
        # Swap: the lead's blob copied onto the order's row must not open there.
        conn.execute(
            "UPDATE stitches SET sealed=(SELECT sealed FROM stitches WHERE key_hash=?) "
            "WHERE key_hash=?",
            (lead_hash, order_hash),
        )
    with caplog.at_level(logging.WARNING, logger="gateway.stitch"):
        assert await file_store.get("order_id", ORDER) is None
    assert "does not open" in caplog.text and "'order_id'" in caplog.text
    assert ORDER not in caplog.text
    with sqlite3.connect(file_store.path) as conn:
        (blob,) = conn.execute(
            "SELECT sealed FROM stitches WHERE key_hash=?", (lead_hash,)
        ).fetchone()
        flipped = blob[:-1] + bytes([blob[-1] ^ 1])
        conn.execute("UPDATE stitches SET sealed=? WHERE key_hash=?", (flipped, lead_hash))
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="gateway.stitch"):
        assert await file_store.find({"lead_id": "L-1", "order_id": ORDER}) is None
    assert caplog.text.count("does not open") == 2


async def test_migrates_a_buffer_of_the_previous_schema(tmp_path: Path) -> None:
    mine = next(i for i, sql in enumerate(MIGRATIONS) if "CREATE TABLE stitches" in sql)
    path = tmp_path / "old.db"
    # A buffer as the release before the stitch table left it, holding one event.
    with sqlite3.connect(path) as conn:
        conn.execute("PRAGMA journal_mode = WAL")
        for sql in MIGRATIONS[:mine]:
            conn.executescript(sql)
        conn.execute(f"PRAGMA user_version = {mine}")
        conn.execute(
            "INSERT INTO events (pixel_id, event_name, event_id, event_time, source, payload, "
            "next_attempt_at, created_at) VALUES ('1', 'Lead', 'e1', 0, 'api', '{}', 0, 0)"
        )
    with sqlite3.connect(path) as conn:
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master")}
        assert "stitches" not in tables
    stitches = await Stitches.open(path, Sealer(KEY), key=KEY, purge_every=0)
    try:
        await stitches.put({"order_id": ORDER}, context(), ttl=DAY)
        assert await stitches.get("order_id", ORDER) is not None
    finally:
        await stitches.close()
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        assert conn.execute("SELECT event_id FROM events").fetchall() == [("e1",)]
        indexes = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='index'")}
        assert "stitches_expires" in indexes


def _event(i: int) -> NewEvent:
    return NewEvent(
        pixel_id="111",
        event_name="Purchase",
        event_id=f"p{i}",
        event_time=int(time.time()),
        payload={"event_name": "Purchase", "event_id": f"p{i}"},
        clear={"client_ip_address": IP},
        source="api",
    )


async def test_two_stores_share_the_file_with_a_writing_outbox(tmp_path: Path) -> None:
    path = tmp_path / "shared.db"
    outbox = await Outbox.open(path, Sealer(KEY), group_commit_ms=2)
    first = await Stitches.open(path, Sealer(KEY), key=KEY)
    second = await Stitches.open(path, Sealer(KEY), key=KEY)
    try:
        ctx = context()
        jobs = [outbox.add([_event(i)]) for i in range(150)]
        jobs += [first.put({"order_id": f"A-{i}"}, ctx, ttl=DAY) for i in range(150)]
        jobs += [second.put({"order_id": f"B-{i}"}, ctx, ttl=DAY) for i in range(150)]
        jobs += [second.purge_expired() for _ in range(5)]
        results = await asyncio.wait_for(asyncio.gather(*jobs), 30)
        assert results[:150] == [["new"]] * 150
        # Each store reads what the other wrote.
        assert await first.get("order_id", "B-149") == ctx
        assert await second.get("order_id", "A-0") == ctx
    finally:
        await second.close()
        await first.close()
        await outbox.close()
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT COUNT(*) FROM events").fetchone()[0] == 150
        assert conn.execute("SELECT COUNT(*) FROM stitches").fetchone()[0] == 300


async def test_closed_store_refuses_and_close_flushes(tmp_path: Path) -> None:
    stitches = await Stitches.open(tmp_path / "c.db", Sealer(KEY), key=KEY)
    pending = asyncio.ensure_future(stitches.put({"order_id": ORDER}, context(), ttl=DAY))
    await asyncio.sleep(0)
    await stitches.close()
    await pending
    assert len(rows(tmp_path / "c.db")) == 1
    with pytest.raises(StitchesClosed):
        await stitches.put({"order_id": ORDER}, context(), ttl=DAY)
    with pytest.raises(StitchesClosed):
        await stitches.get("order_id", ORDER)
    await stitches.close()  # twice is fine
