"""The aiohttp application: routes, owned resources, start, reload and graceful stop."""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
import time
from collections.abc import Callable

from aiohttp import web

from gateway.admin.routes import add_admin_routes
from gateway.catalogapp import catalog_ctx
from gateway.catalogsettings import catalog_sites
from gateway.delivery.retry import RetryPolicy
from gateway.edge.appkeys import (
    AUDIENCES,
    CATALOG_SENDER,
    METRICS,
    OUTBOX,
    RUNTIME,
    SENDER,
    STARTED_AT,
    Runtime,
)
from gateway.edge.collect import post_collect
from gateway.edge.connlimit import LimitedSite
from gateway.edge.events_api import post_events
from gateway.edge.identity import networks
from gateway.edge.limits import headers_too_large
from gateway.edge.pixel import get_px_js
from gateway.edge.sites import install, proxied
from gateway.edge.visitor import VISITOR_RULES
from gateway.edge.webhooks import post_hook
from gateway.errors import json_error
from gateway.insights.policy import check_channels, reloaded_policy
from gateway.insights.routes import add_report_routes
from gateway.log import request_id_middleware
from gateway.ops.catalog import add_catalog_routes
from gateway.ops.health import get_health
from gateway.ops.prometheus import get_metrics, metrics_for_settings
from gateway.ops.status import get_status
from gateway.pipeline.rulefile import RuleError
from gateway.pipeline.rules import RuleSet
from gateway.settings import ConfigError, Settings, split_host_port
from gateway.siteapp import (
    install_lane,
    pixel_sites,
    reload_sites,
    router,
    site_expect,
    site_proxy,
    site_runtimes,
    sites_ctx,
)
from gateway.storeapp import install_store

log = logging.getLogger("gateway.app")
# The youngest GC generation's threshold while serving (CPython's default is 700).
_GC_YOUNG = 20_000


def build_app(settings: Settings, rules: RuleSet | None = None) -> web.Application:
    """The gateway's application for validated settings (not started)."""
    # The events API reads its body itself with its own limit (413 as JSON).
    app = web.Application(client_max_size=settings.max_body_bytes + 65536)
    app[RUNTIME] = Runtime.from_settings(settings, rules)
    app[STARTED_AT] = time.time()
    app[METRICS] = metrics_for_settings(settings)
    app[VISITOR_RULES] = lambda: app[RUNTIME].visitors
    # Both read per request so that a reload applies; the header bound runs inside the id
    # middleware (its 431 carries the id) rather than as a layer of its own.
    too_large = headers_too_large(lambda: app[RUNTIME].settings.max_request_headers_kb * 1024)
    app.middlewares.append(
        request_id_middleware(lambda: app[RUNTIME].settings.trusted_proxies, too_large)
    )
    install_store(app)
    app.cleanup_ctx.append(catalog_ctx)
    prefix = settings.prefix
    app.router.add_get(f"{prefix}/health", get_health)
    app.router.add_get(f"{prefix}/status", get_status)
    app.router.add_get(f"{prefix}/metrics", get_metrics)
    add_admin_routes(app, prefix)
    add_report_routes(app, prefix)
    add_catalog_routes(app, prefix)
    app.router.add_post(f"{prefix}/events", post_events)
    app.router.add_post(f"{prefix}/hooks/{{hook}}", post_hook)
    app.router.add_get(f"{prefix}/px.js", get_px_js)
    # The router is empty without [[sites]]; installed all the same so that a reload can
    # add the first site (or remove the last) without new routes (gateway.siteapp).
    holder = install(app, router(settings))
    app.router.add_post(f"{prefix}/collect", _collect)
    app.router.add_route("*", prefix + "/{tail:.*}", _unknown_endpoint)
    app.cleanup_ctx.append(sites_ctx)
    # Everything outside the prefix belongs to the site (the host's site with [[sites]]).
    app.router.add_route(
        "*", "/{path:.*}", site_proxy(holder, app[METRICS]), expect_handler=site_expect
    )
    # Assets no rule, catalog or tag reads skip the router and the middleware (issue 19).
    install_lane(app, holder)
    app.on_cleanup.append(_fold_metrics)
    return app


async def _fold_metrics(app: web.Application) -> None:
    # The last proxied counts of a stopping worker reach the series (files with --workers).
    app[METRICS].tally.fold()


async def _collect(request: web.Request) -> web.StreamResponse:
    # Beacons come from pages the proxy tagged: the page token is the proxy's.
    if not proxied(request.app):
        return await _unknown_endpoint(request)
    return await post_collect(request)


async def _unknown_endpoint(request: web.Request) -> web.StreamResponse:
    return json_error(404, "not found", f"no gateway endpoint at {request.path}")


async def reload(
    app: web.Application,
    settings: Settings,
    fresh: Runtime | None = None,
    sites: dict[str, Runtime] | None = None,
) -> None:
    """Swap in new settings and rules (SIGHUP): credentials, pixels, limits, rule files, sites."""
    fresh = fresh or Runtime.from_settings(settings)
    outbox = app.get(OUTBOX)
    if outbox is not None and outbox.insights is not None:
        # Before anything is swapped: a bad channel rule leaves the running policy.
        outbox.insights = reloaded_policy(outbox.insights, settings)
    app[RUNTIME].settings = settings
    app[RUNTIME].context = fresh.context
    app[RUNTIME].rules = fresh.rules
    app[RUNTIME].visitors = fresh.visitors
    reload_sites(app, settings, sites if sites is not None else site_runtimes(settings))
    sender = app[SENDER]
    sender.pixels = {p.id: p for p in settings.all_pixels()}
    sender.pixel_sites = pixel_sites(settings)
    sender.policy = RetryPolicy.from_settings(settings)
    await sender.reconcile_blocks()
    if AUDIENCES in app:
        await app[AUDIENCES].apply()
    app[CATALOG_SENDER].configure(catalog_sites(settings), RetryPolicy.from_settings(settings))
    log.info("Reloaded the configuration.")


async def serve(
    settings: Settings,
    load: Callable[[], Settings] | None = None,
    rules: RuleSet | None = None,
) -> None:
    """Run until SIGTERM/SIGINT, reloading on SIGHUP when `load` is given."""
    app = build_app(settings, rules)
    runner = web.AppRunner(
        app,
        access_log=None,
        handle_signals=False,
        shutdown_timeout=settings.shutdown_grace,
        # Uploads go to the site byte for byte: never inflate them on the way.
        auto_decompress=False,
        keepalive_timeout=settings.keepalive_timeout,
        max_field_size=settings.max_header_bytes,
        max_line_size=settings.max_header_bytes,
    )
    await runner.setup()
    host, port = split_host_port(settings.listen)
    site = LimitedSite(
        runner,
        host,
        port,
        total=settings.max_connections,
        per_peer=settings.max_connections_per_client,
        exempt=networks(tuple(settings.trusted_proxies)),
        reuse_port=settings.workers > 1,
    )
    try:
        await site.start()
    except OSError as exc:
        await runner.cleanup()
        raise ConfigError(
            f"listen: cannot listen on {settings.listen} ({exc.strerror}); "
            "choose another --listen address"
        ) from exc
    _tune_gc()
    log.info(
        "capi-gateway listening on http://%s:%d%s (%s).",
        host,
        port,
        settings.prefix,
        "dry run" if settings.dry_run else "sending to Meta",
    )
    testing = settings.test_mode_warning()
    if testing:
        log.warning("Test mode: %s.", testing)
    rules = app[RUNTIME].rules
    if settings.rules is not None:
        log.info(
            "Loaded %d rule(s) and %d webhook(s) from %s.",
            len(rules.rules),
            len(rules.webhooks),
            settings.rules,
        )
        for warning in rules.warnings():
            log.warning("%s", warning)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    reloads: set[asyncio.Task[None]] = set()
    if load is not None:
        loop.add_signal_handler(signal.SIGHUP, _reload_from(app, load, reloads))
    # `capi-gateway serve` holds these until the handlers exist (gateway.workers):
    # one that came while starting is delivered now.
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM, signal.SIGINT, signal.SIGHUP})
    try:
        await stop.wait()
    finally:
        log.info("Stopping: finishing requests, flushing the outbox, releasing leases.")
        if reloads:
            # A SIGTERM right after a SIGHUP: let the reload finish before its sender stops.
            await asyncio.wait(set(reloads))
        # Sends in flight and requests in flight get the same grace period, side by side,
        # so the process exits within shutdown_grace rather than twice that.
        sender_stopped = asyncio.create_task(app[SENDER].stop(settings.shutdown_grace))
        await runner.cleanup()
        await sender_stopped
        log.info("Stopped.")


def _tune_gc() -> None:
    """Keep the cyclic GC off the request path's back.

    What start-up built (modules, settings, rules, pydantic schemas: most of the heap) lives
    as long as the process: frozen, full collections no longer walk it again and again.
    Each request allocates a few hundred short-lived containers, so the youngest generation
    is collected every few requests at the default threshold (700); a larger one collects
    the same garbage in fewer, equally cheap passes. Memory stays bounded: cycles are still
    found, a few thousand allocations later.
    """
    gc.collect()
    gc.freeze()
    _, second, third = gc.get_threshold()
    gc.set_threshold(_GC_YOUNG, second, third)


def _reload_from(
    app: web.Application, load: Callable[[], Settings], tasks: set[asyncio.Task[None]]
) -> Callable[[], None]:
    def on_sighup() -> None:
        try:
            settings = load()
            fresh = Runtime.from_settings(settings)
            sites = site_runtimes(settings)
            check_channels(settings)
            if not sites and settings.upstream is None and proxied(app):
                raise ConfigError(
                    "upstream: the reloaded configuration has neither [[sites]] nor an "
                    "upstream; keep one of them (or restart to stop proxying)"
                )
        except (ConfigError, RuleError) as exc:
            log.error("Reload refused, keeping the running configuration and rules: %s", exc)
            return
        task = asyncio.get_running_loop().create_task(
            reload(app, settings, fresh, sites), name="reload"
        )
        tasks.add(task)  # keep a reference until it is done
        task.add_done_callback(_reload_done(tasks))

    return on_sighup


def _reload_done(tasks: set[asyncio.Task[None]]) -> Callable[[asyncio.Task[None]], None]:
    def done(task: asyncio.Task[None]) -> None:
        tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("Reload failed half-way: %r", task.exception())

    return done
