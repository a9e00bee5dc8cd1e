"""The catalog for operators: status JSON, and the current catalog as a CSV or XML feed.

`{prefix}/catalog` (admin auth; a tenant's token sees its own sites) answers the same JSON
as `capi-gateway catalog status --json`: `configured`, `items` per state, `last_sync`,
`errors` (`id`, `url`, `message` as Meta gave it), and with `[[sites]]` the same per site.
`{prefix}/catalog.csv` and `.xml` serve every item that is not deleted, for catalogs Meta
fetches on a schedule; admin auth, or a `[catalog] feed_token` as `?token=` or Bearer.
"""

from __future__ import annotations

import csv
import hmac
import io
from collections.abc import Collection, Mapping, Sequence
from typing import Any
from xml.sax.saxutils import escape

from aiohttp import web

from gateway.catalogsettings import CatalogTarget, catalog_sites
from gateway.delivery.catalogstate import STATES
from gateway.delivery.store import CatalogStore
from gateway.edge.appkeys import CATALOG, RUNTIME
from gateway.errors import json_error
from gateway.ops.access import operator_scope
from gateway.pipeline.catalog import FEED_COLUMNS, CatalogItem, feed_row
from gateway.settings import Settings

_G = "http://base.google.com/ns/1.0"


async def catalog_status(
    store: CatalogStore, settings: Settings, sites: Collection[str] | None = None
) -> dict[str, Any]:
    """The status JSON over the configured catalogs (of `sites` only, when given)."""
    targets = [t for t in catalog_sites(settings) if sites is None or t.site in sites]
    out: dict[str, Any] = {
        "configured": bool(targets),
        "items": dict.fromkeys(STATES, 0),
        "last_sync": None,
        "errors": [],
    }
    per_site: dict[str, Any] = {}
    for target in targets:
        one = await store.status(target.site)
        one["catalog_id"] = target.catalog.catalog_id
        per_site[target.site] = one
        for state, count in one["items"].items():
            out["items"][state] += count
        if one["last_sync"] is not None:
            out["last_sync"] = max(out["last_sync"] or 0.0, one["last_sync"])
        out["errors"] += [{**e, "site": target.site} if target.site else e for e in one["errors"]]
    if len(targets) == 1:
        only = per_site[targets[0].site]
        out.update(catalog_id=only["catalog_id"], last_result=only["last_result"])
        out["blocked"] = only["blocked"]
    if settings.site_list():
        out["sites"] = per_site
    out["dry_run"] = settings.dry_run
    return out


def feed_csv(items: Sequence[Mapping[str, Any]]) -> str:
    """The items as a CSV feed (Meta's column names, a header line)."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(FEED_COLUMNS), lineterminator="\n")
    writer.writeheader()
    for data in items:
        writer.writerow(feed_row(CatalogItem.from_data(data)))
    return buffer.getvalue()


def feed_xml(items: Sequence[Mapping[str, Any]], *, title: str, link: str) -> str:
    """The items as an RSS 2.0 feed with `g:` fields, the form Meta's scheduled feeds read."""
    parts = [
        '<?xml version="1.0" encoding="UTF-8"?>\n',
        f'<rss xmlns:g="{_G}" version="2.0"><channel>',
        f"<title>{escape(title)}</title><link>{escape(link)}</link>",
        "<description>Products as the shop's pages show them (capi-gateway)</description>",
    ]
    for data in items:
        row = feed_row(CatalogItem.from_data(data))
        parts.append("<item>")
        for column in FEED_COLUMNS:
            value = row[column]
            if not value:
                continue
            values = value.split(",") if column == "additional_image_link" else [value]
            parts += [f"<g:{column}>{escape(v)}</g:{column}>" for v in values]
        parts.append("</item>")
    parts.append("</channel></rss>\n")
    return "".join(parts)


async def get_catalog(request: web.Request) -> web.StreamResponse:
    """`{prefix}/catalog`: the catalog status JSON."""
    scope = operator_scope(request)
    if isinstance(scope, web.Response):
        return scope
    settings = request.app[RUNTIME].settings
    try:
        body = await catalog_status(request.app[CATALOG], settings, scope)
    except Exception as exc:
        return json_error(503, "store unavailable", f"cannot read the catalog state: {exc}")
    return web.json_response(body)


def _feed_target(request: web.Request) -> CatalogTarget | web.Response:
    settings: Settings = request.app[RUNTIME].settings
    targets = catalog_sites(settings)
    if not targets:
        return json_error(404, "no catalog", "no [catalog] is configured")
    given = request.query.get("token") or request.headers.get("Authorization", "").removeprefix(
        "Bearer "
    )
    by_token = [
        t
        for t in targets
        if t.catalog.feed_token and given and hmac.compare_digest(given, t.catalog.feed_token)
    ]
    wanted = request.query.get("site")
    if by_token:
        found = [t for t in by_token if wanted is None or t.site == wanted]
        if found:
            return found[0]
    scope = operator_scope(request)
    if isinstance(scope, web.Response):
        return scope
    allowed = [t for t in targets if scope is None or t.site in scope]
    if wanted is not None:
        allowed = [t for t in allowed if t.site == wanted]
    if len(allowed) != 1:
        return json_error(
            400 if allowed else 404,
            "which catalog?",
            "name the site: ?site=<name> (one of " + ", ".join(repr(t.site) for t in targets) + ")",
        )
    return allowed[0]


async def get_catalog_feed(request: web.Request) -> web.StreamResponse:
    """`{prefix}/catalog.csv` / `.xml`: every item not deleted."""
    target = _feed_target(request)
    if isinstance(target, web.Response):
        return target
    try:
        items = await request.app[CATALOG].feed(target.site)
    except Exception as exc:
        return json_error(503, "store unavailable", f"cannot read the catalog: {exc}")
    if request.match_info["format"] == "csv":
        return web.Response(
            text=feed_csv(items), content_type="text/csv", headers={"Cache-Control": "no-store"}
        )
    origin = f"{request.scheme}://{request.host}"
    body = feed_xml(items, title=f"Catalog {target.catalog.catalog_id}", link=origin)
    return web.Response(
        text=body, content_type="application/xml", headers={"Cache-Control": "no-store"}
    )


def add_catalog_routes(app: web.Application, prefix: str) -> None:
    """Register the catalog's endpoints (before the prefix's catch-all)."""
    app.router.add_get(f"{prefix}/catalog", get_catalog)
    app.router.add_get(f"{prefix}/catalog.{{format:csv|xml}}", get_catalog_feed)


# Advantage+ catalog ads match events to products by `content_ids`: the events that matter.
MATCHED_EVENTS = ("ViewContent", "AddToCart", "Purchase")
_SHOWN_IDS = 10


async def content_id_share(
    store: CatalogStore, site: str, *, since: float, limit: int = 20000
) -> dict[str, dict[str, Any]]:
    """Per event name: how many recent events there are, how many have every content id in
    the catalog (`share` of them), how many carry none, and the ids the catalog lacks
    (most frequent first)."""
    known = {str(item.get("id")) for item in await store.feed(site)}
    out: dict[str, dict[str, Any]] = {}
    missing: dict[str, dict[str, int]] = {}
    for name, ids in await store.content_ids(site, MATCHED_EVENTS, since=since, limit=limit):
        entry = out.setdefault(name, {"events": 0, "matching": 0, "without_ids": 0})
        entry["events"] += 1
        if not ids:
            entry["without_ids"] += 1
            continue
        absent = [i for i in ids if i not in known]
        if not absent:
            entry["matching"] += 1
        for item_id in absent:
            counts = missing.setdefault(name, {})
            counts[item_id] = counts.get(item_id, 0) + 1
    for name, entry in out.items():
        entry["share"] = round(entry["matching"] / entry["events"], 4) if entry["events"] else None
        counts = missing.get(name, {})
        entry["mismatching_ids"] = sorted(counts, key=lambda i: (-counts[i], i))[:_SHOWN_IDS]
    return {name: out[name] for name in MATCHED_EVENTS if name in out}
