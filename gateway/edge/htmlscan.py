"""Pulls <meta> values, JSON-LD and element attributes out of HTML while it streams past.

`HtmlScan` is fed the decoded body chunk by chunk and never holds the page: only an unfinished
tag or JSON-LD script is carried over (at most `max_item` bytes; a bigger one is dropped and
scanning resumes after it), plus a few bytes of a possible end marker. Tokens follow the HTML
tokenizer, so a `<meta` inside an attribute value, a comment or a script is not a tag:

* One possessive regex skips text, comments, doctypes/bogus comments, end tags and start tags
  nobody asked for; Python code only runs for the start tags that matter (meta, script and
  the other raw-text elements, the selectors' tag names).
* Raw text (`script`, `style`, `title`, `textarea`, `xmp`, `iframe`, `noembed`, `noframes`,
  and `noscript` as in a browser with scripting on) is skipped up to its end tag; `plaintext`
  ends scanning. A script ends at its first `</script`, as in browsers; the rarely seen
  "double escaped" state (`<!--` then `<script` inside a script) is not modelled. JSON-LD
  must therefore not contain a literal `</script` (serialisers escape it as `<\\/script`).
* Foreign content (SVG/MathML CDATA) and `<template>` are read like ordinary HTML.
* At the end of the body an unfinished tag is dropped (as browsers do) and an unfinished
  JSON-LD script is parsed as far as it goes (browsers close it at EOF; after truncation
  that is normally invalid JSON and so skipped).
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from html import unescape
from html.entities import html5
from typing import Any

__all__ = [
    "HtmlFound",
    "HtmlScan",
    "Selector",
    "Wants",
    "jsonld_lookup",
    "parse_selector",
    "selector_matches",
]

# ---------------------------------------------------------------------------------------------
# Selectors

_CSS_WS = " \t\n\r\f"
_ESC = r"\\(?:[0-9a-fA-F]{1,6}[ \t\n\r\f]?|[^\n\r\f0-9a-fA-F])"
_IDENT = rf"(?:[\w-]|[^\x00-\x7f]|{_ESC})+"
_STRING = r""""(?:[^"\\\n]|\\.)*"|'(?:[^'\\\n]|\\.)*'"""
_PART = re.compile(
    rf"(?P<tag>\*|{_IDENT})|\#(?P<id>{_IDENT})|\.(?P<cls>{_IDENT})"
    rf"|\[[ \t\n\r\f]*(?P<attr>{_IDENT})[ \t\n\r\f]*"
    rf"(?:(?P<op>[\^$*~]?=)[ \t\n\r\f]*(?P<val>{_IDENT}|{_STRING})[ \t\n\r\f]*)?\]",
    re.S,
)
_UNESC = re.compile(r"\\(?:([0-9a-fA-F]{1,6})[ \t\n\r\f]?|\n|(.))", re.S)
_SPLIT_WS = re.compile(r"[ \t\n\f\r]+")


@dataclass(frozen=True, slots=True)
class _Compound:
    tag: str | None  # lowercased; None for "*" or no type selector
    tests: tuple[tuple[str, str, str], ...]  # (attr, op, value); op "" is presence


@dataclass(frozen=True, slots=True)
class Selector:
    """A compiled simple CSS selector (comma-separated compound selectors)."""

    text: str
    alternatives: tuple[_Compound, ...]

    def __str__(self) -> str:
        return self.text


def _css_unescape(s: str) -> str:
    def one(m: re.Match[str]) -> str:
        if m.group(1):
            cp = int(m.group(1), 16)
            return chr(cp) if 0 < cp <= 0x10FFFF and not 0xD800 <= cp <= 0xDFFF else "\ufffd"
        return m.group(2) or ""  # an escaped newline is a line continuation

    return _UNESC.sub(one, s) if "\\" in s else s


def parse_selector(text: str) -> Selector:
    """Compile 'tag#id.class[attr^=v], ...'; ValueError naming the problem otherwise."""
    src = text.strip(_CSS_WS)

    def fail(why: str) -> ValueError:
        return ValueError(f"selector {text!r}: {why}")

    if not src:
        raise fail("it is empty; use a compound selector such as 'a.buy[data-sku]'")
    alts: list[_Compound] = []
    i, n = 0, len(src)
    while True:
        tag: str | None = None
        tests: list[tuple[str, str, str]] = []
        start = i
        while i < n and (m := _PART.match(src, i)) is not None:
            if m.group("tag") is not None:
                if i != start:
                    break  # a type selector only comes first
                name = _css_unescape(m.group("tag")).lower()
                tag = None if name == "*" else name
            elif m.group("id") is not None:
                tests.append(("id", "=", _css_unescape(m.group("id"))))
            elif m.group("cls") is not None:
                tests.append(("class", "~=", _css_unescape(m.group("cls"))))
            else:
                val = m.group("val") or ""
                if val[:1] in ("'", '"'):
                    val = val[1:-1]
                tests.append(
                    (
                        _css_unescape(m.group("attr")).lower(),
                        m.group("op") or "",
                        _css_unescape(val),
                    )
                )
            i = m.end()
        if i == start:
            if i >= n or src[i] == ",":
                raise fail("empty alternative (a stray comma)")
        else:
            alts.append(_Compound(tag, tuple(tests)))
        j = i
        while j < n and src[j] in _CSS_WS:
            j += 1
        if j >= n:
            return Selector(src, tuple(alts))
        if src[j] == "," and i > start:
            i = j + 1
            while i < n and src[i] in _CSS_WS:
                i += 1
            if i >= n:
                raise fail("empty alternative after the last comma")
            continue
        raise fail(_why(src, i, j))


def _why(src: str, i: int, j: int) -> str:
    c = src[j]
    if c in ">+~" or j > i:
        return "combinators are not supported; use one compound selector such as 'a.buy[data-sku]'"
    if c == ":":
        return "pseudo-classes and pseudo-elements (':') are not supported"
    if c == "[":
        if "]" not in src[j:]:
            return f"unbalanced brackets: '[' at position {j} is never closed"
        return (
            f"cannot read the attribute test at position {j}; use [attr], [attr=value], "
            "[attr^=value], [attr$=value], [attr*=value] or [attr~=value]"
        )
    if c == "]":
        return f"unbalanced brackets: ']' at position {j} has no '['"
    return f"unexpected {c!r} at position {j}"


def _test(op: str, want: str, have: str) -> bool:
    if op == "=":
        return have == want
    if not want:
        return op == ""  # an empty value never matches ^= $= *= ~=
    if op == "^=":
        return have.startswith(want)
    if op == "$=":
        return have.endswith(want)
    if op == "*=":
        return want in have
    return op == "~=" and want in _SPLIT_WS.split(have)


def selector_matches(sel: Selector, tag: str, attrs: Mapping[str, str]) -> bool:
    """Does an element `tag` with `attrs` (lowercased names) match any alternative of `sel`?"""
    tag = tag.lower()
    for alt in sel.alternatives:
        if alt.tag is not None and alt.tag != tag:
            continue
        for name, op, want in alt.tests:
            have = attrs.get(name)
            if have is None or not _test(op, want, have):
                break
        else:
            return True
    return False


# ---------------------------------------------------------------------------------------------
# What to look for, what was found


@dataclass(frozen=True, slots=True)
class Wants:
    """What a scan collects; meta names are matched lowercased."""

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


# ---------------------------------------------------------------------------------------------
# Scanner

# Tag body after the name, by the tokenizer's rules: a quote opens a value only after "=",
# an unquoted value ends at whitespace or ">". `_tag_step` below is the same grammar, streamed.
_BODY = (
    rb"(?:[\t\n\f\r /]++|[^\t\n\f\r />][^\t\n\f\r /=>]*+"
    rb"""(?:[\t\n\f\r ]*+=[\t\n\f\r ]*+(?:"[^"]*+"|'[^']*+'|[^\t\n\f\r >]++|(?=>))"""
    rb"|(?![\t\n\f\r ]*+=)))*+>"
)
_START = re.compile(rb"<([A-Za-z][^\t\n\f\r />]*+)(" + _BODY + rb")")
_ATTR = re.compile(
    rb"([^\t\n\f\r />][^\t\n\f\r /=>]*+)(?:[\t\n\f\r ]*+=[\t\n\f\r ]*+"
    rb"""(?:"([^"]*+)"|'([^']*+)'|([^\t\n\f\r >]*+)))?"""
)
_RAW_NAMES = (b"script", b"style", b"xmp", b"iframe", b"noembed", b"noframes", b"noscript")
_RAW_END = {
    n: re.compile(rb"(?i)</" + n + rb"(?=[\t\n\f\r />])")
    for n in (*_RAW_NAMES, b"title", b"textarea")
}
_SPECIAL = frozenset((*_RAW_END, b"plaintext"))
_COMMENT_END = re.compile(rb"--!?>")
_LD_HINT = re.compile(rb"(?i)ld\+json|&")
_LD_WRAP_HEAD = re.compile(r"^\s*(?:<!--|(?://|/\*)?\s*<!\[CDATA\[(?:\s*\*/)?)")
_LD_WRAP_TAIL = re.compile(r"(?:-->|(?://|/\*)?\s*\]\]>(?:\s*\*/)?)\s*$")
_CHARREF = re.compile(r"&(#[0-9]+;?|#[xX][0-9a-fA-F]+;?|[^\t\n\f <&#;]{1,32};?)")
_MAX_MATCHES = 100


def _skip_re(names: frozenset[bytes] | None) -> re.Pattern[bytes]:
    """Consumes everything up to the next start tag named in `names` (None: any start tag)."""
    alts = [
        rb"[^<]++",
        rb"<(?=[^A-Za-z!/?])",  # a "<" that starts no tag is text
        rb"<!--(?:-?>|(?s:.)*?--!?>)",
        rb"<!(?!--)[^>]*+>",
        rb"<\?[^>]*+>",
        rb"</(?:>|[^A-Za-z>][^>]*+>|[A-Za-z][^\t\n\f\r />]*+" + _BODY + rb")",
    ]
    if names is not None:
        listed = b"|".join(re.escape(n) for n in sorted(names, key=len, reverse=True))
        alts.append(rb"<(?!(?i:" + listed + rb")[\t\n\f\r />])[A-Za-z][^\t\n\f\r />]*+" + _BODY)
    return re.compile(rb"(?:" + b"|".join(alts) + rb")*+")


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


# Modes of the scanner and states of the streamed tag tokenizer.
_HTML, _TAG, _RAW, _JSONLD, _COMMENT, _BOGUS, _OFF = range(7)
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
        "_at", "_buf", "_by_tag", "_charset", "_elements", "_fresh", "_is_end", "_jsonld",
        "_kept", "_max_bytes", "_max_item", "_meta", "_meta_pre", "_mode", "_name", "_names",
        "_p", "_raw", "_rawlen", "_result", "_seen", "_sels", "_skip", "_sub", "_truncated",
        "_wants", "_wild",
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
        self._wants = wants
        self._charset = _charset(charset)
        self._max_bytes = max_bytes
        self._max_item = max_item
        self._meta: dict[str, list[str]] = {name: [] for name in sorted(wants.meta)}
        self._jsonld: list[Any] = []
        sels = tuple(dict.fromkeys(wants.selectors))
        self._elements: dict[Selector, list[dict[str, str]]] = {s: [] for s in sels}
        self._sels = sels
        self._by_tag: dict[bytes, tuple[Selector, ...]] = {}
        self._wild = any(a.tag is None for s in sels for a in s.alternatives)
        for s in sels:
            for tag in {a.tag for a in s.alternatives if a.tag is not None}:
                key = tag.encode("utf-8")
                self._by_tag[key] = (*self._by_tag.get(key, ()), s)
        names = set(_SPECIAL) | set(self._by_tag)
        if self._meta:
            names.add(b"meta")
        self._names = frozenset(names)
        self._skip = _skip_re(None if self._wild else self._names)
        # Most <meta> tags are not wanted; a cheap search spares parsing their attributes.
        self._meta_pre: re.Pattern[bytes] | None = None
        if self._meta and all(m.isascii() for m in self._meta):
            alts = b"|".join(re.escape(m.encode("ascii")) for m in self._meta)
            self._meta_pre = re.compile(rb"(?i)" + alts + rb"|&")
        self._buf = bytearray()
        self._mode = _OFF if wants.empty else _HTML
        self._p = self._at = self._rawlen = self._seen = self._sub = 0
        self._kept = self._is_end = self._fresh = self._truncated = False
        self._name = b""
        self._raw = _RAW_END[b"script"]
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
        if len(chunk) > room:
            chunk = chunk[:room]
            self._truncated = True
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
        if self._truncated:
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
        while True:
            mode = self._mode
            if mode == _HTML:
                m = self._skip.match(data, p)
                p = m.end() if m else p
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
            elif mode in (_RAW, _JSONLD):
                m = self._raw.search(data, p)
                if m:
                    if mode == _JSONLD:
                        self._add_jsonld(data[self._at : m.start()])
                    self._mode, p = _HTML, m.start()
                    continue
                p = max(p, n - self._rawlen)  # a split end tag may start here
                if mode == _JSONLD and n - self._at > self._max_item:
                    self._mode = _RAW
                self._p = p
                return self._at if self._mode == _JSONLD else p
            elif mode == _COMMENT:
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

    def _token(self, data: Data, p: int) -> int:
        """Handle the token at data[p] == "<" the skip regex stopped at; -1: need more bytes."""
        n = len(data)
        if p + 1 >= n:
            return -1
        c = data[p + 1]
        if c == 0x21:  # "!"
            if data.startswith(b"<!--", p):
                self._mode, self._fresh = _COMMENT, True
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
                if not (self._wild or self._name in self._names):
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
            self._enter_special(self._name, False)
        return e

    def _start_tag(self, data: Data, m: re.Match[bytes]) -> int:
        name = m.group(1).lower()
        body, end = m.start(2), m.end()
        attrs: dict[str, str] | None = None
        pre = self._meta_pre
        if name == b"meta" and self._meta and (pre is None or pre.search(data, body, end)):
            attrs = self._attrs(data, body, end)
            self._add_meta(attrs)
        sels = self._by_tag.get(name, ()) if not self._wild else self._sels
        if sels:
            attrs = attrs if attrs is not None else self._attrs(data, body, end)
            tag = name.decode(self._charset, "replace")
            for sel in sels:
                hits = self._elements[sel]
                if len(hits) < _MAX_MATCHES and selector_matches(sel, tag, attrs):
                    hits.append(dict(attrs))
        if name in _SPECIAL:
            ld = False
            if name == b"script" and self._wants.jsonld and _LD_HINT.search(data, body, end):
                attrs = attrs if attrs is not None else self._attrs(data, body, end)
                kind = attrs.get("type", "").split(";")[0].strip(" \t\n\f\r").lower()
                ld = kind == "application/ld+json"
            self._enter_special(name, ld)
            self._at = end
        return end

    def _enter_special(self, name: bytes, ld: bool) -> None:
        if name == b"plaintext":
            self._mode = _OFF
            return
        self._mode = _JSONLD if ld else _RAW
        self._raw = _RAW_END[name]
        self._rawlen = len(name) + 2

    def _attrs(self, data: Data, start: int, end: int) -> dict[str, str]:
        out: dict[str, str] = {}
        cs = self._charset
        for m in _ATTR.finditer(data, start, end):
            key = m.group(1).lower().decode(cs, "replace")
            if key not in out:  # browsers keep the first of duplicated attributes
                raw = m.group(2)
                if raw is None:
                    raw = m.group(3)
                    if raw is None:
                        raw = m.group(4) or b""
                out[key] = _attr_unescape(raw.decode(cs, "replace")) if raw else ""
        return out

    def _add_meta(self, attrs: dict[str, str]) -> None:
        content = attrs.get("content")
        if content is None:
            return
        seen: set[str] = set()
        for key in ("name", "property", "itemprop"):
            for token in attrs.get(key, "").lower().split():
                if token in self._meta and token not in seen:
                    seen.add(token)
                    self._meta[token].append(content)

    def _add_jsonld(self, raw: Data) -> None:
        text = raw.decode(self._charset, "replace").lstrip("\ufeff")
        for _ in range(2):  # "<!--<![CDATA[" ... "]]>-->" seen in the wild
            text = _LD_WRAP_TAIL.sub("", _LD_WRAP_HEAD.sub("", text, count=1), count=1)
        with contextlib.suppress(ValueError, RecursionError):  # invalid JSON-LD is skipped
            self._jsonld.append(json.loads(text))


# ---------------------------------------------------------------------------------------------
# JSON-LD paths

_SCHEMA_PREFIX = re.compile(r"^(?:schema:|https?://(?:www\.)?schema\.org/)", re.I)
_MISSING = object()


def _type_key(t: str) -> str:
    return _SCHEMA_PREFIX.sub("", t.strip()).lower()


def _objects(docs: Sequence[Any]) -> Iterator[dict[str, Any]]:
    """Every object in `docs`, depth first in document order (no recursion limit)."""
    stack: list[Any] = list(reversed(docs))
    while stack:
        v = stack.pop()
        if isinstance(v, dict):
            yield v
            stack.extend(reversed(list(v.values())))
        elif isinstance(v, list):
            stack.extend(reversed(v))


def _flat(v: Any) -> Iterator[Any]:
    stack = [v]
    while stack:
        x = stack.pop()
        if isinstance(x, list):
            stack.extend(reversed(x))
        else:
            yield x


def _get(obj: dict[str, Any], key: str) -> Any:
    for k in (key, "schema:" + key, "http://schema.org/" + key, "https://schema.org/" + key):
        if k in obj:
            return obj[k]
    return _MISSING


def jsonld_lookup(docs: Sequence[Any], path: str) -> list[Any]:
    """Values at 'Type.key.key' in parsed JSON-LD documents, in document order."""
    parts = [p.strip() for p in path.split(".")]
    if not path.strip():
        raise ValueError("JSON-LD path is empty; use Type.key, e.g. 'Product.offers.price'")
    if not all(parts):
        raise ValueError(
            f"JSON-LD path {path!r} has an empty segment; use Type.key, e.g. 'Product.offers.price'"
        )
    want = None if parts[0] == "*" else _type_key(parts[0])
    out: list[Any] = []
    for obj in _objects(docs):
        if want is not None:
            t = obj.get("@type")
            types = [t] if isinstance(t, str) else t if isinstance(t, list) else []
            if not any(isinstance(x, str) and _type_key(x) == want for x in types):
                continue
        cur: list[Any] = [obj]
        for key in parts[1:]:
            cur = [
                got
                for v in cur
                for item in _flat(v)
                if isinstance(item, dict) and (got := _get(item, key)) is not _MISSING
            ]
        out.extend(v for v in cur if v is not None)
    return out
