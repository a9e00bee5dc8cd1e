"""Removing personal data from URLs before they leave as event_source_url / referrer_url.

Meta flags events whose URLs carry emails or phone numbers, and query strings are where sites
leak them (password-reset links, newsletter landings, OAuth callbacks). Only the query string is
filtered; kept parameters are copied byte for byte so attribution and dedup see the same URL.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from urllib.parse import unquote_plus

# Matched against the parameter name's words: the URL-decoded name is split on `_ - . [ ] space`
# and camelCase boundaries and lowercased; a name is sensitive when one of these (split the same
# way) appears in it as whole consecutive words. So `user_email`, `userEmail`, `reset-token` and
# `user[email]` match, while `keyword` or `passenger` do not. Over-removal (e.g. `promo_code`,
# `country_code` through "code") only costs URL detail; under-removal leaks personal data.
DEFAULT_SENSITIVE_PARAMS: tuple[str, ...] = (
    "email",
    "e-mail",
    "mail",
    "phone",
    "tel",
    "telephone",
    "mobile",
    "msisdn",
    "token",
    "access_token",
    "id_token",
    "refresh_token",
    "jwt",
    "password",
    "passwd",
    "pass",
    "pwd",
    "secret",
    "client_secret",
    "key",
    "api_key",
    "apikey",
    "auth",
    "authorization",
    "code",
    "otp",
    "pin",
    "session",
    "sessionid",
    "sid",
    "ssn",
    "signature",
    "sig",
    "firstname",
    "lastname",
    "fullname",
    "first_name",
    "last_name",
    "full_name",
    "username",
    "user",
    "login",
    "address",
    "street",
    "zip",
    "zipcode",
    "postcode",
    "postal_code",
    "dob",
    "birthday",
    "birthdate",
    "iban",
    "card",
    "cvv",
    "cvc",
)

# Click ids and campaign tags are what attribution needs: never removed by name or by the phone
# heuristic (utm_campaign=20240115 has 8 digits). An email address is removed even here.
_ALWAYS_KEEP = frozenset({"fbclid", "gclid", "gbraid", "wbraid", "msclkid", "ttclid", "dclid"})
_CAMEL = re.compile(r"(?<=[a-z0-9])(?=[A-Z])")
_WORD_SPLIT = re.compile(r"[\s_.\[\]-]+")
_EMAIL = re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}", re.ASCII)
_PHONE = re.compile(r"\+?[0-9 ().-]+", re.ASCII)


def _words(name: str) -> tuple[str, ...]:
    return tuple(w for w in _WORD_SPLIT.split(_CAMEL.sub("_", name).lower()) if w)


def _compile(sensitive: Sequence[str]) -> tuple[tuple[str, ...], ...]:
    return tuple(words for words in (_words(s) for s in sensitive) if words)


_DEFAULT_WORDS = _compile(DEFAULT_SENSITIVE_PARAMS)


def _name_is_sensitive(name: str, patterns: tuple[tuple[str, ...], ...]) -> bool:
    words = _words(name)
    for pattern in patterns:
        size = len(pattern)
        if any(words[i : i + size] == pattern for i in range(len(words) - size + 1)):
            return True
    return False


def _looks_like_phone(value: str) -> bool:
    # 7 to 15 digits (E.164 has at most 15), only phone punctuation around them.
    if not _PHONE.fullmatch(value):
        return False
    digits = sum(ch.isdigit() for ch in value)
    return 7 <= digits <= 15


def _strip_userinfo(base: str) -> str:
    """Drop `user:password@` from the authority: credentials are never page data."""
    scheme, sep, rest = base.partition("://")
    if not sep:
        return base
    end = min((i for i in (rest.find("/"), rest.find("\\")) if i >= 0), default=len(rest))
    authority = rest[:end]
    if "@" not in authority:
        return base
    return f"{scheme}://{authority.rpartition('@')[2]}{rest[end:]}"


def scrub_url(url: str, sensitive: Sequence[str] = DEFAULT_SENSITIVE_PARAMS) -> str:
    """The URL without fragment, userinfo and query parameters that are or look personal."""
    patterns = _DEFAULT_WORDS if sensitive is DEFAULT_SENSITIVE_PARAMS else _compile(sensitive)
    base, _, query = url.partition("#")[0].partition("?")
    base = _strip_userinfo(base)
    kept: list[str] = []
    for part in query.split("&"):
        if not part:
            continue
        raw_name, _, raw_value = part.partition("=")
        name = unquote_plus(raw_name, errors="replace").strip()
        value = unquote_plus(raw_value, errors="replace").strip()
        # Twice decoded too: a double-encoded "%2540" still hides an email address.
        if _EMAIL.search(value) or _EMAIL.search(unquote_plus(value, errors="replace")):
            continue
        lowered = name.lower()
        if lowered in _ALWAYS_KEEP or lowered.startswith("utm_"):
            kept.append(part)
            continue
        if _name_is_sensitive(name, patterns) or _looks_like_phone(value):
            continue
        kept.append(part)
    return f"{base}?{'&'.join(kept)}" if kept else base
