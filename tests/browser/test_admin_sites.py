"""The dashboard with several sites, in headless Chromium: a tenant sees its own site only.

Two sites behind one gateway, each with dead letters of its own (the fake Graph API refuses
them for good); site alpha's admin token signs in to a dashboard that shows alpha's events
and none of beta's, and the global operator picks a site in the selector.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp

from gateway.edge.appkeys import RUNTIME
from tests.browser.conftest import StartGateway, Tab
from tests.browser.site import Site
from tests.browser.test_pixel import WAIT
from tests.conftest import TOKEN, wait_for
from tests.edge.test_sites import KEY_A, KEY_B, PIXEL_A, PIXEL_B, api_event
from tests.fakes.graph import FakeGraph

OpenTab = Callable[..., Awaitable[Tab]]
GLOBAL = "global-admin-token-0123456789"
TENANT_A = "tenant-a-admin-token-0123456789"


def dead_ids(buffer: Path) -> list[str]:
    with sqlite3.connect(buffer) as conn:
        return sorted(r[0] for r in conn.execute("SELECT event_id FROM events WHERE state='dead'"))


async def sign_in(tab: Tab, url: str, token: str) -> None:
    await tab.page.goto(url + "/_capi/admin")
    assert tab.page.url.endswith("/_capi/admin/login")
    await tab.page.fill("#token", token)
    await tab.page.click("button[type=submit]")
    await tab.page.wait_for_url("**/_capi/admin")


async def dead_rows(tab: Tab) -> list[str]:
    return await tab.page.locator("table.dead tbody tr").all_inner_texts()


async def test_a_tenants_dashboard_shows_none_of_another_sites_events(
    start_gateway: StartGateway, open_tab: OpenTab, site: Site, fake_graph: FakeGraph
) -> None:
    sites = [
        {
            "name": "alpha",
            "hosts": ["127.0.0.1"],
            "pixels": [{"id": PIXEL_A, "access_token": TOKEN}],
            "events_api_keys": [KEY_A],
            "admin_token": TENANT_A,
        },
        {
            "name": "beta",
            "hosts": ["beta.example"],
            "pixels": [{"id": PIXEL_B, "access_token": TOKEN}],
            "events_api_keys": [KEY_B],
        },
    ]
    gw = await start_gateway(
        pixel_id=[], events_api_keys=[], admin_token=GLOBAL, sites=sites, upstream=site.url
    )
    fake_graph.reject_event_ids(["alpha-order", "beta-order"])
    async with aiohttp.ClientSession() as http:
        for key, host, event_id in (
            (KEY_A, "127.0.0.1", "alpha-order"),
            (KEY_B, "beta.example", "beta-order"),
        ):
            headers = {"Authorization": f"Bearer {key}", "Host": host}
            body = {"data": [api_event(event_id=event_id)]}
            resp = await http.post(gw.url + "/_capi/events", json=body, headers=headers)
            assert resp.status == 202, await resp.text()
    buffer = gw.app[RUNTIME].settings.buffer
    await wait_for(lambda: dead_ids(buffer) == ["alpha-order", "beta-order"], timeout=WAIT)

    tenant = await open_tab(viewport={"width": 1280, "height": 900})
    await sign_in(tenant, gw.url, TENANT_A)
    page = tenant.page
    assert await page.locator(".tile.dead .n").inner_text() == "1"
    rows = await dead_rows(tenant)
    assert len(rows) == 1 and "alpha-order" in rows[0]
    assert "beta" not in await page.content()
    assert await page.locator("select[name=site] option").all_inner_texts() == ["alpha"]
    # The tenant acts on its own site's rows: "retry all" is all of alpha's, none of beta's,
    # and beta's row is out of reach even by its id.
    csrf = await page.locator("header").get_attribute("data-csrf")
    with sqlite3.connect(buffer) as conn:
        (beta_id,) = conn.execute("SELECT id FROM events WHERE event_id='beta-order'").fetchone()
    for path, body, want in (
        ("retry", "all=1", {"retried": 1}),
        ("discard", f"id={beta_id}", {"discarded": 0}),
        ("retry", f"id={beta_id}", {"retried": 0}),
    ):
        answer = await page.evaluate(
            """async ([path, body, csrf]) => await (await fetch("/_capi/admin/" + path, {
                method: "POST", body: body, headers: {"X-CSRF-Token": csrf,
                "Accept": "application/json",
                "Content-Type": "application/x-www-form-urlencoded"}})).json()""",
            [path, body, csrf],
        )
        assert answer == want, (path, body, answer)
    assert "beta-order" in dead_ids(buffer)
    await wait_for(lambda: dead_ids(buffer) == ["alpha-order", "beta-order"], timeout=WAIT)

    operator = await open_tab(viewport={"width": 1280, "height": 900})
    await sign_in(operator, gw.url, GLOBAL)
    assert len(await dead_rows(operator)) == 2
    await operator.page.select_option("select[name=site]", "beta")
    await operator.page.click(".site-selector button")
    await operator.page.wait_for_url("**/_capi/admin?site=beta")
    rows = await dead_rows(operator)
    assert len(rows) == 1 and "beta-order" in rows[0]
