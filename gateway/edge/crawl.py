"""Walks a site's sitemap politely and reads each page's products: site URL in, CrawledPage out.

`crawl` is what `capi-gateway catalog crawl` runs so a new catalog starts full, including
products nobody has visited yet. It fetches through the site it is given (the gateway or
the upstream), never through the hosts a sitemap happens to name: a listed URL on the site's
host or on the public origin is fetched from the site, others are skipped.

Politeness: `robots.txt` is read first (`urllib.robotparser`: Disallow for our user agent or
`*`, `Crawl-delay` as a lower bound on the interval between requests; 401/403 there forbid
everything, a 5xx or no answer stops the crawl, as it is no permission). Every request —
robots, sitemaps, pages, redirects — waits its turn in one token bucket of `rate` per second
(burst 1) and at most `concurrency` are in flight.

Memory stays bounded however big the site: a sitemap is downloaded to a temporary file
(at most 50 MiB; handing its URLs on at the crawl's rate may take hours, longer than any
server keeps a response open) and parsed from there in pieces (gzip too), each listed URL
goes into a small queue that the page workers drain, a page body is only read up to the
product reader's bound, and what is kept per URL is an 8-byte digest (to skip duplicates)
for at most `max_pages` pages. Parsing sitemaps and robots.txt
text is gateway.edge.sitemaps' job (no I/O there).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import tempfile
import urllib.robotparser
import zlib
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import IO
from urllib.parse import urljoin
from xml.etree.ElementTree import ParseError

import aiohttp

from gateway.edge.crawlfetch import Bucket, CrawlError, Fetcher, Site, read_robots, site_origin
from gateway.edge.sitemaps import SITEMAP_MAX, SitemapReader
from gateway.html.products import ProductReader
from gateway.pipeline.catalog import ID_SOURCES, PageProducts, products_from_page

__all__ = ["CrawlError", "CrawledPage", "crawl"]

log = logging.getLogger("gateway.crawl")

_MAX_SITEMAPS = 50_000  # per crawl, index entries included
_HTML = ("text/html", "application/xhtml+xml")
_CHUNK = 65_536


@dataclass(frozen=True, slots=True)
class CrawledPage:
    """One page the crawl fetched (or tried to).

    `url` is the page's URL as the sitemap lists it. `products` is None when the page was not
    read (not 2xx, not HTML, or `error`); `error` names a network failure or timeout
    (`status` 0 then). A 404/410 comes back with its status and no error.
    """

    url: str
    status: int
    products: PageProducts | None
    error: str | None


async def _walk_sitemaps(
    fetch: Fetcher,
    first: str,
    fallback: list[str],
    pages: asyncio.Queue[str | None],
    robots: urllib.robotparser.RobotFileParser,
    user_agent: str,
    max_pages: int,
) -> None:
    """Put each allowed, new, on-site page URL of the sitemaps into `pages`.

    `fallback` (robots.txt's Sitemap lines) is read when `first` cannot be; CrawlError when
    no sitemap at all could be read.
    """
    pending: deque[str] = deque([first])
    seen_maps: set[str] = set()
    seen_pages: set[bytes] = set()
    found: deque[str] = deque()
    read = 0
    problem = ""
    while pending and len(seen_pages) < max_pages:
        listed = pending.popleft()
        url = fetch.site.local(urljoin(fetch.site.base + "/", listed))
        if url is None or url in seen_maps or len(seen_maps) >= _MAX_SITEMAPS:
            continue
        seen_maps.add(url)

        def child(loc: str) -> None:
            if len(pending) + len(seen_maps) < _MAX_SITEMAPS:
                pending.append(loc)

        reader = SitemapReader(found.append, child)
        try:
            with tempfile.TemporaryFile() as spool:
                await _download(fetch, url, spool)
                # Parsed from disk, not from the socket: handing 50,000 URLs on at the crawl's
                # rate takes hours, far longer than any server keeps a response open.
                while chunk := spool.read(_CHUNK):
                    for _ in reader.feed(chunk):
                        while found:  # hand URLs on as they come, waiting when workers lag
                            loc = found.popleft()
                            if not await _offer(
                                loc, pages, fetch, robots, user_agent, seen_pages, max_pages
                            ):
                                return
                reader.close()
            read += 1
        except (aiohttp.ClientError, TimeoutError, ValueError, ParseError, zlib.error) as e:
            problem = f"sitemap {listed} could not be read: {e or type(e).__name__}"
            if reader.listed:  # cut short: what it listed so far still counts
                read += 1
                log.warning("Sitemap %r was read only in part: %s", listed, e)
            elif read or listed != first:
                log.warning("Sitemap %r could not be read: %s", listed, e)
            elif fallback:
                pending.extend(fallback)  # robots.txt names others: read those instead
        while found:
            if not await _offer(
                found.popleft(), pages, fetch, robots, user_agent, seen_pages, max_pages
            ):
                return
    if not read:
        raise CrawlError(problem or "no sitemap to read")


async def _download(fetch: Fetcher, url: str, spool: IO[bytes]) -> None:
    """The body of a sitemap into `spool` (rewound), at most SITEMAP_MAX bytes as sent."""
    async with fetch.get(url, "application/xml, text/xml, */*") as resp:
        if resp.status != 200:
            raise ValueError(f"it answered {resp.status}")
        size = 0
        async for chunk in resp.content.iter_chunked(_CHUNK):
            size += len(chunk)
            if size > SITEMAP_MAX:
                raise ValueError(f"it is bigger than {SITEMAP_MAX} bytes")
            spool.write(chunk)
    spool.seek(0)


async def _offer(
    loc: str,
    pages: asyncio.Queue[str | None],
    fetch: Fetcher,
    robots: urllib.robotparser.RobotFileParser,
    user_agent: str,
    seen: set[bytes],
    max_pages: int,
) -> bool:
    """Queue one listed page if it is on the site, allowed and new; False: max_pages reached."""
    if len(seen) >= max_pages:
        return False
    url = fetch.site.local(loc)
    if url is None:
        return True
    key = hashlib.blake2b(url.encode("utf-8"), digest_size=8).digest()
    if key in seen:
        return True
    if not robots.can_fetch(user_agent, url):
        log.debug("robots.txt disallows %r", url)
        return True
    seen.add(key)
    await pages.put(loc)
    return True


def _charset(content_type: str) -> str:
    for param in content_type.split(";")[1:]:
        name, _, value = param.partition("=")
        if name.strip().lower() == "charset":
            return value.strip().strip('"') or "utf-8"
    return "utf-8"


async def _page(fetch: Fetcher, loc: str, public_origin: str, id_source: str) -> CrawledPage:
    url = fetch.site.local(loc)
    assert url is not None
    try:
        async with fetch.get(url, "text/html, application/xhtml+xml") as resp:
            media = resp.headers.get("Content-Type", "")
            if not 200 <= resp.status < 300 or media.split(";")[0].strip().lower() not in _HTML:
                return CrawledPage(loc, resp.status, None, None)
            reader = ProductReader(charset=_charset(media))
            left = 2_000_000  # ProductReader's default bound: nothing past it is read
            async for chunk in resp.content.iter_chunked(_CHUNK):
                reader.feed(chunk)
                left -= len(chunk)
                if left <= 0:
                    break
            status = resp.status
        products = products_from_page(
            reader.close(), url=loc, public_origin=public_origin, id_source=id_source
        )
        return CrawledPage(loc, status, products, None)
    except (aiohttp.ClientError, TimeoutError) as e:
        return CrawledPage(loc, 0, None, str(e) or type(e).__name__)


async def crawl(
    site_url: str,
    *,
    public_origin: str,
    sitemap: str | None = None,
    concurrency: int = 4,
    rate: float = 10.0,
    max_pages: int = 50_000,
    user_agent: str = "capi-gateway-catalog-crawler",
    id_source: str = "sku",
    session: aiohttp.ClientSession | None = None,
) -> AsyncIterator[CrawledPage]:
    """Fetch every page the site's sitemap lists (robots.txt permitting), yielding each.

    `site_url` is where requests go (scheme://host[:port]); `public_origin` the origin
    shoppers use (item links, and listed URLs on it are fetched from `site_url`). The
    sitemap is `sitemap` if given, else `{site_url}/sitemap.xml`, else robots.txt's
    `Sitemap:` lines; index files and gzip are followed. Pages come back in completion
    order. CrawlError when robots.txt or every sitemap cannot be read. Close the iterator
    when stopping early (`contextlib.aclosing`): that cancels the fetches still running.
    """
    if concurrency < 1 or rate <= 0 or max_pages < 1:
        raise ValueError("concurrency and max_pages must be at least 1 and rate above 0")
    if id_source not in ID_SOURCES:
        raise ValueError(f"id_source must be one of {', '.join(ID_SOURCES)}, not {id_source!r}")
    base_scheme, base_host = site_origin(site_url)
    site = Site(
        f"{base_scheme}://{base_host}",
        frozenset({(base_scheme, base_host), site_origin(public_origin)}),
    )
    own = session is None
    http = session or aiohttp.ClientSession()
    tasks: list[asyncio.Task[None]] = []
    try:
        bucket = Bucket(1.0 / rate)
        fetch = Fetcher(http, site, bucket, user_agent)
        robots, delay = await read_robots(fetch)
        fetch.allowed = lambda url: robots.can_fetch(user_agent, url)
        if delay is not None:
            bucket.at_least(delay)
        first = sitemap or site.base + "/sitemap.xml"
        fallback = [] if sitemap else list(robots.site_maps() or [])
        pages: asyncio.Queue[str | None] = asyncio.Queue(maxsize=concurrency * 4)
        results: asyncio.Queue[CrawledPage | BaseException | None] = asyncio.Queue(
            maxsize=concurrency * 2
        )

        # Sentinels are queued only on the way out of a normal end or a failure: a cancelled
        # task must not wait on a full queue nobody reads any more.
        async def walker() -> None:
            try:
                await _walk_sitemaps(fetch, first, fallback, pages, robots, user_agent, max_pages)
            except Exception as e:  # CrawlError, or a bug: the caller sees it
                await results.put(e)
            for _ in range(concurrency):
                await pages.put(None)

        async def worker() -> None:
            try:
                while (loc := await pages.get()) is not None:
                    await results.put(await _page(fetch, loc, public_origin, id_source))
            except Exception as e:
                await results.put(e)
            await results.put(None)

        tasks.append(asyncio.create_task(walker(), name="crawl-sitemaps"))
        tasks += [asyncio.create_task(worker(), name=f"crawl-page-{i}") for i in range(concurrency)]
        running = concurrency
        while running:
            got = await results.get()
            if got is None:
                running -= 1
            elif isinstance(got, BaseException):
                raise got
            else:
                yield got
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if own:
            await http.close()
