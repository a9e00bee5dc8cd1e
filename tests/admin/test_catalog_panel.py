"""The dashboard's catalog panel and doctor's catalog findings: counts, Meta's per-item
errors, and the share of ViewContent/AddToCart/Purchase events whose content_ids are
catalog item ids, with the ids that are not (issue 17)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from gateway.app import build_app
from gateway.commands.catalogcheck import check_catalog
from gateway.commands.findings import Level
from gateway.edge.appkeys import PROXY
from tests.conftest import TOKEN, auth, make_settings, web_event
from tests.fakes.catalog import FakeCatalog, start_fake_catalog
from tests.fakes.shop import start_shop

CATALOG_ID = "333000111222333"


@pytest.fixture
async def setup(tmp_path: Path) -> AsyncIterator[tuple[TestClient[Any, Any], FakeCatalog, Any]]:
    async with start_shop(products=3) as shop, start_fake_catalog(token=TOKEN) as meta:
        meta.reject["SKU-3"] = "Product price is not valid"
        settings = make_settings(
            tmp_path,
            meta.url,
            upstream=shop.url,
            catalog={"catalog_id": CATALOG_ID, "min_interval": 0},
        )
        client: TestClient[Any, Any] = TestClient(TestServer(build_app(settings)))
        await client.start_server()
        try:
            yield client, meta, settings
        finally:
            await client.close()


async def fill(client: TestClient[Any, Any]) -> None:
    for n in (1, 2, 3):
        assert (await client.get(f"/p/{n}")).status == 200
    await client.app[PROXY].catalog.drain()  # type: ignore[union-attr]
    events = [
        web_event(event_name="ViewContent", custom_data={"content_ids": ["SKU-1"]}),
        web_event(event_name="ViewContent", custom_data={"content_ids": ["sku-1"]}),
        web_event(event_name="AddToCart", custom_data={"content_ids": ["SKU-2", "SKU-9"]}),
        web_event(
            event_name="Purchase",
            custom_data={"content_ids": ["SKU-1", "SKU-2"], "value": 3, "currency": "EUR"},
        ),
    ]
    resp = await client.post("/_capi/events", json={"data": events}, headers=auth())
    assert resp.status == 202, await resp.text()
    deadline = time.monotonic() + 15
    while True:
        body = await (await client.get("/_capi/catalog")).json()
        if body["items"]["synced"] == 2 and body["items"]["error"] == 1:
            break
        assert time.monotonic() < deadline, body
        await asyncio.sleep(0.05)


async def test_dashboard_shows_counts_errors_and_content_id_share(
    setup: tuple[TestClient[Any, Any], FakeCatalog, Any],
) -> None:
    client, _, _ = setup
    await fill(client)
    page = await (await client.get("/_capi/admin")).text()
    assert 'id="catalog"' in page and CATALOG_ID in page
    assert '<span class="tile" data-catalog-state="synced"><b>2</b> synced</span>' in page
    assert '<tr data-item="SKU-3"><th>SKU-3</th>' in page
    assert "Product price is not valid" in page
    # ViewContent: 1 of 2 match (the lower-case id does not); AddToCart: 0 of 1, SKU-9 missing.
    assert (
        '<tr data-event="ViewContent"><th>ViewContent</th><td>2</td><td>1</td><td>50%</td>'
        "<td>sku-1</td></tr>"
    ) in page
    assert "<td>0%</td><td>SKU-9</td></tr>" in page
    assert (
        '<tr data-event="Purchase"><th>Purchase</th><td>1</td><td>1</td><td>100%</td><td></td>'
    ) in page


async def test_doctor_reports_the_catalog_and_the_mismatching_ids(
    setup: tuple[TestClient[Any, Any], FakeCatalog, Any],
) -> None:
    client, _, settings = setup
    await fill(client)
    findings = await check_catalog(settings)
    texts = [(f.level, f.message) for f in findings]
    assert texts[0][0] is Level.WARN and "SKU-3: Product price is not valid" in texts[0][1]
    assert (
        Level.WARN,
        f"catalog {CATALOG_ID}: 1 of 2 ViewContent events (50%) have content_ids that are "
        "catalog item ids; not in the catalog: sku-1",
    ) in texts
    assert (
        Level.OK,
        f"catalog {CATALOG_ID}: 1 of 1 Purchase events (100%) have content_ids that are "
        "catalog item ids",
    ) in texts
    assert any("SKU-9" in message for _, message in texts)
