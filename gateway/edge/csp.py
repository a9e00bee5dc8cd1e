"""Takes a page's Content-Security-Policy headers, gives whether our same-origin script may run.

Follows CSP Level 3 for one external, same-origin `<script src>` element. Each policy is checked
with `script-src-elem`, else `script-src`, else `default-src`; every policy must allow the
script (they are enforced together). Report-Only headers are not ours to satisfy, and policies
set by `<meta http-equiv>` inside the page are not seen here.

A policy allows the script through `*`, `'self'`, a matching host-source or scheme-source, or a
nonce. With `'strict-dynamic'` only a nonce counts. Hashes never allow it: an external script
would need a matching `integrity` attribute. A policy carrying `sandbox` without `allow-scripts`
runs no script at all. When nonces are involved one value must satisfy every policy that needs
one; the nonce is also returned when a policy allows the script anyway, as the tag may carry it
at no cost. Nonces that are not valid base64 are ignored, since they go into an HTML attribute.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from urllib.parse import unquote, urlsplit

__all__ = ["CspDecision", "decide"]

_DIRECTIVES = ("script-src-elem", "script-src", "default-src")
_NONCE = re.compile(r"'(?i:nonce)-([A-Za-z0-9+/_-]+={0,2})'")
_HOST_SOURCE = re.compile(
    r"(?:(?P<scheme>[a-z][a-z0-9+.-]*)://)?"
    r"(?P<host>\*|(?:\*\.)?[a-z0-9-]+(?:\.[a-z0-9-]+)*\.?)"
    r"(?::(?P<port>\*|[0-9]+))?"
    r"(?P<path>/[^?#]*)?",
    re.IGNORECASE,
)
_SCHEME_SOURCE = re.compile(r"[a-z][a-z0-9+.-]*:", re.IGNORECASE)
_DEFAULT_PORT = {"http": 80, "https": 443, "ws": 80, "wss": 443}


@dataclass(frozen=True, slots=True)
class CspDecision:
    allowed: bool  # can a same-origin external script at `src` run?
    nonce: str | None  # nonce to put on the tag (when a policy uses nonces)
    reason: str  # short text for logs/metrics when not allowed, "" otherwise


_NO_POLICY = CspDecision(True, None, "")


@dataclass(frozen=True, slots=True)
class _Origin:
    scheme: str
    host: str
    port: int


def decide(policies: Sequence[str], *, script_path: str, origin: str) -> CspDecision:
    """policies: the values of every Content-Security-Policy response header (NOT -Report-Only;
    each header may hold several comma-separated policies). All must allow the script."""
    # Raises ValueError for an origin no parser takes (a made-up Host): never tagged.
    here = _origin_of(origin)
    if not policies:
        return _NO_POLICY  # most pages: no policy to parse
    path = unquote(urlsplit(script_path).path or "/")
    needs: list[list[str]] = []  # per policy that only a nonce satisfies: its nonces
    offered: list[str] = []  # every valid nonce seen, first first
    for header in policies:
        for policy in header.split(","):
            directives = _parse(policy)
            sandbox = directives.get("sandbox")
            if sandbox is not None and "allow-scripts" not in (t.lower() for t in sandbox):
                return CspDecision(False, None, "sandbox without allow-scripts")
            name = next((d for d in _DIRECTIVES if d in directives), None)
            if name is None:
                continue
            sources = directives[name]
            nonces = [m.group(1) for t in sources if (m := _NONCE.fullmatch(t))]
            offered.extend(nonces)
            if _allows_without_nonce(sources, here, path):
                continue
            if not nonces:
                return CspDecision(False, None, _why(name, sources))
            needs.append(nonces)
    if not needs:
        return CspDecision(True, offered[0] if offered else None, "")
    common = [n for n in needs[0] if all(n in other for other in needs[1:])]
    if not common:
        return CspDecision(False, None, "policies require different nonces")
    return CspDecision(True, common[0], "")


@lru_cache(maxsize=256)
def _origin_of(origin: str) -> _Origin:
    # A site answers under a few origins: each is parsed once (a ValueError is not kept).
    parts = urlsplit(origin)
    scheme = parts.scheme.lower()
    return _Origin(
        scheme, (parts.hostname or "").lower(), parts.port or _DEFAULT_PORT.get(scheme, 0)
    )


def _parse(policy: str) -> dict[str, list[str]]:
    """Directive name (lowercase) -> source tokens; the first of duplicate directives wins."""
    directives: dict[str, list[str]] = {}
    for item in policy.split(";"):
        tokens = item.split()
        if tokens:
            directives.setdefault(tokens[0].lower(), tokens[1:])
    return directives


def _allows_without_nonce(sources: list[str], here: _Origin, path: str) -> bool:
    lowered = [t.lower() for t in sources]
    if "'strict-dynamic'" in lowered:
        return False  # host, scheme and 'self' sources are ignored under it
    for token, low in zip(sources, lowered, strict=True):
        if low == "'self'":
            return True
        if low.startswith("'"):
            continue  # 'none', hashes, nonces, 'unsafe-inline', ...
        if _SCHEME_SOURCE.fullmatch(low):
            if low[:-1] == here.scheme or (low == "http:" and here.scheme == "https"):
                return True
            continue
        if _host_matches(token, here, path):
            return True
    return False


def _host_matches(token: str, here: _Origin, path: str) -> bool:
    m = _HOST_SOURCE.fullmatch(token)
    if m is None:
        return False
    scheme = (m.group("scheme") or "").lower()
    host = m.group("host").lower().rstrip(".")
    port = m.group("port")
    # A scheme in the source must match, or be http for an https page (CSP3 upgrade rule).
    if scheme and scheme != here.scheme and not (scheme == "http" and here.scheme == "https"):
        return False
    if host == "*":
        if not scheme and m.group("port") is None and m.group("path") is None:
            return here.scheme in ("http", "https")
    elif host.startswith("*."):
        if not here.host.endswith(host[1:]):
            return False
    elif host != here.host:
        return False
    if port is None:
        # No port: the default one; http's 80 also stands for https's 443 after upgrade.
        ok = here.port == _DEFAULT_PORT.get(scheme or here.scheme, -1) or (
            scheme == "http" and here.scheme == "https" and here.port == 443
        )
        if not ok:
            return False
    elif (
        port != "*"
        and int(port) != here.port
        and not (int(port) == 80 and here.scheme == "https" and here.port == 443)
    ):
        return False
    want = m.group("path")
    if not want:
        return True
    want = unquote(want)
    return path.startswith(want) if want.endswith("/") else path == want


def _why(name: str, sources: list[str]) -> str:
    lowered = [t.lower() for t in sources]
    if not sources or lowered == ["'none'"]:
        return f"{name} 'none'"
    if "'strict-dynamic'" in lowered:
        return f"{name} 'strict-dynamic' without a nonce"
    if all(t.startswith(("'sha256-", "'sha384-", "'sha512-")) for t in lowered):
        return f"{name} allows only hashes"
    return f"{name} does not allow the script's origin"
