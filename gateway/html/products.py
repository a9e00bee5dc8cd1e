"""Collects what a page says about its products while the body streams past: bytes in, PageData out.

`ProductReader` is fed the decoded body chunk by chunk (as the proxy forwards it, or as the
crawler downloads it) and keeps only what a product extractor needs:

* the raw text of each `<script type="application/ld+json">` (raw, so a broken one can be
  named as a problem rather than silently skipped),
* `og:*` / `product:*` meta tags and `rel=canonical`,
* microdata: each top-level `itemscope` as a nested dict.

JSON-LD, meta tags and the canonical link come from the rules' streaming scanner
(`gateway.html.scan.HtmlScan`), so tokenizing follows the browser there. Microdata needs the
element tree (nesting and text content), which that scanner deliberately does not build; the
stdlib `html.parser` reads it instead, but only from the first tag carrying `itemscope`:
a page without microdata costs one substring search per chunk.

Bounded: past `max_bytes` nothing more is read (`truncated`); JSON-LD beyond
`max_json_ld_bytes` in total is dropped (`truncated`); microdata keeps at most
`_MAX_ITEMS` items, `_MAX_VALUES` values each and `_MAX_TEXT` characters per value.
Results do not depend on how the body is chunked.
"""

from __future__ import annotations

import codecs
from collections.abc import Mapping
from dataclasses import dataclass
from html.parser import HTMLParser
from typing import Any

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
_SLICE = 4096  # characters the microdata parser reads before checking it may stop
_LOOKBACK = 4096  # how far before "itemscope" its tag may start
_MAX_ITEMS = 50
_MAX_VALUES = 200
_MAX_TEXT = 10_000
_MAX_DEPTH = 64


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

    __slots__ = ("ld_budget", "ld_bytes", "ld_over", "ld_raw")

    def __init__(self, *, charset: str, max_bytes: int, max_item: int) -> None:
        super().__init__(_WANTS, charset=charset, max_bytes=max_bytes, max_item=max_item)
        self.ld_raw: list[str] = []
        self.ld_bytes = 0
        self.ld_budget = max_item
        self.ld_over = False

    def _add_jsonld(self, raw: bytes | bytearray) -> None:
        self.ld_bytes += len(raw)
        if self.ld_bytes > self.ld_budget:
            self.ld_over = True
            return
        self.ld_raw.append(unwrap(self._text(raw)))


# Where a microdata property's value lives, by element (the HTML standard's list).
_URL_ATTR = {
    "a": "href", "area": "href", "link": "href", "audio": "src", "embed": "src",
    "iframe": "src", "img": "src", "source": "src", "track": "src", "video": "src",
    "object": "data",
}  # fmt: skip
_VOID = frozenset("area base br col embed hr img input link meta source track wbr".split())


class _Node:
    __slots__ = ("item", "props", "tag", "text")

    def __init__(self, tag: str) -> None:
        self.tag = tag
        self.item: dict[str, Any] | None = None  # the item this element opens
        self.props: tuple[str, ...] = ()  # properties its text content is the value of
        self.text: list[str] | None = None


class _Microdata(HTMLParser):
    """Builds microdata items from HTML starting at (or before) the first itemscope."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.items: list[dict[str, Any]] = []
        self.stack: list[_Node] = []  # open elements inside some item
        self.scopes: list[dict[str, Any]] = []  # open items, innermost last
        self.texts = 0  # open elements collecting text
        self.values = 0
        self.over = False
        self.started = False  # an itemscope tag was read since the parser was switched on

    def idle(self, fed: int) -> bool:
        """No item or element open, not inside raw text, and read past where it was switched
        on (`fed` characters ago): the parser may stop here."""
        if self.stack or self.cdata_elem is not None:
            return False
        return self.started or len(self.rawdata) < fed

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a: dict[str, str] = {}
        for k, v in attrs:
            a.setdefault(k, v or "")
        scoped = "itemscope" in a
        self.started = self.started or scoped
        if not scoped and not self.scopes:
            return  # outside every item nothing but a new item matters
        props = tuple(a.get("itemprop", "").split()) if self.scopes else ()
        node = _Node(tag)
        if scoped:
            item: dict[str, Any] = {"@type": a.get("itemtype", "").strip()}
            if a.get("itemid"):
                item["@id"] = a["itemid"].strip()
            if props:
                for p in props:
                    self._add(p, item)
            elif len(self.items) < _MAX_ITEMS:
                self.items.append(item)
            else:
                self.over = True
            node.item = item
        elif props:
            value = self._attr_value(tag, a)
            if value is not None:
                for p in props:
                    self._add(p, value)
            elif tag not in _VOID:
                node.props, node.text = props, []
                self.texts += 1
        if tag in _VOID:
            return
        if len(self.stack) >= _MAX_DEPTH:
            self.over = True
            return
        self.stack.append(node)
        if node.item is not None:
            self.scopes.append(node.item)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.handle_starttag(tag, attrs)
        if tag not in _VOID:
            self.handle_endtag(tag)

    def handle_endtag(self, tag: str) -> None:
        # An end tag closes its open element and any left unclosed inside it.
        for i in range(len(self.stack) - 1, -1, -1):
            if self.stack[i].tag == tag:
                while len(self.stack) > i:
                    self._close(self.stack.pop())
                return

    def handle_data(self, data: str) -> None:
        if self.texts:
            for node in self.stack:
                if node.text is not None and sum(map(len, node.text)) < _MAX_TEXT:
                    node.text.append(data)

    def finish(self) -> None:
        while self.stack:
            self._close(self.stack.pop())

    def _close(self, node: _Node) -> None:
        if node.item is not None and self.scopes and self.scopes[-1] is node.item:
            self.scopes.pop()
        if node.text is not None:
            self.texts -= 1
            value = " ".join("".join(node.text).split())[:_MAX_TEXT]
            owner = self.scopes[-1] if self.scopes else None
            if owner is not None:
                for p in node.props:
                    self._add_to(owner, p, value)

    def _attr_value(self, tag: str, a: dict[str, str]) -> str | None:
        if "content" in a:
            return a["content"].strip()
        key = _URL_ATTR.get(tag)
        if key is not None:
            return a.get(key, "").strip()
        if tag in ("data", "meter") and "value" in a:
            return a["value"].strip()
        if tag == "time" and "datetime" in a:
            return a["datetime"].strip()
        return None

    def _add(self, prop: str, value: Any) -> None:
        self._add_to(self.scopes[-1], prop, value)

    def _add_to(self, item: dict[str, Any], prop: str, value: Any) -> None:
        if self.values >= _MAX_VALUES * _MAX_ITEMS:
            self.over = True
            return
        self.values += 1
        old = item.get(prop)
        if old is None:
            item[prop] = value
        elif isinstance(old, list):
            if len(old) < _MAX_VALUES:
                old.append(value)
            else:
                self.over = True
        else:
            item[prop] = [old, value]


class ProductReader:
    """Feed decoded HTML in any chunking; `close` gives the page's product declarations."""

    __slots__ = (
        "_charset", "_cut", "_decoder", "_fed", "_from", "_max_bytes", "_md", "_on", "_scan",
        "_seen", "_tail",
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
        self._md = _Microdata()
        self._on = False  # the microdata parser is reading (an item is open)
        self._fed = 0  # characters it read since it was switched on
        self._decoder: codecs.IncrementalDecoder | None = None

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
                self._decoder = codecs.getincrementaldecoder(self._charset)("replace")
                self._md.started = False
                self._fed = 0
                return data[start:]
            pos = at + 9  # no tag start near enough: a stray word, look further
        # Keep enough to find the tag of an "itemscope" that starts in the next chunk.
        cut = max(0, len(data) - _LOOKBACK - 16)
        self._tail = data[cut:]
        self._from = max(pos, len(data) - 8) - cut
        return b""

    def _parse(self, chunk: bytes) -> bytes:
        """Microdata parser on; once every item closed, the bytes left to search (or b"")."""
        assert self._decoder is not None
        text = self._decoder.decode(chunk)
        md = self._md
        for i in range(0, len(text), _SLICE):
            piece = text[i : i + _SLICE]
            md.feed(piece)
            self._fed += len(piece)
            if md.idle(self._fed):
                # Back to the cheap search: the parser costs ~20x the scanner per byte.
                pending = self._decoder.getstate()[0]
                rest = md.rawdata + text[i + _SLICE :]
                md.reset()
                self._on = False
                return rest.encode(self._charset, "replace") + pending
        return b""

    def close(self) -> PageData:
        """End of the body (or of what will be read of it): everything collected."""
        found = self._scan.finish()
        md: tuple[Mapping[str, Any], ...] = ()
        over = self._scan.ld_over
        if self._on:
            assert self._decoder is not None
            self._md.feed(self._decoder.decode(b"", final=True))
            self._md.close()
            self._md.finish()
            self._on = False
        md = tuple(self._md.items)
        over = over or self._md.over
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
