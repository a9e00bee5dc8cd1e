"""The pass-through relay: an answer the gateway does not change, from the site to the visitor.

Nearly every request a site gets is one of these (images, scripts, styles, fonts, API
calls no rule reads): the gateway's only work is to drop hop-by-hop fields, point the
site's own redirects at the public origin and stream the body as it arrives. Pages the
gateway tags, and answers rules or the catalog read, take `gateway.edge.proxy`'s document
path, which shares `send_answer` and the options, pools and error pages kept here.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import aiohttp
from aiohttp import web
from yarl import URL

from gateway.edge import headers as hdr
from gateway.edge.encoding import RewriteError
from gateway.edge.upstream import UpstreamClient, UpstreamResponse
from gateway.edge.visitor import visitor
from gateway.settings import Settings

log = logging.getLogger("gateway.proxy")

NO_BODY_STATUS = frozenset({204, 304})
# What answers a request upstream: the lean client's, or aiohttp's for bodies.
Answer = aiohttp.ClientResponse | UpstreamResponse


@dataclass(frozen=True, slots=True)
class ProxyOptions:
    """The proxy's share of the settings."""

    upstream: URL
    preserve_host: bool
    max_upload: int
    timeout: aiohttp.ClientTimeout
    client_body_timeout: float
    client_body_min_rate: int = 0
    buffer_body: int = 0
    per_client: int = 1 << 30

    @classmethod
    def from_settings(cls, s: Settings) -> ProxyOptions:
        """Pick the proxy's keys out of the settings."""
        assert s.upstream is not None
        return cls(
            upstream=URL(s.upstream),
            preserve_host=s.preserve_host,
            max_upload=int(s.max_upload_mb * 1024 * 1024),
            client_body_timeout=s.client_body_timeout,
            client_body_min_rate=s.client_body_min_rate,
            buffer_body=s.request_buffer_kb * 1024,
            per_client=s.upstream_connections_per_client,
            timeout=aiohttp.ClientTimeout(
                total=s.upstream_total_timeout or None,
                connect=s.upstream_connect_timeout,
                sock_read=s.upstream_read_timeout,
            ),
        )


def upstream_session(settings: Settings) -> aiohttp.ClientSession:
    """The one pooled client session of a worker, set up for a transparent proxy."""
    connector = aiohttp.TCPConnector(
        limit=settings.upstream_connections,
        # Shorter than the origin's own idle timeout (Node closes after 5 s): reusing a
        # connection the origin is closing gives a spurious 502.
        keepalive_timeout=settings.upstream_keepalive,
        enable_cleanup_closed=False,
    )
    return aiohttp.ClientSession(
        connector=connector,
        auto_decompress=False,
        cookie_jar=aiohttp.DummyCookieJar(),
        # aiohttp would add Accept, Accept-Encoding and User-Agent (and a Content-Type for
        # bodies) that the visitor never sent.
        skip_auto_headers=("Accept", "Accept-Encoding", "User-Agent", "Content-Type"),
        max_field_size=settings.max_header_bytes,
        max_line_size=settings.max_header_bytes,
        trust_env=False,
    )


def upstream_client(settings: Settings) -> UpstreamClient:
    """The lean keep-alive client of a worker for body-less GET and HEAD requests."""
    assert settings.upstream is not None
    return UpstreamClient(
        URL(settings.upstream),
        limit=settings.upstream_connections,
        keepalive=settings.upstream_keepalive,
        connect_timeout=settings.upstream_connect_timeout,
        read_timeout=settings.upstream_read_timeout,
        total_timeout=settings.upstream_total_timeout or None,
        max_header_bytes=settings.max_header_bytes,
    )


async def pass_through(
    request: web.Request, upstream: Answer, options: ProxyOptions
) -> web.StreamResponse:
    """Relay an answer the gateway leaves as it is (no page plan, no rule, no catalog)."""
    # The site's fields copied once, straight into the response, and trimmed there.
    response = web.StreamResponse(
        status=upstream.status, reason=upstream.reason, headers=upstream.headers
    )
    headers = response.headers
    hdr.drop_hop_by_hop(headers)
    hdr.rewrite_locations(headers, options.upstream, lambda: visitor(request).origin)
    status = upstream.status
    if status == 304:
        hdr.weaken_revalidated(headers, request.headers.getall("If-None-Match", ()))
    no_body = request.method == "HEAD" or status in NO_BODY_STATUS
    return await send_answer(request, upstream, response, no_body)


async def send_answer(
    request: web.Request,
    upstream: Answer,
    response: web.StreamResponse,
    no_body: bool,
    body: Callable[[], Awaitable[None]] | None = None,
    raw: Callable[[bytes], None] | None = None,
    ended: Callable[[], None] | None = None,
) -> web.StreamResponse:
    """Send the status line, the headers and the body: `body()` writes it (a rewritten
    page), else the site's body goes as it is, each chunk shown to `raw` first."""
    if (
        not no_body
        and request.version < aiohttp.HttpVersion11
        and "Content-Length" not in response.headers
    ):
        # HTTP/1.0 has no chunks: the body ends when the connection does. aiohttp sends it
        # close-delimited but keeps a keep-alive connection open, so the client would wait.
        response.force_close()
    if not no_body and _arrived(upstream.content):
        # Body bytes came with the headers (a small asset, a whole page): the status
        # line and headers leave in the same write as the first of them, one syscall
        # (and one trip through the loopback stack) less. A body still on its way (a
        # stream of events) gets its headers at once, as before.
        response._send_headers_immediately = False
    try:
        await response.prepare(request)
        if no_body:
            await response.write_eof()
        else:
            if body is not None:
                await body()
            else:
                await _stream_as_is(upstream.content, response, raw)
            if ended is not None:
                ended()
    except ConnectionResetError:
        # The visitor went away (closed the tab, a load tester stopped): nothing to
        # tell anyone; leaving the block closes the upstream request too.
        log.debug("Client left during %s %s.", request.method, request.path)
        return response
    except (aiohttp.ClientError, TimeoutError, RewriteError) as exc:
        # The status line is out: the only honest signal left is a broken connection,
        # never a clean end of a truncated body.
        log.warning("Upstream body broke off for %s: %s", request.path, reason(exc))
        _abort(request)
        return response
    return response


def _arrived(content: aiohttp.StreamReader) -> bool:
    """True when some of the body (or its end) is already buffered: no wait for it."""
    return content.total_bytes > 0 or content.is_eof()


async def _stream_as_is(
    content: aiohttp.StreamReader,
    response: web.StreamResponse,
    raw: Callable[[bytes], None] | None,
) -> None:
    """The body unchanged, chunk by chunk as it arrives; its end in the same write as its
    last chunk (the terminating chunk of a chunked answer is no write of its own)."""
    while chunk := await content.readany():
        if raw is not None:
            raw(chunk)
        if content.at_eof():
            await response.write_eof(chunk)
            return
        await response.write(chunk)
    await response.write_eof()


def _abort(request: web.Request) -> None:
    transport = request.transport
    if transport is not None:
        transport.abort()


def reason(exc: BaseException) -> str:
    """An exception as a log line's reason: its message, else its type's name."""
    return str(exc) or type(exc).__name__


def error_page(request: web.Request, status: int, title: str, detail: str) -> web.Response:
    """A small error page: JSON for API clients, HTML for browsers."""
    accept = request.headers.get("Accept", "")
    if "application/json" in accept and "text/html" not in accept:
        return web.json_response({"error": title, "detail": detail}, status=status)
    body = (
        f"<!doctype html><html><head><meta charset=utf-8><title>{status} {title}</title>"
        f"</head><body><h1>{status} {title}</h1><p>{detail}.</p></body></html>"
    )
    return web.Response(
        status=status,
        text=body,
        content_type="text/html",
        headers={"Cache-Control": "no-store"},
    )
