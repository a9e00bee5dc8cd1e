"""The admin dashboard in headless Chromium: sign in, read it, retry and discard dead letters.

The gateway runs in front of the browser test site with an admin token and a rule file; a
visitor's pages give it PageViews with browser twins, a rule's ViewContent and a browser-only
AddToCart; two Purchases from the events API are refused by the fake Graph API for good. The
screenshot (tests/artifacts/admin.png) is taken with those on the page.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp
from playwright.async_api import Dialog

from gateway.edge.appkeys import RUNTIME
from tests.browser.conftest import Gateway, StartGateway, Tab
from tests.browser.site import Site
from tests.browser.test_pixel import ARTIFACTS, WAIT, beacon_answers, delivered, one
from tests.conftest import auth, wait_for, web_event
from tests.fakes.graph import FakeGraph

OpenTab = Callable[..., Awaitable[Tab]]
ADMIN_TOKEN = "browser-admin-token-0123456789"
RULES = """
[[rule]]
name = "view-product"
event = "ViewContent"
path = "/product"
status = 200

[[rule]]
name = "contact-form"
event = "Lead"
method = "POST"
path = "/contact"
"""


async def visit(gw: Gateway, tab: Tab, site: Site) -> None:
    """A visitor's two pages: two PageViews with browser twins, a ViewContent, an AddToCart."""
    await tab.page.goto(gw.url + "/")
    await beacon_answers(tab, 1)
    await tab.page.goto(gw.url + "/product")
    await one(lambda: site.tracked("PageView", "/product"))
    await tab.page.click("#add")
    await one(lambda: site.tracked("AddToCart", "/product"))
    await beacon_answers(tab, 3)


async def test_dashboard_in_chromium_sign_in_read_retry_discard(
    start_gateway: StartGateway,
    open_tab: OpenTab,
    site: Site,
    fake_graph: FakeGraph,
    tmp_path: Path,
) -> None:
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "shop.toml").write_text(RULES)
    gw = await start_gateway(admin_token=ADMIN_TOKEN, rules=rules)
    visitor = await open_tab()
    await visit(gw, visitor, site)
    # Two orders Meta refuses for good, three it takes (none carries a phone number).
    fake_graph.reject_event_ids(["order-bad-1", "order-bad-2"])
    orders = [web_event(event_id=f"order-{n}") for n in ("ok-1", "ok-2", "ok-3")]
    orders += [web_event(event_id="order-bad-1"), web_event(event_id="order-bad-2")]
    async with aiohttp.ClientSession() as http:
        resp = await http.post(gw.url + "/_capi/events", json={"data": orders}, headers=auth())
        assert resp.status == 202, await resp.text()
    settings = gw.app[RUNTIME].settings
    await wait_for(
        lambda: [s for s in db_rows_of(settings.buffer).values() if s == "dead"] == ["dead"] * 2,
        timeout=WAIT,
    )

    tab = await open_tab(viewport={"width": 1280, "height": 900})
    console: list[str] = []
    tab.page.on("console", lambda message: console.append(message.text))
    await tab.page.goto(gw.url + "/_capi/admin")
    # Not signed in: the sign-in form.
    assert tab.page.url.endswith("/_capi/admin/login")
    await tab.page.fill("#token", "not the token")
    await tab.page.click("button[type=submit]")
    assert await tab.page.locator("p.error").inner_text() == "That is not the admin token."
    await tab.page.fill("#token", ADMIN_TOKEN)
    await tab.page.click("button[type=submit]")
    await tab.page.wait_for_url("**/_capi/admin")
    # The session cookie is out of the page's reach.
    assert await tab.page.evaluate("document.cookie") == ""
    session = [c for c in await tab.context.cookies() if c.get("name") == "capigw_admin"]
    assert session and session[0].get("httpOnly") and session[0].get("sameSite") == "Strict"

    page = tab.page
    # Events per minute: bars and a legend entry per event name seen.
    assert await page.locator("svg.chart rect").count() >= 4
    legend = await page.locator(".legend").inner_text()
    for name in ("PageView", "Purchase", "ViewContent", "AddToCart"):
        assert name in legend
    # Delivery: the two dead letters with Meta's error and fbtrace_id.
    assert await page.locator(".tile.dead .n").inner_text() == "2"
    dead_rows = page.locator("table.dead tbody tr")
    assert await dead_rows.count() == 2
    first = await dead_rows.nth(0).inner_text()
    assert "order-bad-" in first and "2804001" in first
    assert any(len(word) >= 8 for word in first.split())  # the fbtrace_id cell
    # Coverage: the weakest key of Purchase, in plain words.
    hints = await page.locator("li.hint").all_inner_texts()
    assert (
        "Purchase events carry phone in 0% of cases: send user_data.ph with each Purchase "
        "from your backend (/_capi/events)"
    ) in hints
    # Deduplication: every PageView was seen by both sides; the AddToCart, mirrored from the
    # pixel by px.js and sent on by the gateway under the same id, is a pair too.
    dedup = page.locator("table.dedup")
    assert "PageView 2 2 2 100% 100%" in " ".join((await dedup.inner_text()).split())
    assert "AddToCart 1 1 1 100% 100%" in " ".join((await dedup.inner_text()).split())
    # Rules: one fired, one never did.
    assert await page.locator('tr[data-rule="view-product"] td').last.inner_text() == "1"
    assert "never fired" in await page.locator('tr[data-rule="contact-form"]').inner_text()
    # The script ran under the page's CSP: times are in the reader's zone, UTC kept aside.
    assert await page.locator("time[title]").count() >= 1
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shot = ARTIFACTS / "admin.png"
    await page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 20_000

    # Retry the first dead letter: Meta takes it this time.
    retried = first.split()[first.split().index("Purchase") + 1]
    fake_graph.reset()
    await dead_rows.nth(0).locator("button.retry").click()
    await page.wait_for_url("**/_capi/admin?done=retried&n=1#delivery")
    assert await page.locator("p.notice").inner_text() == (
        "1 dead letter(s) queued for sending again."
    )
    await one(lambda: [e for e in delivered(fake_graph, "Purchase") if e["event_id"] == retried])

    # Discard the other one: the browser asks first; saying no keeps it.
    answers = iter([False, True])

    async def answer(dialog: Dialog) -> None:
        assert "never be sent" in dialog.message
        await (dialog.accept() if next(answers) else dialog.dismiss())

    page.on("dialog", answer)
    remaining = page.locator("table.dead tbody tr")
    assert await remaining.count() == 1
    await remaining.nth(0).locator("button.discard").click()
    assert await page.locator("table.dead tbody tr").count() == 1
    await remaining.nth(0).locator("button.discard").click()
    await page.wait_for_url("**/_capi/admin?done=discarded&n=1#delivery")
    assert await page.locator("#delivery .empty").inner_text() == "No dead letters."
    assert "dead" not in db_rows_of(settings.buffer).values()
    # Nothing the page did was refused by its own CSP.
    assert [m for m in console if "Content Security Policy" in m] == []


def db_rows_of(buffer: Path) -> dict[str, str]:
    """event_id -> state in the gateway's buffer file."""
    with sqlite3.connect(buffer) as conn:
        return dict(conn.execute("SELECT event_id, state FROM events").fetchall())


async def test_dashboard_in_chromium_shows_the_match_keys_assembly_adds(
    start_gateway: StartGateway, open_tab: OpenTab
) -> None:
    # A hold long enough for the copies to meet before anything is sent.
    gw = await start_gateway(admin_token=ADMIN_TOKEN, assembly_hold=60)
    browserish = {"user_agent": "Mozilla/5.0 (X11) Chromium", "ip": "203.0.113.7"}
    pages = [web_event(event_id=f"lift-{n}", user_data=browserish) for n in range(2)]
    # The backend's copies of the same orders: the email the page never had.
    copies = [
        web_event(
            event_id=f"lift-{n}",
            action_source="system_generated",
            user_data={"email": f"buyer{n}@example.com"},
        )
        for n in range(2)
    ]
    async with aiohttp.ClientSession() as http:
        for batch in (pages, copies):
            resp = await http.post(gw.url + "/_capi/events", json={"data": batch}, headers=auth())
            assert resp.status == 202, await resp.text()
            answer = await resp.json()
        assert [e["outcome"] for e in answer["events"]] == ["merged", "merged"]

    tab = await open_tab(viewport={"width": 1280, "height": 900})
    await tab.page.goto(gw.url + "/_capi/admin")
    await tab.page.fill("#token", ADMIN_TOKEN)
    await tab.page.click("button[type=submit]")
    await tab.page.wait_for_url("**/_capi/admin")
    row = tab.page.locator("table.coverage tbody tr", has_text="Purchase")
    email = row.locator('td[data-key="em"]')
    assert " ".join((await email.inner_text()).split()) == "0% received → 100% sent"
    assert await email.get_attribute("data-received") == "0.000"
    assert await email.get_attribute("data-sent") == "1.000"
    # Keys both copies agree on show one figure.
    assert (await row.locator('td[data-key="client_user_agent"]').inner_text()).strip() == "100%"
    # No hint asks for the email the copies supply; what is missing is said instead.
    hints = await tab.page.locator("li.hint").all_inner_texts()
    assert not [h for h in hints if "email" in h]
    assert any(h.startswith("Purchase events carry phone in 0% of cases") for h in hints)
