"""Slow uploads on loopback, as slowhttptest sends them: a body trickling in byte by byte
must not hold the pooled upstream connections that every other visitor needs."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator

from tests.conftest import UA
from tests.edge.conftest import StartGateway
from tests.fakes.upstream import Front


@contextlib.asynccontextmanager
async def trickling(
    gw: Front, count: int, *, length: int = 1000, gap: float = 0.2, ip: str | None = None
) -> AsyncIterator[list[asyncio.StreamReader]]:
    """`count` POSTs that send their headers and then one body byte every `gap` seconds."""
    conns = []
    for i in range(count):
        reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
        forwarded = ip or f"198.51.100.{i + 1}"
        writer.write(
            f"POST /upload HTTP/1.1\r\nHost: shop\r\nX-Forwarded-For: {forwarded}\r\n"
            f"Content-Type: application/octet-stream\r\nContent-Length: {length}\r\n\r\n".encode()
        )
        conns.append((reader, writer))

    async def drip() -> None:
        while True:
            for _, writer in conns:
                if not writer.is_closing():
                    writer.write(b"x")
            await asyncio.sleep(gap)

    task = asyncio.create_task(drip())
    try:
        await asyncio.sleep(0.3)  # let them all reach the gateway
        yield [reader for reader, _ in conns]
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        for _, writer in conns:
            writer.transport.abort()


async def page_status(gw: Front, ip: str = "192.0.2.44") -> int:
    headers = {"User-Agent": UA, "Accept": "text/html", "X-Forwarded-For": ip}
    async with gw.session.get(gw.url + "/html", headers=headers) as resp:
        await resp.read()
        return resp.status


async def test_slow_small_uploads_hold_no_upstream_connection(start: StartGateway) -> None:
    gw = await start(upstream_connections=4, upstream_connect_timeout=1.0)
    async with trickling(gw, 12):
        began = time.monotonic()
        assert await page_status(gw) == 200
        assert time.monotonic() - began < 1.0


async def test_one_address_cannot_take_the_whole_pool(start: StartGateway) -> None:
    gw = await start(
        upstream_connections=4,
        upstream_connections_per_client=2,
        upstream_connect_timeout=1.0,
        request_buffer_kb=0,  # stream every body: only the share protects the pool
    )
    async with trickling(gw, 4, ip="203.0.113.66") as readers:
        refused = 0
        for reader in readers:
            with contextlib.suppress(TimeoutError):
                line = await asyncio.wait_for(reader.readline(), 0.5)
                refused += b" 503 " in line
        assert refused == 2
        assert await page_status(gw) == 200  # another address still gets the site


async def test_a_body_below_the_minimum_rate_is_cut_off(start: StartGateway) -> None:
    gw = await start(client_body_timeout=1.0, client_body_min_rate=50, request_buffer_kb=0)
    # A byte every 0.3 s never pauses for client_body_timeout: only the rate catches it.
    async with trickling(gw, 1, length=100_000, gap=0.3) as readers:
        began = time.monotonic()
        line = await asyncio.wait_for(readers[0].readline(), 6)
        assert b" 408 " in line, line
        assert time.monotonic() - began < 4


async def test_a_small_body_still_reaches_the_site_whole(gw: Front) -> None:
    for size in (0, 1, 65535, 65536, 65537, 300_000):
        data = bytes(range(256)) * (size // 256) + b"z" * (size % 256)
        async with gw.session.post(gw.url + "/upload", data=data) as resp:
            assert resp.status == 200
            assert (await resp.json())["length"] == size
