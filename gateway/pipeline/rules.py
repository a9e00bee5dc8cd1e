"""Rule models in, compiled rules out; a request's facts in, matching rules and event drafts out.

Rules are compiled once at load (globs and regexes, status sets, extractors) and indexed
by the first segment of their path, so a request is checked against the handful of rules
that can match it rather than every rule loaded.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gateway.edge.htmlscan import Wants
from gateway.pipeline.extract import Extractor, Facts, compile_extract, dotted, extract
from gateway.pipeline.rulefile import (
    BODY_SOURCES,
    BROWSER_SOURCES,
    REQUEST_SOURCES,
    TEMPLATE_FIELD,
    USER_DATA_TARGETS,
    Condition,
    RegexCondition,
    RuleError,
    RuleModel,
    WebhookModel,
    display_path,
    read_rule_file,
    template_fields,
)

if TYPE_CHECKING:
    from gateway.pipeline.webhooks import Webhook

_GLOB_TOKEN = re.compile(r"\*\*|\*|\?|\{[A-Za-z_][A-Za-z0-9_]*\}")
_STATUS_RANGE = re.compile(r"^\s*([1-5])xx\s*$|^\s*(\d{3})\s*-\s*(\d{3})\s*$")


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
            return any(_text(v) == self.equals for v in values)
        if self.regex is not None:
            return any(self.regex.search(_text(v)) for v in values)
        return True


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
        found = extract(self.extractors, facts)
        values = {**found["custom_data"], **found["user_data"]}
        if any(values.get(name) in (None, "", []) for name in self.require):
            return None
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


def render_event_id(template: str | None, values: Mapping[str, Any], rule: str) -> str:
    """`purchase-{order_id}` filled in; a random id when there is no template or no value."""
    if template is None:
        return str(uuid.uuid4())
    for name in template_fields(template):
        if values.get(name) in (None, "", []):
            # No key to deduplicate on: count the event rather than drop it.
            return f"{rule}-{uuid.uuid4()}"
    # One pass, so a value that itself reads "{other}" is not substituted again.
    out = TEMPLATE_FIELD.sub(lambda m: _text(values[m.group(1)]), template)
    return out[:256]


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

    @classmethod
    def build(
        cls, rules: Iterable[Rule], webhooks: Iterable[Webhook] = (), files: Sequence[str] = ()
    ) -> RuleSet:
        """Index compiled rules by the first literal segment of their paths."""
        ordered = tuple(rules)
        by_segment: dict[str, list[Rule]] = {}
        anywhere: list[Rule] = []
        for rule in ordered:
            segments = _first_segments(rule)
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
        """What loads but will not work yet (a webhook whose secret is not set)."""
        return [
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


def _first_segments(rule: Rule) -> tuple[str, ...] | None:
    return rule.segments


def load_rules(directory: Path) -> RuleSet:
    """Every `*.toml` in a directory, compiled; RuleError naming file, rule and field."""
    if not directory.is_dir():
        raise RuleError(f"rules: {directory} is not a directory; point --rules at one")
    rules: list[Rule] = []
    hooks: list[tuple[WebhookModel, str]] = []
    files = sorted(directory.glob("*.toml"))
    names: dict[str, str] = {}
    hook_names: dict[str, str] = {}
    for path in files:
        models, webhooks = read_rule_file(path)
        where = display_path(path)
        for model in models:
            if model.name in names:
                raise RuleError(
                    f"{where}: rule {model.name!r}: name already used in {names[model.name]}; "
                    "rule names must be unique"
                )
            names[model.name] = where
            if model.enabled:
                rules.append(compile_rule(model, where, len(rules)))
        for hook in webhooks:
            if hook.name in hook_names:
                raise RuleError(
                    f"{where}: webhook {hook.name!r}: name already used in {hook_names[hook.name]}"
                )
            hook_names[hook.name] = where
            if hook.enabled:
                hooks.append((hook, where))
    from gateway.pipeline.webhooks import compile_webhooks

    return RuleSet.build(rules, compile_webhooks(hooks), [str(p) for p in files])


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
        from gateway.edge.htmlscan import parse_selector

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
        paths = tuple(_glob(p) for p in _as_list(model.path))
        statuses = _statuses(model.status)
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
    html = [
        p
        for ex in extractors
        for p in ex.picks
        if p.selector is not None or p.spec.source in ("meta", "jsonld")
    ]
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
        hosts=tuple(_glob(h.lower(), host=True) for h in _as_list(model.host)),
        paths=paths,
        path_regex=re.compile(model.path_regex) if model.path_regex else None,
        methods=frozenset(m.upper() for m in _as_list(model.method)) or None,
        query=compile_conditions(model.query),
        content_types=_lower_set(model.content_type),
        form=compile_conditions(model.form),
        json_body=compile_conditions(model.json_body),
        statuses=statuses,
        response_types=_lower_set(model.response_type),
        referrer=_referrer(model.referrer),
        event_id=model.event_id,
        require=tuple(model.require),
        action_source=model.action_source,
        extractors=tuple(extractors),
        stitch_keys=tuple(stitch.keys) if stitch else (),
        stitch_ttl=stitch.ttl if stitch else 7 * 86400.0,
        stitch_event_id=stitch.share_event_id if stitch else False,
        wants=wants,
        needs_body=needs_body,
        segments=_segments(_as_list(model.path)),
    )


def _glob(pattern: str, *, host: bool = False) -> re.Pattern[str]:
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


def _segments(paths: list[str]) -> tuple[str, ...] | None:
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


def _statuses(value: int | list[int] | str | None) -> tuple[tuple[int, int], ...] | None:
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
            out.append(Cond(name, equals=_text(value)))
    return tuple(out)


def _referrer(value: str | RegexCondition | None) -> re.Pattern[str] | None:
    if value is None:
        return None
    if isinstance(value, RegexCondition):
        return re.compile(value.regex)
    parts = (re.escape(p) for p in value.split("*"))
    return re.compile("^" + ".*".join(parts) + "$")


def _as_list(value: str | list[str] | None) -> list[str]:
    if value is None:
        return []
    return [value] if isinstance(value, str) else list(value)


def _lower_set(value: str | list[str] | None) -> frozenset[str] | None:
    items = _as_list(value)
    return frozenset(i.strip().lower() for i in items) if items else None


def _text(value: Any) -> str:
    if isinstance(value, bool):
        # JSON bodies say true/false; `paid = "true"` must match {"paid": true}.
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)
