"""Rule models in, compiled rules out; a request's facts in, matching rules and event drafts out.

Rules are compiled once at load (globs and regexes, status sets, extractors) and indexed
by the first segment of their path, so a request is checked against the handful of rules
that can match it rather than every rule loaded.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gateway.html.scan import Wants, parse_selector
from gateway.pipeline.eventid import render_event_id
from gateway.pipeline.extract import (
    Extractor,
    Facts,
    compile_extract,
    extract_required,
    html_needs,
)
from gateway.pipeline.matchers import (
    Cond,
    as_list,
    compile_conditions,
    first_segments,
    glob,
    lower_set,
    referrer_pattern,
    statuses,
)
from gateway.pipeline.rulefile import (
    BODY_SOURCES,
    BROWSER_SOURCES,
    REQUEST_SOURCES,
    USER_DATA_TARGETS,
    RuleError,
    RuleModel,
    WebhookModel,
    display_path,
    read_rule_file,
    template_fields,
)
from gateway.pipeline.values import dotted
from gateway.pipeline.webhooks import Webhook, compile_webhooks


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


def load_rules(directory: Path, problems: list[str] | None = None) -> RuleSet:
    """Every `*.toml` in a directory, compiled; RuleError naming file, rule and field.

    With a `problems` list, every problem found is reported there instead of raising at the
    first (what `check` wants); the rules that are valid are still returned.
    """

    def fail(exc: RuleError) -> None:
        if problems is None:
            raise exc
        problems.append(str(exc))

    if not directory.is_dir():
        raise RuleError(f"rules: {directory} is not a directory; point --rules at one")
    rules: list[Rule] = []
    hooks: list[tuple[WebhookModel, str]] = []
    files = sorted(directory.glob("*.toml"))
    names: dict[str, str] = {}
    hook_names: dict[str, str] = {}
    for path in files:
        models, webhooks = read_rule_file(path, problems)
        where = display_path(path)
        for model in models:
            if model.name in names:
                fail(
                    RuleError(
                        f"{where}: rule {model.name!r}: name already used in "
                        f"{names[model.name]}; rule names must be unique"
                    )
                )
                continue
            names[model.name] = where
            if model.enabled:
                try:
                    rules.append(compile_rule(model, where, len(rules)))
                except RuleError as exc:
                    fail(exc)
        for hook in webhooks:
            if hook.name in hook_names:
                fail(
                    RuleError(
                        f"{where}: webhook {hook.name!r}: name already used in "
                        f"{hook_names[hook.name]}"
                    )
                )
                continue
            hook_names[hook.name] = where
            if hook.enabled:
                hooks.append((hook, where))
    compiled: tuple[Webhook, ...] = ()
    try:
        compiled = compile_webhooks(hooks)
    except RuleError as exc:
        fail(exc)
    return RuleSet.build(
        rules, compiled, [str(p) for p in files], notes=_stray_files(directory, files)
    )


# Backups and editor files beside rule files are normal; a near-miss extension is not.
_BACKUP_SUFFIXES = (".bak", ".orig", ".swp", ".old", "~", ".disabled")


def _stray_files(directory: Path, files: Sequence[Path]) -> tuple[str, ...]:
    """What the user most likely meant as rule files but are not read (or that none are)."""
    others = sorted(p for p in directory.iterdir() if p.is_file() and p.suffix != ".toml")
    stray = [
        p
        for p in others
        if not p.name.lower().endswith(_BACKUP_SUFFIXES)
        and (
            ".toml" in p.name.lower()
            or difflib.get_close_matches(p.suffix.lower().lstrip("."), ["toml"], cutoff=0.5)
        )
    ]
    notes = [
        f"{display_path(p)}: not read: rule files must end in .toml (rename it to {_toml_name(p)})"
        for p in stray
    ]
    if not files:
        seen = ", ".join(p.name for p in others[:5]) + (" ..." if len(others) > 5 else "")
        notes.append(
            f"rules: no rule file (*.toml) in {display_path(directory)}"
            + (f" (it holds {seen})" if others else " (the directory is empty)")
            + ": no rule will fire"
        )
    return tuple(notes)


def _toml_name(path: Path) -> str:
    at = path.name.lower().find(".toml")
    return (path.name[:at] if at > 0 else path.stem) + ".toml"


def compile_rule(model: RuleModel, where: str, index: int) -> Rule:
    """One validated model compiled for matching; RuleError for what pydantic cannot see."""

    def fail(message: str) -> RuleError:
        return RuleError(f"{where}: rule {model.name!r}: {message}")

    browser = model.trigger != "request"
    if browser and not model.selector:
        raise fail(f"selector: a {model.trigger} rule needs selector = (a CSS selector)")
    if not browser and model.selector:
        raise fail('selector: only click and submit rules use a selector; add trigger = "click"')
    if browser:
        try:
            parse_selector(model.selector or "")
        except ValueError as exc:
            raise fail(f"selector: {exc}") from None
        for key in ("form", "json_body", "status", "response_type", "content_type"):
            if getattr(model, key):
                raise fail(f"{key.replace('_body', '')}: not available on a {model.trigger} rule")
        if model.event_id is not None:
            # px.js makes the id, so the browser pixel and the beacon share it.
            raise fail(
                f"event_id: not available on a {model.trigger} rule "
                "(px.js gives the browser pixel and the server one id)"
            )
    try:
        extractors = compile_extract(
            model.extract, model.custom, BROWSER_SOURCES if browser else REQUEST_SOURCES
        )
        paths = tuple(glob(p) for p in as_list(model.path))
        status_ranges = statuses(model.status)
    except ValueError as exc:
        raise fail(str(exc)) from None
    targets = {ex.target for ex in extractors}
    for name in model.require:
        if name not in targets:
            raise fail(f"require: {name!r} is not extracted by this rule")
    if model.event_id is not None:
        for name in template_fields(model.event_id):
            if name not in targets:
                raise fail(f"event_id: {{{name}}} is not extracted by this rule")
            if name in USER_DATA_TARGETS:
                raise fail(f"event_id: {{{name}}} is customer data and would reach Meta in clear")
    stitch = model.stitch
    if stitch is not None:
        for name in stitch.keys:
            if name not in targets:
                raise fail(f"stitch.keys: {name!r} is not extracted by this rule")
    html = html_needs(extractors)
    wants = Wants(
        meta=frozenset(p.key.lower() for p in html if p.spec.source == "meta"),
        jsonld=any(p.spec.source == "jsonld" for p in html),
        selectors=tuple(dict.fromkeys(p.selector for p in html if p.selector is not None)),
    )
    needs_body = bool(model.form or model.json_body) or any(
        p.spec.source in BODY_SOURCES for ex in extractors for p in ex.picks
    )
    return Rule(
        name=model.name,
        event_name=model.event,
        file=where,
        index=index,
        trigger=model.trigger,
        selector=model.selector,
        hosts=tuple(glob(h.lower(), host=True) for h in as_list(model.host)),
        paths=paths,
        path_regex=re.compile(model.path_regex) if model.path_regex else None,
        methods=frozenset(m.upper() for m in as_list(model.method)) or None,
        query=compile_conditions(model.query),
        content_types=lower_set(model.content_type),
        form=compile_conditions(model.form),
        json_body=compile_conditions(model.json_body),
        statuses=status_ranges,
        response_types=lower_set(model.response_type),
        referrer=referrer_pattern(model.referrer),
        event_id=model.event_id,
        require=tuple(model.require),
        action_source=model.action_source,
        extractors=tuple(extractors),
        stitch_keys=tuple(stitch.keys) if stitch else (),
        stitch_ttl=stitch.ttl if stitch else 7 * 86400.0,
        stitch_event_id=stitch.share_event_id if stitch else False,
        hold=model.hold,
        wants=wants,
        needs_body=needs_body,
        segments=first_segments(as_list(model.path)),
    )
