"""HTML page views in (request + upstream response headers), a page plan out.

A plan carries what the proxy changes on one HTML document — the injected tag, the
first-party cookies — and the server PageView that shares the tag's event id. The
PageView is stored only once the tag is really in the page, so browser and server never
report the same view under two ids.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import hmac
import html
import ipaddress
import logging
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from aiohttp import web
from multidict import CIMultiDict

from gateway import __version__
from gateway.delivery.outbox import Outbox, OutboxClosed, OutboxFull
from gateway.delivery.ratelimit import RateLimits
from gateway.edge import cookies, pagetoken
from gateway.edge import headers as hdr
from gateway.edge import identity as ident
from gateway.edge.csp import decide as csp_decide
from gateway.edge.encoding import RewriteStream, open_rewrite
from gateway.edge.inject import HeadInjector, html_charset_is_ascii_compatible
from gateway.models import NewEvent
from gateway.ops.metrics import Metrics
from gateway.pipeline.events import Context, Target, prepare
from gateway.pipeline.urls import DEFAULT_SENSITIVE_PARAMS, scrub_url
from gateway.settings import Settings

log = logging.getLogger("gateway.pages")

_HTML_TYPES = frozenset({"text/html", "application/xhtml+xml"})
# Requests for a piece of a page (htmx, Turbo frames, XHR) get no tag and count no view.
_FRAGMENT_HEADERS = ("HX-Request", "X-Requested-With", "Turbo-Frame", "X-Up-Version")
_DOCUMENT_DESTS = frozenset({"document", "iframe", "frame"})


@dataclass(slots=True)
class PagePlan:
    """What the proxy does to one HTML response."""

    rewrite: RewriteStream
    cookies: list[str]
    rows: list[NewEvent]
    store: Callable[[list[NewEvent]], None]
    submitted: bool = False
    # The visitor's _fbp/_fbc after this response (sent by the browser or issued now).
    fbp: str | None = None
    fbc: str | None = None

    def submit(self) -> None:
        """Hand the PageView to the outbox (once; it never delays the page)."""
        self.submitted = True
        # Also without a PageView (no consent, prefetch): `store` counts every tagged page.
        self.store(self.rows)


@dataclass(slots=True)
class PageCounters:
    """How often each decision was taken (shown by status and metrics)."""

    injected: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    stored: int = 0
    store_failed: int = 0
    # The same decisions as Prometheus metrics, which add up every worker's.
    metrics: Metrics = field(default_factory=Metrics)

    def skip(self, reason: str) -> None:
        """Count a page left as the upstream sent it."""
        self.skipped[reason] = self.skipped.get(reason, 0) + 1
        self.metrics.page_skipped(reason)
        if reason == "bot":
            self.metrics.dropped("bot")

    def tagged(self) -> None:
        """Count a page that got the tag."""
        self.injected += 1
        self.metrics.page_tagged()

    def saved(self, rows: list[NewEvent], flags: Sequence[str]) -> None:
        """Count a PageView the outbox took (per row: "new", "merged" or "late")."""
        self.stored += 1
        self.metrics.stored(rows, flags)

    def failed(self, rows: list[NewEvent]) -> None:
        """Count a PageView the outbox could not take."""
        self.store_failed += 1
        self.metrics.refused(rows)


class PageViews:
    """Decides, per HTML document, the tag, the cookies and the server PageView."""

    def __init__(
        self, settings: Settings, outbox: Outbox, secret: bytes, *, metrics: Metrics | None = None
    ) -> None:
        self.outbox = outbox
        self.secret = secret
        self.counters = PageCounters(metrics=metrics or Metrics())
        self._tasks: set[asyncio.Task[None]] = set()
        # The page's click/submit rules as JSON for px.js (set when rule files are loaded).
        self.triggers: Callable[[web.Request], str | None] | None = None
        self.configure(settings)

    def configure(self, settings: Settings) -> None:
        """(Re)read the settings this stage uses; called again on reload."""
        self.settings = settings
        self.trusted = ident.parse_networks(settings.trusted_proxies)
        self.bots = ident.compile_bots(
            settings.bot_user_agents
            if settings.bot_user_agents is not None
            else ident.DEFAULT_BOT_PATTERNS
        )
        self.consent_config = ident.ConsentConfig(
            cookie=None if settings.consent == "none" else settings.consent,
            accepted=tuple(settings.consent_values),
            opt_out_cookie=settings.opt_out_cookie,
            gpc=settings.gpc,
        )
        self.sensitive: Sequence[str] = (
            settings.scrub_query_params
            if settings.scrub_query_params is not None
            else DEFAULT_SENSITIVE_PARAMS
        )
        pixels = settings.effective_pixels()
        self.context = Context(
            targets=[Target(p.id, p.test_event_code) for p in pixels],
            default_country=settings.default_country,
            max_future_skew=settings.max_future_skew,
            source="proxy",
        )
        # Only real pixel ids go into the page: the dry-run placeholder means "none".
        self.pixel_ids = ",".join(p.id for p in pixels if p.id.isdigit())
        self.script = f"{settings.prefix}/px.js?v={__version__}"
        self.collect_context = Context(
            targets=self.context.targets,
            default_country=settings.default_country,
            max_future_skew=settings.max_future_skew,
            source="collect",
        )
        self.rate_limits = RateLimits(settings.collect_rate, settings.collect_burst)
        consent_attr = ""
        if self.consent_config.cookie:
            consent_attr = f"{self.consent_config.cookie}=" + "|".join(self.consent_config.accepted)
        # Page-independent attributes of the tag, rendered once.
        self.static_attrs = {
            "data-endpoint": f"{settings.prefix}/collect",
            "data-pixels": self.pixel_ids,
            "data-mode": settings.browser_pixel,
        }
        if settings.browser_pixel == "load":
            self.static_attrs["data-fbevents"] = settings.fbevents_url
        if consent_attr:
            self.static_attrs["data-consent"] = consent_attr

    # identity -------------------------------------------------------------------

    def trusted_peer(self, peer: str | None) -> bool:
        """True when the socket peer is one of `trusted_proxies`."""
        return _in(peer, self.trusted)

    def public_origin(self, request: web.Request) -> str:
        """scheme://host as the visitor sees it (trusted proxies may tell us)."""
        scheme, host = request.scheme, request.host
        if _in(request.remote, self.trusted):
            scheme = request.headers.get("X-Forwarded-Proto", scheme).split(",")[0].strip()
            host = request.headers.get("X-Forwarded-Host", host).split(",")[0].strip()
        return f"{scheme}://{host}"

    def client_ip(self, request: web.Request) -> str | None:
        """The visitor's address: the peer, or the right-most untrusted forwarded hop."""
        return ident.client_ip(
            request.remote,
            request.headers.getall("X-Forwarded-For", ()),
            request.headers.getall("Forwarded", ()),
            self.trusted,
        )

    # the plan -------------------------------------------------------------------

    def plan(
        self, request: web.Request, status: int, headers: CIMultiDict[str], *, origin: str
    ) -> PagePlan | None:
        """A plan for an HTML document the gateway should tag, else None.

        `origin` is `public_origin(request)`, which the proxy has already worked out.
        """
        settings = self.settings
        if not settings.inject or request.method != "GET" or status != 200:
            return None
        if hdr.media_type(headers) not in _HTML_TYPES:
            return None
        reason = self._skip_reason(request, headers)
        if reason:
            self.counters.skip(reason)
            return None
        decision = csp_decide(
            headers.getall("Content-Security-Policy", ()),
            script_path=self.script,
            origin=origin,
        )
        if not decision.allowed:
            log.info(
                "Not tagging %s: its CSP blocks our script (%s).", request.path, decision.reason
            )
            self.counters.skip("csp")
            return None
        consent = ident.consent(request.cookies, request.headers, self.consent_config)
        event_id = str(uuid.uuid4())
        ip = self.client_ip(request)
        ua = request.headers.get("User-Agent", "")
        triggers = self.triggers(request) if self.triggers is not None else None
        tag = self._tag(event_id, ip, ua, decision.nonce, ldu=consent.ldu, triggers=triggers)
        rewrite = open_rewrite(
            headers.get("Content-Encoding"),
            HeadInjector(tag, max_scan=settings.inject_max_scan),
        )
        if rewrite is None:
            self.counters.skip("encoding")
            return None
        cookies: list[str] = []
        rows: list[NewEvent] = []
        fbp = fbc = None
        if consent.track:
            secure = origin.startswith("https:")
            fbp, fbc = self._cookies(request, origin, secure, cookies)
            if not ident.is_prefetch(request.headers):
                rows = self._pageview(request, origin, event_id, ip, ua, fbp, fbc, consent)
            else:
                self.counters.metrics.dropped("prefetch")
        else:
            self.counters.metrics.dropped("consent")
        return PagePlan(
            rewrite=rewrite, cookies=cookies, rows=rows, store=self._store, fbp=fbp, fbc=fbc
        )

    def _skip_reason(self, request: web.Request, headers: CIMultiDict[str]) -> str:
        if any(name in request.headers for name in _FRAGMENT_HEADERS):
            return "fragment"
        dest = request.headers.get("Sec-Fetch-Dest")
        if dest is not None and dest not in _DOCUMENT_DESTS:
            return "fragment"
        if "attachment" in headers.get("Content-Disposition", "").lower():
            return "download"
        if "no-transform" in headers.get("Cache-Control", "").lower():
            return "no-transform"
        if "Content-Range" in headers:
            return "range"
        if not html_charset_is_ascii_compatible(headers.get("Content-Type")):
            return "charset"
        if ident.is_bot(request.headers.get("User-Agent"), self.bots):
            return "bot"
        return ""

    def _tag(
        self,
        event_id: str,
        ip: str | None,
        ua: str,
        nonce: str | None,
        *,
        ldu: bool,
        triggers: str | None = None,
    ) -> bytes:
        token = pagetoken.sign(
            self.secret, event_id, issued=int(time.time()), client=f"{ip or ''}|{ua}"
        )
        attrs = {
            "src": self.script,
            "data-event-id": event_id,
            "data-token": token,
            **self.static_attrs,
        }
        if ldu:
            attrs["data-ldu"] = "1"
        if triggers:
            attrs["data-triggers"] = triggers
        if nonce:
            attrs["nonce"] = nonce
        rendered = " ".join(f'{k}="{html.escape(v, quote=True)}"' for k, v in attrs.items())
        return f"<script {rendered}></script>".encode("ascii")

    def _cookies(
        self, request: web.Request, origin: str, secure: bool, out: list[str]
    ) -> tuple[str | None, str | None]:
        host = origin.split("://", 1)[1]
        domain = cookies.cookie_domain(host, self.settings.cookie_domain)
        choice = cookies.decide_cookies(
            request.cookies.get("_fbp"),
            request.cookies.get("_fbc"),
            cookies.fbclid_from(request.query_string, request.headers.get("Referer")),
            now_ms=int(time.time() * 1000),
            index=cookies.subdomain_index(domain),
        )
        max_age = int(self.settings.cookie_lifetime)
        if choice.set_fbp and choice.fbp:
            out.append(
                cookies.set_cookie_header(
                    "_fbp", choice.fbp, domain=domain, max_age=max_age, secure=secure
                )
            )
        if choice.set_fbc and choice.fbc:
            out.append(
                cookies.set_cookie_header(
                    "_fbc", choice.fbc, domain=domain, max_age=max_age, secure=secure
                )
            )
        return choice.fbp, choice.fbc

    def _pageview(
        self,
        request: web.Request,
        origin: str,
        event_id: str,
        ip: str | None,
        ua: str,
        fbp: str | None,
        fbc: str | None,
        consent: ident.Consent,
    ) -> list[NewEvent]:
        user_data: dict[str, Any] = {"client_user_agent": ua}
        for key, value in (("client_ip_address", ip), ("fbp", fbp), ("fbc", fbc)):
            if value:
                user_data[key] = value
        event: dict[str, Any] = {
            "event_name": "PageView",
            "event_id": event_id,
            "action_source": "website",
            "event_source_url": scrub_url(origin + request.raw_path, self.sensitive),
            "user_data": user_data,
        }
        referer = request.headers.get("Referer")
        if referer and _parses(referer):
            # A Referer no URL parser accepts is dropped, not allowed to lose the PageView.
            event["referrer_url"] = scrub_url(referer, self.sensitive)
        event.update(consent.event_fields())
        result = prepare([event], self.context)
        if isinstance(result, list):
            # A view Meta would refuse (no usable identifiers): counted, not stored.
            self.counters.skip("unmatchable")
            log.debug("PageView for %s not stored: %s", request.path, result[0].message)
            return []
        hold = self.settings.pageview_hold
        return [dataclasses.replace(row, hold=hold) for row in result.rows] if hold else result.rows

    # storing --------------------------------------------------------------------

    def _store(self, rows: list[NewEvent]) -> None:
        self.counters.tagged()
        if not rows:
            return
        task = asyncio.get_running_loop().create_task(self._add(rows), name="pageview")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _add(self, rows: list[NewEvent]) -> None:
        try:
            flags = await self.outbox.add(rows)
            self.counters.saved(rows, flags)
        except (OutboxFull, OutboxClosed) as exc:
            self.counters.failed(rows)
            log.error("PageView %s not stored: %s", rows[0].event_id, exc)
        except Exception as exc:
            self.counters.failed(rows)
            log.error("PageView %s not stored: %r", rows[0].event_id, exc)

    async def drain(self) -> None:
        """Wait until every PageView handed over is in the outbox's queue or failed."""
        while self._tasks:
            await asyncio.wait(set(self._tasks))


def page_secret(settings: Settings, key: bytes) -> bytes:
    """The page-token secret: configured (replicas must share it), else derived from the key."""
    if settings.secret:
        return settings.secret.encode()
    return hmac.new(key, b"capi-gateway page token v1", hashlib.sha256).digest()


def _parses(url: str) -> bool:
    try:
        urlsplit(url).port  # noqa: B018 - the port is parsed lazily
    except ValueError:
        return False
    return True


def _in(address: str | None, networks: Sequence[ident.Network]) -> bool:
    if not address:
        return False
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in net for net in networks)
