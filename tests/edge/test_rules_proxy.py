"""Rule files through the real proxy: a request in, the event at the fake Graph API out.

Every test writes its rules into a fresh directory, starts a real site (the aiohttp app
below) and the gateway in front of it, sends requests as a browser would and reads what the
fake Graph API received and what the outbox holds (its `rule` column). Each matcher
(method, host, path glob and regex, query, request content type, form and JSON fields,
status, response type, referrer), each source (const, query, path, form, multipart, json,
cookie, header, response_header, meta, jsonld, selector, and data/field for click and
submit rules) and each transform has a positive and a negative case.
"""

from __future__ import annotations

import asyncio
import gzip
import json
from urllib.parse import urlencode
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import brotli  # type: ignore[import-untyped]
import pytest
from aiohttp import web

from gateway.appkeys import CONVERSIONS
from tests.conftest import PIXEL, UA, wait_for
from tests.edge.rules_env import (  # noqa: F401  (start_rules is a fixture)
    IP,
    RulesGateway,
    StartRules,
    sha256,
    start_rules,
)
from tests.fakes.processes import run_cli

BIG_BLOCK = b"<p>" + b"filler text " * 5460 + b"</p>\n"  # ~64 KiB
BIG_BLOCKS = 32  # ~2 MiB after the head
SMALL_PAGE = b"<!doctype html><html><head><title>ok</title></head><body>ok</body></html>"


def product_page(sku: str) -> bytes:
    """A product page: og:title, a price in <meta>, schema.org JSON-LD, data-* attributes."""
    ld = {
        "@context": "https://schema.org",
        "@type": "Product",
        "name": "Blue Kettle",
        "sku": sku,
        "offers": {"@type": "Offer", "price": "24.90", "priceCurrency": "eur"},
    }
    return (
        '<!doctype html>\n<html><head><meta charset="utf-8"><title>Blue Kettle</title>\n'
        '<meta property="og:title" content="Blue Kettle &amp; Lid">\n'
        '<meta name="list-price" content="1.234,50 €">\n'
        f'<script type="application/ld+json">{json.dumps(ld)}</script>\n'
        "</head><body><h1>Blue Kettle</h1>\n"
        f'<button class="add" id="buy" data-sku="{sku}" data-price="2490" '
        'data-category="Kitchen">Add to cart</button>\n'
        '<form id="news"><input name="email"><button>Subscribe</button></form>\n'
        "</body></html>\n"
    ).encode()


def compress(body: bytes, coding: str) -> bytes:
    if coding == "gzip":
        return gzip.compress(body)
    if coding == "br":
        out: bytes = brotli.compress(body)
        return out
    return body


@dataclass
class Site:
    """The site behind the gateway; records what reached it."""

    seen: list[tuple[str, str, bytes]] = field(default_factory=list)
    release: asyncio.Event = field(default_factory=asyncio.Event)
    big_done: bool = False

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/p/{sku}", self.product)
        app.router.add_get("/big", self.big)
        app.router.add_get("/long", self.long)
        app.router.add_route("*", "/a/{tail:.*}", self.answer)
        return app

    async def product(self, request: web.Request) -> web.Response:
        """`?enc=gzip|br` compresses the page as the origin would."""
        if request.match_info["sku"] == "none":
            return web.Response(status=404, text=SMALL_PAGE.decode(), content_type="text/html")
        coding = request.query.get("enc", "identity")
        headers = {} if coding == "identity" else {"Content-Encoding": coding}
        body = compress(product_page(request.match_info["sku"]), coding)
        return web.Response(body=body, content_type="text/html", headers=headers)

    async def answer(self, request: web.Request) -> web.Response:
        """`?code=` status, `?loc=` Location, `?order=` X-Order-Id, `?ct=` content type."""
        body = await request.read()
        self.seen.append((request.method, request.path_qs, body))
        q = request.query
        status = int(q.get("code", "200"))
        headers = {k: q[p] for p, k in (("loc", "Location"), ("order", "X-Order-Id")) if p in q}
        ct = q.get("ct", "text/html")
        text = b'{"ok": true}' if ct == "application/json" else SMALL_PAGE
        return web.Response(status=status, body=text, content_type=ct, headers=headers)

    async def big(self, request: web.Request) -> web.StreamResponse:
        """The head (with JSON-LD) at once; ~2 MiB more only once the test says so."""
        response = web.StreamResponse(headers={"Content-Type": "text/html; charset=utf-8"})
        await response.prepare(request)
        ld = '{"@type": "Product", "name": "Big", "offers": {"price": 42.5, "priceCurrency": "EUR"}}'
        await response.write(
            b"<!doctype html><html><head><title>Big</title>"
            + f'<script type="application/ld+json">{ld}</script></head><body>'.encode()
        )
        await asyncio.wait_for(self.release.wait(), 20)
        for _ in range(BIG_BLOCKS):
            await response.write(BIG_BLOCK)
        await response.write(b"</body></html>")
        self.big_done = True
        await response.write_eof()
        return response

    async def long(self, request: web.Request) -> web.Response:
        """JSON-LD at the top, a <meta> after `?pad=` bytes of text."""
        pad = int(request.query.get("pad", "0"))
        body = (
            '<!doctype html><html><head><title>Long</title><script type="application/ld+json">'
            '{"@type": "Product", "offers": {"price": "7.25"}}</script></head><body>'
            f"<p>{'x' * pad}</p>"
            '<meta name="late" content="read to the end"></body></html>'
        )
        return web.Response(text=body, content_type="text/html")


@pytest.fixture
def site() -> Site:
    return Site()


def codes(gw: RulesGateway, events: list[dict[str, Any]]) -> set[tuple[str, str]]:
    return {(e["event_name"], e.get("custom_data", {}).get("code", "")) for e in events}


# -- HTML sources: meta, JSON-LD, selector; path groups; identity ----------------------------

PRODUCT_RULE = """
[[rule]]
name = "view-product"
event = "ViewContent"
method = "GET"
path = "/p/{sku}"
status = 200
response_type = "text/html"
require = ["content_ids"]

[rule.extract]
content_ids = { source = "path", key = "sku", upper = true }
content_type = "product"
content_name = { source = "meta", key = "og:title" }
value = { source = "jsonld", key = "Product.offers.price" }
currency = { source = "jsonld", key = "Product.offers.priceCurrency", upper = true }
content_category = { source = "selector", key = "button#buy", attr = "data-category", lower = true }

[rule.custom]
list_price = { source = "meta", key = "list-price", type = "number" }
"""

PRODUCT_DATA = {
    "content_ids": ["K-1"],
    "content_type": "product",
    "content_name": "Blue Kettle & Lid",
    "value": 24.9,
    "currency": "EUR",
    "content_category": "kitchen",
    "list_price": 1234.5,
}


async def test_meta_jsonld_selector_and_path_sources_with_the_visitors_identity(
    start_rules: StartRules, site: Site
) -> None:
    gw = await start_rules(site.app(), PRODUCT_RULE)
    page = await gw.get("/p/k-1")
    assert page.status == 200 and b"Blue Kettle" in page.body
    fbp = page.cookie("_fbp")
    assert fbp  # issued with this very response: the event carries it
    [event] = await gw.delivered("ViewContent")
    assert event["custom_data"] == PRODUCT_DATA
    assert event["event_source_url"] == gw.url + "/p/k-1"
    assert event["action_source"] == "website"
    user = event["user_data"]
    assert user["fbp"] == fbp
    assert user["client_ip_address"] == IP
    assert user["client_user_agent"] == UA
    assert [(r.event_name, r.rule, r.source) for r in gw.rows()] == [
        ("ViewContent", "view-product", "rule")
    ]
    # Another path, a 404 of the same shape, a HEAD: no ViewContent.
    assert (await gw.get("/p/none")).status == 404
    assert (await gw.send("HEAD", "/p/k-3")).status == 200  # the rule wants GET
    await gw.get("/a/p/k-4")
    await gw.settle()
    assert len(gw.rows()) == 1


async def test_cookies_of_the_visitor_travel_with_the_event(
    start_rules: StartRules, site: Site
) -> None:
    gw = await start_rules(site.app(), PRODUCT_RULE)
    fbp, fbc = "fb.1.1700000000000.1234567890", "fb.1.1700000000000.IwAR-click"
    page = await gw.get("/p/k-1", headers={"Cookie": f"_fbp={fbp}; _fbc={fbc}"})
    assert page.status == 200
    [event] = await gw.delivered("ViewContent")
    assert event["user_data"]["fbp"] == fbp
    assert event["user_data"]["fbc"] == fbc


@pytest.mark.parametrize(
    ("coding", "inject"),
    [("gzip", True), ("br", True), ("gzip", False), ("br", False)],
)
async def test_compressed_pages_still_yield_extracted_values(
    start_rules: StartRules, site: Site, coding: str, inject: bool
) -> None:
    # Tagged pages are read through the rewriter's decoded stream; untagged ones through
    # the rules' own decoder.
    gw = await start_rules(site.app(), PRODUCT_RULE, inject=inject)
    page = await gw.get(f"/p/k-1?enc={coding}", headers={"Accept-Encoding": "gzip, br"})
    assert page.status == 200
    assert page.headers["Content-Encoding"] == coding
    plain = gzip.decompress(page.body) if coding == "gzip" else brotli.decompress(page.body)
    assert (b'src="/_capi/px.js' in plain) is inject
    assert b"Blue Kettle" in plain
    [event] = await gw.delivered("ViewContent")
    assert event["custom_data"] == PRODUCT_DATA


async def test_first_bytes_of_a_large_slow_page_reach_the_client_before_the_origin_ends(
    start_rules: StartRules, site: Site
) -> None:
    rules = """
[[rule]]
name = "big"
event = "ViewContent"
path = "/big"
[rule.extract]
value = { source = "jsonld", key = "Product.offers.price" }
currency = { source = "jsonld", key = "Product.offers.priceCurrency" }
content_name = { source = "jsonld", key = "Product.name" }
"""
    gw = await start_rules(site.app(), rules)
    async with gw.front.session.get(gw.url + "/big", headers={"User-Agent": UA}) as resp:
        assert resp.status == 200
        # The origin is holding the rest of the page back: these bytes were not buffered.
        first = await asyncio.wait_for(resp.content.readany(), 10)
        assert first.startswith(b"<!doctype html>")
        assert not site.big_done
        site.release.set()
        rest = await resp.read()
    assert site.big_done
    assert len(first) + len(rest) > BIG_BLOCKS * len(BIG_BLOCK)
    assert rest.endswith(b"</body></html>")
    [event] = await gw.delivered("ViewContent")
    assert event["custom_data"] == {"value": 42.5, "currency": "EUR", "content_name": "Big"}


async def test_html_is_read_only_up_to_rules_scan_bytes(
    start_rules: StartRules, site: Site
) -> None:
    rules = """
[[rule]]
name = "long"
event = "ViewContent"
path = "/long"
[rule.extract]
value = { source = "jsonld", key = "Product.offers.price" }
[rule.custom]
late = { source = "meta", key = "late", default = "unread" }
"""
    bounded = await start_rules(site.app(), rules, rules_scan_bytes=4096)
    page = await bounded.get("/long?pad=20000")
    assert page.status == 200 and page.body.endswith(b'content="read to the end"></body></html>')
    [event] = await bounded.delivered("ViewContent")
    assert event["custom_data"] == {"value": 7.25, "late": "unread"}

    bounded.graph.reset()
    whole = await start_rules(site.app(), rules)
    await whole.get("/long?pad=20000")
    [event] = await whole.delivered("ViewContent")
    assert event["custom_data"] == {"value": 7.25, "late": "read to the end"}


# -- request and response matchers -----------------------------------------------------------


async def test_method_and_status_single_list_and_ranges(
    start_rules: StartRules, site: Site
) -> None:
    rules = """
[[rule]]
name = "signup"
event = "CompleteRegistration"
method = "POST"
path = "/a/signup"
status = "3xx"
custom.code = { source = "query", key = "code" }

[[rule]]
name = "apply"
event = "SubmitApplication"
method = ["PUT", "post"]
path = "/a/apply"
status = [201, 202]
custom.code = { source = "query", key = "code" }

[[rule]]
name = "subscribe"
event = "Subscribe"
path = "/a/subscribe"
status = "200-204"
custom.code = { source = "query", key = "code" }

[[rule]]
name = "gone"
event = "GoneSeen"
path = "/a/gone"
status = 410
custom.code = { source = "query", key = "code" }
"""
    gw = await start_rules(site.app(), rules)
    requests = [
        ("POST", "/a/signup?code=302&loc=/welcome", True),
        ("POST", "/a/signup?code=200", False),  # the form again, with errors
        ("GET", "/a/signup?code=303&loc=/welcome", False),
        ("POST", "/a/apply?code=202", True),
        ("PUT", "/a/apply?code=201", True),
        ("POST", "/a/apply?code=200", False),
        ("GET", "/a/subscribe?code=204", True),
        ("GET", "/a/subscribe?code=205", False),
        ("GET", "/a/gone?code=410", True),
        ("GET", "/a/gone?code=404", False),
    ]
    for method, path, _ in requests:
        await gw.send(method, path, data=b"x=1" if method != "GET" else None)
    expected = {
        ("CompleteRegistration", "302"),
        ("SubmitApplication", "202"),
        ("SubmitApplication", "201"),
        ("Subscribe", "204"),
        ("GoneSeen", "410"),
    }
    assert codes(gw, await gw.all_delivered()) == expected
    assert len(gw.rows()) == sum(1 for *_, fires in requests if fires)


async def test_query_present_equal_regex_and_absent(start_rules: StartRules, site: Site) -> None:
    rules = """
[[rule]]
name = "search"
event = "Search"
path = "/a/search"
query = { q = { regex = "\\\\S" }, preview = false }
extract.search_string = { source = "query", key = "q" }

[[rule]]
name = "campaign"
event = "Lead"
path = "/a/landing"
query = { utm_source = "news", page = 2, ref = true }
custom.campaign = { source = "query", key = "utm_campaign", default = "none" }
"""
    gw = await start_rules(site.app(), rules)
    for path in (
        "/a/search?q=blue+kettle",
        "/a/search?q=%20",
        "/a/search",
        "/a/search?q=mug&preview=1",
        "/a/landing?utm_source=news&page=2&ref=x",
        "/a/landing?utm_source=news&page=3&ref=x",
        "/a/landing?utm_source=ads&page=2&ref=x",
        "/a/landing?utm_source=news&page=2",
    ):
        assert (await gw.get(path)).status == 200
    events = await gw.all_delivered()
    assert sorted((e["event_name"], e["custom_data"]) for e in events) == [
        ("Lead", {"campaign": "none"}),
        ("Search", {"search_string": "blue kettle"}),
    ]


async def test_host_glob_path_regex_referrer_and_response_type(
    start_rules: StartRules, site: Site
) -> None:
    rules = """
[[rule]]
name = "shop-host"
event = "ViewContent"
host = "*.shop.test"
path = "/a/host"

[[rule]]
name = "article"
event = "ViewContent"
path_regex = "^/a/blog/(?P<year>[0-9]{4})/(?P<slug>[a-z-]+)$"
custom.year = { source = "path", key = "year", type = "integer" }
custom.slug = { source = "path", key = "slug" }

[[rule]]
name = "from-ads"
event = "Lead"
path = "/a/ref"
referrer = "https://ads.example/*"

[[rule]]
name = "from-search"
event = "Contact"
path = "/a/ref"
referrer = { regex = "^https://(www\\\\.)?search\\\\.example/" }

[[rule]]
name = "api-confirm"
event = "OrderConfirmed"
path = "/a/api/**"
response_type = "application/json"
extract.order_id = { source = "response_header", key = "X-Order-Id" }
"""
    gw = await start_rules(site.app(), rules)
    sends: list[tuple[str, dict[str, str]]] = [
        ("/a/host", {"Host": "www.shop.test"}),
        ("/a/host", {"Host": "shop.test"}),
        ("/a/host", {"Host": "www.shop.test.evil"}),
        ("/a/blog/2024/rule-files", {}),
        ("/a/blog/24/rule-files", {}),
        ("/a/ref", {"Referer": "https://ads.example/campaign?id=1"}),
        ("/a/ref", {"Referer": "https://www.search.example/?q=kettle"}),
        ("/a/ref", {"Referer": "https://elsewhere.example/"}),
        ("/a/ref", {}),
        ("/a/api/v1/confirm?ct=application/json&order=Z9", {}),
        ("/a/api/v1/confirm?order=Z8", {}),  # text/html: not the API answer
    ]
    for path, headers in sends:
        assert (await gw.get(path, headers=headers)).status == 200
    events = await gw.all_delivered()
    by_rule = {r.rule for r in gw.rows()}
    assert by_rule == {"shop-host", "article", "from-ads", "from-search", "api-confirm"}
    assert len(events) == 5
    [article] = [e for e in events if "year" in e.get("custom_data", {})]
    assert article["custom_data"] == {"year": 2024, "slug": "rule-files"}
    assert article["event_source_url"].endswith("/a/blog/2024/rule-files")
    [purchase] = [e for e in events if e["event_name"] == "OrderConfirmed"]
    assert purchase["custom_data"] == {"order_id": "Z9"}
    [shop] = [e for e in events if e["event_source_url"].startswith("http://www.shop.test")]
    assert shop["event_name"] == "ViewContent"


FORM_RULES = """
[[rule]]
name = "form-lead"
event = "Lead"
method = "POST"
path = "/a/form"
content_type = ["application/x-www-form-urlencoded", "multipart/form-data"]
form = { plan = { regex = "^pro" }, email = true }
status = 302

[rule.extract]
email = { source = "form", key = "email" }
phone = { source = "form", key = "phone" }
first_name = { source = "form", key = "name", pattern = "^(?P<value>\\\\S+)" }
content_name = { source = "form", key = "plan" }

[rule.custom]
note = { source = "form", key = "note", default = "no note" }

[[rule]]
name = "json-order"
event = "Purchase"
method = "POST"
path = "/a/api/orders"
content_type = "application/json"
json = { "order.status" = "paid" }
event_id = "order-{order_id}"

[rule.extract]
order_id = { source = "json", key = "order.id" }
value = { source = "json", key = "order.total_cents", divide = 100 }
currency = { source = "json", key = "order.currency", upper = true }
content_ids = { source = "json", key = "order.items.sku" }
contents = { source = "json", key = "order.items", map = { id = "sku", quantity = { key = "qty", type = "integer" }, item_price = { key = "price_cents", type = "number", divide = 100 } } }
num_items = { source = "json", key = "order.count" }
email = { source = "json", key = "customer.email" }
external_id = { source = "json", key = "customer.id" }
"""

JANE = {"em": sha256("jane.doe@example.com"), "ph": sha256("16505550100"), "fn": sha256("jane")}


async def test_form_fields_urlencoded_and_multipart_hashed_never_file_contents(
    start_rules: StartRules, site: Site
) -> None:
    gw = await start_rules(site.app(), FORM_RULES)
    jane = {
        "plan": "pro-yearly",
        "email": " Jane.Doe@Example.COM ",
        "phone": "+1 (650) 555-0100",
        "name": "Jane Doe",
        "message": "call me",
    }
    first = await gw.post("/a/form?code=302&loc=/thanks", data=jane)
    assert first.status == 302
    assert site.seen[-1][2] == urlencode(jane).encode()  # the site got the body whole
    # Multipart: field values are read, a file part never is (even one named like a field).
    multipart = aiohttp.FormData()
    for key in ("plan", "email", "phone", "name"):
        multipart.add_field(key, jane[key])
    multipart.add_field("note", b"jane@secret.example", filename="note.txt")
    assert (await gw.post("/a/form?code=302", data=multipart)).status == 302
    # Not a lead: another plan, no email, the form answered 200 (errors), a JSON body.
    await gw.post("/a/form?code=302", data={**jane, "plan": "basic"})
    await gw.post("/a/form?code=302", data={"plan": "pro"})
    await gw.post("/a/form?code=200", data=jane)
    await gw.post("/a/form?code=302", json=jane)
    leads = await gw.all_delivered()
    assert len(leads) == 2
    names = sorted(lead["custom_data"].pop("content_name") for lead in leads)
    assert names == ["pro", "pro-yearly"]
    for lead in leads:
        user = lead["user_data"]
        assert {k: user[k] for k in JANE} == JANE
        assert lead["custom_data"] == {"note": "no note"}
        assert "Jane" not in json.dumps(lead) and "secret" not in json.dumps(lead)


async def test_json_body_fields_dotted_paths_contents_and_cents(
    start_rules: StartRules, site: Site
) -> None:
    gw = await start_rules(site.app(), FORM_RULES)
    order = {
        "order": {
            "id": "A-77",
            "status": "paid",
            "total_cents": 4990,
            "currency": "eur",
            "count": "3",
            "items": [
                {"sku": "K-1", "qty": 2, "price_cents": 1500},
                {"sku": "M-2", "qty": "1", "price_cents": "1990"},
            ],
        },
        "customer": {"email": "Jane.Doe@example.com", "id": "cus_42"},
    }
    assert (await gw.post("/a/api/orders", json=order)).status == 200
    await gw.post("/a/api/orders", json={**order, "order": {**order["order"], "status": "open"}})
    await gw.post("/a/api/orders", data=json.dumps(order), headers={"Content-Type": "text/plain"})
    [event] = await gw.all_delivered()
    assert event["event_id"] == "order-A-77"
    assert event["custom_data"] == {
        "order_id": "A-77",
        "value": 49.9,
        "currency": "EUR",
        "content_ids": ["K-1", "M-2"],
        "contents": [
            {"id": "K-1", "quantity": 2, "item_price": 15.0},
            {"id": "M-2", "quantity": 1, "item_price": 19.9},
        ],
        "num_items": 3,
    }
    assert event["user_data"]["em"] == sha256("jane.doe@example.com")
    assert event["user_data"]["external_id"] == sha256("cus_42")


async def test_cookie_header_and_response_header_sources(
    start_rules: StartRules, site: Site
) -> None:
    rules = """
[[rule]]
name = "confirm"
event = "Purchase"
path = "/a/confirm"
status = "2xx"

[rule.extract]
order_id = { source = "response_header", key = "X-Order-Id" }
value = { source = "cookie", key = "cart_total" }
currency = { source = "header", key = "X-Currency", upper = true }
content_ids = { source = "cookie", key = "cart", split = "|" }

[rule.custom]
plan = { source = "header", key = "X-Plan", lower = true }
landing = { source = "response_header", key = "Location", pattern = "/(?P<value>[a-z]+)$" }
"""
    gw = await start_rules(site.app(), rules)
    headers = {
        "Cookie": "cart_total=1.234,50; cart=K-1|M-2|C-3",
        "X-Currency": "eur",
        "X-Plan": "PRO",
    }
    await gw.get("/a/confirm?order=Z9&loc=/welcome&code=201", headers=headers)
    await gw.get("/a/confirm?order=Z8&code=500", headers=headers)
    [event] = await gw.all_delivered()
    assert event["custom_data"] == {
        "order_id": "Z9",
        "value": 1234.5,
        "currency": "EUR",
        "content_ids": ["K-1", "M-2", "C-3"],
        "plan": "pro",
        "landing": "welcome",
    }


# -- transforms, event ids, several rules ----------------------------------------------------

TRANSFORMS = """
[[rule]]
name = "transforms"
event = "Purchase"
path = "/a/t"

[rule.extract]
value = [
  { source = "query", key = "v1" },
  { source = "query", key = "v2", decimal = "," },
]
currency = { source = "query", key = "cur", upper = true, default = "EUR" }
num_items = { source = "query", key = "n" }
order_id = { source = "query", key = "ref", pattern = "ref-(?P<value>[0-9]+)" }
predicted_ltv = { source = "query", key = "ltv_cents", divide = 100 }
content_category = { source = "query", key = "cat", lower = true }
content_type = "product"

[rule.custom]
de = { source = "query", key = "de", type = "number" }
us = { source = "query", key = "us", type = "number" }
short = { source = "query", key = "eu", type = "number" }
grouped = { source = "query", key = "th", type = "number" }
gift = { source = "query", key = "gift", type = "boolean" }
tags = { source = "query", key = "tags", type = "list", split = "," }
channel = { source = "const", value = "web" }
"""


async def test_numbers_cents_case_defaults_patterns_and_first_of_several(
    start_rules: StartRules, site: Site
) -> None:
    gw = await start_rules(site.app(), TRANSFORMS)
    query = (
        "v2=19,90&n=3.4&ref=ref-00042&ltv_cents=12345&cat=Kitchen&de=1.234,56&us=1,234.56"
        "&eu=12,5&th=1,234&gift=yes&tags=a,b,,c"
    )
    await gw.get("/a/t?" + query)
    [event] = await gw.delivered("Purchase")
    assert event["custom_data"] == {
        "value": 19.9,  # v1 missing: the second source, with its decimal comma
        "currency": "EUR",  # the default
        "num_items": 3,
        "order_id": "00042",
        "predicted_ltv": 123.45,
        "content_category": "kitchen",
        "content_type": "product",
        "de": 1234.56,
        "us": 1234.56,
        "short": 12.5,
        "grouped": 1234,
        "gift": True,
        "tags": ["a", "b", "c"],
        "channel": "web",
    }
    await gw.get("/a/t?v1=5.5&v2=19,90&cur=usd&ref=nope")
    [_, second] = await gw.delivered("Purchase", 2)
    data = second["custom_data"]
    assert (data["value"], data["currency"]) == (5.5, "USD")  # the first source wins
    assert "order_id" not in data  # the pattern did not match: no value, not the raw text


async def test_event_id_template_deduplicates_a_reloaded_thank_you_page(
    start_rules: StartRules, site: Site
) -> None:
    rules = """
[[rule]]
name = "purchase"
event = "Purchase"
path = "/a/thanks"
query = { order = true }
event_id = "purchase-{order_id}"
require = ["order_id"]
extract.order_id = { source = "query", key = "order" }
extract.value = { source = "query", key = "total" }
extract.currency = "EUR"
"""
    gw = await start_rules(site.app(), rules)
    for path in (
        "/a/thanks?order=A1&total=10",
        "/a/thanks?order=A1&total=10",  # reloaded
        "/a/thanks?order=A2&total=20",
        "/a/thanks?order=A1&total=10",  # and again, from the history
        "/a/thanks?order=",  # present but empty: required, so no event
    ):
        assert (await gw.get(path)).status == 200
    events = await gw.all_delivered()
    assert sorted(e["event_id"] for e in events) == ["purchase-A1", "purchase-A2"]
    assert [r.event_id for r in gw.rows()] == ["purchase-A1", "purchase-A2"]
    counters = gw.front.app[CONVERSIONS].counters
    assert counters.duplicate == {"purchase": 2}
    assert counters.stored == {"purchase": 2}
    assert counters.skipped == {"purchase:required": 1}


async def test_several_rules_on_one_request_each_make_their_own_event(
    start_rules: StartRules, site: Site
) -> None:
    rules = PRODUCT_RULE + """
[[rule]]
name = "kettle-interest"
event = "KettleInterest"
path = "/p/*"
custom.sku = { source = "path", key = "sku" }
"""
    gw = await start_rules(site.app(), rules)
    await gw.get("/p/k-1")
    events = await gw.all_delivered()
    assert sorted(e["event_name"] for e in events) == ["KettleInterest", "ViewContent"]
    assert len({e["event_id"] for e in events}) == 2
    # `*` has no name: the path group is not there, the custom value is left out.
    [interest] = [e for e in events if e["event_name"] == "KettleInterest"]
    assert "custom_data" not in interest
    # The rule's name travels with its event: in the queue as the operator sees it.
    listed = run_cli("queue", "list", "--json", "--buffer", str(gw.buffer)).stdout
    records = [json.loads(line) for line in listed.splitlines()]
    assert sorted((r["event_name"], r["rule"]) for r in records if r["source"] == "rule") == [
        ("KettleInterest", "kettle-interest"),
        ("ViewContent", "view-product"),
    ]
    assert all(r["pixel_id"] == PIXEL for r in records)


async def test_no_events_without_consent_or_for_bots(start_rules: StartRules, site: Site) -> None:
    gw = await start_rules(site.app(), PRODUCT_RULE, consent="cc")
    await gw.get("/p/k-1")
    await gw.get("/p/k-2", headers={"User-Agent": "Googlebot/2.1 (+http://www.google.com/bot)"})
    await gw.settle()
    assert gw.rows() == []
    await gw.get("/p/k-3", headers={"Cookie": "cc=granted"})
    [event] = await gw.delivered("ViewContent")
    assert event["custom_data"]["content_ids"] == ["K-3"]


# -- click and submit rules: delivered to px.js, fired back through /collect -----------------

TRIGGERS = """
[[rule]]
name = "add"
event = "AddToCart"
trigger = "click"
selector = "button.add"
path = "/p/*"

[rule.extract]
content_ids = { source = "data", key = "data-sku" }
value = { source = "data", key = "price", type = "number", divide = 100 }
currency = "EUR"

[[rule]]
name = "newsletter"
event = "Subscribe"
trigger = "submit"
selector = "form#news"
path = "/p/*"

[rule.extract]
email = { source = "field", key = "email" }
content_name = "newsletter"

[[rule]]
name = "elsewhere"
event = "Contact"
trigger = "click"
selector = "a.call"
path = "/a/contact"
"""


async def test_click_and_submit_rules_reach_matching_pages_and_come_back_as_events(
    start_rules: StartRules, site: Site
) -> None:
    gw = await start_rules(site.app(), TRIGGERS)
    page = await gw.get("/p/k-1")
    triggers = json.loads(page.tag("data-triggers") or "null")
    assert [t["r"] for t in triggers] == ["add", "newsletter"]
    add, news = triggers
    assert (add["t"], add["s"], add["d"]) == ("click", "button.add", ["sku", "price"])
    assert (news["t"], news["s"], news["f"]) == ("submit", "form#news", ["email"])
    # The browser pixel's recipe has the custom_data only: the email is never in it.
    assert "email" not in json.dumps(news["c"]) and set(news["c"]) == {"content_name"}
    assert (await gw.get("/a/plain")).tag("data-triggers") is None
    assert (await gw.get("/a/plain")).tag("data-event-id")  # tagged, just no triggers

    page_id, token = page.tag("data-event-id"), page.tag("data-token")
    cookie = f"_fbp={page.cookie('_fbp')}"
    beacon = {
        "token": token,
        "url": gw.url + "/p/k-1",
        "events": [
            {
                "event_name": "AddToCart",
                "event_id": f"{page_id}.1",
                "rule": "add",
                "data": {"sku": "K-1", "price": "2490"},
                # What the page computed is not trusted: the rule decides the event.
                "custom_data": {"value": 999},
            },
            {
                "event_name": "Subscribe",
                "event_id": f"{page_id}.2",
                "rule": "newsletter",
                "fields": {"email": [" Jane.Doe@Example.com"]},
            },
        ],
    }
    headers = {"Origin": gw.url, "Content-Type": "text/plain", "Cookie": cookie}
    sent = await gw.post("/_capi/collect", data=json.dumps(beacon), headers=headers)
    assert sent.status == 204, sent.body
    [cart] = await gw.delivered("AddToCart")
    assert cart["event_id"] == f"{page_id}.1"
    assert cart["custom_data"] == {"content_ids": ["K-1"], "value": 24.9, "currency": "EUR"}
    assert cart["user_data"]["fbp"] == page.cookie("_fbp")
    [sub] = await gw.delivered("Subscribe")
    assert sub["user_data"]["em"] == sha256("jane.doe@example.com")
    assert sub["custom_data"] == {"content_name": "newsletter"}
    await gw.settle()
    rules = sorted((r.rule, r.source) for r in gw.rows())
    assert [rule for rule, _ in rules] == ["add", "newsletter"]

    # A beacon naming no click/submit rule is refused whole.
    bad = {**beacon, "events": [{**beacon["events"][0], "rule": "view-product"}]}
    refused = await gw.post("/_capi/collect", data=json.dumps(bad), headers=headers)
    assert refused.status == 400
    assert json.loads(refused.body)["detail"][0]["field"] == "rule"
