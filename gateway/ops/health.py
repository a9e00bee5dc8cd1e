"""`GET {prefix}/health`: the process is up and its outbox is open."""

from __future__ import annotations

import time

from aiohttp import web

from gateway import __version__
from gateway.appkeys import STARTED_AT


async def get_health(request: web.Request) -> web.StreamResponse:
    """200 with a small JSON body while the process serves."""
    started = request.app[STARTED_AT]
    return web.json_response(
        {"status": "ok", "version": __version__, "uptime": round(time.time() - started, 3)},
        headers={"Cache-Control": "no-store"},
    )
