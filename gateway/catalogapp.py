"""The catalog's share of the app: its store and sender started with the app, and the
product reader each site's proxy gets (issue 17; gateway/edge/catalog.py reads the pages).
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
from aiohttp import web

from gateway.catalogsettings import catalog_sites
from gateway.delivery.catalog import SqliteCatalog
from gateway.delivery.catalogsync import CatalogSender, CatalogSyncOptions
from gateway.delivery.graph import GraphClient
from gateway.delivery.postgres.catalog import PgCatalog
from gateway.delivery.postgres.outbox import PgOutbox
from gateway.delivery.retry import RetryPolicy
from gateway.delivery.store import CatalogStore
from gateway.edge.appkeys import CATALOG, CATALOG_SENDER, METRICS, OUTBOX, RUNTIME
from gateway.edge.catalog import CatalogPages
from gateway.settings import PARTNER_AGENT, Settings


def catalog_pages(app: web.Application, site: str, settings: Settings) -> CatalogPages:
    """The product reader of one site (idle while the site has no `[catalog]`)."""
    return CatalogPages(
        site,
        settings.catalog,
        app[CATALOG],
        metrics=app[METRICS],
        wake=app[CATALOG_SENDER].wake.set,
    )


async def catalog_ctx(app: web.Application) -> AsyncIterator[None]:
    """Open the catalog store (the outbox's file or database) and run the catalog sender."""
    settings = app[RUNTIME].settings
    outbox = app[OUTBOX]
    store: CatalogStore
    if isinstance(outbox, PgOutbox):
        store = PgCatalog(outbox.db)
    else:
        store = await SqliteCatalog.open(settings.buffer)
    app[CATALOG] = store
    session = aiohttp.ClientSession(trust_env=False)
    graph = GraphClient(
        session,
        graph_url=settings.graph_url,
        graph_version=settings.graph_version,
        timeout=max(settings.send_timeout, 10.0),  # a 5,000-item call takes Meta a while
        partner_agent=PARTNER_AGENT,
    )
    sender = CatalogSender(
        store,
        graph,
        catalog_sites(settings),
        CatalogSyncOptions.from_settings(
            poll_interval=settings.poll_interval, dry_run=settings.dry_run
        ),
        RetryPolicy.from_settings(settings),
        metrics=app[METRICS],
    )
    app[CATALOG_SENDER] = sender
    sender.start()
    yield
    await sender.stop()
    await session.close()
    await store.close()
