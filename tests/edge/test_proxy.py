"""The reverse proxy against a real upstream on loopback: bytes, headers, framing, errors.

The gateway runs in-process with the server options of `capi-gateway serve`
(tests.fakes.upstream.run_gateway); the site is tests.fakes.upstream, which records every
request it receives, so "the upstream saw nothing" is checked, not assumed.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import re
import time
import zlib
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from multidict import CIMultiDict
from yarl import URL

from gateway.edge import pagetoken
from gateway.edge.appkeys import PAGES
from tests.conftest import UA
from tests.edge.conftest import StartGateway
from tests.fakes.processes import free_port
from tests.fakes.upstream import (
    COOKIES,
    FOREIGN,
    Front,
    Upstream,
    decode,
    page,
    parse_responses,
    raw_exchange,
    seeded_bytes,
)

BROWSER = {"User-Agent": UA, "Accept": "text/html", "Accept-Encoding": "gzip, deflate, br"}
TAG = re.compile(rb'<script src="/_capi/px\.js[^>]*></script>')
HOP_BY_HOP = {
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "proxy-connection",
    "te",
    "trailer",
    "upgrade",
    "x-secret",
    "x-other",
}

# Each streamed event must arrive within ~100 ms of leaving the site; 150 ms leaves room for a
# busy machine while still failing a proxy that buffers (the site sends five events over
# 250 ms, so buffering delays the first by 200 ms or more).
UNBUFFERED = 0.15


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def pairs(headers: Any) -> list[tuple[str, str]]:
    """Response headers as (lowercase name, value) pairs without Date."""
    return [(k.lower(), v) for k, v in headers.items() if k.lower() != "date"]


async def fetch(
    front: Front, path: str, method: str = "GET", **kwargs: Any
) -> tuple[aiohttp.ClientResponse, bytes]:
    url = URL(front.url + path, encoded=True)
    async with front.session.request(method, url, allow_redirects=False, **kwargs) as resp:
        return resp, await resp.read()


async def direct(site: Upstream, path: str, **kwargs: Any) -> tuple[aiohttp.ClientResponse, bytes]:
    async with (
        aiohttp.ClientSession(auto_decompress=False, cookie_jar=aiohttp.DummyCookieJar()) as s,
        s.get(URL(site.url + path, encoded=True), allow_redirects=False, **kwargs) as resp,
    ):
        return resp, await resp.read()


def echoed(body: bytes) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(body)
    data["names"] = [k.lower() for k, _ in data["headers"]]
    return data


def values(echo: dict[str, Any], name: str) -> list[str]:
    return [v for k, v in echo["headers"] if k.lower() == name.lower()]


# -- bodies and headers unchanged ----------------------------------------------------------


@pytest.mark.parametrize("ctype", ["application/octet-stream", "image/png", "application/json"])
async def test_non_html_is_byte_identical_headers_included(
    gw: Front, site: Upstream, ctype: str
) -> None:
    path = f"/bytes/300000?ct={ctype}"
    resp, body = await fetch(gw, path, headers=BROWSER)
    want, want_body = await direct(site, path, headers=BROWSER)
    assert resp.status == 200
    assert sha(body) == sha(seeded_bytes(300000)) == sha(want_body)
    assert resp.headers["Content-Length"] == "300000"
    assert "Transfer-Encoding" not in resp.headers
    assert pairs(resp.headers) == pairs(want.headers)


async def test_compressed_non_html_passes_untouched(gw: Front, site: Upstream) -> None:
    path = "/html?enc=gzip&ct=text/css&etag=1"
    resp, body = await fetch(gw, path, headers=BROWSER)
    want, want_body = await direct(site, path, headers=BROWSER)
    assert _without_gzip_mtime(body) == _without_gzip_mtime(want_body)
    assert not TAG.search(decode(body, "gzip"))
    assert pairs(resp.headers) == pairs(want.headers)
    assert resp.headers["Content-Encoding"] == "gzip"
    assert resp.headers["ETag"] == '"page-v1"'


async def test_several_set_cookie_lines_arrive_unmodified(gw: Front) -> None:
    resp, _ = await fetch(gw, "/cookies", headers=BROWSER)
    assert resp.headers.getall("Set-Cookie") == list(COOKIES)


async def test_one_visitors_cookies_never_reach_anothers_request(gw: Front, site: Upstream) -> None:
    await fetch(gw, "/cookies", headers=BROWSER)  # visitor A gets the site's cookies
    _, body = await fetch(gw, "/echo", headers=BROWSER)  # visitor B, no Cookie header
    assert "cookie" not in echoed(body)["names"]
    _, body = await fetch(gw, "/echo", headers={**BROWSER, "Cookie": "mine=1"})
    assert values(echoed(body), "Cookie") == ["mine=1"]


async def test_long_response_header_fits(gw: Front) -> None:
    # aiohttp's client stops at 8190 bytes per field by default: a long CSP would be a 502.
    resp, body = await fetch(gw, "/big-header?n=20000", headers=BROWSER)
    assert resp.status == 200 and body == b"big"
    assert resp.headers["X-Big"] == "b" * 20000


# -- request headers -------------------------------------------------------------------------


async def test_request_headers_reach_the_upstream_minus_hop_by_hop(
    gw: Front, site: Upstream
) -> None:
    request = (
        "GET /echo HTTP/1.1\r\n"
        "Host: shop.example\r\n"
        f"User-Agent: {UA}\r\n"
        "Connection: X-Secret\r\n"
        "Connection: X-Other, close\r\n"
        "X-Secret: 1\r\n"
        "X-Other: 2\r\n"
        "Keep-Alive: timeout=300\r\n"
        "TE: trailers\r\n"
        "Trailer: X-Checksum\r\n"
        "Proxy-Authorization: Basic Zm9vOmJhcg==\r\n"
        "Proxy-Connection: keep-alive\r\n"
        "X-Custom: a\r\n"
        "X-Custom: b\r\n"
        "Cookie: sid=1; theme=dark\r\n"
        "Authorization: Bearer site-token\r\n"
        "Accept-Language: de-CH, en;q=0.5\r\n"
        "\r\n"
    )
    (resp,) = parse_responses(await raw_exchange(gw.url, request.encode()), ["GET"])
    assert resp.status == 200
    echo = echoed(resp.body)
    assert not HOP_BY_HOP & set(echo["names"]) - {"connection"}
    # The gateway's own connection to the site may say keep-alive, never a client's token.
    assert all(v.lower() in ("keep-alive", "close") for v in values(echo, "Connection"))
    assert values(echo, "X-Custom") == ["a", "b"]
    assert values(echo, "Cookie") == ["sid=1; theme=dark"]
    assert values(echo, "Authorization") == ["Bearer site-token"]
    assert values(echo, "Accept-Language") == ["de-CH, en;q=0.5"]
    assert values(echo, "User-Agent") == [UA]
    # Nothing the client did not send (aiohttp's client adds Accept, Accept-Encoding).
    assert not {"accept", "accept-encoding", "content-type"} & set(echo["names"])


async def test_response_hop_by_hop_headers_are_dropped(gw: Front) -> None:
    resp, body = await fetch(gw, "/hop", headers=BROWSER)
    assert body == b"hop"
    names = {k.lower() for k in resp.headers}
    assert not (HOP_BY_HOP - {"connection"}) & names
    assert all("x-" not in v.lower() for v in resp.headers.getall("Connection", []))
    assert resp.headers["X-End-To-End"] == "yes"


async def test_forwarding_headers_from_a_trusted_proxy_are_extended(
    gw: Front, site: Upstream
) -> None:
    headers = {
        **BROWSER,
        "Host": "shop.example",
        "X-Forwarded-For": "203.0.113.9, 10.1.2.3",
        "X-Forwarded-Proto": "https",
        "X-Forwarded-Host": "www.shop.example",
    }
    _, body = await fetch(gw, "/echo", headers=headers)
    echo = echoed(body)
    assert values(echo, "X-Forwarded-For") == ["203.0.113.9, 10.1.2.3, 127.0.0.1"]
    assert values(echo, "X-Forwarded-Proto") == ["https"]
    assert values(echo, "X-Forwarded-Host") == ["www.shop.example"]
    assert values(echo, "Host") == ["shop.example"]


async def test_an_ipv4_mapped_trusted_proxy_is_trusted_too(start: StartGateway) -> None:
    # A dual-stack listener sees the loopback proxy as ::ffff:127.0.0.1: still 127.0.0.0/8.
    gw = await start(dual_stack=True)
    headers = {
        **BROWSER,
        "Host": "shop.example",
        "X-Forwarded-For": "203.0.113.9",
        "X-Forwarded-Proto": "https",
        "X-Forwarded-Host": "www.shop.example",
    }
    _, body = await fetch(gw, "/echo", headers=headers)
    echo = echoed(body)
    assert values(echo, "X-Forwarded-For") == ["203.0.113.9, ::ffff:127.0.0.1"]
    assert values(echo, "X-Forwarded-Proto") == ["https"]
    assert values(echo, "X-Forwarded-Host") == ["www.shop.example"]


async def test_forwarding_headers_are_set_without_incoming_ones(gw: Front) -> None:
    _, body = await fetch(gw, "/echo", headers={**BROWSER, "Host": "shop.example:8443"})
    echo = echoed(body)
    assert values(echo, "X-Forwarded-For") == ["127.0.0.1"]
    assert values(echo, "X-Forwarded-Proto") == ["http"]
    assert values(echo, "X-Forwarded-Host") == ["shop.example:8443"]
    assert values(echo, "Host") == ["shop.example:8443"]


async def test_spoofed_forwarding_headers_from_an_untrusted_peer_are_ignored(
    start: StartGateway,
) -> None:
    gw = await start(trusted_proxies=["10.0.0.0/8"])
    spoof = {
        **BROWSER,
        "Host": "shop.example",
        "X-Forwarded-For": "203.0.113.9",
        "X-Forwarded-Proto": "https",
        "X-Forwarded-Host": "evil.example",
        "Forwarded": "for=198.51.100.1;proto=https",
    }
    _, body = await fetch(gw, "/echo", headers=spoof)
    echo = echoed(body)
    assert values(echo, "X-Forwarded-For") == ["127.0.0.1"]
    assert values(echo, "X-Forwarded-Proto") == ["http"]
    assert values(echo, "X-Forwarded-Host") == ["shop.example"]
    assert "forwarded" not in echo["names"]
    # Nor is it the client IP: the page token is bound to the socket peer.
    resp, page_body = await fetch(gw, "/html", headers=spoof)
    assert resp.status == 200
    token = _attr(page_body, "data-token")
    secret, ttl = gw.app[PAGES].secret, 3600
    now = int(time.time())
    assert pagetoken.verify(secret, token, client=f"127.0.0.1|{UA}", now=now, ttl=ttl)
    assert not pagetoken.verify(secret, token, client=f"203.0.113.9|{UA}", now=now, ttl=ttl)


async def test_host_is_rewritten_when_not_preserved(start: StartGateway, site: Upstream) -> None:
    gw = await start(preserve_host=False)
    _, body = await fetch(gw, "/echo", headers={**BROWSER, "Host": "shop.example"})
    echo = echoed(body)
    assert values(echo, "Host") == [site.url.removeprefix("http://")]
    assert values(echo, "X-Forwarded-Host") == ["shop.example"]


async def test_path_and_query_reach_the_upstream_byte_identical(gw: Front, site: Upstream) -> None:
    target = "/echo/a%2Fb/%E2%82%AC?x=1;y=2&z=%20+&e=%e2%82%ac&&q"
    request = f"GET {target} HTTP/1.1\r\nHost: shop.example\r\nConnection: close\r\n\r\n"
    (resp,) = parse_responses(await raw_exchange(gw.url, request.encode()), ["GET"])
    assert resp.status == 200
    assert echoed(resp.body)["path"] == target
    assert site.paths() == [target]


async def test_absolute_form_target_gives_a_consistent_host(gw: Front, site: Upstream) -> None:
    # The authority of an absolute-form target wins over Host (RFC 9112 §3.2.2): the site
    # gets the origin form and one consistent host.
    request = (
        "GET http://www.shop.example/echo?x=1 HTTP/1.1\r\nHost: other.example\r\n"
        "Connection: close\r\n\r\n"
    )
    (resp,) = parse_responses(await raw_exchange(gw.url, request.encode()), ["GET"])
    assert resp.status == 200
    echo = echoed(resp.body)
    assert echo["path"] == "/echo?x=1"
    assert values(echo, "Host") == values(echo, "X-Forwarded-Host") == ["www.shop.example"]


@pytest.mark.parametrize("host", ["shop.example:notaport", "[::1", "[::1]:99999"])
async def test_unparsable_host_serves_the_page_untagged(
    gw: Front, site: Upstream, host: str
) -> None:
    # Never a 500 for a Host header the client made up: the page passes through as it is.
    request = f"GET /html HTTP/1.1\r\nHost: {host}\r\nUser-Agent: {UA}\r\nConnection: close\r\n\r\n"
    (resp,) = parse_responses(await raw_exchange(gw.url, request.encode()), ["GET"])
    assert resp.status == 200
    assert resp.body == page().encode()


# -- redirects -------------------------------------------------------------------------------


async def test_redirect_to_the_upstream_origin_points_at_the_public_origin(gw: Front) -> None:
    resp, _ = await fetch(gw, "/redirect?to=self", headers={**BROWSER, "Host": "shop.example"})
    assert resp.status == 302
    want = "http://shop.example/landing/%E2%82%AC?x=1&y=%20"
    assert resp.headers["Location"] == want
    assert resp.headers["Content-Location"] == want
    # Behind a trusted TLS terminator the public origin is https.
    headers = {**BROWSER, "Host": "shop.example", "X-Forwarded-Proto": "https"}
    resp, _ = await fetch(gw, "/redirect?to=self", headers=headers)
    assert resp.headers["Location"] == "https://shop.example/landing/%E2%82%AC?x=1&y=%20"


@pytest.mark.parametrize(("to", "location"), [("foreign", FOREIGN), ("relative", "/relative?z=3")])
async def test_other_redirects_are_untouched(gw: Front, to: str, location: str) -> None:
    resp, _ = await fetch(gw, f"/redirect?to={to}", headers={**BROWSER, "Host": "shop.example"})
    assert resp.headers["Location"] == location
    assert resp.headers["Content-Location"] == location


# -- framing ---------------------------------------------------------------------------------


async def test_head_keeps_content_length_and_sends_no_body(gw: Front) -> None:
    request = (
        b"HEAD /bytes/1000 HTTP/1.1\r\nHost: a\r\n\r\n"
        b"GET /bytes/10 HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"
    )
    head, get = parse_responses(await raw_exchange(gw.url, request), ["HEAD", "GET"])
    assert head.status == 200 and head.header("Content-Length") == ["1000"]
    assert head.body == b""
    # The next response on the connection starts right after HEAD's header block.
    assert get.status == 200 and get.body == seeded_bytes(10)


@pytest.mark.parametrize("code", [204, 304])
async def test_no_body_statuses(gw: Front, code: int) -> None:
    request = (
        f"GET /status/{code} HTTP/1.1\r\nHost: a\r\n\r\n"
        "GET /bytes/10 HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"
    ).encode()
    first, second = parse_responses(await raw_exchange(gw.url, request), ["GET", "GET"])
    assert first.status == code and first.body == b""
    assert not first.header("Transfer-Encoding")
    assert first.header("ETag") == ['"st"']
    assert second.body == seeded_bytes(10)


@pytest.mark.parametrize("code", [404, 500, 503])
async def test_error_statuses_of_the_site_are_relayed(gw: Front, code: int) -> None:
    resp, body = await fetch(gw, f"/status/{code}", headers=BROWSER)
    assert resp.status == code and body == f"status {code}\n".encode()


async def test_pipelined_requests_are_answered_in_order(gw: Front) -> None:
    request = b"".join(
        f"GET /echo?n={i} HTTP/1.1\r\nHost: a\r\n{'Connection: close' if i == 4 else 'X: y'}"
        f"\r\n\r\n".encode()
        for i in range(5)
    )
    answers = parse_responses(await raw_exchange(gw.url, request), ["GET"] * 5)
    assert [echoed(r.body)["path"] for r in answers] == [f"/echo?n={i}" for i in range(5)]


async def test_range_on_an_asset_is_the_upstreams_206(gw: Front) -> None:
    resp, body = await fetch(gw, "/bytes/100000", headers={**BROWSER, "Range": "bytes=100-199"})
    assert resp.status == 206
    assert resp.headers["Content-Range"] == "bytes 100-199/100000"
    assert resp.headers["Content-Length"] == "100"
    assert body == seeded_bytes(100000)[100:200]


@pytest.mark.parametrize(
    "request_text",
    [
        "POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n"
        "Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        "POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
        "POST /echo HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, gzip\r\n\r\n0\r\n\r\n",
        "POST /echo HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
        "zz\r\nabc\r\n0\r\n\r\n",
        "GET /echo HTTP/1.1\r\nHost : a\r\n\r\n",
        "GET /echo HTTP/1.1\r\nHost: a\r\nX-Fold: a\r\n  b\r\n\r\n",
        "GET /echo HTTP/1.1\nHost: a\n\n",
        "GET /echo HTTP/1.1\r\nHost: a\r\nX-Nul: a\x00b\r\n\r\n",
        "GET /echo HTTP/1.1\r\nX-No-Host: 1\r\n\r\n",
        "GET /echo HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
        "GET /echo/\xff HTTP/1.1\r\nHost: a\r\n\r\n",
    ],
    ids=[
        "cl-and-te",
        "two-cl",
        "te-chunked-gzip",
        "bad-chunk-size",
        "space-before-colon",
        "obs-fold",
        "bare-lf",
        "nul",
        "no-host",
        "two-hosts",
        "raw-byte-in-target",
    ],
)
async def test_malformed_requests_are_refused_before_the_upstream(
    gw: Front, site: Upstream, request_text: str
) -> None:
    raw = await raw_exchange(gw.url, request_text.encode("latin-1"))
    assert re.match(rb"HTTP/1\.[01] 400 ", raw), raw[:200]
    assert site.requests == []


async def test_oversized_request_header_is_refused_before_the_upstream(
    start: StartGateway, site: Upstream
) -> None:
    gw = await start(max_header_bytes=4096)
    request = f"GET /echo HTTP/1.1\r\nHost: a\r\nX-Big: {'x' * 5000}\r\n\r\n".encode()
    raw = await raw_exchange(gw.url, request)
    assert re.match(rb"HTTP/1\.[01] 4(00|31) ", raw), raw[:200]
    assert site.requests == []


@pytest.mark.parametrize("path", ["/stream/1", "/html", "/sse"])
async def test_http10_keep_alive_client_gets_a_close_delimited_body(gw: Front, path: str) -> None:
    # No chunks in HTTP/1.0: a body of unknown length must end with the connection, even
    # when the client asked to keep it alive (aiohttp alone would keep it open).
    request = (
        f"GET {path} HTTP/1.0\r\nHost: shop.example\r\nUser-Agent: {UA}\r\n"
        "Connection: keep-alive\r\n\r\n"
    )
    (resp,) = parse_responses(await raw_exchange(gw.url, request.encode(), timeout=3), ["GET"])
    assert resp.status == 200 and resp.framing == "close"
    assert resp.header("Connection") in ([], ["close"])
    assert len(resp.body) > 0


async def test_http10_keep_alive_is_kept_when_the_length_is_known(gw: Front) -> None:
    request = (
        b"GET /bytes/10 HTTP/1.0\r\nHost: a\r\nConnection: keep-alive\r\n\r\n"
        b"GET /bytes/20 HTTP/1.0\r\nHost: a\r\n\r\n"
    )
    first, second = parse_responses(await raw_exchange(gw.url, request), ["GET", "GET"])
    assert first.header("Connection") == ["keep-alive"] and first.body == seeded_bytes(10)
    assert second.body == seeded_bytes(20)


async def test_concurrency_beyond_the_pool_queues(start: StartGateway) -> None:
    gw = await start(upstream_connections=2)
    began = time.monotonic()
    answers = await asyncio.gather(
        *(fetch(gw, f"/slow-headers?s=0.2&i={i}", headers=BROWSER) for i in range(6))
    )
    assert [r.status for r, _ in answers] == [200] * 6
    assert all(body == b"finally" for _, body in answers)
    # Two at a time: three rounds of 0.2 s.
    assert time.monotonic() - began >= 0.55


# -- uploads ---------------------------------------------------------------------------------


async def _chunks(data: bytes, size: int = 65536) -> AsyncIterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i : i + size]
        await asyncio.sleep(0)


async def test_upload_with_content_length_arrives_intact(gw: Front) -> None:
    data = seeded_bytes(3 * 1024 * 1024)
    _, body = await fetch(gw, "/upload", "POST", data=io.BytesIO(data), headers={"User-Agent": UA})
    answer = json.loads(body)
    assert answer["sha256"] == sha(data) and answer["length"] == len(data)
    assert answer["content_length"] == str(len(data))
    assert answer["transfer_encoding"] is None


async def test_chunked_upload_arrives_intact(gw: Front) -> None:
    data = seeded_bytes(3 * 1024 * 1024 + 7)
    _, body = await fetch(gw, "/upload", "PUT", data=_chunks(data), headers={"User-Agent": UA})
    answer = json.loads(body)
    assert answer["sha256"] == sha(data) and answer["length"] == len(data)
    assert answer["transfer_encoding"] == "chunked"


async def test_expect_100_continue_upload(gw: Front) -> None:
    data = seeded_bytes(1024 * 1024)
    resp, body = await fetch(gw, "/upload", "POST", data=io.BytesIO(data), expect100=True)
    assert resp.status == 200
    assert json.loads(body)["sha256"] == sha(data)


async def test_expect_100_continue_on_the_wire(gw: Front, site: Upstream) -> None:
    head = (
        "POST /upload HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n"
        "Expect: 100-continue\r\nConnection: close\r\n\r\n"
    )
    reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
    try:
        writer.write(head.encode())
        line = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert line.startswith(b"HTTP/1.1 100 Continue")
        writer.write(b"hello")
        rest = await asyncio.wait_for(reader.read(), 5)
    finally:
        writer.close()
    (resp,) = parse_responses(rest, ["POST"])
    assert json.loads(resp.body)["sha256"] == sha(b"hello")
    # The gateway answered 100 itself; the site gets no Expect.
    assert site.requests[0].header("Expect") == []


async def test_body_over_the_limit_is_413_before_the_upstream(
    start: StartGateway, site: Upstream
) -> None:
    gw = await start(max_upload_mb=1)
    data = b"x" * (2 * 1024 * 1024)
    resp, _ = await fetch(gw, "/upload", "POST", data=io.BytesIO(data), headers={"User-Agent": UA})
    assert resp.status == 413
    assert site.requests == []


async def test_a_stalled_upload_is_cut_off_with_408(start: StartGateway) -> None:
    gw = await start(client_body_timeout=0.3)
    request = b"POST /upload HTTP/1.1\r\nHost: a\r\nContent-Length: 1000\r\n\r\n" + b"x" * 10
    started = time.monotonic()
    reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
    try:
        writer.write(request)
        await writer.drain()
        # Without the deadline the gateway would wait for the rest of the body forever.
        status = await asyncio.wait_for(reader.readline(), 5)
    finally:
        writer.close()
    assert status.startswith(b"HTTP/1.1 408 ")
    assert time.monotonic() - started < 3


async def test_expect_100_continue_over_the_limit_is_413_without_100(
    start: StartGateway, site: Upstream
) -> None:
    gw = await start(max_upload_mb=1)
    request = (
        "POST /upload HTTP/1.1\r\nHost: a\r\nContent-Length: 2000000\r\n"
        "Expect: 100-continue\r\n\r\n"
    )
    reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
    try:
        writer.write(request.encode())
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    finally:
        writer.close()
    # The final answer comes first: no "100 Continue" inviting a body that will be refused.
    assert head.startswith(b"HTTP/1.1 413 "), head
    assert b"Connection: close" in head
    assert site.requests == []


async def test_chunked_body_over_the_limit_is_413_and_never_completes_upstream(
    start: StartGateway, site: Upstream
) -> None:
    gw = await start(max_upload_mb=1)
    data = b"x" * (2 * 1024 * 1024)
    resp, _ = await fetch(gw, "/upload", "POST", data=_chunks(data), headers={"User-Agent": UA})
    assert resp.status == 413
    await asyncio.sleep(0.1)
    assert not [e for e in site.events if e.startswith("upload-done")]


# -- upstream faults -------------------------------------------------------------------------


async def test_upstream_down_is_a_fast_502(start: StartGateway) -> None:
    gw = await start(upstream=f"http://127.0.0.1:{free_port()}")
    began = time.monotonic()
    resp, body = await fetch(gw, "/anything", headers=BROWSER)
    assert resp.status == 502 and resp.content_type == "text/html"
    assert b"502 Bad Gateway" in body
    resp, body = await fetch(gw, "/anything", headers={"Accept": "application/json"})
    assert resp.status == 502 and resp.content_type == "application/json"
    assert json.loads(body)["error"] == "Bad Gateway"
    assert time.monotonic() - began < 2


async def test_slow_headers_are_a_504_at_the_read_timeout(start: StartGateway) -> None:
    gw = await start(upstream_read_timeout=0.4)
    began = time.monotonic()
    resp, body = await fetch(gw, "/slow-headers?s=5", headers={"Accept": "application/json"})
    took = time.monotonic() - began
    assert resp.status == 504 and json.loads(body)["error"] == "Gateway Timeout"
    assert 0.3 < took < 2


async def test_stalled_body_aborts_the_response(start: StartGateway) -> None:
    gw = await start(upstream_read_timeout=0.4)
    began = time.monotonic()
    async with gw.session.get(gw.url + "/slow-body?s=5") as resp:
        assert resp.status == 200 and resp.content_length == 1000
        with pytest.raises(aiohttp.ClientPayloadError):
            await resp.read()
    assert time.monotonic() - began < 2


@pytest.mark.parametrize("query", ["", "?chunked=1"])
async def test_upstream_reset_mid_body_is_never_a_clean_end(gw: Front, query: str) -> None:
    async with gw.session.get(gw.url + "/reset-mid-body" + query) as resp:
        assert resp.status == 200
        received = bytearray()
        with pytest.raises(aiohttp.ClientPayloadError):
            async for chunk in resp.content.iter_any():
                received += chunk
    assert 0 < len(received) < 100_000


# -- streaming -------------------------------------------------------------------------------


async def test_server_sent_events_arrive_unbuffered(gw: Front) -> None:
    delays: list[float] = []
    async with gw.session.get(gw.url + "/sse", headers=BROWSER) as resp:
        assert resp.headers["Content-Type"] == "text/event-stream"
        buffer = b""
        async for chunk in resp.content.iter_any():
            arrived = time.monotonic()
            buffer += chunk
            while b"\n\n" in buffer:
                event, buffer = buffer.split(b"\n\n", 1)
                data = json.loads(event.split(b"data: ", 1)[1])
                delays.append(arrived - data["t"])
    assert len(delays) == 5
    assert max(delays) < UNBUFFERED, delays


async def test_headers_of_a_stream_leave_before_its_first_event(gw: Front) -> None:
    # Headers wait for the body only when the body is already there: a stream whose first
    # event comes later gets its status line and headers at once.
    async with gw.session.get(gw.url + "/sse", headers=BROWSER) as resp:
        headers_at = time.monotonic()
        first = await resp.content.readuntil(b"\n\n")
    event_made_at = json.loads(first.split(b"data: ", 1)[1])["t"]
    assert headers_at < event_made_at


@pytest.mark.parametrize("path", ["/bytes/100", "/bytes/300000", "/html", "/sse"])
@pytest.mark.parametrize("version", ["1.0", "1.1"])
async def test_bodies_end_cleanly_on_one_connection(gw: Front, path: str, version: str) -> None:
    # The headers, the last chunk and the end of a body may leave in one write: three
    # pipelined requests on one connection must still parse strictly, each body whole.
    def request(close: bool) -> str:
        return (
            f"GET {path} HTTP/{version}\r\nHost: 127.0.0.1\r\nUser-Agent: {UA}\r\n"
            f"Accept: text/html\r\nSec-Fetch-Dest: document\r\n"
            f"{'Connection: close' if close else 'Connection: keep-alive'}\r\n\r\n"
        )

    count = 3 if version == "1.1" else 1
    data = "".join(request(i == count - 1) for i in range(count)).encode()
    responses = parse_responses(await raw_exchange(gw.url, data, timeout=10), ["GET"] * count)
    assert len(responses) == count
    for resp in responses:
        assert resp.status == 200
        if path.startswith("/bytes/"):
            assert len(resp.body) == int(path.rsplit("/", 1)[1])
        elif path == "/sse":
            assert resp.body.count(b"\n\n") == 5
        else:
            assert resp.body.count(b"data-event-id=") == 1
        if version == "1.0":
            assert resp.framing in ("length", "close")


@pytest.mark.parametrize("enc", ["identity", "gzip", "br"])
async def test_injected_page_streams_unbuffered(gw: Front, enc: str) -> None:
    delays: list[float] = []
    decoder: Any = None
    if enc == "gzip":
        decoder = zlib.decompressobj(31)
    elif enc == "br":
        import brotli  # type: ignore[import-untyped]

        decoder = brotli.Decompressor()
    text = b""
    async with gw.session.get(gw.url + f"/html?slow=1&enc={enc}", headers=BROWSER) as resp:
        assert resp.headers.get("Content-Encoding", "identity") == enc
        async for chunk in resp.content.iter_any():
            arrived = time.monotonic()
            if decoder is None:
                new = chunk
            elif enc == "gzip":
                new = decoder.decompress(chunk)
            else:
                new = decoder.process(chunk)
            text += new
            delays += [arrived - float(t) for t in re.findall(rb'data-t="([0-9.]+)"', new)]
    assert len(TAG.findall(text)) == 1
    assert len(delays) == 5
    assert max(delays) < UNBUFFERED, delays


# -- the prefix ------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["GET", "POST", "DELETE"])
async def test_the_prefix_never_reaches_the_upstream(
    gw: Front, site: Upstream, method: str
) -> None:
    resp, body = await fetch(gw, "/_capi/anything/else?x=1", method, headers=BROWSER)
    assert resp.status == 404
    assert json.loads(body)
    resp, body = await fetch(gw, "/_capi/px.js", headers=BROWSER)
    assert resp.status == 200 and b"capi" in body
    assert site.requests == []


# -- injection -------------------------------------------------------------------------------


def _attr(body: bytes, name: str) -> str:
    match = re.search(rf'{name}="([^"]*)"'.encode(), body)
    assert match, body[:400]
    return match.group(1).decode()


@pytest.mark.parametrize("enc", ["identity", "gzip", "deflate", "br"])
async def test_html_is_injected_once_and_reencoded(gw: Front, site: Upstream, enc: str) -> None:
    path = f"/html?enc={enc}&etag=1&md5=1"
    resp, body = await fetch(gw, path, headers=BROWSER)
    want, _ = await direct(site, path, headers=BROWSER)
    assert resp.status == 200
    assert resp.headers.get("Content-Encoding", "identity") == enc
    text = decode(body, enc)
    assert len(TAG.findall(text)) == 1
    tag = TAG.search(text)
    assert tag is not None
    # Right after the charset declaration, everything else as the site sent it.
    original = page().encode()
    anchor = original.index(b"<meta charset=utf-8>") + len(b"<meta charset=utf-8>")
    assert text == original[:anchor] + tag.group(0) + original[anchor:]
    assert resp.headers["ETag"] == 'W/"page-v1"'
    assert "Content-Length" not in resp.headers and "Content-MD5" not in resp.headers
    assert "Content-MD5" in want.headers
    if enc != "identity":
        assert resp.headers["Vary"] == "Accept-Encoding"


async def test_latin1_page_is_untouched_apart_from_the_tag(gw: Front) -> None:
    _, body = await fetch(gw, "/html?charset=latin-1", headers=BROWSER)
    tag = TAG.search(body)
    assert tag is not None
    assert body.replace(tag.group(0), b"") == page().encode("latin-1")


@pytest.mark.parametrize(
    ("path", "headers"),
    [
        ("/html", {"HX-Request": "true"}),
        ("/html", {"X-Requested-With": "XMLHttpRequest"}),
        ("/html", {"Sec-Fetch-Dest": "empty"}),
        ("/html?attachment=1", {}),
        ("/html?notransform=1", {}),
        ("/html?csp=script-src%20%27none%27", {}),
        ("/html?enc=gzip", {"Range": "bytes=0-99"}),
        ("/html?etag=1", {"User-Agent": "Googlebot/2.1 (+http://www.google.com/bot.html)"}),
        ("/html?enc=zstd", {}),
        ("/html?enc=gzip,%20br", {}),
        ("/html?charset=utf-16", {}),
    ],
    ids=[
        "htmx",
        "xhr",
        "fetch",
        "attachment",
        "no-transform",
        "csp-none",
        "range",
        "bot",
        "unknown-encoding",
        "stacked-encodings",
        "utf-16",
    ],
)
async def test_pages_left_alone(
    gw: Front, site: Upstream, path: str, headers: dict[str, str]
) -> None:
    sent = {**BROWSER, **headers}
    resp, body = await fetch(gw, path, headers=sent)
    want, want_body = await direct(site, path, headers=sent)
    assert resp.status == want.status
    assert _without_gzip_mtime(body) == _without_gzip_mtime(want_body)
    assert pairs(resp.headers) == pairs(want.headers)


def _without_gzip_mtime(body: bytes) -> bytes:
    # The test site gzips each answer afresh, stamping the current second into bytes 4-7:
    # two fetches a second apart differ there and nowhere else.
    if body[:2] == b"\x1f\x8b" and len(body) >= 8:
        return body[:4] + b"\0\0\0\0" + body[8:]
    return body


async def test_conditional_request_on_a_rewritten_page(gw: Front) -> None:
    resp, _ = await fetch(gw, "/html?etag=1", headers=BROWSER)
    etag = resp.headers["ETag"]
    assert etag == 'W/"page-v1"'
    resp, body = await fetch(gw, "/html?etag=1", headers={**BROWSER, "If-None-Match": etag})
    assert resp.status == 304 and body == b""
    # The copy the client revalidated is our rewritten one: its validator stays weak, or a
    # cache would store the site's strong ETag next to the injected body.
    assert resp.headers["ETag"] == etag


async def test_conditional_request_with_the_sites_own_etag(gw: Front) -> None:
    resp, _ = await fetch(gw, "/html?etag=1", headers={**BROWSER, "If-None-Match": '"page-v1"'})
    assert resp.status == 304 and resp.headers["ETag"] == '"page-v1"'


async def test_head_of_an_html_page_is_not_injected(gw: Front, site: Upstream) -> None:
    resp, body = await fetch(gw, "/html?etag=1", "HEAD", headers=BROWSER)
    assert resp.status == 200 and body == b""
    # The headers a GET would get (issue 12): the validator of the rewritten copy, and no
    # length, as the tagged body's length differs from the site's.
    assert resp.headers["ETag"] == 'W/"page-v1"'
    assert "Content-Length" not in resp.headers
    assert "Set-Cookie" not in resp.headers  # a HEAD is no page view


async def test_document_fetch_is_injected(gw: Front) -> None:
    headers = {**BROWSER, "Sec-Fetch-Dest": "document", "Sec-Fetch-Mode": "navigate"}
    _, body = await fetch(gw, "/html", headers=headers)
    assert len(TAG.findall(body)) == 1


async def test_csp_nonce_is_copied_onto_the_tag(gw: Front) -> None:
    _, body = await fetch(gw, "/html?nonce=r4nd0mN0nce", headers=BROWSER)
    tag = TAG.search(body)
    assert tag is not None and b'nonce="r4nd0mN0nce"' in tag.group(0)


async def test_csp_self_injects_without_nonce(gw: Front) -> None:
    _, body = await fetch(gw, "/html?csp=script-src%20%27self%27", headers=BROWSER)
    tag = TAG.search(body)
    assert tag is not None and b"nonce=" not in tag.group(0)


async def test_upstream_request_for_a_page_is_the_clients(gw: Front, site: Upstream) -> None:
    # Injection changes the answer, never the question: Accept-Encoding goes through as sent.
    await fetch(gw, "/html?enc=br", headers=BROWSER)
    assert site.requests[0].header("Accept-Encoding") == ["gzip, deflate, br"]


async def test_repeated_header_lines_of_the_client_are_kept(gw: Front) -> None:
    headers = CIMultiDict([("User-Agent", UA), ("X-Many", "1"), ("X-Many", "2")])
    _, body = await fetch(gw, "/echo", headers=headers)
    assert values(echoed(body), "X-Many") == ["1", "2"]
