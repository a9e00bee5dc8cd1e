"""`GET {prefix}/status` and `GET {prefix}/metrics`: what an operator asks a running gateway.

Both need the admin token (or a local peer when none is set, see `gateway.ops.access`).
Status never shows a secret: pixel ids are masked (`1234****`), tokens and keys appear
only as "present". Queue numbers, the last delivery and dead letters come from the buffer
file, so every worker answers the same; the last failed send and the page counters are
this worker's (`pid` says which one answered).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import sqlite3
import time
from typing import Any

from aiohttp import web
from yarl import URL

from gateway import __version__
from gateway.delivery.reads import QueueSnapshot
from gateway.edge.appkeys import BUFFER_READER, RUNTIME, SENDER, STARTED_AT
from gateway.edge.sites import SITES, single_stages, sites_on
from gateway.ops.access import operator_scope
from gateway.settings import Settings

log = logging.getLogger("gateway.status")

_MIB = 1024 * 1024


def mask(pixel_id: str) -> str:
    """A pixel id shown without giving it away: its first four digits, then `****`."""
    return pixel_id[:4] + "****"


async def get_status(request: web.Request) -> web.StreamResponse:
    """The gateway's configuration (secrets as presence only), queue and last outcomes."""
    scope = operator_scope(request)
    if isinstance(scope, web.Response):
        return scope
    app = request.app
    settings = app[RUNTIME].settings
    if scope is not None:
        return await _tenant_status(app, settings, scope)
    snapshot: QueueSnapshot | None = None
    queue: dict[str, Any]
    reader = app.get(BUFFER_READER)
    try:
        if reader is None:
            raise ValueError("the outbox is not open")
        snapshot = await reader.snapshot()
        queue = _queue(snapshot)
    except (sqlite3.Error, ValueError, OSError) as exc:
        log.error("Reading the outbox for /status failed: %s", exc)
        queue = {"error": f"cannot read the buffer: {exc}"}
    body: dict[str, Any] = {
        **_configuration(settings),
        "version": __version__,
        "pid": os.getpid(),
        "uptime": round(time.time() - app[STARTED_AT], 3),
        "queue": queue,
        "last_success": _last_success(app, snapshot),
        "last_error": _last_error(app, snapshot),
    }
    warnings = [w for w in [settings.test_mode_warning()] if w]
    single = single_stages(app)
    if single is not None and single.proxy is not None:
        upstream = await single.proxy.health.report()
        body["upstream_health"] = upstream
        if not upstream["ok"]:
            warnings.append(upstream["detail"])
    body["warnings"] = warnings
    if sites_on(app):
        body["sites"] = await _sites(app, settings, warnings)
    if single is not None and single.pages is not None:
        counters = single.pages.counters
        body["pages"] = {
            "tagged": counters.injected,
            "skipped": dict(counters.skipped),
            "stored": counters.stored,
            "store_failed": counters.store_failed,
        }
    return web.json_response(_redact(body, settings), headers={"Cache-Control": "no-store"})


async def _sites(app: web.Application, settings: Settings, warnings: list[str]) -> dict[str, Any]:
    """Each site's configuration and how its upstream is doing (its warning when down)."""
    holder = app.get(SITES)
    out: dict[str, Any] = {}
    for site in settings.site_list():
        entry = _configuration(site.settings)
        stages = holder.router.by_name.get(site.name) if holder is not None else None
        if stages is not None and stages.proxy is not None:
            health = await stages.proxy.health.report()
            entry["upstream_health"] = health
            if not health["ok"]:
                warnings.append(f"site {site.name!r}: {health['detail']}")
        out[site.name] = entry
    return out


async def _tenant_status(
    app: web.Application, settings: Settings, scope: frozenset[str]
) -> web.Response:
    """A tenant's /status: its own sites' configuration and events, nobody else's."""
    mine = [site for site in settings.site_list() if site.name in scope]
    pixels = {p.id for site in mine for p in site.settings.effective_pixels()}
    queue: dict[str, Any]
    snapshot: QueueSnapshot | None = None
    reader = app.get(BUFFER_READER)
    try:
        if reader is None:
            raise ValueError("the outbox is not open")
        snapshot = await reader.snapshot([site.name for site in mine])
        # Blocks are per pixel: only the tenant's own pixels' are theirs to see.
        snapshot = dataclasses.replace(
            snapshot, blocked=tuple(b for b in snapshot.blocked if b.pixel_id in pixels)
        )
        queue = _queue(snapshot)
        # The file's size is everyone's: not a tenant's number.
        queue.pop("used_mb")
        queue.pop("max_mb")
    except (sqlite3.Error, ValueError, OSError) as exc:
        log.error("Reading the outbox for /status failed: %s", exc)
        queue = {"error": "cannot read the buffer"}
    body: dict[str, Any] = {
        "version": __version__,
        "sites": {
            name: entry
            for name, entry in (await _sites(app, settings, [])).items()
            if name in scope
        },
        "queue": queue,
        "last_success": snapshot.last_delivery if snapshot else None,
    }
    return web.json_response(_redact(body, settings), headers={"Cache-Control": "no-store"})


def _configuration(settings: Settings) -> dict[str, Any]:
    pixels = [p for p in settings.effective_pixels() if p.id.isdigit()]
    configured = bool(pixels) and (settings.dry_run or all(p.access_token for p in pixels))
    return {
        "configured": configured,
        "mode": "dry run" if settings.dry_run else "sending",
        "test_mode": any(p.test_event_code for p in pixels),
        "pixels": [
            {
                "id": mask(p.id),
                "token": bool(p.access_token),
                "app_secret": bool(p.app_secret),
                "test_mode": bool(p.test_event_code),
            }
            for p in pixels
        ],
        "upstream": _without_userinfo(settings.upstream),
        "graph": {"url": settings.graph_url, "version": settings.graph_version},
        "events_api_keys": len(settings.events_api_keys),
        "admin_token": bool(settings.admin_token),
        "workers": settings.workers,
    }


def _queue(snap: QueueSnapshot) -> dict[str, Any]:
    states = snap.states
    return {
        # Waiting to be sent: due, being sent, or parked for a refused token.
        "depth": states.get("pending", 0) + states.get("inflight", 0) + states.get("blocked", 0),
        "states": states,
        "oldest_pending_age": (
            round(snap.oldest_pending_age, 3) if snap.oldest_pending_age is not None else None
        ),
        "blocked_pixels": [
            {"pixel_id": mask(b.pixel_id), "reason": b.reason, "fbtrace_id": b.fbtrace_id}
            for b in snap.blocked
        ],
        "used_mb": round(snap.used_bytes / _MIB, 3),
        "max_mb": round(snap.limit_bytes / _MIB, 3),
    }


def _last_success(app: web.Application, snap: QueueSnapshot | None) -> float | None:
    times = [snap.last_delivery if snap else None]
    if SENDER in app:
        times.append(app[SENDER].last_success)
    known = [t for t in times if t is not None]
    return max(known) if known else None


def _last_error(app: web.Application, snap: QueueSnapshot | None) -> dict[str, Any] | None:
    """The newest of this worker's last failed send, the newest dead letter and block."""
    found: list[dict[str, Any]] = []
    err = app[SENDER].last_error if SENDER in app else None
    if err is not None:
        found.append(
            {
                "kind": "send",
                "pixel_id": str(err.get("pixel_id") or ""),
                "message": err.get("message"),
                "fbtrace_id": err.get("fbtrace_id"),
                "at": err.get("at"),
            }
        )
    if snap is not None and snap.last_dead is not None:
        dead = snap.last_dead
        found.append(
            {
                "kind": "dead letter",
                "pixel_id": dead.pixel_id,
                "message": dead.error,
                "fbtrace_id": dead.fbtrace_id,
                "at": dead.at,
            }
        )
    for blocked in snap.blocked if snap is not None else ():
        found.append(
            {
                "kind": "blocked",
                "pixel_id": blocked.pixel_id,
                "message": blocked.reason,
                "fbtrace_id": blocked.fbtrace_id,
                "at": blocked.since,
            }
        )
    if not found:
        return None
    newest = max(found, key=lambda e: float(e["at"] or 0.0))
    newest["pixel_id"] = mask(newest["pixel_id"])
    return newest


def _without_userinfo(url: str | None) -> str | None:
    if url is None:
        return None
    parsed = URL(url)
    return str(parsed.with_user(None)) if parsed.user or parsed.password else url


def _redact(value: Any, settings: Settings) -> Any:
    """`value` with every configured secret and full pixel id masked, wherever it hides.

    Error texts come from Meta and may quote a pixel id; nothing here should ever hold a
    token, but a status page is the last place one may leak from.
    """
    secrets: list[str | None] = []
    pixel_ids: list[str] = []
    for each in [settings, *(site.settings for site in settings.site_list())]:
        secrets += [each.admin_token, each.access_token, each.app_secret]
        secrets += each.events_api_keys
        for pixel in each.effective_pixels():
            secrets += [pixel.access_token, pixel.app_secret]
        pixel_ids += [p.id for p in each.effective_pixels() if p.id.isdigit()]
    swaps = [(s, "[redacted]") for s in secrets if s] + [(p, mask(p)) for p in pixel_ids]
    return _walk(value, swaps)


def _walk(value: Any, swaps: list[tuple[str, str]]) -> Any:
    if isinstance(value, str):
        for old, new in swaps:
            value = value.replace(old, new)
        return value
    if isinstance(value, dict):
        return {k: _walk(v, swaps) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_walk(v, swaps) for v in value]
    return value
