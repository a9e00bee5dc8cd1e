"""Simple CSS selectors and JSON-LD paths: how rule files point at values in a page.

`parse_selector` compiles one compound selector or a comma-separated list of them (no
combinators, no pseudo-classes); `selector_matches` tests an element's start tag against it.
`jsonld_lookup` walks 'Type.key.key' paths through parsed JSON-LD documents.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["Selector", "jsonld_lookup", "parse_selector", "selector_matches"]

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


@dataclass(frozen=True, slots=True)
class JsonLdIndex:
    """Every object of a page's JSON-LD with its normalized @types, in document order.

    Built once per page, so several rules and fields reading the same page do not walk
    and normalize its JSON-LD again for each path.
    """

    objects: tuple[tuple[frozenset[str], dict[str, Any]], ...]

    @classmethod
    def of(cls, docs: Sequence[Any]) -> JsonLdIndex:
        """Index parsed JSON-LD documents."""
        out = []
        for obj in _objects(docs):
            t = obj.get("@type")
            types = [t] if isinstance(t, str) else t if isinstance(t, list) else []
            out.append((frozenset(_type_key(x) for x in types if isinstance(x, str)), obj))
        return cls(tuple(out))


def jsonld_lookup(docs: Sequence[Any] | JsonLdIndex, path: str) -> list[Any]:
    """Values at 'Type.key.key' in parsed JSON-LD documents, in document order.

    Every object whose "@type" (a string or a list) names Type is a start, wherever it is
    nested (top-level lists, "@graph", inside other objects; nested matches count too). Types
    compare case-insensitively and may be written 'schema:Product' or with the schema.org URL;
    '*' matches any object. Keys are walked from each start (also found as 'schema:key' or
    with the URL); a list met on the way is flattened, one on the last key is returned as is.
    JSON null is no value. ValueError for an empty path or segment.
    """
    parts = [p.strip() for p in path.split(".")]
    if not path.strip():
        raise ValueError("JSON-LD path is empty; use Type.key, e.g. 'Product.offers.price'")
    if not all(parts):
        raise ValueError(
            f"JSON-LD path {path!r} has an empty segment; use Type.key, e.g. 'Product.offers.price'"
        )
    want = None if parts[0] == "*" else _type_key(parts[0])
    index = docs if isinstance(docs, JsonLdIndex) else JsonLdIndex.of(docs)
    out: list[Any] = []
    for types, obj in index.objects:
        if want is not None and want not in types:
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
