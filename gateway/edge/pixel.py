"""`GET {prefix}/px.js`: the gateway's page script, cacheable, from the package."""

from __future__ import annotations

import hashlib
from importlib import resources

from aiohttp import web

_SOURCE = resources.files("gateway").joinpath("static/px.js").read_bytes()
_ETAG = '"' + hashlib.sha256(_SOURCE).hexdigest()[:16] + '"'


async def get_px_js(request: web.Request) -> web.StreamResponse:
    """The script, with a long cache lifetime (its URL carries the version)."""
    headers = {
        "Cache-Control": "public, max-age=86400",
        "ETag": _ETAG,
        "X-Content-Type-Options": "nosniff",
    }
    if request.headers.get("If-None-Match") == _ETAG:
        return web.Response(status=304, headers=headers)
    return web.Response(
        body=_SOURCE, content_type="application/javascript", charset="utf-8", headers=headers
    )
