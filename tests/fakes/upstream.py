"""A real website for the proxy tests: an aiohttp app on 127.0.0.1 that records what it sees.

In-process::

    async with start_upstream() as site:
        ...  # point the gateway's `upstream` at site.url
        assert site.requests[-1].path == "/echo"

As a separate process (the subprocess tests)::

    python -m tests.fakes.upstream --port 0

prints ``listening on http://127.0.0.1:N`` and serves until SIGTERM. ``GET /_up/requests``,
``GET /_up/events`` and ``POST /_up/reset`` expose and clear what it recorded (the ``/_up/``
requests themselves are not recorded).

Routes (every one is recorded in ``requests`` before it runs):

- ``* /echo``: JSON with the method, raw path+query, HTTP version, every request header as a
  list of pairs (duplicates kept) and the sha256/length of the body, read streaming.
- ``GET /bytes/{n}``: ``n`` seeded pseudo-random bytes with Content-Length, ETag and
  ``Accept-Ranges``; one ``Range: bytes=a-b`` gives 206 with Content-Range. ``?ct=`` sets the
  Content-Type.
- ``GET /stream/{mb}``: ``mb`` MiB chunked (no Content-Length), ``?delay_ms=`` between 64 KiB
  blocks; ``stream-done``/``stream-aborted`` lands in ``events``.
- ``POST|PUT /upload``: sha256 and length of a streamed body, never held in memory.
- ``GET /html``: a small page; ``enc=gzip|deflate|br``, ``csp=...``, ``nonce=...``,
  ``attachment=1``, ``notransform=1``, ``etag=1`` (a strong ETag, and 304 for a matching
  If-None-Match), ``md5=1``, ``charset=latin-1``,
  ``cookies=1`` (the three cookies of /cookies too), ``slow=1`` (streamed in timed parts).
- ``GET /cookies``: three Set-Cookie lines, one with an ``Expires`` date (a comma inside).
- ``GET /redirect?to=self|foreign|relative``: 302 with Location and Content-Location.
- ``* /status/{code}``: that status (no body for 204/304).
- ``GET /slow-headers?s=``: answers after ``s`` seconds.
- ``GET /slow-body?s=``: headers and 100 of 1000 promised bytes, then a stall of ``s`` seconds.
- ``GET /reset-mid-body[?chunked=1]``: part of the body, then the connection is aborted.
- ``GET /sse``: five Server-Sent Events 50 ms apart, each carrying the time it was sent.
- ``GET /ws``: WebSocket echo (subprotocol ``chat``); text ``close:CODE:REASON`` makes it
  close with that code and reason, ``ping:DATA`` makes it ping; pings and pongs it gets, and
  the close frame it gets, are recorded in ``ws_events``.
- ``GET /ws-refuse``: 403 instead of an upgrade.
- ``GET /hop``: hop-by-hop response headers (Connection naming X-Secret and X-Other on two
  lines, Keep-Alive, Proxy-Authenticate, Proxy-Connection, Trailer) next to an end-to-end one.
- ``GET /big-header?n=``: a response header of ``n`` bytes.

Helpers for the tests in front of it: ``run_gateway(settings)`` serves the gateway in-process
with the server options of ``gateway.app.serve`` (keep the two in step), ``raw_exchange`` and
``parse_responses`` send raw bytes and check the answers' framing strictly (h11 is not a
dependency).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import gzip
import hashlib
import json
import random
import signal
import socket
import time
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import brotli  # type: ignore[import-untyped]
from aiohttp import WSMsgType, web

from gateway.app import build_app
from gateway.settings import Settings

BLOCK = 64 * 1024
MIB = 1024 * 1024
COOKIES = (
    "a=1; Path=/",
    "b=2; Expires=Wed, 21 Oct 2037 07:28:00 GMT; Path=/; HttpOnly",
    "c=3; Max-Age=60; Path=/shop; Secure; SameSite=None",
)
FOREIGN = "https://other.example/elsewhere?y=2"
_STREAM_BLOCK = random.Random(1234).randbytes(BLOCK)


def seeded_bytes(n: int) -> bytes:
    """The body of `/bytes/{n}`."""
    return random.Random(n).randbytes(n)


def stream_digest(mb: int) -> str:
    """The sha256 of `/stream/{mb}`."""
    digest = hashlib.sha256()
    for _ in range(mb * MIB // BLOCK):
        digest.update(_STREAM_BLOCK)
    return digest.hexdigest()


def page(title: str = "Upstream page", body: str = "<p>Grüße, café.</p>") -> str:
    """The HTML document of `/html` (decoded)."""
    return (
        "<!doctype html>\n<html lang=en>\n<head>\n<meta charset=utf-8>\n"
        f"<title>{title}</title>\n</head>\n<body>\n{body}\n</body>\n</html>\n"
    )


@functools.lru_cache(maxsize=8)
def padded_page(size: int, charset: str, coding: str) -> bytes:
    """A large page (`?pad=2000000`): paragraphs of varied text, encoded once, then reused."""
    filler = "".join(
        f"<p>Item {i}: {i * 7919 % 10007} in stock.</p>\n" for i in range(size // 32 + 1)
    )
    return encode(page(body=filler[:size]).encode(charset), coding)


def encode(data: bytes, coding: str) -> bytes:
    """`data` in Content-Encoding `coding` (gzip, deflate = zlib-wrapped, br, identity)."""
    if coding == "gzip":
        return gzip.compress(data)
    if coding == "deflate":
        return zlib.compress(data)
    if coding == "br":
        out: bytes = brotli.compress(data)
        return out
    return data


def decode(data: bytes, coding: str) -> bytes:
    """The inverse of `encode`."""
    if coding == "gzip":
        return gzip.decompress(data)
    if coding == "deflate":
        return zlib.decompress(data)
    if coding == "br":
        out: bytes = brotli.decompress(data)
        return out
    return data


@dataclass
class Seen:
    """One request as the upstream received it (before its handler ran)."""

    method: str
    path: str  # raw path and query, as on the request line
    headers: list[tuple[str, str]]

    def header(self, name: str) -> list[str]:
        """Every value of header `name` (case-insensitive)."""
        return [v for k, v in self.headers if k.lower() == name.lower()]


@dataclass
class Upstream:
    """State and handlers of the fake site; serve it with `start_upstream`."""

    url: str = ""
    requests: list[Seen] = field(default_factory=list)
    events: list[str] = field(default_factory=list)
    ws_events: list[tuple[str, Any, Any]] = field(default_factory=list)
    closing: asyncio.Event = field(default_factory=asyncio.Event)

    def reset(self) -> None:
        """Forget everything recorded."""
        self.requests.clear()
        self.events.clear()
        self.ws_events.clear()

    def paths(self) -> list[str]:
        """The raw path+query of every request seen, in order."""
        return [r.path for r in self.requests]

    async def wait_event(self, prefix: str, timeout: float = 5.0) -> str:
        """The first recorded event starting with `prefix`, waiting up to `timeout` s."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for event in self.events:
                if event.startswith(prefix):
                    return event
            await asyncio.sleep(0.02)
        raise AssertionError(f"no upstream event {prefix!r} in {self.events}")

    async def _sleep(self, seconds: float) -> None:
        """Sleep, but end at once when the fake shuts down."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.closing.wait(), seconds)

    # -- the app -------------------------------------------------------------------------

    def app(self) -> web.Application:
        """The aiohttp application of the fake site."""
        app = web.Application(middlewares=[self._record])
        r = app.router
        r.add_get("/_up/requests", self._control_requests)
        r.add_get("/_up/events", self._control_events)
        r.add_post("/_up/reset", self._control_reset)
        r.add_route("*", "/echo", self.echo)
        r.add_route("*", "/echo/{tail:.*}", self.echo)
        r.add_get("/bytes/{n:[0-9]+}", self.bytes_)
        r.add_get("/stream/{mb:[0-9]+}", self.stream)
        r.add_route("*", "/upload", self.upload)
        r.add_get("/html", self.html)
        r.add_get("/cookies", self.cookies)
        r.add_get("/redirect", self.redirect)
        r.add_route("*", "/status/{code:[0-9]{3}}", self.status)
        r.add_get("/slow-headers", self.slow_headers)
        r.add_get("/slow-body", self.slow_body)
        r.add_get("/reset-mid-body", self.reset_mid_body)
        r.add_get("/sse", self.sse)
        r.add_get("/ws", self.ws)
        r.add_get("/ws-refuse", self.ws_refuse)
        r.add_get("/hop", self.hop)
        r.add_get("/big-header", self.big_header)
        return app

    @web.middleware
    async def _record(
        self,
        request: web.Request,
        handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
    ) -> web.StreamResponse:
        if not request.path.startswith("/_up/"):
            headers = _raw_headers(request)
            self.requests.append(Seen(request.method, request.raw_path, headers))
        return await handler(request)

    async def _control_requests(self, request: web.Request) -> web.Response:
        return web.json_response(
            [{"method": s.method, "path": s.path, "headers": s.headers} for s in self.requests]
        )

    async def _control_events(self, request: web.Request) -> web.Response:
        return web.json_response(self.events)

    async def _control_reset(self, request: web.Request) -> web.Response:
        self.reset()
        return web.json_response({"ok": True})

    # -- plain HTTP ----------------------------------------------------------------------

    async def echo(self, request: web.Request) -> web.Response:
        digest, length = await _consume(request)
        return web.json_response(
            {
                "method": request.method,
                "path": request.raw_path,
                "version": f"{request.version.major}.{request.version.minor}",
                "headers": [list(pair) for pair in _raw_headers(request)],
                "sha256": digest,
                "length": length,
            }
        )

    async def bytes_(self, request: web.Request) -> web.Response:
        n = int(request.match_info["n"])
        data = seeded_bytes(n)
        headers = {
            "Accept-Ranges": "bytes",
            "ETag": f'"bytes-{n}"',
            "Cache-Control": "public, max-age=60",
            "X-Upstream": "bytes",
        }
        ct = request.query.get("ct", "application/octet-stream")
        spec = request.headers.get("Range", "")
        if spec.startswith("bytes=") and "," not in spec:
            first, _, last = spec[6:].partition("-")
            start = int(first) if first else n - int(last)
            end = int(last) if first and last else n - 1
            if not 0 <= start <= end < n:
                return web.Response(status=416, headers={"Content-Range": f"bytes */{n}"})
            headers["Content-Range"] = f"bytes {start}-{end}/{n}"
            return web.Response(
                status=206, body=data[start : end + 1], headers=headers, content_type=ct
            )
        return web.Response(body=data, headers=headers, content_type=ct)

    async def stream(self, request: web.Request) -> web.StreamResponse:
        mb = int(request.match_info["mb"])
        delay = float(request.query.get("delay_ms", "0")) / 1000
        response = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
        response.enable_chunked_encoding()
        await response.prepare(request)
        sent = 0
        try:
            for _ in range(mb * MIB // BLOCK):
                await response.write(_STREAM_BLOCK)
                sent += BLOCK
                if delay:
                    await asyncio.sleep(delay)
            await response.write_eof()
        except (ConnectionError, asyncio.CancelledError):
            self.events.append(f"stream-aborted:{sent}")
            raise
        self.events.append(f"stream-done:{sent}")
        return response

    async def upload(self, request: web.Request) -> web.Response:
        try:
            digest, length = await _consume(request)
        except Exception as exc:
            self.events.append(f"upload-aborted:{type(exc).__name__}")
            raise
        self.events.append(f"upload-done:{length}")
        return web.json_response(
            {
                "sha256": digest,
                "length": length,
                "content_length": request.headers.get("Content-Length"),
                "transfer_encoding": request.headers.get("Transfer-Encoding"),
            }
        )

    async def html(self, request: web.Request) -> web.StreamResponse:
        q = request.query
        coding = q.get("enc", "identity")
        charset = q.get("charset", "utf-8")
        ctype = q.get("ct", "text/html")
        headers: dict[str, str] = {"Content-Type": f"{ctype}; charset={charset}"}
        extra: list[tuple[str, str]] = []
        if coding != "identity":
            headers["Content-Encoding"] = coding
            headers["Vary"] = "Accept-Encoding"
        if "csp" in q:
            headers["Content-Security-Policy"] = q["csp"]
        if "nonce" in q:
            headers["Content-Security-Policy"] = f"script-src 'nonce-{q['nonce']}'"
        if q.get("attachment"):
            headers["Content-Disposition"] = 'attachment; filename="page.html"'
        if q.get("notransform"):
            headers["Cache-Control"] = "no-transform"
        if "cache" in q:
            headers["Cache-Control"] = q["cache"]
            headers["CDN-Cache-Control"] = "max-age=600"
        if q.get("etag"):
            headers["ETag"] = '"page-v1"'
            # Weak comparison, as If-None-Match asks (RFC 9110 §13.1.2).
            asked = request.headers.get("If-None-Match", "").replace("W/", "")
            if '"page-v1"' in {t.strip() for t in asked.split(",")}:
                return web.Response(status=304, headers={"ETag": '"page-v1"'})
        if q.get("cookies"):
            extra += [("Set-Cookie", c) for c in COOKIES]
        if q.get("slow"):
            return await self._slow_html(request, headers, coding)
        body = page().encode(charset)
        if q.get("md5"):
            headers["Content-MD5"] = "Q2hlY2sgSW50ZWdyaXR5IQ=="
        if q.get("pad", "").isdigit():
            data = padded_page(int(q["pad"]), charset, coding)
        else:
            data = encode(body, coding)
        spec = request.headers.get("Range", "")
        if spec.startswith("bytes=") and "," not in spec and spec[6:].split("-")[0].isdigit():
            start = int(spec[6:].split("-")[0])
            end = min(int(spec.split("-")[1] or len(data) - 1), len(data) - 1)
            headers["Content-Range"] = f"bytes {start}-{end}/{len(data)}"
            return web.Response(status=206, body=data[start : end + 1], headers=headers)
        response = web.Response(body=data, headers=headers)
        for name, value in extra:
            response.headers.add(name, value)
        return response

    async def _slow_html(
        self, request: web.Request, headers: dict[str, str], coding: str
    ) -> web.StreamResponse:
        """A page in five parts 50 ms apart; each part after the first says when it left."""
        response = web.StreamResponse(headers=headers)
        await response.prepare(request)
        compressor: Any = None
        if coding in ("gzip", "deflate"):
            wbits = 31 if coding == "gzip" else 15
            compressor = zlib.compressobj(6, zlib.DEFLATED, wbits)
        elif coding == "br":
            compressor = brotli.Compressor()

        def squeeze(data: bytes, last: bool = False) -> bytes:
            if compressor is None:
                return data
            if coding == "br":
                out: bytes = compressor.process(data)
                return out + (compressor.finish() if last else compressor.flush())
            mode = zlib.Z_FINISH if last else zlib.Z_SYNC_FLUSH
            return bytes(compressor.compress(data) + compressor.flush(mode))

        await response.write(squeeze(b"<!doctype html><html><head><title>slow</title>\n"))
        for i in range(5):
            await asyncio.sleep(0.05)
            part = f'<p class=part data-n="{i}" data-t="{time.monotonic():.6f}">part</p>\n'
            await response.write(squeeze(part.encode()))
        await response.write(squeeze(b"</html>\n", last=True))
        await response.write_eof()
        return response

    async def cookies(self, request: web.Request) -> web.Response:
        response = web.Response(text="cookies", content_type="text/plain")
        for cookie in COOKIES:
            response.headers.add("Set-Cookie", cookie)
        return response

    async def redirect(self, request: web.Request) -> web.Response:
        to = request.query.get("to", "self")
        if to == "self":
            location = f"{self.url}/landing/%E2%82%AC?x=1&y=%20"
        elif to == "foreign":
            location = FOREIGN
        elif to == "zero-port":
            # The site's own origin with its port written with a leading zero.
            origin, _, port = self.url.rpartition(":")
            location = f"{origin}:0{port}/landing?x=1"
        else:
            location = "/relative?z=3"
        headers = {"Location": location, "Content-Location": location}
        return web.Response(status=302, headers=headers)

    async def status(self, request: web.Request) -> web.Response:
        await _consume(request)
        code = int(request.match_info["code"])
        headers = {"ETag": '"st"', "X-Status": str(code)}
        if code in (204, 304):
            return web.Response(status=code, headers=headers)
        return web.Response(status=code, text=f"status {code}\n", headers=headers)

    async def slow_headers(self, request: web.Request) -> web.Response:
        await self._sleep(float(request.query.get("s", "5")))
        return web.Response(text="finally")

    async def slow_body(self, request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
        response.content_length = 1000
        await response.prepare(request)
        await response.write(b"x" * 100)
        await self._sleep(float(request.query.get("s", "5")))
        with contextlib.suppress(ConnectionError):
            await response.write(b"y" * 900)
        return response

    async def reset_mid_body(self, request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
        if request.query.get("chunked"):
            response.enable_chunked_encoding()
        else:
            response.content_length = 100_000
        await response.prepare(request)
        await response.write(b"z" * 10_000)
        await asyncio.sleep(0.05)
        assert request.transport is not None
        request.transport.abort()
        self.events.append("reset-mid-body")
        return response

    async def sse(self, request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
        )
        await response.prepare(request)
        for i in range(5):
            await asyncio.sleep(0.05)
            data = json.dumps({"n": i, "t": time.monotonic()})
            await response.write(f"id: {i}\ndata: {data}\n\n".encode())
        await response.write_eof()
        return response

    async def ws(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(
            protocols=("chat",), autoping=False, autoclose=False, max_msg_size=32 * MIB
        )
        await ws.prepare(request)
        self.ws_events.append(("open", ws.ws_protocol, None))
        while True:  # not `async for`: it hides the close frame
            msg = await ws.receive()
            if msg.type is WSMsgType.TEXT:
                text: str = msg.data
                if text.startswith("close:"):
                    _, code, reason = text.split(":", 2)
                    await ws.close(code=int(code), message=reason.encode())
                    self.ws_events.append(("closed-by-upstream", ws.close_code, reason))
                    break
                if text.startswith("ping:"):
                    await ws.ping(text[5:].encode())
                    continue
                await ws.send_str(text)
            elif msg.type is WSMsgType.BINARY:
                await ws.send_bytes(msg.data)
            elif msg.type is WSMsgType.PING:
                self.ws_events.append(("ping", msg.data, None))
                await ws.pong(msg.data)
            elif msg.type is WSMsgType.PONG:
                self.ws_events.append(("pong", msg.data, None))
                await ws.send_str(f"pong-seen:{msg.data.decode()}")
            elif msg.type is WSMsgType.CLOSE:
                self.ws_events.append(("close", msg.data, msg.extra))
                await ws.close(code=msg.data, message=(msg.extra or "").encode())
                break
            else:
                self.ws_events.append(("gone", msg.type.name, None))
                break
        return ws

    async def ws_refuse(self, request: web.Request) -> web.Response:
        return web.Response(status=403, text="no sockets here")

    async def hop(self, request: web.Request) -> web.Response:
        response = web.Response(text="hop", content_type="text/plain")
        h = response.headers
        h.add("Connection", "X-Secret")
        h.add("Connection", "X-Other")
        h.add("X-Secret", "1")
        h.add("X-Other", "2")
        h.add("Keep-Alive", "timeout=5")
        h.add("Proxy-Authenticate", 'Basic realm="upstream"')
        h.add("Proxy-Connection", "keep-alive")
        h.add("Trailer", "X-Checksum")
        h.add("X-End-To-End", "yes")
        return response

    async def big_header(self, request: web.Request) -> web.Response:
        n = int(request.query.get("n", "20000"))
        return web.Response(text="big", headers={"X-Big": "b" * n})


def _raw_headers(request: web.Request) -> list[tuple[str, str]]:
    """Request headers as sent: order, case and duplicates kept."""
    return [(k.decode("latin-1"), v.decode("latin-1")) for k, v in request.raw_headers]


async def _consume(request: web.Request) -> tuple[str, int]:
    """sha256 and length of the request body, read in pieces."""
    digest = hashlib.sha256()
    length = 0
    async for chunk in request.content.iter_any():
        digest.update(chunk)
        length += len(chunk)
    return digest.hexdigest(), length


@contextlib.asynccontextmanager
async def start_upstream(host: str = "127.0.0.1", port: int = 0) -> AsyncIterator[Upstream]:
    """Serve an Upstream on loopback for the duration of the block; ``site.url`` is its root."""
    site_state = Upstream()
    runner = web.AppRunner(
        site_state.app(), access_log=None, shutdown_timeout=1.0, handler_cancellation=False
    )
    await runner.setup()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        await web.SockSite(runner, sock).start()
    except BaseException:
        sock.close()
        await runner.cleanup()
        raise
    site_state.url = f"http://{host}:{sock.getsockname()[1]}"
    try:
        yield site_state
    finally:
        site_state.closing.set()
        await runner.cleanup()
        sock.close()


# -- helpers for the tests that put the gateway in front of this site ------------------------


@dataclass
class Front:
    """The gateway, in-process on 127.0.0.1, and a client session without a cookie jar."""

    url: str
    app: web.Application
    session: aiohttp.ClientSession

    @property
    def port(self) -> int:
        """The gateway's port."""
        return int(self.url.rsplit(":", 1)[1])


ResponseHook = Callable[[web.Request, web.StreamResponse], Awaitable[None]]


@contextlib.asynccontextmanager
async def run_gateway(
    settings: Settings,
    *,
    on_response_prepare: Sequence[ResponseHook] = (),
    dual_stack: bool = False,
    **session_options: Any,
) -> AsyncIterator[Front]:
    """`build_app(settings)` served with the server options `gateway.app.serve` uses.

    `on_response_prepare` hooks are added to the app's signal of that name before it starts
    (to record what the gateway answered); `session_options` go to the client session.
    With `dual_stack` the gateway listens on a dual-stack IPv6 socket, so a client on
    127.0.0.1 is seen as the IPv4-mapped peer `::ffff:127.0.0.1`.
    """
    app = build_app(settings)
    app.on_response_prepare.extend(on_response_prepare)
    runner = web.AppRunner(
        app,
        access_log=None,
        handle_signals=False,
        shutdown_timeout=1.0,
        auto_decompress=False,
        keepalive_timeout=settings.keepalive_timeout,
        max_field_size=settings.max_header_bytes,
        max_line_size=settings.max_header_bytes,
    )
    await runner.setup()
    site: web.BaseSite
    if dual_stack:
        sock = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.bind(("::", 0))
        site = web.SockSite(runner, sock)
    else:
        site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    server = site._server
    assert server is not None
    port = server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]
    options: dict[str, Any] = {
        "cookie_jar": aiohttp.DummyCookieJar(),
        "auto_decompress": False,
        "max_field_size": 65536,
        "timeout": aiohttp.ClientTimeout(total=30),
    }
    options.update(session_options)
    session = aiohttp.ClientSession(**options)
    try:
        yield Front(f"http://127.0.0.1:{port}", app, session)
    finally:
        await session.close()
        await runner.cleanup()


@dataclass
class RawResponse:
    """One HTTP/1.x response as it was framed on the wire."""

    version: str
    status: int
    headers: list[tuple[str, str]]
    body: bytes
    framing: str  # "length", "chunked", "close" or "none"

    def header(self, name: str) -> list[str]:
        """Every value of header `name` (case-insensitive)."""
        return [v for k, v in self.headers if k.lower() == name.lower()]


async def raw_exchange(url: str, data: bytes, *, timeout: float = 5.0) -> bytes:
    """Send `data` on a new connection to `url`'s host and read until the peer closes."""
    host, port = url.split("://", 1)[1].rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(data)
        await writer.drain()
        return await asyncio.wait_for(reader.read(), timeout)
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


def parse_responses(data: bytes, methods: list[str]) -> list[RawResponse]:
    """Strictly parse the responses to requests of `methods` (in order) from `data`.

    Fails (AssertionError) on anything RFC 9112 forbids: a bare LF, a header without a
    colon or with a space before it, Content-Length with Transfer-Encoding, a bad chunk,
    a body on a no-body response, or bytes after the last response.
    """
    out: list[RawResponse] = []
    pos = 0
    pending = list(methods)
    while pos < len(data):
        end = data.find(b"\r\n\r\n", pos)
        assert end >= 0, f"incomplete header block: {data[pos : pos + 200]!r}"
        block = data[pos:end].decode("latin-1")
        pos = end + 4
        lines = block.split("\r\n")
        assert all("\n" not in line and "\r" not in line for line in lines), block
        version, code, *_ = lines[0].split(" ", 2)
        assert version in ("HTTP/1.0", "HTTP/1.1"), lines[0]
        status = int(code)
        headers: list[tuple[str, str]] = []
        for line in lines[1:]:
            name, colon, value = line.partition(":")
            assert colon and name and name == name.strip() and " " not in name, line
            headers.append((name, value.strip()))
        lowered = {k.lower() for k, _ in headers}
        if 100 <= status < 200:
            out.append(RawResponse(version, status, headers, b"", "none"))
            continue
        method = pending.pop(0) if pending else "GET"
        te = [v.lower() for k, v in headers if k.lower() == "transfer-encoding"]
        cl = [v for k, v in headers if k.lower() == "content-length"]
        assert not (te and cl), f"Content-Length and Transfer-Encoding together: {headers}"
        assert len(set(cl)) <= 1, f"differing Content-Length: {cl}"
        if method == "HEAD" or status in (204, 304):
            assert "transfer-encoding" not in lowered or method == "HEAD", headers
            out.append(RawResponse(version, status, headers, b"", "none"))
            continue
        if te:
            assert te == ["chunked"], f"unexpected Transfer-Encoding {te}"
            assert version == "HTTP/1.1", "chunked in an HTTP/1.0 response"
            body = bytearray()
            while True:
                eol = data.find(b"\r\n", pos)
                assert eol >= 0, "truncated chunk size"
                size_text = data[pos:eol].split(b";", 1)[0]
                assert size_text and all(c in b"0123456789abcdefABCDEF" for c in size_text)
                size = int(size_text, 16)
                pos = eol + 2
                if size == 0:
                    trailer_end = data.find(b"\r\n", pos)
                    while trailer_end != pos:  # trailers, then the empty line
                        assert trailer_end > pos, "truncated trailers"
                        pos = trailer_end + 2
                        trailer_end = data.find(b"\r\n", pos)
                    pos += 2
                    break
                assert len(data) >= pos + size + 2, "truncated chunk"
                body += data[pos : pos + size]
                assert data[pos + size : pos + size + 2] == b"\r\n", "chunk not ended by CRLF"
                pos += size + 2
            out.append(RawResponse(version, status, headers, bytes(body), "chunked"))
        elif cl:
            length = int(cl[0])
            assert len(data) >= pos + length, "body shorter than Content-Length"
            out.append(RawResponse(version, status, headers, data[pos : pos + length], "length"))
            pos += length
        else:
            out.append(RawResponse(version, status, headers, data[pos:], "close"))
            pos = len(data)
    assert not pending, f"no response for {pending}"
    return out


async def _serve(args: argparse.Namespace) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with start_upstream(args.host, args.port) as site:
        print(f"listening on {site.url}", flush=True)
        await stop.wait()


def main(argv: list[str] | None = None) -> None:
    """Run the fake site standalone until SIGTERM or SIGINT."""
    parser = argparse.ArgumentParser(prog="python -m tests.fakes.upstream", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    asyncio.run(_serve(parser.parse_args(argv)))


if __name__ == "__main__":
    main()
