"""Loaded rules in, the requests a front proxy must send through the gateway out.

What the gateway does to a request that no rule matches, outside its prefix and not a
document navigation, is nothing: such requests (images, scripts, styles, fonts, API calls
no rule looks at) can go straight to the site. Everything else must reach the gateway:

- document navigations: it tags them, issues `_fbp`/`_fbc` and records the PageView (and
  the click/submit rules travel with the tag, so they need nothing more);
- its prefix: px.js, /collect, /events, webhooks, health, metrics, admin;
- every method, host and path some `trigger = "request"` rule may match. Conditions the
  front does not test (query, content type, referrer, status, body) are left out, which
  routes more, never less; so is a regex no engine can take as written;
- paths that are not plain ASCII, or that have empty or dot segments: front proxies
  match such paths decoded and normalized while rules see them as sent, so only the
  gateway can decide.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from gateway.front.portable import Untranslatable, sre, sre_parse, translate
from gateway.pipeline.rules import Rule, RuleSet

# A raw request target whose path needs no decoding or normalizing: printable ASCII
# pchars only (no '%'), no '//' and no segment starting with '.'.
ODD_PATH = r"^[^?]*?(?:[^?A-Za-z0-9._~!&()*+,;=:@/-]|//|/\.)"
DOCUMENT_DESTS = ("document", "iframe", "frame")
# The same test turned around, for nginx: a request target that is *not* odd. Written as
# what to accept (no lazy scan trying three alternatives at every character), so PCRE
# walks the path once; `^/` plus segments, none empty or starting with '.'.
_PCHAR = "A-Za-z0-9._~!&()*+,;=:@-"
PLAIN_TARGET = rf"^[{_PCHAR}]*(?:/[{_PCHAR.replace('.', '')}][{_PCHAR}]*)*/?(?:\?|$)"
# Characters a literal rule path may have to be written as an nginx map key as is.
_LITERAL_KEY = re.compile(r"/[A-Za-z0-9._~!&()*+,=:@/-]*")
_METHOD = re.compile(r"[A-Z]+")


@dataclass(frozen=True, slots=True)
class Route:
    """The requests one rule may match, as a front proxy can test them."""

    rule: str
    file: str
    methods: tuple[str, ...] | None  # None: any method
    hosts: tuple[str, ...] | None  # Python patterns (fullmatch on the host); None: any
    paths: tuple[str, ...] | None  # Python patterns (fullmatch on the path); None: see regex
    regex: str | None  # Python pattern (search in the path) when there are no path globs
    widened: tuple[str, ...]  # what the front tests more loosely than the rule

    @property
    def label(self) -> str:
        """How comments and warnings name the rule."""
        return f"rule {self.rule!r} ({self.file})"


@dataclass(frozen=True, slots=True)
class Pattern:
    """One route's path or host as a portable regex; None parts match anything."""

    text: str | None
    exact: bool


def rule_routes(rules: RuleSet) -> list[Route]:
    """A route per request rule (click and submit rules ride on tagged documents)."""
    return [_route(rule) for rule in rules.rules if rule.trigger == "request"]


def page_rules(rules: RuleSet) -> list[Rule]:
    """The click and submit rules: covered by routing document navigations."""
    return [rule for rule in rules.rules if rule.trigger != "request"]


def _route(rule: Rule) -> Route:
    widened: list[str] = []
    regex = rule.path_regex.pattern if rule.path_regex is not None else None
    if rule.paths and regex is not None:
        # Both must hold; the path globs alone are the wider test.
        widened.append("path_regex")
        regex = None
    return Route(
        rule=rule.name,
        file=rule.file,
        methods=tuple(sorted(rule.methods)) if rule.methods else None,
        hosts=tuple(h.pattern for h in rule.hosts) or None,
        paths=tuple(p.pattern for p in rule.paths) or None,
        regex=regex,
        widened=tuple(widened),
    )


def host_pattern(route: Route) -> Pattern:
    """The route's host test, unanchored (the renderer anchors it); a port may follow."""
    if route.hosts is None:
        return Pattern(None, True)
    try:
        parts = [translate(h) for h in route.hosts]
    except Untranslatable:
        return Pattern(None, False)
    # The gateway compares the Host without its port: allowing one only widens.
    text = "(?:" + "|".join(p.pattern for p in parts) + ")(?::[^ ]*)?"
    return Pattern(text, all(p.exact for p in parts))


def path_pattern(route: Route, *, start: str = "^", end: str = "$") -> Pattern:
    """The route's path test, to be put right after the start of the path.

    Globs end anchored; a regex is a search (`.*` first). `start` and `end` are what the
    pattern's own `^` and `$` become (see `portable.translate`).
    """
    try:
        if route.paths is not None:
            parts = [translate(p, start=start, end=end) for p in route.paths]
            text = "(?:" + "|".join(p.pattern for p in parts) + ")" + end
            return Pattern(text, all(p.exact for p in parts))
        if route.regex is not None:
            found = translate(route.regex, start=start, end=end)
            return Pattern(".*" + found.pattern, found.exact)
    except Untranslatable:
        return Pattern(None, False)
    return Pattern(None, True)


def literal_paths(route: Route) -> tuple[str, ...] | None:
    """The exact paths a route matches when that is all it tests, else None.

    Such a route needs no regex in the front: nginx looks its paths up in a hash (and its
    methods in another). Host tests, flags, and any path that is more than literal
    characters, or that would need quoting, leave the route to the regex stage.
    """
    if route.hosts is not None or route.paths is None:
        return None
    if route.methods is not None and not all(_METHOD.fullmatch(m) for m in route.methods):
        return None
    found = []
    for pattern in route.paths:
        parsed = sre_parse.parse(pattern)
        if parsed.state.flags & (re.IGNORECASE | re.VERBOSE):
            return None
        if not all(op is sre.LITERAL for op, _ in parsed):
            return None
        text = "".join(chr(av) for _, av in parsed)
        if not _LITERAL_KEY.fullmatch(text):
            return None
        found.append(text)
    return tuple(found)


def prefix_pattern(prefix: str) -> str:
    """The gateway's own endpoints: the prefix itself and everything under it."""
    return "^" + translate(re.escape(prefix)).pattern + "(?:/|$)"


def describe(route: Route) -> str:
    """One comment line for the config: the rule and what the front tests more loosely."""
    methods = "|".join(route.methods) if route.methods else "any method"
    widened = list(route.widened)
    if not host_pattern(route).exact:
        widened.append("host (widened)")
    if not path_pattern(route).exact:
        widened.append("path (widened)")
    loose = f"; front is looser on {', '.join(widened)}" if widened else ""
    return comment_safe(f"{route.label}: {methods}{loose}")


def comment_safe(text: str) -> str:
    """Text for a config comment: one line (a line break would end the comment)."""
    return re.sub(r"[\x00-\x1f\x7f\x85\u2028\u2029]", "?", text)
