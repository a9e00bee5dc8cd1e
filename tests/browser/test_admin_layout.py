"""The dashboard in headless Chromium as a reader sees it: test-mode badges, and a phone.

A pixel with a `test_event_code` gets a badge saying its events go to Meta's Test Events and
not to ads; a live pixel gets none. At phone width (390 by 844) the page does not scroll
sideways, the chart fills the width with tick labels of at least 10 CSS px that do not
overlap, and wide tables scroll inside their own box. The screenshot is
tests/artifacts/admin-phone.png.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp

from gateway.edge.appkeys import RUNTIME
from tests.browser.conftest import Gateway, StartGateway, Tab
from tests.browser.site import PIXEL
from tests.browser.test_pixel import ARTIFACTS, WAIT
from tests.conftest import auth, wait_for, web_event
from tests.fakes.graph import FakeGraph

OpenTab = Callable[..., Awaitable[Tab]]
TEST_PIXEL = "987654321098765"
PHONE = {
    "viewport": {"width": 390, "height": 844},
    "device_scale_factor": 2,
    "is_mobile": True,
    "has_touch": True,
}
NAMES = ("PageView", "ViewContent", "AddToCart", "InitiateCheckout", "Purchase")

# Every visible tick label of the chart: its text, its font size as drawn (the computed size
# times the scale of the SVG it sits in) and its box on the screen.
LABELS_JS = """
() => [...document.querySelectorAll('#traffic text.axis')]
  .filter((t) => getComputedStyle(t).display !== 'none' && t.getBBox().width > 0)
  .map((t) => {
    const r = t.getBoundingClientRect();
    const m = t.getScreenCTM();
    return {
      text: t.textContent,
      time: t.classList.contains('time'),
      px: parseFloat(getComputedStyle(t).fontSize) * Math.hypot(m.a, m.b),
      left: r.left, right: r.right, top: r.top, bottom: r.bottom,
    };
  })
"""


async def post_events(gw: Gateway, events: list[dict[str, Any]]) -> None:
    """Send `events` through the events API."""
    async with aiohttp.ClientSession() as http:
        resp = await http.post(gw.url + "/_capi/events", json={"data": events}, headers=auth())
        assert resp.status == 202, await resp.text()


def settled(buffer: Path) -> bool:
    """Whether every row of the buffer has been sent or has died."""
    with sqlite3.connect(buffer) as conn:
        (waiting,) = conn.execute(
            "SELECT COUNT(*) FROM events WHERE state NOT IN ('sent', 'dead')"
        ).fetchone()
    return bool(waiting == 0)


def spread_over_the_hour(buffer: Path) -> None:
    """Date the rows back over the last hour, as if they had come in minute after minute.

    Blocking: call it off the event loop. The gateway runs in this process, and a write
    transaction of its own (a sender's claim) can be open across an await; run on the loop,
    this write would wait out its busy timeout for a COMMIT the blocked loop never sends.
    """
    now = time.time()
    with sqlite3.connect(buffer) as conn:
        ids = [r[0] for r in conn.execute("SELECT id FROM events ORDER BY id")]
        conn.executemany(
            "UPDATE events SET created_at = ? WHERE id = ?",
            [(now - 60 * ((i * 7) % 60), row) for i, row in enumerate(ids)],
        )


def overlapping(labels: list[dict[str, Any]]) -> list[tuple[str, str]]:
    """Pairs of labels whose boxes intersect."""
    pairs = []
    for i, a in enumerate(labels):
        for b in labels[i + 1 :]:
            if (
                a["left"] < b["right"]
                and b["left"] < a["right"]
                and a["top"] < b["bottom"]
                and b["top"] < a["bottom"]
            ):
                pairs.append((a["text"], b["text"]))
    return pairs


async def chart_labels(tab: Tab) -> list[dict[str, Any]]:
    """The chart's visible tick labels, as LABELS_JS measures them."""
    labels = await tab.page.evaluate(LABELS_JS)
    assert isinstance(labels, list)
    return labels


async def test_a_test_mode_badge_for_each_pixel_in_test_mode_and_none_for_live_ones(
    start_gateway: StartGateway, open_tab: OpenTab, fake_graph: FakeGraph, tmp_path: Path
) -> None:
    pixels = [{"id": PIXEL}, {"id": TEST_PIXEL, "test_event_code": "TEST123"}]
    gw = await start_gateway(pixels=pixels, pixel_id=[])
    await post_events(gw, [web_event(event_id=f"order-{n}") for n in range(3)])
    await wait_for(lambda: settled(gw.app[RUNTIME].settings.buffer), timeout=WAIT)
    tab = await open_tab(viewport={"width": 1280, "height": 900})
    await tab.page.goto(gw.url + "/_capi/admin")

    badges = tab.page.locator(".test-mode li")
    assert await badges.count() == 1
    badge = badges.first
    assert await badge.get_attribute("data-pixel") == TEST_PIXEL
    text = " ".join((await badge.inner_text()).split())
    assert text.startswith("TEST MODE")
    assert f"Pixel {TEST_PIXEL}" in text and "Test Events (code TEST123), not to your ads" in text
    assert PIXEL not in text
    # Clearly visible: on the first screen, above the chart, in its own warning colours.
    box = await badge.bounding_box()
    assert box is not None and box["y"] + box["height"] < 900 and box["height"] >= 20
    chart = await tab.page.locator("#traffic").bounding_box()
    assert chart is not None and box["y"] < chart["y"]
    # ...and as wide as the sections below it, edge to edge.
    assert abs(box["x"] - chart["x"]) < 1
    assert abs(box["x"] + box["width"] - chart["x"] - chart["width"]) < 1
    colours = await badge.evaluate(
        "(e) => [getComputedStyle(e).backgroundColor, getComputedStyle(e).color]"
    )
    page = await tab.page.evaluate(
        "[getComputedStyle(document.body).backgroundColor, getComputedStyle(document.body).color]"
    )
    assert colours[0] not in (page[0], "rgba(0, 0, 0, 0)") and colours[1] != page[1]
    # At desktop width the chart has all five time labels, none over another.
    labels = await chart_labels(tab)
    times = [x["text"] for x in labels if x["time"]]
    assert times == ["-60 min", "-45", "-30", "-15", "now"]
    assert overlapping(labels) == []

    # Without any test_event_code: no badge at all.
    live = await start_gateway(pixels=[{"id": PIXEL}], pixel_id=[], buffer=tmp_path / "live.db")
    await tab.page.goto(live.url + "/_capi/admin")
    assert await tab.page.locator("#traffic").count() == 1
    assert await tab.page.locator(".test-mode").count() == 0
    assert "TEST MODE" not in await tab.page.locator("body").inner_text()


async def test_the_dashboard_reads_well_at_phone_width(
    start_gateway: StartGateway, open_tab: OpenTab, fake_graph: FakeGraph, tmp_path: Path
) -> None:
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "shop.toml").write_text(
        '[[rule]]\nname = "view-product"\nevent = "ViewContent"\npath = "/product"\n'
        '\n[[rule]]\nname = "contact-form-with-a-long-name"\nevent = "Lead"\n'
        'method = "POST"\npath = "/contact"\n'
    )
    gw = await start_gateway(
        pixels=[{"id": PIXEL, "test_event_code": "TEST123"}], pixel_id=[], rules=rules
    )
    # An hour of traffic: five event names, busiest first, and two orders Meta refuses.
    fake_graph.reject_event_ids(["order-bad-1", "order-bad-2"])
    events = [
        web_event(event_name=name, event_id=f"{name}-{n}")
        for k, name in enumerate(NAMES)
        for n in range(90 - 15 * k)
    ]
    events += [web_event(event_id=f"order-bad-{n}") for n in (1, 2)]
    await post_events(gw, events)
    buffer = gw.app[RUNTIME].settings.buffer
    await wait_for(lambda: settled(buffer), timeout=WAIT)
    await asyncio.to_thread(spread_over_the_hour, buffer)

    tab = await open_tab(**PHONE)
    await tab.page.goto(gw.url + "/_capi/admin")
    page = tab.page
    width = 390
    assert await page.evaluate("window.innerWidth") == width
    assert await page.locator("table.dead tbody tr").count() == 2
    # No sideways scrolling of the page.
    assert await page.evaluate("document.documentElement.scrollWidth") <= width
    # The chart fills the width and stays inside it, with bars still wide enough to see.
    frame = await page.locator("#traffic .chart-frame").bounding_box()
    assert frame is not None
    assert frame["x"] >= 0 and frame["x"] + frame["width"] <= width
    assert frame["width"] >= 0.85 * width and frame["height"] >= 180
    bars = await page.locator("svg.chart rect").evaluate_all(
        "(rs) => rs.map((r) => r.getBoundingClientRect().width)"
    )
    assert len(bars) >= 60 and min(bars) >= 2.5
    # Tick labels: large enough to read, none over another, none cut off at an edge.
    labels = await chart_labels(tab)
    times = [x["text"] for x in labels if x["time"]]
    assert times[0] == "-60 min" and "-30" in times and times[-1] == "now", times
    assert len(labels) - len(times) >= 2, labels  # the count axis
    small = [(x["text"], round(x["px"], 1)) for x in labels if x["px"] < 10]
    assert small == []
    assert overlapping(labels) == []
    assert all(x["left"] >= 0 and x["right"] <= width for x in labels), labels
    # The test-mode badge wraps inside the screen.
    badge = await page.locator(".test-mode li").bounding_box()
    section = await page.locator("#traffic").bounding_box()
    assert badge is not None and section is not None
    assert abs(badge["x"] - section["x"]) < 1 and abs(badge["width"] - section["width"]) < 1
    assert badge["x"] >= 0 and badge["x"] + badge["width"] <= width
    # Wide tables scroll inside their own box; the page around them does not move.
    boxes = await page.evaluate(
        """() => [...document.querySelectorAll('main table')].map((t) => {
          const box = t.parentElement;
          const r = box.getBoundingClientRect();
          return {
            table: t.className, overflow: getComputedStyle(box).overflowX,
            left: r.left, right: r.right, wide: box.scrollWidth > box.clientWidth,
          };
        })"""
    )
    assert {b["table"] for b in boxes} >= {"dead", "coverage", "dedup", "rules"}
    for b in boxes:
        assert b["left"] >= 0 and b["right"] <= width, b
        assert b["overflow"] == "auto" or not b["wide"], b
    assert any(b["wide"] for b in boxes)
    scrolled = await page.evaluate(
        """() => {
          const box = document.querySelector('table.coverage').parentElement;
          box.scrollLeft = 10000;
          return [box.scrollLeft, window.scrollX];
        }"""
    )
    assert scrolled[0] > 0 and scrolled[1] == 0
    await page.evaluate("document.querySelector('table.coverage').parentElement.scrollLeft = 0")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shot = ARTIFACTS / "admin-phone.png"
    await page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 20_000
