"""Webhook signature checks: Stripe's `Stripe-Signature` and generic HMAC-SHA256 schemes.

Pure functions over the raw request body and headers; a failure raises `SignatureError`
whose message is safe to return to the caller and to log: it names what is wrong, never a
secret, an expected signature or the received values.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import math
import re
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

STRIPE_HEADER = "Stripe-Signature"
# Real headers are ~100 bytes (a few more with rotated secrets): anything this long is
# garbage or an attempt to make us hash and compare a lot.
MAX_HEADER_LENGTH = 4096
# Unix seconds for the next few thousand years; also keeps int() away from huge inputs.
_TIMESTAMP = re.compile(r"[0-9]{1,12}", re.ASCII)
_TEMPLATE_FIELDS = re.compile(r"(\{body\}|\{timestamp\})")


class SignatureError(Exception):
    """A webhook's signature does not verify; `str(exc)` is a safe, clear reason."""


# ---------------------------------------------------------------------------------------------
# Stripe
# ---------------------------------------------------------------------------------------------


def verify_stripe(
    header: str | None,
    body: bytes,
    secrets: Sequence[str],
    *,
    tolerance: float = 300.0,
    now: float | None = None,
) -> None:
    """Check a `Stripe-Signature` header against the raw body with any of `secrets`.

    Mirrors Stripe's libraries: every `v1` value is compared (a header carries several
    while Stripe rolls a secret), other schemes (`v0`) are ignored, and the signature is
    checked before the timestamp so a tolerance error always means "authentic but stale".
    Unlike them, a timestamp too far in the future is refused too. `tolerance <= 0`
    turns the timestamp check off, as in Stripe's libraries.
    """
    keys = _usable(secrets)
    if not header or not header.strip():
        raise SignatureError(f"missing {STRIPE_HEADER} header")
    if len(header) > MAX_HEADER_LENGTH:
        raise SignatureError(f"{STRIPE_HEADER} header is too long")
    timestamp: str | None = None
    signatures: list[bytes] = []
    for item in header.split(","):
        name, sep, value = item.strip().partition("=")
        if not sep:
            continue
        if name == "t" and timestamp is None:
            timestamp = value
        elif name == "v1" and value.isascii():
            signatures.append(value.encode("ascii"))
    if timestamp is None:
        raise SignatureError(f"{STRIPE_HEADER} header has no timestamp (t=)")
    if not _TIMESTAMP.fullmatch(timestamp):
        raise SignatureError(f"{STRIPE_HEADER} header has a timestamp that is not a number")
    signatures = [s for s in signatures if s]
    if not signatures:
        raise SignatureError(f"{STRIPE_HEADER} header has no v1 signature")
    # Stripe signs the timestamp as a decimal number, so t=0042 signs "42.".
    signed = str(int(timestamp)).encode("ascii") + b"." + body
    if not _any_match((_hmac(key, signed).hexdigest().encode("ascii") for key in keys), signatures):
        raise SignatureError("no signature matches")
    _check_age(int(timestamp), tolerance, now)


def sign_stripe(body: bytes, secret: str, timestamp: int) -> str:
    """A `Stripe-Signature` header value for `body` (tests and `rules test` tooling)."""
    signed = f"{timestamp}.".encode("ascii") + body
    return f"t={timestamp},v1={_hmac(_key(secret), signed).hexdigest()}"


# ---------------------------------------------------------------------------------------------
# Generic HMAC-SHA256
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class HmacScheme:
    """How a sender signs its webhooks with HMAC-SHA256 over the raw body.

    `prefix` is stripped from the header value before decoding (GitHub: "sha256=").
    `template` is the signed message, built on bytes: `{body}` is the raw body and
    `{timestamp}` the `timestamp_header` value exactly as received (Slack:
    "v0:{timestamp}:{body}"). A timestamp header must be part of the template,
    otherwise an old body could be replayed with a fresh timestamp.
    """

    header: str
    secrets: tuple[str, ...]
    encoding: Literal["hex", "base64"] = "hex"
    prefix: str = ""
    timestamp_header: str | None = None
    tolerance: float = 300.0
    template: str = "{body}"

    def __post_init__(self) -> None:
        # A list slips through type checks from config code: keep the dataclass hashable.
        object.__setattr__(self, "secrets", tuple(self.secrets))
        if not self.header.strip():
            raise ValueError("header must name the signature header")
        if not _usable_or_none(self.secrets):
            raise ValueError("secrets must hold at least one non-empty secret")
        if self.encoding not in ("hex", "base64"):
            raise ValueError(f"encoding must be 'hex' or 'base64', not {self.encoding!r}")
        if math.isnan(self.tolerance):
            raise ValueError("tolerance must be a number of seconds")
        if "{body}" not in self.template:
            raise ValueError("template must contain {body}")
        signs_time = "{timestamp}" in self.template
        if signs_time and not self.timestamp_header:
            raise ValueError("template uses {timestamp} but no timestamp_header is set")
        if self.timestamp_header and not signs_time:
            raise ValueError("timestamp_header is set but the template does not sign {timestamp}")


def verify_hmac(
    scheme: HmacScheme, headers: Mapping[str, str], body: bytes, *, now: float | None = None
) -> None:
    """Check the scheme's signature header against the raw body with any of its secrets."""
    keys = _usable(scheme.secrets)
    value = _header(headers, scheme.header)
    if value is None or not value.strip():
        raise SignatureError(f"missing {scheme.header} header")
    if len(value) > MAX_HEADER_LENGTH:
        raise SignatureError(f"{scheme.header} header is too long")
    value = value.strip()
    if scheme.prefix:
        if value[: len(scheme.prefix)].lower() != scheme.prefix.lower():
            raise SignatureError(f"{scheme.header} header does not start with {scheme.prefix!r}")
        value = value[len(scheme.prefix) :]
    given = _decode(value, scheme.encoding)
    if given is None:
        raise SignatureError(f"{scheme.header} header is not a {scheme.encoding} signature")
    timestamp: str | None = None
    if scheme.timestamp_header:
        raw = _header(headers, scheme.timestamp_header)
        timestamp = raw.strip() if raw is not None else None
        if not timestamp:
            raise SignatureError(f"missing {scheme.timestamp_header} header")
        if not _TIMESTAMP.fullmatch(timestamp):
            raise SignatureError(f"{scheme.timestamp_header} header is not a number")
    message = _message(scheme.template, body, timestamp)
    if not _any_match((_hmac(key, message).digest() for key in keys), [given]):
        raise SignatureError("no signature matches")
    if timestamp is not None:
        _check_age(int(timestamp), scheme.tolerance, now)


def sign_hmac(scheme: HmacScheme, body: bytes, timestamp: int | None = None) -> dict[str, str]:
    """The headers a sender using `scheme` would add to `body`, signed with its first secret."""
    headers: dict[str, str] = {}
    stamp: str | None = None
    if scheme.timestamp_header:
        stamp = str(int(time.time()) if timestamp is None else timestamp)
        headers[scheme.timestamp_header] = stamp
    digest = _hmac(_key(scheme.secrets[0]), _message(scheme.template, body, stamp)).digest()
    encoded = digest.hex() if scheme.encoding == "hex" else base64.b64encode(digest).decode()
    headers[scheme.header] = scheme.prefix + encoded
    return headers


# ---------------------------------------------------------------------------------------------
# Shared
# ---------------------------------------------------------------------------------------------


def _key(secret: str) -> bytes:
    # Secrets are used as given (Stripe's whsec_... included), as UTF-8 bytes.
    return secret.encode("utf-8", "surrogatepass")


def _usable_or_none(secrets: Sequence[str]) -> list[bytes]:
    return [_key(s) for s in secrets if isinstance(s, str) and s.strip()]


def _usable(secrets: Sequence[str]) -> list[bytes]:
    keys = _usable_or_none(secrets)
    if not keys:
        raise SignatureError("no webhook secret is configured")
    return keys


def _hmac(key: bytes, message: bytes) -> hmac.HMAC:
    return hmac.new(key, message, hashlib.sha256)


def _any_match(expected: Iterable[bytes], given: Sequence[bytes]) -> bool:
    # Compare every pair, without stopping at the first match, so the time taken tells
    # nothing about which secret or which signature was close.
    found = False
    for mac in expected:
        for candidate in given:
            found |= hmac.compare_digest(mac, candidate)
    return found


def _check_age(timestamp: int, tolerance: float, now: float | None) -> None:
    if tolerance <= 0:
        return
    now = time.time() if now is None else now
    if abs(now - timestamp) > tolerance:
        raise SignatureError(f"timestamp outside the {tolerance:g} s tolerance")


def _header(headers: Mapping[str, str], name: str) -> str | None:
    value = headers.get(name)
    if value is not None:
        return value
    # Plain dicts are case-sensitive; HTTP header names are not.
    lowered = name.lower()
    for key, candidate in headers.items():
        if key.lower() == lowered:
            return candidate
    return None


def _decode(value: str, encoding: str) -> bytes | None:
    if not value.isascii():
        return None
    try:
        if encoding == "hex":
            return bytes.fromhex(value) or None
        return base64.b64decode(value, validate=True) or None
    except (ValueError, binascii.Error):
        return None


def _message(template: str, body: bytes, timestamp: str | None) -> bytes:
    # Split rather than str.format/replace: the body may itself contain "{timestamp}".
    parts: list[bytes] = []
    for piece in _TEMPLATE_FIELDS.split(template):
        if piece == "{body}":
            parts.append(body)
        elif piece == "{timestamp}":
            parts.append((timestamp or "").encode("ascii"))
        else:
            parts.append(piece.encode("utf-8"))
    return b"".join(parts)
