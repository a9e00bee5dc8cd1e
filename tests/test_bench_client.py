"""The replica benchmark's own HTTP client (`bench/bench_replicas.py`): what it counts as
accepted must be what a server answered, over the connections it says it opened."""

from __future__ import annotations

import json
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))

import bench_replicas
from bench_events import API_KEY


class _Server:
    """A loopback server that reads each posted batch whole and answers like `/events`."""

    def __init__(self) -> None:
        self.events = 0
        self.requests = 0
        self.reject_every = 0  # answer every Nth request 503
        self.close_every = 0  # ask the client to close after every Nth request

    async def handle(self, request: web.Request) -> web.Response:
        assert request.headers["Authorization"] == f"Bearer {API_KEY}"
        data = json.loads(await request.read())["data"]
        self.requests += 1
        headers = {}
        if self.close_every and self.requests % self.close_every == 0:
            headers["Connection"] = "close"
        if self.reject_every and self.requests % self.reject_every == 0:
            return web.json_response({"error": "busy"}, status=503, headers=headers)
        self.events += len(data)
        return web.json_response({"accepted": len(data)}, status=202, headers=headers)


@pytest.fixture
async def server() -> AsyncIterator[tuple[_Server, str]]:
    state = _Server()
    app = web.Application(client_max_size=8 * 1024 * 1024)
    app.router.add_post("/_capi/events", state.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield state, f"http://127.0.0.1:{port}/_capi/events"
    finally:
        await runner.cleanup()


async def test_accepted_events_are_those_the_server_took(
    server: tuple[_Server, str], capsys: pytest.CaptureFixture[str]
) -> None:
    """Every 202 counts a batch the server read whole; prepared bodies run out into fresh
    ones; each client keeps one connection per URL."""
    state, url = server
    accepted, errors, _ = await bench_replicas._load([url, url], 3, 0.5, bench_replicas._bodies(0))
    assert errors == 0
    assert accepted == state.events > len(bench_replicas._bodies(0)) * bench_replicas.BATCH
    assert "connections opened by the clients: 6" in capsys.readouterr().out


async def test_refusals_and_closed_connections(
    server: tuple[_Server, str], capsys: pytest.CaptureFixture[str]
) -> None:
    """A refusal is an error, not accepted events; a server's `Connection: close` makes the
    client open another connection rather than post into a closed one."""
    state, url = server
    state.reject_every, state.close_every = 4, 5
    accepted, errors, _ = await bench_replicas._load([url], 1, 0.5, [])
    assert accepted == state.events
    assert errors == state.requests // 4 > 0
    opened = int(capsys.readouterr().out.rsplit(":", 1)[1])
    # Request k (k a multiple of 5) closed its connection; request k + 1 opened another.
    assert opened == 1 + (state.requests - 1) // 5
