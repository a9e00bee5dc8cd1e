"""A page the gateway tagged carries one visitor's token and cookies: no shared cache may
keep it, and HEAD answers the headers GET would."""

from __future__ import annotations

from multidict import CIMultiDictProxy

from tests.conftest import UA
from tests.fakes.upstream import Front

HEADERS = {"User-Agent": UA, "Accept": "text/html"}
CACHEABLE = "/html?etag=1&cache=public,%20max-age=300,%20s-maxage=3600"


async def fetch(gw: Front, method: str, path: str) -> CIMultiDictProxy[str]:
    async with gw.session.request(method, gw.url + path, headers=HEADERS) as resp:
        assert resp.status == 200
        await resp.read()
        return resp.headers


async def test_a_tagged_page_is_private_to_the_visitor(gw: Front) -> None:
    headers = await fetch(gw, "GET", CACHEABLE)
    assert headers.getall("Set-Cookie")  # personalised: _fbp for this visitor
    directives = [d.strip() for d in headers["Cache-Control"].split(",")]
    assert "private" in directives
    assert "public" not in directives
    assert not any(d.startswith("s-maxage") for d in directives)
    assert "max-age=300" in directives  # the visitor's own browser may still keep it
    assert "CDN-Cache-Control" not in headers


async def test_a_page_without_cache_control_is_marked_private(gw: Front) -> None:
    headers = await fetch(gw, "GET", "/html")
    assert headers["Cache-Control"] == "private"


async def test_an_untagged_response_keeps_the_sites_caching(gw: Front) -> None:
    headers = await fetch(gw, "GET", "/bytes/100")
    assert headers["Cache-Control"] == "public, max-age=60"


async def test_head_answers_the_headers_get_would(gw: Front) -> None:
    got = await fetch(gw, "GET", CACHEABLE)
    head = await fetch(gw, "HEAD", CACHEABLE)
    for name in ("Cache-Control", "ETag", "Content-Type"):
        assert head.get(name) == got.get(name), name
    assert "Content-Length" not in head  # a rewritten body has no known length
    assert "Accept-Ranges" not in head
