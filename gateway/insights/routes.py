"""`{prefix}/reports/{summary,funnel,attribution}`: the reports as JSON (admin auth).

Query parameters: `since`, `until` (see `timerange`), `model`, `by`, `site`. A tenant
(a site's own `admin_token`) reads its own sites only. Bad parameters answer 400 JSON; a
store that cannot be read, 503.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import AsyncIterator
from typing import Any

from aiohttp import web

from gateway.delivery.insightreads import Window
from gateway.delivery.insights import SqliteInsights
from gateway.delivery.postgres.insights import PgInsights
from gateway.delivery.postgres.outbox import PgOutbox
from gateway.delivery.postgres.pool import DatabaseUnavailable
from gateway.delivery.store import InsightReader
from gateway.edge.appkeys import OUTBOX, RUNTIME
from gateway.errors import json_error
from gateway.insights.reports import REPORTS, Query, ReportError, run
from gateway.insights.timerange import RangeError, parse_range
from gateway.insightsettings import InsightSettings
from gateway.ops.access import operator_scope
from gateway.settings import Settings

log = logging.getLogger("gateway.insights")

INSIGHTS = web.AppKey("insights", InsightReader)


def add_report_routes(app: web.Application, prefix: str) -> None:
    """Register the report endpoints (before the prefix's catch-all) and their reader."""
    app.router.add_get(f"{prefix}/reports/{{report}}", get_report)
    app.cleanup_ctx.append(_insights_ctx)


async def _insights_ctx(app: web.Application) -> AsyncIterator[None]:
    # Reads on their own connection (SQLite) or the outbox's pool (PostgreSQL).
    outbox = app[OUTBOX]
    reader: InsightReader
    if isinstance(outbox, PgOutbox):
        reader = PgInsights(outbox.db)
    else:
        reader = await SqliteInsights.open(app[RUNTIME].settings.buffer)
    app[INSIGHTS] = reader
    yield
    await reader.close()


def settings_for(settings: Settings, site: str | None) -> InsightSettings:
    """A site's `[insights]` (its own or inherited), or the top level's."""
    for s in settings.site_list():
        if s.name == site:
            return s.settings.insights
    return settings.insights


def query_of(params: Any, settings: Settings, scope: frozenset[str] | None) -> Query:
    """The report query of request parameters; ReportError or RangeError when one is bad."""
    site = params.get("site") or None
    names = [s.name for s in settings.site_list()]
    if site is not None and site not in names:
        raise ReportError(f"site: no site is named {site!r}")
    if scope is not None:
        if site is None and len(scope) == 1:
            site = next(iter(scope))
        if site is None or site not in scope:
            raise ReportError("site: name one of your sites: " + ", ".join(sorted(scope)))
    since, until = parse_range(params.get("since"), params.get("until"))
    return Query(
        Window(since, until, site),
        model=params.get("model") or "last_click",
        by=params.get("by") or "channel",
    )


async def get_report(request: web.Request) -> web.StreamResponse:
    """One report as JSON."""
    scope = operator_scope(request)
    if isinstance(scope, web.Response):
        return scope
    name = request.match_info["report"]
    if name not in REPORTS:
        return json_error(404, "not found", f"no report {name!r}: use one of {', '.join(REPORTS)}")
    settings = request.app[RUNTIME].settings
    try:
        q = query_of(request.query, settings, scope)
    except (ReportError, RangeError) as exc:
        return json_error(400, "invalid parameter", str(exc))
    try:
        body = await run(name, request.app[INSIGHTS], q, settings_for(settings, q.window.site))
    except (sqlite3.Error, OSError, DatabaseUnavailable) as exc:
        log.error("Reading the store for the %s report failed: %s", name, exc)
        return json_error(
            503, "store unavailable", f"cannot read the store: {exc}", headers={"Retry-After": "5"}
        )
    return web.json_response(body, headers={"Cache-Control": "no-store"})
