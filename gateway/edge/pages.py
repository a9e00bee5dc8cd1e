"""HTML page views in (request + upstream response headers), a page plan out.

A plan carries what the proxy changes on one HTML document — the injected tag, the
first-party cookies — and the server PageView that shares the tag's event id. The
PageView is stored only once the tag is really in the page, so browser and server never
report the same view under two ids.
"""

from __future__ import annotations

import hashlib
import hmac
import html
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from urllib.parse import urlsplit

from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy

from gateway import __version__
from gateway.delivery.ratelimit import RateLimits
from gateway.edge import cookies, pagetoken
from gateway.edge import headers as hdr
from gateway.edge.csp import CspDecision
from gateway.edge.csp import decide as csp_decide
from gateway.edge.encoding import RewriteStream, open_rewrite
from gateway.edge.inject import HeadInjector, html_charset_is_ascii_compatible
from gateway.edge.intake import Intake, Refused, Stored
from gateway.edge.pagecounts import PageCounters
from gateway.edge.visitor import Visitor, visitor
from gateway.models import NewEvent
from gateway.pipeline import pageview
from gateway.pipeline.events import Context, Target
from gateway.pipeline.urls import DEFAULT_SENSITIVE_PARAMS, scrub_url
from gateway.settings import Settings

log = logging.getLogger("gateway.pages")

# Requests for a piece of a page (htmx, Turbo frames, XHR) get no tag and count no view.
_FRAGMENT_HEADERS = ("HX-Request", "X-Requested-With", "Turbo-Frame", "X-Up-Version")
_DOCUMENT_DESTS = frozenset({"document", "iframe", "frame"})


@dataclass(slots=True, frozen=True)
class _Prepared:
    """What a page's plan needs of its request alone (`PageViews.prepare`)."""

    event_id: str
    token: str
    triggers: str | None
    # The Set-Cookie lines and the `_fbp`/`_fbc` they settle on (none without consent).
    cookies: tuple[str, ...]
    fbp: str | None
    fbc: str | None


_PREPARED = web.RequestKey("page_prepared", _Prepared)


@dataclass(slots=True)
class PagePlan:
    """What the proxy does to one HTML response."""

    rewrite: RewriteStream
    cookies: tuple[str, ...]  # Set-Cookie lines
    # Builds the PageView's rows and hands them over: called once the page has left, so
    # the build (tens of µs) is off the visitor's wait (issue 19). None: no PageView.
    view: Callable[[], list[NewEvent]] | None
    store: Callable[[Callable[[], list[NewEvent]] | None], None]
    submitted: bool = False
    # The visitor's _fbp/_fbc after this response (sent by the browser or issued now).
    fbp: str | None = None
    fbc: str | None = None

    def submit(self) -> None:
        """Build the PageView and hand it to the outbox (once; after the page's last write)."""
        self.submitted = True
        # Also without a PageView (no consent, prefetch): `store` counts every tagged page.
        self.store(self.view)


class PageViews:
    """Decides, per HTML document, the tag, the cookies and the server PageView."""

    def __init__(
        self, settings: Settings, intake: Intake, secret: bytes, *, site: str | None = None
    ) -> None:
        self.site = site
        self.intake = intake
        self.secret = secret
        self.counters = PageCounters(metrics=intake.metrics, site=site)
        # The page's click/submit rules as JSON for px.js (set when rule files are loaded).
        self.triggers: Callable[[web.Request], str | None] | None = None
        self.configure(settings)

    def configure(self, settings: Settings) -> None:
        """(Re)read the settings this stage uses; called again on reload."""
        self.settings = settings
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
            site=self.site,
            source="proxy",
        )
        # Only real pixel ids go into the page: the dry-run placeholder means "none".
        self.pixel_ids = ",".join(p.id for p in pixels if p.id.isdigit())
        self.script = f"{settings.prefix}/px.js?v={__version__}"
        # The tag's start up to its event id is the same on every page: escaped once.
        self.tag_start = f'<script src="{html.escape(self.script, quote=True)}" data-event-id="'
        self.collect_context = Context(
            targets=self.context.targets,
            default_country=settings.default_country,
            max_future_skew=settings.max_future_skew,
            site=self.site,
            source="collect",
        )
        self.rate_limits = RateLimits(settings.collect_rate, settings.collect_burst)
        consent_attr = ""
        if settings.consent != "none":
            consent_attr = f"{settings.consent}=" + "|".join(settings.consent_values)
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
        self.static_rendered = _render(self.static_attrs)

    # the plan -------------------------------------------------------------------

    def prepare(self, request: web.Request) -> bool:
        """Work out what a navigation's page needs of its request alone (event id, token,
        triggers, cookies) while the site answers it; `plan` takes it from there. True
        when it did.

        A request that cannot be tagged whatever the answer (injection off, a fragment, a
        bot) is left alone: its page path decides and counts as before. The work is ~100 µs
        of CPU at a low request rate (cold caches), on the critical path when the site
        answers faster than it.
        """
        if request.method != "GET" or not self.settings.inject:
            return False
        who = visitor(request)
        if _fragment(request.headers) or who.bot:
            return False
        request[_PREPARED] = self._prepare(request, who)
        return True

    def _prepare(self, request: web.Request, who: Visitor) -> _Prepared:
        event_id = pagetoken.new_event_id()
        token = pagetoken.sign(
            self.secret, event_id, issued=int(time.time()), client=who.page_client()
        )
        triggers = self.triggers(request) if self.triggers is not None else None
        if not who.consent.track:
            return _Prepared(event_id, token, triggers, (), None, None)
        fbp, fbc, lines = self._cookies(request, who)
        return _Prepared(event_id, token, triggers, tuple(lines), fbp, fbc)

    def plan(self, request: web.Request, status: int, headers: CIMultiDict[str]) -> PagePlan | None:
        """A plan for an HTML document the gateway should tag, else None."""
        settings = self.settings
        if request.method != "GET":
            return None
        who = visitor(request)
        # `_taggable` tests the status and the media type first.
        decision = self._taggable(request, status, headers, who, count=True)
        if decision is None:
            return None
        consent = who.consent
        prepared = request.get(_PREPARED) or self._prepare(request, who)
        event_id = prepared.event_id
        tag = self._tag(prepared, decision.nonce, ldu=consent.ldu)
        rewrite = open_rewrite(
            headers.get("Content-Encoding"),
            HeadInjector(tag, max_scan=settings.inject_max_scan),
        )
        if rewrite is None:
            self.counters.skip("encoding")
            self._skipped(headers, "encoding")
            return None
        view = None
        fbp, fbc = prepared.fbp, prepared.fbc  # None without consent
        if consent.track:
            if not who.prefetch:
                # A valid `_fbp` is kept as it came: a different one was minted just now.
                new_visitor = fbp is not None and fbp != who.fbp
                view = partial(self._pageview, request, who, event_id, fbp, fbc, new_visitor)
            else:
                self.counters.metrics.dropped("prefetch", site=self.site)
        else:
            self.counters.metrics.dropped("consent", site=self.site)
            # Tagged, but no cookies and no PageView: say why as for an untagged page.
            self._skipped(headers, "consent")
        return PagePlan(
            rewrite=rewrite,
            cookies=prepared.cookies,
            view=view,
            store=self._store,
            fbp=fbp,
            fbc=fbc,
        )

    def _skipped(self, headers: CIMultiDict[str], reason: str) -> None:
        """No tag (or no tracking) for this page: say why when `debug_headers` is on."""
        if self.settings.debug_headers:
            headers["X-Capi-Skipped"] = reason

    def tags_head(self, request: web.Request, status: int, headers: CIMultiDict[str]) -> bool:
        """For a HEAD: True when a GET of the page would be tagged, so it gets GET's headers."""
        if request.method != "HEAD":
            return False
        if self._taggable(request, status, headers, visitor(request)) is None:
            return False
        probe = HeadInjector(b"", max_scan=self.settings.inject_max_scan)
        return open_rewrite(headers.get("Content-Encoding"), probe) is not None

    def _taggable(
        self,
        request: web.Request,
        status: int,
        headers: CIMultiDict[str],
        who: Visitor,
        *,
        count: bool = False,
    ) -> CspDecision | None:
        """The CSP decision for a page the gateway may tag, else None (counted if `count`)."""
        if status != 200 or hdr.media_type(headers) not in hdr.HTML_TYPES:
            return None
        if not self.settings.inject:
            self._skipped(headers, "inject-off")
            return None
        reason = self._skip_reason(request, headers, who)
        if reason:
            if count:
                self.counters.skip(reason)
            self._skipped(headers, reason)
            return None
        decision = csp_decide(
            headers.getall("Content-Security-Policy", ()),
            script_path=self.script,
            origin=who.origin,
        )
        if not decision.allowed:
            if count:
                log.info(
                    "Not tagging %s: its CSP blocks our script (%s).", request.path, decision.reason
                )
                self.counters.skip("csp")
            self._skipped(headers, "csp")
            return None
        return decision

    def _skip_reason(self, request: web.Request, headers: CIMultiDict[str], who: Visitor) -> str:
        if _fragment(request.headers):
            return "fragment"
        if "attachment" in headers.get("Content-Disposition", "").lower():
            return "download"
        if "no-transform" in headers.get("Cache-Control", "").lower():
            return "no-transform"
        if "Content-Range" in headers:
            return "range"
        if not html_charset_is_ascii_compatible(headers.get("Content-Type")):
            return "charset"
        if who.bot:
            return "bot"
        return ""

    def _tag(self, prepared: _Prepared, nonce: str | None, *, ldu: bool) -> bytes:
        # The id (a UUID) and the token (base64url) need no escaping; the page-independent
        # attributes were rendered once, in the same order as before.
        tag = (
            f'{self.tag_start}{prepared.event_id}" data-token="{prepared.token}" '
            f"{self.static_rendered}"
        )
        triggers = prepared.triggers
        if ldu or triggers or nonce:
            more: dict[str, str] = {}
            if ldu:
                more["data-ldu"] = "1"
            if triggers:
                more["data-triggers"] = triggers
            if nonce:
                more["nonce"] = nonce
            tag += " " + _render(more)
        return (tag + "></script>").encode("ascii")

    def _cookies(
        self, request: web.Request, who: Visitor
    ) -> tuple[str | None, str | None, list[str]]:
        return cookies.for_page(
            who.host,
            who.fbp,
            who.fbc,
            cookies.fbclid_from(request.query_string, request.headers.get("Referer")),
            secure=who.scheme == "https",
            override=self.settings.cookie_domain,
            max_age=int(self.settings.cookie_lifetime),
            now_ms=int(time.time() * 1000),
        )

    def _pageview(
        self,
        request: web.Request,
        who: Visitor,
        event_id: str,
        fbp: str | None,
        fbc: str | None,
        new_visitor: bool,
    ) -> list[NewEvent]:
        referer = request.headers.get("Referer")
        # A Referer no URL parser accepts is dropped, not allowed to lose the PageView.
        referrer = scrub_url(referer, self.sensitive) if referer and _parses(referer) else None
        # The gateway built this event itself: `pageview.build` skips re-validating what
        # cannot be wrong and gives exactly what `events.prepare` would (tested).
        result = pageview.build(
            event_id=event_id,
            url=scrub_url(who.origin + request.raw_path, self.sensitive),
            referrer=referrer,
            user_agent=who.user_agent,
            client_ip=who.client_ip,
            fbp=fbp,
            fbc=fbc,
            consent_fields=who.consent.event_fields(),
            ctx=self.context,
            hold=self.settings.pageview_hold or None,
            new_visitor=new_visitor,
        )
        if isinstance(result, list):
            # A view Meta would refuse (no usable identifiers): counted, not stored.
            self.counters.skip("unmatchable")
            log.debug("PageView for %s not stored: %s", request.path, result[0].message)
            return []
        return result.rows

    # storing --------------------------------------------------------------------

    def _store(self, view: Callable[[], list[NewEvent]] | None) -> None:
        self.counters.tagged()
        if view is None:
            return
        try:
            rows = view()
        except Exception:
            # The page is out already: a PageView that cannot be built is logged, not raised.
            log.exception("The PageView of a tagged page was not built.")
            self.counters.failed()
            return
        if rows:
            self.intake.store_later(rows, self._settled)

    def _settled(self, result: Stored | Refused) -> None:
        # The intake counts and logs a refusal; the page has long gone out either way.
        if isinstance(result, Stored):
            self.counters.saved()
        else:
            self.counters.failed()

    async def drain(self) -> None:
        """Wait until every PageView handed over is stored or refused."""
        await self.intake.drain()


def page_secret(settings: Settings, key: bytes) -> bytes:
    """The page-token secret: configured (replicas must share it), else derived from the key."""
    if settings.secret:
        return settings.secret.encode()
    return hmac.new(key, b"capi-gateway page token v1", hashlib.sha256).digest()


def _fragment(headers: CIMultiDictProxy[str]) -> bool:
    """Whether the request asks for a piece of a page (htmx, Turbo, XHR, a subresource)."""
    for name in _FRAGMENT_HEADERS:
        if name in headers:
            return True
    dest = headers.get("Sec-Fetch-Dest")
    return dest is not None and dest not in _DOCUMENT_DESTS


def _render(attrs: dict[str, str]) -> str:
    return " ".join(f'{k}="{html.escape(v, quote=True)}"' for k, v in attrs.items())


def _parses(url: str) -> bool:
    try:
        urlsplit(url).port  # noqa: B018 - the port is parsed lazily
    except ValueError:
        return False
    return True
