"""Compiled rules and their matching: a request's facts in, matching rules and event drafts
out (`ruleload` compiles them from rule files).

Rules are compiled once at load (globs and regexes, status sets, extractors) and indexed
by the first segment of their path, so a request is checked against the handful of rules
that can match it rather than every rule loaded.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from gateway.html.scan import Wants
from gateway.pipeline.eventid import render_event_id
from gateway.pipeline.extract import (
    Extractor,
    Facts,
    extract_required,
)
from gateway.pipeline.matchers import (
    Cond,
)
from gateway.pipeline.values import dotted
from gateway.pipeline.webhooks import Webhook


@dataclass(frozen=True, slots=True)
class RequestFacts:
    """What request-level matching looks at."""

    host: str
    method: str
    path: str
    query: Mapping[str, Sequence[str]]
    content_type: str = ""
    referrer: str | None = None


@dataclass(frozen=True, slots=True)
class Rule:
    """A compiled `[[rule]]`."""

    name: str
    event_name: str
    file: str
    index: int
    trigger: str
    selector: str | None
    hosts: tuple[re.Pattern[str], ...]
    paths: tuple[re.Pattern[str], ...]
    path_regex: re.Pattern[str] | None
    methods: frozenset[str] | None
    query: tuple[Cond, ...]
    content_types: frozenset[str] | None
    form: tuple[Cond, ...]
    json_body: tuple[Cond, ...]
    statuses: tuple[tuple[int, int], ...] | None
    response_types: frozenset[str] | None
    referrer: re.Pattern[str] | None
    event_id: str | None
    require: tuple[str, ...]
    action_source: str
    extractors: tuple[Extractor, ...]
    stitch_keys: tuple[str, ...] = ()
    stitch_ttl: float = 7 * 86400.0
    stitch_event_id: bool = False
    hold: float | None = None
    wants: Wants = field(default_factory=Wants)
    needs_body: bool = False
    # The literal first path segment of every `path` glob; None when one is a wildcard.
    segments: tuple[str, ...] | None = None

    def match_request(self, facts: RequestFacts) -> dict[str, str] | None:
        """Path groups when the request-level conditions hold, else None."""
        if self.methods is None:
            # HEAD and OPTIONS come from link checkers and CORS preflights, not visitors.
            if facts.method in ("HEAD", "OPTIONS"):
                return None
        elif facts.method not in self.methods:
            return None
        if self.hosts and not any(h.fullmatch(facts.host.lower()) for h in self.hosts):
            return None
        groups: dict[str, str] = {}
        if self.paths:
            for pattern in self.paths:
                found = pattern.fullmatch(facts.path)
                if found:
                    groups.update(found.groupdict())
                    break
            else:
                return None
        if self.path_regex is not None:
            found = self.path_regex.search(facts.path)
            if found is None:
                return None
            groups.update({k: v for k, v in found.groupdict().items() if v is not None})
        if not all(c.test(facts.query.get(c.name, ())) for c in self.query):
            return None
        if self.content_types is not None and facts.content_type not in self.content_types:
            return None
        if self.referrer is not None and not self.referrer.search(facts.referrer or ""):
            return None
        return groups

    def match_response(self, status: int, media_type: str) -> bool:
        """True when the response's status and content type are the ones asked for."""
        if self.statuses is not None and not any(lo <= status <= hi for lo, hi in self.statuses):
            return False
        return self.response_types is None or media_type in self.response_types

    def match_body(self, form: Mapping[str, Sequence[str]], json_body: Any) -> bool:
        """True when the request body's fields satisfy the rule."""
        if not all(c.test(form.get(c.name, ())) for c in self.form):
            return False
        return all(c.test(dotted(json_body, c.name)) for c in self.json_body)

    def draft(self, facts: Facts) -> dict[str, Any] | None:
        """The event this rule makes of a matching request, None if a required value is missing."""
        found = extract_required(self.extractors, facts, self.require)
        if found is None:
            return None
        values = {**found["custom_data"], **found["user_data"]}
        event: dict[str, Any] = {
            "event_name": self.event_name,
            "event_id": render_event_id(self.event_id, values, self.name),
            "action_source": self.action_source,
        }
        if found["custom_data"]:
            event["custom_data"] = found["custom_data"]
        event["user_data"] = found["user_data"]
        return event

    def stitch_values(self, event: Mapping[str, Any]) -> dict[str, str]:
        """The identifying keys this event carries, for session stitching."""
        values = {**event.get("custom_data", {}), **event.get("user_data", {})}
        return {k: str(values[k]) for k in self.stitch_keys if values.get(k) not in (None, "")}


@dataclass(frozen=True, slots=True)
class RuleSet:
    """The loaded rules, indexed for matching, and the webhooks."""

    rules: tuple[Rule, ...] = ()
    webhooks: tuple[Webhook, ...] = ()
    files: tuple[str, ...] = ()
    _by_segment: Mapping[str, tuple[Rule, ...]] = field(default_factory=dict)
    _anywhere: tuple[Rule, ...] = ()
    # True when some rule is a click or submit trigger (checked on every tagged page).
    browser: bool = False
    # Files in the directory that look meant as rule files but are not read, or no file.
    notes: tuple[str, ...] = ()

    @classmethod
    def build(
        cls,
        rules: Iterable[Rule],
        webhooks: Iterable[Webhook] = (),
        files: Sequence[str] = (),
        *,
        notes: Sequence[str] = (),
    ) -> RuleSet:
        """Index compiled rules by the first literal segment of their paths."""
        ordered = tuple(rules)
        by_segment: dict[str, list[Rule]] = {}
        anywhere: list[Rule] = []
        for rule in ordered:
            segments = _firstfirst_segments(rule)
            if segments is None:
                anywhere.append(rule)
            else:
                for segment in segments:
                    by_segment.setdefault(segment, []).append(rule)
        return cls(
            rules=ordered,
            webhooks=tuple(webhooks),
            files=tuple(files),
            _by_segment={k: tuple(v) for k, v in by_segment.items()},
            _anywhere=tuple(anywhere),
            browser=any(rule.trigger != "request" for rule in ordered),
            notes=tuple(notes),
        )

    def candidates(self, path: str) -> list[Rule]:
        """The rules that may match a path (in file order), without testing them."""
        segment = path[1:].split("/", 1)[0] if path.startswith("/") else ""
        bucket = self._by_segment.get(segment, ())
        if not bucket:
            return list(self._anywhere)
        if not self._anywhere:
            return list(bucket)
        return sorted({r.index: r for r in (*bucket, *self._anywhere)}.values(), key=_order)

    def matching(
        self, facts: RequestFacts, trigger: str = "request"
    ) -> list[tuple[Rule, dict[str, str]]]:
        """Rules of a trigger whose request-level conditions hold, with their path groups."""
        out = []
        for rule in self.candidates(facts.path):
            if rule.trigger != trigger and not (trigger == "browser" and rule.trigger != "request"):
                continue
            groups = rule.match_request(facts)
            if groups is not None:
                out.append((rule, groups))
        return out

    def warnings(self) -> list[str]:
        """What loads but will not work yet (a webhook whose secret is not set, files not read)."""
        return [*self.notes] + [
            f"{w.file}: webhook {w.name!r}: hook {w.hook!r} answers 503 until "
            f"{w.verifier.missing} is set"
            for w in self.webhooks
            if w.verifier.missing
        ]

    def hook(self, name: str) -> list[Webhook]:
        """The mappings of one hook path, in file order."""
        return [w for w in self.webhooks if w.hook == name]

    def by_name(self, name: str) -> Rule | None:
        """A rule by its name."""
        for rule in self.rules:
            if rule.name == name:
                return rule
        return None


def _order(rule: Rule) -> int:
    return rule.index


def _firstfirst_segments(rule: Rule) -> tuple[str, ...] | None:
    return rule.segments
