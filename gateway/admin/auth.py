"""Who a dashboard request is: the admin token, a session cookie, a tenant's token.

Shared by every dashboard route: sign-in state, the keys sessions and CSRF tokens are
signed with, and the same-origin checks that guard the actions.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from aiohttp import web

from gateway.admin.data import DayCache
from gateway.admin.session import COOKIE, SESSION_TTL, Session, issue, session_key, verify
from gateway.admin.tenants import tenant_keys, tenant_session
from gateway.delivery.ratelimit import RateLimits
from gateway.delivery.seal import load_key
from gateway.edge.appkeys import RUNTIME
from gateway.edge.pages import page_secret
from gateway.edge.sites import proxied
from gateway.edge.visitor import visitor
from gateway.ops.access import admin_allowed, require_admin, tenant_sites


@dataclass(slots=True)
class AdminState:
    """What the dashboard keeps between requests."""

    cache: DayCache = field(default_factory=DayCache)
    # One cache per site selection (a tenant's sites, or one site picked): bounded by config.
    site_caches: dict[tuple[str, ...], DayCache] = field(default_factory=dict)
    # Guessing the token through the form: ten tries, then one every six seconds per peer.
    logins: RateLimits = field(default_factory=lambda: RateLimits(1 / 6, 10))
    key: bytes | None = None  # the outbox key, read on first use


ADMIN = web.AppKey("admin", AdminState)


@dataclass(frozen=True, slots=True)
class Auth:
    """Who a request is: a session (or the bare token), and the sites it may see."""

    session: Session | None  # None: the request carried the admin token itself
    cookie: str | None = None  # a new session's cookie to set
    # A tenant's sites (signed in with a site's own admin_token); None: the global operator.
    sites: frozenset[str] | None = None


# -- sessions -------------------------------------------------------------------------------


def authenticate(request: web.Request) -> Auth | web.Response | None:
    """The request's credentials; None when it must sign in; a 403 when it may not."""
    settings = request.app[RUNTIME].settings
    tenant = tenant_sites(request)
    if tenant:
        return Auth(None, sites=tenant)
    tenant_session = tenant_session_of(request)
    if tenant_session is not None:
        return Auth(tenant_session[0], sites=tenant_session[1])
    session = session_of(request)
    if settings.admin_token:
        if session is not None:
            return Auth(session)
        return Auth(None) if admin_allowed(request) else None
    denied = require_admin(request)
    if denied is not None:
        return denied
    if session is not None:
        return Auth(session)
    # A local visitor needs no sign-in, but its actions still need a session to bind
    # their CSRF token to: one is issued on the first visit.
    value, session = issue(signing_key(request), now=int(time.time()))
    return Auth(session, value)


def sign_in_first(request: web.Request) -> web.Response:
    """A browser is sent to the sign-in form, a script gets the 401."""
    if wants_html(request):
        return see_other(request, "/admin/login")
    denied = require_admin(request)
    assert denied is not None
    return denied


def session_of(request: web.Request) -> Session | None:
    """The global operator's session from the cookie, when it is valid."""
    return verify(signing_key(request), request.cookies.get(COOKIE), now=int(time.time()))


def any_token(request: web.Request) -> bool:
    """True when someone signs in: a global or a site's admin token is configured."""
    return bool(request.app[RUNTIME].settings.admin_token or tenant_keys_of(request))


def tenant_keys_of(request: web.Request) -> dict[str, tuple[bytes, frozenset[str]]]:
    """Each site admin token's session key and the sites it opens ({} without tenants)."""
    settings = request.app[RUNTIME].settings
    if not any(site.admin_token for site in settings.site_list()):
        return {}
    return tenant_keys(settings, page_secret(settings, _outbox_key(request)))


def tenant_session_of(request: web.Request) -> tuple[Session, frozenset[str]] | None:
    """A tenant's session from the cookie, and its sites, when it is valid."""
    return tenant_session(tenant_keys_of(request), request.cookies.get(COOKIE))


def auth_key(request: web.Request, auth: Auth) -> bytes:
    """The key the session of `auth` is signed (and its CSRF token made) with."""
    if auth.sites is not None:
        for key, names in tenant_keys_of(request).values():
            if names == auth.sites:
                return key
    return signing_key(request)


def _outbox_key(request: web.Request) -> bytes:
    state = request.app[ADMIN]
    if state.key is None:
        state.key = load_key(request.app[RUNTIME].settings)
    return state.key


def signing_key(request: web.Request) -> bytes:
    """The key the global operator's sessions and CSRF tokens are signed with."""
    state = request.app[ADMIN]
    settings = request.app[RUNTIME].settings
    if state.key is None:
        state.key = load_key(settings)
    # Derived per request: a reload may change `secret` or `admin_token`.
    return session_key(page_secret(settings, state.key), settings.admin_token)


def set_cookie(request: web.Request, response: web.StreamResponse, value: str) -> None:
    """Set the session cookie: HttpOnly, SameSite=Strict, Secure behind https."""
    response.set_cookie(
        COOKIE,
        value,
        max_age=SESSION_TTL,
        path=cookie_path(request),
        httponly=True,
        samesite="Strict",
        secure=_origin(request).startswith("https:"),
    )


def cookie_path(request: web.Request) -> str:
    """The dashboard's path, which scopes the session cookie."""
    return f"{request.app[RUNTIME].settings.prefix}/admin"


# -- request details ------------------------------------------------------------------------


def _origin(request: web.Request) -> str:
    if proxied(request.app):
        return visitor(request).origin
    return f"{request.scheme}://{request.host}"


def same_origin(request: web.Request) -> bool:
    """False when the browser says the request came from another site."""
    site = request.headers.get("Sec-Fetch-Site")
    if site is not None and site not in ("same-origin", "none"):
        return False
    origin = request.headers.get("Origin")
    return origin is None or origin == _origin(request)


def wants_html(request: web.Request) -> bool:
    """True for a browser (HTML answers), False for a JSON client."""
    accept = request.headers.get("Accept", "")
    return "text/html" in accept or "application/json" not in accept


def prefixed(request: web.Request, tail: str) -> str:
    """`tail` under the gateway's prefix."""
    return request.app[RUNTIME].settings.prefix + tail


def see_other(request: web.Request, tail: str) -> web.Response:
    """A 303 to `tail` under the prefix."""
    return web.Response(
        status=303, headers={"Location": prefixed(request, tail), "Cache-Control": "no-store"}
    )
