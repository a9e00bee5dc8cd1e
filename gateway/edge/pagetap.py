"""Reading a proxied page for the rules that matched it: the decoded body goes past an
`HtmlScan` as it streams to the visitor, and the events are built once it has gone by.

`ProxiedRules.respond` (gateway.edge.proxied_rules) decides which rules read the page and
opens the tap; the proxy feeds it and calls `finish` at the body's end.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from gateway.edge.bodies import BodyCopy
from gateway.edge.encoding import Decoder
from gateway.html.scan import HtmlFound, HtmlScan, Wants
from gateway.pipeline.extract import Facts
from gateway.pipeline.rules import Rule

log = logging.getLogger("gateway.proxied_rules")


@dataclass(slots=True)
class Run:
    """One request some rules may turn into events."""

    request: web.Request
    matched: list[tuple[Rule, dict[str, str]]]
    body: BodyCopy | None


# Builds and stores the events of the rules kept for a response: (run, rules, facts, fbp, fbc).
Emit = Callable[[Run, list[tuple[Rule, dict[str, str]]], Facts, str | None, str | None], None]


class PageTap:
    """Reads the decoded response as it streams by; builds the events at the end."""

    def __init__(
        self,
        emit: Emit,
        run: Run,
        rules: list[tuple[Rule, dict[str, str]]],
        facts: Facts,
        scan: HtmlScan | None,
        decoder: Decoder | None,
        fbp: str | None,
        fbc: str | None,
    ) -> None:
        self._emit = emit
        self._run = run
        self._rules = rules
        self._facts = facts
        self._scan = scan
        self._decoder = decoder
        self._ids = (fbp, fbc)
        self._finished = False
        self._found: HtmlFound | None = None

    def decoded(self, piece: bytes) -> None:
        """A piece of the decoded body (from the page rewriter's tap)."""
        scan = self._scan
        if scan is not None and not scan.done:
            try:
                scan.feed(piece)
            except Exception:
                self._give_up()

    def raw(self, chunk: bytes) -> None:
        """A chunk of the body as the origin sent it (decoded here when needed)."""
        scan = self._scan
        if scan is None or scan.done or self._decoder is None:
            return
        try:
            for piece in self._decoder.feed(chunk):
                scan.feed(piece)
        except Exception:
            self._give_up()

    def _give_up(self) -> None:
        # Reading the page must never break it: stop reading, keep what was found.
        log.exception("Reading %s for rules failed; using what was read.", self._run.request.path)
        self._decoder = None
        scan, self._scan = self._scan, None
        if scan is not None:
            self._found = scan.finish()

    def finish(self) -> None:
        """The body has gone by: build the events and hand them to the outbox."""
        if self._finished:
            return
        self._finished = True
        facts = self._facts
        found = self._scan.finish() if self._scan is not None else self._found
        if found is not None:
            facts = dataclasses.replace(facts, html=found)
        self._emit(self._run, self._rules, facts, *self._ids)


def merge_wants(wants: Iterable[Wants]) -> Wants:
    """What several rules want of one page, each selector once."""
    meta: set[str] = set()
    jsonld = False
    selectors: dict[Any, None] = {}
    for w in wants:
        meta |= w.meta
        jsonld = jsonld or w.jsonld
        selectors.update(dict.fromkeys(w.selectors))
    return Wants(meta=frozenset(meta), jsonld=jsonld, selectors=tuple(selectors))


def charset_of(headers: Mapping[str, str]) -> str:
    """The charset the Content-Type names (UTF-8 when it names none)."""
    for param in headers.get("Content-Type", "").split(";")[1:]:
        name, _, value = param.partition("=")
        if name.strip().lower() == "charset":
            return value.strip().strip('"') or "utf-8"
    return "utf-8"
