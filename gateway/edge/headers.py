"""Header rules of the proxy: what crosses it, what it adds, and what it rewrites.

Pure functions over multidicts, so every rule of RFC 9110 §7.6.1 (hop-by-hop fields) and
of the forwarding headers can be tested without a socket.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

# Fields that describe one connection, never the message (RFC 9110 §7.6.1), plus the
# Proxy-* family and Expect (the gateway answers 100-continue itself).
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)
# The media types of a page: what the gateway may tag, count, read products or rules from.
HTML_TYPES = frozenset({"text/html", "application/xhtml+xml"})
_PLAIN_CONNECTION = frozenset({"keep-alive"})
_REQUEST_ONLY_DROP = frozenset({"expect", "content-length"})
_TRUSTED_DROP = HOP_BY_HOP | _REQUEST_ONLY_DROP
_UNTRUSTED_DROP = _TRUSTED_DROP | {
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
    "forwarded",
}
# Validators and digests of a body we rewrite are wrong afterwards.
_REWRITTEN_DROP = ("Content-Length", "Content-MD5", "Digest", "Repr-Digest", "Content-Digest")

Headers = CIMultiDict[str] | CIMultiDictProxy[str]


def connection_tokens(headers: Headers) -> set[str]:
    """Header names listed in every Connection line (they are hop-by-hop too)."""
    names: set[str] = set()
    for line in headers.getall("Connection", ()):
        names.update(token.strip().lower() for token in line.split(",") if token.strip())
    return names


def end_to_end(headers: Headers, *, keep: Iterable[str] = ()) -> CIMultiDict[str]:
    """A copy without hop-by-hop fields; `keep` names survive (e.g. Upgrade for WebSocket)."""
    # One copy in C (order, case and repeated fields kept), then the few hop-by-hop names
    # taken out: cheaper than re-adding every field from Python on every request.
    out = CIMultiDict(headers)
    drop_hop_by_hop(out, keep=keep)
    return out


def drop_hop_by_hop(headers: CIMultiDict[str], *, keep: Iterable[str] = ()) -> None:
    """Take the hop-by-hop fields (and those Connection names) out of `headers`, in place."""
    drop = HOP_BY_HOP
    if "Connection" in headers:
        line = headers.getall("Connection")
        # Nearly every answer says just "keep-alive" (hop-by-hop already): nothing to add.
        if len(line) != 1 or line[0].strip().lower() not in _PLAIN_CONNECTION:
            drop = HOP_BY_HOP | connection_tokens(headers)
    if keep:
        drop = drop - {k.lower() for k in keep}
    for name in drop:
        if name in headers:
            del headers[name]


def upstream_request_headers(
    incoming: Headers,
    *,
    peer: str | None,
    peer_trusted: bool,
    scheme: str,
    host: str,
    upstream_host: str,
    preserve_host: bool,
) -> CIMultiDict[str]:
    """Headers for the upstream request: end-to-end fields plus X-Forwarded-*."""
    out = CIMultiDict(incoming)
    # Forwarding headers from an untrusted peer are the client's claims: drop them, so the
    # site never sees a spoofed chain with our hop appended as if it vouched for it. One
    # pass over one set of names (every request, every asset, comes by here).
    drop = _TRUSTED_DROP if peer_trusted else _UNTRUSTED_DROP
    if "Connection" in out:
        drop = drop | connection_tokens(out)
    for name in drop:
        if name in out:
            del out[name]
    prior_for = out.popall("X-Forwarded-For", ()) if peer_trusted else ()
    prior_proto = out.getone("X-Forwarded-Proto", None) if peer_trusted else None
    prior_host = out.getone("X-Forwarded-Host", None) if peer_trusted else None
    chain = [part.strip() for line in prior_for for part in line.split(",") if part.strip()]
    if peer:
        chain.append(peer)
    if chain:
        out["X-Forwarded-For"] = ", ".join(chain)
    out["X-Forwarded-Proto"] = prior_proto or scheme
    out["X-Forwarded-Host"] = prior_host or host
    out["Host"] = host if preserve_host else upstream_host
    return out


def rewrite_location(value: str, upstream: URL, public_origin: str) -> str:
    """Point an absolute URL on the upstream's own origin at the public origin instead."""
    try:
        target = URL(value)
    except ValueError:
        return value
    if not target.is_absolute():
        return value
    if (target.scheme, target.host, target.port) != (upstream.scheme, upstream.host, upstream.port):
        return value
    # Keep the path and query as the upstream wrote them (no re-encoding). The authority
    # ends where the original text says: yarl normalises it (":018082" is ":18082"), so
    # its length would cut the path in the wrong place.
    rest = value[value.index("://") + 3 :]
    ends = [i for i in (rest.find(c) for c in "/?#") if i >= 0]
    return public_origin + rest[min(ends, default=len(rest)) :]


def client_response_headers(
    upstream_headers: Headers, *, upstream: URL, public_origin: str
) -> CIMultiDict[str]:
    """Upstream response headers for the client: end-to-end, redirects pointed at us."""
    out = end_to_end(upstream_headers)
    rewrite_locations(out, upstream, lambda: public_origin)
    return out


def rewrite_locations(headers: CIMultiDict[str], upstream: URL, origin: Callable[[], str]) -> None:
    """Point Location and Content-Location on the upstream's origin at `origin()`, in place.

    `origin` is asked only when there is such a field: most answers have none.
    """
    for name in ("Location", "Content-Location"):
        if name not in headers:
            continue  # no popall/re-add round trip
        public_origin = origin()
        values = headers.popall(name, [])
        for value in values:
            headers.add(name, rewrite_location(value, upstream, public_origin))


def prepare_rewritten(headers: CIMultiDict[str]) -> None:
    """Adjust headers of a body the gateway rewrites (injected HTML)."""
    for name in _REWRITTEN_DROP:
        headers.popall(name, None)
    # Byte ranges of the original no longer apply to what we send.
    headers.popall("Accept-Ranges", None)
    etags = headers.popall("ETag", [])
    for etag in etags:
        headers.add("ETag", etag if etag.startswith("W/") else f"W/{etag}")


# Directives that let a shared cache (a CDN) store the response, and headers that speak to
# CDNs alone (RFC 9213 and its vendor cousins).
_SHARED_ONLY = ("public", "s-maxage", "proxy-revalidate")
_CDN_CONTROLS = ("CDN-Cache-Control", "Surrogate-Control", "Cloudflare-CDN-Cache-Control")


def keep_private(headers: CIMultiDict[str]) -> None:
    """Cache-Control for a page personalised for one visitor (page token, Set-Cookie).

    A shared cache must not hand one visitor's token and cookie to another: `private`,
    without `public` or `s-maxage`; the browser's own cache keeps its max-age.
    """
    kept: list[str] = []
    for line in headers.popall("Cache-Control", []):
        for directive in line.split(","):
            name = directive.split("=", 1)[0].strip().lower()
            if name and name not in _SHARED_ONLY and name != "private":
                kept.append(directive.strip())
    headers["Cache-Control"] = ", ".join(["private", *kept])
    for name in _CDN_CONTROLS:
        headers.popall(name, None)


def weaken_revalidated(headers: CIMultiDict[str], if_none_match: Iterable[str]) -> None:
    """A 304 for a copy we rewrote (the client sent the weak ETag we gave it) stays weak.

    Otherwise a cache would store the site's strong ETag next to the injected body, and a
    later If-Range or If-Match would treat the two as byte-identical.
    """
    sent = {tag.strip() for line in if_none_match for tag in line.split(",")}
    etags = headers.popall("ETag", [])
    for etag in etags:
        weak = not etag.startswith("W/") and f"W/{etag}" in sent
        headers.add("ETag", f"W/{etag}" if weak else etag)


def media_type(headers: Mapping[str, str]) -> str:
    """The lowercase media type of Content-Type, without parameters."""
    return headers.get("Content-Type", "").split(";", 1)[0].strip().lower()


def content_type_param(headers: Mapping[str, str], name: str) -> str | None:
    """A parameter of Content-Type (e.g. charset), unquoted and lowercased."""
    for part in headers.get("Content-Type", "").split(";")[1:]:
        key, _, value = part.partition("=")
        if key.strip().lower() == name:
            return value.strip().strip('"').lower() or None
    return None
