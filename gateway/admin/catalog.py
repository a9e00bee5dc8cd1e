"""The dashboard's catalog panel: per configured catalog, items per state, the last sync,
each product Meta refused with its message, and how many recent events' content_ids are
catalog item ids (Advantage+ catalog ads need them to be)."""

from __future__ import annotations

import time
from collections.abc import Collection
from typing import Any

from gateway.catalogsettings import catalog_sites
from gateway.delivery.store import CatalogStore
from gateway.ops.catalog import content_id_share
from gateway.settings import Settings

WINDOW = 7 * 86400.0


async def catalog_panels(
    store: CatalogStore, settings: Settings, sites: Collection[str] | None
) -> list[dict[str, Any]]:
    """One panel per catalog of `sites` (None: every catalog)."""
    panels = []
    for target in catalog_sites(settings):
        if sites is not None and target.site not in sites:
            continue
        status = await store.status(target.site)
        share = await content_id_share(store, target.site, since=time.time() - WINDOW)
        panels.append(
            {
                "site": target.site,
                "catalog_id": target.catalog.catalog_id,
                "status": status,
                "events": [{"name": name, **entry} for name, entry in share.items()],
            }
        )
    return panels
