"""Click and submit rules in headless Chromium: one event id for the browser pixel and the server.

The demo shop (gateway.demo_shop) runs behind the gateway with the repository's example
rules (`add-to-cart` is a click rule on product pages) plus a submit rule on the contact
form. The shop has no Meta pixel of its own, so the gateway's px.js loads one (`load`
mode) from the fbevents.js stand-in of tests/browser/site.py, served by the shop, which
records every fbq call (with its eventID) at the shop. A real click and a real form
submission then have to reach both the browser pixel and the fake Graph API under the same
event id; customer fields reach the server hashed and never the browser pixel.
"""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

from gateway.demo_shop import shop_app
from gateway.edge.appkeys import PAGES
from tests.browser.conftest import Gateway, StartGateway, Tab
from tests.browser.site import FBEVENTS_JS, serve
from tests.conftest import wait_for
from tests.edge.rules_env import sha256
from tests.fakes.graph import FakeGraph

OpenTab = Callable[..., Awaitable[Tab]]
WAIT = 10.0
RULES = Path(__file__).resolve().parents[2] / "rules"
CONTACT_SUBMIT = """
[[rule]]
name = "contact-submit"
event = "Contact"
trigger = "submit"
selector = "form[action='/contact']"
path = "/contact"

[rule.extract]
email = { source = "field", key = "email" }
phone = { source = "field", key = "phone" }
content_name = "contact form"
"""
# What only the visitor typed: none of it may reach the browser pixel.
EMAIL, PHONE = "Jane.Doe@Example.com", "+1 650-555-0100"
IDENTITY_FIELDS = {"client_ip_address", "client_user_agent", "fbp", "fbc"}


@dataclass
class PixelShop:
    """The demo shop, also serving the fbevents.js stand-in and recording its calls."""

    calls: list[dict[str, Any]] = field(default_factory=list)

    def app(self) -> web.Application:
        app = shop_app()
        app.router.add_get("/fbevents.js", self._fbevents)
        app.router.add_post("/__record", self._record)
        return app

    def tracked(self, event: str) -> list[dict[str, Any]]:
        """The stand-in's recorded track calls of `event`."""
        return [c for c in self.calls if c.get("event") == event]

    async def _fbevents(self, request: web.Request) -> web.Response:
        return web.Response(text=FBEVENTS_JS, content_type="application/javascript")

    async def _record(self, request: web.Request) -> web.Response:
        call = json.loads(await request.read())
        if isinstance(call, dict):
            self.calls.append(call)
        return web.Response(status=204)


def delivered(fake: FakeGraph, name: str) -> list[dict[str, Any]]:
    return [e for e in fake.events if e.get("event_name") == name]


async def one(items: Callable[[], list[dict[str, Any]]]) -> dict[str, Any]:
    """Wait until `items()` holds something; it must then hold exactly one thing."""
    await wait_for(lambda: len(items()) >= 1, timeout=WAIT)
    found = items()
    assert len(found) == 1, found
    return found[0]


def rule_rows(gw: Gateway) -> list[tuple[str, str, str]]:
    """(event_name, event_id, rule) of the outbox's rule events."""
    with contextlib.closing(sqlite3.connect(gw.app[PAGES].settings.buffer)) as conn:
        return [
            (str(n), str(i), str(r))
            for n, i, r in conn.execute(
                "SELECT event_name, event_id, rule FROM events WHERE rule IS NOT NULL ORDER BY id"
            )
        ]


@contextlib.asynccontextmanager
async def shop_behind_gateway(
    start_gateway: StartGateway, rules: Path
) -> AsyncIterator[tuple[PixelShop, Gateway]]:
    """The shop on 127.0.0.1 and the gateway in front of it, loading the pixel itself."""
    shop = PixelShop()
    async with serve(shop.app()) as url:
        gw = await start_gateway(
            upstream=url, rules=rules, browser_pixel="load", fbevents_url=url + "/fbevents.js"
        )
        yield shop, gw


async def test_add_to_cart_click_reaches_pixel_and_server_with_one_event_id(
    start_gateway: StartGateway, open_tab: OpenTab, fake_graph: FakeGraph
) -> None:
    async with shop_behind_gateway(start_gateway, RULES) as (shop, gw):
        tab = await open_tab()
        await tab.page.goto(gw.url + "/product/tee-01")
        await one(lambda: shop.tracked("PageView"))  # the pixel library has loaded
        await tab.page.click("button.add-to-cart")
        await tab.page.wait_for_url("**/cart")  # the shop's own form still did its job
        assert await tab.page.locator("text=Loopback T-shirt").count() == 1
        browser = await one(lambda: shop.tracked("AddToCart"))
        expected = {
            "content_ids": ["tee-01"],
            "content_type": "product",
            "value": 19.9,
            "currency": "EUR",
        }
        assert browser["params"] == expected
        assert browser["eventID"]
        server = await one(lambda: delivered(fake_graph, "AddToCart"))
        assert server["event_id"] == browser["eventID"]
        assert server["custom_data"] == expected
        assert set(server["user_data"]) <= IDENTITY_FIELDS
        assert server["user_data"]["fbp"] == await tab.cookie("_fbp")
        assert ("AddToCart", browser["eventID"], "add-to-cart") in rule_rows(gw)


async def test_submit_rule_hashes_the_email_for_the_server_and_keeps_it_from_the_pixel(
    start_gateway: StartGateway, open_tab: OpenTab, fake_graph: FakeGraph, tmp_path: Path
) -> None:
    rules = tmp_path / "rules"
    shutil.copytree(RULES, rules)
    (rules / "contact-submit.toml").write_text(CONTACT_SUBMIT)
    async with shop_behind_gateway(start_gateway, rules) as (shop, gw):
        tab = await open_tab()
        await tab.page.goto(gw.url + "/contact")
        await one(lambda: shop.tracked("PageView"))
        await tab.page.fill("input[name=name]", "Jane Doe")
        await tab.page.fill("input[name=email]", EMAIL)
        await tab.page.fill("input[name=phone]", PHONE)
        await tab.page.fill("textarea[name=message]", "Call me about mugs.")
        await tab.page.click("form[action='/contact'] button")
        await tab.page.wait_for_url("**/contact/thanks")
        browser = await one(lambda: shop.tracked("Contact"))
        assert browser["params"] == {"content_name": "contact form"}
        # Nothing the visitor typed reached the browser pixel, in any call.
        recorded = json.dumps(shop.calls).lower()
        for typed in ("jane", "example.com", "555-0100", re.sub(r"\D", "", PHONE)[1:]):
            assert typed not in recorded
        server = await one(lambda: delivered(fake_graph, "Contact"))
        assert server["event_id"] == browser["eventID"]
        assert server["user_data"]["em"] == sha256("jane.doe@example.com")
        assert server["user_data"]["ph"] == sha256("16505550100")
        assert server["custom_data"] == {"content_name": "contact form"}
        assert "jane" not in json.dumps(server).lower()
        # The form's POST answered 302, so the server-side rule counted the Lead as well.
        lead = await one(lambda: delivered(fake_graph, "Lead"))
        assert lead["user_data"]["em"] == server["user_data"]["em"]
