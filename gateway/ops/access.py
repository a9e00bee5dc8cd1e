"""Who may use the operator endpoints (`/status`, `/metrics`, `/admin`).

With `admin_token` set, only a request carrying `Authorization: Bearer <admin_token>`.
Without it, only clients in `admin_networks` (loopback by default). A request that came
through a proxy (it carries `X-Forwarded-For` or `Forwarded`) is not local: behind nginx
on the same host every socket peer is loopback, so such a request counts as the client
address the trusted proxies name, and from an untrusted peer it is refused outright.

With `[[sites]]`, a site's own `admin_token` opens `/status`, `/metrics` and the dashboard
for that site alone (a tenant); `operator_scope` says which sites a request may see.
"""

from __future__ import annotations

import hmac

from aiohttp import web

from gateway.edge.appkeys import RUNTIME
from gateway.edge.identity import networks, trusted_peer
from gateway.edge.sites import SITES
from gateway.edge.visitor import visitor
from gateway.errors import json_error

_HOW = (
    "set admin_token (CAPIGW_ADMIN_TOKEN or --admin-token) and send 'Authorization: Bearer <token>'"
)


def bearer_matches(header: str | None, token: str) -> bool:
    """True when `header` is `Bearer <token>` (compared in constant time)."""
    if not header or not header.startswith("Bearer "):
        return False
    # Header bytes that are not UTF-8 arrive as surrogates: they match no key, and must
    # not make encoding fail (a 500).
    given = header[len("Bearer ") :].strip().encode("utf-8", "surrogateescape")
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


def proxied(request: web.Request) -> bool:
    """True when the request says it came through a proxy."""
    return "X-Forwarded-For" in request.headers or "Forwarded" in request.headers


def client_address(request: web.Request) -> str | None:
    """The client the gateway trusts: the socket peer, or what trusted proxies say it is."""
    return visitor(request).client_ip


def _local(request: web.Request, admin_networks: list[str]) -> bool:
    peer = socket_peer(request)
    allowed = networks(tuple(admin_networks))
    if not trusted_peer(peer, allowed):
        return False
    if not proxied(request):
        return True
    if not trusted_peer(peer, networks(tuple(request.app[RUNTIME].settings.trusted_proxies))):
        return False  # an untrusted peer relaying someone else: not a local request
    # A trusted proxy appends the address it saw: a visitor cannot pass for loopback.
    return trusted_peer(client_address(request), allowed)


def admin_allowed(request: web.Request) -> bool:
    """True when the request may use the operator endpoints."""
    settings = request.app[RUNTIME].settings
    if settings.admin_token:
        return bearer_matches(request.headers.get("Authorization"), settings.admin_token)
    return _local(request, settings.admin_networks)


def tenant_sites(request: web.Request) -> frozenset[str]:
    """The sites whose own `admin_token` the request carries (empty: none, or no sites)."""
    holder = request.app.get(SITES)
    if holder is None:
        return frozenset()
    header = request.headers.get("Authorization")
    if not header:
        return frozenset()
    return frozenset(
        name
        for name, stages in holder.router.by_name.items()
        if stages.runtime.settings.admin_token
        and bearer_matches(header, stages.runtime.settings.admin_token)
    )


def operator_scope(request: web.Request) -> frozenset[str] | web.Response | None:
    """None: the global operator (sees all); a tenant's sites; else the refusal to answer.

    A tenant token counts before the address: a tenant on the admin network still sees
    its own sites only.
    """
    tenant = tenant_sites(request)
    if tenant:
        return tenant
    denied = require_admin(request)
    return denied if denied is not None else None


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
        f"without an admin token this endpoint answers local clients only (a request through "
        f"a proxy is not local); {_HOW}",
    )
