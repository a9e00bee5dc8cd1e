"""Every request outside the prefix in, the upstream's answer out — streamed, unchanged.

The only change to a response is the one `pages` asks for on HTML documents (the
injected tag and the first-party cookies). Bodies stream both ways through one pooled
client session; an upstream fault is a 502/504 page, never a 500 from us.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator

import aiohttp
from aiohttp import web
from multidict import CIMultiDict
from yarl import URL

from gateway.edge import headers as hdr
from gateway.edge.catalog import CatalogPages, CatalogTap
from gateway.edge.pagebody import both, raw_feed, stream_rewritten
from gateway.edge.pages import PagePlan, PageViews
from gateway.edge.pagetap import PageTap, Run
from gateway.edge.passthrough import (
    NO_BODY_STATUS,
    Answer,
    ProxyOptions,
    error_page,
    pass_through,
    reason,
    send_answer,
    upstream_client,
    upstream_session,
)
from gateway.edge.proxied_rules import ProxiedRules
from gateway.edge.shares import ClientShares
from gateway.edge.uploads import BodyTooLarge, ClientTooSlow, RequestBody
from gateway.edge.upstream import UpstreamClient
from gateway.edge.upstream_health import UpstreamHealth
from gateway.edge.visitor import visitor
from gateway.edge.websocket import is_websocket_upgrade, relay_websocket
from gateway.metrics import Metrics

log = logging.getLogger("gateway.proxy")

# Requests the lean client carries (when they have no body): nearly every asset and page.
_LEAN_METHODS = frozenset({"GET", "HEAD"})

__all__ = ["Proxy", "ProxyOptions", "upstream_client", "upstream_session"]


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
            response = error_page(
                request, 503, "Service Unavailable", "too many requests from your address at once"
            )
            response.headers["Retry-After"] = "1"
            return response
        try:
            return await self._forward(request)
        finally:
            self.shares.give_back(client)

    async def _forward(self, request: web.Request) -> web.StreamResponse:
        client = self.client
        if client is not None and not request.body_exists and request.method in _LEAN_METHODS:
            return await self._forward_lean(request, client)
        limit = self.options.max_upload
        length = request.content_length  # parsed anew on each read: once is enough
        if length is not None and length > limit:
            return error_page(request, 413, "Request body too large", f"at most {limit} bytes")
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
                return error_page(request, 413, "Request body too large", f"at most {limit} bytes")
            except ClientTooSlow:
                return self._too_slow(request)
            data = bytes(body.prefix) if complete else body.chunks()
            complete_body = complete
        started = time.monotonic()
        try:
            # Uploads (and everything without the lean client) go through aiohttp's client.
            call = self.session.request(
                request.method,
                self._target(request),
                headers=headers,
                data=data,
                allow_redirects=False,
                timeout=self.options.timeout,
                compress=None,
            )
            upstream: Answer = await (
                body.guard(call) if body is not None and not complete_body else call
            )
        except BodyTooLarge:
            return error_page(request, 413, "Request body too large", f"at most {limit} bytes")
        except ClientTooSlow:
            return self._too_slow(request)
        except TimeoutError:
            return self._timed_out(request)
        except (aiohttp.ClientError, OSError) as exc:
            return self._unreachable(request, exc)
        return await self._reply(request, upstream, run, started)

    async def _forward_lean(
        self, request: web.Request, client: UpstreamClient
    ) -> web.StreamResponse:
        """A body-less GET or HEAD (nearly every asset and page) through the lean client:
        no upload to read, bound or guard."""
        headers = self._headers(request)
        length = request.content_length
        if length is not None:  # a GET's "Content-Length: 0" goes on as sent
            headers["Content-Length"] = str(length)
        run = self._begin(request)
        started = time.monotonic()
        try:
            wire = client.wire(request.method, self._raw_target(request), headers)
            upstream = await client.send(request.method, wire)  # a coroutine fewer than request
        except TimeoutError:
            return self._timed_out(request)
        except (aiohttp.ClientError, OSError) as exc:
            return self._unreachable(request, exc)
        return await self._reply(request, upstream, run, started)

    async def _reply(
        self, request: web.Request, upstream: Answer, run: Run | None, started: float
    ) -> web.StreamResponse:
        """The site's answer relayed as it is, or through the page path when something of
        ours reads it; its connection handed back either way."""
        self._answered(upstream, started)
        try:
            if run is None and self._passes(upstream):
                return await pass_through(request, upstream, self.options)
            return await self._respond(request, upstream, run)
        finally:
            upstream.release()

    def _answered(self, upstream: Answer, started: float) -> None:
        """Count the site's answer: its latency, and the upstream's health."""
        self.metrics.upstream_latency(time.monotonic() - started, site=self.pages.site)
        status = upstream.status
        if status < 500:
            self.health.ok()  # every proxied asset comes by here: without record's lookups
        else:
            self.health.record("5xx", status=status)

    def _timed_out(self, request: web.Request) -> web.Response:
        self.health.record("timeout", status=504)
        log.warning("Upstream timed out for %s %s.", request.method, request.path)
        return error_page(request, 504, "Gateway Timeout", "the site took too long to answer")

    def _unreachable(self, request: web.Request, exc: BaseException) -> web.Response:
        self.health.record("unreachable", status=502)
        log.warning("Upstream unreachable for %s %s: %s", request.method, request.path, reason(exc))
        return error_page(request, 502, "Bad Gateway", "the site could not be reached")

    def _passes(self, upstream: Answer) -> bool:
        """True for an answer nothing of ours reads or changes (no rule ran for the request):
        not a page (tags, HEAD's page headers, products), and no catalog miss to count."""
        if hdr.media_type(upstream.headers) in hdr.HTML_TYPES:
            return False
        # With a [catalog], its reader sees every GET (a 404 is a product gone).
        return self.catalog is None or self.catalog.settings is None

    def _too_slow(self, request: web.Request) -> web.Response:
        log.info("Client stalled its upload to %s; closing.", request.path)
        response = error_page(request, 408, "Request Timeout", "the request body stopped arriving")
        response.force_close()
        return response

    async def expect(self, request: web.Request) -> web.StreamResponse | None:
        """`Expect: 100-continue`: refuse a body over the limit instead of inviting it."""
        limit = self.options.max_upload
        if request.content_length is not None and request.content_length > limit:
            # No "100 Continue" first: the client must not start sending what we refuse.
            response = error_page(request, 413, "Request body too large", f"at most {limit} bytes")
            response.force_close()
            return response
        if request.version != aiohttp.HttpVersion11:
            return None
        if request.headers.get("Expect", "").lower() != "100-continue":
            return error_page(request, 417, "Expectation Failed", "only 100-continue is supported")
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
        no_body = request.method == "HEAD" or upstream.status in NO_BODY_STATUS
        tap = self._tap(run, upstream.status, headers, plan, no_body)
        products = self._catalog_tap(request, upstream.status, headers, plan, no_body)
        raw = raw_feed(tap, products)
        try:
            body = None if plan is None else lambda: stream_rewritten(upstream, response, plan)
            ended = products.ended if products is not None else None
            return await send_answer(request, upstream, response, no_body, body, raw, ended)
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
                products.decoded if rules_tap is None else both(rules_tap, products.decoded)
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
