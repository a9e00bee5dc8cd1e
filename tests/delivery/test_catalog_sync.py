"""The catalog sender against a fake Catalog Batch API, on both store backends: batches and
verdicts, per-item errors with Meta's message, retries, token expiry parks, dry run, replicas."""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from gateway.catalogsettings import CatalogSettings, CatalogTarget
from gateway.delivery import retry
from gateway.delivery.catalogstate import Seen, Work
from gateway.delivery.catalogsync import CatalogSender, CatalogSyncOptions, item_errors
from gateway.delivery.graph import GraphClient, appsecret_proof
from gateway.delivery.retry import RetryPolicy
from gateway.delivery.store import CatalogStore
from tests.fakes.catalog import FakeCatalog, start_fake_catalog

TOKEN = "EAAB-catalog-token"
CATALOG = "987654321012345"
URL = "https://shop.example/p/"


def seen(item_id: str, price: str = "9.90 EUR") -> Seen:
    data = {"id": item_id, "title": f"Item {item_id}", "price": price}
    return Seen(item_id, hashlib.sha256(json.dumps(data).encode()).hexdigest(), data)


def target(token: str | None = TOKEN, **catalog: Any) -> CatalogTarget:
    settings = CatalogSettings(catalog_id=CATALOG, **catalog)
    return CatalogTarget(site="", catalog=settings, access_token=token, app_secret="s3cret")


@pytest.fixture
async def fake() -> AsyncIterator[FakeCatalog]:
    async with start_fake_catalog(token=TOKEN) as fake:
        yield fake


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


def sender(
    store: CatalogStore,
    fake: FakeCatalog,
    session: aiohttp.ClientSession,
    *targets: CatalogTarget,
    dry_run: bool = False,
    **options: Any,
) -> CatalogSender:
    graph = GraphClient(
        session, graph_url=fake.url, graph_version="v26.0", timeout=2.0, partner_agent="test"
    )
    opts = CatalogSyncOptions(
        poll_interval=0.05, status_interval=0.01, status_timeout=2.0, dry_run=dry_run, **options
    )
    return CatalogSender(
        store, graph, targets or (target(),), opts, RetryPolicy(base=5.0, cap=10.0, max_attempts=3)
    )


async def test_items_go_in_one_call_and_their_verdicts_are_recorded(
    catalog_store: CatalogStore, fake: FakeCatalog, session: aiohttp.ClientSession
) -> None:
    now = time.time()
    await catalog_store.seen("", URL + "a", [seen("a"), seen("b")], now=now, min_interval=900)
    fake.reject["b"] = "The price is missing or malformed"
    report = await sender(catalog_store, fake, session).sync_site(target())
    assert (report.outcome, report.synced, report.errors) == ("ok", 1, 1)
    [call] = fake.batch_calls()
    assert call.body is not None and call.body["item_type"] == "PRODUCT_ITEM"
    assert sorted(r["data"]["id"] for r in call.requests) == ["a", "b"]
    assert {r["method"] for r in call.requests} == {"UPDATE"}
    assert call.path == f"/v26.0/{CATALOG}/items_batch"
    assert call.query["appsecret_proof"] == appsecret_proof("s3cret", TOKEN)
    polls = [c for c in fake.calls if c.path.endswith("/check_batch_request_status")]
    assert len(polls) == 2 and polls[0].query["handle"] == "handle-1"  # in progress, finished
    status = await catalog_store.status("")
    assert status["items"]["synced"] == 1 and status["items"]["error"] == 1
    assert status["errors"][0]["id"] == "b"
    assert status["errors"][0]["message"] == "The price is missing or malformed"
    assert status["last_result"] == "ok"
    assert fake.items["a"]["price"] == "9.90 EUR"


async def test_a_5xx_is_retried_with_backoff_and_nothing_is_lost(
    catalog_store: CatalogStore,
    fake: FakeCatalog,
    session: aiohttp.ClientSession,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Full jitter may draw a wait of a few milliseconds, shorter than the next call takes:
    # the longest wait makes "backing off" a certainty instead of a 99 % chance.
    monkeypatch.setattr(retry.random, "uniform", lambda low, high: high)
    now = time.time()
    await catalog_store.seen("", URL, [seen("a")], now=now, min_interval=900)
    fake.fail_next(1, status=500, code=2)
    s = sender(catalog_store, fake, session)
    assert (await s.sync_site(target())).outcome == "retry"
    assert (await s.sync_site(target())).outcome == "idle"  # backing off
    assert (await catalog_store.status(""))["items"]["pending"] == 1
    assert (await catalog_store.request_sync("", now=time.time())) == 1
    assert (await s.sync_site(target())).outcome == "ok"
    assert fake.items == {"a": seen("a").data}


async def test_a_throttled_call_honours_retry_after(
    catalog_store: CatalogStore, fake: FakeCatalog, session: aiohttp.ClientSession
) -> None:
    await catalog_store.seen("", URL, [seen("a")], now=time.time(), min_interval=900)
    fake.fail_next(
        1,
        status=400,
        code=613,
        message="Calls to this api have exceeded the rate limit.",
        retry_after="120",
    )
    s = sender(catalog_store, fake, session)
    assert (await s.sync_site(target())).outcome == "retry"
    [row] = await catalog_store.rows("")
    assert row.due_at >= time.time() + 100 and row.attempts == 1


async def test_an_expired_token_parks_the_catalog_until_the_token_changes(
    catalog_store: CatalogStore, fake: FakeCatalog, session: aiohttp.ClientSession
) -> None:
    await catalog_store.seen("", URL, [seen("a")], now=time.time(), min_interval=900)
    s = sender(catalog_store, fake, session)
    stale = target(token="EAAB-expired")
    report = await s.sync_site(stale)
    assert report.outcome == "blocked" and "code 190" in report.message
    assert (await s.sync_site(stale)).outcome == "blocked"
    assert len(fake.batch_calls()) == 1  # parked: no more calls, no attempt spent
    status = await catalog_store.status("")
    assert status["items"]["pending"] == 1 and "access token" in status["blocked"]
    [row] = await catalog_store.rows("")
    assert row.attempts == 0
    assert (await s.sync_site(target())).outcome == "ok"  # a new token (reload)
    assert (await catalog_store.status(""))["blocked"] is None


async def test_dry_run_records_and_calls_nobody(
    catalog_store: CatalogStore, fake: FakeCatalog, session: aiohttp.ClientSession
) -> None:
    await catalog_store.seen("", URL, [seen("a"), seen("b")], now=time.time(), min_interval=900)
    report = await sender(catalog_store, fake, session, dry_run=True).sync_site(target(None))
    assert (report.outcome, report.synced) == ("dry-run", 2)
    assert fake.calls == []
    status = await catalog_store.status("")
    assert status["items"]["synced"] == 2 and status["last_result"] == "dry-run"


async def test_a_whole_call_refused_marks_every_item_with_metas_message(
    catalog_store: CatalogStore, fake: FakeCatalog, session: aiohttp.ClientSession
) -> None:
    await catalog_store.seen("", URL, [seen("a")], now=time.time(), min_interval=900)
    fake.fail_next(1, status=400, code=100, message="(#100) Param catalog_id is not valid")
    report = await sender(catalog_store, fake, session).sync_site(target())
    assert report.outcome == "error"
    [error] = (await catalog_store.status(""))["errors"]
    assert "Param catalog_id is not valid" in error["message"]


async def test_two_replicas_never_send_the_same_item(
    catalog_store: CatalogStore, fake: FakeCatalog, session: aiohttp.ClientSession
) -> None:
    items = [seen(f"i{n}") for n in range(40)]
    await catalog_store.seen("", URL, items, now=time.time(), min_interval=900)
    a = sender(catalog_store, fake, session, batch_size=7)
    b = sender(catalog_store, fake, session, batch_size=7)
    for _ in range(4):
        await asyncio.gather(a.sync_site(target()), b.sync_site(target()))
    sent = [r["data"]["id"] for r in fake.sent_requests()]
    assert len(sent) == len(set(sent)) == 40


async def test_the_background_loop_sends_first_sight_and_stops(
    catalog_store: CatalogStore, fake: FakeCatalog, session: aiohttp.ClientSession
) -> None:
    s = sender(catalog_store, fake, session)
    s.start()
    await catalog_store.seen("", URL, [seen("a")], now=time.time(), min_interval=900)
    deadline = time.monotonic() + 5
    while "a" not in fake.items:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.02)
    await s.stop()


def test_item_errors_name_items_by_id_or_by_line() -> None:
    work = [Work("a", "UPDATE", {"id": "a"}, "h", 0), Work("b", "DELETE", {}, "h", 0)]
    entry = {
        "status": "finished",
        "errors": [
            {"line": 1, "message": "No such item"},
            {"id": "a", "message": "Invalid price"},
            {"id": "a", "message": "Missing image"},
            "junk",
        ],
    }
    assert item_errors(entry, work) == {"a": "Invalid price; Missing image", "b": "No such item"}
    assert item_errors({"status": "finished", "errors": []}, work) == {}
    # A batch Meta gave up on without saying which item: every item carries why.
    assert item_errors({"status": "error"}, work) == {
        "a": "Meta's batch status is 'error'",
        "b": "Meta's batch status is 'error'",
    }
