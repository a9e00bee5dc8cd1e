"""Collects what a page says about its products while the body streams past: bytes in, PageData out.

`ProductReader` is fed the decoded body chunk by chunk (as the proxy forwards it, or as the
crawler downloads it) and keeps only what a product extractor needs:

* the raw text of each `<script type="application/ld+json">` (raw, so a broken one can be
  named as a problem rather than silently skipped),
* `og:*` / `product:*` meta tags and `rel=canonical`,
* microdata: each top-level `itemscope` as a nested dict.

JSON-LD, meta tags and the canonical link come from the rules' streaming scanner
(`gateway.html.scan.HtmlScan`), so tokenizing follows the browser there. Microdata needs the
element tree (nesting and text content), which that scanner deliberately does not build;
`gateway.html.microdata.MicrodataWalker` walks the tags with the same tokenizer regexes,
switched on at an `itemscope` tag and off once no element is open: a page without
microdata costs one substring search per chunk, one with a product block pays for the block.

Bounded: past `max_bytes` nothing more is read (`truncated`); JSON-LD beyond
`max_json_ld_bytes` in total is dropped (`truncated`); microdata has the walker's bounds
(`truncated` when one is hit). Results do not depend on how the body is chunked.

Cost: reading is one more streaming scan of the page, about a third more CPU than the rules'
scanner alone (bench/bench_crawl.py); a proxy need not read every view of a page it read a
moment ago.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from gateway.html.microdata import MicrodataWalker
from gateway.html.query import parse_selector
from gateway.html.scan import HtmlScan, Wants
from gateway.html.tokens import codec_name, unwrap

__all__ = ["META_NAMES", "PageData", "ProductReader", "read_page"]

# Open Graph product tags (and the og:price:* variant Shopify themes emit).
META_NAMES = frozenset(
    {
        "og:type", "og:title", "og:description", "og:url", "og:image", "og:image:url",
        "og:image:secure_url", "og:price:amount", "og:price:currency", "og:availability",
        "og:brand", "product:price:amount", "product:price:currency",
        "product:sale_price:amount", "product:sale_price:currency",
        "product:original_price:amount", "product:original_price:currency",
        "product:retailer_item_id", "product:retailer_part_no", "product:availability",
        "product:condition", "product:brand", "product:item_group_id", "product:gtin",
        "product:upc", "product:ean", "product:isbn", "product:mfr_part_no",
    }
)  # fmt: skip
_CANONICAL = parse_selector("link[rel~=canonical]")
_WANTS = Wants(meta=META_NAMES, jsonld=True, selectors=(_CANONICAL,))
_LOOKBACK = 4096  # how far before "itemscope" its tag may start


@dataclass(frozen=True, slots=True)
class PageData:
    """What a page declares about its products, unparsed enough to judge it later."""

    json_ld: tuple[str, ...]  # raw text of each <script type="application/ld+json">
    microdata: tuple[Mapping[str, Any], ...]  # each top-level itemscope as a nested dict
    meta: tuple[tuple[str, str], ...]  # (property or name, content) of og:* / product:* tags
    canonical: str | None
    truncated: bool  # a bound was hit


class _Scan(HtmlScan):
    """The rules' scanner, keeping JSON-LD as text instead of parsing it."""

    __slots__ = ("ld_added", "ld_budget", "ld_bytes", "ld_opened", "ld_over", "ld_raw")

    def __init__(self, *, charset: str, max_bytes: int, max_item: int) -> None:
        super().__init__(_WANTS, charset=charset, max_bytes=max_bytes, max_item=max_item)
        self.ld_raw: list[str] = []
        self.ld_bytes = 0
        self.ld_budget = max_item
        self.ld_over = False
        self.ld_opened = self.ld_added = 0

    @property
    def ld_dropped(self) -> bool:
        """A JSON-LD script was too big to keep (the scanner skips those silently)."""
        return self.ld_over or self.ld_opened > self.ld_added

    def _enter_special(self, name: bytes, *, ld: bool) -> None:
        self.ld_opened += ld
        super()._enter_special(name, ld=ld)

    def _add_jsonld(self, raw: bytes | bytearray) -> None:
        self.ld_added += 1
        self.ld_bytes += len(raw)
        if self.ld_bytes > self.ld_budget:
            self.ld_over = True
            return
        self.ld_raw.append(unwrap(self._text(raw)))


class ProductReader:
    """Feed decoded HTML in any chunking; `close` gives the page's product declarations."""

    __slots__ = (
        "_charset", "_cut", "_from", "_max_bytes", "_md", "_on", "_pending", "_scan", "_seen",
        "_tail",
    )  # fmt: skip

    def __init__(
        self,
        *,
        max_bytes: int = 2_000_000,
        max_json_ld_bytes: int = 512_000,
        charset: str = "utf-8",
    ) -> None:
        self._charset = codec_name(charset)
        self._max_bytes = max_bytes
        self._scan = _Scan(
            charset=self._charset, max_bytes=max_bytes, max_item=max(16, max_json_ld_bytes)
        )
        self._seen = 0
        self._tail = b""  # the last bytes before the chunk, while looking for itemscope
        self._from = 0  # where in the tail that search goes on
        self._cut = False
        self._md = MicrodataWalker(self._charset)
        self._on = False  # the microdata walker is reading (an item is open)
        self._pending = b""  # an unfinished token it waits to see whole

    def feed(self, chunk: bytes) -> None:
        """Read the next piece of the body (decoded from any Content-Encoding)."""
        if not chunk:
            return
        room = self._max_bytes - self._seen
        if len(chunk) > room:
            self._cut = True
            if room <= 0:
                return
            chunk = chunk[:room]
        self._seen += len(chunk)
        self._scan.feed(chunk)
        data = chunk
        while data:
            data = self._parse(data) if self._on else self._search(data)

    def _search(self, chunk: bytes) -> bytes:
        """Look for the next itemscope; from its tag on, the bytes for the parser (or b"")."""
        data = self._tail + chunk if self._tail else chunk
        pos = self._from
        # A lowercased copy and plain finds: a case-insensitive regex costs ten times as much,
        # on every page.
        low = data.lower()
        while (at := low.find(b"itemscope", pos)) >= 0:
            start = data.rfind(b"<", max(0, at - _LOOKBACK), at)
            if start >= 0:
                self._on, self._tail, self._from = True, b"", 0
                self._md.reset()
                return data[start:]
            pos = at + 9  # no tag start near enough: a stray word, look further
        # Keep enough to find the tag of an "itemscope" that starts in the next chunk.
        cut = max(0, len(data) - _LOOKBACK - 16)
        self._tail = data[cut:]
        self._from = max(pos, len(data) - 8) - cut
        return b""

    def _parse(self, chunk: bytes) -> bytes:
        """Microdata walker on; once no element is open, the bytes left to search (or b"")."""
        data = self._pending + chunk if self._pending else chunk
        md, p, n = self._md, 0, len(data)
        while p < n:
            q = md.step(data, p)
            if q < 0:
                break
            p = q
            if md.idle:  # back to the cheap search: the walk costs more per byte
                self._on, self._pending = False, b""
                return data[p:]
        self._pending = data[p:]
        return b""

    def close(self) -> PageData:
        """End of the body (or of what will be read of it): everything collected."""
        found = self._scan.finish()
        walker = self._md
        if self._on:
            data, p = self._pending, 0
            while p < len(data):
                p = walker.step(data, p, final=True)  # never -1 when final
            walker.finish()
            self._on, self._pending = False, b""
        md: tuple[Mapping[str, Any], ...] = tuple(walker.items)
        over = self._scan.ld_dropped or walker.over
        meta = tuple((name, v) for name in sorted(found.meta) for v in found.meta[name])
        canonical = next(
            (h for e in found.elements.get(_CANONICAL, []) if (h := e.get("href", "").strip())),
            None,
        )
        return PageData(
            json_ld=tuple(self._scan.ld_raw),
            microdata=md,
            meta=meta,
            canonical=canonical,
            truncated=found.truncated or over or self._cut,
        )


def read_page(body: bytes, **bounds: int) -> PageData:
    """Read a whole body at once (tests, the CLI): `ProductReader(**bounds)` fed one chunk."""
    unknown = set(bounds) - {"max_bytes", "max_json_ld_bytes"}
    if unknown:
        raise TypeError(f"read_page() got unknown bounds: {', '.join(sorted(unknown))}")
    reader = ProductReader(
        max_bytes=bounds.get("max_bytes", 2_000_000),
        max_json_ld_bytes=bounds.get("max_json_ld_bytes", 512_000),
    )
    reader.feed(body)
    return reader.close()
