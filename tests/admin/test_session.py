"""The dashboard's session cookie and CSRF token: signed, expiring, bound to the token."""

from __future__ import annotations

from gateway.admin import session as admin_session


def test_sessions_expire_and_cannot_be_forged() -> None:
    key = admin_session.session_key(b"secret", "token")
    value, session = admin_session.issue(key, now=1_000, ttl=60)
    assert admin_session.verify(key, value, now=1_059) == session
    assert admin_session.verify(key, value, now=1_060) is None
    other = admin_session.session_key(b"secret", "another token")
    assert admin_session.verify(other, value, now=1_000) is None
    expires, nonce, mac = value.split(".")
    assert admin_session.verify(key, f"{int(expires) + 3600}.{nonce}.{mac}", now=1_000) is None
    token = admin_session.csrf_token(key, session)
    assert admin_session.csrf_ok(key, session, token)
    _, second = admin_session.issue(key, now=1_000)
    assert not admin_session.csrf_ok(key, second, token)
    assert not admin_session.csrf_ok(key, session, None)
