"""Signed page tokens: a served page's event_id, bound to its visitor, checkable by any replica.

Token = base64url(payload) "." base64url(HMAC-SHA256), payload = version (1 byte) || issued
(8 bytes, big-endian Unix seconds) || event_id (UTF-8). The client identity string is not in the
token at all -- not even hashed, since an unkeyed hash of "ip|user agent" can be brute-forced --
it only enters the MAC, so a token copied to another client fails verification.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
import time
from dataclasses import dataclass
from functools import lru_cache

from gateway.edge.randompool import random_bytes
from gateway.pipeline.keyedhash import keyed_sha256

_VERSION = 1
_LABEL = b"capi-gateway page token v1\x00"  # domain separation from other uses of the secret
_MAX_EVENT_ID = 512  # bytes
_MAX_TOKEN = 2 * (_MAX_EVENT_ID + 64)  # rejects oversized input before any work
_FUTURE_SKEW = 60  # seconds: clocks of replicas may differ a little
_TOKEN_RE = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+", re.ASCII)


@dataclass(frozen=True, slots=True)
class TokenClaims:
    """What a valid token proves: the page's event_id and when it was issued."""

    event_id: str
    issued: int


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes | None:
    try:
        data = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        return None
    # Only the canonical spelling: no second token string for the same bytes.
    return data if _b64(data) == text else None


def _mac(secret: bytes, client: str, payload: bytes) -> bytes:
    # Fixed-size client digest before the variable-length payload keeps the input unambiguous.
    return keyed_sha256(secret).digest(_LABEL + _client_digest(client) + payload)


@lru_cache(maxsize=1024)
def _client_digest(client: str) -> bytes:
    # A visitor's pages and beacons repeat the same client: hashed once while it is recent.
    return hashlib.sha256(client.encode("utf-8", "surrogatepass")).digest()


def new_event_id(now: float | None = None) -> str:
    """A fresh page event id: a time-ordered UUID (version 7, RFC 9562), random after its
    millisecond.

    Every stored event is indexed by its id (the outbox's event key, the facts' event index):
    ids that grow with time are appended at the end of those B-trees, where random ones
    (version 4) dirtied one index page each per stored PageView, all written to the WAL
    and checkpointed with the commit. 74 random bits stay (within a millisecond, ids are
    as unguessable as before to anyone but the page's own visitor, who holds it anyway);
    the time they carry is the page's, which its token already names.
    """
    ms = int((time.time() if now is None else now) * 1000) & _MS_MASK
    rand = int.from_bytes(random_bytes.take(10), "big")
    n = (ms << 80) | (rand & _RAND_MASK) | _V7_BITS
    h = f"{n:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


# Layout of RFC 9562's version 7: 48 bits of Unix milliseconds, the version (7), 12 random
# bits, the variant (10), 62 random bits.
_MS_MASK = (1 << 48) - 1
_RAND_MASK = ((1 << 80) - 1) & ~((0xF000 << 64) | (0xC000 << 48))
_V7_BITS = (0x7000 << 64) | (0x8000 << 48)


def sign(secret: bytes, event_id: str, *, issued: int, client: str) -> str:
    """A URL-safe token binding event_id, issue time (Unix s) and the client identity."""
    if not secret:
        raise ValueError("page token secret must not be empty")
    raw_id = event_id.encode("utf-8")
    if not raw_id or len(raw_id) > _MAX_EVENT_ID:
        raise ValueError(f"event_id must be 1..{_MAX_EVENT_ID} bytes")
    if not 0 <= issued < 2**63:
        raise ValueError("issued must be a non-negative Unix time")
    payload = bytes([_VERSION]) + issued.to_bytes(8, "big") + raw_id
    return f"{_b64(payload)}.{_b64(_mac(secret, client, payload))}"


def verify(secret: bytes, token: str, *, client: str, now: int, ttl: int) -> TokenClaims | None:
    """The token's claims, or None if forged, malformed, for another client, expired or future."""
    if not secret:
        raise ValueError("page token secret must not be empty")
    if not isinstance(token, str) or len(token) > _MAX_TOKEN or not _TOKEN_RE.fullmatch(token):
        return None
    encoded_payload, encoded_mac = token.split(".")
    payload, mac = _unb64(encoded_payload), _unb64(encoded_mac)
    if payload is None or mac is None or len(payload) < 10 or payload[0] != _VERSION:
        return None
    if not hmac.compare_digest(mac, _mac(secret, client, payload)):
        return None
    issued = int.from_bytes(payload[1:9], "big")
    try:
        event_id = payload[9:].decode("utf-8")
    except UnicodeDecodeError:
        return None
    if now - issued > ttl or issued - now > _FUTURE_SKEW:
        return None
    return TokenClaims(event_id=event_id, issued=issued)
