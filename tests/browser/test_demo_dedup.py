"""`capi-gateway demo` in headless Chromium: the shop's pages carry a local stand-in of Meta's
pixel, so browser and server events pair up in the dashboard's deduplication figures.

The demo runs as a subprocess, as a newcomer starts it; the figures are read with the
dashboard's own data layer (gateway.admin.data) from the demo's buffer, not from its HTML.
A screenshot of the dashboard is kept in tests/artifacts/ for a reviewer's eyes.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp

from gateway.admin.data import Dashboard, load_dashboard
from gateway.delivery.reads import reading as reader
from tests.browser.conftest import Tab
from tests.fakes.processes import HOST, free_port, gateway_cmd, spawn, stop_at_exit, tail

OpenTab = Callable[..., Awaitable[Tab]]
ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"
PAGES = ("/", "/product/tee-01", "/search?q=mug")


async def _dashboard(buffer: Path) -> Dashboard:
    async with reader(buffer) as conn:
        return await load_dashboard(conn, [], rules_dir=None)


async def test_demo_pages_pair_browser_and_server_events(tmp_path: Path, open_tab: OpenTab) -> None:
    port, buffer, log = free_port(), tmp_path / "demo.db", tmp_path / "demo.log"
    base = f"http://{HOST}:{port}"
    with stop_at_exit() as procs:
        procs.append(
            spawn(
                [*gateway_cmd(), "demo", "--listen", f"{HOST}:{port}", "--buffer", str(buffer)],
                log,
            )
        )
        async with aiohttp.ClientSession() as session:
            deadline = time.monotonic() + 20
            while True:
                try:
                    async with session.get(f"{base}/_capi/health?live") as resp:
                        if resp.status == 200:
                            break
                except aiohttp.ClientConnectionError:
                    pass
                assert time.monotonic() < deadline, tail(log)
                await asyncio.sleep(0.1)

        tab = await open_tab()
        failed: list[str] = []
        tab.page.on(
            "response",
            lambda r: failed.append(f"{r.status} {r.url}") if r.status >= 400 else None,
        )
        external: list[str] = []
        tab.page.on(
            "request",
            lambda r: external.append(r.url) if not r.url.startswith((base, "data:")) else None,
        )
        for path in PAGES:
            await tab.page.goto(base + path)
            # The stand-in got the page's PageView with the id px.js gave it.
            handle = await tab.page.wait_for_function(
                "() => (window.__fbqCalls || []).some(c => c[1] === 'PageView') "
                "&& window.__fbqCalls"
            )
            calls: list[list[Any]] = await handle.json_value()
            tracked = [c for c in calls if c[0] == "track" and c[1] == "PageView"]
            assert len(tracked) == 1 and tracked[0][-1].get("eventID"), calls
        assert failed == [], failed  # no favicon 404, nothing else missing
        assert external == [], external  # no network: the pixel is the local stand-in

        deadline = time.monotonic() + 20
        while True:
            board = await _dashboard(buffer)
            pageviews = {d.event_name: d for d in board.dedup}.get("PageView")
            if pageviews is not None and pageviews.both >= len(PAGES):
                break
            assert time.monotonic() < deadline, (board.dedup, tail(log))
            await asyncio.sleep(0.3)
        assert pageviews.browser == pageviews.both == pageviews.server == len(PAGES)
        assert board.dedup_total.both >= len(PAGES)

        await tab.page.goto(f"{base}/_capi/admin")
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        await tab.page.screenshot(path=str(ARTIFACTS / "demo-dashboard-dedup.png"), full_page=True)
