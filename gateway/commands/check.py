"""`capi-gateway check`: every problem of the configuration and the rule files, then exit.

It reports all it finds rather than stopping at the first: each problem is one
`capi-gateway: config error: …` or `capi-gateway: rule error: …` line on stderr, and the
exit status is 2 when there is any. Rule files validate on their own: without a config
file and without any pixel, token or dry run, `check --rules DIR` checks the rules and
says the credentials were not checked (what a CI job that lints rule files wants).
"""

from __future__ import annotations

import argparse
import os
import sys
import tomllib
from collections.abc import Callable
from pathlib import Path

from gateway.front.command import check_front_config
from gateway.insights.policy import check_channels
from gateway.pipeline.rulefile import RuleError
from gateway.pipeline.ruleload import load_rules
from gateway.pipeline.rules import RuleSet
from gateway.settings import ConfigError, Settings

EXIT_OK = 0
EXIT_PROBLEMS = 2


def run_check(args: argparse.Namespace, load: Callable[[argparse.Namespace], Settings]) -> int:
    """Check config and rules, print what was found, and return 0 or 2."""
    problems: list[str] = []
    settings: Settings | None = None
    try:
        settings = load(args)
    except ConfigError as exc:
        problems += [f"config error: {p}" for p in exc.problems]
    rules_dir: Path | None = args.rules or _rules_in_file(args.config)
    if settings is not None:
        rules_dir = settings.rules
        try:
            check_channels(settings)
        except ConfigError as exc:
            problems.append(f"config error: {exc}")
        # "config OK" must not print above a config error of the channel rules.
        problems += _check_settings(
            settings, rules_only=_rules_only(args, settings), summary=not problems
        )
    rules: RuleSet | None = None
    if rules_dir is not None:
        found, rules = _check_rules(rules_dir)
        problems += found
    checked = {rules_dir}
    for site in settings.site_list() if settings is not None else ():
        # Each site may have rule files of its own (and so its own webhooks).
        if site.settings.rules not in checked and site.settings.rules is not None:
            checked.add(site.settings.rules)
            found, _ = _check_rules(site.settings.rules)
            problems += [f"sites.{site.name}.rules: {p}" for p in found]
    if getattr(args, "front_config", None) is not None and settings is not None:
        try:
            for warning in check_front_config(args.front_config, rules, settings):
                print(f"warning: {warning}")
        except ConfigError as exc:
            problems.append(f"config error: {exc}")
    for problem in problems:
        print(f"capi-gateway: {problem}", file=sys.stderr)
    if len(problems) > 1:
        print(f"capi-gateway: {len(problems)} problems found", file=sys.stderr)
    return EXIT_PROBLEMS if problems else EXIT_OK


def _rules_in_file(config: Path | None) -> Path | None:
    """The config file's `rules` when the configuration as a whole did not load."""
    config = config or (
        Path(os.environ["CAPIGW_CONFIG"]) if os.environ.get("CAPIGW_CONFIG") else None
    )
    if config is None:
        return None
    try:
        data = tomllib.loads(config.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        return None  # already reported as a config error
    table = data.get("gateway")
    value = data.get("rules") or (table.get("rules") if isinstance(table, dict) else None)
    return Path(value) if isinstance(value, str) else None


def _rules_only(args: argparse.Namespace, settings: Settings) -> bool:
    """True when only rule files were given to check: no config file, no Meta settings."""
    if settings.rules is None or args.config is not None or os.environ.get("CAPIGW_CONFIG"):
        return False
    meta = (settings.pixel_id, settings.pixels, settings.access_token, settings.dry_run)
    return not any(meta)


def _check_settings(settings: Settings, *, rules_only: bool, summary: bool = True) -> list[str]:
    try:
        settings.check_ready_to_send()
    except ConfigError as exc:
        if not rules_only:
            return [f"config error: {exc}"]
        print(
            "note: no pixel configured, so only the rule files were checked; `serve` needs "
            "META_PIXEL_ID and META_ACCESS_TOKEN (or --dry-run)"
        )
        return []
    if not summary:
        return []
    pixels = settings.effective_pixels()
    print(
        f"config OK: {len(pixels)} pixel(s) "
        f"[{', '.join(p.id[:4] + '****' for p in pixels)}], "
        f"{'dry run' if settings.dry_run else 'sending to ' + settings.graph_url}, "
        f"buffer {settings.store_name}, listen {settings.listen}"
    )
    warning = settings.test_mode_warning()
    if warning:
        print(f"warning: {warning}")
    return []


def _check_rules(directory: Path) -> tuple[list[str], RuleSet | None]:
    """The rule files' problems, and the rules as loaded (None when they could not be)."""
    found: list[str] = []
    try:
        rules = load_rules(directory, found)
    except RuleError as exc:
        return [f"rule error: {exc}"], None
    if not rules.files:
        # An empty directory (or one of `shop.tml`s) would fire nothing: that is no pass.
        found += [n for n in rules.notes if n.startswith("rules: no rule file")]
    if not found:
        print(
            f"rules OK: {len(rules.rules)} rule(s), {len(rules.webhooks)} webhook(s) "
            f"from {len(rules.files)} file(s) in {directory}"
        )
    for warning in _warnings(rules, found):
        print(f"warning: {warning}")
    return [f"rule error: {p}" for p in found], rules


def _warnings(rules: RuleSet, problems: list[str]) -> list[str]:
    return [w for w in rules.warnings() if w not in problems]
