"""Event assembly and visitor profiles end to end: the demo shop through the real proxy, the
Stripe webhook endpoint and the events API, delivered to the fake Graph API.

The journeys of issue 14: checkout → thank-you → Stripe webhook is one Purchase with the
customer's email and phone, the browser's fbp, IP and user agent and the webhook's value;
the same with the webhook first; no webhook at all (the email comes from the profile); a
webhook after the send (late: counted, not sent twice); a visitor who opted out (nothing
learned, nothing added); and `forget`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
from typing import Any

from gateway.pipeline.normalize import hash_value
from tests.conftest import wait_for
from tests.edge import test_stitching as stitching
from tests.edge.test_stitching import UA, VISITOR_IP, Shop, StartShop, sha
from tests.edge.test_webhooks import body_of, stripe_event, stripe_headers

# The demo shop behind the gateway with the shipped rules, as the stitching tests use it.
start = stitching.start
secrets = stitching.secrets

PHONE = "+49 170 1234567"
ADMIN_TOKEN = "admin-token-for-the-journeys-01"


def stripe_payment(order: str, *, amount: int = 2490) -> bytes:
    """Stripe's checkout.session.completed with the true amount and the customer's email."""
    details = {"email": "ann@example.com", "phone": None, "name": "Ann Example"}
    return body_of(stripe_event(order, amount_total=amount, customer_details=details))


def row(shop: Shop, event_id: str) -> dict[str, Any]:
    with contextlib.closing(sqlite3.connect(shop.buffer)) as conn:
        conn.row_factory = sqlite3.Row
        found = conn.execute("SELECT * FROM events WHERE event_id=?", (event_id,)).fetchone()
    assert found is not None, event_id
    return dict(found)


def profiles(shop: Shop, table: str = "profiles") -> int:
    with contextlib.closing(sqlite3.connect(shop.buffer)) as conn:
        (count,) = conn.execute(f"SELECT COUNT(*) FROM {table}").fetchone()
    return int(count)


def stitches(shop: Shop) -> int:
    with contextlib.closing(sqlite3.connect(shop.buffer)) as conn:
        (count,) = conn.execute("SELECT COUNT(*) FROM stitches").fetchone()
    return int(count)


async def metric(shop: Shop, name: str) -> float:
    async with shop.front.session.get(f"{shop.front.url}/_capi/metrics") as resp:
        text = await resp.text()
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def assert_the_richest_purchase(purchase: dict[str, Any], ann_cookies: dict[str, str]) -> None:
    assert purchase["user_data"] == {
        "em": sha("ann@example.com"),
        "ph": hash_value("ph", PHONE),
        "fbp": ann_cookies["_fbp"],
        "fbc": ann_cookies["_fbc"],
        "client_ip_address": VISITOR_IP,
        "client_user_agent": UA,
    }
    # The webhook is the source of record for the amount; the page said 19.90.
    assert purchase["custom_data"]["value"] == 24.9
    assert purchase["custom_data"]["currency"] == "EUR"
    assert purchase["action_source"] == "website"


async def test_thank_you_then_webhook_is_one_rich_purchase(start: StartShop) -> None:
    shop = await start(assembly_hold=3.0)
    ann = shop.visitor()
    order = await ann.buy("Ann@Example.com", phone=PHONE)
    assert (await ann.go("GET", f"/thank-you?order={order}&total=19.90")).status == 200
    await wait_for(lambda: bool(_stored(shop, f"purchase-{order}")))
    body = stripe_payment(order)
    answer = await shop.hook("stripe", body, stripe_headers(body))
    assert answer["events"][0]["outcome"] == "merged"
    [purchase] = await shop.delivered("Purchase")
    assert purchase["event_id"] == f"purchase-{order}"
    assert_the_richest_purchase(purchase, ann.cookies)
    stored = row(shop, f"purchase-{order}")
    assert json.loads(stored["sources"]) == ["page:purchase", "webhook:stripe-purchase"]
    assert await metric(shop, "capi_gateway_assembly_copies_total") >= 1


async def test_webhook_then_thank_you_is_the_same_purchase(start: StartShop) -> None:
    shop = await start(assembly_hold=3.0)
    ann = shop.visitor()
    order = await ann.buy("Ann@Example.com", phone=PHONE)
    await wait_for(lambda: shop.stitched_keys() == 2)
    body = stripe_payment(order)
    answer = await shop.hook("stripe", body, stripe_headers(body))
    assert answer["events"][0]["outcome"] == "new"
    assert (await ann.go("GET", f"/thank-you?order={order}&total=19.90")).status == 200
    [purchase] = await shop.delivered("Purchase")
    assert_the_richest_purchase(purchase, ann.cookies)
    assert json.loads(row(shop, f"purchase-{order}")["sources"]) == [
        "webhook:stripe-purchase",
        "page:purchase",
    ]


async def test_without_a_webhook_the_profile_brings_the_email(start: StartShop) -> None:
    shop = await start(assembly_hold=0.3)
    ann = shop.visitor()
    order = await ann.buy("Ann@Example.com", phone=PHONE)
    assert (await ann.go("GET", f"/thank-you?order={order}&total=19.90")).status == 200
    [purchase] = await shop.delivered("Purchase")
    assert purchase["user_data"]["em"] == sha("ann@example.com")
    assert purchase["user_data"]["ph"] == hash_value("ph", PHONE)
    assert purchase["custom_data"]["value"] == 19.9
    stored = row(shop, f"purchase-{order}")
    # Received without it, sent with it: the dashboard's lift.
    assert "em" not in (stored["received_keys"] or "").split(",")
    assert "em" in stored["match_keys"].split(",")
    # Later page views of the same visitor carry it too.
    await ann.go("GET", "/")
    views = await shop.delivered("PageView", count=3)
    assert views[-1]["user_data"]["em"] == sha("ann@example.com")
    assert await metric(shop, "capi_gateway_profile_identifiers_added_total") >= 2


async def test_a_late_webhook_is_counted_and_not_sent_twice(start: StartShop) -> None:
    shop = await start(assembly_hold=0)
    ann = shop.visitor()
    order = await ann.buy("Ann@Example.com", phone=PHONE)
    assert (await ann.go("GET", f"/thank-you?order={order}&total=19.90")).status == 200
    await shop.delivered("Purchase")
    body = stripe_payment(order)
    answer = await shop.hook("stripe", body, stripe_headers(body))
    assert answer["events"][0]["outcome"] == "late"
    assert len(await shop.delivered("Purchase")) == 1
    late = json.loads(row(shop, f"purchase-{order}")["late"])
    assert late["copies"] == 1 and "custom_data.value" in late["fields"]
    assert await metric(shop, 'capi_gateway_assembly_copies_total{outcome="late"}') == 1


async def test_an_opted_out_visitor_teaches_nothing_and_gets_nothing(start: StartShop) -> None:
    shop = await start(assembly_hold=0.3)
    gpc = shop.visitor(headers={"Sec-GPC": "1"})
    await gpc.buy("Gpc@Example.com", phone=PHONE)
    await shop.delivered("AddPaymentInfo")
    assert profiles(shop) == 0
    # A visitor who gave their email, then opts out: their opted-out views get nothing.
    ann = shop.visitor()
    await ann.buy("Ann@Example.com", phone=PHONE)
    await wait_for(lambda: profiles(shop) == 1)
    ann.headers["Sec-GPC"] = "1"
    await ann.go("GET", "/?after=optout")
    views = await shop.delivered("PageView", count=3)
    opted = [v for v in views if v["event_source_url"].endswith("after=optout")]
    assert opted and opted[0].get("opt_out") is True
    assert "em" not in opted[0]["user_data"]


async def test_forget_leaves_nothing_of_the_person_for_later_events(start: StartShop) -> None:
    shop = await start(assembly_hold=0.3, admin_token=ADMIN_TOKEN)
    ann = shop.visitor()
    await ann.buy("Ann@Example.com", phone=PHONE)
    # The visits are kept in the background of the pages: wait for them as for the profile.
    await wait_for(lambda: profiles(shop) == 1 and stitches(shop) == 2)
    async with shop.front.session.post(
        f"{shop.front.url}/_capi/admin/forget",
        data={"email": "ANN@example.com"},
        headers={"Authorization": f"Bearer {ADMIN_TOKEN}", "Accept": "application/json"},
    ) as resp:
        assert resp.status == 200
        counts = (await resp.json())["forgotten"]
    assert counts["profiles"] == 1 and counts["stitches"] == 2
    assert profiles(shop) == 0
    await ann.go("GET", "/?after=forget")
    views = await shop.delivered("PageView", count=2)
    later = [v for v in views if v["event_source_url"].endswith("after=forget")]
    assert later and "em" not in later[0]["user_data"]


def _stored(shop: Shop, event_id: str) -> bool:
    with contextlib.closing(sqlite3.connect(shop.buffer)) as conn:
        found = conn.execute("SELECT 1 FROM events WHERE event_id=?", (event_id,)).fetchone()
    return found is not None


async def test_a_backend_call_with_only_a_stitch_key_finds_and_feeds_the_profile(
    start: StartShop,
) -> None:
    shop = await start(assembly_hold=0.3)
    ann = shop.visitor()
    order = await ann.buy("Ann@Example.com", phone=PHONE)
    await wait_for(lambda: profiles(shop) == 1 and shop.stitched_keys() == 2)
    # The visit itself is gone (expired, say): only the profile's link knows the order.
    # In a thread: the gateway runs on this event loop, and its writer must be able to
    # commit while the delete waits for the write lock.
    await asyncio.to_thread(_drop_visits, shop)
    status, _ = await shop.events_api(
        {
            "data": [
                {
                    "event_name": "Subscribe",
                    "event_id": f"sub-{order}",
                    "action_source": "system_generated",
                    "stitch_key": {"order_id": order},
                    "user_data": {"external_id": "cust-7"},
                }
            ]
        }
    )
    assert status == 202
    [sub] = await shop.delivered("Subscribe")
    # Found: no fbp, no visit, yet the email and phone typed at checkout.
    assert "fbp" not in sub["user_data"]
    assert sub["user_data"]["em"] == sha("ann@example.com")
    assert sub["user_data"]["ph"] == hash_value("ph", PHONE)
    # Fed: the visitor's next page view carries the backend's customer id.
    await ann.go("GET", "/?after=subscribe")

    def later() -> list[dict[str, Any]]:
        return [
            v for v in shop.sent("PageView") if v["event_source_url"].endswith("after=subscribe")
        ]

    await wait_for(lambda: bool(later()), timeout=15)
    assert later()[0]["user_data"]["external_id"] == sha("cust-7")
    assert profiles(shop) == 1


def _drop_visits(shop: Shop) -> None:
    """Delete every kept visit, waiting for the gateway's writer (BEGIN IMMEDIATE)."""
    with contextlib.closing(sqlite3.connect(shop.buffer, timeout=30, isolation_level=None)) as conn:
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("DELETE FROM stitches")
        conn.execute("COMMIT")
