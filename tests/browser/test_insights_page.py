"""The marketer's page in headless Chromium at phone width, with numbers known in advance.

Two visitors browse the test site in Chromium through the gateway: Ann lands from a Facebook
ad (utm paid_social) and comes back from a newsletter (utm email); Bob lands through a
Google ad (gclid). Their purchases go through the events API under the `_fbp` cookies their
browsers got: Ann 120 EUR, Bob 30 EUR and 10 USD. The page must show 2 visitors, a 100%
conversion rate, 3 purchases worth 150 EUR and 10 USD (never summed), and attribution by
the chosen model: last click gives Email 1 and Paid Search 2, first click Paid Social 1.
The screenshot is tests/artifacts/insights-phone.png.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp

from gateway.edge.appkeys import PAGES
from tests.browser.conftest import Gateway, StartGateway, Tab
from tests.browser.test_admin_layout import PHONE
from tests.browser.test_pixel import ARTIFACTS
from tests.conftest import UA, auth

OpenTab = Callable[..., Awaitable[Tab]]


async def visit(tab: Tab, gw: Gateway, path: str) -> str:
    """A page view in the tab; the `_fbp` the browser holds afterwards."""
    await tab.page.goto(gw.url + path)
    await gw.app[PAGES].drain()
    fbp = await tab.cookie("_fbp")
    assert fbp
    return fbp


async def purchase(gw: Gateway, fbp: str, value: float, currency: str, n: int) -> None:
    event: dict[str, Any] = {
        "event_name": "Purchase",
        "event_id": f"order-{fbp}-{n}",
        "event_time": int(time.time()),
        "action_source": "website",
        "event_source_url": gw.url + "/thanks",
        "user_data": {"fbp": fbp, "user_agent": UA, "ip": "203.0.113.9"},
        "custom_data": {"value": value, "currency": currency},
    }
    async with aiohttp.ClientSession() as http:
        resp = await http.post(gw.url + "/_capi/events", json={"data": [event]}, headers=auth())
        assert resp.status == 202, await resp.text()


async def cells(tab: Tab, selector: str) -> dict[str, str]:
    """Row name -> the text of `selector` in that row, for rows carrying `data-key`."""
    found = await tab.page.evaluate(
        """(sel) => Object.fromEntries([...document.querySelectorAll('#attribution tr[data-key]')]
             .map((r) => [r.dataset.key, r.querySelector(sel).textContent.trim()]))""",
        selector,
    )
    assert isinstance(found, dict)
    return found


async def test_the_insights_page_shows_the_numbers_on_a_phone(
    start_gateway: StartGateway, open_tab: OpenTab
) -> None:
    gw = await start_gateway()
    ann_tab = await open_tab()
    ann = await visit(ann_tab, gw, "/?utm_source=facebook&utm_medium=paid_social&utm_campaign=x")
    await visit(ann_tab, gw, "/?utm_source=newsletter&utm_medium=email&utm_campaign=dec")
    bob_tab = await open_tab()
    bob = await visit(bob_tab, gw, "/?gclid=abc")
    await purchase(gw, ann, 120, "EUR", 1)
    await purchase(gw, bob, 30, "EUR", 2)
    await purchase(gw, bob, 10, "USD", 3)

    tab = await open_tab(**PHONE)
    page = tab.page
    await page.goto(gw.url + "/_capi/admin/insights?model=last_click")
    assert await page.locator("[data-figure=visitors]").inner_text() == "2"
    assert await page.locator("[data-figure=conversion-rate]").inner_text() == "100.0%"
    purchases = page.locator("#events tr[data-event=Purchase]")
    assert await purchases.locator(".count").inner_text() == "3"
    assert await purchases.locator(".value").inner_text() == "150.00 EUR, 10.00 USD"
    assert " ".join((await page.locator("[data-figure=aov]").inner_text()).split()) == (
        "75.00 EUR 10.00 USD"
    )
    assert await cells(tab, ".conversions") == {"Paid Search": "2.00", "Email": "1.00"}
    assert await cells(tab, ".value") == {
        "Paid Search": "30.00 EUR, 10.00 USD",
        "Email": "120.00 EUR",
    }
    # One chart per currency, one bar each (everything happened today).
    assert await page.locator("h3[data-currency]").all_inner_texts() != []
    assert await page.locator("svg.value-chart").count() == 2
    assert await page.locator("svg.value-chart rect").count() == 2
    # The funnel's last step: Purchase without the steps before it counts nobody in order.
    assert await page.locator("#funnel tr[data-step=ViewContent] .visitors").inner_text() == "0"

    # The model selector reloads the table under another model.
    await page.select_option("#model", "first_click")
    await page.locator("#controls form").first.locator("button").click()
    await page.wait_for_url("**model=first_click**")
    assert await cells(tab, ".conversions") == {"Paid Search": "2.00", "Paid Social": "1.00"}

    # Readable on a phone: nothing scrolls the page sideways, every section fits.
    width = 390
    assert await page.evaluate("document.documentElement.scrollWidth") <= width
    boxes = await page.evaluate(
        "() => [...document.querySelectorAll('section')].map((s) => "
        "{ const r = s.getBoundingClientRect(); return [r.left, r.right]; })"
    )
    assert all(left >= 0 and right <= width for left, right in boxes), boxes
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shot = ARTIFACTS / "insights-phone.png"
    await page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000


async def test_a_bad_range_is_a_400(start_gateway: StartGateway) -> None:
    gw = await start_gateway()
    async with (
        aiohttp.ClientSession() as http,
        http.get(gw.url + "/_capi/admin/insights", params={"since": "whenever"}) as resp,
    ):
        assert resp.status == 400
        assert "not a date" in (await resp.json())["detail"]
