"""Proxied product pages in, catalog item state out — read as the page streams, stored later.

For a site with a `[catalog]`, a GET answered 200 with HTML on a path its `pages` globs
allow (default: every page) gets a `ProductReader` fed the decoded body as it passes; when
the body has gone by, the page's products are extracted and upserted by one background
task per site, through a bounded queue (full: the page is dropped and counted, never
delayed), up to `BATCH` pages per store transaction. A URL is read at most once a minute,
and a page showing what it showed last time writes nothing: steady traffic costs a dict
lookup per page. A 404/410 for a URL a product was seen at counts a miss (deleted after
`delete_after` in a row); a 5xx or a timeout counts nothing. A fully read 200 page of a
known product URL that no longer carries the product deletes it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from aiohttp import web
from multidict import CIMultiDict

from gateway.catalogsettings import CatalogSettings
from gateway.delivery.catalogstate import PageSeen, Seen
from gateway.delivery.store import CatalogStore
from gateway.edge import headers as hdr
from gateway.edge.encoding import Decoder, open_decoder
from gateway.edge.visitor import visitor
from gateway.html.products import PageData, ProductReader
from gateway.metrics import Metrics
from gateway.pipeline.catalog import products_from_page

log = logging.getLogger("gateway.catalog")

_MISS_STATUS = frozenset({404, 410})
QUEUE_SIZE = 256
BATCH = 64  # pages recorded per store transaction
_REFRESH = 60.0  # seconds between re-reads of the known product URLs (other replicas add)
# A page seen again unchanged is not written again for this long (its last_seen may lag by
# as much); the most recent pages are remembered, up to `_RECENT_MAX`.
_RECHECK = 300.0
_RECENT_MAX = 10_000
# A URL read less than this long ago is not read again: a product's change is then seen
# within a minute of it (sends wait out `min_interval` anyway), and a popular page costs one
# read a minute instead of one per view. Never longer than `min_interval`.
REREAD_AFTER = 60.0
MAX_PAGE_BYTES = 2_000_000


@dataclass(frozen=True, slots=True)
class _Page:
    url: str
    request_url: str
    origin: str
    page: PageData
    ended: bool


@dataclass(frozen=True, slots=True)
class _Miss:
    url: str


class CatalogTap:
    """Reads one response's body for products; `finish` hands what it read over."""

    __slots__ = ("_decoder", "_ended", "_origin", "_pages", "_reader", "_request_url", "_url")

    def __init__(
        self,
        pages: CatalogPages,
        reader: ProductReader,
        decoder: Decoder | None,
        *,
        url: str,
        request_url: str,
        origin: str,
    ) -> None:
        self._pages = pages
        self._reader: ProductReader | None = reader
        self._decoder = decoder
        self._url = url
        self._request_url = request_url
        self._origin = origin
        self._ended = False

    def decoded(self, piece: bytes) -> None:
        """A piece of the decoded body (from the page rewriter's tap)."""
        reader = self._reader
        if reader is not None:
            try:
                reader.feed(piece)
            except Exception:
                self._give_up()

    def raw(self, chunk: bytes) -> None:
        """A chunk as the origin sent it (decoded here when it is compressed)."""
        reader = self._reader
        if reader is None:
            return
        try:
            if self._decoder is None:
                reader.feed(chunk)
            else:
                for piece in self._decoder.feed(chunk):
                    reader.feed(piece)
        except Exception:
            self._give_up()

    def ended(self) -> None:
        """The whole body went by (not cut off by the site or the visitor)."""
        self._ended = True

    def _give_up(self) -> None:
        # Reading a page must never break it: stop reading, and delete nothing for it.
        log.exception("Reading %s for products failed.", self._url)
        self._reader = None

    def finish(self) -> None:
        """The response is over: queue the page for extraction (never raises)."""
        reader, self._reader = self._reader, None
        if reader is None:
            return
        try:
            page = reader.close()
        except Exception:
            log.exception("Reading %s for products failed.", self._url)
            return
        self._pages.submit(_Page(self._url, self._request_url, self._origin, page, self._ended))


class CatalogPages:
    """One site's catalog reader: which responses to read, and the task that stores them."""

    def __init__(
        self,
        site: str,
        settings: CatalogSettings | None,
        store: CatalogStore,
        *,
        metrics: Metrics,
        wake: Callable[[], None] = lambda: None,
        queue_size: int = QUEUE_SIZE,
    ) -> None:
        self.site = site
        self.settings = settings
        self.store = store
        self.metrics = metrics
        self._wake = wake
        self._queue: asyncio.Queue[_Page | _Miss] = asyncio.Queue(maxsize=queue_size)
        self._known: set[str] = set()
        self._known_at = 0.0
        self._task: asyncio.Task[None] | None = None
        self._recent: OrderedDict[str, tuple[frozenset[tuple[str, str]], float]] = OrderedDict()
        self._read_at: OrderedDict[str, float] = OrderedDict()
        self.reread_after = REREAD_AFTER
        self.dropped = 0
        self._loading: asyncio.Task[None] | None = None

    def configure(self, settings: CatalogSettings | None) -> None:
        """Swap in reloaded `[catalog]` settings (None: the site has no catalog any more)."""
        self.settings = settings

    async def load(self) -> None:
        """Read the URLs products were seen at (so a 404 there counts from the start)."""
        try:
            # Added to, never replaced: URLs recorded while the read ran stay known.
            self._known |= await self.store.known_urls(self.site)
            self._known_at = time.time()
        except Exception as exc:
            log.error("Reading the catalog's product URLs failed: %s", exc)

    # on the request path (cheap) -----------------------------------------------------------

    def tap(
        self, request: web.Request, status: int, headers: CIMultiDict[str], *, no_body: bool
    ) -> CatalogTap | None:
        """A reader for this response when it may carry products; counts a 404/410 miss."""
        settings = self.settings
        if settings is None or request.method != "GET":
            return None
        if self._known_at == 0.0 and self._loading is None:
            self._loading = asyncio.get_running_loop().create_task(
                self.load(), name="catalog-known-urls"
            )
        if status in _MISS_STATUS:
            url = _page_url(request)
            if url in self._known or self._known_at == 0.0:
                # Until the known URLs are read (just after start), ask the store.
                self.submit(_Miss(url))
            return None
        if status != 200 or no_body or hdr.media_type(headers) not in hdr.HTML_TYPES:
            return None
        if not settings.wants(request.path):
            return None
        decoder = open_decoder(headers.get("Content-Encoding"))
        if decoder is None and headers.get("Content-Encoding", "identity").lower() != "identity":
            return None  # an encoding we cannot read (zstd, stacked)
        url = _page_url(request)
        now = time.monotonic()
        last = self._read_at.get(url)
        if last is not None and now - last < min(self.reread_after, settings.min_interval):
            return None
        self._read_at[url] = now
        self._read_at.move_to_end(url)
        if len(self._read_at) > _RECENT_MAX:
            self._read_at.popitem(last=False)
        who = visitor(request)
        return CatalogTap(
            self,
            ProductReader(
                max_bytes=MAX_PAGE_BYTES,
                charset=hdr.content_type_param(headers, "charset") or "utf-8",
            ),
            decoder,
            url=url,
            request_url=who.origin + request.raw_path,
            origin=who.origin,
        )

    def submit(self, job: _Page | _Miss) -> None:
        """Queue a job for the background task; a full queue drops it (counted)."""
        try:
            self._queue.put_nowait(job)
        except asyncio.QueueFull:
            self.dropped += 1
            self.metrics.catalog_page("dropped")
            # Not read after all: the URL's next view reads it again.
            self._read_at.pop(job.url, None)
            return
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(
                self._work(), name=f"catalog-pages-{self.site or 'default'}"
            )

    # in the background ------------------------------------------------------------------

    async def _work(self) -> None:
        while not self._queue.empty():
            jobs = [self._queue.get_nowait() for _ in range(min(BATCH, self._queue.qsize()))]
            try:
                await self._handle(jobs)
            except Exception as exc:
                self.metrics.catalog_page("failed")
                log.error("Recording the products of %d page(s) failed: %s", len(jobs), exc)
                for job in jobs:
                    self._read_at.pop(job.url, None)
            finally:
                for _ in jobs:
                    self._queue.task_done()

    async def _handle(self, jobs: list[_Page | _Miss]) -> None:
        settings = self.settings
        if settings is None:
            return
        now = time.time()
        if now - self._known_at > _REFRESH:
            self._known |= await self.store.known_urls(self.site)
            self._known_at = now
        pages: list[PageSeen] = []
        shown: list[frozenset[tuple[str, str]]] = []
        for job in jobs:
            if isinstance(job, _Miss):
                await self._missed(job.url, settings, now)
                continue
            page = self._extract(job, settings, now)
            if page is not None:
                pages.append(page)
                shown.append(frozenset((i.item_id, i.content_hash) for i in page.items))
        if not pages:
            return
        # The batch's pages in one transaction: a burst of new pages (a crawler, a launch)
        # costs one write per batch, not one per page.
        results = await self.store.seen_pages(
            self.site, pages, now=now, min_interval=settings.min_interval
        )
        wake = False
        for page, items, result in zip(pages, shown, results, strict=True):
            self._recent[page.url] = (items, now)
            self._recent.move_to_end(page.url)
            if page.items:
                self._known.add(page.url)
            wake = wake or bool(result.new or result.changed or result.removed)
        while len(self._recent) > _RECENT_MAX:
            self._recent.popitem(last=False)
        if wake:
            self._wake()

    async def _missed(self, url: str, settings: CatalogSettings, now: float) -> None:
        self._recent.pop(url, None)
        self._read_at.pop(url, None)
        deleted = await self.store.missed(
            self.site, url, now=now, delete_after=settings.delete_after
        )
        if deleted:
            log.info("Product(s) %s gone from %s: deleting them.", ", ".join(deleted), url)
            self._wake()

    def _extract(self, job: _Page, settings: CatalogSettings, now: float) -> PageSeen | None:
        """The page's products to record, or None when there is nothing to write."""
        self.metrics.catalog_page("read")
        found = products_from_page(
            job.page, url=job.request_url, public_origin=job.origin, id_source=settings.id_source
        )
        if not found.items and job.url not in self._known:
            return None  # a page with no product, and none was ever seen here
        for problem in found.problems:
            log.info("A product on %s gave no catalog item: %s", job.url, problem)
        seen = [Seen(i.id, i.content_hash(), i.data()) for i in found.items]
        recent = self._recent.get(job.url)
        if (
            recent is not None
            and recent[0] == frozenset((i.item_id, i.content_hash) for i in seen)
            and now - recent[1] < _RECHECK
        ):
            return None  # what it showed a moment ago: nothing to write (the common case)
        complete = job.ended and not job.page.truncated and not found.problems
        return PageSeen(job.url, seen, complete)

    async def drain(self) -> None:
        """Wait until every queued page is stored (shutdown, tests)."""
        while self._task is not None and not self._task.done():
            await asyncio.wait({self._task})

    async def close(self) -> None:
        """Finish what is queued, within a few seconds."""
        if self._loading is not None and not self._loading.done():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._loading), 5.0)
        if self._task is not None and not self._task.done():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._task), 5.0)


def _page_url(request: web.Request) -> str:
    """The page's URL as products are keyed: public origin and path, without the query."""
    return visitor(request).origin + request.raw_path.partition("?")[0]
