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
# How the request scan treats a lowered name (absent: an end-to-end field, copied).
_DROP, _CONNECTION, _HOST, _XFF, _XFP, _XFH, _FORWARDED = range(7)
_REFUSE, _DEST, _ACCEPT = 7, 8, 9
_REQUEST_KINDS = {
    **dict.fromkeys(_HOP, _DROP),
    b"connection": _CONNECTION,
    b"host": _HOST,
    b"x-forwarded-for": _XFF,
    b"x-forwarded-proto": _XFP,
    b"x-forwarded-host": _XFH,
    b"forwarded": _FORWARDED,
    b"sec-fetch-dest": _DEST,
    b"accept": _ACCEPT,
    # An upgrade (WebSocket) or `Expect: 100-continue`: the Application's.
    b"upgrade": _REFUSE,
    b"expect": _REFUSE,
}
# Response fields whose value the relay must change: the multidict path does that.
_REWRITTEN = frozenset({b"location", b"content-location"})
_LENGTH, _TYPE, _DATE, _SERVER = 1, 2, 3, 4
_FRAMING = {b"content-length": _LENGTH, b"content-type": _TYPE, b"date": _DATE, b"server": _SERVER}


class RequestScan:
    """A request's fields read in one pass: the end-to-end ones to copy, and the forwarding
    ones the proxy reads or rewrites (values as the parser gave them)."""

    __slots__ = ("document", "forwarded", "host", "lines", "named", "proto", "xff", "xfh")

    def __init__(self) -> None:
        # "Name: value" of every field but Host, hop-by-hop and forwarding ones, in order.
        self.lines: list[bytes] = []
        self.host: bytes | None = None
        self.xff: list[bytes] = []
        self.forwarded: list[bytes] = []
        self.proto: bytes | None = None
        self.xfh: bytes | None = None
        # A Connection line names other fields: the multidict rules drop those.
        self.named = False
        # A navigation (`Sec-Fetch-Dest: document`, or `Accept: text/html` without
        # Sec-Fetch-Dest): its answer is likely a page the gateway tags.
        self.document = False

    def forwarding(self) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """The X-Forwarded-For and Forwarded lines as aiohttp's parser decodes them."""
        return (
            tuple(value.decode("utf-8", "surrogateescape") for value in self.xff),
            tuple(value.decode("utf-8", "surrogateescape") for value in self.forwarded),
        )


def lane_request(raw: RawHeaders, limit: int) -> RequestScan | None:
    """The scan of a request nothing in whose fields keeps it off the lane, else None: an
    Upgrade or Expect, header lines past `limit` bytes (the 431). A navigation takes the
    lane too: its answer, a page, is handed to the page path once it is in."""
    scan = RequestScan()
    lines = scan.lines
    size = 0
    dest: bytes | None = None
    html = False
    kinds = _REQUEST_KINDS
    for name, value in raw:
        size += len(name) + len(value) + 4  # ": " and CRLF
        kind = kinds.get(name.lower())
        if kind is None:
            lines.append(name + b": " + value)
        elif kind == _DROP:
            continue
        elif kind >= _REFUSE:
            if kind == _REFUSE:
                return None
            if kind == _DEST:
                if dest is None:  # the first Sec-Fetch-Dest counts
                    dest = value.strip().lower()
            else:
                html = html or b"text/html" in value
            lines.append(name + b": " + value)
        elif kind == _CONNECTION:
            scan.named = scan.named or value.strip().lower() != _PLAIN_CONNECTION
        elif kind == _HOST:
            if scan.host is None:
                scan.host = value
        elif kind == _XFF:
            scan.xff.append(value)
        elif kind == _FORWARDED:
            scan.forwarded.append(value)
        elif kind == _XFP:
            if scan.proto is None:
                scan.proto = value
        elif scan.xfh is None:
            scan.xfh = value
    if size > limit:
        return None
    scan.document = dest == b"document" if dest is not None else html
    return scan


def upstream_request(
    request_line: bytes,
    scan: RequestScan,
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
    Connection line names other fields (the multidict path drops those too).

    Fields of different names may come in another order than there (RFC 9110 §5.3: that
    order carries no meaning); repeated fields keep theirs."""
    if scan.named:
        return None
    lines = [request_line, *scan.lines]
    lines.append(b"Host: " + _bytes(host if preserve_host else upstream_host))
    chain: list[bytes] = []
    proto = forwarded_host = None
    if peer_trusted:
        for line in scan.xff:
            chain += [part.strip() for part in line.split(b",") if part.strip()]
        lines += [b"Forwarded: " + value for value in scan.forwarded]
        proto, forwarded_host = scan.proto, scan.xfh
    if peer:
        chain.append(_bytes(peer))
    if chain:
        lines.append(b"X-Forwarded-For: " + b", ".join(chain))
    lines.append(b"X-Forwarded-Proto: " + (proto or _bytes(scheme)))
    lines.append(b"X-Forwarded-Host: " + (forwarded_host or _bytes(host)))
    lines.append(b"\r\n")
    return b"\r\n".join(lines)


def _bytes(text: str) -> bytes:
    """A value aiohttp decoded (or one of ours) back to its bytes."""
    return text.encode("utf-8", "surrogateescape")


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
