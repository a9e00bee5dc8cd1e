"""Rules that read the page, through the real proxy: `<meta>`, JSON-LD and selectors.

The page streams to the visitor while it is read: the first bytes of a large slow page reach
the client before the origin has sent the rest, and reading stops at `rules_scan_bytes`.
gzip and br pages are read decoded (through the injector's stream when the page is tagged,
through the rules' own decoder when not); a page in an encoding the gateway cannot read
passes untouched and its rules fire with what does not come from the page.
"""

from __future__ import annotations

import asyncio

import pytest

from tests.conftest import UA
from tests.edge.rules_env import (
    BIG_BLOCK,
    BIG_BLOCKS,
    IP,
    PRODUCT_DATA,
    PRODUCT_RULE,
    RuleSite,
    StartRules,
    product_page,
)


@pytest.fixture
def site() -> RuleSite:
    return RuleSite()


async def test_meta_jsonld_selector_and_path_sources_with_the_visitors_identity(
    start_rules: StartRules, site: RuleSite
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
    start_rules: StartRules, site: RuleSite
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
    [("gzip", True), ("br", True), ("gzip", False), ("br", False), ("identity", False)],
)
async def test_compressed_pages_still_yield_extracted_values(
    start_rules: StartRules, site: RuleSite, coding: str, inject: bool
) -> None:
    # Tagged pages are read through the rewriter's decoded stream; untagged ones through
    # the rules' own decoder.
    gw = await start_rules(site.app(), PRODUCT_RULE, inject=inject)
    page = await gw.get(f"/p/k-1?enc={coding}", headers={"Accept-Encoding": "gzip, br"})
    assert page.status == 200
    assert page.headers.get("Content-Encoding", "identity") == coding
    assert (b'src="/_capi/px.js' in page.plain) is inject
    assert b"Blue Kettle" in page.plain
    [event] = await gw.delivered("ViewContent")
    assert event["custom_data"] == PRODUCT_DATA


async def test_a_page_in_an_encoding_the_gateway_cannot_read_passes_untouched(
    start_rules: StartRules, site: RuleSite
) -> None:
    gw = await start_rules(site.app(), PRODUCT_RULE)
    page = await gw.get("/p/k-1?enc=zstd", headers={"Accept-Encoding": "zstd"})
    assert page.status == 200 and page.body == product_page("k-1")
    # The rule still counts the view, with what does not come from the page.
    [event] = await gw.delivered("ViewContent")
    assert event["custom_data"] == {"content_ids": ["K-1"], "content_type": "product"}


async def test_first_bytes_of_a_large_slow_page_reach_the_client_before_the_origin_ends(
    start_rules: StartRules, site: RuleSite
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
    start_rules: StartRules, site: RuleSite
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
