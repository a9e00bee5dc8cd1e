"""A parsed request in, a 431 out when its header lines together pass a bound.

aiohttp bounds each header field (`max_header_bytes`) and their count, not their sum: 3 MB
of headers in a few hundred fields were accepted and forwarded to the site.
"""

from __future__ import annotations

from collections.abc import Callable

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from gateway.errors import json_error


def header_bytes(request: web.BaseRequest) -> int:
    """The size of the request's header lines as sent (names, values, separators)."""
    return sum(len(name) + len(value) + 4 for name, value in request.raw_headers)


def header_size_middleware(limit_bytes: Callable[[], int]) -> Middleware:
    """Answer 431 to a request whose header lines add up to more than `limit_bytes()`."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        limit = limit_bytes()
        if header_bytes(request) > limit:
            response = json_error(
                431,
                "request headers too large",
                f"send at most {limit} bytes of headers (max_request_headers_kb)",
            )
            response.force_close()
            return response
        return await handler(request)

    return middleware
