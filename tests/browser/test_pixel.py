"""Browser and server report each conversion once: proven in headless Chromium.

The browser loads pages of tests/browser/site.py through the gateway; the site's Meta pixel
base code runs against a local stand-in for fbevents.js that records every fbq call it gets
(with its eventID); px.js mirrors those calls to /collect; the fake Graph API records what the
gateway delivers. Each test compares the browser's record with the fake's.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from aiohttp import web

from gateway.demo_shop import shop_app
from gateway.edge.appkeys import PAGES
from tests.browser.conftest import Gateway, StartGateway, Tab
from tests.browser.site import PIXEL, STRICT_CSP, Site, serve
from tests.conftest import wait_for
from tests.fakes.graph import FakeGraph

OpenTab = Callable[..., Awaitable[Tab]]
WAIT = 10.0  # seconds: every wait in this file is bounded by it
ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"


def delivered(fake: FakeGraph, name: str) -> list[dict[str, Any]]:
    """Events named `name` the fake Graph API accepted, in arrival order."""
    return [e for e in fake.events if e.get("event_name") == name]


def outbox_rows(gw: Gateway) -> list[tuple[str, str, str]]:
    """(event_name, event_id, source) of every row committed to the gateway's outbox."""
    with contextlib.closing(sqlite3.connect(gw.app[PAGES].settings.buffer)) as conn:
        return [
            (str(n), str(i), str(s))
            for n, i, s in conn.execute("SELECT event_name, event_id, source FROM events")
        ]


async def quiet(seconds: float = 0.4) -> None:
    """Leave time for anything late (beacons, the sender's 50 ms poll) before a 'nothing'."""
    await asyncio.sleep(seconds)


async def one(items: Callable[[], list[dict[str, Any]]]) -> dict[str, Any]:
    """Wait until `items()` holds something; it must then hold exactly one thing."""
    await wait_for(lambda: len(items()) >= 1, timeout=WAIT)
    found = items()
    assert len(found) == 1, found
    return found[0]


async def beacon_answers(tab: Tab, count: int) -> list[int]:
    """Wait for `count` answers to the context's /collect beacons; their statuses."""
    await wait_for(lambda: len(tab.beacons.responses) >= count, timeout=WAIT)
    return [r.status for r in tab.beacons.responses]


async def assert_identity(tab: Tab, sent: dict[str, Any]) -> None:
    """The event carries this browser's _fbp, address and user agent."""
    user = sent["user_data"]
    fbp = await tab.cookie("_fbp")
    assert fbp and user["fbp"] == fbp
    assert user["client_ip_address"] == "127.0.0.1"
    assert user["client_user_agent"] == await tab.page.evaluate("navigator.userAgent")


# -- (1) the PageView --------------------------------------------------------------------------


async def test_browser_pageview_carries_the_event_id_the_server_sent(
    start_gateway: StartGateway, open_tab: OpenTab, site: Site, fake_graph: FakeGraph
) -> None:
    gw = await start_gateway()
    tab = await open_tab()
    await tab.page.goto(gw.url + "/")
    injected = await tab.injected("event-id")
    pageview = await one(lambda: site.tracked("PageView", "/"))
    assert pageview["eventID"] == injected
    assert pageview["pixel"] == PIXEL
    calls = await tab.page.evaluate("window.__fbqCalls")
    assert [c.get("eventID") for c in calls if c.get("event") == "PageView"] == [injected]
    server = await one(lambda: delivered(fake_graph, "PageView"))
    assert server["event_id"] == injected
    await assert_identity(tab, server)
    # px.js mirrored the browser's PageView too (accepted), and it made no second one.
    assert await beacon_answers(tab, 1) == [204]
    assert '"event_name":"PageView"' in (tab.beacons.requests[0].post_data or "")
    await quiet()
    assert [e["event_id"] for e in delivered(fake_graph, "PageView")] == [injected]
    # One row for both copies, the proxy's PageView and the beacon's, whichever was committed
    # first (the proxy stores its PageView once the page has gone out): merged into it, or
    # recorded as late when the first was already sent.
    assert [r[:2] for r in outbox_rows(gw) if r[0] == "PageView"] == [("PageView", injected)]
    with contextlib.closing(sqlite3.connect(gw.app[PAGES].settings.buffer)) as conn:
        sources, late = conn.execute(
            "SELECT sources, late FROM events WHERE event_name='PageView'"
        ).fetchone()
    seen = set(json.loads(sources)) | set(json.loads(late or "{}").get("sources", []))
    assert seen == {"browser", "page:pageview"}


# -- (2) AddToCart before and after the pixel loaded ------------------------------------------


async def test_addtocart_queued_before_the_pixel_loaded_is_delivered_with_its_event_id(
    start_gateway: StartGateway, open_tab: OpenTab, site: Site, fake_graph: FakeGraph
) -> None:
    gw = await start_gateway()
    tab = await open_tab()
    await tab.page.goto(gw.url + "/early")
    browser = await one(lambda: site.tracked("AddToCart", "/early"))
    assert browser["via"] == "queue"  # called before fbevents.js ran: from the stub's queue
    assert browser["eventID"] and browser["params"] == {"value": 9.5, "currency": "EUR"}
    server = await one(lambda: delivered(fake_graph, "AddToCart"))
    assert server["event_id"] == browser["eventID"]
    assert server["custom_data"] == {"value": 9.5, "currency": "EUR"}
    assert server["event_source_url"] == gw.url + "/early"
    await assert_identity(tab, server)
    await quiet()
    assert len(delivered(fake_graph, "AddToCart")) == 1


async def test_addtocart_on_click_after_the_pixel_loaded_is_delivered_with_its_event_id(
    start_gateway: StartGateway, open_tab: OpenTab, site: Site, fake_graph: FakeGraph
) -> None:
    gw = await start_gateway()
    tab = await open_tab()
    await tab.page.goto(gw.url + "/product")
    await one(lambda: site.tracked("PageView", "/product"))  # fbevents.js has loaded
    await tab.page.click("#add")
    browser = await one(lambda: site.tracked("AddToCart", "/product"))
    assert browser["via"] == "call"
    server = await one(lambda: delivered(fake_graph, "AddToCart"))
    assert server["event_id"] == browser["eventID"]
    assert server["event_id"].startswith(await tab.injected("event-id") + ".")
    assert server["custom_data"] == {"value": 9.5, "currency": "EUR"}
    await assert_identity(tab, server)
    await quiet()
    assert len(delivered(fake_graph, "AddToCart")) == 1


async def test_pageview_keeps_the_page_id_when_the_site_strips_its_query(
    start_gateway: StartGateway, open_tab: OpenTab, site: Site, fake_graph: FakeGraph
) -> None:
    gw = await start_gateway()
    tab = await open_tab()
    await tab.page.goto(gw.url + "/landing?fbclid=Click3&utm_source=fb")
    assert tab.page.url == gw.url + "/landing"
    injected = await tab.injected("event-id")
    assert (await one(lambda: site.tracked("PageView", "/landing")))["eventID"] == injected
    assert (await one(lambda: delivered(fake_graph, "PageView")))["event_id"] == injected
    assert await beacon_answers(tab, 1) == [204]
    await quiet()
    assert len(delivered(fake_graph, "PageView")) == 1


async def test_route_change_pageview_and_bad_names_do_not_cost_other_events(
    start_gateway: StartGateway, open_tab: OpenTab, site: Site, fake_graph: FakeGraph
) -> None:
    # A single-page app changes route and reports a PageView, a custom event /collect would
    # refuse, and an AddToCart, all in one tick (one beacon).
    gw = await start_gateway()
    tab = await open_tab()
    await tab.page.goto(gw.url + "/")
    injected = await tab.injected("event-id")
    await one(lambda: site.tracked("PageView", "/"))
    await beacon_answers(tab, 1)
    await tab.page.evaluate(
        """() => {
          history.pushState({}, "", "/next");
          fbq("track", "PageView");
          fbq("trackCustom", "Bad/Name", {});
          fbq("track", "AddToCart", {value: 9.5, currency: "EUR"});
        }"""
    )
    # The route's PageView is a view of its own for Meta, not a duplicate of the first.
    second = await one(lambda: site.tracked("PageView", "/next"))
    assert second["eventID"] and second["eventID"] != injected
    browser = await one(lambda: site.tracked("AddToCart", "/next"))
    server = await one(lambda: delivered(fake_graph, "AddToCart"))
    assert server["event_id"] == browser["eventID"]
    assert set(await beacon_answers(tab, 2)) == {204}
    await quiet()
    assert [e["event_id"] for e in delivered(fake_graph, "PageView")] == [injected]
    assert delivered(fake_graph, "Bad/Name") == []


# -- (3) an event fired while navigating away --------------------------------------------------


async def test_purchase_fired_by_a_click_that_navigates_away_still_arrives(
    start_gateway: StartGateway, open_tab: OpenTab, site: Site, fake_graph: FakeGraph
) -> None:
    gw = await start_gateway()
    tab = await open_tab()
    await tab.page.goto(gw.url + "/buy")
    await one(lambda: site.tracked("PageView", "/buy"))
    await tab.page.click("#buy")
    await tab.page.wait_for_url(gw.url + "/thanks", timeout=WAIT * 1000)
    browser = await one(lambda: site.tracked("Purchase", "/buy"))
    server = await one(lambda: delivered(fake_graph, "Purchase"))
    assert server["event_id"] == browser["eventID"]
    assert server["custom_data"] == {"value": 20, "currency": "EUR"}
    assert server["event_source_url"] == gw.url + "/buy"
    await assert_identity(tab, server)


# -- (4) consent -------------------------------------------------------------------------------


async def test_without_consent_nothing_is_sent_and_no_cookie_is_set(
    start_gateway: StartGateway, open_tab: OpenTab, site: Site, fake_graph: FakeGraph
) -> None:
    gw = await start_gateway(consent="cookie_consent")
    tab = await open_tab()
    await tab.page.goto(gw.url + "/?fbclid=Click1")
    await tab.page.goto(gw.url + "/early")
    await tab.page.goto(gw.url + "/product")
    await one(lambda: site.tracked("PageView", "/product"))
    await tab.page.click("#add")
    # The site's own pixel is the site's business: it ran. The gateway sent nothing.
    await one(lambda: site.tracked("AddToCart", "/product"))
    await one(lambda: site.tracked("AddToCart", "/early"))
    await quiet()
    assert tab.beacons.requests == []
    assert await tab.cookie("_fbp") is None and await tab.cookie("_fbc") is None
    assert fake_graph.events == [] and outbox_rows(gw) == []

    # The visitor agrees: from the next page on, everything flows.
    await tab.context.add_cookies([{"name": "cookie_consent", "value": "yes", "url": gw.url}])
    await tab.page.goto(gw.url + "/product?fbclid=Click2")
    injected = await tab.injected("event-id")
    await wait_for(lambda: len(site.tracked("PageView", "/product")) == 2, timeout=WAIT)
    await tab.page.click("#add")
    await wait_for(lambda: len(site.tracked("AddToCart", "/product")) == 2, timeout=WAIT)
    browser = site.tracked("AddToCart", "/product")[-1]
    server = await one(lambda: delivered(fake_graph, "AddToCart"))
    assert server["event_id"] == browser["eventID"]
    assert (await one(lambda: delivered(fake_graph, "PageView")))["event_id"] == injected
    await assert_identity(tab, server)
    assert (await tab.cookie("_fbc") or "").endswith(".Click2")
    assert set(await beacon_answers(tab, 2)) == {204}


async def test_load_mode_without_consent_loads_no_pixel(
    start_gateway: StartGateway, open_tab: OpenTab, site: Site, fake_graph: FakeGraph
) -> None:
    gw = await start_gateway(
        consent="cookie_consent", browser_pixel="load", fbevents_url=site.url + "/fbevents.js"
    )
    tab = await open_tab()
    await tab.page.goto(gw.url + "/nopixel")
    await tab.page.click("#lead")
    await quiet()
    assert await tab.page.evaluate("typeof window.fbq") == "undefined"
    assert "/fbevents.js" not in site.paths and site.calls == []
    assert tab.beacons.requests == [] and fake_graph.events == []
    assert await tab.cookie("_fbp") is None


# -- (5) load and off modes --------------------------------------------------------------------


async def test_load_mode_loads_the_pixel_and_its_pageview_carries_the_injected_id(
    start_gateway: StartGateway, open_tab: OpenTab, site: Site, fake_graph: FakeGraph
) -> None:
    # fbevents_url on another origin (the site's own port), as Meta's CDN would be.
    gw = await start_gateway(browser_pixel="load", fbevents_url=site.url + "/fbevents.js")
    tab = await open_tab()
    await tab.page.goto(gw.url + "/nopixel")
    injected = await tab.injected("event-id")
    assert await tab.injected("fbevents") == site.url + "/fbevents.js"
    pageview = await one(lambda: site.tracked("PageView", "/nopixel"))
    assert pageview["eventID"] == injected
    assert [c["pixel"] for c in site.calls if c["method"] == "init"] == [PIXEL]
    assert site.paths.count("/fbevents.js") == 1
    server = await one(lambda: delivered(fake_graph, "PageView"))
    assert server["event_id"] == injected

    await tab.page.click("#lead")
    lead_id = await tab.page.evaluate("window.__leadIds[0]")
    browser = await one(lambda: site.tracked("Lead", "/nopixel"))
    assert browser["eventID"] == lead_id
    sent = await one(lambda: delivered(fake_graph, "Lead"))
    assert sent["event_id"] == lead_id
    assert sent["custom_data"] == {"value": 1, "currency": "EUR"}
    await assert_identity(tab, sent)
    await quiet()
    assert len(delivered(fake_graph, "PageView")) == 1


async def test_off_mode_sends_beacons_only(
    start_gateway: StartGateway, open_tab: OpenTab, site: Site, fake_graph: FakeGraph
) -> None:
    gw = await start_gateway(browser_pixel="off", fbevents_url=site.url + "/fbevents.js")
    tab = await open_tab()
    requested: list[str] = []
    tab.page.on("request", lambda request: requested.append(request.url))
    await tab.page.goto(gw.url + "/nopixel")
    assert await tab.injected("mode") == "off"
    await tab.page.click("#lead")
    await tab.page.click("#lead")
    ids = await tab.page.evaluate("window.__leadIds")
    assert len(set(ids)) == 2
    await wait_for(lambda: len(delivered(fake_graph, "Lead")) == 2, timeout=WAIT)
    assert sorted(e["event_id"] for e in delivered(fake_graph, "Lead")) == sorted(ids)
    await assert_identity(tab, delivered(fake_graph, "Lead")[0])
    assert not any("fbevents" in url for url in requested), requested
    assert "/fbevents.js" not in site.paths and site.calls == []
    assert await tab.page.evaluate("typeof window.fbq") == "undefined"


# -- (6) forged beacons ------------------------------------------------------------------------

FORGE = """async ({url, body}) => {
  const out = {};
  try {
    const r = await fetch(url, {method: "POST", body: body, credentials: "include"});
    out.status = r.status;
    out.text = await r.text();
  } catch (e) { out.error = String(e); }
  const opaque = await fetch(url, {method: "POST", body: body, mode: "no-cors",
                                   credentials: "include"});
  out.opaque = opaque.type + ":" + opaque.status;
  out.beacon = navigator.sendBeacon(url, body);
  return out;
}"""


def lead_beacon(token: str, event_id: str) -> str:
    events = [{"event_name": "Lead", "event_id": event_id, "custom_data": {"value": 1}}]
    return json.dumps({"token": token, "events": events})


async def test_forged_token_is_rejected(
    start_gateway: StartGateway, open_tab: OpenTab, site: Site, fake_graph: FakeGraph
) -> None:
    gw = await start_gateway()
    tab = await open_tab()
    await tab.page.goto(gw.url + "/")
    injected = await tab.injected("event-id")
    await beacon_answers(tab, 1)  # the page's own PageView mirror
    token = await tab.injected("token")
    forged = token[:-3] + ("AAA" if not token.endswith("AAA") else "BBB")
    out = await tab.page.evaluate(
        FORGE, {"url": "/_capi/collect", "body": lead_beacon(forged, injected + ".1")}
    )
    # Same origin: the page may read the answer, and it is a refusal.
    assert out["status"] == 403 and "token" in out["text"], out
    await wait_for(lambda: len(tab.beacons.responses) == 4, timeout=WAIT)
    assert [r.status for r in tab.beacons.responses[1:]] == [403, 403, 403]
    await quiet()
    assert delivered(fake_graph, "Lead") == []
    assert [r[0] for r in outbox_rows(gw)] == ["PageView"]
    # Control: the same beacon with the page's real token is taken.
    out = await tab.page.evaluate(
        FORGE, {"url": "/_capi/collect", "body": lead_beacon(token, injected + ".1")}
    )
    assert out["status"] == 204, out
    sent = await one(lambda: delivered(fake_graph, "Lead"))
    assert sent["event_id"] == injected + ".1"


async def test_foreign_origin_beacon_is_rejected_and_unreadable(
    start_gateway: StartGateway, open_tab: OpenTab, site: Site, fake_graph: FakeGraph
) -> None:
    gw = await start_gateway()
    evil = web.Application()

    async def evil_page(request: web.Request) -> web.Response:
        return web.Response(
            text="<!doctype html><title>Elsewhere</title>", content_type="text/html"
        )

    evil.router.add_get("/", evil_page)
    async with serve(evil) as evil_url:
        tab = await open_tab()
        await tab.page.goto(gw.url + "/")
        injected = await tab.injected("event-id")
        # A valid token of this very browser (same IP and user agent), so only the origin
        # can be what is refused.
        body = lead_beacon(await tab.injected("token"), injected + ".1")
        await beacon_answers(tab, 1)
        await tab.page.goto(evil_url + "/")
        assert evil_url != gw.url
        out = await tab.page.evaluate(FORGE, {"url": gw.url + "/_capi/collect", "body": body})
    # No CORS header lets the foreign page read the answer, not even its status.
    assert "status" not in out and "Failed to fetch" in out["error"], out
    assert out["opaque"] == "opaque:0"
    # All three reached the gateway with the foreign Origin. The opaque fetch and the
    # beacon show the browser's network layer got 403; the readable fetch failed on CORS.
    await wait_for(lambda: len(tab.beacons.requests) == 4, timeout=WAIT)
    await wait_for(lambda: len(tab.beacons.responses) == 3, timeout=WAIT)
    foreign = tab.beacons.requests[1:]
    assert foreign[0].failure == "net::ERR_FAILED"
    answers = tab.beacons.responses[1:]
    assert [r.status for r in answers] == [403, 403]
    for response in answers:
        headers = await response.all_headers()
        assert not any(k.startswith("access-control-") for k in headers), headers
    # And as the gateway saw them: the foreign Origin, refused, no CORS header.
    assert [(a.status, a.origin) for a in gw.collect] == [
        (204, gw.url),
        (403, evil_url),
        (403, evil_url),
        (403, evil_url),
    ]
    for answer in gw.collect:
        assert not any(k.lower().startswith("access-control-") for k in answer.headers)
    await quiet()
    assert delivered(fake_graph, "Lead") == []
    assert [r[0] for r in outbox_rows(gw)] == ["PageView"]


# -- a strict Content-Security-Policy --------------------------------------------------------

CSP_WATCH = """
window.__violations = [];
document.addEventListener("securitypolicyviolation", function (e) {
  window.__violations.push(e.effectiveDirective + " " + e.blockedURI);
}, true);
"""


async def test_px_js_runs_under_script_src_self_without_violations(
    start_gateway: StartGateway, open_tab: OpenTab, site: Site, fake_graph: FakeGraph
) -> None:
    gw = await start_gateway()
    tab = await open_tab()
    console: list[str] = []
    tab.page.on("console", lambda msg: console.append(f"{msg.type}: {msg.text}"))
    # Installed before any page script (and not subject to the page's CSP).
    await tab.page.add_init_script(CSP_WATCH)
    response = await tab.page.goto(gw.url + "/csp")
    assert response is not None
    assert response.headers.get("content-security-policy") == STRICT_CSP
    injected = await tab.injected("event-id")
    assert await tab.page.evaluate("window.capi && window.capi.eventId") == injected
    pageview = await one(lambda: site.tracked("PageView", "/csp"))
    assert pageview["eventID"] == injected
    assert await beacon_answers(tab, 1) == [204]
    server = await one(lambda: delivered(fake_graph, "PageView"))
    assert server["event_id"] == injected
    # The checks work: an inline script is refused here, and that is seen.
    await tab.page.evaluate(
        "() => { const s = document.createElement('script'); s.textContent = 'window.x = 1';"
        " document.head.appendChild(s); }"
    )
    await wait_for(lambda: any("Content Security Policy" in m for m in console), timeout=WAIT)
    violations = await tab.page.evaluate("window.__violations")
    assert violations == ["script-src-elem inline"], violations
    assert [m for m in console if "Content Security Policy" in m and "inline" not in m] == []


# -- the demo shop, for a reviewer's eyes -----------------------------------------------------


async def test_demo_shop_home_through_the_gateway_screenshot(
    start_gateway: StartGateway, open_tab: OpenTab
) -> None:
    async with serve(shop_app()) as shop_url:
        gw = await start_gateway(upstream=shop_url)
        tab = await open_tab(viewport={"width": 1000, "height": 800})
        await tab.page.goto(gw.url + "/")
        assert await tab.page.evaluate("typeof window.capi.track") == "function"
        assert await tab.page.locator("text=Loopback T-shirt").count() >= 1
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        shot = ARTIFACTS / "demo-shop-home.png"
        await tab.page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 5_000
