"""A Python regex in, the same test in the syntax nginx (PCRE) and Caddy (RE2) share, out.

The front proxy only decides which requests are worth sending through the gateway; the
gateway itself still matches every rule exactly. So a translation may match *more* than
the original (routing a few extra requests through Python costs time, not correctness)
but never less. Paths reach the fast route only when they are plain ASCII (see `routes`),
so every one-character atom is rendered as the explicit set of ASCII characters Python
would accept there, in `\\xHH` escapes both engines read the same way. What neither
engine can take (backreferences, lookarounds, conditionals, atomic groups) is replaced by
something that matches at least as much, and the result says it was widened.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

# Python's own regex parser is the only exact reading of its syntax (private, unstubbed;
# the public `sre_parse` alias warns on import).
sre: Any = importlib.import_module("re._constants")
sre_parse: Any = importlib.import_module("re._parser")

# RE2 refuses repeat counts above 1000.
_MAX_COUNT = 1000
_ASCII = frozenset(range(128))
_CATEGORIES = {
    sre.CATEGORY_DIGIT: r"\d",
    sre.CATEGORY_NOT_DIGIT: r"\D",
    sre.CATEGORY_SPACE: r"\s",
    sre.CATEGORY_NOT_SPACE: r"\S",
    sre.CATEGORY_WORD: r"\w",
    sre.CATEGORY_NOT_WORD: r"\W",
}


_ATOMS = (sre.LITERAL, sre.NOT_LITERAL, sre.ANY, sre.IN)


class Untranslatable(ValueError):
    """A pattern with no portable equivalent at all (e.g. a repeat count RE2 refuses)."""


@dataclass(frozen=True, slots=True)
class Portable:
    """A translated pattern; `exact` is False when it was widened to be expressible."""

    pattern: str
    exact: bool


def translate(pattern: str, *, start: str = "^", end: str = "$") -> Portable:
    """`pattern` (Python syntax, re.search semantics) as a portable regex.

    `start` renders `^`/`\\A`: a caller that embeds the result after other text passes
    an assertion that holds where the embedded part begins; `end` renders `$`/`\\Z` the
    same way for where it ends (e.g. before a query string).
    """
    parsed = sre_parse.parse(pattern)
    out = _Emitter(start, end)
    text = out.seq(parsed, parsed.state.flags)
    return Portable(text, out.exact)


def _char_class(chars: Iterable[int]) -> str:
    codes = set(chars)
    if not codes:
        # Nothing in ASCII: only odd (non-ASCII) paths could match, and those are routed
        # to the gateway before any rule is looked at.
        raise Untranslatable("a character no plain ASCII path contains")
    if len(codes) == 1:
        return _literal(next(iter(codes)))
    if len(_ASCII - codes) < len(codes):
        # "[^/]": also every byte or character beyond ASCII, which only widens the match.
        return "[^" + _ranges(_ASCII - codes) + "]"
    return "[" + _ranges(codes) + "]"


def _ranges(chars: Iterable[int]) -> str:
    codes = sorted(chars)
    parts: list[str] = []
    i = 0
    while i < len(codes):
        j = i
        while j + 1 < len(codes) and codes[j + 1] == codes[j] + 1:
            j += 1
        first, last = _member(codes[i]), _member(codes[j])
        parts.append(first if i == j else first + last if j == i + 1 else f"{first}-{last}")
        i = j + 1
    return "".join(parts)


def _member(code: int) -> str:
    char = chr(code)
    return char if char.isalnum() or char in "/_.~@,:=!&" else f"\\x{code:02x}"


def _literal(code: int) -> str:
    char = chr(code)
    if char.isalnum() or char in "/_-~@,:=!&%'":
        return char
    if char in ".^$*+?()[]|\\":
        return "\\" + char
    # Quotes, braces, semicolons, spaces: never raw, so neither config syntax sees them.
    return f"\\x{code:02x}"


def _fold(chars: set[int], flags: int) -> set[int]:
    if flags & sre.SRE_FLAG_IGNORECASE:
        chars = chars | {ord(chr(c).swapcase()) for c in chars if chr(c).isalpha()}
    return chars


def _category(cat: Any) -> set[int]:
    probe = re.compile(_CATEGORIES[cat])
    return {c for c in _ASCII if probe.fullmatch(chr(c))}


class _Emitter:
    def __init__(self, start: str, end: str) -> None:
        self.start = start
        self.end = end
        self.exact = True

    def seq(self, items: Any, flags: int) -> str:
        return "".join(self.node(op, av, flags) for op, av in items)

    def node(self, op: Any, av: Any, flags: int) -> str:
        if op is sre.LITERAL:
            return _char_class(_fold({av} & _ASCII, flags)) if av < 128 else self._never()
        if op is sre.NOT_LITERAL:
            return _char_class(_ASCII - _fold({av}, flags))
        if op is sre.ANY:
            return _char_class(_ASCII if flags & sre.SRE_FLAG_DOTALL else _ASCII - {10})
        if op is sre.IN:
            return _char_class(self._set(av, flags))
        if op is sre.BRANCH:
            return "(?:" + "|".join(self.seq(b, flags) for b in av[1]) + ")"
        if op is sre.SUBPATTERN:
            _group, add, drop, body = av
            return "(?:" + self.seq(body, (flags | add) & ~drop) + ")"
        if op in (sre.MAX_REPEAT, sre.MIN_REPEAT, sre.POSSESSIVE_REPEAT):
            low, high, body = av
            # Laziness and possessiveness change which match is found, never whether one is;
            # dropping possessiveness can only add matches.
            if op is sre.POSSESSIVE_REPEAT:
                self.exact = False
            inner = self.seq(body, flags)
            if not (len(body) == 1 and body[0][0] in _ATOMS):
                inner = "(?:" + inner + ")"
            return inner + _count(low, high)
        if op is sre.ATOMIC_GROUP:
            self.exact = False
            return "(?:" + self.seq(av, flags) + ")"
        if op is sre.AT:
            return self._at(av)
        if op in (sre.ASSERT, sre.ASSERT_NOT):
            # A lookaround only removes matches: without it the pattern matches more.
            self.exact = False
            return ""
        if op is sre.GROUPREF:
            # Whatever the group matched is some text: any text is more.
            self.exact = False
            return ".*"
        if op is sre.GROUPREF_EXISTS:
            _group, yes, no = av
            self.exact = False
            return "(?:" + self.seq(yes, flags) + "|" + (self.seq(no, flags) if no else "") + ")"
        raise Untranslatable(f"unsupported regex construct {op}")

    def _never(self) -> str:
        raise Untranslatable("a non-ASCII character")

    def _set(self, items: Any, flags: int) -> set[int]:
        chars: set[int] = set()
        negate = False
        for op, av in items:
            if op is sre.NEGATE:
                negate = True
            elif op is sre.LITERAL:
                chars.add(av)
            elif op is sre.RANGE:
                chars.update(range(av[0], min(av[1], 127) + 1))
            elif op is sre.CATEGORY:
                chars |= _category(av)
            else:
                raise Untranslatable(f"unsupported set member {op}")
        chars = _fold(chars & _ASCII, flags)
        return set(_ASCII - chars) if negate else chars

    def _at(self, where: Any) -> str:
        if where in (sre.AT_BEGINNING, sre.AT_BEGINNING_STRING, sre.AT_BEGINNING_LINE):
            # No newline ever reaches a rule on the fast route, so the line forms agree.
            return self.start
        if where in (sre.AT_END, sre.AT_END_STRING, sre.AT_END_LINE):
            return self.end
        if where is sre.AT_BOUNDARY:
            return "\\b"
        if where is sre.AT_NON_BOUNDARY:
            return "\\B"
        raise Untranslatable(f"unsupported anchor {where}")


def _count(low: int, high: int) -> str:
    if low > _MAX_COUNT or (high != sre.MAXREPEAT and high > _MAX_COUNT):
        raise Untranslatable(f"a repeat count above {_MAX_COUNT}")
    if high == sre.MAXREPEAT:
        return {0: "*", 1: "+"}.get(low, f"{{{low},}}")
    if (low, high) == (0, 1):
        return "?"
    return f"{{{low}}}" if low == high else f"{{{low},{high}}}"
