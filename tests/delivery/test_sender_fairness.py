"""Per-pixel fairness: one pixel's backlog, rate limit or slow answers never hold another's sends.

The gateway in-process with two pixels, delivering to the fake Graph API.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from tests.conftest import API_KEY, TOKEN, make_settings, wait_for
from tests.fakes.graph import FakeGraph
from tests.fakes.upstream import Front, run_gateway

BUSY = "111111111111"
QUIET = "222222222222"


def event(pixel: str, event_id: str) -> dict[str, Any]:
    return {
        "event_name": "Purchase",
        "event_id": event_id,
        "event_time": int(time.time()),
        "action_source": "system_generated",
        "pixel_id": pixel,
        "user_data": {"external_id": "cust-1"},
        "custom_data": {"value": 10, "currency": "EUR"},
    }


async def post(gw: Front, *events: dict[str, Any]) -> None:
    headers = {"Authorization": f"Bearer {API_KEY}"}
    async with gw.session.post(
        gw.url + "/_capi/events", json={"data": list(events)}, headers=headers
    ) as resp:
        assert resp.status == 202, await resp.text()


async def test_a_throttled_pixels_backlog_does_not_hold_another_pixels_event(
    tmp_path: Path, fake_graph: FakeGraph
) -> None:
    settings = make_settings(
        tmp_path,
        fake_graph.url,
        pixel_id=[],
        pixels=[{"id": BUSY, "access_token": TOKEN}, {"id": QUIET, "access_token": TOKEN}],
        batch_size=1,
        pixel_rate=1,
        pixel_burst=1,
        send_concurrency=4,
    )
    async with run_gateway(settings) as gw:
        # One send per second for the busy pixel: its 12 events take 12 s to drain.
        for n in range(12):
            await post(gw, event(BUSY, f"busy-{n}"))
        await wait_for(lambda: len(fake_graph.events) >= 1)
        await post(gw, event(QUIET, "quiet"))
        started = time.monotonic()
        await wait_for(lambda: "quiet" in fake_graph.event_ids(), timeout=4)
        waited = time.monotonic() - started
        busy_sent = sum(1 for e in fake_graph.event_ids() if str(e).startswith("busy-"))
    # Without fairness every send slot waits on the busy pixel's rate limit, and the quiet
    # pixel's event goes out only after the whole backlog (about 11 s).
    assert waited < 3, waited
    assert busy_sent < 12
