"""The catalog store on both backends: first sight, changes, the interval, deletions by miss
and by absence, leases, Meta's verdicts, parking, status and feeds."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from gateway.delivery.catalog import SqliteCatalog
from gateway.delivery.catalogstate import COLUMNS, Done, PageSeen, Row, Seen
from gateway.delivery.schema import MIGRATIONS, SCHEMA_VERSION
from gateway.delivery.store import CatalogStore

SITE = ""
URL = "https://shop.example/p/mug"
T0 = 1_800_000_000.0
MIN = 900.0


def seen(item_id: str, price: str = "9.90 EUR", **extra: Any) -> Seen:
    data = {"id": item_id, "title": f"Item {item_id}", "price": price, **extra}
    digest = hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()
    return Seen(item_id, digest, data)


@pytest.fixture
def cat(catalog_store: CatalogStore) -> CatalogStore:
    """The catalog store of the test's backend (short name)."""
    return catalog_store


async def sync_all(store: CatalogStore, now: float, *, owner: str = "w1") -> list[Any]:
    work = await store.claim(SITE, owner, limit=100, lease=60, now=now)
    done = [Done(w.item_id, w.content_hash, w.action) for w in work]
    await store.finish(SITE, owner, done, now=now, min_interval=MIN)
    return work


async def test_first_sight_is_due_at_once_and_an_unchanged_page_sends_nothing(
    cat: CatalogStore,
) -> None:
    result = await cat.seen(SITE, URL, [seen("mug")], now=T0, min_interval=MIN)
    assert result.new == ("mug",)
    work = await sync_all(cat, T0)
    assert [(w.item_id, w.action, w.data["price"]) for w in work] == [("mug", "UPDATE", "9.90 EUR")]
    again = await cat.seen(SITE, URL, [seen("mug")], now=T0 + 5, min_interval=MIN)
    assert again.unchanged == ("mug",)
    assert await cat.claim(SITE, "w1", limit=100, lease=60, now=T0 + 10_000) == []
    status = await cat.status(SITE)
    assert status["items"] == {"pending": 0, "synced": 1, "error": 0, "deleted": 0}


async def test_a_change_waits_out_min_interval(cat: CatalogStore) -> None:
    await cat.seen(SITE, URL, [seen("mug")], now=T0, min_interval=MIN)
    await sync_all(cat, T0)
    result = await cat.seen(SITE, URL, [seen("mug", "7.90 EUR")], now=T0 + 60, min_interval=MIN)
    assert result.changed == ("mug",)
    assert await cat.claim(SITE, "w1", limit=100, lease=60, now=T0 + 120) == []
    work = await sync_all(cat, T0 + MIN + 1)
    assert [w.data["price"] for w in work] == ["7.90 EUR"]


async def test_a_change_undone_before_sending_goes_back_to_synced(
    cat: CatalogStore,
) -> None:
    await cat.seen(SITE, URL, [seen("mug")], now=T0, min_interval=MIN)
    await sync_all(cat, T0)
    await cat.seen(SITE, URL, [seen("mug", "7.90 EUR")], now=T0 + 1, min_interval=MIN)
    await cat.seen(SITE, URL, [seen("mug")], now=T0 + 2, min_interval=MIN)
    assert (await cat.status(SITE))["items"]["synced"] == 1
    assert await cat.claim(SITE, "w1", limit=100, lease=60, now=T0 + 2 * MIN) == []


async def test_misses_delete_after_the_configured_count_and_a_visit_resets_them(
    cat: CatalogStore,
) -> None:
    await cat.seen(SITE, URL, [seen("mug")], now=T0, min_interval=MIN)
    await sync_all(cat, T0)
    assert await cat.missed(SITE, URL, now=T0 + 1, delete_after=3) == []
    assert await cat.missed(SITE, URL, now=T0 + 2, delete_after=3) == []
    await cat.seen(SITE, URL, [seen("mug")], now=T0 + 3, min_interval=MIN)  # back again
    assert await cat.missed(SITE, URL, now=T0 + 4, delete_after=3) == []
    assert await cat.missed(SITE, URL, now=T0 + 5, delete_after=3) == []
    assert await cat.missed(SITE, URL, now=T0 + 6, delete_after=3) == ["mug"]
    assert URL in await cat.known_urls(SITE)  # pending deletion is not deleted yet
    assert await cat.feed(SITE) == []
    work = await sync_all(cat, T0 + 7)
    assert [w.request() for w in work] == [{"method": "DELETE", "data": {"id": "mug"}}]
    assert (await cat.status(SITE))["items"]["deleted"] == 1
    assert URL not in await cat.known_urls(SITE)


async def test_a_product_gone_from_its_page_is_deleted_unless_the_read_was_partial(
    cat: CatalogStore,
) -> None:
    await cat.seen(SITE, URL, [seen("mug"), seen("cup")], now=T0, min_interval=MIN)
    await sync_all(cat, T0)
    partial = await cat.seen(SITE, URL, [seen("mug")], now=T0 + 1, min_interval=MIN, complete=False)
    assert partial.removed == ()
    result = await cat.seen(SITE, URL, [seen("mug")], now=T0 + 2, min_interval=MIN)
    assert result.removed == ("cup",)
    work = await sync_all(cat, T0 + 3)
    assert [w.request() for w in work] == [{"method": "DELETE", "data": {"id": "cup"}}]
    assert [d["id"] for d in await cat.feed(SITE)] == ["mug"]
    # A deleted product that comes back is sent again at once.
    back = await cat.seen(SITE, URL, [seen("mug"), seen("cup")], now=T0 + 4, min_interval=1)
    assert back.changed == ("cup",)
    assert [w.item_id for w in await sync_all(cat, T0 + 5)] == ["cup"]


async def test_meta_errors_are_kept_with_their_message(cat: CatalogStore) -> None:
    await cat.seen(SITE, URL, [seen("mug"), seen("cup")], now=T0, min_interval=MIN)
    work = await cat.claim(SITE, "w1", limit=100, lease=60, now=T0)
    await cat.set_handle(SITE, [w.item_id for w in work], "w1", "h-1")
    done = [
        Done(w.item_id, w.content_hash, w.action, "Invalid price" if w.item_id == "cup" else None)
        for w in work
    ]
    await cat.finish(SITE, "w1", done, now=T0 + 1, min_interval=MIN)
    status = await cat.status(SITE)
    assert status["items"] == {"pending": 0, "synced": 1, "error": 1, "deleted": 0}
    assert status["errors"] == [{"id": "cup", "url": URL, "message": "Invalid price", "at": T0 + 1}]
    # The same data is not sent again; a fixed page is, after the interval.
    await cat.seen(SITE, URL, [seen("mug"), seen("cup")], now=T0 + 2, min_interval=MIN)
    assert await cat.claim(SITE, "w1", limit=100, lease=60, now=T0 + 2 * MIN) == []
    await cat.seen(SITE, URL, [seen("mug"), seen("cup", "1.00 EUR")], now=T0 + 3, min_interval=MIN)
    assert [w.item_id for w in await sync_all(cat, T0 + MIN + 2)] == ["cup"]
    assert (await cat.status(SITE))["errors"] == []


async def test_leases_keep_two_workers_apart_and_expire(cat: CatalogStore) -> None:
    await cat.seen(SITE, URL, [seen(f"i{n}") for n in range(10)], now=T0, min_interval=MIN)
    first = await cat.claim(SITE, "w1", limit=6, lease=60, now=T0)
    second = await cat.claim(SITE, "w2", limit=6, lease=60, now=T0)
    assert len(first) == 6 and len(second) == 4
    assert not {w.item_id for w in first} & {w.item_id for w in second}
    assert await cat.claim(SITE, "w3", limit=100, lease=60, now=T0 + 1) == []
    # w2's lease runs out: w3 takes its items; w2's late verdict no longer counts.
    taken = await cat.claim(SITE, "w3", limit=100, lease=60, now=T0 + 61)
    assert {w.item_id for w in taken} == {w.item_id for w in first + second}
    await cat.finish(
        SITE, "w2", [Done(w.item_id, w.content_hash, w.action, "late") for w in second],
        now=T0 + 62, min_interval=MIN,
    )  # fmt: skip
    assert (await cat.status(SITE))["items"]["error"] == 0


async def test_retry_release_and_request_sync(cat: CatalogStore) -> None:
    await cat.seen(SITE, URL, [seen("mug")], now=T0, min_interval=MIN)
    work = await cat.claim(SITE, "w1", limit=10, lease=60, now=T0)
    await cat.retry(SITE, [w.item_id for w in work], "w1", at=T0 + 500, error="HTTP 500")
    assert await cat.claim(SITE, "w1", limit=10, lease=60, now=T0 + 1) == []
    assert await cat.request_sync(SITE, now=T0 + 2) == 1
    again = await cat.claim(SITE, "w1", limit=10, lease=60, now=T0 + 2)
    assert [w.attempts for w in again] == [1]
    await cat.release(SITE, [w.item_id for w in again], "w1")
    assert len(await cat.claim(SITE, "w2", limit=10, lease=60, now=T0 + 3)) == 1


async def test_parking_and_sync_notes(cat: CatalogStore) -> None:
    assert await cat.blocked(SITE) is None
    await cat.block(SITE, token_fingerprint="abc", reason="token expired", now=T0)
    assert await cat.blocked(SITE) == "abc"
    assert (await cat.status(SITE))["blocked"] == "token expired"
    await cat.unblock(SITE)
    assert await cat.blocked(SITE) is None
    await cat.note_sync(SITE, now=T0 + 5, result="ok")
    status = await cat.status(SITE)
    assert status["last_sync"] == T0 + 5 and status["last_result"] == "ok"


async def test_sites_are_apart(cat: CatalogStore) -> None:
    await cat.seen("a", URL, [seen("mug")], now=T0, min_interval=MIN)
    await cat.seen("b", URL, [seen("mug", "1.00 EUR")], now=T0, min_interval=MIN)
    assert (await cat.status("a"))["items"]["pending"] == 1
    assert [d["price"] for d in await cat.feed("b")] == ["1.00 EUR"]
    assert [w.item_id for w in await cat.claim("a", "w", limit=9, lease=9, now=T0)] == ["mug"]
    assert await cat.status("c") == {
        "configured": True,
        "items": {"pending": 0, "synced": 0, "error": 0, "deleted": 0},
        "last_sync": None,
        "last_result": None,
        "blocked": None,
        "errors": [],
    }


async def test_several_pages_in_one_transaction_see_each_other(cat: CatalogStore) -> None:
    other = "https://shop.example/p/cup"
    await cat.seen(SITE, URL, [seen("mug"), seen("lid")], now=T0, min_interval=MIN)
    await sync_all(cat, T0)
    results = await cat.seen_pages(
        SITE,
        [
            PageSeen(other, [seen("cup"), seen("lid", "2.00 EUR")]),  # lid moved to the cup page
            PageSeen(URL, [seen("mug")]),  # so the mug page no longer deletes it
            PageSeen(URL, [seen("mug")]),  # a repeat in the same batch is unchanged
        ],
        now=T0 + 1,
        min_interval=1,
    )
    assert [(r.new, r.changed, r.unchanged, r.removed) for r in results] == [
        (("cup",), ("lid",), (), ()),
        ((), (), ("mug",), ()),
        ((), (), ("mug",), ()),
    ]
    rows = {r.item_id: r for r in await cat.rows(SITE)}
    assert rows["lid"].url == other and rows["lid"].state == "pending"
    work = await sync_all(cat, T0 + 2)
    assert sorted((w.item_id, w.action) for w in work) == [("cup", "UPDATE"), ("lid", "UPDATE")]


async def test_an_older_buffer_gains_the_catalog_tables_and_keeps_its_events(
    tmp_path: Path,
) -> None:
    path = tmp_path / "old.db"
    mine = next(i for i, sql in enumerate(MIGRATIONS) if "CREATE TABLE catalog_items" in sql)
    with sqlite3.connect(path) as conn:
        conn.execute("PRAGMA journal_mode = WAL")
        for sql in MIGRATIONS[:mine]:
            conn.executescript(sql)
        conn.execute(f"PRAGMA user_version = {mine}")
        conn.execute(
            "INSERT INTO events (pixel_id, event_name, event_id, event_time, source, payload, "
            "next_attempt_at, created_at) VALUES ('1', 'Lead', 'e1', 0, 'api', '{}', 0, 0)"
        )
    store = await SqliteCatalog.open(path)
    try:
        await store.seen(SITE, URL, [seen("mug")], now=T0, min_interval=MIN)
        assert [r.item_id for r in await store.rows(SITE)] == ["mug"]
    finally:
        await store.close()
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        assert conn.execute("SELECT event_id FROM events").fetchall() == [("e1",)]


def test_row_values_follow_the_columns() -> None:
    assert [f.name for f in dataclasses.fields(Row)] == list(COLUMNS)
    row = Row(*range(len(COLUMNS)))
    assert row.values() == tuple(range(len(COLUMNS))) and Row.of(row.values()) == row
