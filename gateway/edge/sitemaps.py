"""Sitemaps and robots.txt, as text: bytes in, listed URLs and crawl delays out (no I/O).

`SitemapReader` parses a sitemap as it streams — XML (`<urlset>` or `<sitemapindex>`) or the
protocol's text form, gzip or not — in bounded pieces, refusing a DOCTYPE outright (so no
entity can be declared, let alone expanded) and anything past 50 MiB uncompressed.
`crawl_delay` reads Crawl-delay with decimals, which urllib.robotparser does not.
"""

from __future__ import annotations

import contextlib
import re
import zlib
from collections.abc import Callable, Iterator
from typing import Any
from xml.etree.ElementTree import Element, XMLPullParser

__all__ = ["SITEMAP_MAX", "SitemapReader", "crawl_delay"]

SITEMAP_MAX = 52_428_800  # 50 MiB uncompressed: the sitemap protocol's limit
_PIECE = 262_144  # uncompressed sitemap bytes parsed before its URLs are handed on
_DOCTYPE = re.compile(rb"<!(?:DOCTYPE|ENTITY)", re.IGNORECASE)


def crawl_delay(lines: list[str], user_agent: str) -> float | None:
    """Crawl-delay for `user_agent` (its own group, else "*"), decimals allowed.

    urllib.robotparser reads whole seconds only; Bing and Yandex honour "0.5" too.
    """
    ours = user_agent.split("/")[0].lower()
    delays: dict[str, float] = {}
    agents: list[str] = []
    in_rules = False
    for raw in lines:
        key, _, value = raw.split("#", 1)[0].partition(":")
        key, value = key.strip().lower(), value.strip()
        if key == "user-agent":
            if in_rules:
                agents, in_rules = [], False
            agents.append(value.lower())
        elif key:
            in_rules = True
            if key == "crawl-delay":
                with contextlib.suppress(ValueError):
                    delay = float(value)
                    if 0 <= delay < 86_400:
                        for agent in agents:
                            delays.setdefault(agent, delay)
    mine = [d for a, d in delays.items() if a != "*" and a and a in ours]
    return mine[0] if mine else delays.get("*")


class SitemapReader:
    """Streams one sitemap body (XML or text, maybe gzip) and reports each URL it lists.

    XML: each <loc> as its element ends (a <sitemapindex> lists sitemaps). Text (the
    protocol's other form): one URL per line, told apart by its first byte not being "<".
    """

    def __init__(self, on_page: Callable[[str], None], on_sitemap: Callable[[str], None]) -> None:
        self.parser: XMLPullParser[Element] = XMLPullParser(events=("start", "end"))
        self.on_page, self.on_sitemap = on_page, on_sitemap
        self.root: Element | None = None
        self.inflate: Any = None
        self.first = True
        self.size = 0
        self.tail = b""
        self.listed = 0  # <loc>s read so far
        self.text: bool | None = None  # a text sitemap (known from its first byte)
        self.line = b""  # a text sitemap's unfinished last line

    def feed(self, chunk: bytes) -> Iterator[None]:
        """Parse a chunk of the body, pausing after each piece of at most _PIECE bytes
        (uncompressed) so the caller can hand the URLs on: a gzip chunk may inflate a
        thousandfold, and nothing is to pile up."""
        if self.first and chunk:
            self.first = False
            if chunk[:2] == b"\x1f\x8b":  # gzip, whatever the URL or headers say
                self.inflate = zlib.decompressobj(16 + zlib.MAX_WBITS)
        while chunk:
            if self.inflate is not None:
                piece = self.inflate.decompress(chunk, _PIECE)
                chunk = self.inflate.unconsumed_tail
            else:
                piece, chunk = chunk[:_PIECE], chunk[_PIECE:]
            self.size += len(piece)
            if self.size > SITEMAP_MAX:
                raise ValueError(f"it is bigger than {SITEMAP_MAX} bytes uncompressed")
            window = self.tail + piece
            if b"<!" in window and _DOCTYPE.search(window):
                raise ValueError("it declares a DOCTYPE or entities (refused)")
            self.tail = piece[-9:]
            if self.text is None and (start := piece.lstrip(b"\xef\xbb\xbf \t\r\n")):
                self.text = not start.startswith(b"<")
            if self.text:
                self._lines(piece)
            elif self.text is False:
                self.parser.feed(piece)
                self._drain()
            yield

    def close(self) -> None:
        if self.text:
            self._lines(b"\n")
        else:
            self.parser.close()
            self._drain()

    def _lines(self, piece: bytes) -> None:
        *lines, self.line = (self.line + piece).split(b"\n")
        if len(self.line) > 4096:  # no URL is that long: not a sitemap
            raise ValueError("it is neither XML nor one URL per line")
        for raw in lines:
            url = raw.decode("utf-8", "replace").strip().lstrip("\ufeff")
            if url.startswith(("http://", "https://")):
                self.listed += 1
                self.on_page(url)

    def _drain(self) -> None:
        for got in self.parser.read_events():
            event, elem = got  # type: ignore[misc]  # ("start" | "end", Element) as asked
            assert isinstance(elem, Element)
            if event == "start":
                if self.root is None:
                    self.root = elem
                continue
            local = elem.tag.rsplit("}", 1)[-1]
            if local == "loc" and elem.text:
                self.listed += 1
                if self.root is not None and self.root.tag.endswith("sitemapindex"):
                    self.on_sitemap(elem.text.strip())
                else:
                    self.on_page(elem.text.strip())
            elif local in ("url", "sitemap") and self.root is not None:
                self.root.clear()  # done with it: keep nothing of what was read
