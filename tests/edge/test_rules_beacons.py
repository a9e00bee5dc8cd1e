"""Click and submit rules, without a browser: delivered to px.js, fired back through /collect.

The page's tag carries the click/submit rules whose path matches it (`data-triggers`), with
the custom_data recipes only; a beacon naming a rule becomes the rule's event, its values
converted (and customer fields hashed) by the server from the raw `data-*` values and form
fields the browser sent. tests/browser/test_rule_triggers.py does the same with real clicks.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.edge.rules_env import (
    RuleSite,
    StartRules,
    sha256,
)


@pytest.fixture
def site() -> RuleSite:
    return RuleSite()


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
    start_rules: StartRules, site: RuleSite
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
    beacon: dict[str, Any] = {
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
