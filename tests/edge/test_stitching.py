"""Session stitching end to end: a visit through the real proxy, then a backend conversion.

The demo shop (gateway.demo_shop) is the upstream on 127.0.0.1, the gateway in front of it
loads the shipped `rules/`. A browser-like visitor lands with `?fbclid=`, gets `_fbp`/`_fbc`,
and submits a form whose rule keeps the visit under the order id, booking id or email; a
signed webhook (or an `/events` call with `stitch_key`) for the same key arrives later and
the event delivered to the fake Graph API carries the visitor's fbp, fbc, IP and user agent.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import sqlite3
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import aiohttp
import pytest

from gateway.demo_shop import shop_app
from gateway.edge.stitching import merge_context
from tests.browser.site import serve
from tests.conftest import UA, auth, make_settings, wait_for
from tests.delivery.test_stitch import FBC, FBP, context
from tests.delivery.test_stitch import UA as STITCH_UA
from tests.edge.test_webhooks import (
    ENV,
    body_of,
    booking_event,
    booking_headers,
    crm_headers,
    fixture,
    stripe_event,
    stripe_headers,
)
from tests.fakes.graph import FakeGraph
from tests.fakes.upstream import Front, run_gateway

RULES = Path(__file__).parents[2] / "rules"
VISITOR_IP = "203.0.113.50"  # as told by the trusted proxy (loopback) in front of us
FBCLID = "IwAR2xTestClickId_0123456789"


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


@dataclass
class Visitor:
    """A browser: keeps its cookies, sends its user agent, comes from VISITOR_IP."""

    front: Front
    ip: str = VISITOR_IP
    ua: str = UA
    cookies: dict[str, str] = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)

    async def go(self, method: str, path: str, **kwargs: Any) -> aiohttp.ClientResponse:
        """One request, redirects not followed; Set-Cookie applied."""
        headers = {
            "User-Agent": self.ua,
            "Accept": "text/html,application/xhtml+xml",
            "X-Forwarded-For": self.ip,
            **self.headers,
        }
        if self.cookies:
            headers["Cookie"] = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
        resp = await self.front.session.request(
            method, self.front.url + path, headers=headers, allow_redirects=False, **kwargs
        )
        await resp.read()
        for line in resp.headers.getall("Set-Cookie", []):
            pair, _, attributes = line.partition(";")
            name, _, value = pair.strip().partition("=")
            if not value or "max-age=0" in attributes.lower().replace(" ", ""):
                self.cookies.pop(name, None)
            else:
                self.cookies[name] = value
        return resp

    async def buy(self, email: str = "Ann@Example.com", phone: str = "") -> str:
        """Land from an ad, fill the cart, check out: the order id."""
        landing = await self.go("GET", f"/?fbclid={FBCLID}")
        assert landing.status == 200
        added = await self.go("POST", "/cart/add", data={"sku": "tee-01"})
        assert added.status == 303
        paid = await self.go("POST", "/checkout", data={"email": email, "phone": phone})
        assert paid.status == 302, paid.status
        return parse_qs(urlsplit(paid.headers["Location"]).query)["order"][0]


@dataclass
class Shop:
    """The gateway in front of the demo shop, with the fake Graph API behind it."""

    front: Front
    graph: FakeGraph
    buffer: Path

    def visitor(self, **kwargs: Any) -> Visitor:
        return Visitor(self.front, **kwargs)

    async def hook(self, name: str, body: bytes, headers: dict[str, str]) -> dict[str, Any]:
        """Deliver a webhook (as the provider would: no cookies, from its own address)."""
        async with self.front.session.post(
            f"{self.front.url}/_capi/hooks/{name}", data=body, headers=headers
        ) as resp:
            answer: dict[str, Any] = await resp.json()
            answer["status"] = resp.status
            return answer

    async def events_api(self, payload: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        async with self.front.session.post(
            f"{self.front.url}/_capi/events", json=payload, headers=auth()
        ) as resp:
            return resp.status, await resp.json()

    def sent(self, event_name: str) -> list[dict[str, Any]]:
        return [e for e in self.graph.events if e["event_name"] == event_name]

    async def delivered(self, event_name: str, count: int = 1) -> list[dict[str, Any]]:
        """Wait for `count` events of a name at the fake Graph API; a moment more for extras."""
        await wait_for(lambda: len(self.sent(event_name)) >= count)
        await asyncio.sleep(0.3)
        return self.sent(event_name)

    def stitched_keys(self, *, sharing_an_event_id: bool = False) -> int:
        """Visitor contexts on disk (kept asynchronously after the response)."""
        where = "WHERE event_id IS NOT NULL" if sharing_an_event_id else ""
        with contextlib.closing(sqlite3.connect(self.buffer)) as conn:
            (count,) = conn.execute(f"SELECT COUNT(*) FROM stitches {where}").fetchone()
        return int(count)


@pytest.fixture
def secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in ENV.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("STRIPE_WEBHOOK_SECRET_NEXT", raising=False)


StartShop = Callable[..., Awaitable[Shop]]


@pytest.fixture
async def start(tmp_path: Path, fake_graph: FakeGraph, secrets: None) -> AsyncIterator[StartShop]:
    """Start the demo shop and a gateway with the shipped rules in front of it."""
    async with contextlib.AsyncExitStack() as stack:

        async def go(rules: Path = RULES, **overrides: Any) -> Shop:
            url = await stack.enter_async_context(serve(shop_app()))
            buffer = tmp_path / "outbox.db"
            settings = make_settings(
                tmp_path, fake_graph.url, upstream=url, rules=rules, buffer=buffer, **overrides
            )
            front = await stack.enter_async_context(run_gateway(settings))
            return Shop(front, fake_graph, buffer)

        yield go


# -- the proof ----------------------------------------------------------------------


async def test_a_paid_order_gets_the_visitors_browser_back(start: StartShop) -> None:
    shop = await start()
    ann = shop.visitor()
    order = await ann.buy("Ann@Example.com")
    fbp, fbc = ann.cookies["_fbp"], ann.cookies["_fbc"]
    assert fbc.endswith("." + FBCLID)
    # The checkout rule keeps the visit under the order id and the (hashed) email.
    await wait_for(lambda: shop.stitched_keys() == 2)

    body = body_of(stripe_event(order))
    first = await shop.hook("stripe", body, stripe_headers(body))
    assert first["status"] == 200
    assert first["events"] == [
        {
            "webhook": "stripe-purchase",
            "event_id": f"purchase-{order}",
            "stitched": True,
            "outcome": "new",
            "duplicate": False,
        }
    ]
    # Stripe retries (a timeout on its side, a redelivery from the dashboard): no-ops.
    for _ in range(3):
        again = await shop.hook("stripe", body, stripe_headers(body))
        assert again["status"] == 200 and again["events"][0]["duplicate"] is True
    # A forged delivery for another order: refused, nothing stored.
    forged = body_of(stripe_event("FORGED9"))
    bad = await shop.hook("stripe", forged, stripe_headers(forged, secret="whsec_attacker"))
    assert bad["status"] == 401

    [purchase] = await shop.delivered("Purchase")
    assert purchase["event_id"] == f"purchase-{order}"
    assert purchase["action_source"] == "website"
    assert purchase["user_data"] == {
        "em": sha("ann@example.com"),
        "fbp": fbp,
        "fbc": fbc,
        "client_ip_address": VISITOR_IP,
        "client_user_agent": UA,
    }
    assert purchase["custom_data"] == {"order_id": order, "value": 19.9, "currency": "EUR"}
    assert purchase["event_source_url"] == f"{shop.front.url}/checkout"
    # The browser-side AddPaymentInfo of the same visit carries the same identity.
    [payment] = await shop.delivered("AddPaymentInfo")
    assert payment["user_data"]["fbp"] == fbp
    # The keys and the context are on disk only as keyed hashes and sealed.
    with contextlib.closing(sqlite3.connect(shop.buffer)) as conn:
        stored = conn.execute("SELECT key_hash, kind, sealed FROM stitches").fetchall()
    assert sorted(kind for _, kind, _ in stored) == ["em", "order_id"]
    for key_hash, _, sealed in stored:
        assert key_hash not in (order, sha(order), sha("ann@example.com"))
        assert order.encode() not in sealed and fbp.encode() not in sealed
    raw = b"".join(p.read_bytes() for p in shop.buffer.parent.glob(shop.buffer.name + "*"))
    for clear in (VISITOR_IP, fbp, fbc, "ann@example.com", "Ann@Example.com"):
        assert clear.encode() not in raw, clear


async def test_the_thank_you_page_and_the_webhook_are_one_purchase(start: StartShop) -> None:
    shop = await start()
    ann = shop.visitor()
    order = await ann.buy()
    thanks = await ann.go("GET", f"/thank-you?order={order}&total=19.90")
    assert thanks.status == 200
    [browser] = await shop.delivered("Purchase")
    assert browser["event_id"] == f"purchase-{order}"
    body = body_of(stripe_event(order))
    answer = await shop.hook("stripe", body, stripe_headers(body))
    # Same event id as the page's Purchase: stored once, sent once.
    assert answer["events"][0]["event_id"] == f"purchase-{order}"
    assert answer["events"][0]["duplicate"] is True
    assert len(await shop.delivered("Purchase")) == 1


async def test_without_consent_nothing_is_stored_and_nothing_merged(start: StartShop) -> None:
    shop = await start(consent="cookie_consent")
    # The site's own pixel may have set _fbp before: still nothing may be kept.
    bob = shop.visitor(ip="198.51.100.23", cookies={"_fbp": "fb.1.1700000000000.424242"})
    order = await bob.buy("bob@example.com")
    await asyncio.sleep(0.3)
    assert shop.stitched_keys() == 0
    body = body_of(stripe_event(order, customer_details={"email": "bob@example.com"}))
    answer = await shop.hook("stripe", body, stripe_headers(body))
    assert answer["events"][0]["stitched"] is False
    [purchase] = await shop.delivered("Purchase")
    assert purchase["user_data"] == {"em": sha("bob@example.com")}
    assert purchase["action_source"] == "system_generated"
    assert "event_source_url" not in purchase

    # The same journey with consent given is stitched (the control).
    cat = shop.visitor(ip="198.51.100.24", cookies={"cookie_consent": "granted"})
    order = await cat.buy("cat@example.com")
    await wait_for(lambda: shop.stitched_keys() == 2)
    body = body_of(stripe_event(order, customer_details={"email": "cat@example.com"}))
    answer = await shop.hook("stripe", body, stripe_headers(body))
    assert answer["events"][0]["stitched"] is True
    [_, stitched] = await shop.delivered("Purchase", 2)
    assert stitched["user_data"]["client_ip_address"] == "198.51.100.24"
    assert stitched["user_data"]["fbp"] == cat.cookies["_fbp"]


async def test_the_visitors_privacy_choices_travel_with_the_context(start: StartShop) -> None:
    shop = await start(gpc="ldu")
    dee = shop.visitor(headers={"Sec-GPC": "1"})
    order = await dee.buy("dee@example.com")
    await wait_for(lambda: shop.stitched_keys() == 2)
    body = body_of(stripe_event(order, customer_details={"email": "dee@example.com"}))
    assert (await shop.hook("stripe", body, stripe_headers(body)))["events"][0]["stitched"]
    [purchase] = await shop.delivered("Purchase")
    # Limited Data Use at visit time applies to the paid order too.
    assert purchase["data_processing_options"] == ["LDU"]
    assert purchase["data_processing_options_country"] == 0


POS_HOOK = """
[[webhook]]
name = "pos-payment"
hook = "pos"
event = "Purchase"
delivery_id = "id"
stitch = ["order_id"]
use_stitched_event_id = true

[webhook.signature]
type = "hmac"
header = "X-Pos-Signature"
secrets = ["pos-secret"]

[webhook.extract]
order_id = { source = "json", key = "order" }
value = { source = "json", key = "amount", type = "number" }
currency = "EUR"
email = { source = "json", key = "email" }
"""


async def test_use_stitched_event_id_takes_the_id_the_page_shared(
    start: StartShop, tmp_path: Path
) -> None:
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "shop.toml").write_text((RULES / "shop.toml").read_text())
    (rules / "pos.toml").write_text(POS_HOOK)
    shop = await start(rules=rules)

    async def pay(delivery: str, order: str) -> dict[str, Any]:
        body = body_of({"id": delivery, "order": order, "amount": 19.9, "email": "a@b.co"})
        mac = hmac.new(b"pos-secret", body, hashlib.sha256).hexdigest()
        answer = await shop.hook("pos", body, {"X-Pos-Signature": mac})
        event: dict[str, Any] = answer["events"][0]
        return event

    ann = shop.visitor()
    order = await ann.buy()
    assert (await ann.go("GET", f"/thank-you?order={order}&total=19.90")).status == 200
    await wait_for(lambda: shop.stitched_keys(sharing_an_event_id=True) == 1)
    # The thank-you page shared its Purchase id: the payment becomes that Purchase.
    paid = await pay("pay_1", order)
    assert (paid["event_id"], paid["stitched"], paid["duplicate"]) == (
        f"purchase-{order}",
        True,
        True,
    )
    # The checkout rule kept the visit without sharing an id: the delivery's own id.
    bea = shop.visitor(ip="198.51.100.8")
    other = await bea.buy("bea@example.com")
    await wait_for(lambda: shop.stitched_keys() == 4)
    paid = await pay("pay_2", other)
    assert (paid["event_id"], paid["stitched"], paid["duplicate"]) == (
        "pos-payment-pay_2",
        True,
        False,
    )
    assert len(await shop.delivered("Purchase", 2)) == 2


# -- the other examples: a booking id, an email --------------------------------------------


async def test_a_booking_webhook_is_stitched_to_the_booking_form(start: StartShop) -> None:
    shop = await start()
    eve = shop.visitor()
    await eve.go("GET", f"/book?fbclid={FBCLID}")
    form = {
        "service": "tailoring",
        "date": "2030-01-10",
        "email": "eve@example.co.id",
        "phone": "0812 3456 7890",
    }
    booked = await eve.go("POST", "/book", data=form)
    assert booked.status == 302
    booking_id = parse_qs(urlsplit(booked.headers["Location"]).query)["booking"][0]
    await wait_for(lambda: shop.stitched_keys() == 2)
    body = body_of(booking_event(booking_id))
    answer = await shop.hook("bookings", body, booking_headers(body))
    assert answer["events"][0] == {
        "webhook": "booking-confirmed",
        "event_id": f"schedule-{booking_id}",
        "stitched": True,
        "outcome": "new",
        "duplicate": False,
    }
    [schedule] = await shop.delivered("Schedule")
    assert schedule["user_data"]["fbc"] == eve.cookies["_fbc"]
    assert schedule["user_data"]["client_ip_address"] == VISITOR_IP
    assert schedule["custom_data"]["currency"] == "IDR"
    assert schedule["action_source"] == "website"


@pytest.mark.parametrize("sent_as", ["Ann@Example.com ", "ann@example.com"])
async def test_a_stitched_email_matches_however_the_crm_writes_it(
    start: StartShop, sent_as: str
) -> None:
    shop = await start()
    ann = shop.visitor()
    await ann.go("GET", f"/contact?fbclid={FBCLID}")
    form = {"name": "Ann", "email": "Ann@Example.com", "phone": "", "message": "Hi"}
    assert (await ann.go("POST", "/contact", data=form)).status == 302
    await wait_for(lambda: shop.stitched_keys() == 1)
    event = fixture("crm-deal-stage-changed.json")
    event["deal"]["contact"]["email"] = sent_as
    body = body_of(event)
    answer = await shop.hook("crm", body, crm_headers(body))
    assert answer["events"][0]["stitched"] is True
    leads = await shop.delivered("Lead", 2)
    [crm] = [e for e in leads if e["event_id"].startswith("crm-qualified-lead-")]
    assert crm["user_data"]["fbp"] == ann.cookies["_fbp"]
    assert crm["user_data"]["client_user_agent"] == UA
    assert crm["user_data"]["em"] == sha("ann@example.com")
    # Someone else's address finds nothing.
    event["delivery_id"] = "dlv_other"
    event["deal"]["contact"]["email"] = "someone.else@example.com"
    body = body_of(event)
    assert (await shop.hook("crm", body, crm_headers(body)))["events"][0]["stitched"] is False


# -- /events with stitch_key ----------------------------------------------------------------


async def test_events_api_stitch_key_merges_the_visit(start: StartShop) -> None:
    shop = await start()
    ann = shop.visitor()
    order = await ann.buy()
    assert (await ann.go("GET", f"/thank-you?order={order}&total=19.90")).status == 200
    await wait_for(lambda: shop.stitched_keys(sharing_an_event_id=True) == 1)
    now = int(time.time())
    backend = {
        "event_name": "Purchase",
        "event_time": now,
        "stitch_key": {"order_id": order},
        "user_data": {"email": "ann@example.com"},
        "custom_data": {"value": 19.9, "currency": "EUR"},
    }
    # Without the merge this website event would be refused: no URL, no user agent.
    status, answer = await shop.events_api({"data": [backend]})
    assert status == 202, answer
    # No event id in the call: the thank-you page's shared one, so Meta counts one Purchase.
    assert answer["event_ids"] == [f"purchase-{order}"]

    explicit = {
        "event_name": "Contact",
        "event_time": now,
        "event_id": f"call-{order}",
        "stitch_key": {"order_id": order},
        "user_data": {"ip": "192.0.2.77", "user_agent": "CallCenter/2.0"},
    }
    status, answer = await shop.events_api({"data": [explicit]})
    assert status == 202, answer
    assert answer["event_ids"] == [f"call-{order}"]
    [contact] = await shop.delivered("Contact")
    # The call's own values win; what it lacks comes from the visit, and the email Ann's
    # Purchase carried comes from her visitor profile (keyed by her _fbp).
    assert contact["user_data"] == {
        "em": hashlib.sha256(b"ann@example.com").hexdigest(),
        "client_ip_address": "192.0.2.77",
        "client_user_agent": "CallCenter/2.0",
        "fbp": ann.cookies["_fbp"],
        "fbc": ann.cookies["_fbc"],
    }
    assert contact["event_source_url"].startswith(f"{shop.front.url}/thank-you?order={order}")
    assert len(await shop.delivered("Purchase")) == 1


async def test_events_api_stitch_key_by_email_and_misses(start: StartShop) -> None:
    shop = await start()
    ann = shop.visitor()
    await ann.buy("Ann@Example.com")
    await wait_for(lambda: shop.stitched_keys() == 2)
    lead = {
        "event_name": "Lead",
        "event_time": int(time.time()),
        "event_id": "lead-by-email",
        "stitch_key": {"email": " ANN@example.com"},
        "user_data": {"email": "ann@example.com"},
    }
    status, answer = await shop.events_api({"data": [lead]})
    assert status == 202, answer
    [sent] = await shop.delivered("Lead")
    assert sent["user_data"]["fbp"] == ann.cookies["_fbp"]
    # A key nobody stored: accepted as it is, when it is valid as it is.
    alone = {
        "event_name": "Lead",
        "event_time": int(time.time()),
        "event_id": "lead-unknown-order",
        "action_source": "system_generated",
        "stitch_key": {"order_id": "NOPE0000"},
        "user_data": {"email": "zed@example.com"},
    }
    status, answer = await shop.events_api({"data": [alone]})
    assert status == 202, answer
    [_, unstitched] = await shop.delivered("Lead", 2)
    assert set(unstitched["user_data"]) == {"em"}


@pytest.mark.parametrize(
    ("stitch_key", "message"),
    [
        ({"cart_token": "abc"}, "no rule keeps visits under ['cart_token']"),
        (["order_id", "A1"], "use an object of key names to values"),
        ({}, "use an object of key names to values"),
        ({"order_id": {"nested": 1}}, "use an object of key names to values"),
        ({"order_id": True}, "use an object of key names to values"),
    ],
)
async def test_events_api_refuses_a_stitch_key_no_rule_keeps(
    start: StartShop, stitch_key: Any, message: str
) -> None:
    shop = await start()
    event = {
        "event_name": "Lead",
        "event_time": int(time.time()),
        "action_source": "system_generated",
        "stitch_key": stitch_key,
        "user_data": {"email": "ann@example.com"},
    }
    status, answer = await shop.events_api({"data": [event]})
    assert status == 400
    [problem] = answer["detail"]
    assert problem["field"] == "stitch_key"
    assert message in problem["message"]


# -- merging a found context (gateway.edge.stitching) ------------------------------------


def test_merge_context_explicit_values_win() -> None:
    ctx = context()
    event = {
        "event_name": "Purchase",
        "user_data": {"em": "x@example.com", "ip": "198.51.100.1"},
        "opt_out": None,
        "data_processing_options": [],
    }
    merged = merge_context(event, ctx)
    assert merged["user_data"] == {
        "em": "x@example.com",
        "ip": "198.51.100.1",  # given under its alias: the stored IP is not added
        "fbp": FBP,
        "fbc": FBC,
        "client_user_agent": STITCH_UA,
    }
    assert merged["event_source_url"] == ctx.event_source_url
    assert merged["data_processing_options"] == []  # explicit, kept
    assert merged["data_processing_options_country"] == 0
    assert "event_id" not in merged
    assert event["user_data"] == {"em": "x@example.com", "ip": "198.51.100.1"}  # not mutated
    assert (
        merge_context({"event_name": "Purchase"}, ctx, reuse_event_id=True)["event_id"] == "ic.42"
    )
    own = {"event_name": "Purchase", "event_id": "mine", "event_source_url": "https://b/"}
    kept = merge_context(own, ctx, reuse_event_id=True)
    assert kept["event_id"] == "mine" and kept["event_source_url"] == "https://b/"
