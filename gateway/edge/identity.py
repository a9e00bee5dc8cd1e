"""Who the visitor is: client IP, consent, bots, prefetch.

Pure functions over plain strings and mappings (no aiohttp), so the proxy's identity rules can
be tested without a socket. The `_fbp`/`_fbc` cookie rules live in `gateway.edge.cookies`.
"""

from __future__ import annotations

import functools
import ipaddress
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from multidict import CIMultiDict, CIMultiDictProxy

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
_Address = ipaddress.IPv4Address | ipaddress.IPv6Address

DEFAULT_TRUSTED: tuple[str, ...] = ("127.0.0.0/8", "::1/128")

# ---------------------------------------------------------------------------------------------
# Client IP
# ---------------------------------------------------------------------------------------------

# A port after an address: digits, or an RFC 7239 obfuscated port ("_abc").
_PORT_RE = re.compile(r":(?:[0-9]{1,5}|_[A-Za-z0-9._-]+)", re.ASCII)


def _valid_port(text: str) -> bool:
    """`:port` as found after an address; an impossible port means the entry is garbage."""
    if not _PORT_RE.fullmatch(text):
        return False
    return not text[1:].isdigit() or int(text[1:]) <= 65535


def parse_networks(cidrs: Sequence[str]) -> tuple[Network, ...]:
    """Parse CIDR strings (host bits and bare addresses allowed); ValueError names a bad entry."""
    networks: list[Network] = []
    for cidr in cidrs:
        text = cidr.strip() if isinstance(cidr, str) else ""
        try:
            if not text:
                raise ValueError(cidr)
            # strict=False: "10.0.0.1/8" clearly means 10.0.0.0/8; refusing it helps nobody.
            networks.append(ipaddress.ip_network(text, strict=False))
        except ValueError:
            raise ValueError(f"{cidr!r} is not a CIDR network") from None
    return tuple(networks)


def _unmap(addr: _Address) -> _Address:
    """::ffff:a.b.c.d is an IPv4 client on a dual-stack socket; Meta wants a.b.c.d (§3.2)."""
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    return addr


def _parse_address(text: str) -> _Address | None:
    """One hop: bare IPv4/IPv6, `a.b.c.d:port`, `[v6]` or `[v6]:port`; None when not an IP."""
    s = text.strip()
    if not s:
        return None
    if s.startswith("["):
        end = s.find("]")
        if end < 0:
            return None
        rest = s[end + 1 :]
        if rest and not _valid_port(rest):
            return None
        try:
            return _unmap(ipaddress.IPv6Address(s[1:end]))
        except ValueError:
            return None
    try:
        return _unmap(ipaddress.ip_address(s))
    except ValueError:
        pass
    # Only IPv4 can carry an unbracketed port; "v6:port" is ambiguous and rejected above.
    host, colon, port = s.partition(":")
    if colon and _valid_port(colon + port):
        try:
            return ipaddress.IPv4Address(host)
        except ValueError:
            return None
    return None


def _split_unquoted(text: str, sep: str) -> Iterator[str]:
    """Split on `sep` outside RFC 9110 quoted strings (a quoted IPv6 may contain anything)."""
    start = 0
    quoted = escaped = False
    for i, ch in enumerate(text):
        if escaped:
            escaped = False
        elif quoted and ch == "\\":
            escaped = True
        elif ch == '"':
            quoted = not quoted
        elif ch == sep and not quoted:
            yield text[start:i]
            start = i + 1
    yield text[start:]


def _unquote(value: str) -> str:
    value = value.strip()
    if len(value) >= 2 and value[0] == value[-1] == '"':
        return re.sub(r"\\(.)", r"\1", value[1:-1])
    return value


def _forwarded_for(lines: Sequence[str]) -> list[str]:
    """The `for=` value of every RFC 7239 element, oldest first; '' for an element without one."""
    hops: list[str] = []
    for line in lines:
        for element in _split_unquoted(line, ","):
            if not element.strip():
                continue
            value = ""
            for pair in _split_unquoted(element, ";"):
                name, eq, raw = pair.partition("=")
                if eq and name.strip().lower() == "for":
                    value = _unquote(raw)
            hops.append(value)
    return hops


def _trusted(addr: _Address, trusted: Sequence[Network]) -> bool:
    # Membership across IP versions is simply False, never an error.
    return any(addr in net for net in trusted)


def trusted_peer(peer: str | None, trusted: Sequence[Network]) -> bool:
    """True when the socket peer `peer` is in `trusted` (the one answer for every caller).

    An IPv4-mapped IPv6 peer (`::ffff:127.0.0.1`, what a dual-stack socket reports for an
    IPv4 client) is its IPv4 address; an IPv6 zone (`fe80::1%eth0`) is ignored.
    """
    if not peer:
        return False
    try:
        addr = ipaddress.ip_address(peer.split("%", 1)[0])
    except ValueError:
        return False
    return _trusted(_unmap(addr), trusted)


@functools.lru_cache(maxsize=16)
def networks(cidrs: tuple[str, ...]) -> tuple[Network, ...]:
    """`parse_networks` kept per list: settings change on reload only, never per request."""
    return parse_networks(cidrs)


def peer_address(peer: str, trusted: Sequence[Network]) -> tuple[str | None, bool]:
    """The socket peer as `client_ip` reads it, and whether it is a trusted proxy (then
    `client_ip` looks at the forwarded headers; otherwise the answer is this address)."""
    addr = _parse_address(peer)
    if addr is None:
        return None, False
    return str(addr), _trusted(addr, trusted)


def client_ip(
    peer: str | None,
    x_forwarded_for: Sequence[str],
    forwarded: Sequence[str],
    trusted: Sequence[Network],
) -> str | None:
    """The visitor's IP: the peer, or behind trusted proxies the right-most untrusted hop."""
    if peer is None:
        return None
    last = _parse_address(peer)
    if last is None:
        return None
    if not _trusted(last, trusted):
        return str(last)
    xff_lines = [line for line in x_forwarded_for if line.strip()]
    if xff_lines:
        hops = [hop for line in xff_lines for hop in line.split(",")]
    else:
        hops = _forwarded_for(forwarded)
    # Right to left: everything left of the first untrusted hop may be forged by the client.
    for hop in reversed(hops):
        addr = _parse_address(hop)
        if addr is None:
            # "unknown", obfuscated or garbage: we cannot tell who sent what further left, so
            # answer with the last hop we could read (a trusted one) rather than guess.
            break
        last = addr
        if not _trusted(addr, trusted):
            break
    return str(last)


# ---------------------------------------------------------------------------------------------
# Consent
# ---------------------------------------------------------------------------------------------

_GPC_MODES = ("opt_out", "ldu", "ignore")
# An opt-out cookie with one of these values is an explicit "not opted out" (or a cleared cookie).
_NOT_OPTED_OUT = frozenset({"", "0", "false", "no"})


@dataclass(frozen=True, slots=True)
class ConsentConfig:
    """How consent is read: a consent cookie (exact values), an opt-out cookie, Sec-GPC."""

    cookie: str | None = None
    # Exact, case-sensitive match on the whole cookie value; with a cookie but no accepted
    # values nobody ever consents (fail closed rather than track on a misconfiguration).
    accepted: tuple[str, ...] = ()
    opt_out_cookie: str | None = None
    gpc: str = "opt_out"

    def __post_init__(self) -> None:
        if self.gpc not in _GPC_MODES:
            raise ValueError(f"gpc must be one of {_GPC_MODES}, got {self.gpc!r}")


@dataclass(frozen=True, slots=True)
class Consent:
    """`track` False: no cookies, no events; else the event's opt_out and LDU flags."""

    track: bool
    opt_out: bool
    ldu: bool

    def event_fields(self) -> dict[str, Any]:
        """What these choices add to a server event (opt_out, Limited Data Use)."""
        fields: dict[str, Any] = {}
        if self.opt_out:
            fields["opt_out"] = True
        if self.ldu:
            # Country and state 0: Meta geolocates the visitor to apply the right law.
            fields.update(
                data_processing_options=["LDU"],
                data_processing_options_country=0,
                data_processing_options_state=0,
            )
        return fields


_CASELESS = (CIMultiDict, CIMultiDictProxy)


def _header(headers: Mapping[str, str], name: str) -> str | None:
    """Case-insensitive lookup that also works on a plain dict."""
    value = headers.get(name)
    if value is not None or isinstance(headers, _CASELESS):
        # A request's headers look names up caselessly already: an absent one (nearly
        # every page lacks the four prefetch headers) needs no walk over all of them.
        return value
    lowered = name.lower()
    for key, val in headers.items():
        if key.lower() == lowered:
            return val
    return None


def consent(
    cookies: Mapping[str, str], headers: Mapping[str, str], config: ConsentConfig
) -> Consent:
    """Decide whether to track this visitor and with which restrictions."""
    if config.cookie is not None and cookies.get(config.cookie) not in config.accepted:
        return Consent(track=False, opt_out=False, ldu=False)
    opt_out = ldu = False
    if config.opt_out_cookie is not None:
        flag = cookies.get(config.opt_out_cookie)
        opt_out = flag is not None and flag.strip().lower() not in _NOT_OPTED_OUT
    if (_header(headers, "Sec-GPC") or "").strip() == "1":
        if config.gpc == "opt_out":
            opt_out = True
        elif config.gpc == "ldu":
            ldu = True
    return Consent(track=True, opt_out=opt_out, ldu=ldu)


# ---------------------------------------------------------------------------------------------
# Bots and prefetch
# ---------------------------------------------------------------------------------------------

# Case-insensitive regular expressions searched anywhere in the User-Agent. Not included, on
# purpose: HeadlessChrome (our browser tests use it), okhttp (Android apps' own HTTP stack, which
# some app shells use to load pages they then show to a person), in-app browsers (FBAN/FBAV,
# Instagram, Pinterest/...: real people), "yandex" (YaBrowser is a browser; YandexBot matches bot).
DEFAULT_BOT_PATTERNS: tuple[str, ...] = (
    r"(?<!cu)bot\b",  # Googlebot, bingbot, AdsBot-Google, Twitterbot ... but not the CUBOT phone
    r"crawl",
    r"spider",
    r"slurp",
    r"facebookexternalhit",
    r"facebookcatalog",
    r"meta-external",
    r"bingpreview",
    r"google-inspectiontool",
    r"googleother",
    r"mediapartners-google",
    r"apis-google",
    r"feedfetcher",
    r"google-read-aloud",
    r"chatgpt-user",
    r"claude-web",
    r"anthropic-ai",
    r"ia_archiver",
    r"lighthouse",
    r"pingdom",
    r"uptimerobot",
    r"statuscake",
    r"site24x7",
    r"gtmetrix",
    r"datadogsynthetics",
    r"newrelicpinger",
    r"check_http",
    r"nagios",
    r"zabbix",
    r"kube-probe",
    r"elb-healthchecker",
    r"googlehc",
    r"healthcheck",
    r"preview",  # Skype/Bing/Slack-style link previews ("Skypeuripreview", "BingPreview")
    r"embedly",
    r"iframely",
    r"^whatsapp/",
    r"curl/",
    r"wget/",
    r"python-requests",
    r"python-urllib",
    r"python-httpx",
    r"aiohttp/",
    r"go-http-client",
    r"libwww-perl",
    r"^java/",
    r"apache-httpclient",
    r"node-fetch",
    r"^axios/",
    r"httpie/",
    r"postmanruntime",
    r"insomnia/",
    r"scrapy",
    r"phantomjs",
)


def compile_bots(patterns: Sequence[str]) -> re.Pattern[str]:
    """One case-insensitive regex from bot patterns; ValueError names an invalid or empty one."""
    parts: list[str] = []
    for pattern in patterns:
        if not pattern:
            raise ValueError("empty bot pattern would match every user agent")
        try:
            re.compile(pattern)
        except re.error as exc:
            raise ValueError(f"invalid bot pattern {pattern!r}: {exc}") from None
        parts.append(f"(?:{pattern})")
    return re.compile("|".join(parts) if parts else r"(?!)", re.IGNORECASE)


def is_bot(user_agent: str | None, bots: re.Pattern[str]) -> bool:
    """True for a crawler, monitor or HTTP library; a missing or blank User-Agent counts."""
    if user_agent is None or not user_agent.strip():
        return True
    # Callers that ask per request remember the answer per UA (`VisitorRules.is_bot`): a
    # cache keyed by the pattern too would hash the whole compiled pattern on every call.
    return bots.search(user_agent) is not None


def _tokens(value: str | None) -> set[str]:
    if not value:
        return set()
    return {t.strip().lower() for t in re.split(r"[,;]", value) if t.strip()}


def is_prefetch(headers: Mapping[str, str]) -> bool:
    """True for speculative loads (prefetch, prerender, previews) that are not page views."""
    # Chrome: "Sec-Purpose: prefetch" / "prefetch;prerender" (and older "Purpose: prefetch");
    # Firefox: "X-Moz: prefetch"; Safari top-sites thumbnails: "X-Purpose: preview".
    if _tokens(_header(headers, "Sec-Purpose")) & {"prefetch", "prerender"}:
        return True
    if _tokens(_header(headers, "Purpose")) & {"prefetch", "prerender"}:
        return True
    if "prefetch" in _tokens(_header(headers, "X-Moz")):
        return True
    return bool(_tokens(_header(headers, "X-Purpose")) & {"preview", "prefetch"})
