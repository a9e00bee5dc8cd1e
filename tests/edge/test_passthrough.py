"""The pass-through relay: answers the gateway does not change keep every header rule.

A raw origin on loopback writes exact bytes (hop-by-hop fields, Connection-listed names, a
Location on its own origin) that an aiohttp origin would rewrite; the header rules behind
the relay are pure functions, checked without a socket too.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable

import aiohttp
from multidict import CIMultiDict

from gateway.edge import headers as hdr
from gateway.edge.shares import ClientShares
from tests.edge.conftest import StartGateway

CSS = b"body{color:#123}"


@contextlib.asynccontextmanager
async def raw_origin(
    status: bytes, fields: list[bytes] | Callable[[str], list[bytes]]
) -> AsyncIterator[str]:
    """An origin answering every request with `status`, `fields` (or the fields made for
    its own URL) and CSS, keep-alive."""
    url = ""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                body = b"" if head.startswith(b"HEAD ") or status.startswith(b"304") else CSS
                own = fields(url) if callable(fields) else fields
                lines = [b"HTTP/1.1 " + status, *own, b"Content-Length: %d" % len(CSS)]
                writer.write(b"\r\n".join(lines) + b"\r\n\r\n" + body)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    async with server:
        yield url


async def test_an_asset_passes_with_hop_by_hop_fields_dropped_and_redirects_pointed_at_us(
    start: StartGateway,
) -> None:
    fields = [
        b"Content-Type: text/css",
        b'ETag: "v1"',
        b"Cache-Control: public, max-age=600",
        b"Connection: keep-alive, X-Hop",
        b"Keep-Alive: timeout=5",
        b"X-Hop: only for the next hop",
        b"X-Kept: end to end",
    ]
    async with raw_origin(b"200 OK", fields) as origin:
        gw = await start(upstream=origin)
        # The site's own origin in Content-Location: the visitor is told ours instead.
        async with raw_origin(
            b"301 Moved Permanently",
            lambda own: [b"Content-Type: text/css", f"Location: {own}/new.css?v=2".encode()],
        ) as moved:
            gw_moved = await start(upstream=moved)
            async with gw_moved.session.get(
                gw_moved.url + "/old.css", headers={"Host": "shop.example"}, allow_redirects=False
            ) as resp:
                assert resp.status == 301
                assert resp.headers["Location"] == "http://shop.example/new.css?v=2"
                assert await resp.read() == CSS
        for _ in range(3):  # the relay reuses the origin's and the visitor's connections
            async with gw.session.get(gw.url + "/app.css") as resp:
                assert resp.status == 200
                assert await resp.read() == CSS
                assert resp.headers["X-Kept"] == "end to end"
                assert "X-Hop" not in resp.headers
                assert "Keep-Alive" not in resp.headers
                # An asset is not personalised: the site's caching and validator stand.
                assert resp.headers["ETag"] == '"v1"'
                assert resp.headers["Cache-Control"] == "public, max-age=600"
                assert resp.headers["Content-Length"] == str(len(CSS))
        async with gw.session.head(gw.url + "/app.css") as resp:
            assert resp.status == 200
            assert resp.headers["Content-Length"] == str(len(CSS))
            assert await resp.read() == b""


async def test_a_revalidated_asset_keeps_its_strong_etag(start: StartGateway) -> None:
    fields = [b"Content-Type: text/css", b'ETag: "v1"']
    async with raw_origin(b"304 Not Modified", fields) as origin:
        gw = await start(upstream=origin)
        headers = {"If-None-Match": '"v1"'}
        async with gw.session.get(gw.url + "/app.css", headers=headers) as resp:
            assert resp.status == 304
            assert resp.headers["ETag"] == '"v1"'


def test_connection_names_are_dropped_unless_the_line_is_plain_keep_alive() -> None:
    plain = CIMultiDict({"Connection": "keep-alive", "Keep-Alive": "timeout=5", "X-A": "1"})
    hdr.drop_hop_by_hop(plain)
    assert dict(plain) == {"X-A": "1"}
    listed = CIMultiDict({"Connection": "Keep-Alive , X-A", "X-A": "1", "X-B": "2"})
    hdr.drop_hop_by_hop(listed)
    assert dict(listed) == {"X-B": "2"}
    twice = CIMultiDict([("Connection", "keep-alive"), ("Connection", "x-b"), ("X-B", "2")])
    hdr.drop_hop_by_hop(twice)
    assert not twice


def test_upstream_request_headers_drop_what_an_untrusted_peer_claims() -> None:
    incoming = CIMultiDict(
        [
            ("Host", "shop.example"),
            ("Accept", "*/*"),
            ("Connection", "keep-alive, X-Private"),
            ("X-Private", "hop"),
            ("Expect", "100-continue"),
            ("Content-Length", "3"),
            ("X-Forwarded-For", "6.6.6.6"),
            ("X-Forwarded-Host", "evil.example"),
            ("Forwarded", "for=6.6.6.6"),
        ]
    )
    kwargs = {"scheme": "http", "host": "shop.example", "upstream_host": "origin:8080"}
    out = hdr.upstream_request_headers(
        incoming, peer="10.0.0.9", peer_trusted=False, preserve_host=False, **kwargs
    )
    # Host stays where the visitor put it, now naming the upstream.
    assert list(out.items()) == [
        ("Host", "origin:8080"),
        ("Accept", "*/*"),
        ("X-Forwarded-For", "10.0.0.9"),
        ("X-Forwarded-Proto", "http"),
        ("X-Forwarded-Host", "shop.example"),
    ]
    trusted = hdr.upstream_request_headers(
        incoming, peer="10.0.0.9", peer_trusted=True, preserve_host=True, **kwargs
    )
    assert trusted["X-Forwarded-For"] == "6.6.6.6, 10.0.0.9"
    assert trusted["X-Forwarded-Host"] == "evil.example"
    assert trusted["Forwarded"] == "for=6.6.6.6"
    assert trusted["Host"] == "shop.example"
    assert "X-Private" not in trusted and "Expect" not in trusted


def test_client_shares_are_bounded_and_give_back_is_forgiving() -> None:
    shares = ClientShares(2)
    assert shares.take("a") and shares.take("a")
    assert not shares.take("a")
    assert shares.refused == 1
    shares.give_back("a")
    assert shares.held("a") == 1
    shares.give_back("a")
    assert shares.held("a") == 0
    shares.give_back("never-took")  # as Counter did: no KeyError
    assert shares.held("never-took") == 0


async def test_an_unreachable_site_is_a_502_page(start: StartGateway) -> None:
    async with raw_origin(b"200 OK", []) as origin:
        pass  # closed: nothing listens on that port any more
    gw = await start(upstream=origin)
    async with gw.session.get(gw.url + "/app.css", headers={"Accept": "text/css"}) as resp:
        assert resp.status == 502
        assert "Bad Gateway" in await resp.text()
    assert isinstance(gw.session, aiohttp.ClientSession)
