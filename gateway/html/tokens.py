"""The HTML tokenizer's rules as byte regexes, for gateway.html.scan.

`skippers` builds the regexes that carry the scan over everything no rule wants to see; the
rest is the tag grammar (`BODY`, `START`, `ATTR` and the streamed states `T_*`), raw-text
end tags, script escape states, and decoding helpers for what gets extracted.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable
from dataclasses import dataclass
from html import unescape
from html.entities import html5

from gateway.html.query import Selector

NAME_END = rb"[\t\n\f\r />]"
# Tag body after the name, by the tokenizer's rules: a quote opens a value only after "=",
# an unquoted value ends at whitespace or ">". `T_RUN` (driven by HtmlScan._tag_step) is the
# same grammar for a tag that arrives in pieces.
BODY = (
    rb"(?:[\t\n\f\r /]++|[^\t\n\f\r />][^\t\n\f\r /=>]*+"
    rb"""(?:[\t\n\f\r ]*+=[\t\n\f\r ]*+(?:"[^"]*+"|'[^']*+'|[^\t\n\f\r >"'][^\t\n\f\r >]*+|(?=>))"""
    rb"|(?![\t\n\f\r ]*+=)))*+>"
)
START = re.compile(rb"<([A-Za-z][^\t\n\f\r />]*+)(" + BODY + rb")")
TAG_REST = re.compile(BODY)  # from T_A, between attributes
ATTR = re.compile(
    rb"([^\t\n\f\r />][^\t\n\f\r /=>]*+)(?:[\t\n\f\r ]*+=[\t\n\f\r ]*+"
    rb"""(?:"([^"]*+)"|'([^']*+)'|([^\t\n\f\r >"'][^\t\n\f\r >]*+|)))?"""
)
# The fast skip regex ends each tag at its first ">"; that is wrong only inside a quoted value
# with a ">", and every such value matches here (text can too: a false alarm costs little).
DANGER = re.compile(rb"""=[\t\n\f\r ]*+(?:"[^">]*+>|'[^'>]*+>)""")
_RAW = (b"script", b"style", b"xmp", b"iframe", b"noembed", b"noframes", b"noscript")
RAW_END = {
    n: re.compile(rb"(?i)</" + n + rb"(?=[\t\n\f\r />])") for n in (*_RAW, b"title", b"textarea")
}
SPECIAL = frozenset((*RAW_END, b"plaintext"))
# Script data: "<!--" escapes, "<script" inside that escapes twice, so a document.write()
# "</script>" does not end it; "-->" goes back (the tokenizer's script data states).
SCRIPT_STATES = (
    re.compile(rb"<!--|</(?i:script)(?=[\t\n\f\r />])"),
    re.compile(rb"-->|</?(?i:script)(?=[\t\n\f\r />])"),
    re.compile(rb"-->|</(?i:script)(?=[\t\n\f\r />])"),
)
_COMMENT = rb"<!--(?:-?>|(?s:.)*?--!?>)"
COMMENT_END = re.compile(rb"--!?>")
LD_HINT = re.compile(rb"(?i)ld\+json|&")
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
    end = rb"/(?i:" + name + rb")" + NAME_END
    bad = end + (rb"|!--" if name == b"script" else b"")
    return rb"[^<]*+(?:<(?!" + bad + rb")[^<]*+)*+(?=<" + end + rb")"


def skippers(
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
            exact.append(named + BODY)
    fast.append(rb"</[^>]*+>")
    exact.append(rb"</(?:>|[^A-Za-z>][^>]*+>|[A-Za-z][^\t\n\f\r />]*+" + BODY + rb")")
    for alts in (fast, exact):
        alts += (_COMMENT, rb"<!(?!--)[^>]*+>", rb"<\?[^>]*+>", rb"<(?=[^A-Za-z!/?])")
    if meta is not None:
        fast.append(rb"<(?i:meta)(?=" + NAME_END + rb")" + _rest_without(meta, b"&"))
    if script:
        rest = _rest_without([b"ld+json"], b"&") if ld else rb"[^>]*+>"
        fast.append(rb"<(?i:script)(?=" + NAME_END + rb")" + rest + _raw_content(b"script"))
    if style:
        fast.append(rb"<(?i:style)(?=" + NAME_END + rb")[^>]*+>" + _raw_content(b"style"))
    return (
        re.compile(rb"[^<]*+(?:(?:" + b"|".join(fast) + rb")[^<]*+)*+"),
        re.compile(rb"[^<]*+(?:(?:" + b"|".join(exact) + rb")[^<]*+)*+"),
    )


@dataclass(frozen=True, slots=True)
class Setup:
    """What a scan for one `Wants` needs, worked out once."""

    meta: tuple[str, ...]
    selectors: tuple[Selector, ...]
    by_tag: dict[bytes, tuple[Selector, ...]]  # selectors naming a tag
    tagless: tuple[Selector, ...]  # selectors with an alternative for any tag
    stops: frozenset[bytes]  # start tags Python reads
    fast: re.Pattern[bytes]
    exact: re.Pattern[bytes]


@functools.lru_cache(maxsize=128)
def plan(meta_names: frozenset[str], selectors: tuple[Selector, ...], *, jsonld: bool) -> Setup:
    """Work out once what scanning for these meta names, selectors and JSON-LD needs."""
    sels = tuple(dict.fromkeys(selectors))
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
    meta = tuple(sorted(meta_names))
    stops = frozenset({*SPECIAL, *by_tag, *((b"meta",) if meta else ())})
    solo = not tagless  # no tagless selector could want a meta, script or style tag
    fast, exact = skippers(
        stops,
        tuple(sorted(keys)) if keys and tagless else None,
        tuple(m.encode("ascii") for m in meta)
        if meta and solo and b"meta" not in by_tag and all(m.isascii() for m in meta)
        else None,
        generic=keys is not None,
        script=solo and b"script" not in by_tag,
        ld=jsonld,
        style=solo and b"style" not in by_tag,
    )
    return Setup(
        meta,
        sels,
        {tag: tuple(s) for tag, s in by_tag.items()},
        tuple(tagless),
        stops,
        fast,
        exact,
    )


def attr_unescape(s: str) -> str:
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


def codec_name(name: str) -> str:
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


def unwrap(text: str) -> str:
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


# States of the streamed tag tokenizer (HtmlScan._tag_step).
T_NAME, T_A, T_N, T_AN, T_BV, T_DQ, T_SQ, T_U = range(8)
T_RUN = {
    T_NAME: re.compile(rb"[^\t\n\f\r />]*+"),
    T_A: re.compile(rb"[\t\n\f\r /]*+"),
    T_N: re.compile(rb"[^\t\n\f\r /=>]*+"),
    T_AN: re.compile(rb"[\t\n\f\r ]*+"),
    T_BV: re.compile(rb"[\t\n\f\r ]*+"),
    T_DQ: re.compile(rb'[^"]*+'),
    T_SQ: re.compile(rb"[^']*+"),
    T_U: re.compile(rb"[^\t\n\f\r >]*+"),
}
SPACE = frozenset(b"\t\n\f\r ")
