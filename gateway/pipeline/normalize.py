"""Normalize and hash Conversions API customer information (capi-reference.md §3).

Pure functions, no I/O. Here a whole user_data: aliases mapped to CAPI keys, each hashed
field's values normalized and hashed (one field at a time in `gateway.pipeline.fieldnorm`),
clear fields cleaned, and the identifier sets Meta refuses named.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, Final

from gateway.pipeline.fieldnorm import (
    HASHED_FIELDS,
    NormalizationError,
    event_country,
    field_strings,
    hash_value,
    normalize_value,
)
from gateway.pipeline.phone import show_value as _show

__all__ = [
    "ALIASES",
    "CLEAR_FIELDS",
    "HASHED_FIELDS",
    "WEAK_IDENTIFIER_SETS",
    "NormalizationError",
    "hash_value",
    "normalize_user_data",
    "normalize_value",
    "weak_identifiers_problem",
]


CLEAR_FIELDS: Final[frozenset[str]] = frozenset(
    {
        "client_ip_address",
        "client_user_agent",
        "fbc",
        "fbp",
        "subscription_id",
        "fb_login_id",
        "lead_id",
        "anon_id",
        "madid",
        "page_id",
        "page_scoped_user_id",
        "ctwa_clid",
        "ig_account_id",
        "ig_sid",
    }
)
# Read-only so no caller can change how every later event is mapped.
ALIASES: Final[Mapping[str, str]] = MappingProxyType(
    {
        "email": "em",
        "phone": "ph",
        "first_name": "fn",
        "last_name": "ln",
        "gender": "ge",
        "date_of_birth": "db",
        "city": "ct",
        "state": "st",
        "zip": "zp",
        "country": "country",
        "external_id": "external_id",
        "ip": "client_ip_address",
        "user_agent": "client_user_agent",
    }
)
WEAK_IDENTIFIER_SETS: Final[tuple[frozenset[str], ...]] = (
    frozenset({"ct", "country", "st", "zp", "ge", "client_user_agent"}),
    frozenset({"db", "client_user_agent"}),
    frozenset({"fn", "ge"}),
    frozenset({"ln", "ge"}),
)

# Order used when naming fields in messages, so they read the same every time.
_FIELD_ORDER: Final[tuple[str, ...]] = (
    "em", "ph", "fn", "ln", "db", "ge", "ct", "st", "zp", "country", "external_id",
    "client_ip_address", "client_user_agent", "fbc", "fbp", "subscription_id",
    "fb_login_id", "lead_id", "anon_id", "madid", "page_id", "page_scoped_user_id",
    "ctwa_clid", "ig_account_id", "ig_sid",
)  # fmt: skip
_STRONG_HINT: Final = (
    "add em, ph, external_id, client_ip_address with client_user_agent, fbp or fbc"
)


def _ip(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise NormalizationError(
            "client_ip_address", f"client_ip_address must be a string, not {type(value).__name__}"
        )
    text = value.strip()
    if not text:
        return None
    try:
        # The common case, a dotted quad, checked in C: inet_pton takes exactly what
        # `ipaddress` takes as IPv4 (four decimal octets, none past 255 or with a leading
        # zero), and such text is already the form `str(address)` gives: ~2 µs per event less
        # (parse and str() were 2.2 % of a replica at two, py-spy).
        socket.inet_pton(socket.AF_INET, text)
    except (OSError, ValueError):
        pass
    else:
        return text
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        raise NormalizationError(
            "client_ip_address", f"{_show(text)} is not an IPv4 or IPv6 address"
        ) from None
    # A dual-stack socket reports IPv4 clients as ::ffff:a.b.c.d; the pixel sees a.b.c.d.
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return str(address.ipv4_mapped)
    return str(address)


def normalize_user_data(
    user_data: Mapping[str, Any], *, default_country: str | None = None
) -> dict[str, Any]:
    """Map aliases to CAPI keys, hash the hashed fields and clean the clear ones."""
    canonical: dict[str, tuple[str, Any]] = {}
    for key, value in user_data.items():
        capi = ALIASES.get(key, key)
        if capi not in HASHED_FIELDS and capi not in CLEAR_FIELDS:
            raise NormalizationError(
                str(key),
                f"unknown user_data field {key!r}: use a Conversions API key such as 'em' "
                "or one of the aliases " + ", ".join(sorted(ALIASES)),
            )
        if capi in canonical:
            raise NormalizationError(
                capi, f"both {canonical[capi][0]!r} and {key!r} given: send only one of them"
            )
        canonical[capi] = (key, value)

    country = event_country(canonical.get("country", ("", None))[1], default_country)
    out: dict[str, Any] = {}
    for capi, (_, value) in canonical.items():
        if capi in HASHED_FIELDS:
            items, is_list = field_strings(capi, value)
            hashes: list[str] = []
            for item in items:
                hashed = hash_value(capi, item, country=country)
                if hashed is not None and hashed not in hashes:
                    hashes.append(hashed)
            if hashes:
                out[capi] = hashes if is_list else hashes[0]
        elif capi == "client_ip_address":
            if (address := _ip(value)) is not None:
                out[capi] = address
        elif isinstance(value, str):
            if value.strip():
                out[capi] = value.strip()
        elif value is not None:
            out[capi] = value
    return out


def _has_value(value: Any) -> bool:
    if isinstance(value, str):
        return bool(value.strip())
    if isinstance(value, list | tuple):
        return any(_has_value(item) for item in value)
    return value is not None


def _ordered(fields: frozenset[str] | set[str]) -> str:
    rank = {name: i for i, name in enumerate(_FIELD_ORDER)}
    return ", ".join(sorted(fields, key=lambda name: (rank.get(name, len(rank)), name)))


def weak_identifiers_problem(user_data: Mapping[str, Any]) -> str | None:
    """None when Meta would accept user_data's identifiers, else a sentence saying what to add."""
    present = {ALIASES.get(key, key) for key, value in user_data.items() if _has_value(value)}
    if not present:
        return f"user_data carries no customer information: {_STRONG_HINT}"
    for weak in WEAK_IDENTIFIER_SETS:
        if present <= weak:
            return (
                f"user_data carries only {_ordered(present)}: Meta rejects events whose only "
                f"identifiers are {_ordered(weak)} or a subset of them; {_STRONG_HINT}"
            )
    return None
