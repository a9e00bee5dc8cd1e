"""A site's own admin token on the dashboard: its session key, and the sites it opens.

A tenant's session is signed under a key derived from its site's `admin_token` (as the
global operator's is from the global token), so the cookie itself says whose it is, any
worker accepts it, and changing a site's token ends that tenant's sessions only.
"""

from __future__ import annotations

import time

from gateway.admin.session import Session, session_key, verify
from gateway.settings import Settings


def tenant_keys(settings: Settings, secret: bytes) -> dict[str, tuple[bytes, frozenset[str]]]:
    """Each site admin token's session key and the sites it opens (one token, many sites)."""
    sites: dict[str, set[str]] = {}
    for site in settings.site_list():
        if site.admin_token:
            sites.setdefault(site.admin_token, set()).add(site.name)
    return {token: (session_key(secret, token), frozenset(names)) for token, names in sites.items()}


def tenant_session(
    keys: dict[str, tuple[bytes, frozenset[str]]], value: str | None
) -> tuple[Session, frozenset[str]] | None:
    """The tenant session a cookie value proves, with its sites, or None."""
    if not value:
        return None
    for key, names in keys.values():
        session = verify(key, value, now=int(time.time()))
        if session is not None:
            return session, names
    return None
