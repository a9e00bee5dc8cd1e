"""One request in, one `Visitor` out: who is asking, worked out once per request.

The proxy, page tagging, proxied rules, `/collect`, webhooks and the events API all read
the same `Visitor`, built on first use by `visitor(request)` and kept on the request. The
facts every request needs (is the peer a trusted proxy, the public origin) are taken at
once; the ones only tracking needs (client IP, consent, bot, prefetch, `_fbp`/`_fbc`) are
worked out on first read, so an asset the gateway only forwards pays nothing for them.
"""

from __future__ import annotations

import re
import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, cast

from aiohttp import web
from multidict import CIMultiDictProxy

from gateway.edge import identity as ident
from gateway.edge.cookies import read_cookies
from gateway.settings import Settings

_PEER_CACHE = 4096
_UA_CACHE = 4096


@dataclass(frozen=True, slots=True)
class VisitorRules:
    """What visitor facts are read with, compiled once per settings (start and reload)."""

    trusted: tuple[ident.Network, ...]
    bots: re.Pattern[str]
    consent: ident.ConsentConfig
    # `trusted_peer`'s answers by peer address: a handful of peers (the front proxy's
    # keep-alive connections) ask on every request; parsing each time costs more.
    _peers: dict[str, bool] = field(default_factory=dict, repr=False, compare=False)
    # Each peer as `client_ip` reads it (normalised) and whether it is a trusted proxy:
    # every proxied request asks for its client IP (per-client upstream shares), assets
    # included, and parsing addresses with `ipaddress` each time costs more than the rest.
    _peer_ips: dict[str, tuple[str | None, bool]] = field(
        default_factory=dict, repr=False, compare=False
    )
    # Client IPs by (trusted peer, X-Forwarded-For lines, Forwarded lines).
    _chains: dict[tuple[str, tuple[str, ...], tuple[str, ...]], str | None] = field(
        default_factory=dict, repr=False, compare=False
    )

    # `is_bot`'s answers by User-Agent: a visitor repeats its UA on every page and asset,
    # a few thousand distinct UAs cover most traffic, and one search of the bot patterns
    # over a 120-byte UA costs ~45 µs.
    _bot_uas: dict[str, bool] = field(default_factory=dict, repr=False, compare=False)

    def is_bot(self, user_agent: str) -> bool:
        """`identity.is_bot` for these rules, remembered per User-Agent (bounded)."""
        found = self._bot_uas.get(user_agent)
        if found is None:
            if len(self._bot_uas) >= _UA_CACHE:
                self._bot_uas.clear()  # crude but bounded, as the peer caches
            found = self._bot_uas[user_agent] = ident.is_bot(user_agent, self.bots)
        return found

    def peer_trusted(self, peer: str | None) -> bool:
        """`identity.trusted_peer` for these rules, remembered per peer address."""
        if peer is None:
            return False
        found = self._peers.get(peer)
        if found is None:
            if len(self._peers) >= _PEER_CACHE:
                self._peers.clear()  # crude but bounded: many distinct peers, no proxy
            found = self._peers[peer] = ident.trusted_peer(peer, self.trusted)
        return found

    def client_ip(self, peer: str | None, headers: CIMultiDictProxy[str]) -> str | None:
        """`identity.client_ip` of a request from `peer`, remembered per peer address (and
        per forwarded chain, bounded): unless the peer is a trusted proxy that forwards
        someone, the answer is the peer itself."""
        return self.client_ip_of(
            peer,
            lambda: (
                tuple(headers.getall("X-Forwarded-For", ())),
                tuple(headers.getall("Forwarded", ())),
            ),
        )

    def client_ip_of(
        self, peer: str | None, forwarding: Callable[[], tuple[tuple[str, ...], tuple[str, ...]]]
    ) -> str | None:
        """`client_ip` with the X-Forwarded-For and Forwarded lines from `forwarding()`,
        asked only when the peer is a trusted proxy."""
        if peer is None:
            return None
        found = self._peer_ips.get(peer)
        if found is None:
            if len(self._peer_ips) >= _PEER_CACHE:
                self._peer_ips.clear()
            found = self._peer_ips[peer] = ident.peer_address(peer, self.trusted)
        address, via_proxy = found
        if not via_proxy:
            return address
        xff, forwarded = forwarding()
        if not xff and not forwarded:
            return address  # a trusted proxy that forwards no one: the peer itself
        # Behind a front proxy every asset of a page repeats its visitor's chain.
        key = (peer, xff, forwarded)
        ip = self._chains.get(key, _UNSET)
        if ip is _UNSET:
            if len(self._chains) >= _PEER_CACHE:
                self._chains.clear()
            ip = self._chains[key] = ident.client_ip(peer, xff, forwarded, self.trusted)
        return cast("str | None", ip)

    @classmethod
    def from_settings(cls, settings: Settings) -> VisitorRules:
        """Parse trusted proxies, bot patterns and the consent settings."""
        return cls(
            trusted=ident.parse_networks(settings.trusted_proxies),
            bots=ident.compile_bots(
                settings.bot_user_agents
                if settings.bot_user_agents is not None
                else ident.DEFAULT_BOT_PATTERNS
            ),
            consent=ident.ConsentConfig(
                cookie=None if settings.consent == "none" else settings.consent,
                accepted=tuple(settings.consent_values),
                opt_out_cookie=settings.opt_out_cookie,
                gpc=settings.gpc,
            ),
        )


_UNSET: Any = object()


@dataclass(frozen=True, slots=True)
class Visitor:
    """The visitor behind one request, as the gateway may believe it.

    Forwarded headers (`X-Forwarded-*`, `Forwarded`) count only from a trusted proxy.
    """

    peer_trusted: bool
    scheme: str
    host: str
    user_agent: str
    # The `[[sites]]` site whose host this is (None: no sites configured, or an unclaimed host).
    site: str | None = None
    # Weakly: the request keeps its Visitor (`visitor`), and a strong reference back made
    # each request a reference cycle, left for the cyclic GC with all it holds (headers,
    # writer, match info: ~20 containers a request) instead of freed as the request ends.
    _request: weakref.ReferenceType[web.Request] | None = field(
        default=None, repr=False, compare=False
    )
    _rules: VisitorRules | None = field(default=None, repr=False, compare=False)
    # Facts worked out on first read (see the module docstring); never changed afterwards.
    _memo: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def of(
        cls, request: web.Request, rules: VisitorRules, sites: SiteLookup | None = None
    ) -> Visitor:
        """Build the visitor of `request` (use `visitor(request)`, which builds it once).

        With `sites`, the host picks the site, and that site's rules (consent, bots) apply.
        """
        trusted = rules.peer_trusted(request.remote)
        scheme, host = request.scheme, request.host
        if trusted:
            headers = request.headers
            scheme = headers.get("X-Forwarded-Proto", scheme).split(",")[0].strip()
            host = headers.get("X-Forwarded-Host", host).split(",")[0].strip()
        site = None
        if sites is not None:
            found = sites(host)
            if found is not None:
                site, rules = found
        return cls._made(request, rules, trusted, scheme, host, site, {})

    @classmethod
    def known(
        cls,
        request: web.Request,
        rules: VisitorRules,
        *,
        peer_trusted: bool,
        scheme: str,
        host: str,
        site: str | None,
        client_ip: str | None,
    ) -> Visitor:
        """The Visitor `of` would build, from facts the caller read off the same request
        (the lane's pick), kept on the request: its fields are not read a second time."""
        memo = {"ip": client_ip}
        found = request[_KEY] = cls._made(request, rules, peer_trusted, scheme, host, site, memo)
        return found

    @classmethod
    def _made(
        cls,
        request: web.Request,
        rules: VisitorRules,
        trusted: bool,
        scheme: str,
        host: str,
        site: str | None,
        memo: dict[str, Any],
    ) -> Visitor:
        return cls(
            peer_trusted=trusted,
            scheme=scheme,
            host=host,
            user_agent=request.headers.get("User-Agent", ""),
            site=site,
            _request=weakref.ref(request),
            _rules=rules,
            _memo=memo,
        )

    @property
    def origin(self) -> str:
        """scheme://host as the visitor sees it (trusted proxies may tell us)."""
        return f"{self.scheme}://{self.host}"

    @property
    def computed(self) -> frozenset[str]:
        """The facts worked out on first read so far (cheap requests leave them unread)."""
        return frozenset(self._memo)

    @property
    def _req(self) -> web.Request:
        request = self._request() if self._request is not None else None
        assert request is not None, "a Visitor made by hand (or outliving its request)"
        return request

    @property
    def _rule_set(self) -> VisitorRules:
        assert self._rules is not None, "a Visitor made by hand has only its fields"
        return self._rules

    @property
    def client_ip(self) -> str | None:
        """The visitor's address: the peer, or the right-most untrusted forwarded hop."""
        # Each fact is read inline from the memo, no closure made per read: a page reads
        # them about ten times, and at a low request rate every bit of code runs cold.
        found: str | None = self._memo.get("ip", _UNSET)
        if found is _UNSET:
            request = self._req
            found = self._memo["ip"] = self._rule_set.client_ip(request.remote, request.headers)
        return found

    @property
    def cookies(self) -> Mapping[str, str]:
        """The cookies the browser sent."""
        return self._req.cookies

    @property
    def consent(self) -> ident.Consent:
        """Whether to track this visitor, and with which restrictions (opt-out, LDU)."""
        found: ident.Consent = self._memo.get("consent", _UNSET)
        if found is _UNSET:
            found = self._memo["consent"] = ident.consent(
                self._own_cookies, self._req.headers, self._rule_set.consent
            )
        return found

    @property
    def _own_cookies(self) -> Mapping[str, str]:
        # The cookies the gateway reads itself (_fbp, _fbc, the consent ones), out of a plain
        # header without parsing the site's others; `cookies` for anything else.
        found: Mapping[str, str] = self._memo.get("own cookies", _UNSET)
        if found is _UNSET:
            request = self._req
            consent = self._rule_set.consent
            # Four names always (an unset consent cookie repeats one): no tuple built to size.
            names = ("_fbp", "_fbc", consent.cookie or "_fbp", consent.opt_out_cookie or "_fbc")
            plain = read_cookies(request.headers.get("Cookie", ""), names)
            found = self._memo["own cookies"] = request.cookies if plain is None else plain
        return found

    @property
    def gpc(self) -> bool:
        """True when the browser sends Global Privacy Control (`Sec-GPC: 1`)."""
        return self._req.headers.get("Sec-GPC", "").strip() == "1"

    @property
    def bot(self) -> bool:
        """True for a crawler, monitor or HTTP library (or no User-Agent at all)."""
        found: bool = self._memo.get("bot", _UNSET)
        if found is _UNSET:
            found = self._memo["bot"] = self._rule_set.is_bot(self.user_agent)
        return found

    @property
    def prefetch(self) -> bool:
        """True for a speculative load (prefetch, prerender, preview): not a visit."""
        found: bool = self._memo.get("prefetch", _UNSET)
        if found is _UNSET:
            found = self._memo["prefetch"] = ident.is_prefetch(self._req.headers)
        return found

    @property
    def fbp(self) -> str | None:
        """The `_fbp` cookie the browser sent."""
        return self._own_cookies.get("_fbp")

    @property
    def fbc(self) -> str | None:
        """The `_fbc` cookie the browser sent."""
        return self._own_cookies.get("_fbc")

    def user_data(self, ids: tuple[str | None, str | None] | None = None) -> dict[str, Any]:
        """The visitor's `user_data` block: user agent, IP, `fbp` and `fbc` (those known).

        `ids` are the `_fbp`/`_fbc` this response settled on (kept, refreshed or issued by
        the proxy); without them, the cookies the browser sent.
        """
        fbp, fbc = ids if ids is not None else (self.fbp, self.fbc)
        user_data: dict[str, Any] = {"client_user_agent": self.user_agent}
        for key, value in (("client_ip_address", self.client_ip), ("fbp", fbp), ("fbc", fbc)):
            if value:
                user_data[key] = value
        return user_data

    def page_client(self) -> str:
        """What a page token is bound to: this visitor's IP and user agent (and site)."""
        client = f"{self.client_ip or ''}|{self.user_agent}"
        # A token from site A's page fails on site B's host: the site enters the MAC.
        return client if self.site is None else f"{client}|{self.site}"


# The rules in force, read per request so that a reload applies (the app owns them).
VISITOR_RULES: web.AppKey[Callable[[], VisitorRules]] = web.AppKey("visitor_rules")
# Host -> (site name, its rules); installed only with `[[sites]]` (gateway.edge.sites).
SiteLookup = Callable[[str], "tuple[str, VisitorRules] | None"]
SITE_LOOKUP: web.AppKey[SiteLookup] = web.AppKey("site_lookup")
_KEY = web.RequestKey("visitor", Visitor)


def visitor(request: web.Request) -> Visitor:
    """The request's `Visitor`, built on the first call and kept on the request."""
    try:
        return request[_KEY]
    except KeyError:
        # Not `request.get`: that is the same try, one Python frame deeper, on every call.
        app = request.app
        found = request[_KEY] = Visitor.of(request, app[VISITOR_RULES](), app.get(SITE_LOOKUP))
        return found
