"""First-party `_fbp`/`_fbc` cookies: cookie domain, subdomain index, format, minting, Set-Cookie.

Pure functions over plain strings and mappings (no aiohttp), so the proxy's cookie rules can be
tested without a socket. They follow capi-reference §5 and Meta's `capi-param-builder-python`
1.3.2, whose behaviour is noted where we match or depart from it.
"""

from __future__ import annotations

import email.utils
import ipaddress
import random
import re
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import lru_cache
from urllib.parse import parse_qsl, urlsplit

from publicsuffixlist import PublicSuffixList

from gateway.edge.randompool import random_bytes

# ---------------------------------------------------------------------------------------------
# Cookie domain
# ---------------------------------------------------------------------------------------------

# The bundled list, parsed once (~30 ms); never downloaded at run time. Includes the private
# section (github.io, herokuapp.com, ...) because browsers refuse cookies on those too.
_PSL = PublicSuffixList()
_HOSTNAME_RE = re.compile(r"[a-z0-9_-]+(?:\.[a-z0-9_-]+)*", re.ASCII)


def _host_name(host: str) -> str:
    """Lowercase host without port, brackets or trailing dot; IDN converted to punycode."""
    s = host.strip().lower()
    if s.startswith("["):
        end = s.find("]")
        return s[1:end] if end > 0 else s
    if s.count(":") == 1:
        s = s.partition(":")[0]
    s = s.rstrip(".")
    if not s.isascii():
        try:
            s = s.encode("idna").decode("ascii")
        except UnicodeError:
            return ""
    return s


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def registrable_domain(host: str) -> str | None:
    """The eTLD+1 of a Host value (`www.shop.example.co.uk` -> `example.co.uk`), else None."""
    name = _host_name(host)
    if not name or ":" in name or _is_ip(name) or "." not in name:
        return None  # IP literals, localhost and other single labels get host-only cookies
    if not _HOSTNAME_RE.fullmatch(name):
        return None  # never let a forged Host header reach a Set-Cookie Domain attribute
    result = _PSL.privatesuffix(name)
    return result if isinstance(result, str) else None


def cookie_domain(host: str, override: str | None) -> str | None:
    """The configured domain when the host is it or under it, else the registrable domain."""
    if override:
        wanted = _host_name(override.strip().lstrip("."))
        name = _host_name(host)
        if (
            wanted
            and _HOSTNAME_RE.fullmatch(wanted)
            and (name == wanted or name.endswith("." + wanted))
        ):
            return wanted
    return registrable_domain(host)


def subdomain_index(domain: str | None) -> int:
    """Labels of the cookie domain minus one; 0 for host-only (None), IPs and single labels."""
    # Meta's ParamBuilder: IP hosts -> 0; otherwise len(etld_plus_one.split(".")) - 1, so
    # `localhost` -> 0 and `example.com` -> 1. Our host-only cookies (None) arise exactly for IPs,
    # single-label hosts and public suffixes, so 0 is what Meta would write for the first two.
    if not domain:
        return 0
    name = _host_name(domain.lstrip("."))
    if not name or _is_ip(name):
        return 0
    return name.count(".")


# ---------------------------------------------------------------------------------------------
# _fbp / _fbc
# ---------------------------------------------------------------------------------------------

# Optional 5th segment written by Meta's param builder: 8-char base64url (e.g. "AQICAQMC") or a
# legacy 2-char language token. Meta's builder only accepts AQ/Ag/Aw/BA/BQ/Bg as 2-char tokens;
# we accept any 2-char base64url because discarding a real cookie breaks fbp deduplication.
_APPENDIX = r"(?:\.(?:[A-Za-z0-9_-]{8}|[A-Za-z0-9_-]{2}))?"
# Index up to two digits so our own values stay valid for any real cookie domain.
_PREFIX = r"fb\.(?:[0-9]|[1-9][0-9])\.[0-9]{13}\."
FBP_RE = re.compile(_PREFIX + r"[0-9]{1,20}" + _APPENDIX, re.ASCII)
FBC_RE = re.compile(_PREFIX + r"[A-Za-z0-9_-]{1,1000}" + _APPENDIX, re.ASCII)
_FBCLID_RE = re.compile(r"[A-Za-z0-9_-]{1,1000}", re.ASCII)
# Meta's builder: str(random.randint(0, 2147483647)) -- decimal, unpadded, 1 to 10 digits.
_FBP_RANDOM_BOUND = 2147483648


def valid_fbp(value: str | None) -> bool:
    """A well-formed `_fbp` value (4 or 5 segments, numeric payload)."""
    return value is not None and FBP_RE.fullmatch(value) is not None


def valid_fbc(value: str | None) -> bool:
    """A well-formed `_fbc` value (4 or 5 segments, fbclid payload)."""
    return value is not None and FBC_RE.fullmatch(value) is not None


def _check_ms(now_ms: int, index: int) -> None:
    # A seconds timestamp here would make Meta read 1970 (§5: creation time is milliseconds).
    if not 10**12 <= now_ms < 10**13:
        raise ValueError(f"now_ms must be Unix milliseconds (13 digits), got {now_ms}")
    if not 0 <= index <= 99:
        raise ValueError(f"subdomain index out of range: {index}")


def new_fbp(now_ms: int, index: int, rng: random.Random | None = None) -> str:
    """A fresh `fb.{index}.{now_ms}.{random}`, random in 0..2**31-1 like Meta's param builder."""
    _check_ms(now_ms, index)
    if rng is not None:
        number = rng.randrange(_FBP_RANDOM_BOUND)
    else:  # the bound is 2**31: 31 of 32 random bits, uniform
        number = int.from_bytes(random_bytes.take(4), "big") & (_FBP_RANDOM_BOUND - 1)
    return f"fb.{index}.{now_ms}.{number}"


def _may_name_fbclid(text: str) -> bool:
    # Most page URLs and Referers name no fbclid: no query parse (nor URL split) for them.
    # A name spelled with escapes ("fbcl%69d") still decodes to it, so any "%" parses.
    return "fbclid" in text or "%" in text


# A Cookie header as browsers send it: `name=value` pairs joined by "; ", names of token
# characters, values of cookie-octets (no quote, comma, backslash or space). On such a header
# aiohttp's parser (`request.cookies`) reads exactly these pairs; anything else goes to it.
_PLAIN_COOKIES = re.compile(
    r"[ \t]*+(?:[!#$%&'*+.^_`|~0-9A-Za-z-]++=[\x21\x23-\x2b\x2d-\x3a\x3c-\x5b\x5d-\x7e]*+"
    r"[ \t]*+(?:;[ \t]*+|$))*+",
    re.ASCII,
)


def read_cookies(header: str, names: Iterable[str]) -> dict[str, str] | None:
    """The values of `names` in a plain Cookie header, as `request.cookies` gives them (the
    last of a repeated name); None when the header is not plain: parse it whole then.

    A page needs two or three cookies of the dozen a site sets; aiohttp's parser builds a
    Morsel for each (~20 µs for eight).
    """
    if not header:
        return {}
    if not _PLAIN_COOKIES.fullmatch(header):
        return None
    found: dict[str, str] = {}
    wanted = [name for name in names if name in header]
    if wanted:
        for pair in header.split(";"):
            key, _, value = pair.partition("=")
            key = key.strip(" \t")
            if key in wanted:
                found[key] = value.rstrip(" \t")
    return found


def _query_fbclid(query: str) -> str | None:
    if not _may_name_fbclid(query):
        return None
    for name, value in parse_qsl(query.lstrip("?"), keep_blank_values=True):
        if name == "fbclid":
            return value or None  # first occurrence, as Meta's builder (parse_qs()[0])
    return None


def fbclid_from(query: Mapping[str, str] | str, referer: str | None) -> str | None:
    """The fbclid of the page URL's query, else of the Referer's; None when absent or malformed."""
    value = _query_fbclid(query) if isinstance(query, str) else (query.get("fbclid") or None)
    if value is None and referer and _may_name_fbclid(referer):
        try:
            value = _query_fbclid(urlsplit(referer).query)
        except ValueError:  # e.g. an unbalanced "[" in the Referer's host
            value = None
    # A value outside base64url would make an fbc we ourselves reject on the next visit.
    return value if value is not None and _FBCLID_RE.fullmatch(value) else None


@dataclass(frozen=True, slots=True)
class CookieDecision:
    """The `_fbp`/`_fbc` values for this event and whether to (re)issue each cookie."""

    fbp: str | None
    fbc: str | None
    set_fbp: bool
    set_fbc: bool


def decide_cookies(
    existing_fbp: str | None,
    existing_fbc: str | None,
    fbclid: str | None,
    *,
    now_ms: int,
    index: int,
    refresh: bool = True,
) -> CookieDecision:
    """Keep valid cookies (refreshing expiry), mint missing ones, renew fbc on a new click."""
    _check_ms(now_ms, index)
    if valid_fbp(existing_fbp):
        fbp, set_fbp = existing_fbp, refresh
    else:
        fbp, set_fbp = new_fbp(now_ms, index), True

    fbc: str | None
    fbc_ok = valid_fbc(existing_fbc)
    click = fbclid if fbclid and _FBCLID_RE.fullmatch(fbclid) else None
    if click is not None and (not fbc_ok or str(existing_fbc).split(".")[3] != click):
        # §5: only a new click (or no usable cookie) rewrites _fbc, with creation time = now.
        fbc, set_fbc = f"fb.{index}.{now_ms}.{click}", True
    elif fbc_ok:
        fbc, set_fbc = existing_fbc, refresh
    else:
        fbc, set_fbc = None, False
    return CookieDecision(fbp=fbp, fbc=fbc, set_fbp=set_fbp, set_fbc=set_fbc)


_COOKIE_NAME_RE = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+", re.ASCII)
_COOKIE_VALUE_RE = re.compile(r"[\x21\x23-\x2b\x2d-\x3a\x3c-\x5b\x5d-\x7e]*", re.ASCII)


@lru_cache(maxsize=8)
def _http_date(when: int) -> str:
    # Every page of the same second (and lifetime) gets the same text: formatted once.
    return email.utils.formatdate(when, usegmt=True)


def set_cookie_header(
    name: str,
    value: str,
    *,
    domain: str | None,
    max_age: int,
    secure: bool,
    now: float | None = None,
) -> str:
    """A Set-Cookie value readable by the browser pixel (no HttpOnly); `now` is for tests."""
    # Validate everything interpolated: a stray ";" or CRLF would inject attributes or headers.
    if not _COOKIE_NAME_RE.fullmatch(name):
        raise ValueError(f"invalid cookie name {name!r}")
    if not _COOKIE_VALUE_RE.fullmatch(value):
        raise ValueError(f"invalid cookie value {value!r}")
    if domain is not None and not _HOSTNAME_RE.fullmatch(domain):
        raise ValueError(f"invalid cookie domain {domain!r}")
    if max_age < 0:
        raise ValueError("max_age must be >= 0")
    issued = time.time() if now is None else now
    # Expires too, for the few clients that ignore Max-Age.
    expires = _http_date(int(issued + max_age))
    parts = [f"{name}={value}", f"Max-Age={max_age}", f"Expires={expires}"]
    if domain is not None:
        parts.append(f"Domain={domain}")
    parts += ["Path=/", "SameSite=Lax"]
    if secure:
        parts.append("Secure")
    return "; ".join(parts)


@lru_cache(maxsize=256)
def _domain_and_index(host: str, override: str | None) -> tuple[str | None, int]:
    # A site answers under a few hosts: the public-suffix lookup runs once per host.
    domain = cookie_domain(host, override)
    return domain, subdomain_index(domain)


def for_page(
    host: str,
    sent_fbp: str | None,
    sent_fbc: str | None,
    fbclid: str | None,
    *,
    secure: bool,
    override: str | None,
    max_age: int,
    now_ms: int,
) -> tuple[str | None, str | None, list[str]]:
    """The `_fbp`/`_fbc` a page's response settles on, and the Set-Cookie lines it sends
    for those it issues or refreshes."""
    domain, index = _domain_and_index(host, override)
    choice = decide_cookies(sent_fbp, sent_fbc, fbclid, now_ms=now_ms, index=index)
    lines = [
        set_cookie_header(name, value, domain=domain, max_age=max_age, secure=secure)
        for name, value, issue in (
            ("_fbp", choice.fbp, choice.set_fbp),
            ("_fbc", choice.fbc, choice.set_fbc),
        )
        if issue and value
    ]
    return choice.fbp, choice.fbc, lines
