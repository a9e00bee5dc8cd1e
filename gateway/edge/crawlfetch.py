"""The crawl's polite fetching: one token bucket for every request, redirects kept on the
site, and robots.txt read first (see `gateway.edge.crawl` for the politeness it promises).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import urllib.robotparser
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from urllib.parse import urljoin, urlsplit, urlunsplit

import aiohttp

from gateway.edge.sitemaps import crawl_delay

_ROBOTS_MAX = 512_000  # what Google reads of a robots.txt
_MAX_REDIRECTS = 5
_PAGE_TIMEOUT = aiohttp.ClientTimeout(total=60, sock_connect=10, sock_read=30)


class CrawlError(Exception):
    """The crawl cannot start: robots.txt or the sitemap could not be read (the message says)."""


class Bucket:
    """Token bucket of one token: requests start at least `interval` seconds apart."""

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self._next = 0.0
        self._last = 0.0
        self._lock = asyncio.Lock()

    def at_least(self, interval: float) -> None:
        """Space requests at least `interval` apart from now on, the last one included."""
        if interval > self.interval:
            self.interval = interval
            self._next = max(self._next, self._last + interval)

    async def turn(self) -> None:
        """Wait until this request may start."""
        async with self._lock:
            now = time.monotonic()
            slot = max(now, self._next)
            self._last, self._next = slot, slot + self.interval
        if slot > now:
            await asyncio.sleep(slot - now)


@dataclass(slots=True)
class Site:
    """Where requests go, and which listed URLs belong to the site."""

    base: str  # scheme://host[:port] requests go to
    hosts: frozenset[tuple[str, str]]  # (scheme, netloc) a listed URL may name

    def local(self, url: str) -> str | None:
        """The URL to fetch for a listed one (moved onto the site), None if off-site."""
        try:
            parts = urlsplit(url.strip())
        except ValueError:
            return None
        if (parts.scheme.lower(), parts.netloc.lower()) not in self.hosts:
            return None
        b = urlsplit(self.base)
        return urlunsplit((b.scheme, b.netloc, parts.path or "/", parts.query, ""))


def site_origin(url: str) -> tuple[str, str]:
    """(scheme, host) of an http(s) URL, lowercased; ValueError for anything else."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"{url!r} is not an http(s) URL with a host")
    return parts.scheme.lower(), parts.netloc.lower()


class Fetcher:
    """GETs on one site, each waiting its turn in the bucket, redirects kept on the site."""

    def __init__(
        self, session: aiohttp.ClientSession, site: Site, bucket: Bucket, user_agent: str
    ) -> None:
        self.session = session
        self.site = site
        self.bucket = bucket
        self.headers = {"User-Agent": user_agent}
        self.allowed: Callable[[str], bool] = lambda url: True  # robots.txt, once read

    @contextlib.asynccontextmanager
    async def get(self, url: str, accept: str) -> AsyncIterator[aiohttp.ClientResponse]:
        """GET `url`, following redirects that stay on the site (each one waits its turn)."""
        headers = {**self.headers, "Accept": accept}
        for _ in range(_MAX_REDIRECTS + 1):
            await self.bucket.turn()
            resp = await self.session.get(
                url, headers=headers, allow_redirects=False, timeout=_PAGE_TIMEOUT
            )
            location = resp.headers.get("Location")
            if resp.status in (301, 302, 303, 307, 308) and location:
                resp.release()
                nxt = self.site.local(urljoin(url, location))
                if nxt is None:
                    raise aiohttp.ClientError(f"redirect off the site to {location!r}")
                if not self.allowed(nxt):
                    raise aiohttp.ClientError(
                        f"redirect to {location!r}, which robots.txt disallows"
                    )
                url = nxt
                continue
            try:
                yield resp
            finally:
                resp.release()
            return
        raise aiohttp.ClientError(f"more than {_MAX_REDIRECTS} redirects")


async def read_robots(
    fetch: Fetcher,
) -> tuple[urllib.robotparser.RobotFileParser, float | None]:
    """robots.txt read and its Crawl-delay; 401/403 forbid everything, a 5xx is CrawlError."""
    rp = urllib.robotparser.RobotFileParser()
    delay: float | None = None
    url = fetch.site.base + "/robots.txt"
    try:
        async with fetch.get(url, "text/plain") as resp:
            if resp.status in (401, 403):
                rp.parse(["User-agent: *", "Disallow: /"])
            elif resp.status >= 500:
                raise CrawlError(f"{url} answered {resp.status}: no permission to crawl")
            elif resp.status < 300:
                body = await resp.content.read(_ROBOTS_MAX)
                lines = body.decode("utf-8", "replace").splitlines()
                rp.parse(lines)
                delay = crawl_delay(lines, fetch.headers["User-Agent"])
            else:
                rp.parse([])
    except (aiohttp.ClientError, TimeoutError) as e:
        raise CrawlError(f"{url} could not be read ({e or type(e).__name__})") from e
    return rp, delay
