"""`capi-gateway catalog status|list|sync|export|crawl` on the store (a file or PostgreSQL).

Safe to run while the gateway serves the same store: `sync` leases the items it sends like
a running gateway does, so the two never send the same item; `crawl` records products the
way the proxy does when it serves their pages.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from pathlib import Path
from typing import Any, cast
from urllib.parse import urlsplit

import aiohttp

from gateway.catalogsettings import CatalogTarget, catalog_sites
from gateway.commands.queue import store_settings
from gateway.delivery.catalog import SqliteCatalog
from gateway.delivery.catalogstate import STATES, Seen
from gateway.delivery.catalogsync import CatalogSender, CatalogSyncOptions
from gateway.delivery.graph import GraphClient
from gateway.delivery.postgres.catalog import PgCatalog
from gateway.delivery.postgres.migrations import migrate
from gateway.delivery.postgres.pool import Database, DatabaseUnavailable
from gateway.delivery.retry import RetryPolicy
from gateway.delivery.schema import SchemaError
from gateway.delivery.store import CatalogStore
from gateway.edge.crawl import CrawledPage, CrawlError, crawl
from gateway.ops.catalog import catalog_status, feed_csv, feed_xml
from gateway.settings import PARTNER_AGENT, ConfigError, Settings, buffer_arg


def add_parser(sub: Any) -> None:
    """Add `catalog` and its subcommands to the CLI's subparsers."""
    catalog = sub.add_parser("catalog", help="the product catalog synced to Meta")
    csub = catalog.add_subparsers(dest="catalog_command", required=True)
    for name, text in (
        ("status", "items per state, last sync, items Meta refused with its message"),
        ("list", "items with their state and data"),
        ("sync", "send the pending items now"),
        ("export", "the catalog as a feed (deleted items left out)"),
        ("crawl", "read every product page the site's sitemap lists"),
    ):
        c = csub.add_parser(name, help=text)
        c.add_argument(
            "--buffer", type=buffer_arg, help="the store: a SQLite file or a postgresql:// URL"
        )
        c.add_argument("--config", type=Path, help="TOML config file")
        c.add_argument("--key-file", type=Path, help=argparse.SUPPRESS)
        c.add_argument("--site", help="the catalog of this [[sites]] site")
        c.add_argument("--json", action="store_true", help="machine-readable output")
        if name in ("status", "sync"):
            c.add_argument(
                "--dry-run",
                action="store_true",
                help="as `serve --dry-run`: record what would be sent, never call Meta",
            )
        if name == "list":
            c.add_argument("--state", help=f"only items in this state ({', '.join(STATES)})")
            c.add_argument("--limit", type=int, default=100)
        if name == "export":
            c.add_argument("--format", choices=("csv", "xml", "json"), default="csv")
        if name == "crawl":
            c.add_argument("--sitemap", help="sitemap URL (default: /sitemap.xml, robots.txt)")
            c.add_argument(
                "--public-origin", help="the origin shoppers use (default: the site's first host)"
            )
            c.add_argument("--rate", type=float, default=5.0, help="requests per second")
            c.add_argument("--concurrency", type=int, default=4)
            c.add_argument("--max-pages", type=int, default=50_000)


def run_catalog_command(args: argparse.Namespace) -> int:
    """Run one catalog subcommand; the exit code is 0 on success."""
    settings = store_settings(args)
    if getattr(args, "dry_run", False):
        settings = settings.model_copy(update={"dry_run": True})
    targets = catalog_sites(settings)
    if args.site is not None:
        targets = [t for t in targets if t.site == args.site]
    if args.catalog_command == "status" and not targets:
        empty = {"configured": False, "items": dict.fromkeys(STATES, 0), "last_sync": None}
        return _print_status({**empty, "errors": []}, args.json)
    if not targets:
        raise ConfigError(
            "catalog: no [catalog] is configured"
            + (f" for site {args.site!r}" if args.site else "")
            + "; add a [catalog] table with catalog_id (or set CAPIGW_CATALOG_ID)"
        )
    if args.catalog_command != "status" and len(targets) > 1:
        names = ", ".join(t.site for t in targets)
        raise ConfigError(f"--site: several sites have a catalog ({names}); name one")
    state = getattr(args, "state", None)
    if state is not None and state not in STATES:
        raise ConfigError(f"--state: {state!r} is not one of {', '.join(STATES)}")
    return asyncio.run(_run(args, settings, targets))


@contextlib.asynccontextmanager
async def open_catalog(settings: Settings, *, create: bool) -> AsyncIterator[CatalogStore]:
    """The store's catalog (`create`: a missing file or schema is made, as `crawl` needs)."""
    if settings.store_url is not None:
        try:
            db = await Database.open(settings.store_url, health_interval=0)
        except DatabaseUnavailable as exc:
            raise ConfigError(f"buffer: {exc}") from exc
        try:
            if create:
                await migrate(db)
            yield PgCatalog(db)
        finally:
            await db.close()
        return
    if not create and not settings.buffer.is_file():
        raise ConfigError(f"buffer: no store at {settings.buffer}; pass --buffer PATH")
    try:
        store = await SqliteCatalog.open(settings.buffer, create=create)
    except SchemaError as exc:
        raise ConfigError(f"buffer: {exc}") from exc
    try:
        yield store
    finally:
        await store.close()


async def _run(args: argparse.Namespace, settings: Settings, targets: list[CatalogTarget]) -> int:
    command = args.catalog_command
    async with open_catalog(settings, create=command == "crawl") as store:
        if command == "status":
            sites = None if args.site is None else [args.site]
            return _print_status(
                _served_mode(await catalog_status(store, settings, sites)), args.json
            )
        target = targets[0]
        if command == "list":
            return await _list(store, target, args)
        if command == "export":
            return await _export(store, target, args.format)
        if command == "sync":
            return await _sync(store, settings, target, args.json)
        return await _crawl(store, settings, target, args)


def _served_mode(body: dict[str, Any]) -> dict[str, Any]:
    """`dry_run` as the serving gateway has it: this command does not see `serve`'s
    `--dry-run`, but the store does when the last sync of a catalog was a dry run."""
    results = [one.get("last_result") for one in body.get("sites", {}).values()]
    results.append(body.get("last_result"))
    return {**body, "dry_run": body["dry_run"] or "dry-run" in results}


def _print_status(body: dict[str, Any], as_json: bool) -> int:
    if as_json:
        print(json.dumps(body, indent=2))
        return 0
    if not body["configured"]:
        print("No catalog is configured ([catalog] catalog_id, or CAPIGW_CATALOG_ID).")
        return 0
    counts = ", ".join(f"{n} {state}" for state, n in body["items"].items())
    last = body["last_sync"]
    when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(last)) if last else "never"
    print(f"Catalog items: {counts}. Last sync: {when}.")
    if body.get("blocked"):
        print(f"Parked: Meta refused the access token ({body['blocked']}); replace it.")
    for error in body["errors"]:
        print(f"  {error['id']}  {error['url']}\n    Meta: {error['message']}")
    return 0


async def _list(store: CatalogStore, target: CatalogTarget, args: argparse.Namespace) -> int:
    rows = await store.rows(target.site, state=args.state, limit=args.limit)
    if args.json:
        for row in rows:
            print(
                json.dumps(
                    {
                        "id": row.item_id,
                        "url": row.url,
                        "state": row.state,
                        "action": row.action,
                        "last_seen": row.last_seen,
                        "last_sent_at": row.last_sent_at,
                        "error": row.error,
                        "misses": row.misses,
                        "data": row.item(),
                    }
                )
            )
        return 0
    for row in rows:
        data = row.item()
        what = f"{row.action.lower()} " if row.state == "pending" else ""
        print(f"{row.item_id:<24} {what}{row.state:<8} {data.get('price', ''):<14} {row.url}")
        if row.error:
            print(f"    Meta: {row.error}")
    return 0


async def _export(store: CatalogStore, target: CatalogTarget, fmt: str) -> int:
    items = await store.feed(target.site)
    if fmt == "json":
        for item in items:
            print(json.dumps(item))
    elif fmt == "csv":
        sys.stdout.write(feed_csv(items))
    else:
        sys.stdout.write(feed_xml(items, title=f"Catalog {target.catalog.catalog_id}", link=""))
    return 0


async def _sync(
    store: CatalogStore, settings: Settings, target: CatalogTarget, as_json: bool
) -> int:
    if not settings.dry_run and not target.access_token:
        raise ConfigError("catalog.access_token: no token to send with; set one or --dry-run")
    await store.request_sync(target.site, now=time.time())
    async with aiohttp.ClientSession(trust_env=False) as session:
        graph = GraphClient(
            session,
            graph_url=settings.graph_url,
            graph_version=settings.graph_version,
            timeout=max(settings.send_timeout, 10.0),
            partner_agent=PARTNER_AGENT,
        )
        sender = CatalogSender(
            store,
            graph,
            [target],
            CatalogSyncOptions.from_settings(poll_interval=1.0, dry_run=settings.dry_run),
            RetryPolicy(base=settings.retry_base, cap=settings.retry_cap),
        )
        totals = {"sent": 0, "synced": 0, "deleted": 0, "errors": 0}
        outcome, message = "idle", ""
        while True:
            report = await sender.sync_site(target)
            if report.outcome == "idle":
                break
            outcome, message = report.outcome, report.message
            for key in totals:
                totals[key] += getattr(report, key)
            if report.outcome not in ("ok", "dry-run"):
                break
    if as_json:
        print(json.dumps({"outcome": outcome, **totals, "message": message}))
    else:
        print(
            f"Sent {totals['sent']} item(s): {totals['synced']} synced, {totals['deleted']} "
            f"deleted, {totals['errors']} refused by Meta"
            + (f"; {outcome}: {message}" if outcome not in ("ok", "dry-run", "idle") else ".")
        )
    return 0 if outcome in ("ok", "dry-run", "idle") else 1


def public_origin(settings: Settings, site: str, given: str | None) -> str:
    """The origin shoppers use: `--public-origin`, else https:// and the site's first host."""
    if given:
        parts = urlsplit(given)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ConfigError(f"--public-origin: {given!r} is not an origin like https://shop.com")
        return f"{parts.scheme}://{parts.netloc}"
    for each in settings.site_list():
        if each.name == site:
            hosts = [h for h in each.hosts if not h.startswith("*.")]
            if hosts:
                return f"https://{hosts[0]}"
    raise ConfigError(
        "--public-origin: the origin shoppers use is not in the config; pass it, "
        "e.g. --public-origin https://shop.example.com"
    )


def _site_settings(settings: Settings, site: str) -> Settings:
    for each in settings.site_list():
        if each.name == site:
            return each.settings
    return settings


async def _crawl(
    store: CatalogStore, settings: Settings, target: CatalogTarget, args: argparse.Namespace
) -> int:
    own = _site_settings(settings, target.site)
    if own.upstream is None:
        raise ConfigError("upstream: the crawl reads the site itself; set upstream")
    origin = public_origin(settings, target.site, args.public_origin)
    counts = {"pages": 0, "items": 0, "new": 0, "changed": 0, "missing": 0, "failed": 0}
    say: Callable[[str], None] = (lambda _: None) if args.json else print
    try:
        # An async generator underneath: closing it early cancels the fetches in flight.
        walk = cast(
            AsyncGenerator[CrawledPage, None],
            crawl(
                own.upstream,
                public_origin=origin,
                sitemap=args.sitemap,
                concurrency=args.concurrency,
                rate=args.rate,
                max_pages=args.max_pages,
                id_source=target.catalog.id_source,
            ),
        )
        async with contextlib.aclosing(walk) as pages:
            async for page in pages:
                counts["pages"] += 1
                await _record(store, target, origin, page, counts, say)
    except CrawlError as exc:
        raise ConfigError(f"crawl: {exc}") from exc
    if args.json:
        print(json.dumps(counts))
    else:
        print(
            f"Crawled {counts['pages']} page(s): {counts['items']} product(s), {counts['new']} "
            f"new, {counts['changed']} changed; {counts['missing']} gone, "
            f"{counts['failed']} failed. `capi-gateway catalog sync` sends them now."
        )
    return 0


async def _record(
    store: CatalogStore,
    target: CatalogTarget,
    origin: str,
    page: CrawledPage,
    counts: dict[str, int],
    say: Callable[[str], None],
) -> None:
    # Keyed like the proxy keys a page it serves: the public origin and the path.
    url = origin + (urlsplit(page.url).path or "/")
    now = time.time()
    if page.status in (404, 410):
        counts["missing"] += 1
        await store.missed(target.site, url, now=now, delete_after=target.catalog.delete_after)
        return
    if page.error is not None or page.products is None:
        counts["failed"] += 1
        say(f"  {page.url}: {page.error or f'HTTP {page.status}'}")
        return
    found = page.products
    result = await store.seen(
        target.site,
        url,
        [Seen(i.id, i.content_hash(), i.data()) for i in found.items],
        now=now,
        min_interval=target.catalog.min_interval,
        complete=not found.problems and bool(found.items or not found.had_product),
    )
    counts["items"] += len(found.items)
    counts["new"] += len(result.new)
    counts["changed"] += len(result.changed)
