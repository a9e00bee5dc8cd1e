"""Real headless Chromium (Debian's, driven by Playwright) against the real gateway and site.

Every test gets its own browser (launching takes about half a second), its own gateway
in-process on 127.0.0.1 in front of the test site (tests/browser/site.py) and the fake
Graph API of tests/conftest.py. Without /usr/bin/chromium the tests fail and say how to
install it; only CAPIGW_SKIP_BROWSER=1, set on purpose, skips them.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from gateway.settings import Settings
from tests.browser.site import PIXEL, Site, start_site
from tests.conftest import make_settings
from tests.fakes import upstream
from tests.fakes.graph import FakeGraph

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
    "--no-proxy-server",
]
INSTALL_HINT = (
    "run scripts/install-browser.sh (apt-get install chromium) and pip install -e '.[test]'"
)

try:
    from playwright.async_api import (
        Browser,
        BrowserContext,
        Page,
        Request,
        Response,
        async_playwright,
    )
except ImportError:  # pragma: no cover - the browser fixture fails with INSTALL_HINT
    HAVE_PLAYWRIGHT = False
else:
    HAVE_PLAYWRIGHT = True

StartGateway = Callable[..., Awaitable["Gateway"]]


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    """Chromium, headless, for one test."""
    if os.environ.get("CAPIGW_SKIP_BROWSER") == "1":
        pytest.skip("CAPIGW_SKIP_BROWSER=1: browser tests skipped on request")
    if not HAVE_PLAYWRIGHT:
        pytest.fail(f"Playwright is not installed: {INSTALL_HINT}", pytrace=False)
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: {INSTALL_HINT}", pytrace=False)
    async with async_playwright() as pw:
        chromium = await pw.chromium.launch(
            executable_path=CHROMIUM, args=CHROMIUM_ARGS, timeout=20_000
        )
        try:
            yield chromium
        finally:
            await chromium.close()


@pytest.fixture
async def site() -> AsyncIterator[Site]:
    """The test site with its fbevents.js stand-in."""
    async with start_site() as running:
        yield running


@dataclass(frozen=True)
class Answered:
    """A /collect request as the gateway saw it, and its answer."""

    status: int
    origin: str | None
    sec_fetch_site: str | None
    headers: dict[str, str]


@dataclass
class Gateway:
    """The gateway in-process on 127.0.0.1, with every /collect answer it gave."""

    url: str
    app: web.Application
    collect: list[Answered] = field(default_factory=list)


@contextlib.asynccontextmanager
async def run_gateway(settings: Settings) -> AsyncIterator[Gateway]:
    """tests.fakes.upstream.run_gateway, recording the answers to /collect."""
    collect: list[Answered] = []

    async def seen(request: web.Request, response: web.StreamResponse) -> None:
        if request.path.endswith("/collect"):
            collect.append(
                Answered(
                    response.status,
                    request.headers.get("Origin"),
                    request.headers.get("Sec-Fetch-Site"),
                    dict(response.headers),
                )
            )

    async with upstream.run_gateway(settings, on_response_prepare=[seen]) as front:
        yield Gateway(front.url, front.app, collect)


@pytest.fixture
async def start_gateway(
    tmp_path: Path, fake_graph: FakeGraph, site: Site
) -> AsyncIterator[StartGateway]:
    """Start the gateway in front of `site` (or `upstream=`), sending to the fake Graph API."""
    async with contextlib.AsyncExitStack() as stack:

        async def go(**overrides: Any) -> Gateway:
            values: dict[str, Any] = {"upstream": site.url, "pixel_id": [PIXEL]}
            values.update(overrides)
            settings = make_settings(tmp_path, fake_graph.url, **values)
            return await stack.enter_async_context(run_gateway(settings))

        yield go


@dataclass
class Beacons:
    """Every request to the gateway's /collect a browser context made, and the answers."""

    requests: list[Request] = field(default_factory=list)
    responses: list[Response] = field(default_factory=list)

    def watch(self, context: BrowserContext) -> None:
        """Record the context's /collect traffic from now on."""
        context.on("request", self._request)
        context.on("response", self._response)

    def _request(self, request: Request) -> None:
        if "/_capi/collect" in request.url:
            self.requests.append(request)

    def _response(self, response: Response) -> None:
        if "/_capi/collect" in response.url:
            self.responses.append(response)


@dataclass
class Tab:
    """A page in its own browser context, with the context's beacons recorded."""

    context: BrowserContext
    page: Page
    beacons: Beacons

    async def injected(self, name: str) -> str:
        """A data attribute of the gateway's script tag in the current document."""
        value = await self.page.evaluate(
            "(n) => document.querySelector('script[data-event-id]').getAttribute('data-' + n)",
            name,
        )
        assert isinstance(value, str), value
        return value

    async def cookie(self, name: str) -> str | None:
        """The value of cookie `name` in the context, if set."""
        for cookie in await self.context.cookies():
            if cookie.get("name") == name:
                return cookie.get("value")
        return None


@pytest.fixture
async def open_tab(browser: Browser) -> AsyncIterator[Callable[..., Awaitable[Tab]]]:
    """Open a fresh context (no cookies) and page; errors thrown in the page fail the test."""
    tabs: list[Tab] = []
    errors: list[str] = []

    async def go(**context_options: Any) -> Tab:
        context = await browser.new_context(**context_options)
        context.set_default_timeout(10_000)
        beacons = Beacons()
        beacons.watch(context)
        page = await context.new_page()
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        tab = Tab(context, page, beacons)
        tabs.append(tab)
        return tab

    yield go
    for tab in tabs:
        await tab.context.close()
    assert errors == [], f"script errors in the page: {errors}"
