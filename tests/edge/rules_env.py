"""A gateway with rule files in front of a real site, and what its rules produced.

Shared by the rule tests (tests/edge/test_rules_proxy.py, test_rules_examples.py): the site is
any aiohttp app served on 127.0.0.1, the gateway runs in-process in front of it with a
`rules` directory and sends to the fake Graph API; `RulesGateway` sends requests as a browser
would and reads back the events the fake received and the rows of the outbox file.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import re
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from multidict import CIMultiDictProxy

from gateway.appkeys import CONVERSIONS, PAGES
from tests.browser.site import serve
from tests.conftest import UA, make_settings, wait_for
from tests.fakes.graph import FakeGraph
from tests.fakes.upstream import Front, run_gateway

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

    def tag(self, attr: str) -> str | None:
        """A data attribute of the injected px.js tag (None: no tag or no such attribute)."""
        import html

        found = TAG.search(self.body)
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
        await self.front.app[CONVERSIONS].drain()
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


@pytest.fixture
async def start_rules(tmp_path: Path, fake_graph: FakeGraph) -> AsyncIterator[StartRules]:
    """Start `site` (an aiohttp app) and the gateway in front of it with these rules.

    `rules` is the text of one rule file (written to a fresh directory) or a directory;
    other keywords are settings overrides.
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
