"""A directory of rule files in, a compiled `RuleSet` out — or one error naming file, rule
and field.

Validation of each table is `rulefile`'s; here is what pydantic cannot see (a selector on
a request rule, an event_id template naming a field nobody extracts, customer data in an
id) and the directory's own mistakes (no `*.toml`, a backup file left beside the rules).
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Sequence
from pathlib import Path

from gateway.html.scan import Wants, parse_selector
from gateway.pipeline.extract import compile_extract, html_needs
from gateway.pipeline.matchers import (
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
from gateway.pipeline.rules import Rule, RuleSet
from gateway.pipeline.webhooks import Webhook, compile_webhooks


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
