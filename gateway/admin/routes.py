"""`{prefix}/admin`: the operator's dashboard, the insights page and the login.

Who gets in: with `admin_token` set, a browser signs in once with the token (a form) and
then carries a signed session cookie (HttpOnly, SameSite=Strict, Path={prefix}/admin); a
script may send `Authorization: Bearer <token>` instead. Without a token, peers in
`admin_networks` (loopback: the demo) get a session cookie on their first visit without
signing in, and everybody else a 403 saying how to set one (see `gateway.ops.access`).

The POST actions (retry or discard dead letters, forget a person, sign out) live in
`gateway.admin.actions`.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from dataclasses import dataclass
from importlib import resources

from aiohttp import web

from gateway import __version__
from gateway.admin.actions import (
    notice_of,
    post_discard,
    post_forget,
    post_logout,
    post_retry,
    read_form,
)
from gateway.admin.audiences import audience_rows
from gateway.admin.auth import (
    ADMIN,
    AdminState,
    Auth,
    any_token,
    auth_key,
    authenticate,
    prefixed,
    same_origin,
    see_other,
    session_of,
    set_cookie,
    sign_in_first,
    signing_key,
    tenant_keys_of,
    tenant_session_of,
)
from gateway.admin.catalog import catalog_panels
from gateway.admin.data import DayCache, RuleLike, load_dashboard
from gateway.admin.insightspage import render_insights
from gateway.admin.page import pixels_in_test_mode, render_dashboard, render_login
from gateway.admin.session import csrf_token, issue
from gateway.delivery.postgres.dashboard import PgDashboard
from gateway.delivery.postgres.outbox import PgOutbox
from gateway.delivery.postgres.pool import DatabaseUnavailable
from gateway.delivery.reads import reading
from gateway.edge.appkeys import CATALOG, OUTBOX, RUNTIME
from gateway.errors import json_error
from gateway.insights.reports import ReportError
from gateway.insights.reports import dashboard as report_dashboard
from gateway.insights.routes import INSIGHTS, query_of, settings_for
from gateway.insights.timerange import RangeError
from gateway.ops.access import (
    bearer_matches,
    client_address,
)
from gateway.pipeline.extract import Extractor

log = logging.getLogger("gateway.admin")

_ASSETS = {
    "admin.css": "text/css",
    "admin.js": "application/javascript",
}
# The page runs only its own script and styles: no inline code, no other origin.
_PAGE_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
        "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "Cache-Control": "no-store",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    # no-referrer would make Chromium send `Origin: null` with the forms, which we refuse.
    "Referrer-Policy": "same-origin",
    "Cross-Origin-Opener-Policy": "same-origin",
}


@dataclass(frozen=True, slots=True)
class _Hook:
    """A `[[webhook]]` mapping, listed with the rules."""

    name: str
    event_name: str
    trigger: str
    file: str
    # A webhook maps its payload, not a request: no extractors for the hints to read.
    extractors: tuple[Extractor, ...] = ()


def add_admin_routes(app: web.Application, prefix: str) -> None:
    """Register the dashboard's routes (before the prefix's catch-all)."""
    app[ADMIN] = AdminState()
    app.router.add_get(f"{prefix}/admin", get_admin)
    app.router.add_get(f"{prefix}/admin/login", get_login)
    app.router.add_post(f"{prefix}/admin/login", post_login)
    app.router.add_post(f"{prefix}/admin/logout", post_logout)
    app.router.add_post(f"{prefix}/admin/retry", post_retry)
    app.router.add_post(f"{prefix}/admin/discard", post_discard)
    app.router.add_post(f"{prefix}/admin/forget", post_forget)
    app.router.add_get(f"{prefix}/admin/assets/{{name}}", get_asset)
    app.router.add_get(f"{prefix}/admin/insights", get_insights)


# -- pages ----------------------------------------------------------------------------------


async def get_admin(request: web.Request) -> web.StreamResponse:
    """The dashboard page."""
    auth = authenticate(request)
    if isinstance(auth, web.Response):
        return auth
    if auth is None:
        return sign_in_first(request)
    settings = request.app[RUNTIME].settings
    rules = _rules(request)
    shown, choices = _site_selection(request, auth)
    state = request.app[ADMIN]
    cache = state.cache
    pixels = None
    if shown is not None:
        cache = state.site_caches.setdefault(shown, DayCache(shown))
        pixels = frozenset(
            p.id
            for site in settings.site_list()
            if site.name in shown
            for p in site.settings.effective_pixels()
        )
    outbox = request.app[OUTBOX]
    try:
        if isinstance(outbox, PgOutbox):
            data = await load_dashboard(
                PgDashboard(outbox.db),
                rules,
                rules_dir=settings.rules,
                prefix=settings.prefix,
                cache=cache,
                sites=shown,
                pixels=pixels,
            )
        else:
            async with reading(settings.buffer) as conn:
                data = await load_dashboard(
                    conn,
                    rules,
                    rules_dir=settings.rules,
                    prefix=settings.prefix,
                    cache=cache,
                    sites=shown,
                    pixels=pixels,
                )
        panels = await catalog_panels(request.app[CATALOG], settings, shown)
    except (sqlite3.Error, OSError) as exc:
        log.error("Reading the outbox for the dashboard failed: %s", exc)
        return json_error(
            503,
            "buffer unavailable",
            f"cannot read the buffer: {exc}",
            headers={"Retry-After": "5"},
        )
    html = render_dashboard(
        data,
        prefix=settings.prefix,
        csrf=csrf_token(auth_key(request, auth), auth.session) if auth.session else "",
        notice=notice_of(request),
        signed_in=bool((settings.admin_token or auth.sites) and auth.session),
        sites=choices,
        site=shown[0] if shown is not None and len(shown) == 1 else None,
        tenant=auth.sites is not None,
        dry_run=settings.dry_run,
        version=__version__,
        testing=pixels_in_test_mode(settings),
        audiences=await audience_rows(request.app, shown),
        catalog=panels,
    )
    response = web.Response(text=html, content_type="text/html", headers=_PAGE_HEADERS)
    if auth.cookie:
        set_cookie(request, response, auth.cookie)
    return response


async def get_insights(request: web.Request) -> web.StreamResponse:
    """The marketer's page: revenue, funnel, attribution, recommendations."""
    auth = authenticate(request)
    if isinstance(auth, web.Response):
        return auth
    if auth is None:
        return sign_in_first(request)
    settings = request.app[RUNTIME].settings
    shown, choices = _site_selection(request, auth)
    # One site at a time (a tenant of several sees its first until it picks another).
    site = shown[0] if shown else None
    params = {k: request.query.get(k) for k in ("since", "until", "model", "by")}
    params["since"] = params["since"] or "30d"
    params["site"] = site
    try:
        q = query_of(params, settings, None)
    except (ReportError, RangeError) as exc:
        return json_error(400, "invalid parameter", str(exc))
    try:
        data = await report_dashboard(request.app[INSIGHTS], q, settings_for(settings, site))
    except (sqlite3.Error, OSError, DatabaseUnavailable) as exc:
        log.error("Reading the store for the insights page failed: %s", exc)
        return json_error(
            503, "store unavailable", f"cannot read the store: {exc}", headers={"Retry-After": "5"}
        )
    html = render_insights(
        data,
        prefix=settings.prefix,
        since=q.window.since,
        until=q.window.until,
        chosen={
            "since": str(params["since"]),
            "until": params["until"] or "",
            "model": q.model,
            "by": q.by,
        },
        sites=choices,
        site=site,
        version=__version__,
    )
    response = web.Response(text=html, content_type="text/html", headers=_PAGE_HEADERS)
    if auth.cookie:
        set_cookie(request, response, auth.cookie)
    return response


def _site_selection(
    request: web.Request, auth: Auth
) -> tuple[tuple[str, ...] | None, tuple[str, ...]]:
    """The sites whose events to show (None: all) and the selector's choices.

    A tenant sees its own sites, one of them when `?site=` picks it; the global operator
    sees every event, or one site's when `?site=` names a configured one.
    """
    configured = tuple(site.name for site in request.app[RUNTIME].settings.site_list())
    choices = configured if auth.sites is None else tuple(n for n in configured if n in auth.sites)
    picked = request.query.get("site")
    if picked in choices:
        return (str(picked),), choices
    return (None if auth.sites is None else choices), choices


async def get_login(request: web.Request) -> web.StreamResponse:
    """The sign-in form (only when an admin token is configured)."""
    signed_in = session_of(request) is not None or tenant_session_of(request) is not None
    if not any_token(request) or signed_in:
        return see_other(request, "/admin")
    return _login_page(request, "", 200)


async def post_login(request: web.Request) -> web.StreamResponse:
    """Check the token from the form; a session cookie and the dashboard when it matches."""
    settings = request.app[RUNTIME].settings
    if not any_token(request):
        return see_other(request, "/admin")
    if not same_origin(request):
        return json_error(403, "forbidden", "sign in from the dashboard's own page")
    # Keyed on the client the trusted proxies name (behind nginx every socket peer is the
    # same), and only wrong tokens count: nobody else's guesses lock an operator out.
    client = client_address(request) or ""
    wait = request.app[ADMIN].logins.due(client)
    if wait > 0:
        response = _login_page(request, "Too many attempts: wait a little and try again.", 429)
        response.headers["Retry-After"] = str(int(wait) + 1)
        return response
    form = await read_form(request)
    if isinstance(form, web.Response):
        return form
    given = (form.get("token") or [""])[0].strip()
    key = None
    if settings.admin_token and bearer_matches(f"Bearer {given}", settings.admin_token):
        key = signing_key(request)
    else:
        # A site's own admin_token: a session for that tenant's sites, under its own key.
        for token, (tenant_key, _) in tenant_keys_of(request).items():
            if bearer_matches(f"Bearer {given}", token):
                key = tenant_key
    if key is None:
        request.app[ADMIN].logins.wait(client)
        log.warning("Dashboard sign-in refused: wrong admin token.")
        return _login_page(request, "That is not the admin token.", 403)
    value, _ = issue(key, now=int(time.time()))
    log.info("Dashboard sign-in.")
    response = see_other(request, "/admin")
    set_cookie(request, response, value)
    return response


async def get_asset(request: web.Request) -> web.StreamResponse:
    """The dashboard's stylesheet and script, from the package."""
    name = request.match_info["name"]
    if name not in _ASSETS:
        return json_error(404, "not found", f"no dashboard asset {name!r}")
    body = resources.files("gateway").joinpath(f"admin/static/{name}").read_bytes()
    return web.Response(
        body=body,
        content_type=_ASSETS[name],
        charset="utf-8",
        headers={"Cache-Control": "public, max-age=3600", "X-Content-Type-Options": "nosniff"},
    )


def _login_page(request: web.Request, error: str, status: int) -> web.Response:
    html = render_login(prefix=prefixed(request, ""), error=error, version=__version__)
    return web.Response(text=html, status=status, content_type="text/html", headers=_PAGE_HEADERS)


def _rules(request: web.Request) -> list[RuleLike]:
    ruleset = request.app[RUNTIME].rules
    hooks = [_Hook(w.name, w.event_name, "webhook", w.file) for w in ruleset.webhooks]
    return [*ruleset.rules, *hooks]
