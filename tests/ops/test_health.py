"""`GET /_capi/health`: liveness always, readiness only while an event offered now is stored.

The buffer is really filled past a tiny `max_buffer_mb` through the events API (Meta
refuses the token, so nothing is delivered or purgeable), then emptied the way an
operator's `queue purge` does, on the same SQLite file.
"""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path
from typing import Any

from aiohttp.test_utils import TestClient

from gateway import __version__
from tests.conftest import GatewayFactory, auth, wait_for, web_event
from tests.fakes.graph import FakeGraph

# An empty buffer uses about 45 KB; 200 events about 180 KB more.
SMALL_MB = 0.1


async def health(client: TestClient[Any, Any], query: str = "") -> tuple[int, dict[str, Any]]:
    resp = await client.get("/_capi/health" + query)
    assert resp.headers["Cache-Control"] == "no-store"
    return resp.status, await resp.json()


async def fill(client: TestClient[Any, Any], count: int = 200) -> None:
    data = [web_event(event_id=f"fill-{i}") for i in range(count)]
    resp = await client.post("/_capi/events", json={"data": data}, headers=auth())
    assert resp.status == 202, await resp.text()


def delivered(tmp_path: Path) -> int:
    with sqlite3.connect(tmp_path / "outbox.db") as conn:
        return int(conn.execute("SELECT COUNT(*) FROM events WHERE state='sent'").fetchone()[0])


async def test_ready_gateway_reports_its_checks(gateway: GatewayFactory) -> None:
    client = await gateway()
    status, body = await health(client)
    assert status == 200
    assert body["status"] == "ok" and body["live"] is True and body["ready"] is True
    assert body["version"] == __version__
    assert body["checks"]["outbox"]["ok"] is True
    buffer = body["checks"]["buffer"]
    assert buffer["ok"] is True and 0 < buffer["used_mb"] < buffer["max_mb"] == 1024


async def test_over_max_buffer_mb_is_not_ready_until_it_drains(
    gateway: GatewayFactory, fake_graph: FakeGraph, tmp_path: Path
) -> None:
    client = await gateway(max_buffer_mb=SMALL_MB)
    assert (await health(client))[0] == 200
    # Meta refuses the token: the events are parked, nothing delivered to purge.
    fake_graph.fail_next(1, status=400, code=190)
    await fill(client)
    status, body = await health(client)
    assert status == 503
    assert body["status"] == "not ready" and body["ready"] is False and body["live"] is True
    check = body["checks"]["buffer"]
    assert check["ok"] is False and check["used_mb"] > check["max_mb"] == SMALL_MB
    assert "max_buffer_mb" in check["detail"]
    assert body["checks"]["outbox"]["ok"] is True
    # Liveness is unaffected: restarting would not free the disk.
    assert (await health(client, "?live"))[0] == 200
    # And the verdict is the outbox's: once its size check runs again (at most once a
    # second), it turns new events away.
    await asyncio.sleep(1.05)
    resp = await client.post(
        "/_capi/events", json={"data": [web_event(event_id="one-more")]}, headers=auth()
    )
    assert resp.status == 503

    # The operator purges the parked events (what `queue purge --state blocked` does).
    with sqlite3.connect(tmp_path / "outbox.db") as conn:
        conn.execute("DELETE FROM events")
    status, body = await health(client)
    assert status == 200, body
    assert body["checks"]["buffer"]["used_mb"] < SMALL_MB


async def test_over_the_bound_with_delivered_rows_makes_room_and_recovers(
    gateway: GatewayFactory, fake_graph: FakeGraph, tmp_path: Path
) -> None:
    client = await gateway(max_buffer_mb=SMALL_MB)
    await fill(client)
    await wait_for(lambda: len(fake_graph.events) == 200)
    await wait_for(lambda: delivered(tmp_path) == 200)
    # Out of rotation nobody sends events, so the checks themselves give the delivered
    # rows' room back, the oldest half at a time, until the buffer fits again.
    statuses = [(await health(client))[0] for _ in range(5)]
    assert statuses[-1] == 200, statuses
    assert 0 < delivered(tmp_path) < 200
    await asyncio.sleep(1.05)  # the outbox's own size check runs again
    resp = await client.post(
        "/_capi/events", json={"data": [web_event(event_id="after")]}, headers=auth()
    )
    assert resp.status == 202
