"""Dashboard sessions: a signed, expiring cookie and a CSRF token bound to it.

Stateless, like page tokens: the cookie is `expires.nonce.mac`, HMAC-SHA256 under a key
derived from the gateway's secret and the admin token, so any worker accepts it, and
changing the admin token ends every session. The CSRF token is an HMAC of the session's
nonce: a page of another origin can neither read it nor compute it.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass

COOKIE = "capigw_admin"
SESSION_TTL = 12 * 3600
_LABEL = b"capi-gateway admin session v1\x00"
_VALUE = re.compile(r"([0-9]{1,12})\.([A-Za-z0-9_-]{16,64})\.([A-Za-z0-9_-]{43})", re.ASCII)


@dataclass(frozen=True, slots=True)
class Session:
    """A valid session: its random nonce and when it ends (Unix seconds)."""

    nonce: str
    expires: int


def session_key(secret: bytes, admin_token: str | None) -> bytes:
    """The MAC key of sessions: the gateway's secret, bound to the current admin token."""
    token = hashlib.sha256((admin_token or "").encode()).digest()
    return hmac.new(secret, _LABEL + token, hashlib.sha256).digest()


def issue(key: bytes, *, now: int, ttl: int = SESSION_TTL) -> tuple[str, Session]:
    """A new session and its cookie value."""
    session = Session(secrets.token_urlsafe(18), now + ttl)
    body = f"{session.expires}.{session.nonce}"
    return f"{body}.{_b64(_mac(key, b'session', body))}", session


def verify(key: bytes, value: str | None, *, now: int) -> Session | None:
    """The session a cookie value proves, or None when forged, malformed or expired."""
    if not value:
        return None
    match = _VALUE.fullmatch(value)
    if match is None:
        return None
    expires, nonce, mac = match.groups()
    body = f"{expires}.{nonce}"
    if not hmac.compare_digest(mac, _b64(_mac(key, b"session", body))):
        return None
    if int(expires) <= now:
        return None
    return Session(nonce, int(expires))


def csrf_token(key: bytes, session: Session) -> str:
    """The token a form of this session must echo back."""
    return _b64(_mac(key, b"csrf", session.nonce))


def csrf_ok(key: bytes, session: Session, given: str | None) -> bool:
    """True when `given` is the session's CSRF token (compared in constant time)."""
    return bool(given) and hmac.compare_digest(str(given), csrf_token(key, session))


def _mac(key: bytes, purpose: bytes, body: str) -> bytes:
    return hmac.new(key, purpose + b"\x00" + body.encode(), hashlib.sha256).digest()


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")
