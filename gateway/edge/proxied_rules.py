"""Rules applied to proxied traffic: proxied requests in, rule-matched events out (stored).

The proxy asks `begin` before forwarding a request: the rules whose request-level
conditions hold (host, path, method, query, content type, referrer) are kept, with a
bounded copy of the request body when a rule reads form or JSON fields. When the
response headers arrive, `respond` keeps the rules whose status and content type match;
rules that read the page (meta, JSON-LD, selectors) get a streaming scanner fed the
decoded body as it passes. The page is never held back: events are built and stored once
the body has gone by. A failing rule never breaks a page — it is logged and counted.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from multidict import CIMultiDict

from gateway.delivery.store import StitchStore
from gateway.edge import headers as hdr
from gateway.edge.bodies import BodyCopy, media_type, read_fields
from gateway.edge.encoding import Decoder, open_decoder
from gateway.edge.intake import Intake, Stored
from gateway.edge.pages import PageViews
from gateway.edge.pagetap import PageTap, Run, charset_of, merge_wants
from gateway.edge.stitching import keep, visit_context
from gateway.edge.triggers import triggers_json
from gateway.edge.visitor import visitor
from gateway.html.scan import HtmlScan
from gateway.models import NewEvent
from gateway.pipeline.events import Context, prepare
from gateway.pipeline.extract import Facts
from gateway.pipeline.rules import RequestFacts, Rule, RuleSet
from gateway.pipeline.urls import scrub_url
from gateway.pipeline.webhooks import stitch_values

log = logging.getLogger("gateway.proxied_rules")


@dataclass(slots=True)
class RuleCounters:
    """Per rule: how often it matched, and what became of its events."""

    matched: dict[str, int] = field(default_factory=dict)
    stored: dict[str, int] = field(default_factory=dict)
    duplicate: dict[str, int] = field(default_factory=dict)
    rejected: dict[str, int] = field(default_factory=dict)
    skipped: dict[str, int] = field(default_factory=dict)

    def bump(self, table: dict[str, int], name: str, by: int = 1) -> None:
        """Add to one counter."""
        table[name] = table.get(name, 0) + by


class ProxiedRules:
    """Turns proxied requests into rule-matched events."""

    def __init__(
        self,
        rules: Callable[[], RuleSet],
        intake: Intake,
        stitches: StitchStore,
        pages: PageViews,
        *,
        body_limit: int,
        scan_limit: int,
    ) -> None:
        self._rules = rules  # read per request: a reload swaps the rule set
        self.intake = intake
        self.stitches = stitches
        self.metrics = intake.metrics
        self.pages = pages
        self.body_limit = body_limit
        self.scan_limit = scan_limit
        self.counters = RuleCounters()
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def rules(self) -> RuleSet:
        """The rule set in force."""
        return self._rules()

    # before forwarding ----------------------------------------------------------

    def begin(self, request: web.Request) -> Run | None:
        """The rules that may fire for this request, or None (the common, cheap case)."""
        rules = self.rules
        if not rules.rules or not rules.candidates(request.path):
            return None
        matched = rules.matching(_request_facts(request))
        if not matched:
            return None
        wants_body = request.body_exists and any(rule.needs_body for rule, _ in matched)
        return Run(request, matched, BodyCopy(self.body_limit) if wants_body else None)

    def triggers(self, request: web.Request) -> str | None:
        """The click/submit rules for a page, as the JSON px.js reads (None when none)."""
        rules = self.rules
        if not rules.browser or not rules.candidates(request.path):
            return None
        matched = [rule for rule, _ in rules.matching(_request_facts(request), "browser")]
        if not matched:
            return None
        return triggers_json(matched)

    # when the response starts ---------------------------------------------------

    def respond(
        self,
        run: Run,
        status: int,
        headers: CIMultiDict[str],
        *,
        fbp: str | None = None,
        fbc: str | None = None,
        head_only: bool = False,
    ) -> PageTap | None:
        """Keep the rules the response satisfies; a tap when they read the page, else emit now."""
        media = hdr.media_type(headers)
        request = run.request
        form, json_body = (
            read_fields(run.body, request.headers.get("Content-Type"))
            if run.body is not None
            else ({}, None)
        )
        kept = [
            (rule, groups)
            for rule, groups in run.matched
            if rule.match_response(status, media) and rule.match_body(form, json_body)
        ]
        if not kept:
            return None
        if not self._admit(request, kept):
            return None  # decided before reading a byte of the page
        facts = Facts(
            query=_multi(request.query.items()),
            form=form,
            json=json_body,
            cookies=request.cookies,
            headers=lambda name: request.headers.getall(name, []),
            response_headers=lambda name: headers.getall(name, []),
        )
        wants = merge_wants(rule.wants for rule, _ in kept)
        scan: HtmlScan | None = None
        decoder: Decoder | None = None
        if not wants.empty and media in hdr.HTML_TYPES and not head_only:
            decoder = open_decoder(headers.get("Content-Encoding"))
            scan = HtmlScan(wants, charset=charset_of(headers), max_bytes=self.scan_limit)
        tap = PageTap(self.emit, run, kept, facts, scan, decoder, fbp, fbc)
        if scan is None:
            tap.finish()
            return None
        return tap

    # building and storing -------------------------------------------------------

    def _admit(self, request: web.Request, rules: Sequence[tuple[Rule, dict[str, str]]]) -> bool:
        """True when the rules may fire; False (counted) for bots, prefetches and visitors
        without consent."""
        for rule, _ in rules:
            self.counters.bump(self.counters.matched, rule.name)
        who = visitor(request)
        if who.bot:
            self._dropped(rules, "bot")
            return False
        if who.prefetch:
            # A speculative load is not a visit (the browser may never show it).
            self._dropped(rules, "prefetch")
            return False
        if not who.consent.track:
            self._dropped(rules, "consent")
            return False
        return True

    def emit(
        self,
        run: Run,
        rules: Sequence[tuple[Rule, dict[str, str]]],
        facts: Facts,
        fbp: str | None,
        fbc: str | None,
    ) -> None:
        """Build each rule's event for an admitted request and store them (never raises).

        `fbp`/`fbc`: the ids the proxy settled on for this response (else the cookies).
        """
        request = run.request
        pages = self.pages
        who = visitor(request)
        consent = who.consent
        user_data = who.user_data((fbp or who.fbp, fbc or who.fbc))
        url = scrub_url(who.origin + request.raw_path, pages.sensitive)
        rows: list[NewEvent] = []
        for rule, groups in rules:
            try:
                built = self._build(rule, dataclasses.replace(facts, path=groups), user_data, url)
            except Exception:
                # A rule must never break the page it watches.
                log.exception("Rule %r failed on %s.", rule.name, request.path)
                self.counters.bump(self.counters.rejected, rule.name)
                continue
            if built is None:
                continue
            event = built
            event.update(consent.event_fields())
            stitch_keys = stitch_values(rule.stitch_keys, _values(event))
            referer = request.headers.get("Referer")
            if referer and referer.startswith(("http://", "https://")):
                event["referrer_url"] = scrub_url(referer[:4096], pages.sensitive)
            result = prepare([event], self._context(), now=time.time())
            if stitch_keys:
                # Kept even when Meta would refuse this event (say, a national phone number
                # without a country): the visit is sound and the later webhook's event may be.
                visit = visit_context(
                    user_data,
                    url,
                    consent,
                    event_id=(
                        result.event_ids[0]
                        if not isinstance(result, list) and rule.stitch_event_id
                        else None
                    ),
                    event_name=rule.event_name,
                )
                self._spawn(
                    keep(self.stitches, stitch_keys, visit, rule.stitch_ttl, self.pages.site),
                    "stitch",
                )
            if isinstance(result, list):
                self.counters.bump(self.counters.rejected, rule.name)
                self.metrics.event("rule", rule.event_name, "rejected", site=self.pages.site)
                problem = result[0]
                # A user_data message quotes the value (the phone number): not for the log.
                log.warning(
                    "Rule %r matched %s but its event is not valid: %s%s",
                    rule.name,
                    request.path,
                    problem.field,
                    "" if problem.field.startswith("user_data") else f": {problem.message}",
                )
                continue
            links = tuple(sorted(stitch_keys.items()))
            rows += [
                dataclasses.replace(row, rule=rule.name, hold=rule.hold, links=links)
                for row in result.rows
            ]
        if rows:
            self._store(rows)

    def _build(
        self, rule: Rule, facts: Facts, user_data: Mapping[str, Any], url: str
    ) -> dict[str, Any] | None:
        draft = rule.draft(facts)
        if draft is None:
            self.counters.bump(self.counters.skipped, f"{rule.name}:required")
            return None
        draft["user_data"] = {**draft["user_data"], **user_data}
        draft["event_source_url"] = url
        return draft

    def _context(self) -> Context:
        return dataclasses.replace(self.pages.context, source="rule")

    def _dropped(self, rules: Sequence[tuple[Rule, dict[str, str]]], reason: str) -> None:
        for rule, _ in rules:
            self.counters.bump(self.counters.skipped, f"{rule.name}:{reason}")
        self.metrics.dropped(reason, source="rule", count=len(rules), site=self.pages.site)

    def _store(self, rows: list[NewEvent]) -> None:
        self.intake.later(self._add(rows), "rule-events")

    def _spawn(self, work: Coroutine[Any, Any, None], name: str) -> None:
        task = asyncio.get_running_loop().create_task(work, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _add(self, rows: list[NewEvent]) -> None:
        # The intake counts and logs a refusal; the page has long gone out either way.
        result = await self.intake.store(rows)
        if not isinstance(result, Stored):
            for row in rows:
                self.counters.bump(self.counters.rejected, row.rule or "")
            return
        for row, outcome in zip(result.rows, result.outcomes, strict=True):
            table = self.counters.stored if outcome == "new" else self.counters.duplicate
            self.counters.bump(table, row.rule or "")

    async def drain(self) -> None:
        """Wait until every event and visit handed over is stored or failed."""
        while self._tasks:
            await asyncio.wait(set(self._tasks))
        await self.intake.drain()


def _values(event: Mapping[str, Any]) -> dict[str, Any]:
    return {**event.get("custom_data", {}), **event.get("user_data", {})}


def _request_facts(request: web.Request) -> RequestFacts:
    return RequestFacts(
        host=request.host.rsplit(":", 1)[0] if request.host else "",
        method=request.method,
        path=request.path,
        query=_multi(request.query.items()),
        content_type=media_type(request.headers.get("Content-Type")),
        referrer=request.headers.get("Referer"),
    )


def _multi(items: Any) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for key, value in items:
        out.setdefault(key, []).append(value)
    return out
