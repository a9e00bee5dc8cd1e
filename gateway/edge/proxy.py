"""Every request outside the prefix in, the upstream's answer out — streamed, unchanged.

The only change to a response is the one `pages` asks for on HTML documents (the
injected tag and the first-party cookies). Bodies stream both ways through one pooled
client session; an upstream fault is a 502/504 page, never a 500 from us.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import aiohttp
from aiohttp import web
from multidict import CIMultiDict
from yarl import URL

from gateway.edge import headers as hdr
from gateway.edge.catalog import CatalogPages, CatalogTap
from gateway.edge.encoding import RewriteError
from gateway.edge.pages import PagePlan, PageViews
from gateway.edge.proxied_rules import PageTap, ProxiedRules, Run
from gateway.edge.shares import ClientShares
from gateway.edge.uploads import BodyTooLarge, ClientTooSlow, RequestBody
from gateway.edge.upstream import UpstreamClient, UpstreamResponse
from gateway.edge.upstream_health import UpstreamHealth
from gateway.edge.visitor import visitor
from gateway.edge.websocket import is_websocket_upgrade, relay_websocket
from gateway.metrics import Metrics
from gateway.settings import Settings

log = logging.getLogger("gateway.proxy")

_NO_BODY_STATUS = frozenset({204, 304})
# Requests the lean client carries (when they have no body): nearly every asset and page.
_LEAN_METHODS = frozenset({"GET", "HEAD"})
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


class Proxy:
    """The catch-all handler in front of the upstream."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        options: ProxyOptions,
        pages: PageViews,
        proxied_rules: ProxiedRules | None = None,
        *,
        metrics: Metrics | None = None,
        catalog: CatalogPages | None = None,
        client: UpstreamClient | None = None,
    ) -> None:
        self.session = session
        # Body-less GET and HEAD go through the lean client when there is one.
        self.client = client
        self.options = options
        self.pages = pages
        self.proxied_rules = proxied_rules
        # The site's product reader (None: no catalog store, e.g. in unit tests).
        self.catalog = catalog
        self.metrics = metrics or pages.counters.metrics
        self.health = UpstreamHealth(str(options.upstream))
        self.shares = ClientShares(options.per_client)
        # The upstream's scheme://host:port, once: every request's target starts with it.
        self._origin = str(options.upstream.origin())

    async def handle(self, request: web.Request) -> web.StreamResponse:
        """Forward one request and stream the answer back."""
        if is_websocket_upgrade(request):
            return await relay_websocket(
                request, self._target(request), self._headers(request), session=self.session
            )
        client = visitor(request).client_ip or ""
        if not self.shares.take(client):
            log.info("A client holds its whole upstream share; answering 503 for %s.", request.path)
            response = _error(
                request, 503, "Service Unavailable", "too many requests from your address at once"
            )
            response.headers["Retry-After"] = "1"
            return response
        try:
            return await self._forward(request)
        finally:
            self.shares.give_back(client)

    async def _forward(self, request: web.Request) -> web.StreamResponse:
        limit = self.options.max_upload
        length = request.content_length  # parsed anew on each read: once is enough
        if length is not None and length > limit:
            return _error(request, 413, "Request body too large", f"at most {limit} bytes")
        headers = self._headers(request)
        if length is not None:
            headers["Content-Length"] = str(length)
        run = self._begin(request)
        body = (
            RequestBody(
                request.content,
                limit,
                self.options.client_body_timeout,
                min_rate=self.options.client_body_min_rate,
                copy=run.body if run is not None else None,
            )
            if request.body_exists
            else None
        )
        data: bytes | AsyncIterator[bytes] | None = None
        complete_body = False
        if body is not None:
            # A small body is read whole before the site is contacted (as nginx does): a
            # slow upload then holds no pooled upstream connection while it trickles in.
            try:
                complete = await body.buffer(self.options.buffer_body)
            except BodyTooLarge:
                return _error(request, 413, "Request body too large", f"at most {limit} bytes")
            except ClientTooSlow:
                return self._too_slow(request)
            data = bytes(body.prefix) if complete else body.chunks()
            complete_body = complete
        started = time.monotonic()
        try:
            upstream: Answer
            if body is None and self.client is not None and request.method in _LEAN_METHODS:
                upstream = await self.client.request(
                    request.method, self._raw_target(request), headers
                )
            else:
                call = self.session.request(
                    request.method,
                    self._target(request),
                    headers=headers,
                    data=data,
                    allow_redirects=False,
                    timeout=self.options.timeout,
                    compress=None,
                )
                upstream = await (
                    body.guard(call) if body is not None and not complete_body else call
                )
        except BodyTooLarge:
            return _error(request, 413, "Request body too large", f"at most {limit} bytes")
        except ClientTooSlow:
            return self._too_slow(request)
        except TimeoutError:
            self.health.record("timeout", status=504)
            log.warning("Upstream timed out for %s %s.", request.method, request.path)
            return _error(request, 504, "Gateway Timeout", "the site took too long to answer")
        except (aiohttp.ClientError, OSError) as exc:
            self.health.record("unreachable", status=502)
            log.warning(
                "Upstream unreachable for %s %s: %s", request.method, request.path, _reason(exc)
            )
            return _error(request, 502, "Bad Gateway", "the site could not be reached")
        self.metrics.upstream_latency(time.monotonic() - started, site=self.pages.site)
        self.health.record("5xx" if upstream.status >= 500 else "ok", status=upstream.status)
        try:
            return await self._respond(request, upstream, run)
        finally:
            upstream.release()

    def _too_slow(self, request: web.Request) -> web.Response:
        log.info("Client stalled its upload to %s; closing.", request.path)
        response = _error(request, 408, "Request Timeout", "the request body stopped arriving")
        response.force_close()
        return response

    async def expect(self, request: web.Request) -> web.StreamResponse | None:
        """`Expect: 100-continue`: refuse a body over the limit instead of inviting it."""
        limit = self.options.max_upload
        if request.content_length is not None and request.content_length > limit:
            # No "100 Continue" first: the client must not start sending what we refuse.
            response = _error(request, 413, "Request body too large", f"at most {limit} bytes")
            response.force_close()
            return response
        if request.version != aiohttp.HttpVersion11:
            return None
        if request.headers.get("Expect", "").lower() != "100-continue":
            return _error(request, 417, "Expectation Failed", "only 100-continue is supported")
        await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        request.writer.output_size = 0  # the response proper has not started
        return None

    async def close(self) -> None:
        """Close the lean client's pooled connections (the session is closed by its owner)."""
        if self.client is not None:
            await self.client.close()

    def _target(self, request: web.Request) -> URL:
        return URL(self._origin + self._raw_target(request), encoded=True)

    @staticmethod
    def _raw_target(request: web.Request) -> str:
        # raw_path keeps the path and query byte-identical (no decode/re-encode).
        raw = request.raw_path
        if not raw.startswith("/"):
            # Absolute form ("GET http://host/path"): aiohttp took the host from it (it
            # wins over Host, RFC 9112 §3.2.2); the site gets the origin form.
            raw = request.rel_url.raw_path_qs
        return raw

    def _headers(self, request: web.Request) -> CIMultiDict[str]:
        return hdr.upstream_request_headers(
            request.headers,
            peer=request.remote,
            peer_trusted=visitor(request).peer_trusted,
            scheme=request.scheme,
            host=request.host,
            upstream_host=self.options.upstream.raw_authority,
            preserve_host=self.options.preserve_host,
        )

    async def _respond(
        self, request: web.Request, upstream: Answer, run: Run | None
    ) -> web.StreamResponse:
        public_origin = visitor(request).origin
        headers = hdr.client_response_headers(
            upstream.headers, upstream=self.options.upstream, public_origin=public_origin
        )
        if upstream.status == 304:
            hdr.weaken_revalidated(headers, request.headers.getall("If-None-Match", ()))
        try:
            plan = self.pages.plan(request, upstream.status, headers)
        except ValueError as exc:
            # A Host or URL no parser accepts (client-controlled): serve the page untagged
            # rather than answer 500 for it.
            log.warning("Not tagging %s: %s", request.path, exc)
            self.pages.counters.skip("invalid")
            plan = None
        if plan is not None or self._tags_head(request, upstream.status, headers):
            # HEAD answers the headers GET would (without the cookies of a page view).
            hdr.prepare_rewritten(headers)
            hdr.keep_private(headers)
        if plan is not None:
            for cookie in plan.cookies:
                headers.add("Set-Cookie", cookie)
        response = web.StreamResponse(status=upstream.status, reason=upstream.reason)
        response.headers.extend(headers)
        no_body = request.method == "HEAD" or upstream.status in _NO_BODY_STATUS
        tap = self._tap(run, upstream.status, headers, plan, no_body)
        products = self._catalog_tap(request, upstream.status, headers, plan, no_body)
        raw = _raw_feed(tap, products)
        try:
            return await self._stream(
                request,
                upstream,
                response,
                headers,
                plan,
                raw,
                no_body,
                products.ended if products is not None else None,
            )
        finally:
            if tap is not None:
                self._finish(tap, request)
            if products is not None:
                products.finish()

    def _catalog_tap(
        self,
        request: web.Request,
        status: int,
        headers: CIMultiDict[str],
        plan: PagePlan | None,
        no_body: bool,
    ) -> CatalogTap | None:
        if self.catalog is None:
            return None
        try:
            products = self.catalog.tap(request, status, headers, no_body=no_body)
        except Exception:
            # The catalog must never cost the visitor the page.
            log.exception("Reading %s for products failed.", request.path)
            return None
        if products is not None and plan is not None:
            # The rewriter decodes the body already: both readers share its decoded pieces.
            rules_tap = plan.rewrite.tap
            plan.rewrite.tap = (
                products.decoded if rules_tap is None else _both(rules_tap, products.decoded)
            )
        return products

    def _tags_head(self, request: web.Request, status: int, headers: CIMultiDict[str]) -> bool:
        try:
            return self.pages.tags_head(request, status, headers)
        except ValueError:
            return False  # a Host no parser accepts: the page is not tagged either

    def _begin(self, request: web.Request) -> Run | None:
        if self.proxied_rules is None:
            return None
        try:
            return self.proxied_rules.begin(request)
        except Exception:
            # Rules must never cost the visitor the page (a Host no parser accepts, ...).
            log.exception("Rules failed on %s.", request.path)
            return None

    @staticmethod
    def _finish(tap: PageTap, request: web.Request) -> None:
        try:
            tap.finish()
        except Exception:
            log.exception("Rule events for %s were not built.", request.path)

    def _tap(
        self,
        run: Run | None,
        status: int,
        headers: CIMultiDict[str],
        plan: PagePlan | None,
        no_body: bool,
    ) -> PageTap | None:
        if run is None or self.proxied_rules is None:
            return None
        fbp, fbc = (plan.fbp, plan.fbc) if plan is not None else (None, None)
        try:
            tap = self.proxied_rules.respond(
                run, status, headers, fbp=fbp, fbc=fbc, head_only=no_body
            )
        except Exception:
            # Rules must never cost the visitor the page.
            log.exception("Rules failed on %s.", run.request.path)
            return None
        if tap is not None and plan is not None:
            plan.rewrite.tap = tap.decoded
        return tap

    async def _stream(
        self,
        request: web.Request,
        upstream: Answer,
        response: web.StreamResponse,
        headers: CIMultiDict[str],
        plan: PagePlan | None,
        raw: Callable[[bytes], None] | None,
        no_body: bool,
        ended: Callable[[], None] | None = None,
    ) -> web.StreamResponse:
        if (
            not no_body
            and request.version < aiohttp.HttpVersion11
            and "Content-Length" not in headers
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
                if plan is not None:
                    await _stream_rewritten(upstream, response, plan)
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
            log.warning("Upstream body broke off for %s: %s", request.path, _reason(exc))
            _abort(request)
            return response
        return response


def _both(
    first: Callable[[bytes], None], second: Callable[[bytes], None]
) -> Callable[[bytes], None]:
    def feed(piece: bytes) -> None:
        first(piece)
        second(piece)

    return feed


def _raw_feed(tap: PageTap | None, products: CatalogTap | None) -> Callable[[bytes], None] | None:
    """What reads the origin's chunks when the page is not rewritten: rules, products, both."""
    if tap is None:
        return None if products is None else products.raw
    return tap.raw if products is None else _both(tap.raw, products.raw)


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


async def _stream_rewritten(upstream: Answer, response: web.StreamResponse, plan: PagePlan) -> None:
    rewrite = plan.rewrite
    content = upstream.content
    while chunk := await content.readany():
        out = rewrite.feed(chunk)
        if rewrite.injected and not plan.submitted:
            # The page now carries the event id: only now is the server twin worth storing.
            plan.submit()
        if content.at_eof():
            break  # the last chunk leaves with the tail and the end, in one write
        if out:
            await response.write(out)
    else:
        out = b""
    tail = rewrite.finish()
    if rewrite.injected and not plan.submitted:
        plan.submit()
    await response.write_eof(out + tail if tail else out)


def _abort(request: web.Request) -> None:
    transport = request.transport
    if transport is not None:
        transport.abort()


def _reason(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__


def _error(request: web.Request, status: int, title: str, detail: str) -> web.Response:
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
