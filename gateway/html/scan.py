"""Pulls <meta> values, JSON-LD and element attributes out of HTML while it streams past.

`HtmlScan` is fed the decoded body chunk by chunk and never holds the page: only an unfinished
tag or JSON-LD script is carried over (at most `max_item` bytes; a bigger one is dropped and
scanning resumes after it), plus a few bytes of a possible end marker. Tokens follow the HTML
tokenizer, so a `<meta` inside an attribute value, a comment or a script is not a tag.

Speed: one possessive regex skips text, comments, end tags, start tags nobody asked for,
unwanted `<meta>`s and non-JSON-LD scripts/styles with their content; Python only runs for
the tags that matter. That regex ends every tag at its first ">", which is the tokenizer's
answer unless a quoted attribute value contains ">". Such a value always matches `DANGER`,
so a stretch with one is re-read by the exact regex (which follows quotes like the tokenizer).
The regexes live in gateway.html.tokens; selectors and JSON-LD paths in gateway.html.query;
what a scan is asked and what it keeps of the tags it reads in gateway.html.found.

Browser behaviour followed (tests/html/test_scan.py checks it against Chromium):

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

import re

from gateway.html.found import Findings, HtmlFound, Wants, lower_ascii
from gateway.html.query import Selector, jsonld_lookup, parse_selector, selector_matches
from gateway.html.tokens import (
    ATTR,
    COMMENT_END,
    DANGER,
    LD_HINT,
    RAW_END,
    SCRIPT_STATES,
    SPACE,
    SPECIAL,
    START,
    T_A,
    T_AN,
    T_BV,
    T_DQ,
    T_N,
    T_NAME,
    T_RUN,
    T_SQ,
    T_U,
    TAG_REST,
    attr_unescape,
    codec_name,
    plan,
)

__all__ = [
    "HtmlFound",
    "HtmlScan",
    "Selector",
    "Wants",
    "jsonld_lookup",
    "parse_selector",
    "selector_matches",
]


# Modes of the scanner.
_HTML, _TAG, _RAWTEXT, _JSONLD, _INCOMMENT, _BOGUS, _OFF = range(7)

Data = bytes | bytearray


class HtmlScan:
    """Feed decoded HTML bytes in any chunking; `finish` gives what `wants` asked for."""

    __slots__ = (
        "_at", "_buf", "_by_tag", "_charset", "_danger", "_esc", "_exact", "_fast", "_found",
        "_fresh", "_is_end", "_kept", "_ld", "_max_bytes", "_max_item", "_meta", "_mode",
        "_name", "_p", "_raw", "_rawlen", "_result", "_seen", "_stops", "_sub", "_tagless",
        "_truncated",
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
        self._charset = codec_name(charset)
        self._max_bytes = max_bytes
        self._max_item = max_item
        self._ld = wants.jsonld
        setup = plan(wants.meta, wants.selectors, jsonld=wants.jsonld)
        self._found = Findings(setup.meta, setup.selectors)
        self._meta = bool(setup.meta)
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
            self._result = self._found.result(truncated=self._truncated)
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
                        d = DANGER.search(data, p)
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
                m = COMMENT_END.search(data, p)
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
            m = START.match(data, p)
            if m:
                return self._start_tag(data, m)
            return self._enter_tag(p, is_end=False)
        return p + 1

    def _enter_tag(self, p: int, *, is_end: bool) -> int:
        self._mode, self._at, self._sub = _TAG, p, T_NAME
        self._kept, self._is_end, self._name = True, is_end, b""
        return p + (2 if is_end else 1)

    def _tag_step(self, data: Data, p: int) -> int:
        """Advance through an unfinished tag; return the index after its ">" or -1."""
        n, s = len(data), self._sub
        whole = True
        while True:
            if s == T_A and whole:  # between attributes: the rest may be complete already
                whole = False  # one try per feed: a miss scans to the end of the data
                m = TAG_REST.match(data, p)
                if m:
                    return m.end()
            p = T_RUN[s].match(data, p).end()  # type: ignore[union-attr]  # "*+" always matches
            if p >= n:
                self._sub = s
                return -1
            if s == T_NAME and self._kept:
                self._name = b"" if self._is_end else bytes(data[self._at + 1 : p]).lower()
                if not (self._tagless or self._name in self._stops):
                    self._kept = False  # nothing to read in it: stop holding its bytes
            c = data[p]
            p += 1
            if c == 0x3E:  # ">"
                return p
            if s in (T_NAME, T_DQ, T_SQ):
                s = T_A
            elif s == T_A:
                s = T_N
            elif s == T_N:
                s = T_AN if c in SPACE else T_A if c == 0x2F else T_BV
            elif s == T_AN:
                s = T_A if c == 0x2F else T_BV if c == 0x3D else T_N
            elif s == T_BV:
                s = T_DQ if c == 0x22 else T_SQ if c == 0x27 else T_U
            else:  # T_U ended at whitespace
                s = T_A

    def _tag_done(self, data: Data, e: int) -> int:
        self._mode = _HTML
        if self._kept and not self._is_end:
            m = START.fullmatch(data, self._at, e)
            if m:
                return self._start_tag(data, m)
        elif self._name in SPECIAL:  # dropped for its size; its content is still raw text
            self._enter_special(self._name, ld=False)
            self._at = e
        return e

    def _start_tag(self, data: Data, m: re.Match[bytes]) -> int:
        name = m.group(1).lower()
        body, end = m.start(2), m.end()
        if end - m.start() > self._max_item:  # ignored, as when it arrives in pieces
            if name in SPECIAL:
                self._enter_special(name, ld=False)
                self._at = end
            return end
        attrs: dict[str, str] | None = None
        if name == b"meta" and self._meta:
            attrs = self._attrs(data, body, end)
            self._found.meta(attrs)
        sels = self._by_tag.get(name, ())
        if self._tagless:
            sels = (*sels, *self._tagless)
        if sels:
            attrs = attrs if attrs is not None else self._attrs(data, body, end)
            self._found.element(name.decode(self._charset, "replace"), attrs, sels)
        if name in SPECIAL:
            ld = False
            if name == b"script" and self._ld and LD_HINT.search(data, body, end):
                attrs = attrs if attrs is not None else self._attrs(data, body, end)
                kind = attrs.get("type", "").split(";")[0].strip(" \t\n\f\r")
                ld = lower_ascii(kind) == "application/ld+json"
            self._enter_special(name, ld=ld)
            self._at = end
        return end

    def _raw_end(self, data: Data, p: int) -> tuple[int, int]:
        """(Where the raw text's end tag starts or -1, how far the text is known to go)."""
        if self._raw is not None:
            m = self._raw.search(data, p)
            return (m.start(), p) if m else (-1, p)
        while m := SCRIPT_STATES[self._esc].search(data, p):
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
        self._raw = None if name == b"script" else RAW_END[name]
        self._esc = 0
        self._rawlen = len(name) + 2

    def _attrs(self, data: Data, start: int, end: int) -> dict[str, str]:
        out: dict[str, str] = {}
        for m in ATTR.finditer(data, start, end):
            key = self._text(m.group(1).lower())
            if key not in out:  # browsers keep the first of duplicated attributes
                raw = m.group(2)
                if raw is None:
                    raw = m.group(3)
                    if raw is None:
                        raw = m.group(4) or b""
                out[key] = attr_unescape(self._text(raw)) if raw else ""
        return out

    def _text(self, raw: bytes | bytearray) -> str:
        """Decode as the browser's input stream does: CR/CRLF become LF, NUL becomes U+FFFD."""
        text = raw.decode(self._charset, "replace")
        if "\r" in text:
            text = text.replace("\r\n", "\n").replace("\r", "\n")
        return text.replace("\x00", "\ufffd") if "\x00" in text else text

    def _add_jsonld(self, raw: Data) -> None:
        # A JSON-LD script's bytes: parsed and kept (the catalog's reader keeps the text).
        self._found.jsonld(self._text(raw))
