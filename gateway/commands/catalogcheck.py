"""`doctor`'s catalog checks: each catalog's sync state (parked token, Meta's refusals) and
the share of ViewContent/AddToCart/Purchase events whose content_ids are catalog item ids."""

from __future__ import annotations

import time

from gateway.catalogsettings import CatalogTarget, catalog_sites, catalog_target
from gateway.commands.catalog import open_catalog
from gateway.commands.findings import Finding, Level
from gateway.delivery.postgres.pool import DatabaseUnavailable
from gateway.delivery.store import CatalogStore
from gateway.ops.catalog import content_id_share
from gateway.settings import ConfigError, Settings

_WINDOW = 7 * 86400.0
_GOOD_SHARE = 0.9


async def check_catalog(settings: Settings, *, site: str | None = None) -> list[Finding]:
    """`doctor`: each catalog's sync state, and the share of ViewContent/AddToCart/Purchase
    events whose content_ids are catalog item ids (Advantage+ catalog ads need them all)."""
    if site is None:
        targets = catalog_sites(settings)
    else:
        # `doctor --site S` passes that site's own settings: its catalog is keyed by S.
        one = catalog_target(site, settings)
        targets = [one] if one is not None else []
    if not targets:
        return []
    if settings.store_url is None and not settings.buffer.is_file():
        return [Finding("catalog", Level.NOTE, "no store yet; `serve` or `catalog crawl` fill it")]
    out: list[Finding] = []
    try:
        async with open_catalog(settings, create=False) as store:
            for target in targets:
                out += await _catalog_findings(store, target)
    except (ConfigError, OSError, DatabaseUnavailable) as exc:
        return [Finding("catalog", Level.FAIL, f"cannot read the catalog state ({exc})")]
    return out


async def _catalog_findings(store: CatalogStore, target: CatalogTarget) -> list[Finding]:
    name = f"catalog {target.catalog.catalog_id}" + (
        f" (site {target.site})" if target.site else ""
    )
    status = await store.status(target.site)
    counts = ", ".join(f"{n} {state}" for state, n in status["items"].items())
    out: list[Finding] = []
    if status["blocked"]:
        out.append(
            Finding(
                "catalog",
                Level.FAIL,
                f"{name}: parked, Meta refused the token ({status['blocked']})",
                "give [catalog] a token with catalog_management and reload",
            )
        )
    elif status["errors"]:
        first = status["errors"][0]
        out.append(
            Finding(
                "catalog",
                Level.WARN,
                f"{name}: {counts}; Meta refused {status['items']['error']} item(s), e.g. "
                f"{first['id']}: {first['message']}",
                "fix the product pages; `capi-gateway catalog status` lists every refusal",
            )
        )
    else:
        out.append(Finding("catalog", Level.OK, f"{name}: {counts}"))
    share = await content_id_share(store, target.site, since=time.time() - _WINDOW)
    if not share:
        out.append(
            Finding(
                "catalog",
                Level.NOTE,
                f"{name}: no ViewContent, AddToCart or Purchase events in 7 days to match",
            )
        )
    for event, entry in share.items():
        ratio = entry["share"] or 0.0
        text = (
            f"{name}: {entry['matching']} of {entry['events']} {event} events "
            f"({ratio:.0%}) have content_ids that are catalog item ids"
        )
        if entry["mismatching_ids"]:
            text += f"; not in the catalog: {', '.join(entry['mismatching_ids'])}"
        if ratio >= _GOOD_SHARE:
            out.append(Finding("catalog", Level.OK, text))
        else:
            out.append(
                Finding(
                    "catalog",
                    Level.WARN,
                    text,
                    "send content_ids equal to the product pages' ids (id_source in [catalog])",
                )
            )
    return out
