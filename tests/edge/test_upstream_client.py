"""The lean upstream client against real loopback origins that misbehave on demand.

Each origin is a raw asyncio server whose per-connection script decides what goes on the
wire, so reuse, retries, timeouts and framing faults are checked on real sockets.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import socket
import struct
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import aiohttp
import pytest
from multidict import CIMultiDict
from yarl import URL

from gateway.edge.upstream import UpstreamClient, UpstreamError, UpstreamResponse, UpstreamTimeout
from tests.edge.conftest import StartGateway
from tests.fakes.processes import free_port

Script = Callable[[asyncio.StreamReader, asyncio.StreamWriter, int], Awaitable[None]]
OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


class Origin:
    """A loopback origin running `script` for each connection (numbered from 0)."""

    def __init__(self, script: Script) -> None:
        self.script = script
        self.connections = 0
        self.open = 0
        self.most_open = 0
        self.closed_by_peer = 0
        self.server: asyncio.Server | None = None
        self.port = 0

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        index = self.connections
        self.connections += 1
        self.open += 1
        self.most_open = max(self.most_open, self.open)
        try:
            await self.script(reader, writer, index)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            self.open -= 1
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    @property
    def url(self) -> URL:
        return URL(f"http://127.0.0.1:{self.port}")


@contextlib.asynccontextmanager
async def origin(script: Script) -> AsyncIterator[Origin]:
    o = Origin(script)
    o.server = await asyncio.start_server(o._serve, "127.0.0.1", 0)
    o.port = o.server.sockets[0].getsockname()[1]
    try:
        yield o
    finally:
        o.server.close()
        await o.server.wait_closed()


@contextlib.asynccontextmanager
async def client(url: URL, **overrides: float) -> AsyncIterator[UpstreamClient]:
    options: dict[str, float] = {
        "limit": 8,
        "keepalive": 4.0,
        "connect_timeout": 2.0,
        "read_timeout": 2.0,
        "total_timeout": 0.0,
        "max_header_bytes": 8192,
    }
    options.update(overrides)
    c = UpstreamClient(
        url,
        limit=int(options["limit"]),
        keepalive=options["keepalive"],
        connect_timeout=options["connect_timeout"],
        read_timeout=options["read_timeout"],
        total_timeout=options["total_timeout"],
        max_header_bytes=int(options["max_header_bytes"]),
    )
    try:
        yield c
    finally:
        await c.close()
        await asyncio.sleep(0.01)  # let the transports finish closing


def headers(host: str = "site") -> CIMultiDict[str]:
    return CIMultiDict({"Host": host})


async def get(c: UpstreamClient, path: str = "/", method: str = "GET") -> tuple[int, bytes]:
    response = await c.request(method, path, headers())
    try:
        return response.status, await response.content.read()
    finally:
        response.release()


async def read_request(reader: asyncio.StreamReader) -> bytes:
    return await reader.readuntil(b"\r\n\r\n")


def answering(*answers: bytes, then_close: bool = False) -> Script:
    """Answer each request on a connection with the next of `answers` (repeating the last)."""

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _: int) -> None:
        n = 0
        while True:
            try:
                await read_request(reader)
            except asyncio.IncompleteReadError:
                return
            writer.write(answers[min(n, len(answers) - 1)])
            await writer.drain()
            n += 1
            if then_close:
                return

    return script


# -- reuse -------------------------------------------------------------------------------------


async def test_a_kept_alive_connection_is_reused() -> None:
    async with origin(answering(OK)) as o, client(o.url) as c:
        for _ in range(3):
            assert await get(c) == (200, b"ok")
        assert o.connections == 1


async def test_the_request_goes_out_as_given() -> None:
    seen: list[bytes] = []

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _: int) -> None:
        seen.append(await read_request(reader))
        writer.write(OK)

    async with origin(script) as o, client(o.url) as c:
        h = CIMultiDict([("Host", "shop"), ("Accept", "a"), ("Accept", "b"), ("X-Y", "€")])
        response = await c.request("GET", "/a%2Fb/%E2%82%AC?x=1;y=2&z=%20+", h)
        response.release()
    assert seen == [
        b"GET /a%2Fb/%E2%82%AC?x=1;y=2&z=%20+ HTTP/1.1\r\nHost: shop\r\nAccept: a\r\n"
        b"Accept: b\r\nX-Y: \xe2\x82\xac\r\n\r\n"
    ]


@pytest.mark.parametrize(
    "answer",
    [
        b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok",
        b"HTTP/1.1 200 OK\r\n\r\nok",  # close-delimited
        b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok",
    ],
)
async def test_no_reuse_after_close_or_close_delimited(answer: bytes) -> None:
    async with origin(answering(answer, then_close=True)) as o, client(o.url) as c:
        assert await get(c) == (200, b"ok")
        assert await get(c) == (200, b"ok")
        assert o.connections == 2


async def test_no_reuse_when_the_body_was_not_read_whole() -> None:
    big = b"HTTP/1.1 200 OK\r\nContent-Length: 1000000\r\n\r\n" + b"x" * 1_000_000

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, i: int) -> None:
        await answering(big if i == 0 else OK)(reader, writer, i)

    async with origin(script) as o, client(o.url) as c:
        response = await c.request("GET", "/", headers())
        await response.content.readany()
        response.release()
        assert await get(c) == (200, b"ok")
        assert o.connections == 2


async def test_bytes_beyond_the_answer_forbid_reuse() -> None:
    extra = OK + b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nbad"
    async with origin(answering(extra)) as o, client(o.url) as c:
        assert await get(c) == (200, b"ok")
        assert await get(c) == (200, b"ok")
        assert o.connections == 2


@pytest.mark.parametrize(
    ("method", "answer"),
    [
        ("HEAD", b"HTTP/1.1 200 OK\r\nContent-Length: 5000\r\n\r\n"),
        ("GET", b"HTTP/1.1 204 No Content\r\n\r\n"),
        ("GET", b'HTTP/1.1 304 Not Modified\r\nETag: "x"\r\n\r\n'),
    ],
)
async def test_bodyless_answers_have_no_body_and_keep_the_connection(
    method: str, answer: bytes
) -> None:
    async with origin(answering(answer, OK)) as o, client(o.url) as c:
        status, body = await get(c, method=method)
        assert body == b"" and status in (200, 204, 304)
        assert await get(c) == (200, b"ok")
        assert o.connections == 1


async def test_chunked_body_and_interim_answers() -> None:
    answer = (
        b"HTTP/1.1 100 Continue\r\n\r\n"
        b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n"
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"
    )
    async with origin(answering(answer, OK)) as o, client(o.url) as c:
        assert await get(c) == (200, b"abcde")
        assert await get(c) == (200, b"ok")
        assert o.connections == 1


# -- the origin closing ------------------------------------------------------------------------


async def _closes_on_the_second(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, i: int
) -> None:
    """An origin whose first connection answers one request and closes on the second
    unanswered; later connections answer every request."""
    await read_request(reader)
    writer.write(OK)
    if i == 0:
        await read_request(reader)  # the second request: closed on, unanswered
        return
    while True:
        await read_request(reader)
        writer.write(OK)


async def test_a_reused_connection_closed_before_the_answer_is_retried_once() -> None:
    async with origin(_closes_on_the_second) as o, client(o.url) as c:
        assert await get(c) == (200, b"ok")
        assert await get(c) == (200, b"ok")  # no spurious 502
        assert o.connections == 2


async def test_meanwhile_runs_once_the_request_is_out_and_before_its_answer() -> None:
    # Issue 19: the page path prepares what it can while the site works on the request.
    received, release = asyncio.Event(), asyncio.Event()

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _: int) -> None:
        await read_request(reader)
        received.set()
        await release.wait()
        writer.write(OK)
        await writer.drain()

    ran: list[str] = []

    async def meanwhile() -> None:
        await received.wait()  # the site has the request already
        ran.append("meanwhile")
        release.set()  # and answers only now

    async with origin(script) as o, client(o.url) as c:
        wire = c.wire("GET", "/", headers())
        response = await c.send("GET", wire, meanwhile)
        try:
            assert (response.status, await response.content.read()) == (200, b"ok")
        finally:
            response.release()
    assert ran == ["meanwhile"]


async def test_a_request_cancelled_during_meanwhile_leaves_no_unretrieved_answer() -> None:
    # The visitor leaving (or a deadline) while `meanwhile` runs: the connection is closed,
    # and the answer's future, which nobody will await now, must not end up holding an
    # exception that asyncio reports as "never retrieved".
    reported: list[dict[str, object]] = []
    loop = asyncio.get_running_loop()
    loop.set_exception_handler(lambda _, context: reported.append(context))

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _: int) -> None:
        await read_request(reader)
        await reader.read()  # never answers; until the gateway closes

    started = asyncio.Event()

    async def meanwhile() -> None:
        started.set()
        await asyncio.sleep(10)

    try:
        async with origin(script) as o, client(o.url) as c:
            task = asyncio.create_task(c.send("GET", c.wire("GET", "/", headers()), meanwhile))
            await started.wait()
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            await asyncio.sleep(0.05)  # the closed connection's connection_lost runs
        gc.collect()
        await asyncio.sleep(0)
    finally:
        loop.set_exception_handler(None)
    assert reported == []


async def test_meanwhile_runs_once_when_a_dropped_connection_is_retried() -> None:
    calls: list[int] = []

    async def meanwhile() -> None:
        calls.append(1)

    async with origin(_closes_on_the_second) as o, client(o.url) as c:
        assert await get(c) == (200, b"ok")
        response = await c.send("GET", c.wire("GET", "/", headers()), meanwhile)
        response.release()
        assert response.status == 200 and o.connections == 2 and calls == [1]


async def test_a_post_on_a_reused_connection_is_never_retried() -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, i: int) -> None:
        await read_request(reader)
        writer.write(OK)
        await read_request(reader)

    async with origin(script) as o, client(o.url) as c:
        assert await get(c) == (200, b"ok")
        with pytest.raises(UpstreamError):
            await get(c, method="POST")
        assert o.connections == 1


async def test_a_fresh_connection_closed_before_the_answer_is_an_error() -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _: int) -> None:
        await read_request(reader)

    async with origin(script) as o, client(o.url) as c:
        with pytest.raises(UpstreamError):
            await get(c)
        assert o.connections == 1  # not retried


async def test_an_unreachable_origin_is_an_os_error() -> None:
    async with client(URL(f"http://127.0.0.1:{free_port()}")) as c:
        with pytest.raises(OSError):
            await get(c)


@pytest.mark.parametrize(
    "answer",
    [
        b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n" + b"x" * 50,
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n32\r\n" + b"x" * 50 + b"\r\n",
    ],
)
async def test_a_truncated_body_raises(answer: bytes) -> None:
    async with origin(answering(answer, then_close=True)) as o, client(o.url) as c:
        response = await c.request("GET", "/", headers())
        with pytest.raises(aiohttp.ClientPayloadError):
            await response.content.read()
        response.release()


async def test_a_reset_close_delimited_body_raises() -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _: int) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\n\r\n" + b"x" * 50)
        await writer.drain()
        await asyncio.sleep(0.05)
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.transport.abort()  # a reset, not a clean end

    async with origin(script) as o, client(o.url) as c:
        response = await c.request("GET", "/", headers())
        with pytest.raises(aiohttp.ClientPayloadError):
            await response.content.read()
        response.release()


async def test_a_header_over_the_limit_is_an_error() -> None:
    long = b"HTTP/1.1 200 OK\r\nX-Long: " + b"a" * 9000 + b"\r\nContent-Length: 0\r\n\r\n"
    async with origin(answering(long)) as o, client(o.url, max_header_bytes=8192) as c:
        with pytest.raises(UpstreamError):
            await get(c)
    async with origin(answering(long)) as o, client(o.url, max_header_bytes=16384) as c:
        assert (await get(c))[0] == 200


# -- timeouts, expiry, limits ------------------------------------------------------------------


def stalling(seconds: float, answer: bytes = b"") -> Script:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _: int) -> None:
        await read_request(reader)
        writer.write(answer)
        await asyncio.sleep(seconds)

    return script


async def test_no_headers_in_time_is_a_timeout() -> None:
    async with origin(stalling(3)) as o, client(o.url, read_timeout=0.3) as c:
        began = time.monotonic()
        with pytest.raises(UpstreamTimeout) as caught:
            await get(c)
        assert isinstance(caught.value, TimeoutError)
        assert 0.25 < time.monotonic() - began < 1.5


async def test_a_stalled_body_is_a_timeout() -> None:
    stalled = stalling(3, b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")
    async with origin(stalled) as o, client(o.url, read_timeout=0.3) as c:
        response = await c.request("GET", "/", headers())
        with pytest.raises(TimeoutError):
            await response.content.read()
        response.release()


async def test_a_trickling_body_hits_the_total_timeout() -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _: int) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n")
        for _ in range(100):
            writer.write(b"x")
            await asyncio.sleep(0.05)

    async with origin(script) as o, client(o.url, read_timeout=1, total_timeout=0.4) as c:
        began = time.monotonic()
        response = await c.request("GET", "/", headers())
        with pytest.raises(TimeoutError):
            await response.content.read()
        response.release()
        assert time.monotonic() - began < 1.5


async def test_idle_connections_expire_after_the_keepalive() -> None:
    async with origin(answering(OK)) as o, client(o.url, keepalive=0.2) as c:
        assert await get(c) == (200, b"ok")
        await asyncio.sleep(0.4)
        assert o.open == 0  # closed by us, not left for the origin to close under a request
        assert await get(c) == (200, b"ok")
        assert o.connections == 2


async def test_connections_are_bounded_and_waiting_counts_towards_connect_timeout() -> None:
    async def slow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _: int) -> None:
        while True:
            await read_request(reader)
            await asyncio.sleep(0.1)
            writer.write(OK)

    async with origin(slow) as o, client(o.url, limit=2) as c:
        results = await asyncio.gather(*(get(c) for _ in range(6)))
        assert results == [(200, b"ok")] * 6
        assert o.most_open <= 2
    async with origin(stalling(3, b"")) as o, client(o.url, limit=1, connect_timeout=0.3) as c:
        first = asyncio.ensure_future(c.request("GET", "/", headers()))
        await asyncio.sleep(0.05)
        with pytest.raises(UpstreamTimeout):
            await c.request("GET", "/", headers())
        first.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await first


async def test_a_slot_is_given_back_when_an_answer_is_abandoned() -> None:
    async with origin(stalling(3)) as o, client(o.url, limit=1, read_timeout=5) as c:
        task = asyncio.ensure_future(c.request("GET", "/", headers()))
        await asyncio.sleep(0.05)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    async with origin(answering(OK)) as o2, client(o2.url, limit=1) as c:
        answers: list[UpstreamResponse] = []
        for _ in range(3):
            response = await c.request("GET", "/", headers())
            answers.append(response)
            response.close()  # abandoned unread: closed, slot free
        assert o2.connections == 3


# -- through the gateway -----------------------------------------------------------------------


async def test_the_gateway_does_not_502_when_the_site_drops_a_kept_alive_connection(
    start: StartGateway,
) -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, i: int) -> None:
        await read_request(reader)
        writer.write(OK)
        if i == 0:
            await read_request(reader)
            return
        while True:
            await read_request(reader)
            writer.write(OK)

    async with origin(script) as o:
        gw = await start(upstream=str(o.url))
        for _ in range(2):
            async with gw.session.get(gw.url + "/asset.js") as resp:
                assert resp.status == 200 and await resp.read() == b"ok"
        assert o.connections == 2


async def test_the_read_timeout_holds_on_a_reused_connection() -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _: int) -> None:
        await read_request(reader)
        writer.write(OK)
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")
        await asyncio.sleep(3)

    async with origin(script) as o, client(o.url, read_timeout=0.3) as c:
        assert await get(c) == (200, b"ok")
        await asyncio.sleep(0.4)  # the timer of the first exchange fires while idle: harmless
        began = time.monotonic()
        response = await c.request("GET", "/", headers())
        with pytest.raises(TimeoutError):
            await response.content.read()
        response.release()
        assert time.monotonic() - began < 1.5 and o.connections == 1
