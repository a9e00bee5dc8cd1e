"""Identity and the server PageView through the real proxy, delivered to the fake Graph API.

Each test starts the gateway in-process in front of tests.fakes.upstream and reads what a
browser would get (Set-Cookie lines, the injected tag) and what Meta would get (the events
the fake Graph API accepted).
"""

from __future__ import annotations

import asyncio
import re
import time

import aiohttp
import pytest

from gateway.edge import pagetoken
from gateway.edge.appkeys import OUTBOX, PAGES
from tests.conftest import UA, wait_for
from tests.edge.conftest import StartGateway
from tests.fakes.graph import FakeGraph
from tests.fakes.upstream import COOKIES, Front

BROWSER = {"User-Agent": UA, "Accept": "text/html", "Host": "www.example.co.uk"}
FBP = re.compile(r"fb\.(\d{1,2})\.(\d{13})\.(\d+)")
TAG = re.compile(r'<script src="/_capi/px\.js[^>]*></script>')
LIFETIME = str(90 * 86400)


class Page:
    """A tagged (or untagged) page as the browser got it."""

    def __init__(self, resp: aiohttp.ClientResponse, body: bytes) -> None:
        self.status = resp.status
        self.text = body.decode(errors="replace")
        self.set_cookies: list[str] = resp.headers.getall("Set-Cookie", [])
        tags = TAG.findall(self.text)
        assert len(tags) <= 1
        self.tag = tags[0] if tags else None

    def cookie(self, name: str) -> dict[str, str]:
        """Our Set-Cookie line for `name` as {"value": ..., attribute: value or ""}."""
        lines = [c for c in self.set_cookies if c.startswith(name + "=")]
        assert len(lines) == 1, self.set_cookies
        first, *attrs = (part.strip() for part in lines[0].split(";"))
        out = {"value": first.split("=", 1)[1]}
        for attr in attrs:
            key, _, value = attr.partition("=")
            out[key.lower()] = value
        return out

    def has_cookie(self, name: str) -> bool:
        return any(c.startswith(name + "=") for c in self.set_cookies)

    def attr(self, name: str) -> str:
        assert self.tag is not None, self.text[:300]
        match = re.search(rf'{name}="([^"]*)"', self.tag)
        assert match, self.tag
        return match.group(1)


async def visit(gw: Front, path: str = "/html", **headers: str) -> Page:
    sent = {**BROWSER, **{k.replace("_", "-"): v for k, v in headers.items()}}
    async with gw.session.get(gw.url + path, headers=sent) as resp:
        return Page(resp, await resp.read())


async def settle(gw: Front) -> None:
    """Every PageView handed to the outbox is stored (or failed)."""
    await gw.app[PAGES].drain()


# -- _fbp ------------------------------------------------------------------------------------


async def test_fbp_is_issued_on_the_first_visit(gw: Front) -> None:
    before = int(time.time() * 1000)
    page = await visit(gw)
    fbp = page.cookie("_fbp")
    match = FBP.fullmatch(fbp["value"])
    assert match, fbp
    # Two labels in the cookie domain example.co.uk: subdomain index 2.
    assert match.group(1) == "2"
    assert before <= int(match.group(2)) <= int(time.time() * 1000)
    assert 0 <= int(match.group(3)) < 2**31
    assert fbp["domain"] == "example.co.uk"
    assert fbp["path"] == "/" and fbp["samesite"] == "Lax"
    assert fbp["max-age"] == LIFETIME and "expires" in fbp
    assert "httponly" not in fbp  # the browser pixel reads it
    assert "secure" not in fbp  # plain http
    assert not page.has_cookie("_fbc")


async def test_valid_fbp_is_kept_and_refreshed(gw: Front) -> None:
    page = await visit(gw, Cookie="_fbp=fb.1.1700000000000.123456789")
    fbp = page.cookie("_fbp")
    assert fbp["value"] == "fb.1.1700000000000.123456789"
    assert fbp["max-age"] == LIFETIME


async def test_second_visit_keeps_the_issued_fbp(gw: Front) -> None:
    first = (await visit(gw)).cookie("_fbp")["value"]
    again = (await visit(gw, Cookie=f"_fbp={first}")).cookie("_fbp")["value"]
    assert again == first


@pytest.mark.parametrize(
    "bad", ["garbage", "fb.1.170000000000.1", "fb.1.1700000000000.x1", "fb.1.1700000000000."]
)
async def test_malformed_fbp_is_replaced(gw: Front, bad: str) -> None:
    value = (await visit(gw, Cookie=f"_fbp={bad}")).cookie("_fbp")["value"]
    assert value != bad and FBP.fullmatch(value)


# -- _fbc ------------------------------------------------------------------------------------


async def test_fbc_from_the_page_url(gw: Front) -> None:
    before = int(time.time() * 1000)
    fbc = (await visit(gw, "/html?fbclid=IwAR0abc-_XYZ")).cookie("_fbc")
    prefix, ms, click = fbc["value"].rsplit(".", 2)
    assert prefix == "fb.2" and click == "IwAR0abc-_XYZ"
    assert before <= int(ms) <= int(time.time() * 1000)
    assert fbc["domain"] == "example.co.uk" and fbc["max-age"] == LIFETIME


async def test_fbc_from_the_referers_query(gw: Front) -> None:
    referer = "https://www.example.co.uk/landing?utm_source=fb&fbclid=FromReferer123"
    fbc = (await visit(gw, "/html?after=redirect", Referer=referer)).cookie("_fbc")
    assert fbc["value"].endswith(".FromReferer123")


async def test_fbc_is_kept_for_the_same_click(gw: Front) -> None:
    current = "fb.2.1700000000000.SameClick"
    page = await visit(gw, "/html?fbclid=SameClick", Cookie=f"_fbc={current}")
    assert page.cookie("_fbc")["value"] == current


async def test_fbc_is_replaced_for_a_new_click(gw: Front) -> None:
    page = await visit(gw, "/html?fbclid=NewClick", Cookie="_fbc=fb.2.1700000000000.OldClick")
    value = page.cookie("_fbc")["value"]
    assert value.endswith(".NewClick") and ".1700000000000." not in value


async def test_existing_fbc_without_a_click_is_kept(gw: Front) -> None:
    page = await visit(gw, Cookie="_fbc=fb.2.1700000000000.Earlier")
    assert page.cookie("_fbc")["value"] == "fb.2.1700000000000.Earlier"


# -- cookie domain and attributes ----------------------------------------------------------


@pytest.mark.parametrize(
    ("host", "domain"),
    [
        ("www.example.co.uk", "example.co.uk"),
        ("shop.example.com:8443", "example.com"),
        ("example.com", "example.com"),
        ("127.0.0.1:8080", None),
        ("[::1]:8080", None),
        ("localhost:8080", None),
    ],
)
async def test_cookie_domain(gw: Front, host: str, domain: str | None) -> None:
    fbp = (await visit(gw, Host=host)).cookie("_fbp")
    assert fbp.get("domain") == domain
    index = domain.count(".") if domain else 0
    assert fbp["value"].startswith(f"fb.{index}.")


async def test_cookie_domain_override(start: StartGateway) -> None:
    gw = await start(cookie_domain="shop.example.com")
    assert (await visit(gw, Host="www.shop.example.com")).cookie("_fbp")["domain"] == (
        "shop.example.com"
    )
    # A host outside the configured domain falls back to its own registrable domain.
    assert (await visit(gw, Host="other.example")).cookie("_fbp")["domain"] == "other.example"


async def test_secure_behind_a_trusted_tls_proxy(gw: Front) -> None:
    fbp = (await visit(gw, X_Forwarded_Proto="https")).cookie("_fbp")
    assert "secure" in fbp


async def test_secure_behind_a_trusted_tls_proxy_seen_as_ipv4_mapped(
    start: StartGateway, fake_graph: FakeGraph
) -> None:
    gw = await start(dual_stack=True)
    page = await visit(gw, X_Forwarded_Proto="https", X_Forwarded_Host="shop.example")
    assert "secure" in page.cookie("_fbp")
    await wait_for(lambda: len(fake_graph.events) == 1)
    assert fake_graph.events[0]["event_source_url"].startswith("https://shop.example/")


async def test_forwarded_proto_from_an_untrusted_peer_does_not_make_cookies_secure(
    start: StartGateway,
) -> None:
    gw = await start(trusted_proxies=["10.0.0.0/8"])
    fbp = (await visit(gw, X_Forwarded_Proto="https")).cookie("_fbp")
    assert "secure" not in fbp


async def test_the_sites_own_cookies_are_untouched_beside_ours(gw: Front) -> None:
    page = await visit(gw, "/html?cookies=1&fbclid=Click1")
    assert page.set_cookies[: len(COOKIES)] == list(COOKIES)
    ours = page.set_cookies[len(COOKIES) :]
    assert sorted(c.split("=", 1)[0] for c in ours) == ["_fbc", "_fbp"]


async def test_no_cookies_on_pages_left_alone(gw: Front) -> None:
    # Fragments, downloads and non-HTML get no identity cookies and no event.
    for path, headers in [
        ("/html", {"HX-Request": "true"}),
        ("/html?attachment=1", {}),
        ("/bytes/100", {}),
    ]:
        page = await visit(gw, path, **headers)
        assert page.tag is None and not page.has_cookie("_fbp"), path
    await settle(gw)
    assert gw.app[PAGES].counters.injected == 0


# -- consent ---------------------------------------------------------------------------------


@pytest.mark.parametrize("cookie", [None, "consent=no", "consent=YES", "other=yes"])
async def test_without_consent_no_cookies_and_no_event(
    start: StartGateway, fake_graph: FakeGraph, cookie: str | None
) -> None:
    gw = await start(consent="consent", consent_values=["yes"])
    headers = {"Cookie": cookie} if cookie else {}
    page = await visit(gw, "/html?fbclid=Click", **headers)
    # The tag stays (a visitor may consent on this very page, and the site's pixel then needs
    # the page's event id), but nothing identifies the visitor and nothing is stored.
    assert page.status == 200 and page.tag is not None
    assert not page.has_cookie("_fbp") and not page.has_cookie("_fbc")
    await settle(gw)
    counters = gw.app[PAGES].counters
    assert counters.stored == 0 and counters.store_failed == 0
    assert (await gw.app[OUTBOX].stats())["states"].get("pending", 0) == 0
    assert fake_graph.events == []


async def test_with_consent_cookies_and_event(start: StartGateway, fake_graph: FakeGraph) -> None:
    gw = await start(consent="consent", consent_values=["yes"])
    page = await visit(gw, "/html?fbclid=Click", Cookie="consent=yes")
    assert page.has_cookie("_fbp") and page.has_cookie("_fbc")
    await wait_for(lambda: len(fake_graph.events) == 1)
    assert fake_graph.events[0]["event_id"] == page.attr("data-event-id")


async def test_global_privacy_control_marks_the_event_opt_out(
    gw: Front, fake_graph: FakeGraph
) -> None:
    page = await visit(gw, Sec_GPC="1")
    await wait_for(lambda: len(fake_graph.events) == 1)
    event = fake_graph.events[0]
    assert event["event_id"] == page.attr("data-event-id")
    assert event["opt_out"] is True


async def test_gpc_as_limited_data_use(start: StartGateway, fake_graph: FakeGraph) -> None:
    gw = await start(gpc="ldu")
    await visit(gw, Sec_GPC="1")
    await wait_for(lambda: len(fake_graph.events) == 1)
    event = fake_graph.events[0]
    assert event["data_processing_options"] == ["LDU"]
    assert "opt_out" not in event or event["opt_out"] is False


@pytest.mark.parametrize(
    "headers",
    [
        {"User-Agent": "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)"},
        {"User-Agent": "facebookexternalhit/1.1"},
        {"Sec-Purpose": "prefetch"},
        {"Sec-Purpose": "prefetch;prerender"},
        {"Purpose": "prefetch"},
    ],
    ids=["googlebot", "facebook-crawler", "prefetch", "prerender", "purpose"],
)
async def test_bots_and_prefetches_store_no_event(
    gw: Front, fake_graph: FakeGraph, headers: dict[str, str]
) -> None:
    await visit(gw, **{k.replace("-", "_"): v for k, v in headers.items()})
    await settle(gw)
    counters = gw.app[PAGES].counters
    assert counters.stored == 0 and counters.store_failed == 0
    # Control: an ordinary view right after is delivered, and it is the only one.
    page = await visit(gw)
    await wait_for(lambda: len(fake_graph.events) == 1)
    await asyncio.sleep(0.1)
    assert [e["event_id"] for e in fake_graph.events] == [page.attr("data-event-id")]


# -- the PageView ----------------------------------------------------------------------------


async def test_pageview_reaches_meta_with_the_injected_event_id(
    gw: Front, fake_graph: FakeGraph
) -> None:
    page = await visit(
        gw,
        "/html?email=a@b.co&q=shoes&fbclid=Click42",
        Referer="https://www.example.co.uk/search?token=abc123&page=2",
        X_Forwarded_For="203.0.113.7",
    )
    fbp = page.cookie("_fbp")["value"]
    fbc = page.cookie("_fbc")["value"]
    await wait_for(lambda: len(fake_graph.events) == 1)
    event = fake_graph.events[0]
    assert event["event_name"] == "PageView"
    assert event["event_id"] == page.attr("data-event-id")
    assert event["action_source"] == "website"
    assert abs(event["event_time"] - time.time()) < 10
    # PII parameters are gone; the rest stays byte for byte.
    assert event["event_source_url"] == "http://www.example.co.uk/html?q=shoes&fbclid=Click42"
    assert event["referrer_url"] == "https://www.example.co.uk/search?page=2"
    user = event["user_data"]
    # The test client is a trusted proxy (loopback): the visitor is the forwarded address.
    assert user["client_ip_address"] == "203.0.113.7"
    assert user["client_user_agent"] == UA
    assert user["fbp"] == fbp and user["fbc"] == fbc
    assert "opt_out" not in event or event["opt_out"] is False
    assert fake_graph.requests[-1].pixel_id == page.attr("data-pixels")


async def test_unparsable_referer_loses_only_the_referrer(gw: Front, fake_graph: FakeGraph) -> None:
    page = await visit(gw, Referer="http://[broken/?fbclid=Nope")
    assert page.tag is not None and not page.has_cookie("_fbc")
    await wait_for(lambda: len(fake_graph.events) == 1)
    event = fake_graph.events[0]
    assert event["event_id"] == page.attr("data-event-id")
    assert "referrer_url" not in event


async def test_returning_visitor_is_reported_with_the_cookies_it_sent(
    gw: Front, fake_graph: FakeGraph
) -> None:
    cookie = "_fbp=fb.1.1700000000000.42; _fbc=fb.1.1700000000000.OldClick"
    await visit(gw, Cookie=cookie)
    await wait_for(lambda: len(fake_graph.events) == 1)
    user = fake_graph.events[0]["user_data"]
    assert user["fbp"] == "fb.1.1700000000000.42"
    assert user["fbc"] == "fb.1.1700000000000.OldClick"


async def test_every_view_has_its_own_event_id(gw: Front, fake_graph: FakeGraph) -> None:
    ids = [(await visit(gw)).attr("data-event-id") for _ in range(3)]
    assert len(set(ids)) == 3
    await wait_for(lambda: len(fake_graph.events) == 3)
    assert sorted(fake_graph.event_ids()) == sorted(ids)


async def test_page_token_verifies_for_that_client_only(gw: Front) -> None:
    page = await visit(gw, X_Forwarded_For="198.51.100.23")
    token, event_id = page.attr("data-token"), page.attr("data-event-id")
    secret = gw.app[PAGES].secret
    now, ttl = int(time.time()), 3600
    claims = pagetoken.verify(secret, token, client=f"198.51.100.23|{UA}", now=now, ttl=ttl)
    assert claims is not None and claims.event_id == event_id
    assert abs(claims.issued - now) <= 2
    for client in (f"127.0.0.1|{UA}", "198.51.100.23|curl/8", ""):
        assert pagetoken.verify(secret, token, client=client, now=now, ttl=ttl) is None


async def test_a_full_outbox_never_holds_up_the_page(start: StartGateway) -> None:
    gw = await start(max_buffer_mb=0.0001)
    began = time.monotonic()
    page = await visit(gw)
    assert time.monotonic() - began < 2
    assert page.status == 200 and page.tag is not None and page.has_cookie("_fbp")
    await settle(gw)
    counters = gw.app[PAGES].counters
    assert counters.store_failed == 1 and counters.stored == 0
    # And the next visitor is served just the same.
    assert (await visit(gw)).status == 200


async def test_the_pageview_is_built_after_the_page_left(
    gw: Front, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # Issue 19: building the PageView is off the visitor's wait, so a build that fails
    # (here: made to) finds the tagged page already sent, and is logged and counted.
    def broken(**_: object) -> object:
        raise RuntimeError("made to fail")

    monkeypatch.setattr("gateway.edge.pages.pageview.build", broken)
    page = await visit(gw)
    assert page.status == 200 and page.tag is not None and page.has_cookie("_fbp")
    counters = gw.app[PAGES].counters
    assert (counters.injected, counters.store_failed, counters.stored) == (1, 1, 0)
    assert "The PageView of a tagged page was not built." in caplog.text
