"""With `[[sites]]`: each site's stages started with the app, swapped on reload, and the
catch-all handler that sends a request to its host's site (421 for a host none claims).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

import aiohttp
from aiohttp import web

from gateway.appkeys import INTAKE, METRICS, STITCHES, Runtime
from gateway.catalogapp import catalog_pages
from gateway.delivery.seal import load_key
from gateway.edge.pages import PageViews, page_secret
from gateway.edge.proxied_rules import ProxiedRules
from gateway.edge.proxy import Proxy, ProxyOptions, upstream_session
from gateway.edge.sites import SITES, SiteRouter, SiteStages, site_stages
from gateway.edge.visitor import visitor
from gateway.errors import json_error
from gateway.settings import Settings

log = logging.getLogger("gateway.app")

# Every site's stages ever started, with its upstream pool (a reload's retired ones too):
# drained and closed at exit, never under a request still streaming through them.
SITE_STARTED = web.AppKey("site_started", list[tuple[SiteStages, aiohttp.ClientSession]])


def _misdirected(request: web.Request) -> web.Response:
    host = visitor(request).host
    return json_error(
        421,
        "misdirected request",
        f"no site answers for host {host!r}; add it to a site's `hosts` "
        "(or mark one site `default = true`)",
    )


async def site_proxy(request: web.Request) -> web.StreamResponse:
    stages = site_stages(request)
    if stages is None or stages.proxy is None:
        return _misdirected(request)
    response = await stages.proxy.handle(request)
    request.app[METRICS].proxied(response.status, stages.name)
    return response


async def site_expect(request: web.Request) -> web.StreamResponse | None:
    stages = site_stages(request)
    if stages is None or stages.proxy is None:
        return _misdirected(request)
    return await stages.proxy.expect(request)


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
        settings, app[INTAKE], page_secret(settings, load_key(settings)), site=stages.name
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
    )
    return session


async def sites_ctx(app: web.Application) -> AsyncIterator[None]:
    """Start every site's stages with the app; drain and close them (retired ones too) at exit."""
    stages = app[SITES].router.by_name.values()
    app[SITE_STARTED] = [(each, _start_site(app, each)) for each in stages]
    yield
    for each, _ in app[SITE_STARTED]:
        if each.proxied_rules is not None:
            await each.proxied_rules.drain()
        if each.proxy is not None and each.proxy.catalog is not None:
            await each.proxy.catalog.close()
    for _, session in app[SITE_STARTED]:
        await session.close()


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
    gone = sorted(set(running) - {site.name for site in settings.site_list()})
    holder.router = SiteRouter(entries)
    if gone:
        log.info("Removed site(s) %s.", ", ".join(repr(name) for name in gone))
