"""Who may use the operator endpoints (`/status`, `/metrics`, `/admin`).

With `admin_token` set, only a request carrying `Authorization: Bearer <admin_token>`.
Without it, only peers in `admin_networks` (loopback by default). The peer is the TCP
socket's, never a forwarded header: behind a reverse proxy on the same host every peer
is loopback, so such a setup needs `admin_token` (or `admin_networks = []`).
"""

from __future__ import annotations

import hmac

from aiohttp import web

from gateway.appkeys import RUNTIME
from gateway.edge.identity import networks, trusted_peer
from gateway.errors import json_error

_HOW = (
    "set admin_token (CAPIGW_ADMIN_TOKEN or --admin-token) and send 'Authorization: Bearer <token>'"
)


def bearer_matches(header: str | None, token: str) -> bool:
    """True when `header` is `Bearer <token>` (compared in constant time)."""
    if not header or not header.startswith("Bearer "):
        return False
    given = header[len("Bearer ") :].strip().encode()
    return hmac.compare_digest(given, token.encode())


def socket_peer(request: web.Request) -> str | None:
    """The address of the TCP peer itself (not `request.remote`, which may be rewritten)."""
    transport = request.transport
    if transport is None:
        return None
    peer = transport.get_extra_info("peername")
    if isinstance(peer, tuple | list) and peer:
        return str(peer[0])
    return None


def admin_allowed(request: web.Request) -> bool:
    """True when the request may use the operator endpoints."""
    settings = request.app[RUNTIME].settings
    if settings.admin_token:
        return bearer_matches(request.headers.get("Authorization"), settings.admin_token)
    return trusted_peer(socket_peer(request), networks(tuple(settings.admin_networks)))


def require_admin(request: web.Request) -> web.Response | None:
    """None when allowed, else the 401 (token configured) or 403 (no token) JSON answer."""
    if admin_allowed(request):
        return None
    if request.app[RUNTIME].settings.admin_token:
        return json_error(
            401,
            "unauthorized",
            "send the admin token as 'Authorization: Bearer <token>'",
            headers={"WWW-Authenticate": 'Bearer realm="capi-gateway admin"'},
        )
    return json_error(
        403,
        "forbidden",
        f"without an admin token this endpoint answers local peers only; {_HOW}",
    )
