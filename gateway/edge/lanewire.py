"""The asset lane's header work on the wire bytes the C parser already split, in one pass.

Every lookup in aiohttp's case-insensitive multidicts costs a few hundred instructions (the
key is folded each time): the relay's header rules made ~35 of them per asset, a fifth of
the lane's CPU. Here each direction is one loop over the parsed (name, value) byte pairs:
a name is lowered once and looked up in a plain set. The rules are those of
`gateway.edge.headers`; what they handle and these do not (a Connection line naming other
fields, a trusted proxy's forwarding chain, a Location to rewrite, a 304 to weaken) makes
these return None, and the caller takes the multidict path instead. Values go on as the
parser gave them: llhttp refused CR, LF and NUL in them, so nothing can be injected.
"""

from __future__ import annotations

from collections.abc import Sequence

from gateway.edge.headers import HOP_BY_HOP

RawHeaders = Sequence[tuple[bytes, bytes]]

_HOP = frozenset(name.encode() for name in HOP_BY_HOP)
# The Connection value that names no other field ("keep-alive" is hop-by-hop already).
_PLAIN_CONNECTION = b"keep-alive"
# Request fields an untrusted client may not claim (gateway.edge.headers._UNTRUSTED_DROP),
# and Expect (the gateway answers 100-continue itself; the lane takes no Expect anyway).
_REQUEST_DROP = _HOP | {
    b"expect",
    b"x-forwarded-for",
    b"x-forwarded-proto",
    b"x-forwarded-host",
    b"forwarded",
}
# A trusted proxy's forwarding fields stay (extended): hop-by-hop and Expect go.
_TRUSTED_DROP = _HOP | {b"expect"}
# What the request scan reads (a value of _KINDS per lowered name).
_DEST, _ACCEPT, _UPGRADE = 1, 2, 3
_KINDS = {b"sec-fetch-dest": _DEST, b"accept": _ACCEPT, b"upgrade": _UPGRADE, b"expect": _UPGRADE}
# Response fields whose value the relay must change: the multidict path does that.
_REWRITTEN = frozenset({b"location", b"content-location"})
_LENGTH, _TYPE, _DATE, _SERVER = 1, 2, 3, 4
_FRAMING = {b"content-length": _LENGTH, b"content-type": _TYPE, b"date": _DATE, b"server": _SERVER}


def asset_request(raw: RawHeaders, limit: int) -> bool:
    """True when nothing in a request's fields keeps it off the lane: no Upgrade or Expect,
    not a document navigation (`Sec-Fetch-Dest: document`, or `Accept: text/html` without
    Sec-Fetch-Dest), and its header lines within `limit` bytes (else the Application's 431)."""
    size = 0
    dest: bytes | None = None
    html = False
    for name, value in raw:
        size += len(name) + len(value) + 4  # ": " and CRLF
        kind = _KINDS.get(name.lower())
        if kind is None:
            continue
        if kind == _DEST:
            if dest is None:
                dest = value
        elif kind == _ACCEPT:
            html = html or b"text/html" in value
        else:
            return False
    if size > limit:
        return False
    if dest is None:
        return not html
    return dest.strip().lower() != b"document"


def upstream_request(
    request_line: bytes,
    raw: RawHeaders,
    *,
    peer: str | None,
    peer_trusted: bool,
    scheme: str,
    host: str,
    upstream_host: str,
    preserve_host: bool,
) -> bytes | None:
    """The request for the site, as `headers.upstream_request_headers` makes it (the
    forwarding fields of a trusted peer extended, an untrusted one's dropped); None when a
    Connection line names other fields (the multidict path drops those too)."""
    lines = [request_line]
    host_line = b"Host: " + (host if preserve_host else upstream_host).encode("latin-1")
    drop = _TRUSTED_DROP if peer_trusted else _REQUEST_DROP
    chain: list[bytes] = []
    proto = forwarded_host = b""
    for name, value in raw:
        lowered = name.lower()
        if lowered in drop:
            if lowered == b"connection" and value.strip().lower() != _PLAIN_CONNECTION:
                return None
            continue
        if lowered == b"host":
            if host_line:
                lines.append(host_line)
                host_line = b""
            continue
        if peer_trusted:
            # The chain so far goes last, our hop appended; the first Proto and Host stay
            # where they are (an empty one replaced by ours).
            if lowered == b"x-forwarded-for":
                chain += [part.strip() for part in value.split(b",") if part.strip()]
                continue
            if lowered == b"x-forwarded-proto":
                if proto:
                    continue
                proto = value or scheme.encode("latin-1")
                value = proto
            elif lowered == b"x-forwarded-host":
                if forwarded_host:
                    continue
                forwarded_host = value or host.encode("latin-1")
                value = forwarded_host
        lines.append(name + b": " + value)
    if peer:
        chain.append(peer.encode("latin-1"))
    if chain:
        lines.append(b"X-Forwarded-For: " + b", ".join(chain))
    if not proto:
        lines.append(b"X-Forwarded-Proto: " + scheme.encode("latin-1"))
    if not forwarded_host:
        lines.append(b"X-Forwarded-Host: " + host.encode("latin-1"))
    if host_line:
        lines.append(host_line)
    lines.append(b"\r\n")
    return b"\r\n".join(lines)


class Framing:
    """What the response fields say about framing, read during the pass that copies them."""

    __slots__ = ("date", "length", "server", "type")

    def __init__(self) -> None:
        self.length: bytes | None = None
        self.type: bytes | None = None
        self.date = False
        self.server = False


def client_response(raw: RawHeaders) -> tuple[list[bytes], Framing] | None:
    """The site's response fields for the visitor, hop-by-hop ones dropped, and what they
    say about framing; None when one must be rewritten (Location, Content-Location) or a
    Connection line names other fields."""
    lines: list[bytes] = []
    framing = Framing()
    for name, value in raw:
        lowered = name.lower()
        if lowered in _HOP:
            if lowered == b"connection" and value.strip().lower() != _PLAIN_CONNECTION:
                return None
            continue
        if lowered in _REWRITTEN:
            return None
        kind = _FRAMING.get(lowered)
        if kind is not None:
            if kind == _LENGTH:
                if framing.length is None:
                    framing.length = value
            elif kind == _TYPE:
                if framing.type is None:
                    framing.type = value
            elif kind == _DATE:
                framing.date = True
            else:
                framing.server = True
        lines.append(name + b": " + value)
    return lines, framing
