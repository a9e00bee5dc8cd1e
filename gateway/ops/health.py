"""`GET {prefix}/health`: liveness, and readiness to accept events.

Ready means an event offered now would be stored: the outbox's file can be read and
written, and the buffer is within `max_buffer_mb` (over it, a check gives the room of
delivered rows back first, as the outbox does before refusing an event, so a gateway
taken out of rotation (and sent no events) still recovers); in front of a site, also that
the site is reachable and most recent proxied requests did not fail
(gateway.edge.upstream_health); with `[[sites]]`, that at least one site's is (each site's
upstream is reported under `checks.upstream.sites`). Not ready answers 503, so a
load balancer sends traffic elsewhere; `?live` asks for liveness only (200 while the
process serves), for probes that restart a process, which would not help a full disk.
In front of a site, point the load balancer at `?live`: tracking must not take the
site out of rotation.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import sqlite3
import time
from pathlib import Path
from typing import Any

from aiohttp import web

from gateway import __version__
from gateway.delivery.postgres.pool import DatabaseUnavailable
from gateway.delivery.store import OutboxStore, StoreReader
from gateway.edge.appkeys import BUFFER_READER, OUTBOX, RUNTIME, STARTED_AT
from gateway.edge.sites import SITES, single_stages, sites_on

# SQLite needs room for the WAL to commit at all; below this the disk counts as full.
_MIN_FREE_BYTES = 1024 * 1024
# A health check answers promptly even if the buffer's file system hangs.
_CHECK_TIMEOUT = 2.0
_MIB = 1024 * 1024


async def get_health(request: web.Request) -> web.StreamResponse:
    """200 when live and ready, 503 with the failing check when not ready."""
    started = request.app[STARTED_AT]
    body: dict[str, Any] = {
        "status": "ok",
        "version": __version__,
        "uptime": round(time.time() - started, 3),
        "live": True,
    }
    headers = {"Cache-Control": "no-store"}
    if "live" in request.query:
        return web.json_response(body, headers=headers)
    settings = request.app[RUNTIME].settings
    # A PostgreSQL store has no file here to check: its reads below tell whether it answers.
    buffer = None if settings.store_url else settings.buffer
    checks = await readiness(request.app.get(BUFFER_READER), request.app.get(OUTBOX), buffer)
    single = single_stages(request.app)
    if single is not None and single.proxy is not None:
        # Visitors get 502s while the site is down: not ready, though still alive.
        checks["upstream"] = await single.proxy.health.report()
    elif sites_on(request.app):
        checks["upstream"] = await sites_upstream(request.app)
    ready = all(check["ok"] for check in checks.values())
    body.update(ready=ready, checks=checks)
    if not ready:
        body["status"] = "not ready"
    return web.json_response(body, status=200 if ready else 503, headers=headers)


async def sites_upstream(app: web.Application) -> dict[str, Any]:
    """With `[[sites]]`: each site's upstream health and the readiness they add up to.

    Not ready only when every site's upstream fails: a load balancer that takes the
    gateway out of rotation takes all sites with it, so one tenant's broken site must not
    (its own failure shows under `sites`, in /status and in its site's metrics).
    """
    stages = [s for s in app[SITES].router.by_name.values() if s.proxy is not None]
    reports = await asyncio.gather(*(s.proxy.health.report() for s in stages if s.proxy))
    sites = {s.name: report for s, report in zip(stages, reports, strict=True)}
    down = sorted(name for name, report in sites.items() if not report["ok"])
    out: dict[str, Any] = {"ok": len(down) < len(sites) or not sites, "sites": sites}
    if down:
        out["detail"] = f"the upstream of site(s) {', '.join(repr(n) for n in down)} fails" + (
            "" if out["ok"] else ": every site is down"
        )
    return out


async def readiness(
    reader: StoreReader | None, outbox: OutboxStore | None, buffer: Path | None
) -> dict[str, dict[str, Any]]:
    """The outcome of each readiness check: `{"outbox": {...}, "buffer": {...}}`."""
    if reader is None or outbox is None:
        return {
            "outbox": {"ok": False, "detail": "the outbox is not open"},
            "buffer": {"ok": False, "detail": "the outbox is not open"},
        }
    writable = _writable(buffer) if buffer is not None else {"ok": True}
    try:
        used = await asyncio.wait_for(reader.used_bytes(), _CHECK_TIMEOUT)
        if used > reader.limit_bytes and await reader.has_delivered():
            # Shielded: a timed-out check must not cut a purge short inside the outbox.
            await asyncio.shield(outbox.purge_sent_oldest(fraction=0.5))
            used = await asyncio.wait_for(reader.used_bytes(), _CHECK_TIMEOUT)
    except (sqlite3.Error, ValueError, OSError, TimeoutError, DatabaseUnavailable) as exc:
        detail = "timed out" if isinstance(exc, TimeoutError) else str(exc)
        return {
            "outbox": {"ok": False, "detail": f"cannot read the buffer: {detail}"},
            "buffer": {"ok": False, "detail": "unknown: the buffer could not be read"},
        }
    limit = reader.limit_bytes
    over = used > limit
    check: dict[str, Any] = {
        "ok": not over,
        "used_mb": round(used / _MIB, 3),
        "max_mb": round(limit / _MIB, 3),
    }
    if over:
        check["detail"] = (
            "the buffer is over max_buffer_mb; events are refused until it drains "
            "(sends succeed, or `capi-gateway queue purge`)"
        )
    return {"outbox": writable, "buffer": check}


def _writable(buffer: Path) -> dict[str, Any]:
    # The endpoint is public: details name the file's role, never its path.
    paths = {
        "the buffer file": buffer,
        "the buffer's WAL file": buffer.with_name(buffer.name + "-wal"),
        "the buffer's directory": buffer.parent,
    }
    for what, path in paths.items():
        if path.exists() and not os.access(path, os.W_OK):
            return {"ok": False, "detail": f"{what} is not writable by the gateway"}
    try:
        free = shutil.disk_usage(buffer.parent).free
    except OSError as exc:
        return {"ok": False, "detail": f"cannot check the buffer's disk: {exc.strerror}"}
    if free < _MIN_FREE_BYTES:
        return {"ok": False, "detail": "the disk holding the buffer is full"}
    return {"ok": True, "disk_free_mb": round(free / _MIB, 1)}
