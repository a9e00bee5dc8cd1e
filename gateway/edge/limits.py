"""A parsed request in, a 431 out when its header lines together pass a bound.

aiohttp bounds each header field (`max_header_bytes`) and their count, not their sum: 3 MB
of headers in a few hundred fields were accepted and forwarded to the site.
"""

from __future__ import annotations

from collections.abc import Callable
from itertools import chain

from aiohttp import web

from gateway.errors import json_error


def header_bytes(request: web.BaseRequest) -> int:
    """The size of the request's header lines as sent (names, values, separators)."""
    raw = request.raw_headers
    # Summed in C (every request pays this): ": " and CRLF are 4 bytes per line.
    return sum(map(len, chain.from_iterable(raw))) + 4 * len(raw)


def headers_too_large(
    limit_bytes: Callable[[], int],
) -> Callable[[web.Request], web.Response | None]:
    """A check giving the 431 for a request whose header lines pass `limit_bytes()`, else
    None (run by the request id middleware: one middleware layer less per request)."""

    def check(request: web.Request) -> web.Response | None:
        limit = limit_bytes()
        if header_bytes(request) <= limit:
            return None
        response = json_error(
            431,
            "request headers too large",
            f"send at most {limit} bytes of headers (max_request_headers_kb)",
        )
        response.force_close()
        return response

    return check
