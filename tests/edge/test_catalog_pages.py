"""Catalog sync through the real proxy: a loopback shop serves product pages, the gateway
reads them as they stream, and a fake Catalog Batch API receives the changes (issue 17)."""

from __future__ import annotations

import asyncio
import csv
import io
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any
from xml.etree import ElementTree

import pytest
from aiohttp.test_utils import TestClient, TestServer

from gateway.app import build_app, reload
from gateway.delivery.catalog import SqliteCatalog
from gateway.edge.appkeys import CATALOG, PROXY
from gateway.html.products import read_page
from gateway.pipeline.catalog import products_from_page
from gateway.siteapp import LANE
from tests.conftest import TOKEN, GatewayFactory, make_settings
from tests.fakes.catalog import FakeCatalog, start_fake_catalog
from tests.fakes.shop import Product, Shop, start_shop

CATALOG_ID = "555000111222333"


@pytest.fixture
async def shop() -> AsyncIterator[Shop]:
    async with start_shop(products=3) as shop:
        yield shop


@pytest.fixture
async def meta() -> AsyncIterator[FakeCatalog]:
    async with start_fake_catalog(token=TOKEN) as fake:
        yield fake


Start = Callable[..., Any]


@pytest.fixture
async def start(tmp_path: Path, shop: Shop, meta: FakeCatalog) -> AsyncIterator[Start]:
    """Start the gateway in front of the shop, its Graph calls going to the fake catalog."""
    clients: list[TestClient[Any, Any]] = []

    async def go(**catalog: Any) -> TestClient[Any, Any]:
        overrides = catalog.pop("settings", {})
        settings = make_settings(
            tmp_path,
            meta.url,
            upstream=shop.url,
            catalog={"catalog_id": CATALOG_ID, "min_interval": 0, **catalog},
            **overrides,
        )
        client: TestClient[Any, Any] = TestClient(TestServer(build_app(settings)))
        await client.start_server()
        clients.append(client)
        return client

    yield go
    for client in clients:
        await client.close()


async def until(predicate: Callable[[], bool], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


async def settle(client: TestClient[Any, Any]) -> None:
    """Wait until the proxy's product reader has stored what it was given."""
    proxy = client.app[PROXY]
    assert proxy.catalog is not None
    await proxy.catalog.drain()


async def status(client: TestClient[Any, Any]) -> dict[str, Any]:
    resp = await client.get("/_capi/catalog")
    assert resp.status == 200
    body: dict[str, Any] = await resp.json()
    return body


async def status_when(
    client: TestClient[Any, Any], predicate: Callable[[dict[str, Any]], bool]
) -> dict[str, Any]:
    """The status once `predicate` holds for it (Meta's verdict is recorded after its poll)."""
    deadline = time.monotonic() + 15.0
    while True:
        body = await status(client)
        if predicate(body):
            return body
        assert time.monotonic() < deadline, f"status never matched: {body}"
        await asyncio.sleep(0.05)


async def test_first_sight_creates_and_a_price_change_updates(
    start: Start, shop: Shop, meta: FakeCatalog
) -> None:
    client = await start()
    resp = await client.get("/p/1")
    assert resp.status == 200
    assert "Thing 1" in await resp.text()  # the page is served as ever (tag injected)
    await until(lambda: "SKU-1" in meta.items)
    item = meta.items["SKU-1"]
    assert item["price"] == "19.90 EUR" and item["availability"] == "in stock"
    assert item["link"].endswith("/p/1") and item["title"] == "Thing 1"
    calls = len(meta.batch_calls())
    # The same page again sends nothing.
    await client.get("/p/1")
    await settle(client)
    await asyncio.sleep(1.0)  # two of the sender's polls
    assert len(meta.batch_calls()) == calls
    # A new price goes out.
    product = shop.products["/p/1"]
    assert product is not None
    product.price = "17.50"
    await client.get("/p/1")
    await until(lambda: meta.items["SKU-1"]["price"] == "17.50 EUR")
    assert [r["method"] for r in meta.sent_requests()] == ["UPDATE", "UPDATE"]
    body = await status_when(client, lambda b: b["items"]["synced"] == 1)
    assert body["configured"] is True and body["catalog_id"] == CATALOG_ID
    assert body["last_sync"] is not None and body["items"]["pending"] == 0
    metrics = await (await client.get("/_capi/metrics")).text()
    assert 'capi_gateway_catalog_items{site="",state="synced"} 1.0' in metrics
    assert 'capi_gateway_catalog_batches_total{outcome="sent"} 2.0' in metrics
    assert 'capi_gateway_catalog_items_sent_total{result="synced"} 2.0' in metrics
    assert 'capi_gateway_catalog_pages_total{outcome="read"} 3.0' in metrics


async def test_min_interval_holds_a_change_back(
    start: Start, shop: Shop, meta: FakeCatalog
) -> None:
    client = await start(min_interval="1h")
    client.app[PROXY].catalog.reread_after = 0  # read every view, not once a minute
    await client.get("/p/2")
    await until(lambda: "SKU-2" in meta.items)
    product = shop.products["/p/2"]
    assert product is not None
    product.sale_price = "9.90"
    await client.get("/p/2")
    await settle(client)
    await asyncio.sleep(1.2)
    assert meta.items["SKU-2"]["price"] == "19.90 EUR" and "sale_price" not in meta.items["SKU-2"]
    assert (await status(client))["items"]["pending"] == 1


async def test_a_410_deletes_after_delete_after_and_a_503_or_timeout_does_not(
    start: Start, shop: Shop, meta: FakeCatalog
) -> None:
    client = await start(delete_after=2, settings={"upstream_read_timeout": 0.3})
    await client.get("/p/1")
    await client.get("/p/3")
    await until(lambda: {"SKU-1", "SKU-3"} <= set(meta.items))
    shop.status["/p/1"] = 503
    shop.delay["/p/3"] = 1.0
    for _ in range(3):
        assert (await client.get("/p/1")).status == 503
        assert (await client.get("/p/3")).status == 504
    await settle(client)
    del shop.delay["/p/3"]
    shop.status["/p/3"] = 410
    assert (await client.get("/p/3")).status == 410
    await settle(client)
    await asyncio.sleep(0.8)
    assert "SKU-3" in meta.items  # one miss of two: the timeouts counted nothing
    assert (await client.get("/p/3")).status == 410
    await until(lambda: "SKU-3" not in meta.items)
    assert {"method": "DELETE", "data": {"id": "SKU-3"}} in meta.sent_requests()
    assert "SKU-1" in meta.items  # 503s never delete
    body = await status_when(client, lambda b: b["items"]["deleted"] == 1)
    assert body["items"]["synced"] == 1
    feed = await (await client.get("/_capi/catalog.csv")).text()
    assert "SKU-1" in feed and "SKU-3" not in feed


async def test_a_catalog_sites_assets_take_the_lane_and_a_gone_product_leaves_it(
    start: Start, shop: Shop, meta: FakeCatalog
) -> None:
    # The asset lane (issue 19) serves a [catalog] site too: the catalog reads only 200 HTML
    # pages and 404/410 misses, and both leave the lane for the page path.
    client = await start(delete_after=1)
    lane = client.server.app[LANE]
    asset = {"Accept": "*/*", "Sec-Fetch-Dest": "script"}
    for _ in range(2):
        resp = await client.get("/robots.txt", headers=asset)
        assert resp.status == 200 and "Disallow" in await resp.text()
    assert (lane.taken, lane.handed_back) == (2, 0)
    await client.get("/p/2", headers=asset)  # an HTML answer: read by the catalog
    await until(lambda: "SKU-2" in meta.items)
    assert lane.handed_back == 1
    shop.status["/p/2"] = 410  # text/plain: only its status says it is a miss
    assert (await client.get("/p/2", headers=asset)).status == 410
    assert (lane.taken, lane.handed_back) == (2, 2)
    await until(lambda: "SKU-2" not in meta.items)
    # A HEAD is nothing the catalog reads: relayed on the lane.
    assert (await client.head("/p/2", headers=asset)).status == 410
    assert (lane.taken, lane.handed_back) == (3, 2)


async def test_a_product_gone_from_its_page_is_deleted(
    start: Start, shop: Shop, meta: FakeCatalog
) -> None:
    client = await start()
    await client.get("/p/2")
    await until(lambda: "SKU-2" in meta.items)
    shop.products["/p/2"] = None  # the page stays, its Product is gone
    await client.get("/p/2")
    await until(lambda: "SKU-2" not in meta.items)


async def test_meta_per_item_errors_are_shown_with_metas_message(
    start: Start, shop: Shop, meta: FakeCatalog
) -> None:
    meta.reject["SKU-2"] = "Products must have a valid image_link"
    client = await start()
    await client.get("/p/1")
    await client.get("/p/2")
    await until(lambda: "SKU-1" in meta.items)
    body = await status_when(client, lambda b: b["items"]["error"] == 1)
    assert body["errors"] == [
        {
            "id": "SKU-2",
            "url": f"http://{client.host}:{client.port}/p/2",
            "message": "Products must have a valid image_link",
            "at": body["errors"][0]["at"],
        }
    ]


async def test_a_page_is_read_at_most_once_a_minute(
    start: Start, shop: Shop, meta: FakeCatalog
) -> None:
    client = await start(min_interval="1h")
    await client.get("/p/1")
    await until(lambda: "SKU-1" in meta.items)
    product = shop.products["/p/1"]
    assert product is not None
    product.price = "1.00"
    await client.get("/p/1")  # within the minute: not read at all
    await settle(client)
    body = await status_when(client, lambda b: b["items"]["synced"] == 1)
    assert body["items"]["pending"] == 0


async def test_gzip_pages_and_untagged_pages_are_read_too(
    start: Start, shop: Shop, meta: FakeCatalog
) -> None:
    shop.gzip = True
    client = await start(settings={"inject": False})
    resp = await client.get("/p/3")
    assert resp.status == 200 and "Thing 3" in await resp.text()
    await until(lambda: "SKU-3" in meta.items)


async def test_pages_globs_limit_what_is_read(start: Start, shop: Shop, meta: FakeCatalog) -> None:
    shop.products["/shop/item"] = Product("SKU-X", "Elsewhere")
    client = await start(pages=["/shop/*"])
    await client.get("/p/1")
    await client.get("/shop/item")
    await until(lambda: "SKU-X" in meta.items)
    assert "SKU-1" not in meta.items


async def test_dry_run_records_without_calling_meta(
    start: Start, shop: Shop, meta: FakeCatalog
) -> None:
    client = await start(settings={"dry_run": True})
    await client.get("/p/1")
    body = await status_when(client, lambda b: b["items"]["synced"] == 1)
    assert body["last_result"] == "dry-run"
    assert meta.calls == []


async def test_without_a_catalog_nothing_is_read(gateway: GatewayFactory, shop: Shop) -> None:
    client = await gateway(upstream=shop.url)
    await client.get("/p/1")
    body = await status(client)
    assert body["configured"] is False
    assert await client.app[CATALOG].rows("") == []
    assert (await client.get("/_capi/catalog.xml")).status == 404


FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "catalog"


async def test_real_shop_pages_reach_meta_as_read_whole(
    start: Start, shop: Shop, meta: FakeCatalog
) -> None:
    """Every fixture page of a real shape (Offer, AggregateOffer, ProductGroup, sale price,
    out of stock, microdata, Open Graph, broken JSON-LD), streamed through the proxy in
    chunks, gives Meta exactly the items the page gives when read whole."""
    shop.gzip = True
    expected: dict[str, dict[str, Any]] = {}
    client = await start()
    origin = f"http://{client.host}:{client.port}"
    for fixture in sorted(FIXTURES.glob("*.html")):
        path = f"/real/{fixture.stem}"
        body = fixture.read_bytes()
        shop.raw[path] = body
        found = products_from_page(read_page(body), url=origin + path, public_origin=origin)
        expected.update({item.id: item.data() for item in found.items})
        assert (await client.get(path)).status == 200
    assert len(expected) >= 8  # the fixtures hold that many products at least
    await until(lambda: set(meta.items) == set(expected))
    assert meta.items == expected


async def test_feeds_need_admin_auth_or_the_feed_token(
    start: Start, shop: Shop, meta: FakeCatalog
) -> None:
    client = await start(feed_token="feed-secret-123", settings={"admin_token": "adm-token-1"})
    await client.get("/p/1")
    await client.get("/p/2")
    await until(lambda: {"SKU-1", "SKU-2"} <= set(meta.items))
    assert (await client.get("/_capi/catalog")).status == 401
    admin = {"Authorization": "Bearer adm-token-1"}
    assert (await client.get("/_capi/catalog", headers=admin)).status == 200
    assert (await client.get("/_capi/catalog.xml?token=wrong")).status == 401
    resp = await client.get("/_capi/catalog.xml?token=feed-secret-123")
    assert resp.status == 200 and resp.content_type == "application/xml"
    xml = await resp.text()
    root = ElementTree.fromstring(xml)
    g = "{http://base.google.com/ns/1.0}"
    items = root.findall("./channel/item")
    assert sorted(i.findtext(f"{g}id") for i in items) == ["SKU-1", "SKU-2"]
    first = next(i for i in items if i.findtext(f"{g}id") == "SKU-1")
    assert first.findtext(f"{g}price") == "19.90 EUR"
    assert first.findtext(f"{g}availability") == "in stock"
    csv_text = await (await client.get("/_capi/catalog.csv", headers=admin)).text()
    rows = list(csv.DictReader(io.StringIO(csv_text)))
    assert {r["id"]: r["price"] for r in rows} == {"SKU-1": "19.90 EUR", "SKU-2": "19.90 EUR"}


async def test_an_expired_token_parks_until_a_reload_brings_a_new_one(
    start: Start, shop: Shop, meta: FakeCatalog, tmp_path: Path
) -> None:
    client = await start(access_token="EAAB-expired-catalog-token")
    await client.get("/p/1")
    body = await status_when(client, lambda b: b["blocked"] is not None)
    assert "access token" in body["blocked"] and body["items"]["pending"] == 1
    calls = len(meta.batch_calls())
    await asyncio.sleep(1.0)
    assert len(meta.batch_calls()) == calls  # parked: no retries burnt
    fresh = make_settings(
        tmp_path,
        meta.url,
        upstream=shop.url,
        catalog={"catalog_id": CATALOG_ID, "min_interval": 0, "access_token": TOKEN},
    )
    await reload(client.app, fresh)
    await until(lambda: "SKU-1" in meta.items)
    body = await status_when(client, lambda b: b["items"]["synced"] == 1)
    assert body["blocked"] is None


async def test_through_the_proxy_on_postgresql(
    tmp_path: Path, shop: Shop, meta: FakeCatalog, postgres_store_dsn: str
) -> None:
    """The same path with the PostgreSQL store: first sight, a 410 twice deletes."""
    settings = make_settings(
        tmp_path,
        meta.url,
        upstream=shop.url,
        buffer=postgres_store_dsn,
        encryption_key="ab" * 32,
        catalog={"catalog_id": CATALOG_ID, "min_interval": 0, "delete_after": 2},
    )
    client: TestClient[Any, Any] = TestClient(TestServer(build_app(settings)))
    await client.start_server()
    try:
        await client.get("/p/1")
        await client.get("/p/2")
        await until(lambda: {"SKU-1", "SKU-2"} <= set(meta.items))
        shop.status["/p/2"] = 410
        for _ in range(2):
            assert (await client.get("/p/2")).status == 410
        await until(lambda: "SKU-2" not in meta.items)
        body = await status_when(client, lambda b: b["items"]["deleted"] == 1)
        assert body["items"]["synced"] == 1
    finally:
        await client.close()


async def test_pages_read_just_before_shutdown_are_recorded(
    tmp_path: Path, shop: Shop, meta: FakeCatalog
) -> None:
    settings = make_settings(
        tmp_path, meta.url, upstream=shop.url, catalog={"catalog_id": CATALOG_ID}
    )
    client: TestClient[Any, Any] = TestClient(TestServer(build_app(settings)))
    await client.start_server()
    for n in (1, 2, 3):
        assert (await client.get(f"/p/{n}")).status == 200
    await client.close()  # at once: the queue is flushed before the store closes
    store = await SqliteCatalog.open(settings.buffer)
    try:
        assert sorted(r.item_id for r in await store.rows("")) == ["SKU-1", "SKU-2", "SKU-3"]
    finally:
        await store.close()
