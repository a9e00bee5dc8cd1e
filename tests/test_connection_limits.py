"""Connections are bounded, in all and per client address: a subprocess gateway, raw sockets.

A prober opening thousands of idle sockets must get a quick 503 past the bound instead of
one handler (and its memory) each; a proxy in `trusted_proxies` is exempt from the
per-address bound, as every visitor comes through it.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fakes.processes import (
    HOST,
    Gateway,
    clean_env,
    free_port,
    gateway_cmd,
    serve_args,
    spawn,
    stop_process,
    tail,
)
from tests.test_proxy_process import Site, start_site


def start_limited(tmp: Path, upstream: str, **env: str) -> Gateway:
    port = free_port()
    log = tmp / f"gateway-{port}.log"
    args = serve_args(port, tmp / f"outbox-{port}.db", "--upstream", upstream, "--dry-run")
    gw = Gateway(
        spawn([*gateway_cmd(), *args], log, env=clean_env(**env)), f"http://{HOST}:{port}", log
    )
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if gw.proc.poll() is not None:
            raise AssertionError(f"the gateway exited with {gw.proc.returncode}:\n{tail(log)}")
        conn = http.client.HTTPConnection(HOST, port, timeout=2)
        with contextlib.suppress(OSError):
            conn.request("GET", "/_capi/health")
            if conn.getresponse().status == 200:
                conn.close()
                return gw
        conn.close()
        time.sleep(0.05)
    stop_process(gw.proc)
    raise AssertionError(f"the gateway did not become healthy:\n{tail(log)}")


@pytest.fixture
def site(tmp_path: Path) -> Iterator[Site]:
    site = start_site(tmp_path / "upstream.log")
    try:
        yield site
    finally:
        stop_process(site.proc, grace=2)


async def open_idle(
    gw: Gateway, count: int
) -> list[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    port = int(gw.url.rsplit(":", 1)[1])
    return [await asyncio.open_connection(HOST, port) for _ in range(count)]


async def refused(conns: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]]) -> int:
    """How many of `conns` were answered 503 and closed without sending a request."""

    async def one(reader: asyncio.StreamReader) -> bool:
        with contextlib.suppress(TimeoutError, ConnectionError):
            data = await asyncio.wait_for(reader.read(), 0.5)
            return data.startswith(b"HTTP/1.1 503 ")
        return False

    return sum(await asyncio.gather(*(one(reader) for reader, _ in conns)))


def get_status(gw: Gateway, path: str = "/html") -> int:
    port = int(gw.url.rsplit(":", 1)[1])
    conn = http.client.HTTPConnection(HOST, port, timeout=5)
    try:
        conn.request("GET", path, headers={"Accept": "text/html"})
        return conn.getresponse().status
    finally:
        conn.close()


async def test_connections_past_max_connections_are_refused(tmp_path: Path, site: Site) -> None:
    gw = start_limited(tmp_path, site.url, CAPIGW_MAX_CONNECTIONS="40")
    try:
        conns = await open_idle(gw, 55)
        assert await refused(conns) == 15
        assert gw.proc.poll() is None
        for _, writer in conns:
            writer.transport.abort()
        await asyncio.sleep(0.3)
        assert get_status(gw) == 200  # the count went back down
    finally:
        stop_process(gw.proc, grace=2)
    assert "Refusing connections" in gw.log.read_text()


async def test_one_peer_cannot_take_every_connection(tmp_path: Path, site: Site) -> None:
    # Loopback is not a trusted proxy here, so it is a client like any other.
    env = {"CAPIGW_MAX_CONNECTIONS_PER_CLIENT": "10", "CAPIGW_TRUSTED_PROXIES": "10.9.9.9/32"}
    gw = start_limited(tmp_path, site.url, **env)
    try:
        conns = await open_idle(gw, 14)
        assert await refused(conns) == 4
        for _, writer in conns:
            writer.transport.abort()
    finally:
        stop_process(gw.proc, grace=2)


async def test_a_trusted_proxy_is_not_bound_per_peer(tmp_path: Path, site: Site) -> None:
    gw = start_limited(tmp_path, site.url, CAPIGW_MAX_CONNECTIONS_PER_CLIENT="10")
    try:
        conns = await open_idle(gw, 14)
        assert await refused(conns) == 0
        for _, writer in conns:
            writer.transport.abort()
    finally:
        stop_process(gw.proc, grace=2)
