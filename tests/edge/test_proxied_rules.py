"""Rule files through the real proxy: a request in, the event at the fake Graph API out.

Every test writes its rules into a fresh directory, starts a real site (rules_env.RuleSite)
and the gateway in front of it, sends requests as a browser would and reads what the fake
Graph API received and what the outbox holds (its `rule` column). Each request matcher
(method, host, path glob and regex, query, request content type, form and JSON fields,
status, response type, referrer), each request source (const, query, path, form,
multipart, json, cookie, header, response_header) and each transform has a positive and
a negative case; the page sources are in test_rules_html.py, click and submit rules in
test_rules_beacons.py.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import urlencode

import aiohttp
import pytest

from gateway.edge.appkeys import PROXIED_RULES
from tests.conftest import PIXEL
from tests.edge.rules_env import (
    PRODUCT_RULE,
    RuleSite,
    StartRules,
    sha256,
)
from tests.fakes.processes import run_cli


@pytest.fixture
def site() -> RuleSite:
    return RuleSite()


def codes(events: list[dict[str, Any]]) -> set[tuple[str, str]]:
    return {(e["event_name"], e.get("custom_data", {}).get("code", "")) for e in events}


# -- request and response matchers -----------------------------------------------------------


async def test_method_and_status_single_list_and_ranges(
    start_rules: StartRules, site: RuleSite
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
    assert codes(await gw.all_delivered()) == expected
    assert len(gw.rows()) == sum(1 for *_, fires in requests if fires)


async def test_query_present_equal_regex_and_absent(
    start_rules: StartRules, site: RuleSite
) -> None:
    rules = """
[[rule]]
name = "search"
event = "Search"
path = "/a/search"
query = { q = { regex = "\\\\S" }, preview = false }
extract.search_string = { source = "query", key = "q" }

[[rule]]
name = "search-switched-off"
event = "Search"
enabled = false
path = "/a/search"
extract.search_string = "never"

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
    start_rules: StartRules, site: RuleSite
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
form = { plan = { regex = "^pro" }, email = true, agree = 1 }
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
num_items = { source = "json", key = "order.count" }
email = { source = "json", key = "customer.email" }
external_id = { source = "json", key = "customer.id" }

[rule.extract.contents]
source = "json"
key = "order.items"
map.id = "sku"
map.quantity = { key = "qty", type = "integer" }
map.item_price = { key = "price_cents", type = "number", divide = 100 }
"""

JANE = {"em": sha256("jane.doe@example.com"), "ph": sha256("16505550100"), "fn": sha256("jane")}


async def test_form_fields_urlencoded_and_multipart_hashed_never_file_contents(
    start_rules: StartRules, site: RuleSite
) -> None:
    gw = await start_rules(site.app(), FORM_RULES)
    jane = {
        "plan": "pro-yearly",
        "email": " Jane.Doe@Example.COM ",
        "phone": "+1 (650) 555-0100",
        "name": "Jane Doe",
        "message": "call me",
        "agree": "1",
    }
    first = await gw.post("/a/form?code=302&loc=/thanks", data=jane)
    assert first.status == 302
    assert site.seen[-1][2] == urlencode(jane).encode()  # the site got the body whole
    # Multipart: field values are read, a file part never is (even one named like a field).
    multipart = aiohttp.FormData()
    for key in ("plan", "email", "phone", "name", "agree"):
        multipart.add_field(key, jane[key])
    multipart.add_field("note", b"jane@secret.example", filename="note.txt")
    assert (await gw.post("/a/form?code=302", data=multipart)).status == 302
    # Not a lead: another plan, not agreed, no email, the form answered 200, a JSON body.
    await gw.post("/a/form?code=302", data={**jane, "plan": "basic"})
    await gw.post("/a/form?code=302", data={**jane, "agree": "0"})
    await gw.post("/a/form?code=302", data={"plan": "pro"})
    await gw.post("/a/form?code=200", data=jane)
    await gw.post("/a/form?code=302", json=jane)
    leads = await gw.all_delivered()
    assert len(leads) == 2
    names = sorted(lead["custom_data"].pop("content_name") for lead in leads)
    assert names == ["pro-yearly", "pro-yearly"]
    for lead in leads:
        user = lead["user_data"]
        assert {k: user[k] for k in JANE} == JANE
        assert lead["custom_data"] == {"note": "no note"}
        assert "Jane" not in json.dumps(lead) and "secret" not in json.dumps(lead)


async def test_json_body_fields_dotted_paths_contents_and_cents(
    start_rules: StartRules, site: RuleSite
) -> None:
    gw = await start_rules(site.app(), FORM_RULES)
    order: dict[str, Any] = {
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
    unpaid = {**order["order"], "id": "A-78", "status": "open"}
    await gw.post("/a/api/orders", json={**order, "order": unpaid})
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
    start_rules: StartRules, site: RuleSite
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
    start_rules: StartRules, site: RuleSite
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
    start_rules: StartRules, site: RuleSite
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
    counters = gw.front.app[PROXIED_RULES].counters
    assert counters.duplicate == {"purchase": 2}
    assert counters.stored == {"purchase": 2}
    assert counters.skipped == {"purchase:required": 1}


async def test_several_rules_on_one_request_each_make_their_own_event(
    start_rules: StartRules, site: RuleSite
) -> None:
    rules = (
        PRODUCT_RULE
        + """
[[rule]]
name = "kettle-interest"
event = "KettleInterest"
path = "/p/*"
custom.sku = { source = "path", key = "sku" }
"""
    )
    gw = await start_rules(site.app(), rules)
    await gw.get("/p/k-1")
    # A rule without `method` still ignores link checkers and CORS preflights.
    await gw.send("HEAD", "/p/k-2")
    await gw.send("OPTIONS", "/p/k-3")
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


async def test_no_events_without_consent_or_for_bots(
    start_rules: StartRules, site: RuleSite
) -> None:
    gw = await start_rules(site.app(), PRODUCT_RULE, consent="cc")
    await gw.get("/p/k-1")
    await gw.get("/p/k-2", headers={"User-Agent": "Googlebot/2.1 (+http://www.google.com/bot)"})
    await gw.settle()
    assert gw.rows() == []
    await gw.get("/p/k-3", headers={"Cookie": "cc=granted"})
    [event] = await gw.delivered("ViewContent")
    assert event["custom_data"]["content_ids"] == ["K-3"]
