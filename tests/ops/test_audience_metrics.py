"""Audience series on `GET /_capi/metrics`: members, parked and failing audiences, syncs and
rows by outcome, on both store backends; `site`-labelled series with [[sites]]."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from gateway.app import reload
from gateway.delivery.audiences import AudienceState
from gateway.metrics import Metrics
from gateway.ops.prometheus import render
from tests.commands.test_audiences import ACCOUNT, AUDIENCE
from tests.conftest import TOKEN, auth, make_settings, wait_for
from tests.fakes.audiences import FakeAudiences, start_fake_audiences
from tests.fakes.upstream import Front, run_gateway
from tests.ops.test_prometheus import Samples, scrape

NAME = AUDIENCE["name"]


@pytest.fixture
async def fake() -> AsyncIterator[FakeAudiences]:
    async with start_fake_audiences(token=TOKEN) as f:
        yield f


async def add_to_cart(front: Front, email: str, fbp: str) -> None:
    event = {
        "event_name": "AddToCart",
        "event_source_url": "https://shop.example/p/1",
        "user_data": {"email": email, "fbp": fbp, "user_agent": "UA"},
    }
    async with front.session.post(
        f"{front.url}/_capi/events", json={"data": [event]}, headers=auth()
    ) as resp:
        assert resp.status in (200, 202), await resp.text()


async def eventually(front: Front, check: Any) -> Samples:
    for _ in range(200):
        samples = await scrape(front.session, front.url)
        if check(samples):
            return samples
        await asyncio.sleep(0.05)
    raise AssertionError(samples.text)


async def test_audience_series_follow_parking_and_syncs(
    store_location: Path | str, tmp_path: Path, fake: FakeAudiences
) -> None:
    store: dict[str, Any] = (
        {}
        if isinstance(store_location, Path)
        else {"buffer": store_location, "encryption_key": "ab" * 32}
    )
    base: dict[str, Any] = {
        "ad_account_id": ACCOUNT,
        "audiences": [AUDIENCE],
        "audiences_sync_interval": 0.1,
        **store,
    }
    stale = make_settings(tmp_path, fake.url, audiences_access_token="EAAB-expired", **base)
    async with run_gateway(stale) as front:
        await add_to_cart(front, "gus@example.com", "fb.1.1700000000000.5")
        parked = await eventually(
            front, lambda s: s.get("capi_gateway_audience_parked", audience=NAME) == 1.0
        )
        assert parked.get("capi_gateway_audience_failing", audience=NAME) == 1.0
        assert parked.get("capi_gateway_audience_members", audience=NAME) == 0.0
        assert parked.get("capi_gateway_audience_syncs_total", audience=NAME, outcome="parked") >= 1
        assert not parked.has("capi_gateway_audience_last_sync_timestamp_seconds")
        assert not parked.has("capi_gateway_site_audience_members")

        await reload(front.app, make_settings(tmp_path, fake.url, **base))
        await wait_for(lambda: bool(fake.members("1001")), timeout=10)
        await add_to_cart(front, "hal@example.com", "fb.1.1700000000000.6")
        synced = await eventually(
            front, lambda s: s.get("capi_gateway_audience_members", audience=NAME) == 2.0
        )
        assert synced.get("capi_gateway_audience_parked", audience=NAME) == 0.0
        assert synced.get("capi_gateway_audience_failing", audience=NAME) == 0.0
        assert synced.get("capi_gateway_audience_syncs_total", audience=NAME, outcome="synced") >= 1
        assert synced.get("capi_gateway_audience_rows_total", audience=NAME, change="added") == 2.0
        assert (
            synced.get("capi_gateway_audience_rows_total", audience=NAME, change="removed") == 0.0
        )
        assert synced.get("capi_gateway_audience_last_sync_timestamp_seconds", audience=NAME) > 0


async def test_with_sites_the_series_carry_the_configured_site_only() -> None:
    metrics = Metrics()
    metrics.audience_synced("alpha", "Carts", "synced", added=3, removed=1)
    metrics.audience_synced("beta", "Carts", "parked", added=0, removed=0)
    configured: list[tuple[str | None, str, AudienceState | None]] = [
        ("alpha", "Carts", AudienceState("alpha", "Carts", "1001", synced_at=1.0e9, size=3)),
        ("beta", "Carts", AudienceState("beta", "Carts", blocked_token="f00d", last_error="190")),
    ]
    body, _ = await render(metrics, None, "", sites=["alpha", "beta"], audiences=configured)
    every = Samples(body.decode())
    assert every.get("capi_gateway_site_audience_members", site="alpha", audience="Carts") == 3
    assert every.get("capi_gateway_site_audience_parked", site="beta", audience="Carts") == 1
    assert every.get("capi_gateway_site_audience_failing", site="beta", audience="Carts") == 1
    assert (
        every.get(
            "capi_gateway_site_audience_rows_total", site="alpha", audience="Carts", change="added"
        )
        == 3
    )
    assert not every.has("capi_gateway_audience_members")
    # A tenant of alpha: its own audience series, nothing of beta.
    body, _ = await render(
        metrics, None, "", sites=["alpha"], tenant=True, audiences=configured[:1]
    )
    tenant = Samples(body.decode())
    assert tenant.get("capi_gateway_site_audience_members", site="alpha", audience="Carts") == 3
    assert (
        tenant.get(
            "capi_gateway_site_audience_syncs_total",
            site="alpha",
            audience="Carts",
            outcome="synced",
        )
        == 1
    )
    assert "beta" not in tenant.text


async def test_sites_audience_series_through_the_gateway(
    tmp_path: Path, fake: FakeAudiences
) -> None:
    from tests.edge.test_sites import (
        GLOBAL_TOKEN,
        HOST_A,
        KEY_A,
        TENANT_A,
        operator_get,
        post_events,
        site_tables,
    )
    from tests.fakes.upstream import start_upstream

    async with start_upstream() as a, start_upstream() as b:
        tables = site_tables(a, b)
        tables[0]["admin_token"] = TENANT_A
        settings = make_settings(
            tmp_path,
            fake.url,
            pixel_id=[],
            events_api_keys=[],
            sites=tables,
            admin_token=GLOBAL_TOKEN,
            ad_account_id=ACCOUNT,
            audiences=[AUDIENCE],
            audiences_sync_interval=0.1,
        )
        async with run_gateway(settings) as gw:
            event = {
                "event_name": "AddToCart",
                "event_source_url": f"https://{HOST_A}/p/1",
                "action_source": "website",
                "user_data": {
                    "email": "ida@example.com",
                    "fbp": "fb.1.1700000000000.9",
                    "client_user_agent": "UA",
                },
            }
            status, body = await post_events(gw, KEY_A, HOST_A, event)
            assert status == 202, body
            for _ in range(200):
                _, text = await operator_get(gw, "metrics", GLOBAL_TOKEN)
                every = Samples(text)
                alpha = {"site": "alpha", "audience": NAME}
                if every.get("capi_gateway_site_audience_members", **alpha) == 1.0:
                    break
                await asyncio.sleep(0.05)
            else:
                raise AssertionError(text)
            beta = {"site": "beta", "audience": NAME}
            assert every.has("capi_gateway_site_audience_last_sync_timestamp_seconds")
            assert every.get("capi_gateway_site_audience_members", **beta) == 0.0
            assert every.get("capi_gateway_site_audience_rows_total", change="added", **alpha) == 1
            assert not every.has("capi_gateway_audience_members")

            status, text = await operator_get(gw, "metrics", TENANT_A)
            assert status == 200
            own = Samples(text)
            assert own.get("capi_gateway_site_audience_members", **alpha) == 1.0
            assert own.get("capi_gateway_site_audience_parked", **alpha) == 0.0
            assert "beta" not in text
