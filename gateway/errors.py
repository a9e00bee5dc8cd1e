"""HTTP errors as the JSON body every endpoint of the gateway uses."""

from __future__ import annotations

from typing import Any

from aiohttp import web


def json_error(
    status: int, error: str, detail: Any = None, *, headers: dict[str, str] | None = None
) -> web.Response:
    """`{"error": ..., "detail": ...}` with the given status."""
    return web.json_response({"error": error, "detail": detail}, status=status, headers=headers)
