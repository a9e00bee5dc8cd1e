"""The example rule files in rules/ against the demo shop, through the real gateway.

The demo shop (gateway.demo_shop, what `capi-gateway demo` runs) is served on 127.0.0.1,
the gateway in front of it loads the repository's `rules/` directory as shipped, and each
test walks a flow as a visitor would: the conversions reach the fake Graph API with the
values the pages carry; failed forms, empty searches and reloaded confirmation pages make
no (second) event. The last test makes sure no example rule goes untested.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest

from gateway.demo_shop import shop_app
from gateway.pipeline.ruleload import load_rules
from tests.edge.rules_env import (
    RulesGateway,
    StartRules,
    rules_gateways,
    sha256,
)
from tests.fakes.graph import FakeGraph

RULES = Path(__file__).resolve().parents[2] / "rules"
GZIP = {"Accept-Encoding": "gzip"}  # the shop compresses its pages, like most sites
# Every rule in rules/*.toml and the test below that exercises it.
COVERED = {
    "view-product": "test_product_pages_are_viewcontent_from_their_json_ld",
    "add-to-cart": "test_add_to_cart_is_delivered_to_product_pages_and_fires_from_a_beacon",
    "initiate-checkout": "test_checkout_payment_and_purchase_deduplicated_on_reload",
    "payment-submitted": "test_checkout_payment_and_purchase_deduplicated_on_reload",
    "purchase": "test_checkout_payment_and_purchase_deduplicated_on_reload",
    "search": "test_search_from_the_query_but_not_an_empty_one",
    "contact-lead": "test_contact_form_is_a_lead_only_when_it_redirects",
    "booking-lead": "test_booking_in_rupiah_lead_then_schedule_once",
    "booking-scheduled": "test_booking_in_rupiah_lead_then_schedule_once",
    "signup": "test_signup_is_a_registration_only_when_it_redirects",
}


@pytest.fixture
async def start_rules(tmp_path: Path, fake_graph: FakeGraph) -> AsyncIterator[StartRules]:
    """Start a site and the gateway with rules in front of it (see rules_env)."""
    async with rules_gateways(tmp_path, fake_graph) as go:
        yield go


async def shop(start_rules: StartRules) -> RulesGateway:
    return await start_rules(shop_app(), RULES)


async def test_product_pages_are_viewcontent_from_their_json_ld(start_rules: StartRules) -> None:
    gw = await shop(start_rules)
    page = await gw.get("/product/mug-02", headers=GZIP)
    assert page.status == 200 and page.headers["Content-Encoding"] == "gzip"
    assert (await gw.get("/product/nope", headers=GZIP)).status == 404
    assert (await gw.get("/", headers=GZIP)).status == 200
    [event] = await gw.all_delivered()
    assert event["event_name"] == "ViewContent"
    assert event["custom_data"] == {
        "content_ids": ["mug-02"],
        "content_type": "product",
        "content_name": "Keep-Alive Mug",
        "value": 12.5,
        "currency": "EUR",
    }
    assert event["user_data"]["fbp"] == page.cookie("_fbp")
    assert [r.rule for r in gw.rows()] == ["view-product"]


async def test_add_to_cart_is_delivered_to_product_pages_and_fires_from_a_beacon(
    start_rules: StartRules,
) -> None:
    gw = await shop(start_rules)
    page = await gw.get("/product/tee-01")
    [trigger] = json.loads(page.tag("data-triggers") or "[]")
    assert (trigger["r"], trigger["e"], trigger["t"]) == ("add-to-cart", "AddToCart", "click")
    assert trigger["s"] == "button.add-to-cart"
    assert (await gw.get("/search?q=mug")).tag("data-triggers") is None
    beacon = {
        "token": page.tag("data-token"),
        "url": gw.url + "/product/tee-01",
        "events": [
            {
                "event_name": "AddToCart",
                "event_id": f"{page.tag('data-event-id')}.1",
                "rule": "add-to-cart",
                "data": {"sku": "tee-01", "price": "19.90"},
            }
        ],
    }
    headers = {"Origin": gw.url, "Content-Type": "text/plain"}
    sent = await gw.post("/_capi/collect", data=json.dumps(beacon), headers=headers)
    assert sent.status == 204, sent.body
    [event] = await gw.delivered("AddToCart")
    assert event["custom_data"] == {
        "content_ids": ["tee-01"],
        "content_type": "product",
        "value": 19.9,
        "currency": "EUR",
    }


async def test_checkout_payment_and_purchase_deduplicated_on_reload(
    start_rules: StartRules,
) -> None:
    gw = await shop(start_rules)
    # An empty cart sends the visitor back from the checkout: no InitiateCheckout.
    assert (await gw.get("/checkout")).status == 303
    cart = {"Cookie": "cart=tee-01.mug-02"}
    assert (await gw.get("/checkout", headers={**cart, **GZIP})).status == 200
    [checkout] = await gw.delivered("InitiateCheckout")
    assert checkout["custom_data"] == {"value": 32.4, "num_items": 2, "currency": "EUR"}

    # The form with errors (200) is not a payment.
    failed = await gw.post("/checkout", data={"email": "nope"}, headers=cart)
    assert failed.status == 200 and b"Please enter your email" in failed.plain
    form = {"email": "Jane.Doe@Example.com", "phone": "+49 30 1234567"}
    paid = await gw.post("/checkout", data=form, headers=cart)
    assert paid.status == 302
    thanks = paid.headers["Location"]
    order = parse_qs(urlsplit(thanks).query)["order"][0]
    [payment] = await gw.delivered("AddPaymentInfo")
    assert payment["event_id"] == f"payment-{order}"
    assert payment["custom_data"] == {"order_id": order, "value": 32.4, "currency": "EUR"}
    assert payment["user_data"]["em"] == sha256("jane.doe@example.com")
    assert payment["user_data"]["ph"] == sha256("49301234567")

    for _ in range(3):  # the thank-you page, then two reloads
        assert (await gw.get(thanks, headers=GZIP)).status == 200
    [purchase] = await gw.delivered("Purchase")
    assert purchase["event_id"] == f"purchase-{order}"
    assert purchase["custom_data"] == {"order_id": order, "value": 32.4, "currency": "EUR"}
    await gw.all_delivered()
    assert len(gw.events("Purchase")) == 1
    assert sorted(r.rule or "" for r in gw.rows()) == [
        "initiate-checkout",
        "payment-submitted",
        "purchase",
    ]


async def test_search_from_the_query_but_not_an_empty_one(start_rules: StartRules) -> None:
    gw = await shop(start_rules)
    for path in ("/search?q=", "/search?q=%20%20", "/search", "/search?q=Keep-Alive"):
        assert (await gw.get(path)).status == 200
    [event] = await gw.all_delivered()
    assert event["event_name"] == "Search"
    assert event["custom_data"] == {"search_string": "Keep-Alive"}


async def test_contact_form_is_a_lead_only_when_it_redirects(start_rules: StartRules) -> None:
    gw = await shop(start_rules)
    form = {
        "name": "Jane Doe",
        "email": "jane@example.com",
        "phone": "+1 650-555-0100",
        "message": "Do you ship mugs to Jakarta?",
    }
    assert (await gw.post("/contact", data={**form, "email": "jane"})).status == 200
    assert (await gw.post("/contact", data=form)).status == 302
    [lead] = await gw.all_delivered()
    assert lead["event_name"] == "Lead"
    user = lead["user_data"]
    assert user["em"] == sha256("jane@example.com")
    assert user["ph"] == sha256("16505550100")
    assert user["fn"] == sha256("jane")
    assert lead["custom_data"] == {"content_name": "contact form"}
    assert "Jakarta" not in json.dumps(lead)  # the message is never read


async def test_booking_in_rupiah_lead_then_schedule_once(start_rules: StartRules) -> None:
    gw = await shop(start_rules)
    booking = {
        "service": "tailoring",
        "date": "2030-05-01",
        "email": "budi@example.co.id",
        "phone": "+62 812-3456-7890",
    }
    assert (await gw.post("/book", data={**booking, "date": ""})).status == 200
    booked = await gw.post("/book", data=booking)
    assert booked.status == 302
    confirmed = booked.headers["Location"]
    booking_id = parse_qs(urlsplit(confirmed).query)["booking"][0]
    [lead] = await gw.delivered("Lead")
    assert lead["custom_data"] == {
        "content_name": "tailoring",
        "value": 1250000,
        "currency": "IDR",
        "booking_id": booking_id,
    }
    assert lead["user_data"]["em"] == sha256("budi@example.co.id")
    assert lead["user_data"]["ph"] == sha256("6281234567890")
    for _ in range(2):  # the confirmation and a reload
        assert (await gw.get(confirmed, headers=GZIP)).status == 200
    [schedule] = await gw.delivered("Schedule")
    assert schedule["event_id"] == f"schedule-{booking_id}"
    assert schedule["custom_data"] == {
        "value": 1250000,
        "currency": "IDR",
        "booking_id": booking_id,
    }
    await gw.all_delivered()
    assert len(gw.events("Schedule")) == 1
    # The cheaper service: "350.000" is three hundred fifty thousand rupiah.
    assert (await gw.post("/book", data={**booking, "service": "fitting"})).status == 302
    [_, fitting] = await gw.delivered("Lead", 2)
    assert fitting["custom_data"]["value"] == 350000


async def test_signup_is_a_registration_only_when_it_redirects(start_rules: StartRules) -> None:
    gw = await shop(start_rules)
    for failed in ({"email": "Ann@X.io", "password": "short"}, {"email": "ann.x.io"}):
        assert (await gw.post("/signup", data={"password": "long enough", **failed})).status == 200
    ok = await gw.post("/signup", data={"email": "Ann@X.io", "password": "long enough"})
    assert ok.status == 302 and ok.headers["Location"] == "/welcome"
    [event] = await gw.all_delivered()
    assert event["event_name"] == "CompleteRegistration"
    assert event["user_data"]["em"] == sha256("ann@x.io")
    assert event["custom_data"] == {"status": "registered"}
    assert "password" not in json.dumps(event) and "long enough" not in json.dumps(event)


def test_every_example_rule_is_exercised_here() -> None:
    loaded = load_rules(RULES)
    assert {rule.name for rule in loaded.rules} == set(COVERED)
    assert set(COVERED.values()) <= set(globals())
