"""The dashboard's audiences panel: each configured audience's size, matched-key coverage and
last sync, from the state the sync keeps (gateway/delivery/audiences_sync.py)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

from aiohttp import web

from gateway.delivery.audiences_sync import targets
from gateway.edge.appkeys import AUDIENCES, RUNTIME
from gateway.pipeline.audiences import SCHEMA

log = logging.getLogger("gateway.admin")


@dataclass(frozen=True, slots=True)
class AudienceRow:
    """One line of the panel."""

    site: str | None
    name: str
    audience_id: str | None
    size: int
    coverage: tuple[tuple[str, float], ...]
    synced_at: float | None
    dry_run: bool
    error: str | None
    parked: bool


async def audience_rows(app: web.Application, sites: Sequence[str] | None) -> list[AudienceRow]:
    """The panel's rows for the sites shown (None: all); empty without audiences, and when
    the store cannot be read (the rest of the page still shows)."""
    store = app[AUDIENCES].store if AUDIENCES in app else None
    if store is None:
        return []
    chosen = [t for t in targets(app[RUNTIME].settings) if sites is None or t.site in sites]
    try:
        states = {(s.site, s.name): s for s in await store.states()}
    except Exception as exc:
        log.error("Reading the audiences for the dashboard failed: %s", exc)
        return []
    out = []
    for target in chosen:
        state = states.get((target.site, target.audience.name))
        coverage = state.coverage if state else {}
        out.append(
            AudienceRow(
                site=target.site,
                name=target.audience.name,
                audience_id=state.audience_id if state else None,
                size=state.size if state else 0,
                coverage=tuple((key, float(coverage.get(key, 0.0))) for key in SCHEMA),
                synced_at=state.synced_at if state else None,
                dry_run=bool(state and state.last_result.get("dry_run")),
                error=state.last_error if state else None,
                parked=bool(state and state.blocked_token),
            )
        )
    return out
