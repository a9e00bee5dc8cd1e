"""Shared fixtures: a fake Graph API on loopback and the gateway app in front of it."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from hypothesis import settings as hypothesis_settings

from gateway.app import build_app
from gateway.settings import Settings
from tests.fakes.graph import FakeGraph, start_fake_graph

# PostgreSQL (postgres_dsn, postgres_cluster) and both store backends (store, store_location).
pytest_plugins = ["tests.postgres", "tests.delivery.stores"]

# No per-example deadline in any property (Hypothesis' default is 200 ms): on a loaded
# 2-core machine a 0.3 ms example once took 470 ms and failed the run. Wall-clock limits
# there measure the machine; pytest's per-test timeout still catches a hang. Loaded here,
# before the test modules build their own settings on top of it.
hypothesis_settings.register_profile("capigw", deadline=None)
hypothesis_settings.load_profile("capigw")

PIXEL = "123456789012345"
TOKEN = "EAAB-test-token-not-real"
API_KEY = "test-api-key-0123456789"
UA = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 Chrome/156 Safari/537.36"


@pytest.fixture
async def fake_graph() -> AsyncIterator[FakeGraph]:
    """A fake graph.facebook.com on 127.0.0.1 that records what it receives."""
    async with start_fake_graph(token=TOKEN) as fake:
        yield fake


def make_settings(tmp_path: Path, graph_url: str, **overrides: Any) -> Settings:
    """Settings for a gateway on a temp buffer, sending to `graph_url` quickly."""
    values: dict[str, Any] = {
        "pixel_id": [PIXEL],
        "access_token": TOKEN,
        "graph_url": graph_url,
        "buffer": tmp_path / "outbox.db",
        "events_api_keys": [API_KEY],
        "poll_interval": 0.05,
        "retry_base": 0.05,
        "retry_cap": 0.2,
        "send_timeout": 1.0,
        "group_commit_ms": 2,
        "shutdown_grace": 2,
        # Tests that look at a PageView's delivery should not wait for a beacon first.
        "pageview_hold": 0,
        # Likewise an event does not wait for copies of it, unless a test asks.
        "assembly_hold": 0,
        # Nor a retried row for the sender's linger (tests of the linger set it).
        "send_linger": 0,
    }
    values.update(overrides)
    return Settings.model_validate(values)


GatewayFactory = Callable[..., Awaitable[TestClient[Any, Any]]]


@pytest.fixture
async def gateway(tmp_path: Path, fake_graph: FakeGraph) -> AsyncIterator[GatewayFactory]:
    """Start the gateway app in-process; call with settings overrides."""
    clients: list[TestClient[Any, Any]] = []

    async def start(**overrides: Any) -> TestClient[Any, Any]:
        settings = make_settings(tmp_path, fake_graph.url, **overrides)
        client: TestClient[Any, Any] = TestClient(TestServer(build_app(settings)))
        await client.start_server()
        clients.append(client)
        return client

    yield start
    for client in clients:
        await client.close()


def web_event(**fields: Any) -> dict[str, Any]:
    """A valid website event; override any field."""
    event: dict[str, Any] = {
        "event_name": "Purchase",
        "event_time": int(time.time()),
        "event_source_url": "https://shop.example/thanks",
        "user_data": {"email": "Jane@Example.com", "user_agent": UA, "ip": "203.0.113.7"},
        "custom_data": {"value": 19.9, "currency": "EUR"},
    }
    event.update(fields)
    return event


def auth() -> dict[str, str]:
    """The Authorization header of the test API key."""
    return {"Authorization": f"Bearer {API_KEY}"}


async def wait_for(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    """Poll until `predicate()` holds or fail the test after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.02)
