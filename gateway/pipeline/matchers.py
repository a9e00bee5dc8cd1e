"""Rule syntax in (globs, status ranges, conditions), compiled matchers out.

The small pure pieces `rules` compiles a rule's request and response conditions from; a
ValueError("field: message") says what is wrong with one.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from gateway.pipeline.rulefile import Condition, RegexCondition

_GLOB_TOKEN = re.compile(r"\*\*|\*|\?|\{[A-Za-z_][A-Za-z0-9_]*\}")
_STATUS_RANGE = re.compile(r"^\s*([1-5])xx\s*$|^\s*(\d{3})\s*-\s*(\d{3})\s*$")


@dataclass(frozen=True, slots=True)
class Cond:
    """A compiled condition on one named value."""

    name: str
    present: bool = True
    equals: str | None = None
    regex: re.Pattern[str] | None = None

    def test(self, values: Sequence[Any]) -> bool:
        """True when the values satisfy the condition."""
        if not self.present:
            return not values
        if not values:
            return False
        if self.equals is not None:
            return any(text(v) == self.equals for v in values)
        if self.regex is not None:
            return any(self.regex.search(text(v)) for v in values)
        return True


def glob(pattern: str, *, host: bool = False) -> re.Pattern[str]:
    """`/product/{sku}`, `/blog/*`, `/docs/**`, `*.example.com` as an anchored regex."""
    if not host and not pattern.startswith("/"):
        raise ValueError(f"path: {pattern!r} must start with '/'")
    out: list[str] = []
    names: set[str] = set()
    pos = 0
    for token in _GLOB_TOKEN.finditer(pattern):
        out.append(re.escape(pattern[pos : token.start()]))
        text = token.group()
        if text == "**":
            out.append(".*")
        elif text == "*":
            out.append("[^.]*" if host else "[^/]*")
        elif text == "?":
            out.append("[^.]" if host else "[^/]")
        elif text in names:
            raise ValueError(f"path: {pattern!r}: {text} appears twice; name each part once")
        else:
            names.add(text)
            out.append(f"(?P<{text[1:-1]}>[^/]+)")
        pos = token.end()
    out.append(re.escape(pattern[pos:]))
    try:
        compiled = re.compile("".join(out))
    except re.error as exc:
        raise ValueError(f"path: {pattern!r}: {exc}") from None
    return compiled


def first_segments(paths: list[str]) -> tuple[str, ...] | None:
    """The first path segment of each glob, or None when any of them is a wildcard."""
    out = []
    for pattern in paths:
        segment = pattern[1:].split("/", 1)[0]
        if _GLOB_TOKEN.search(segment):
            return None
        out.append(segment)
    # Two globs under one segment ("/a/x", "/a/y") must not list the rule twice.
    return tuple(dict.fromkeys(out)) or None


# Without `status`: a success or a redirect, never an error page or a 304 revalidation
# (a missing product or a cached thank-you page is no conversion).
DEFAULT_STATUSES = ((200, 299), (300, 303), (305, 399))


def statuses(value: int | list[int] | str | None) -> tuple[tuple[int, int], ...] | None:
    """`302`, `[301, 302]`, `"300-399"`, `"3xx"`, `"2xx, 304"` as inclusive ranges."""
    if value is None:
        return DEFAULT_STATUSES
    if isinstance(value, int):
        return ((value, value),)
    if isinstance(value, list):
        return tuple((v, v) for v in value)
    out = []
    for part in value.split(","):
        found = _STATUS_RANGE.match(part)
        if part.strip().isdecimal():  # isdigit() also takes "²", which int() refuses
            out.append((int(part), int(part)))
        elif found and found.group(1):
            base = int(found.group(1)) * 100
            out.append((base, base + 99))
        elif found:
            out.append((int(found.group(2)), int(found.group(3))))
        else:
            raise ValueError(
                f'status: {part.strip()!r} is not a status; use 302, [301, 302], "300-399" or "3xx"'
            )
    return tuple(out)


def compile_conditions(table: Mapping[str, Condition]) -> tuple[Cond, ...]:
    """`{ name = true | false | "value" | { regex = "..." } }` as conditions."""
    out = []
    for name, value in table.items():
        if isinstance(value, bool):
            out.append(Cond(name, present=value))
        elif isinstance(value, RegexCondition):
            out.append(Cond(name, regex=re.compile(value.regex)))
        else:
            out.append(Cond(name, equals=text(value)))
    return tuple(out)


def referrer_pattern(value: str | RegexCondition | None) -> re.Pattern[str] | None:
    """A Referer glob (`*` is anything) or `{ regex = ... }` as a pattern."""
    if value is None:
        return None
    if isinstance(value, RegexCondition):
        return re.compile(value.regex)
    parts = (re.escape(p) for p in value.split("*"))
    return re.compile("^" + ".*".join(parts) + "$")


def as_list(value: str | list[str] | None) -> list[str]:
    """A key that takes one string or a list, as a list."""
    if value is None:
        return []
    return [value] if isinstance(value, str) else list(value)


def lower_set(value: str | list[str] | None) -> frozenset[str] | None:
    """Media types and the like, lowercased; None when not given."""
    items = as_list(value)
    return frozenset(i.strip().lower() for i in items) if items else None


def text(value: Any) -> str:
    """A value as text the way conditions and event ids compare it."""
    if isinstance(value, bool):
        # JSON bodies say true/false; `paid = "true"` must match {"paid": true}.
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)
