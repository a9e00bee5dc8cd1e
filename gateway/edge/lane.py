"""The asset lane: a request the gateway relays unchanged, decided before aiohttp's
Application machinery and answered with as little per-request object work as possible.

Nearly every request a site gets is an asset (a style sheet, a script, an image) that no
rule, catalog or page tag reads. Through the Application each paid for the router, the
match info, the request id middleware, the `Visitor`, a `StreamResponse` and its header
preparation — about a third of the gateway's own CPU per asset. The lane sits in front of
the Application (`gateway.siteapp.install_lane` makes it the server's request handler) and
takes a request only when everything that could want it says no from the request alone:

- GET or HEAD without a body, no `Expect`, no `Upgrade` (WebSockets), origin-form target;
- not under the gateway's prefix; headers within `max_request_headers_kb` (else the 431);
- a site answers for the host, with no rule that may match the path (`RuleSet.candidates`,
  read per request: a reload applies);
- the client holds less than its upstream share (else the full path answers the 503);
- no `on_response_prepare` hook on the app (the lane makes no StreamResponse to show it).

Everything else goes to the Application as before. An answer that turns out to be HTML
(a page we may tag or count), or a 404/410 on a site with a `[catalog]` (a product gone),
leaves the lane too: the request is routed then and the page path takes the answer
already in hand. Document navigations take the lane as well (issue 19): a page's request
then reaches the site without the router, the middleware and the multidict header rules
in front of it, its route and visitor are worked out while the site answers, and only
the answer goes through the page path. The relay keeps every pass-through rule:
hop-by-hop fields dropped, redirects pointed at the public origin, 304 ETags weakened,
HEAD/204/304 without a body, close-delimited bodies for HTTP/1.0, metrics and upstream
health counted.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Sized
from contextlib import AbstractContextManager
from functools import partial
from typing import Any

import aiohttp
from aiohttp import web
from aiohttp.http_writer import _serialize_headers

from gateway.edge import headers as hdr
from gateway.edge.appkeys import Runtime
from gateway.edge.laneanswer import Sent, head_copied, head_rewritten
from gateway.edge.lanewire import (
    RequestScan,
    client_response,
    lane_request,
    upstream_request,
)
from gateway.edge.passthrough import NO_BODY_STATUS, reason
from gateway.edge.proxy import Proxy
from gateway.edge.sites import SiteHolder
from gateway.edge.visitor import Visitor, VisitorRules
from gateway.metrics import Metrics

log = logging.getLogger("gateway.proxy")

_V11 = aiohttp.HttpVersion11
_HTML_BYTES = frozenset(name.encode() for name in hdr.HTML_TYPES)


def _text(value: bytes) -> str:
    """A field value as aiohttp's parser decodes it."""
    return value.decode("utf-8", "surrogateescape")


# A `[catalog]` reads 200 HTML pages (handed back as pages are) and counts a 404/410 of a
# product URL, whatever its type, as a miss: the only other answers it needs to see.
_CATALOG_MISS = frozenset({404, 410})


def _reads_misses(proxy: Proxy, method: str) -> bool:
    catalog = proxy.catalog
    return method == "GET" and catalog is not None and catalog.settings is not None


def _html(content_type: bytes) -> bool:
    return content_type.split(b";", 1)[0].strip().lower() in _HTML_BYTES


# What `Lane.pick` found out about a request the lane takes: its site's proxy, the
# `[[sites]]` name (None for a single site), the client's address (for its share), whether
# the peer is a trusted proxy, the scheme and host the visitor sees, the Host field as sent,
# the scan of its fields and the visitor rules of its site. A plain tuple: a NamedTuple's
# constructor cost ~2.5 k instructions per asset (callgrind_proxy.py).
Picked = tuple[Proxy, str | None, str, bool, str, str, str, RequestScan, VisitorRules]


class Lane:
    """Picks the requests the lane takes and relays them; the rest go to `full`.

    `runtime` is the app's (a reload replaces its settings and visitor rules in place).
    `identify(request)` sets the request id for the log records of a lane request that goes
    wrong and yields it (the Application's middleware does the same for its requests).
    `route(request)` gives a lane request the match info the Application's handlers read,
    for an answer that leaves the lane.
    """

    def __init__(
        self,
        holder: SiteHolder,
        metrics: Metrics,
        runtime: Runtime,
        full: Callable[[web.Request], Awaitable[web.StreamResponse]],
        identify: Callable[[web.Request], AbstractContextManager[str]],
        route: Callable[[web.Request], Awaitable[None]],
        prepare_hooks: Sized = (),
    ) -> None:
        self.holder = holder
        # Proxied counts and upstream latencies go to the metrics' tally directly.
        self.tally = metrics.tally
        self.runtime = runtime
        self.full = full
        self.identify = identify
        self.route = route
        # The app's `on_response_prepare` signal: a hook expects every response to pass it
        # (a StreamResponse): with any, the lane leaves every request to the Application.
        self.prepare_hooks = prepare_hooks
        # Requests the lane relayed, and those it gave back after seeing an HTML answer.
        self.taken = 0
        self.handed_back = 0
        # Navigations whose page was prepared while the site answered (`_expect_page`).
        self.prepared = 0

    async def __call__(self, request: web.Request) -> Any:
        """aiohttp's request handler: the lane's relay, or the Application's `_handle`."""
        picked = self.pick(request)
        if picked is None:
            return await self.full(request)
        # One coroutine for the whole relay: each level more is resumed on every wake-up.
        proxy, site, client, trusted, scheme, host, given_host, scan, _ = picked
        shares = proxy.shares
        shares.take(client)
        try:
            options = proxy.options
            method = request.method
            raw = request.raw_path
            wire = None
            if raw.isascii():
                wire = upstream_request(
                    f"{method} {raw} HTTP/1.1".encode("ascii"),
                    scan,
                    peer=request.remote,
                    peer_trusted=trusted,
                    scheme=request.scheme,
                    host=given_host,
                    upstream_host=options.upstream.raw_authority,
                    preserve_host=options.preserve_host,
                )
            if wire is None:
                # A Connection line naming fields, a target that is not ASCII.
                headers = hdr.upstream_request_headers(
                    request.headers,
                    peer=request.remote,
                    peer_trusted=trusted,
                    scheme=request.scheme,
                    host=request.host,
                    upstream_host=options.upstream.raw_authority,
                    preserve_host=options.preserve_host,
                )
                length = request.headers.get("Content-Length")
                if length is not None:  # a GET's "Content-Length: 0" goes on as sent
                    headers["Content-Length"] = length
                wire = _serialize_headers(f"{method} {raw} HTTP/1.1", headers)
            upstream_client = proxy.client
            assert upstream_client is not None
            started = time.monotonic()
            # A navigation: what its page will need of the request is worked out while the
            # site works on it.
            meanwhile = (
                partial(self._expect_page, request, picked)
                if scan.document and method == "GET"
                else None
            )
            try:
                upstream = await upstream_client.send(method, wire, meanwhile)
            except TimeoutError:
                response: Any = self._own(request, proxy._timed_out, request)
            except (aiohttp.ClientError, OSError) as exc:
                response = self._own(request, proxy._unreachable, request, exc)
            else:
                try:
                    proxy._answered(upstream, started)
                    status = upstream.status
                    copied = None
                    if meanwhile is not None and hdr.media_type(upstream.headers) in hdr.HTML_TYPES:
                        page = True  # a navigation's page: no relay copy of its fields
                    else:
                        if method == "GET" and status >= 200 and status not in NO_BODY_STATUS:
                            copied = client_response(upstream.raw_headers)
                        page = (
                            copied[1].type is not None and _html(copied[1].type)
                            if copied is not None
                            else hdr.media_type(upstream.headers) in hdr.HTML_TYPES
                        )
                    if page or (status in _CATALOG_MISS and _reads_misses(proxy, method)):
                        # A page after all: the page path decides (tag, HEAD headers, counts);
                        # or a product URL gone, which the site's catalog counts as a miss.
                        self.handed_back += 1
                        with self.identify(request):
                            if request._match_info is None:
                                await self.route(request)
                            response = await proxy._respond(request, upstream, None)
                    else:
                        self.taken += 1
                        response = (
                            head_rewritten(request, upstream, options.upstream, scheme, host)
                            if copied is None
                            else head_copied(request, upstream, *copied)
                        )
                        if response.body_length >= 0:
                            # The body as it arrives, in this coroutine; the headers leave
                            # with its first chunk (one write for a small asset) and its
                            # end with the last (no write of its own).
                            content = upstream.content
                            writer = request._payload_writer
                            try:
                                while chunk := await content.readany():
                                    response.body_length += len(chunk)
                                    if content.at_eof():
                                        await writer.write_eof(chunk)
                                        break
                                    await writer.write(chunk)
                                else:
                                    await writer.write_eof()
                            except (ConnectionResetError, aiohttp.ClientError, TimeoutError) as exc:
                                self._broken(request, response, exc)
                finally:
                    upstream.release()
        finally:
            shares.give_back(client)
        self.tally.proxied(response.status, site)
        return response

    # -- the decision --------------------------------------------------------------------

    def pick(self, request: web.Request) -> Picked | None:
        """The proxy, site, client and forwarding facts of a lane request, else None."""
        if request.method not in ("GET", "HEAD") or request.body_exists or self.prepare_hooks:
            return None
        raw = request.raw_path
        runtime = self.runtime
        settings = runtime.settings
        prefix = settings.prefix
        if not raw.startswith("/") or raw.startswith(prefix):
            return None
        # Upgrade, Expect, too many header bytes (the Application's 431).
        scan = lane_request(request.raw_headers, settings.max_request_headers_kb * 1024)
        if scan is None:
            return None
        path = raw.split("?", 1)[0] if "%" not in raw else request.path
        if path.startswith(prefix):
            return None  # an encoded prefix ("/%5Fcapi/..."): the router decides
        rules = runtime.visitors
        peer = request.remote
        trusted = rules.peer_trusted(peer)
        given_host = request.host if scan.host is None else _text(scan.host)
        scheme, host = request.scheme, given_host
        if trusted:
            if scan.proto is not None:
                scheme = _text(scan.proto).split(",")[0].strip()
            if scan.xfh is not None:
                host = _text(scan.xfh).split(",")[0].strip()
        holder = self.holder
        router = holder.router
        site: str | None = None
        if router.by_name:
            stages = router.match(host)
            if stages is None:
                return None  # the Application's 421
            site, rules = stages.name, stages.runtime.visitors
        else:
            stages = holder.single
            if stages is None:
                return None
        proxy = stages.proxy
        if proxy is None or proxy.client is None:
            return None
        proxied_rules = proxy.proxied_rules
        if proxied_rules is not None:
            ruleset = proxied_rules.rules
            if ruleset.rules and ruleset.candidates(path):
                return None
        client = rules.client_ip_of(peer, scan.forwarding) or ""
        shares = proxy.shares
        if shares.held(client) >= shares.per_client:
            return None  # the Application's 503 (counted there)
        return proxy, site, client, trusted, scheme, host, given_host, scan, rules

    async def _expect_page(self, request: web.Request, picked: Picked) -> None:
        """Route a navigation, settle its visitor and prepare its page's request-side parts
        (`PageViews.prepare`) while the site answers it: off the visitor's wait once the
        page is in (an answer the lane relays wastes that work: tens of µs).

        The visitor is made of what `pick` read (trust, scheme, host, site, address): the
        same facts `Visitor.of` would read off the fields again."""
        proxy, site, client, trusted, scheme, host, _, _, rules = picked
        try:
            await self.route(request)
            who = Visitor.known(
                request,
                rules,
                peer_trusted=trusted,
                scheme=scheme,
                host=host,
                site=site,
                client_ip=client or None,
            )
            who.prefetch  # noqa: B018 - read once now
            self.prepared += proxy.pages.prepare(request)
        except Exception:
            # The page path works the same out again, and reports what fails there.
            log.debug("Preparing %s for its page failed.", request.path, exc_info=True)

    # -- the relay -----------------------------------------------------------------------

    def _own(
        self, request: web.Request, make: Callable[..., web.Response], *args: Any
    ) -> web.Response:
        """A page of the gateway's own (502, 504) with its request id, as the Application's
        middleware gives one (and the id on the warning it logs)."""
        with self.identify(request) as rid:
            response = make(*args)
        response.headers["X-Request-ID"] = rid
        return response

    def _broken(self, request: web.Request, sent: Sent, exc: BaseException) -> None:
        """The body did not make it: the visitor left, or the site's broke off."""
        sent.keep_alive = False
        if isinstance(exc, ConnectionResetError):
            log.debug("Client left during %s %s.", request.method, request.path)
            return
        # The status line may be out: the only honest signal left is a broken connection.
        with self.identify(request):
            log.warning("Upstream body broke off for %s: %s", request.path, reason(exc))
        transport = request.transport
        if transport is not None:
            transport.abort()
