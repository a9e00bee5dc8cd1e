"""A gateway with rule files in front of a real site, and what its rules produced.

Shared by the rule tests (tests/edge/test_rules_*.py): the site is any aiohttp app served on
127.0.0.1 (`RuleSite` below, or the demo shop), the gateway runs in-process in front of it
with a `rules` directory and sends to the fake Graph API; `RulesGateway` sends requests as a
browser would and reads back the events the fake received and the rows of the outbox file.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import hashlib
import html
import json
import re
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import brotli  # type: ignore[import-untyped]
from aiohttp import web
from multidict import CIMultiDictProxy

from gateway.edge.appkeys import PAGES, PROXIED_RULES
from tests.browser.site import serve
from tests.conftest import UA, make_settings, wait_for
from tests.fakes.graph import FakeGraph
from tests.fakes.upstream import Front, decode, run_gateway

IP = "203.0.113.9"  # the visitor, as told by the trusted loopback proxy in front
BROWSER = {"User-Agent": UA, "Accept": "text/html", "X-Forwarded-For": IP}
TAG = re.compile(rb'<script src="/_capi/px\.js[^>]*></script>')


def sha256(text: str) -> str:
    """What Meta expects for an already normalized customer field."""
    return hashlib.sha256(text.encode()).hexdigest()


@dataclass(frozen=True)
class Answer:
    """A response as the client got it (body read whole, not decompressed)."""

    status: int
    headers: CIMultiDictProxy[str]
    body: bytes

    def cookie(self, name: str) -> str | None:
        """The value of a cookie the response sets."""
        for line in self.headers.getall("Set-Cookie", []):
            key, _, rest = line.partition("=")
            if key == name:
                return rest.split(";", 1)[0]
        return None

    @property
    def plain(self) -> bytes:
        """The body with its Content-Encoding undone."""
        return decode(self.body, self.headers.get("Content-Encoding", "identity"))

    def tag(self, attr: str) -> str | None:
        """A data attribute of the injected px.js tag (None: no tag or no such attribute)."""
        found = TAG.search(self.plain)
        if found is None:
            return None
        value = re.search(rf'{attr}="([^"]*)"'.encode(), found.group(0))
        return html.unescape(value.group(1).decode()) if value else None


@dataclass(frozen=True)
class Row:
    """One outbox row, as committed."""

    event_name: str
    event_id: str
    rule: str | None
    source: str


@dataclass
class RulesGateway:
    """The gateway with rules, the site behind it and the fake Graph API after it."""

    front: Front
    graph: FakeGraph
    buffer: Path

    @property
    def url(self) -> str:
        return self.front.url

    async def send(
        self,
        method: str,
        path: str,
        *,
        headers: Mapping[str, str] | None = None,
        **options: Any,
    ) -> Answer:
        """One request through the gateway with a browser's headers (redirects not followed)."""
        sent = {**BROWSER, **(headers or {})}
        async with self.front.session.request(
            method, self.url + path, headers=sent, allow_redirects=False, **options
        ) as resp:
            return Answer(resp.status, resp.headers, await resp.read())

    async def get(self, path: str, **options: Any) -> Answer:
        return await self.send("GET", path, **options)

    async def post(self, path: str, **options: Any) -> Answer:
        return await self.send("POST", path, **options)

    async def settle(self) -> None:
        """Let every request answered so far finish its rule work and commit its events.

        A page's events are built once its body has gone by, just after the client read its
        last byte: a moment's pause, then the hand-overs to the outbox are awaited."""
        await asyncio.sleep(0.05)
        await self.front.app[PROXIED_RULES].drain()
        await self.front.app[PAGES].drain()

    def rows(self, *, rule_only: bool = True) -> list[Row]:
        """The outbox's rows in insertion order (rule events only by default)."""
        with contextlib.closing(sqlite3.connect(self.buffer)) as conn:
            found = [
                Row(str(n), str(i), r, str(s))
                for n, i, r, s in conn.execute(
                    "SELECT event_name, event_id, rule, source FROM events ORDER BY id"
                )
            ]
        return [r for r in found if r.rule is not None] if rule_only else found

    def events(self, name: str | None = None) -> list[dict[str, Any]]:
        """Events the fake Graph API accepted (of one name), in arrival order."""
        return [e for e in self.graph.events if name is None or e.get("event_name") == name]

    async def delivered(self, name: str, count: int = 1) -> list[dict[str, Any]]:
        """Wait until `count` events named `name` reached the fake; exactly that many."""
        await wait_for(lambda: len(self.events(name)) >= count)
        found = self.events(name)
        assert len(found) == count, found
        return found

    async def all_delivered(self) -> list[dict[str, Any]]:
        """Settle, wait until the fake holds every rule event the outbox took; those events."""
        await self.settle()
        ids = {r.event_id for r in self.rows()}
        await wait_for(lambda: ids <= {e.get("event_id") for e in self.graph.events})
        return [e for e in self.graph.events if e.get("event_id") in ids]


StartRules = Callable[..., Awaitable[RulesGateway]]


@contextlib.asynccontextmanager
async def rules_gateways(tmp_path: Path, fake_graph: FakeGraph) -> AsyncIterator[StartRules]:
    """Start `site` (an aiohttp app) and the gateway in front of it with these rules.

    `rules` is the text of one rule file (written to a fresh directory) or a directory;
    other keywords are settings overrides. Everything stops when the block ends.
    """
    async with contextlib.AsyncExitStack() as stack:
        started = 0

        async def go(site: web.Application, rules: str | Path, **overrides: Any) -> RulesGateway:
            nonlocal started
            started += 1
            if isinstance(rules, str):
                directory = tmp_path / f"rules-{started}"
                directory.mkdir()
                (directory / "test.toml").write_text(rules)
            else:
                directory = rules
            site_url = await stack.enter_async_context(serve(site))
            buffer = tmp_path / f"outbox-{started}.db"
            values: dict[str, Any] = {"upstream": site_url, "buffer": buffer, "rules": directory}
            values.update(overrides)
            settings = make_settings(tmp_path, fake_graph.url, **values)
            front = await stack.enter_async_context(
                run_gateway(settings, timeout=aiohttp.ClientTimeout(total=15))
            )
            return RulesGateway(front, fake_graph, buffer)

        yield go


# -- the site the rule tests put behind the gateway ------------------------------------------

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
class RuleSite:
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
        ld = '{"@type": "Product", "name": "Big", "offers": {"price": 42.5, "priceCurrency": "EUR"}'
        ld += "}"
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
