"""`GET /_capi/status` and the admin guard shared by `/status`, `/metrics` and `/admin`.

Status must say what is configured without giving a secret away, and answer only a
holder of the admin token or, without one, a local peer. The peer that counts is the TCP
socket's: forwarded headers neither let a stranger in nor lock a local client out. A
non-local peer is made two ways: `admin_networks` narrowed to `::1/128` while the test
connects over 127.0.0.1 (always possible), and the gateway bound to this host's own
non-loopback address, when it has one.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from gateway.app import build_app
from tests.conftest import (
    API_KEY,
    PIXEL,
    TOKEN,
    GatewayFactory,
    auth,
    make_settings,
    wait_for,
    web_event,
)
from tests.fakes.graph import FakeGraph
from tests.fakes.upstream import run_gateway

ADMIN = "admin-token-0123456789abcdef"
APP_SECRET = "app-secret-value-987654321"


async def test_status_masks_pixel_ids_and_never_shows_a_secret(
    gateway: GatewayFactory, fake_graph: FakeGraph
) -> None:
    client = await gateway(app_secret=APP_SECRET, test_event_code="TEST4242")
    ok = await client.post("/_capi/events", json={"data": [web_event()]}, headers=auth())
    assert ok.status == 202
    await wait_for(lambda: len(fake_graph.events) == 1)
    # Meta's message may quote the pixel (and, were it ever so careless, the token).
    fake_graph.fail_next(
        1, status=400, code=100, message=f"Invalid parameter for {PIXEL} with {TOKEN}"
    )
    bad = await client.post(
        "/_capi/events", json={"data": [web_event(event_id="refused")]}, headers=auth()
    )
    assert bad.status == 202

    async def dead() -> dict[str, Any]:
        resp = await client.get("/_capi/status")
        assert resp.status == 200
        assert resp.headers["Cache-Control"] == "no-store"
        body: dict[str, Any] = await resp.json()
        return body

    deadline = time.monotonic() + 5
    while (body := await dead())["queue"]["states"]["dead"] != 1:
        assert time.monotonic() < deadline, body
        await asyncio.sleep(0.05)
    text = await (await client.get("/_capi/status")).text()
    for secret in (PIXEL, TOKEN, API_KEY, APP_SECRET):
        assert secret not in text

    assert body["configured"] is True and body["mode"] == "sending"
    assert body["test_mode"] is True
    assert body["pixels"] == [
        {"id": PIXEL[:4] + "****", "token": True, "app_secret": True, "test_mode": True}
    ]
    assert body["events_api_keys"] == 1 and body["admin_token"] is False
    assert body["pid"] == os.getpid() and body["workers"] == 1
    assert body["queue"]["depth"] == 0 and body["queue"]["states"]["sent"] == 1
    assert body["last_success"] is not None and time.time() - body["last_success"] < 60
    error = body["last_error"]
    assert error["pixel_id"] == PIXEL[:4] + "****"
    assert error["fbtrace_id"]
    assert f"Invalid parameter for {PIXEL[:4]}****" in error["message"]
    assert "code 100" in error["message"]


async def test_status_shows_the_upstream_without_its_credentials(
    gateway: GatewayFactory,
) -> None:
    client = await gateway(upstream="http://shop:hunter2pass@127.0.0.1:9")
    body = await (await client.get("/_capi/status")).json()
    assert body["upstream"] == "http://127.0.0.1:9"
    assert "hunter2pass" not in await (await client.get("/_capi/status")).text()


@pytest.mark.parametrize("path", ["/_capi/status", "/_capi/metrics"])
async def test_with_an_admin_token_only_its_bearer_gets_in(
    gateway: GatewayFactory, path: str
) -> None:
    client = await gateway(admin_token=ADMIN)
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": ADMIN}):
        resp = await client.get(path, headers=headers)
        assert resp.status == 401, headers
        assert resp.headers["WWW-Authenticate"].startswith("Bearer")
        body = await resp.json()
        assert body["error"] == "unauthorized" and ADMIN not in str(body)
    resp = await client.get(path, headers={"Authorization": f"Bearer {ADMIN}"})
    assert resp.status == 200
    text = await resp.text()
    assert ADMIN not in text
    if path.endswith("status"):
        assert (await resp.json())["admin_token"] is True


async def test_without_a_token_a_peer_outside_admin_networks_gets_403(
    gateway: GatewayFactory,
) -> None:
    # The test connects from 127.0.0.1, which is not in ::1/128.
    client = await gateway(admin_networks=["::1/128"])
    for path in ("/_capi/status", "/_capi/metrics"):
        # Forwarded headers claiming a local client change nothing: the socket decides.
        for headers in (
            {},
            {"X-Forwarded-For": "::1"},
            {"Forwarded": 'for="[::1]"'},
            {"X-Real-IP": "::1"},
        ):
            resp = await client.get(path, headers=headers)
            assert resp.status == 403, (path, headers)
            body = await resp.json()
            assert body["error"] == "forbidden"
            assert "CAPIGW_ADMIN_TOKEN" in body["detail"] and "--admin-token" in body["detail"]
    # The public endpoints stay public.
    assert (await client.get("/_capi/health")).status == 200


async def test_a_local_peer_forwarding_a_visitor_is_not_local(gateway: GatewayFactory) -> None:
    # Behind nginx on the same host every peer is loopback: the visitor it names decides.
    client = await gateway()
    resp = await client.get("/_capi/status", headers={"X-Forwarded-For": "203.0.113.9"})
    assert resp.status == 403


async def test_a_local_peer_seen_as_ipv4_mapped_is_local(
    tmp_path: Path, fake_graph: FakeGraph
) -> None:
    # A dual-stack listener sees a local client as ::ffff:127.0.0.1: inside 127.0.0.0/8.
    settings = make_settings(tmp_path, fake_graph.url)
    async with (
        run_gateway(settings, dual_stack=True) as gw,
        gw.session.get(gw.url + "/_capi/status") as resp,
    ):
        assert resp.status == 200
    settings = make_settings(tmp_path, fake_graph.url, admin_networks=["::1/128"])
    async with (
        run_gateway(settings, dual_stack=True) as gw,
        gw.session.get(gw.url + "/_capi/status") as resp,
    ):
        assert resp.status == 403


async def test_admin_networks_empty_lets_nobody_in_without_a_token(
    gateway: GatewayFactory,
) -> None:
    client = await gateway(admin_networks=[])
    assert (await client.get("/_capi/status")).status == 403


def _own_address() -> str | None:
    """This host's non-loopback IPv4 address, if it has one (no packet is sent)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.1", 9))  # TEST-NET-1: picks the outgoing interface
        except OSError:
            return None
        address = str(probe.getsockname()[0])
    return None if address.startswith("127.") or address == "0.0.0.0" else address


@contextlib.asynccontextmanager
async def serve_on(
    address: str, tmp_path: Path, graph_url: str, **overrides: Any
) -> AsyncIterator[str]:
    runner = web.AppRunner(build_app(make_settings(tmp_path, graph_url, **overrides)))
    await runner.setup()
    site = web.TCPSite(runner, address, 0)
    await site.start()
    server = site._server
    assert server is not None
    port = server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]
    try:
        yield f"http://{address}:{port}"
    finally:
        await runner.cleanup()


async def test_a_peer_on_this_hosts_own_address_is_not_local(
    tmp_path: Path, fake_graph: FakeGraph
) -> None:
    address = _own_address()
    if address is None:
        pytest.skip("this host has no non-loopback IPv4 address")
    async with (
        serve_on(address, tmp_path, fake_graph.url) as url,
        aiohttp.ClientSession() as session,
    ):
        for path in ("/_capi/status", "/_capi/metrics"):
            async with session.get(url + path) as resp:
                assert resp.status == 403, path
                assert "admin_token" in (await resp.json())["detail"]
    async with (
        serve_on(address, tmp_path, fake_graph.url, admin_token=ADMIN) as url,
        aiohttp.ClientSession() as session,
        session.get(url + "/_capi/status", headers={"Authorization": f"Bearer {ADMIN}"}) as resp,
    ):
        assert resp.status == 200
