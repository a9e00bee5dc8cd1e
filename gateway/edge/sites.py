"""The visitor's host in, the configured site that answers for it out (with its own stages).

With `[[sites]]`, every site has its own runtime (settings, pixels, rules, consent), page
tagging, proxied rules and proxy (its own upstream pool); the intake, the store and the
sender stay shared. Without `[[sites]]` the router is empty and the app's own stages (the
holder's `single`) serve every host, exactly as before; a reload (SIGHUP) may fill or empty
the router, so every request asks `sites_on` rather than the config it started with.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from aiohttp import web

from gateway.edge.appkeys import RUNTIME, Runtime
from gateway.edge.pages import PageViews
from gateway.edge.proxied_rules import ProxiedRules
from gateway.edge.proxy import Proxy
from gateway.edge.visitor import SITE_LOOKUP, VisitorRules, visitor


@dataclass(slots=True)
class SiteStages:
    """What serves one site's traffic: its runtime and, once started, its proxy stages."""

    name: str
    runtime: Runtime
    pages: PageViews | None = None
    proxied_rules: ProxiedRules | None = None
    proxy: Proxy | None = None


class SiteRouter:
    """Host → site, exact names first, then `*.domain` wildcards, then the default site."""

    def __init__(self, sites: Iterable[tuple[tuple[str, ...], bool, SiteStages]]) -> None:
        self.by_name: dict[str, SiteStages] = {}
        self._exact: dict[str, SiteStages] = {}
        self._wild: dict[str, SiteStages] = {}
        self.default: SiteStages | None = None
        for hosts, default, stages in sites:
            self.by_name[stages.name] = stages
            for host in hosts:
                if host.startswith("*."):
                    self._wild[host[2:]] = stages
                else:
                    self._exact[host] = stages
            if default:
                self.default = stages

    def match(self, host: str) -> SiteStages | None:
        """The site for a Host header value (port and case ignored), else the default."""
        name = host.lower()
        if name.endswith("]") or ":" not in name:
            pass  # no port (or an IPv6 literal without one)
        else:
            name = name.rsplit(":", 1)[0]
        name = name.rstrip(".")
        found = self._exact.get(name)
        if found is not None:
            return found
        if self._wild:
            # `*.example.com` answers for any name under example.com (not example.com itself).
            dot = name.find(".")
            while dot != -1:
                found = self._wild.get(name[dot + 1 :])
                if found is not None:
                    return found
                dot = name.find(".", dot + 1)
        return self.default

    def lookup(self, host: str) -> tuple[str, VisitorRules] | None:
        """`visitor.SITE_LOOKUP`: the site's name and visitor rules for a host."""
        found = self.match(host)
        return None if found is None else (found.name, found.runtime.visitors)


class SiteHolder:
    """The router in force; a reload swaps it whole, requests read it once each.

    `single`: the stages that serve every host while the router is empty (no `[[sites]]`,
    an `upstream` at the top level); None before they are started, or without upstream.
    """

    def __init__(self, router: SiteRouter) -> None:
        self.router = router
        self.single: SiteStages | None = None

    def lookup(self, host: str) -> tuple[str, VisitorRules] | None:
        """Delegate to the router in force (see `SiteRouter.lookup`)."""
        router = self.router
        return router.lookup(host) if router.by_name else None


SITES = web.AppKey("sites", SiteHolder)


def sites_on(app: web.Application) -> bool:
    """True while `[[sites]]` are configured (the router has sites), False without."""
    holder = app.get(SITES)
    return holder is not None and bool(holder.router.by_name)


def single_stages(app: web.Application) -> SiteStages | None:
    """Without `[[sites]]`: the app's own proxy stages (None when nothing is proxied)."""
    holder = app.get(SITES)
    if holder is None or holder.router.by_name:
        return None
    single = holder.single
    return single if single is not None and single.proxy is not None else None


def proxied(app: web.Application) -> bool:
    """True when the gateway proxies a site now (one upstream, or `[[sites]]`)."""
    return sites_on(app) or single_stages(app) is not None


def site_stages(request: web.Request) -> SiteStages | None:
    """The site the request's host belongs to (None: no `[[sites]]`, or no site claims it)."""
    holder = request.app.get(SITES)
    if holder is None or not holder.router.by_name:
        return None
    name = visitor(request).site
    return None if name is None else holder.router.by_name.get(name)


def runtime_for(request: web.Request) -> Runtime:
    """The runtime that applies to this request: its site's, else the app's."""
    found = site_stages(request)
    return request.app[RUNTIME] if found is None else found.runtime


def pages_for(request: web.Request) -> PageViews | None:
    """The page tagging stage of the request's site (the app's own without sites)."""
    if not sites_on(request.app):
        single = single_stages(request.app)
        return None if single is None else single.pages
    found = site_stages(request)
    return None if found is None else found.pages


def install(app: web.Application, router: SiteRouter) -> SiteHolder:
    """Put the router on the app and have every `Visitor` resolve its site through it."""
    holder = SiteHolder(router)
    app[SITES] = holder
    app[SITE_LOOKUP] = holder.lookup
    return holder
