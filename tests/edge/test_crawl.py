"""crawl(): a polite sitemap walk of a loopback shop, reading each page's products (issue 17)."""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import itertools
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from gateway.edge.crawl import CrawledPage, CrawlError, crawl
from gateway.edge.sitemaps import crawl_delay
from tests.conftest import make_settings
from tests.fakes.graph import FakeGraph
from tests.fakes.upstream import run_gateway

PUBLIC = "https://shop.example"
NS = 'xmlns="http://www.sitemaps.org/schemas/sitemap/0.9"'


def product_page(sku: str, price: str = "10.00") -> str:
    return f"""<!doctype html><html><head><title>{sku}</title>
<script type="application/ld+json">{{"@context":"https://schema.org","@type":"Product",
"name":"Thing {sku}","sku":"{sku}","image":"/img/{sku}.jpg",
"offers":{{"@type":"Offer","price":"{price}","priceCurrency":"EUR",
"availability":"https://schema.org/InStock"}}}}</script></head><body>{"x" * 3000}</body></html>"""


def urlset(*locs: str) -> str:
    body = "".join(f"<url><loc>{loc}</loc><lastmod>2026-01-01</lastmod></url>" for loc in locs)
    return f'<?xml version="1.0" encoding="UTF-8"?>\n<urlset {NS}>{body}</urlset>'


def index(*locs: str) -> str:
    body = "".join(f"<sitemap><loc>{loc}</loc></sitemap>" for loc in locs)
    return f'<?xml version="1.0" encoding="UTF-8"?>\n<sitemapindex {NS}>{body}</sitemapindex>'


@dataclass
class Shop:
    """A loopback shop that serves what `files` says and records every request."""

    files: dict[str, tuple[int, str, bytes]] = field(default_factory=dict)
    delay: float = 0.0
    arrivals: list[tuple[float, str]] = field(default_factory=list)
    user_agents: set[str] = field(default_factory=set)
    in_flight: int = 0
    peak: int = 0
    url: str = ""

    def put(self, path: str, body: str | bytes, *, status: int = 200, ctype: str = "") -> None:
        data = body.encode() if isinstance(body, str) else body
        self.files[path] = (status, ctype or "text/html; charset=utf-8", data)

    def paths(self) -> list[str]:
        return [p for _, p in self.arrivals]

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.arrivals.append((time.monotonic(), request.path_qs))
        self.user_agents.add(request.headers.get("User-Agent", ""))
        self.in_flight += 1
        self.peak = max(self.peak, self.in_flight)
        try:
            if self.delay:
                await asyncio.sleep(self.delay)
            found = self.files.get(request.path_qs)
            if found is None:
                return web.Response(status=404, text="not here")
            status, ctype, data = found
            if status == 0:
                assert request.transport is not None
                request.transport.abort()
                return web.Response()
            if 300 <= status < 400:
                raise web.HTTPFound(data.decode())
            return web.Response(status=status, body=data, headers={"Content-Type": ctype})
        finally:
            self.in_flight -= 1


@pytest.fixture
async def shop() -> AsyncIterator[Shop]:
    s = Shop()
    app = web.Application()
    app.router.add_route("GET", "/{tail:.*}", s.handle)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    s.url = str(server.make_url("")).rstrip("/")
    try:
        yield s
    finally:
        await server.close()


Collect = Callable[..., Awaitable[list[CrawledPage]]]


@pytest.fixture
def collect(shop: Shop) -> Collect:
    async def go(**kw: object) -> list[CrawledPage]:
        kw.setdefault("rate", 1000.0)
        return [p async for p in crawl(shop.url, public_origin=PUBLIC, **kw)]  # type: ignore[arg-type]

    return go


def standard_shop(shop: Shop) -> None:
    shop.put("/robots.txt", "User-agent: *\nDisallow: /private/\n", ctype="text/plain")
    shop.put("/sitemap.xml", index(f"{shop.url}/maps/a.xml", f"{PUBLIC}/maps/b.xml.gz"))
    shop.put(
        "/maps/a.xml",
        urlset(
            f"{shop.url}/p/1",
            f"{PUBLIC}/p/2",
            f"{shop.url}/p/2",  # the same page under the site's own host: fetched once
            f"{shop.url}/private/secret",
            "https://elsewhere.example/p/9",
            f"{shop.url}/gone",
            f"{shop.url}/removed",
            f"{shop.url}/about",
        ),
        ctype="application/xml",
    )
    gz = gzip.compress(urlset(f"{PUBLIC}/p/3", f"{PUBLIC}/p/4").encode())
    shop.put("/maps/b.xml.gz", gz, ctype="application/x-gzip")
    for n in range(1, 5):
        shop.put(f"/p/{n}", product_page(f"SKU-{n}", price=f"{n}0.5"))
    shop.put("/removed", "gone for good", status=410)
    shop.put("/about", "<html><body>About us</body></html>")


async def test_walks_an_index_a_gzip_sitemap_and_reads_products(
    shop: Shop, collect: Collect
) -> None:
    standard_shop(shop)
    pages = {p.url: p for p in await collect()}
    assert set(pages) == {
        f"{shop.url}/p/1",
        f"{PUBLIC}/p/2",
        f"{PUBLIC}/p/3",
        f"{PUBLIC}/p/4",
        f"{shop.url}/gone",
        f"{shop.url}/removed",
        f"{shop.url}/about",
    }
    for n in range(1, 5):
        page = next(p for u, p in pages.items() if u.endswith(f"/p/{n}"))
        assert page.status == 200 and page.error is None and page.products is not None
        (item,) = page.products.items
        assert (item.id, item.price) == (f"SKU-{n}", f"{n}0.50 EUR")
        assert item.link == f"{PUBLIC}/p/{n}"  # on the public origin, whatever was fetched
        assert item.image_link == f"{PUBLIC}/img/SKU-{n}.jpg"
    assert (pages[f"{shop.url}/gone"].status, pages[f"{shop.url}/gone"].products) == (404, None)
    assert pages[f"{shop.url}/removed"].status == 410
    about = pages[f"{shop.url}/about"].products
    assert about is not None and not about.had_product and about.items == ()
    seen = shop.paths()
    assert "/private/secret" not in seen  # robots.txt
    assert seen.count("/p/2") == 1
    assert seen[0] == "/robots.txt"
    assert shop.user_agents == {"capi-gateway-catalog-crawler"}


async def test_rate_and_concurrency_are_bounded(shop: Shop, collect: Collect) -> None:
    shop.put("/robots.txt", "", ctype="text/plain")
    shop.put("/sitemap.xml", urlset(*(f"{shop.url}/p/{n}" for n in range(12))))
    for n in range(12):
        shop.put(f"/p/{n}", product_page(f"S{n}"))
    shop.delay = 0.15  # long enough for requests to overlap
    pages = await collect(concurrency=3, rate=40.0)
    assert len(pages) == 12
    assert shop.peak == 3  # reached, never passed
    # Arrivals carry scheduling jitter, so the bound is checked over every span: k requests
    # after one never come sooner than k intervals, less one interval of slack.
    starts = [t for t, _ in shop.arrivals]
    for i, a in enumerate(starts):
        for k, b in enumerate(starts[i + 1 :], 1):
            assert b - a >= (k - 1) / 40, (i, k, b - a)


async def test_crawl_delay_is_a_lower_bound_on_the_interval(shop: Shop, collect: Collect) -> None:
    shop.put("/robots.txt", "User-agent: *\nCrawl-delay: 0.3\n", ctype="text/plain")
    shop.put("/sitemap.xml", urlset(*(f"{shop.url}/p/{n}" for n in range(3))))
    for n in range(3):
        shop.put(f"/p/{n}", product_page(f"S{n}"))
    assert len(await collect(concurrency=4, rate=1000.0)) == 3
    # robots.txt, the sitemap and 3 pages, 0.3 s apart; arrivals carry scheduling jitter.
    starts = [t for t, _ in shop.arrivals]
    assert len(starts) == 5
    assert min(b - a for a, b in itertools.pairwise(starts)) >= 0.25
    assert starts[-1] - starts[0] >= 4 * 0.3 - 0.05


async def test_robots_rules_for_our_user_agent(shop: Shop, collect: Collect) -> None:
    shop.put(
        "/robots.txt",
        "User-agent: capi-gateway-catalog-crawler\nDisallow: /p/2\n\nUser-agent: *\nDisallow: /\n",
        ctype="text/plain",
    )
    shop.put("/sitemap.xml", urlset(*(f"{shop.url}/p/{n}" for n in range(1, 4))))
    for n in range(1, 4):
        shop.put(f"/p/{n}", product_page(f"S{n}"))
    got = sorted(p.url for p in await collect())
    assert got == [f"{shop.url}/p/1", f"{shop.url}/p/3"]
    other = [p async for p in crawl(shop.url, public_origin=PUBLIC, user_agent="OtherBot/1.0")]
    assert other == []  # "*" forbids everything to the others


async def test_sitemap_from_robots_when_the_default_is_missing(
    shop: Shop, collect: Collect
) -> None:
    shop.put("/robots.txt", f"Sitemap: {PUBLIC}/maps/main.xml\n", ctype="text/plain")
    shop.put("/maps/main.xml", urlset(f"{PUBLIC}/p/1"))
    shop.put("/p/1", product_page("S1"))
    assert [p.url for p in await collect()] == [f"{PUBLIC}/p/1"]
    assert "/sitemap.xml" in shop.paths()


async def test_an_explicit_sitemap(shop: Shop, collect: Collect) -> None:
    shop.put("/sitemap.xml", urlset(f"{shop.url}/p/1"))
    shop.put("/other.xml", urlset(f"{shop.url}/p/2"))
    shop.put("/p/2", product_page("S2"))
    got = await collect(sitemap="/other.xml")
    assert [p.url for p in got] == [f"{shop.url}/p/2"]


@pytest.mark.parametrize(
    ("setup", "words"),
    [
        ({"/robots.txt": (503, "down")}, "503"),
        ({}, "sitemap"),  # neither sitemap.xml nor a Sitemap line
        ({"/sitemap.xml": (200, "<urlset><url><loc>unclosed")}, "sitemap"),
        (
            {
                "/sitemap.xml": (
                    200,
                    '<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol">'
                    '<!ENTITY lol2 "&lol;&lol;&lol;&lol;">]><urlset><url><loc>&lol2;</loc>'
                    "</url></urlset>",
                )
            },
            "DOCTYPE",
        ),
    ],
)
async def test_crawl_errors_name_the_cause(
    shop: Shop, collect: Collect, setup: dict[str, tuple[int, str]], words: str
) -> None:
    for path, (status, body) in setup.items():
        shop.put(path, body, status=status, ctype="text/plain")
    with pytest.raises(CrawlError, match=words):
        await collect()


async def test_forbidden_robots_txt_forbids_every_page(shop: Shop, collect: Collect) -> None:
    shop.put("/robots.txt", "no", status=403, ctype="text/plain")
    shop.put("/sitemap.xml", urlset(f"{shop.url}/p/1"))
    shop.put("/p/1", product_page("S1"))
    assert await collect() == []
    assert "/p/1" not in shop.paths()


async def test_max_pages(shop: Shop, collect: Collect) -> None:
    shop.put("/sitemap.xml", urlset(*(f"{shop.url}/p/{n}" for n in range(50))))
    for n in range(50):
        shop.put(f"/p/{n}", product_page(f"S{n}"))
    assert len(await collect(max_pages=7)) == 7
    assert sum(p.startswith("/p/") for p in shop.paths()) == 7


async def test_redirects_are_followed_on_the_site_only(shop: Shop, collect: Collect) -> None:
    shop.put("/robots.txt", "User-agent: *\nDisallow: /secret\n", ctype="text/plain")
    shop.put("/sitemap.xml", urlset(f"{shop.url}/old", f"{shop.url}/away", f"{shop.url}/hush"))
    shop.put("/old", "/p/new", status=302)
    shop.put("/away", "https://elsewhere.example/p", status=301)
    shop.put("/hush", "/secret", status=302)
    shop.put("/p/new", product_page("NEW"))
    pages = {p.url: p for p in await collect()}
    moved = pages[f"{shop.url}/old"]
    assert moved.products is not None and [i.id for i in moved.products.items] == ["NEW"]
    away = pages[f"{shop.url}/away"]
    assert away.status == 0 and away.products is None and "off the site" in (away.error or "")
    hush = pages[f"{shop.url}/hush"]
    assert hush.products is None and "disallows" in (hush.error or "")
    assert "/secret" not in shop.paths()


async def test_a_failing_page_is_an_error_not_the_end(shop: Shop, collect: Collect) -> None:
    shop.put("/sitemap.xml", urlset(f"{shop.url}/broken", f"{shop.url}/p/1"))
    shop.put("/p/1", product_page("S1"))
    shop.put("/broken", "", status=0)  # the connection is dropped
    pages = {p.url: p for p in await collect()}
    broken = pages[f"{shop.url}/broken"]
    assert (broken.status, broken.products) == (0, None) and broken.error
    assert pages[f"{shop.url}/p/1"].status == 200


async def test_stopping_early_cancels_the_rest(shop: Shop) -> None:
    shop.put("/sitemap.xml", urlset(*(f"{shop.url}/p/{n}" for n in range(40))))
    for n in range(40):
        shop.put(f"/p/{n}", product_page(f"S{n}"))
    got = []
    async with contextlib.aclosing(
        crawl(shop.url, public_origin=PUBLIC, rate=1000.0, concurrency=2)
    ) as pages:
        async for page in pages:
            got.append(page)
            if len(got) == 2:
                break
    await asyncio.sleep(0.1)  # requests already on the wire may still arrive
    fetched = sum(p.startswith("/p/") for p in shop.paths())
    await asyncio.sleep(0.3)
    assert sum(p.startswith("/p/") for p in shop.paths()) == fetched <= 2 + 2 * 4
    assert not [t for t in asyncio.all_tasks() if t.get_name().startswith("crawl-")]


async def test_connection_refused_is_a_crawl_error() -> None:
    with pytest.raises(CrawlError, match=r"robots\.txt"):
        async for _ in crawl("http://127.0.0.1:9", public_origin=PUBLIC):
            pass


async def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="http"):
        async for _ in crawl("ftp://x", public_origin=PUBLIC):
            pass
    with pytest.raises(ValueError, match="id_source"):
        async for _ in crawl("http://127.0.0.1:9", public_origin=PUBLIC, id_source="name"):
            pass
    with pytest.raises(ValueError, match="concurrency"):
        async for _ in crawl("http://127.0.0.1:9", public_origin=PUBLIC, concurrency=0):
            pass


def test_crawl_delay_parsing() -> None:
    text = """
    User-agent: Googlebot
    Crawl-delay: 9

    User-agent: capi-gateway-catalog-crawler
    User-agent: other
    Disallow: /x
    Crawl-delay: 1.5  # seconds

    User-agent: *
    Crawl-delay: 4
    """
    lines = text.splitlines()
    assert crawl_delay(lines, "capi-gateway-catalog-crawler") == 1.5
    assert crawl_delay(lines, "SomeBot/2.0") == 4
    assert crawl_delay(["User-agent: *", "Crawl-delay: soon"], "x") is None


async def test_crawl_through_the_gateway_in_front_of_the_shop(
    shop: Shop, tmp_path: Path, fake_graph: FakeGraph
) -> None:
    # The CLI crawls through the site as shoppers reach it: here the gateway on loopback.
    standard_shop(shop)
    settings = make_settings(tmp_path, fake_graph.url, upstream=shop.url, dry_run=True)
    async with run_gateway(settings) as front:
        pages = {
            p.url: p
            async for p in crawl(
                front.url, public_origin=PUBLIC, rate=1000.0, sitemap="/maps/a.xml"
            )
        }
    # a.xml names the shop's own host for most pages: those are off the gateway's site...
    assert set(pages) == {f"{PUBLIC}/p/2"}
    page = pages[f"{PUBLIC}/p/2"]
    assert page.products is not None
    assert [(i.id, i.link) for i in page.products.items] == [("SKU-2", f"{PUBLIC}/p/2")]
    # ...and every request reached the shop through the gateway.
    assert shop.paths() == ["/robots.txt", "/maps/a.xml", "/p/2"]


async def test_a_gzip_bomb_sitemap_is_refused_past_50_mib(shop: Shop, collect: Collect) -> None:
    # ~60 MiB of XML inflating from a few dozen KiB: read in bounded pieces, then refused.
    urls = urlset(f"{shop.url}/p/1")
    bomb = urls.replace("</urlset>", "<!-- " + "x" * (60 * 1024 * 1024) + " --></urlset>")
    shop.put("/sitemap.xml", gzip.compress(bomb.encode(), 1), ctype="application/gzip")
    shop.put("/p/1", product_page("S1"))
    got = await collect()
    # The URL before the padding was handed on before the bound was hit.
    assert [p.url for p in got] == [f"{shop.url}/p/1"]


async def test_a_text_sitemap(shop: Shop, collect: Collect) -> None:
    shop.put("/robots.txt", f"Sitemap: {PUBLIC}/sitemap.txt\n", ctype="text/plain")
    lines = f"\ufeff{PUBLIC}/p/1\r\n  {PUBLIC}/p/2\nnot a url\n{PUBLIC}/p/3"
    shop.put("/sitemap.txt", lines, ctype="text/plain")
    for n in (1, 2, 3):
        shop.put(f"/p/{n}", product_page(f"S{n}"))
    got = sorted(p.url for p in await collect())
    assert got == [f"{PUBLIC}/p/1", f"{PUBLIC}/p/2", f"{PUBLIC}/p/3"]
