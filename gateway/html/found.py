"""What an HTML scan is asked for (`Wants`) and what it keeps of the tags it reads.

`gateway.html.scan.HtmlScan` tokenizes; it hands the tags and JSON-LD texts that matter, with
their attributes decoded, to a `Findings`, which decides what to keep: the content of the
wanted `<meta>` names, the parsed JSON-LD, and the attributes of the elements each selector
matches (at most `MAX_MATCHES` per selector).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from gateway.html.query import JsonLdIndex, Selector, selector_matches
from gateway.html.tokens import unwrap

# Elements kept per selector: a page listing thousands of products does not grow a rule's
# facts (or the scan's memory) without bound.
MAX_MATCHES = 100
_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


def lower_ascii(s: str) -> str:
    """`s` lowercased as HTML compares names: ASCII only ("K" U+212A must not become "k")."""
    return s.translate(_ASCII_LOWER)


@dataclass(frozen=True, slots=True)
class Wants:
    """What a scan collects.

    Meta names are kept `.lower()`ed (they are the keys of HtmlFound.meta) and compared with
    the page's name/property/itemprop tokens, lowercased in ASCII as HTML does.
    """

    meta: frozenset[str] = frozenset()
    jsonld: bool = False
    selectors: tuple[Selector, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "meta", frozenset(m.strip().lower() for m in self.meta))

    @property
    def empty(self) -> bool:
        """Nothing wanted: a scan would be a no-op."""
        return not (self.meta or self.jsonld or self.selectors)


@dataclass(slots=True)
class HtmlFound:
    """Scan results; every wanted meta name and selector is a key (with [] if not found)."""

    meta: dict[str, list[str]]
    jsonld: list[Any]
    elements: dict[Selector, list[dict[str, str]]]
    truncated: bool
    _index: JsonLdIndex | None = field(default=None, repr=False, compare=False)

    def jsonld_index(self) -> JsonLdIndex:
        """The JSON-LD objects by type, built on first use (then shared by every lookup)."""
        if self._index is None:
            self._index = JsonLdIndex.of(self.jsonld)
        return self._index


class Findings:
    """What one scan has kept so far, for the meta names and selectors it was set up with."""

    __slots__ = ("_elements", "_jsonld", "_meta")

    def __init__(self, meta: Iterable[str], selectors: Iterable[Selector]) -> None:
        self._meta: dict[str, list[str]] = {name: [] for name in meta}
        self._jsonld: list[Any] = []
        self._elements: dict[Selector, list[dict[str, str]]] = {s: [] for s in selectors}

    def meta(self, attrs: dict[str, str]) -> None:
        """A `<meta>` tag: its content under each wanted name it carries (once per name)."""
        content = attrs.get("content")
        if content is None:
            return
        seen: set[str] = set()
        for key in ("name", "property", "itemprop"):
            for token in lower_ascii(attrs.get(key, "")).split():
                if token in self._meta and token not in seen:
                    seen.add(token)
                    self._meta[token].append(content)

    def element(self, tag: str, attrs: dict[str, str], selectors: Iterable[Selector]) -> None:
        """A start tag some selectors may match: a copy of its attributes for each that does."""
        for sel in selectors:
            hits = self._elements[sel]
            if len(hits) < MAX_MATCHES and selector_matches(sel, tag, attrs):
                hits.append(dict(attrs))

    def jsonld(self, text: str) -> None:
        """A JSON-LD script's text (decoded): kept parsed, skipped when it is not JSON."""
        with contextlib.suppress(ValueError, RecursionError):
            self._jsonld.append(json.loads(unwrap(text)))

    def result(self, *, truncated: bool) -> HtmlFound:
        """Everything kept, as the scan's answer."""
        return HtmlFound(self._meta, self._jsonld, self._elements, truncated)
