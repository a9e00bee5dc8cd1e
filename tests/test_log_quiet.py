"""What clients can make the gateway write to its log: a subprocess gateway and its log file.

A visitor who leaves mid-download and a prober sending malformed requests are the Internet
being itself: at most one quiet, rate-limited line about them, never a traceback, and never
the bytes they sent (aiohttp's parser errors quote the request line and headers).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fakes.processes import HOST, Gateway, stop_process
from tests.test_proxy_process import Site, start_proxy, start_site

SECRET_COOKIE = "sessionid=c00k1e-v4lue-never-logged"
EMAIL = "jane.doe%40example.com"

MALFORMED = [
    # Content-Length and Transfer-Encoding together (a smuggling attempt).
    f"POST /a?email={EMAIL} HTTP/1.1\r\nHost: shop\r\nCookie: {SECRET_COOKIE}\r\n"
    "Content-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    # Space before the colon.
    f"GET /b?email={EMAIL} HTTP/1.1\r\nHost : shop\r\nCookie: {SECRET_COOKIE}\r\n\r\n",
    # A NUL in a header value.
    f"GET /c?email={EMAIL} HTTP/1.1\r\nHost: shop\r\nCookie: {SECRET_COOKIE}\x00\r\n\r\n",
    # Two differing Content-Lengths.
    f"POST /d?email={EMAIL} HTTP/1.1\r\nHost: shop\r\nCookie: {SECRET_COOKIE}\r\n"
    "Content-Length: 1\r\nContent-Length: 2\r\n\r\nxx",
    # A bad chunk size.
    f"POST /e?email={EMAIL} HTTP/1.1\r\nHost: shop\r\nCookie: {SECRET_COOKIE}\r\n"
    "Transfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n",
    # A request line that is not one.
    f"GET /f?email={EMAIL} HTTP/1.1 {SECRET_COOKIE}\r\nHost: shop\r\n\r\n",
]


@pytest.fixture
def procs(tmp_path: Path) -> Iterator[tuple[Site, Gateway]]:
    site = start_site(tmp_path / "upstream.log")
    try:
        gw = start_proxy(tmp_path, site.url)
    except BaseException:
        stop_process(site.proc)
        raise
    try:
        yield site, gw
    finally:
        stop_process(gw.proc, grace=5)
        stop_process(site.proc, grace=2)


def port_of(gw: Gateway) -> int:
    return int(gw.url.rsplit(":", 1)[1])


async def leave_mid_download(gw: Gateway, path: str) -> None:
    reader, writer = await asyncio.open_connection(HOST, port_of(gw))
    writer.write(f"GET {path} HTTP/1.1\r\nHost: shop.example\r\nAccept: text/html\r\n\r\n".encode())
    got = 0
    while got < 128 * 1024:
        chunk = await asyncio.wait_for(reader.read(65536), 5)
        if not chunk:
            break
        got += len(chunk)
    writer.transport.abort()  # the visitor closed the tab


async def send_malformed(gw: Gateway, request: str) -> bytes:
    reader, writer = await asyncio.open_connection(HOST, port_of(gw))
    try:
        writer.write(request.encode("latin-1"))
        await writer.drain()
        return await asyncio.wait_for(reader.read(), 5)
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


async def test_clients_cannot_write_tracebacks_or_their_bytes_into_the_log(
    procs: tuple[Site, Gateway],
) -> None:
    _, gw = procs
    for _ in range(3):
        await asyncio.gather(
            *(leave_mid_download(gw, "/stream/20?delay_ms=2") for _ in range(10)),
            *(leave_mid_download(gw, "/bytes/2000000?ct=text/html") for _ in range(5)),
        )
        answers = await asyncio.gather(*(send_malformed(gw, r) for r in MALFORMED))
        for answer in answers:
            assert answer.split(b"\r\n", 1)[0].endswith(b" 400 Bad Request"), answer[:200]
    await asyncio.sleep(0.5)
    stop_process(gw.proc, grace=5)
    text = gw.log.read_text(errors="replace")
    assert "Traceback" not in text, text[-3000:]
    assert "c00k1e-v4lue" not in text, text[-3000:]
    assert "jane.doe" not in text, text[-3000:]
    noisy = [line for line in text.splitlines() if '"level": "error"' in line]
    assert not noisy, noisy[:3]
    # One quiet line at most per kind and minute: not one per request.
    quiet = [line for line in text.splitlines() if "malformed" in line or "left" in line]
    assert len(quiet) <= 4, quiet
