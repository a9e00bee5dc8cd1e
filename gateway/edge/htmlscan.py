"""Pulls <meta> values, JSON-LD and element attributes out of HTML while it streams past.

`HtmlScan` is fed the decoded body chunk by chunk and never holds the page: only an unfinished
tag or JSON-LD script is carried over (at most `max_item` bytes; a bigger one is dropped and
scanning resumes after it), plus a few bytes of a possible end marker. Tokens follow the HTML
tokenizer, so a `<meta` inside an attribute value, a comment or a script is not a tag.

Speed: one possessive regex skips text, comments, end tags, start tags nobody asked for,
unwanted `<meta>`s and non-JSON-LD scripts/styles with their content; Python only runs for
the tags that matter. That regex ends every tag at its first ">", which is the tokenizer's
answer unless a quoted attribute value contains ">". Such a value always matches `_DANGER`,
so a stretch with one is re-read by the exact regex (which follows quotes like the tokenizer).

Browser behaviour followed (tests/edge/test_htmlscan.py checks it against Chromium):

* Raw text (`script`, `style`, `title`, `textarea`, `xmp`, `iframe`, `noembed`, `noframes`,
  and `noscript` as with scripting on) is skipped up to its end tag; `plaintext` ends the scan.
  A script ends at the first `</script` outside its `<!--`/`<script` escapes, as in browsers.
  So JSON-LD with a literal `</script` in a string ends there, is invalid and is skipped
  (serialisers write `<\\/script`).
* Input is normalised like the browser's input stream (CR/CRLF to LF, NUL to U+FFFD);
  entities in attribute values follow the attribute rules (`?a=1&copy=2` stays as it is);
  duplicated attributes keep the first value.
* Not modelled: foreign content (SVG/MathML CDATA), `<template>` contents (read like ordinary
  HTML) and tree-building quirks (tags ignored inside `<select>`, `<image>` renamed `<img>`,
  misnested `<a>`/`<b>`... cloned).
* At the end of the body an unfinished tag is dropped (as browsers do) and an unfinished
  JSON-LD script is parsed as far as it goes (after truncation that is normally invalid JSON,
  and so skipped). A tag or JSON-LD script bigger than `max_item` is ignored, whether or not
  it arrives in one piece, so results never depend on how the body was chunked.
"""

from __future__ import annotations

import contextlib
import functools
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from html import unescape
from html.entities import html5
from typing import Any

from gateway.edge.htmlquery import Selector, jsonld_lookup, parse_selector, selector_matches

__all__ = [
    "HtmlFound",
    "HtmlScan",
    "Selector",
    "Wants",
    "jsonld_lookup",
    "parse_selector",
    "selector_matches",
]


@dataclass(frozen=True, slots=True)
class Wants:
    """What a scan collects; meta names are matched lowercased."""

    meta: frozenset[str] = frozenset()
    jsonld: bool = False
    selectors: tuple[Selector, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "meta", frozenset(_lower(m.strip()) for m in self.meta))

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


_MAX_MATCHES = 100
_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


def _lower(s: str) -> str:
    # HTML compares names ASCII case-insensitively ("K" U+212A must not become "k").
    return s.translate(_ASCII_LOWER)


# ---------------------------------------------------------------------------------------------
# Regexes

_NAME_END = rb"[\t\n\f\r />]"
# Tag body after the name, by the tokenizer's rules: a quote opens a value only after "=",
# an unquoted value ends at whitespace or ">". `_tag_step` below is the same grammar, streamed.
_BODY = (
    rb"(?:[\t\n\f\r /]++|[^\t\n\f\r />][^\t\n\f\r /=>]*+"
    rb"""(?:[\t\n\f\r ]*+=[\t\n\f\r ]*+(?:"[^"]*+"|'[^']*+'|[^\t\n\f\r >"'][^\t\n\f\r >]*+|(?=>))"""
    rb"|(?![\t\n\f\r ]*+=)))*+>"
)
_START = re.compile(rb"<([A-Za-z][^\t\n\f\r />]*+)(" + _BODY + rb")")
_ATTR = re.compile(
    rb"([^\t\n\f\r />][^\t\n\f\r /=>]*+)(?:[\t\n\f\r ]*+=[\t\n\f\r ]*+"
    rb"""(?:"([^"]*+)"|'([^']*+)'|([^\t\n\f\r >"'][^\t\n\f\r >]*+|)))?"""
)
# Every quoted attribute value with a ">" in it matches (text can too: a false alarm only costs
# the exact regex for a while).
_DANGER = re.compile(rb"""=[\t\n\f\r ]*+(?:"[^">]*+>|'[^'>]*+>)""")
_RAW = (b"script", b"style", b"xmp", b"iframe", b"noembed", b"noframes", b"noscript")
_RAW_END = {
    n: re.compile(rb"(?i)</" + n + rb"(?=[\t\n\f\r />])") for n in (*_RAW, b"title", b"textarea")
}
_SPECIAL = frozenset((*_RAW_END, b"plaintext"))
# Script data: "<!--" escapes, "<script" inside that escapes twice, so a document.write()
# "</script>" does not end it; "-->" goes back (the tokenizer's script data states).
_SCRIPT_STATES = (
    re.compile(rb"<!--|</(?i:script)(?=[\t\n\f\r />])"),
    re.compile(rb"-->|</?(?i:script)(?=[\t\n\f\r />])"),
    re.compile(rb"-->|</(?i:script)(?=[\t\n\f\r />])"),
)
_COMMENT = rb"<!--(?:-?>|(?s:.)*?--!?>)"
_COMMENT_END = re.compile(rb"--!?>")
_LD_HINT = re.compile(rb"(?i)ld\+json|&")
_CHARREF = re.compile(r"&(#[0-9]+;?|#[xX][0-9a-fA-F]+;?|[^\t\n\f <&#;]{1,32};?)")


def _not_named(names: Iterable[bytes]) -> bytes:
    """Lookbehinds after a tag name that fail on any of `names` (cheaper than a lookahead)."""
    by_len: dict[int, list[bytes]] = {}
    last: set[bytes] = set()
    for n in names:
        by_len.setdefault(len(n), []).append(re.escape(n))
        last |= {n[-1:].lower(), n[-1:].upper()}
    full = b"".join(rb"(?<!<(?i:" + b"|".join(v) + rb"))" for _, v in sorted(by_len.items()))
    # Most names (div, span, li, img...) end in another letter: one test settles them.
    return rb"(?:(?<![" + b"".join(re.escape(c) for c in sorted(last)) + rb"])|" + full + rb")"


def _rest_without(words: Iterable[bytes], also: bytes = b"") -> bytes:
    """Rest of a tag to its first ">", failing where a word (any ASCII case) or `also` occurs."""
    words = sorted(set(words))
    first = {w[:1].lower() for w in words} | {w[:1].upper() for w in words}
    extra = {also[i : i + 1] for i in range(len(also))}
    loop = b"".join(re.escape(c) for c in sorted(first - extra))
    stop = loop + b"".join(re.escape(c) for c in sorted(extra))
    alts = b"|".join(re.escape(w) for w in words)
    return (
        rb"[^>" + stop + rb"]*+(?:(?!(?i:" + alts + rb"))[" + loop + rb"][^>" + stop + rb"]*+)*+>"
    )


def _raw_content(name: bytes) -> bytes:
    """Raw text up to its end tag; a script must not escape ("<!--"): Python reads those."""
    end = rb"/(?i:" + name + rb")" + _NAME_END
    bad = end + (rb"|!--" if name == b"script" else b"")
    return rb"[^<]*+(?:<(?!" + bad + rb")[^<]*+)*+(?=<" + end + rb")"


def _skippers(
    stops: frozenset[bytes],
    keys: tuple[bytes, ...] | None,
    meta: tuple[bytes, ...] | None,
    *,
    generic: bool,
    script: bool,
    ld: bool,
    style: bool,
) -> tuple[re.Pattern[bytes], re.Pattern[bytes]]:
    """(fast, exact) regexes consuming everything up to the next token Python must see.

    Start tags in `stops` always stop them; other start tags are skipped when `generic` (and,
    with `keys`, only if they contain none of those words). The fast regex also skips <meta>
    tags without any of the `meta` words, scripts (unless `ld` and they may be JSON-LD) and
    styles with their content, when asked to.
    """
    named = rb"<[A-Za-z][^\t\n\f\r />]*+" + _not_named(stops)
    # Most frequent first: SRE tries the alternatives in order.
    fast: list[bytes] = []
    exact: list[bytes] = []
    if generic:
        fast.append(named + (_rest_without(keys) if keys else rb"[^>]*+>"))
        if keys is None:
            exact.append(named + _BODY)
    fast.append(rb"</[^>]*+>")
    exact.append(rb"</(?:>|[^A-Za-z>][^>]*+>|[A-Za-z][^\t\n\f\r />]*+" + _BODY + rb")")
    for alts in (fast, exact):
        alts += (_COMMENT, rb"<!(?!--)[^>]*+>", rb"<\?[^>]*+>", rb"<(?=[^A-Za-z!/?])")
    if meta is not None:
        fast.append(rb"<(?i:meta)(?=" + _NAME_END + rb")" + _rest_without(meta, b"&"))
    if script:
        rest = _rest_without([b"ld+json"], b"&") if ld else rb"[^>]*+>"
        fast.append(rb"<(?i:script)(?=" + _NAME_END + rb")" + rest + _raw_content(b"script"))
    if style:
        fast.append(rb"<(?i:style)(?=" + _NAME_END + rb")[^>]*+>" + _raw_content(b"style"))
    return (
        re.compile(rb"[^<]*+(?:(?:" + b"|".join(fast) + rb")[^<]*+)*+"),
        re.compile(rb"[^<]*+(?:(?:" + b"|".join(exact) + rb")[^<]*+)*+"),
    )


@dataclass(frozen=True, slots=True)
class _Setup:
    """What a scan for one `Wants` needs, worked out once."""

    meta: tuple[str, ...]
    selectors: tuple[Selector, ...]
    by_tag: dict[bytes, tuple[Selector, ...]]  # selectors naming a tag
    tagless: tuple[Selector, ...]  # selectors with an alternative for any tag
    stops: frozenset[bytes]  # start tags Python reads
    fast: re.Pattern[bytes]
    exact: re.Pattern[bytes]


@functools.lru_cache(maxsize=128)
def _setup(wants: Wants) -> _Setup:
    sels = tuple(dict.fromkeys(wants.selectors))
    by_tag: dict[bytes, dict[Selector, None]] = {}
    tagless: dict[Selector, None] = {}
    keys: set[bytes] | None = set()
    for sel in sels:
        for alt in sel.alternatives:
            if alt.tag is not None:
                by_tag.setdefault(alt.tag.encode("utf-8"), {})[sel] = None
                continue
            tagless[sel] = None
            # A tag can only match if it spells out an attribute name the test needs.
            names = [name for name, _, _ in alt.tests if name.isascii()]
            if keys is not None and names:
                keys.add(max(names, key=len).encode("ascii"))
            else:
                keys = None  # "*" alone, or only non-ASCII names: every tag is a candidate
    meta = tuple(sorted(wants.meta))
    stops = frozenset({*_SPECIAL, *by_tag, *((b"meta",) if meta else ())})
    solo = not tagless  # no tagless selector could want a meta, script or style tag
    fast, exact = _skippers(
        stops,
        tuple(sorted(keys)) if keys and tagless else None,
        tuple(m.encode("ascii") for m in meta)
        if meta and solo and b"meta" not in by_tag and all(m.isascii() for m in meta)
        else None,
        generic=keys is not None,
        script=solo and b"script" not in by_tag,
        ld=wants.jsonld,
        style=solo and b"style" not in by_tag,
    )
    return _Setup(
        meta,
        sels,
        {tag: tuple(s) for tag, s in by_tag.items()},
        tuple(tagless),
        stops,
        fast,
        exact,
    )


def _attr_unescape(s: str) -> str:
    """html.unescape with the attribute-value rule: '&copy=' in a URL stays as it is."""

    def one(m: re.Match[str]) -> str:
        ref = m.group(1)
        if ref[0] == "#" or ref in html5:
            return unescape(m.group(0))
        for k in range(len(ref) - 1, 1, -1):
            if ref[:k] in html5:
                nxt = ref[k]
                return m.group(0) if nxt == "=" or nxt.isalnum() else html5[ref[:k]] + ref[k:]
        return m.group(0)

    return _CHARREF.sub(one, s) if "&" in s else s


def _charset(name: str) -> str:
    try:
        ok = b"<meta>".decode(name) == "<meta>"  # also rejects rot13/base64 and UTF-16/32
    except LookupError:
        ok = False
    return name if ok else "utf-8"


_CDATA_TAILS = ("//]]>", "/*]]>*/", "]]>")
_WRAPS = (
    ("<!--", ("-->",)),
    ("<![CDATA[", _CDATA_TAILS),
    ("//<![CDATA[", _CDATA_TAILS),
    ("/*<![CDATA[*/", _CDATA_TAILS),
)


def _unwrap(text: str) -> str:
    """Strip the <!-- --> and CDATA wrappers JSON-LD is sometimes put in."""
    text = text.lstrip("\ufeff").strip()
    for _ in range(2):  # "<!--<![CDATA[ ... ]]>-->" is seen too
        for head, tails in _WRAPS:
            if text.startswith(head):
                text = text[len(head) :].strip()
                for tail in tails:
                    if text.endswith(tail):
                        text = text[: -len(tail)].strip()
                        break
                break
        else:
            break
    return text


# ---------------------------------------------------------------------------------------------
# Scanner

# Modes of the scanner and states of the streamed tag tokenizer.
_HTML, _TAG, _RAWTEXT, _JSONLD, _INCOMMENT, _BOGUS, _OFF = range(7)
_T_NAME, _T_A, _T_N, _T_AN, _T_BV, _T_DQ, _T_SQ, _T_U = range(8)
_T_RUN = {
    _T_NAME: re.compile(rb"[^\t\n\f\r />]*+"),
    _T_A: re.compile(rb"[\t\n\f\r /]*+"),
    _T_N: re.compile(rb"[^\t\n\f\r /=>]*+"),
    _T_AN: re.compile(rb"[\t\n\f\r ]*+"),
    _T_BV: re.compile(rb"[\t\n\f\r ]*+"),
    _T_DQ: re.compile(rb'[^"]*+'),
    _T_SQ: re.compile(rb"[^']*+"),
    _T_U: re.compile(rb"[^\t\n\f\r >]*+"),
}
_SPACE = frozenset(b"\t\n\f\r ")

Data = bytes | bytearray


class HtmlScan:
    """Feed decoded HTML bytes in any chunking; `finish` gives what `wants` asked for."""

    __slots__ = (
        "_at", "_buf", "_by_tag", "_charset", "_danger", "_elements", "_esc", "_exact", "_fast",
        "_fresh", "_is_end", "_jsonld", "_kept", "_ld", "_max_bytes", "_max_item", "_meta",
        "_mode", "_name", "_p", "_raw", "_rawlen", "_result", "_seen", "_stops", "_sub",
        "_tagless", "_truncated",
    )  # fmt: skip

    def __init__(
        self,
        wants: Wants,
        *,
        charset: str = "utf-8",
        max_bytes: int = 1_048_576,
        max_item: int = 262_144,
    ) -> None:
        if max_item < 16:
            raise ValueError(f"max_item must be at least 16 bytes, not {max_item}")
        self._charset = _charset(charset)
        self._max_bytes = max_bytes
        self._max_item = max_item
        self._ld = wants.jsonld
        setup = _setup(wants)
        self._meta: dict[str, list[str]] = {name: [] for name in setup.meta}
        self._jsonld: list[Any] = []
        self._elements: dict[Selector, list[dict[str, str]]] = {s: [] for s in setup.selectors}
        self._by_tag = setup.by_tag
        self._tagless = setup.tagless
        self._stops = setup.stops
        self._fast, self._exact = setup.fast, setup.exact
        self._buf = bytearray()
        self._mode = _OFF if wants.empty else _HTML
        self._p = self._at = self._rawlen = self._seen = self._danger = 0
        self._kept = self._is_end = self._fresh = self._truncated = False
        self._name = b""
        self._raw: re.Pattern[bytes] | None = None
        self._esc = 0
        self._result: HtmlFound | None = None

    @property
    def done(self) -> bool:
        """True once more input cannot change the result (limit hit, <plaintext>, finished)."""
        return self._mode == _OFF

    def feed(self, chunk: bytes) -> None:
        """Scan the next piece of the body (decoded, not compressed)."""
        if self._mode == _OFF or not chunk:
            return
        room = self._max_bytes - self._seen
        cut = len(chunk) > room
        if cut:
            chunk = chunk[:room]
        self._seen += len(chunk)
        data: Data
        if self._buf:
            self._buf += chunk
            data = self._buf
        else:
            data = chunk
        keep = self._run(data)
        if keep >= len(data):
            self._buf = bytearray()
        elif data is self._buf:
            del self._buf[:keep]
        else:
            self._buf = bytearray(data[keep:])
        self._p -= keep
        self._at -= keep
        if cut:
            # Only a scan the limit stopped is truncated (not one <plaintext> ended).
            self._truncated = self._mode != _OFF
            self._eof()

    def finish(self) -> HtmlFound:
        """End of the body: return everything found (call once)."""
        if self._result is None:
            self._eof()
            self._result = HtmlFound(self._meta, self._jsonld, self._elements, self._truncated)
        return self._result

    def _eof(self) -> None:
        if self._mode == _JSONLD:
            self._add_jsonld(self._buf[self._at :])
        self._mode = _OFF
        self._buf = bytearray()

    def _run(self, data: Data) -> int:
        """Scan `data` from self._p; return the index from which bytes must be kept."""
        p, n = self._p, len(data)
        self._danger = -1  # position of the next quoted ">" at or after p; -1: look it up
        while True:
            mode = self._mode
            if mode == _HTML:
                q = self._fast.match(data, p).end()  # type: ignore[union-attr]  # "*+" matches
                if self._danger < q:
                    if self._danger < p:
                        d = _DANGER.search(data, p)
                        self._danger = d.start() if d else n
                    if self._danger < q:  # the fast regex may have been fooled
                        q = self._careful(data, p)
                        if q > p:
                            p = q
                            continue
                p = q
                if p >= n:
                    self._p = n
                    return n
                q = self._token(data, p)
                if q < 0:  # "<", "<!", "<!-" or "</" at the end: undecided, tiny
                    self._p = p
                    return p
                p = q
            elif mode == _TAG:
                q = self._tag_step(data, p)
                if q >= 0:
                    p = self._tag_done(data, q)
                    continue
                if self._kept and n - self._at > self._max_item:
                    self._kept = False  # too big to be worth holding: drop, but track its end
                self._p = n
                return self._at if self._kept else n
            elif mode in (_RAWTEXT, _JSONLD):
                end, p = self._raw_end(data, p)
                if end >= 0:
                    if mode == _JSONLD and end - self._at <= self._max_item:
                        self._add_jsonld(data[self._at : end])
                    self._mode, p = _HTML, end
                    continue
                p = max(p, n - self._rawlen)  # a split end tag may start here
                if mode == _JSONLD and p - self._at > self._max_item:
                    self._mode = _RAWTEXT  # too big to be worth holding: skip it
                self._p = p
                return self._at if self._mode == _JSONLD else p
            elif mode == _INCOMMENT:
                if self._fresh:  # "<!-->" and "<!--->" close at once
                    if p < n and data[p] == 0x3E:
                        self._mode, p = _HTML, p + 1
                        continue
                    if p + 1 < n and data[p] == 0x2D and data[p + 1] == 0x3E:
                        self._mode, p = _HTML, p + 2
                        continue
                    if p >= n or (p + 1 >= n and data[p] == 0x2D):
                        self._p = p
                        return p
                    self._fresh = False
                m = _COMMENT_END.search(data, p)
                if m:
                    self._mode, p = _HTML, m.end()
                    continue
                self._p = max(p, n - 3)
                return self._p
            elif mode == _BOGUS:
                j = data.find(b">", p)
                if j >= 0:
                    self._mode, p = _HTML, j + 1
                    continue
                self._p = n
                return n
            else:  # <plaintext>: the rest is text
                self._p = n
                return n

    def _careful(self, data: Data, p: int) -> int:
        """Skip from p when a quoted ">" lies at self._danger: fast up to it, exactly past it."""
        d = self._danger
        q = self._fast.match(data, p, d).end()  # type: ignore[union-attr]  # exact before d
        if q == p:  # the token at p holds d: read a stretch exactly (bounded, as it is slower)
            q = self._exact.match(data, p, min(len(data), d + 4096)).end()  # type: ignore[union-attr]
            if q == p:
                q = self._exact.match(data, p).end()  # type: ignore[union-attr]
        return q

    def _token(self, data: Data, p: int) -> int:
        """Handle the token at data[p] == "<" the skip regex stopped at; -1: need more bytes."""
        n = len(data)
        if p + 1 >= n:
            return -1
        c = data[p + 1]
        if c == 0x21:  # "!"
            if data.startswith(b"<!--", p):
                self._mode, self._fresh = _INCOMMENT, True
                return p + 4
            if n - p < 4 and b"<!--".startswith(data[p:n]):
                return -1
            self._mode = _BOGUS
            return p + 2
        if c == 0x3F:  # "?"
            self._mode = _BOGUS
            return p + 2
        if c == 0x2F:  # "/"
            if p + 2 >= n:
                return -1
            d = data[p + 2]
            if d == 0x3E:
                return p + 3
            if not (0x41 <= d <= 0x5A or 0x61 <= d <= 0x7A):
                self._mode = _BOGUS
                return p + 2
            return self._enter_tag(p, is_end=True)
        if 0x41 <= c <= 0x5A or 0x61 <= c <= 0x7A:
            m = _START.match(data, p)
            if m:
                return self._start_tag(data, m)
            return self._enter_tag(p, is_end=False)
        return p + 1

    def _enter_tag(self, p: int, *, is_end: bool) -> int:
        self._mode, self._at, self._sub = _TAG, p, _T_NAME
        self._kept, self._is_end, self._name = True, is_end, b""
        return p + (2 if is_end else 1)

    def _tag_step(self, data: Data, p: int) -> int:
        """Advance through an unfinished tag; return the index after its ">" or -1."""
        n, s = len(data), self._sub
        while True:
            p = _T_RUN[s].match(data, p).end()  # type: ignore[union-attr]  # "*+" always matches
            if p >= n:
                self._sub = s
                return -1
            if s == _T_NAME and self._kept:
                self._name = b"" if self._is_end else bytes(data[self._at + 1 : p]).lower()
                if not (self._tagless or self._name in self._stops):
                    self._kept = False  # nothing to read in it: stop holding its bytes
            c = data[p]
            p += 1
            if c == 0x3E:  # ">"
                return p
            if s in (_T_NAME, _T_DQ, _T_SQ):
                s = _T_A
            elif s == _T_A:
                s = _T_N
            elif s == _T_N:
                s = _T_AN if c in _SPACE else _T_A if c == 0x2F else _T_BV
            elif s == _T_AN:
                s = _T_A if c == 0x2F else _T_BV if c == 0x3D else _T_N
            elif s == _T_BV:
                s = _T_DQ if c == 0x22 else _T_SQ if c == 0x27 else _T_U
            else:  # _T_U ended at whitespace
                s = _T_A

    def _tag_done(self, data: Data, e: int) -> int:
        self._mode = _HTML
        if self._kept and not self._is_end:
            m = _START.fullmatch(data, self._at, e)
            if m:
                return self._start_tag(data, m)
        elif self._name in _SPECIAL:  # dropped for its size; its content is still raw text
            self._enter_special(self._name, ld=False)
            self._at = e
        return e

    def _start_tag(self, data: Data, m: re.Match[bytes]) -> int:
        name = m.group(1).lower()
        body, end = m.start(2), m.end()
        if end - m.start() > self._max_item:  # ignored, as when it arrives in pieces
            if name in _SPECIAL:
                self._enter_special(name, ld=False)
                self._at = end
            return end
        attrs: dict[str, str] | None = None
        if name == b"meta" and self._meta:
            attrs = self._attrs(data, body, end)
            self._add_meta(attrs)
        sels = self._by_tag.get(name, ())
        if self._tagless:
            sels = (*sels, *self._tagless)
        if sels:
            attrs = attrs if attrs is not None else self._attrs(data, body, end)
            tag = name.decode(self._charset, "replace")
            for sel in sels:
                hits = self._elements[sel]
                if len(hits) < _MAX_MATCHES and selector_matches(sel, tag, attrs):
                    hits.append(dict(attrs))
        if name in _SPECIAL:
            ld = False
            if name == b"script" and self._ld and _LD_HINT.search(data, body, end):
                attrs = attrs if attrs is not None else self._attrs(data, body, end)
                kind = attrs.get("type", "").split(";")[0].strip(" \t\n\f\r")
                ld = _lower(kind) == "application/ld+json"
            self._enter_special(name, ld=ld)
            self._at = end
        return end

    def _raw_end(self, data: Data, p: int) -> tuple[int, int]:
        """(Where the raw text's end tag starts or -1, how far the text is known to go)."""
        if self._raw is not None:
            m = self._raw.search(data, p)
            return (m.start(), p) if m else (-1, p)
        while m := _SCRIPT_STATES[self._esc].search(data, p):
            at = m.start()
            if data[at + 1] == 0x21:  # "<!--"
                self._esc, p = 1, at + 2  # its "--" may be the start of "-->"
            elif data[at] == 0x2D:  # "-->"
                self._esc, p = 0, m.end()
            elif data[at + 1] != 0x2F:  # "<script" while escaped
                self._esc, p = 2, m.end()
            elif self._esc == 2:  # "</script" while escaped twice
                self._esc, p = 1, m.end()
            else:
                return at, p
        return -1, p

    def _enter_special(self, name: bytes, *, ld: bool) -> None:
        if name == b"plaintext":
            self._mode = _OFF
            return
        self._mode = _JSONLD if ld else _RAWTEXT
        self._raw = None if name == b"script" else _RAW_END[name]
        self._esc = 0
        self._rawlen = len(name) + 2

    def _attrs(self, data: Data, start: int, end: int) -> dict[str, str]:
        out: dict[str, str] = {}
        for m in _ATTR.finditer(data, start, end):
            key = self._text(m.group(1).lower())
            if key not in out:  # browsers keep the first of duplicated attributes
                raw = m.group(2)
                if raw is None:
                    raw = m.group(3)
                    if raw is None:
                        raw = m.group(4) or b""
                out[key] = _attr_unescape(self._text(raw)) if raw else ""
        return out

    def _text(self, raw: bytes | bytearray) -> str:
        """Decode as the browser's input stream does: CR/CRLF become LF, NUL becomes U+FFFD."""
        text = raw.decode(self._charset, "replace")
        if "\r" in text:
            text = text.replace("\r\n", "\n").replace("\r", "\n")
        return text.replace("\x00", "\ufffd") if "\x00" in text else text

    def _add_meta(self, attrs: dict[str, str]) -> None:
        content = attrs.get("content")
        if content is None:
            return
        seen: set[str] = set()
        for key in ("name", "property", "itemprop"):
            for token in _lower(attrs.get(key, "")).split():
                if token in self._meta and token not in seen:
                    seen.add(token)
                    self._meta[token].append(content)

    def _add_jsonld(self, raw: Data) -> None:
        text = _unwrap(self._text(raw))
        with contextlib.suppress(ValueError, RecursionError):  # invalid JSON-LD is skipped
            self._jsonld.append(json.loads(text))
