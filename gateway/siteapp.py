"""Each site's stages started with the app, swapped on reload, and the catch-all handler
that sends a request to its host's site (421 for a host none claims).

Without `[[sites]]` the router is empty and the app's own stages (`SiteHolder.single`)
serve every host. A reload (SIGHUP) may add the first site or remove the last: the
catch-all asks the holder on every request, so the switch needs no new routes, and the
stages of the other mode are started then (or kept, drained and closed at exit).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import AbstractContextManager

import aiohttp
from aiohttp import web
from aiohttp.typedefs import Handler

from gateway.catalogapp import catalog_pages
from gateway.delivery.seal import load_key
from gateway.edge.appkeys import (
    INTAKE,
    METRICS,
    PAGES,
    PROXIED_RULES,
    PROXY,
    RUNTIME,
    STITCHES,
    Runtime,
)
from gateway.edge.lane import Lane
from gateway.edge.pages import PageViews, page_secret
from gateway.edge.proxied_rules import ProxiedRules
from gateway.edge.proxy import Proxy, ProxyOptions, upstream_client, upstream_session
from gateway.edge.sites import (
    SITES,
    SiteHolder,
    SiteRouter,
    SiteStages,
    single_stages,
    site_stages,
    sites_on,
)
from gateway.edge.visitor import visitor
from gateway.errors import json_error
from gateway.log import identified
from gateway.metrics import Metrics
from gateway.settings import Settings

log = logging.getLogger("gateway.app")

# Every site's stages ever started, with its upstream pool (a reload's retired ones too):
# drained and closed at exit, never under a request still streaming through them.
SITE_STARTED = web.AppKey("site_started", list[tuple[SiteStages, aiohttp.ClientSession]])
LANE = web.AppKey("lane", Lane)


def _misdirected(request: web.Request) -> web.Response:
    host = visitor(request).host
    return json_error(
        421,
        "misdirected request",
        f"no site answers for host {host!r}; add it to a site's `hosts` "
        "(or mark one site `default = true`)",
    )


def site_proxy(holder: SiteHolder, metrics: Metrics) -> Handler:
    """The handler of everything outside the prefix: to the host's site, or the one upstream
    without sites. Bound to the app's holder and metrics once, not looked up per request."""

    async def handle(request: web.Request) -> web.StreamResponse:
        if not holder.router.by_name:
            # The hot path without sites: one look at the holder.
            single = holder.single
            if single is None or single.proxy is None:
                raise web.HTTPNotFound()  # nothing proxied: as if there were no such route
            response = await single.proxy.handle(request)
            metrics.proxied(response.status)
            return response
        stages = site_stages(request)
        if stages is None or stages.proxy is None:
            return _misdirected(request)
        response = await stages.proxy.handle(request)
        metrics.proxied(response.status, stages.name)
        return response

    return handle


async def site_expect(request: web.Request) -> web.StreamResponse | None:
    """`Expect: 100-continue` answered by the stages that will take the body."""
    if not sites_on(request.app):
        single = single_stages(request.app)
        if single is None or single.proxy is None:
            return web.HTTPNotFound()
        return await single.proxy.expect(request)
    stages = site_stages(request)
    if stages is None or stages.proxy is None:
        return _misdirected(request)
    return await stages.proxy.expect(request)


def install_lane(app: web.Application, holder: SiteHolder) -> Lane:
    """Put the asset lane (`gateway.edge.lane`) in front of the app's own request handling.

    aiohttp's server calls `app._handle` for every request (`AppRunner` and the test
    server alike read it when they build the server): shadowed on this app by the lane,
    which hands the requests it does not take to the original. aiohttp is pinned (3.14);
    tests/edge/test_lane.py pins that the server calls the lane.
    """
    full = app._handle

    def identify(request: web.Request) -> AbstractContextManager[str]:
        return identified(request, app[RUNTIME].settings.trusted_proxies)

    async def route(request: web.Request) -> None:
        # What `Application._handle` does before its handlers run: the match info that
        # `request.app` (and so `visitor`, `runtime_for`, ...) reads.
        match_info = await app.router.resolve(request)
        match_info.add_app(app)
        match_info.freeze()
        request._match_info = match_info

    lane = Lane(
        holder,
        app[METRICS],
        app[RUNTIME],
        full,
        identify,
        route,
        app.on_response_prepare,
    )
    app[LANE] = lane
    # Not `app._handle = ...`: aiohttp's debug mode warns about new attributes on an app.
    object.__setattr__(app, "_handle", lane)
    return lane


def router(settings: Settings) -> SiteRouter:
    """A router whose stages are started (when the app is) by `sites_ctx`."""
    return SiteRouter(
        (
            site.hosts,
            site.default,
            SiteStages(site.name, Runtime.from_settings(site.settings, site=site.name)),
        )
        for site in settings.site_list()
    )


def _start_site(app: web.Application, stages: SiteStages) -> aiohttp.ClientSession:
    """Give one site its page tagging, proxied rules and proxy (its own upstream pool)."""
    runtime = stages.runtime
    settings = runtime.settings
    pages = PageViews(
        settings,
        app[INTAKE],
        page_secret(settings, load_key(settings)),
        site=stages.name or None,
    )
    session = upstream_session(settings)
    proxied_rules = ProxiedRules(
        lambda: runtime.rules,
        app[INTAKE],
        app[STITCHES],
        pages,
        body_limit=settings.rules_body_bytes,
        scan_limit=settings.rules_scan_bytes,
    )
    pages.triggers = proxied_rules.triggers
    stages.pages = pages
    stages.proxied_rules = proxied_rules
    stages.proxy = Proxy(
        session,
        ProxyOptions.from_settings(settings),
        pages,
        proxied_rules,
        metrics=app[METRICS],
        catalog=catalog_pages(app, stages.name, settings),
        client=upstream_client(settings),
    )
    return session


def _single(app: web.Application) -> SiteStages:
    """The app's own stages (no `[[sites]]`): named "", reading the app's runtime."""
    return SiteStages("", app[RUNTIME])


async def sites_ctx(app: web.Application) -> AsyncIterator[None]:
    """Start every site's stages with the app; drain and close them (retired ones too) at exit."""
    holder = app[SITES]
    app[SITE_STARTED] = [(each, _start_site(app, each)) for each in holder.router.by_name.values()]
    if not holder.router.by_name and app[RUNTIME].settings.upstream:
        single = holder.single = _single(app)
        app[SITE_STARTED].append((single, _start_site(app, single)))
        # Started without sites: the single stages under their own keys as well.
        assert single.pages is not None and single.proxied_rules is not None
        assert single.proxy is not None
        app[PAGES] = single.pages
        app[PROXIED_RULES] = single.proxied_rules
        app[PROXY] = single.proxy
    yield
    for each, _ in app[SITE_STARTED]:
        if each.proxied_rules is not None:
            await each.proxied_rules.drain()
        if each.proxy is not None and each.proxy.catalog is not None:
            await each.proxy.catalog.close()
    for each, session in app[SITE_STARTED]:
        if each.proxy is not None:
            await each.proxy.close()
        await session.close()


def pixel_sites(settings: Settings) -> dict[str, str]:
    """Each pixel's site (the first that lists it), for the `site` label of send series."""
    out: dict[str, str] = {}
    for site in settings.site_list():
        for pixel in site.settings.effective_pixels():
            out.setdefault(pixel.id, site.name)
    return out


def site_runtimes(settings: Settings) -> dict[str, Runtime]:
    """Each site's runtime by name; RuleError for a bad rule file of any site."""
    return {
        site.name: Runtime.from_settings(site.settings, site=site.name)
        for site in settings.site_list()
    }


def reload_sites(app: web.Application, settings: Settings, fresh: dict[str, Runtime]) -> None:
    """Swap the router: changed sites updated in place, new ones started, removed ones gone.

    A site keeps its stages (and its pool, and the requests streaming through it) while its
    upstream stays the same; a new upstream gets new stages, and the old pool closes at exit
    so that no request still using it is cut.
    """
    holder = app[SITES]
    running = holder.router.by_name
    entries: list[tuple[tuple[str, ...], bool, SiteStages]] = []
    for site in settings.site_list():
        runtime = fresh[site.name]
        stages = running.get(site.name)
        if (
            stages is not None
            and stages.proxy is not None
            and stages.runtime.settings.upstream == site.settings.upstream
        ):
            stages.runtime.settings = runtime.settings
            stages.runtime.context = runtime.context
            stages.runtime.rules = runtime.rules
            stages.runtime.visitors = runtime.visitors
            if stages.pages is not None:
                stages.pages.configure(runtime.settings)
            stages.proxy.options = ProxyOptions.from_settings(runtime.settings)
            if stages.proxy.catalog is not None:
                stages.proxy.catalog.configure(runtime.settings.catalog)
        else:
            stages = SiteStages(site.name, runtime)
            app[SITE_STARTED].append((stages, _start_site(app, stages)))
        entries.append((site.hosts, site.default, stages))
    if not entries:
        _reload_single(app, settings)
    gone = sorted(set(running) - {site.name for site in settings.site_list()})
    if entries and not running:
        log.info("Switched to [[sites]]: requests are routed by host from now on.")
    elif running and not entries:
        log.info("No [[sites]] any more: every host goes to upstream %s.", settings.upstream)
    holder.router = SiteRouter(entries)
    if gone:
        log.info("Removed site(s) %s.", ", ".join(repr(name) for name in gone))


def _reload_single(app: web.Application, settings: Settings) -> None:
    """Without `[[sites]]`: configure the app's own stages, or start them (a new upstream,
    or the last site removed); the stages they replace close at exit, as a site's do."""
    holder = app[SITES]
    single = holder.single
    if settings.upstream is None:
        return
    if (
        single is not None
        and single.proxy is not None
        # The runtime holds the new settings already: the options say what it started with.
        and single.proxy.options.upstream == ProxyOptions.from_settings(settings).upstream
    ):
        if single.pages is not None:
            single.pages.configure(settings)
        single.proxy.options = ProxyOptions.from_settings(settings)
        if single.proxy.catalog is not None:
            single.proxy.catalog.configure(settings.catalog)
        return
    single = _single(app)
    app[SITE_STARTED].append((single, _start_site(app, single)))
    holder.single = single
