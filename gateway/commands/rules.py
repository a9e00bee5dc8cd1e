"""`capi-gateway rules test URL ...`: which rules a request would fire, and their exact events.

Nothing is sent or stored: the request is described on the command line (method, status,
form fields, an HTML file standing for the response) and the output is JSON, with each
event as it would be queued — normalized and hashed.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from gateway.edge.triggers import browser_trigger
from gateway.html.scan import HtmlScan, Wants
from gateway.pipeline.events import Context, Target, prepare
from gateway.pipeline.extract import Facts
from gateway.pipeline.ruleload import load_rules
from gateway.pipeline.rules import RequestFacts, Rule, RuleSet
from gateway.pipeline.urls import scrub_url
from gateway.pipeline.values import parse_json_text
from gateway.settings import ConfigError, Settings

# The visitor `rules test` pretends to be (documentation addresses, RFC 5737).
TEST_IP = "192.0.2.10"
TEST_UA = "Mozilla/5.0 (capi-gateway rules test)"


def add_parser(sub: Any, config_flags: Callable[[argparse.ArgumentParser], None]) -> None:
    """The `rules` subcommand and its `test` action."""
    rules = sub.add_parser("rules", help="try rule files against a request")
    rsub = rules.add_subparsers(dest="rules_command", required=True)
    test = rsub.add_parser("test", help="which rules a request fires, and their events (JSON)")
    config_flags(test)
    test.add_argument("url", help="the page or form URL, e.g. https://shop.example/thank-you?o=1")
    test.add_argument("--method", default="GET")
    test.add_argument("--status", type=int, default=200, help="the site's answer (default 200)")
    test.add_argument(
        "--form", action="append", default=[], metavar="K=V", help="a form field; repeat"
    )
    test.add_argument("--json-body", metavar="JSON", help="a JSON request body")
    test.add_argument("--html", type=Path, help="a file standing for the HTML response")
    test.add_argument("--response-type", help="the response's media type (default text/html)")
    test.add_argument("--header", action="append", default=[], metavar="K=V")
    test.add_argument("--response-header", action="append", default=[], metavar="K=V")
    test.add_argument("--cookie", action="append", default=[], metavar="K=V")
    test.add_argument("--referrer", help="the Referer of the request")


def run_rules_test(args: argparse.Namespace, settings: Settings) -> int:
    """Print the JSON report; 0 when some rule fired, 1 when none did."""
    if settings.rules is None:
        raise ConfigError("rules: no rule directory; pass --rules DIR (or set it in the config)")
    ruleset = load_rules(settings.rules)
    report = evaluate(ruleset, args, settings)
    print(json.dumps(report, indent=2, sort_keys=False))
    return 0 if report["events"] else 1


def evaluate(ruleset: RuleSet, args: argparse.Namespace, settings: Settings) -> dict[str, Any]:
    """The report `rules test` prints."""
    try:
        url = urlsplit(args.url)
        hostname = url.hostname
    except ValueError as exc:  # "http://[::1" and the like
        raise ConfigError(f"url: {args.url!r} is not a URL ({exc})") from None
    if url.scheme not in ("http", "https") or not hostname:
        raise ConfigError(f"url: {args.url!r} is not an absolute http(s) URL")
    query = parse_qs(url.query, keep_blank_values=True)
    form = _pairs(args.form, "form")
    json_body = None
    content_type = ""
    if args.json_body is not None:
        json_body = parse_json_text(args.json_body)
        if json_body is None:
            raise ConfigError("--json-body: not JSON")
        content_type = "application/json"
    elif form:
        content_type = "application/x-www-form-urlencoded"
    headers = {k.lower(): v for k, v in _single(args.header, "header").items()}
    response_headers = {k.lower(): v for k, v in _single(args.response_header, "header").items()}
    cookies = _single(args.cookie, "cookie")
    media = (args.response_type or response_headers.get("content-type") or "text/html").lower()
    media = media.split(";", 1)[0].strip()
    facts = RequestFacts(
        host=hostname,
        method=args.method.upper(),
        path=url.path or "/",
        query=query,
        content_type=content_type,
        referrer=args.referrer,
    )
    try:
        html_text = args.html.read_bytes() if args.html is not None else None
    except OSError as exc:
        raise ConfigError(f"--html: cannot read {args.html} ({exc.strerror})") from None
    base = Facts(
        query=query,
        form=form,
        json=json_body,
        cookies=cookies,
        headers=lambda name: [headers[name.lower()]] if name.lower() in headers else [],
        response_headers=lambda name: (
            [response_headers[name.lower()]] if name.lower() in response_headers else []
        ),
    )
    # Without a configured pixel the events are shown for a placeholder one.
    pixels = (
        settings.effective_pixels()
        or settings.model_copy(update={"dry_run": True}).effective_pixels()
    )
    context = Context(
        targets=[Target(p.id, p.test_event_code) for p in pixels],
        default_country=settings.default_country,
        source="rule",
    )
    identity = {"client_ip_address": TEST_IP, "client_user_agent": TEST_UA}
    for name in ("_fbp", "_fbc"):
        if name in cookies:
            identity[name[1:]] = cookies[name]
    events: list[dict[str, Any]] = []
    skipped: list[dict[str, str]] = []
    page_url = scrub_url(args.url)
    for rule, groups in ruleset.matching(facts):
        reason = _response_mismatch(rule, args.status, media, form, json_body)
        if reason:
            skipped.append({"rule": rule.name, "reason": reason})
            continue
        rule_facts = Facts(
            **{**_fields(base), "path": groups, "html": _scan(rule.wants, html_text)}
        )
        draft = rule.draft(rule_facts)
        if draft is None:
            skipped.append({"rule": rule.name, "reason": "a required value is missing"})
            continue
        draft["user_data"] = {**draft["user_data"], **identity}
        draft["event_source_url"] = page_url
        result = prepare([draft], context)
        if isinstance(result, list):
            skipped.append(
                {
                    "rule": rule.name,
                    "reason": f"invalid event: {result[0].field}: {result[0].message}",
                }
            )
            continue
        for row in result.rows:
            payload = dict(row.payload)
            payload["user_data"] = {**payload.get("user_data", {}), **row.clear}
            events.append(
                {"rule": rule.name, "file": rule.file, "pixel_id": row.pixel_id, "event": payload}
            )
    triggers = [browser_trigger(rule) for rule, _ in ruleset.matching(facts, "browser")]
    return {
        "url": args.url,
        "visitor": identity,
        "events": events,
        "skipped": skipped,
        "browser_triggers": triggers,
    }


def _response_mismatch(
    rule: Rule, status: int, media: str, form: Any, json_body: Any
) -> str | None:
    if not rule.match_response(status, media):
        return f"the response ({status}, {media}) is not the one the rule asks for"
    if not rule.match_body(form, json_body):
        return "the request body does not have the fields the rule asks for"
    return None


def _scan(wants: Wants, html: bytes | None) -> Any:
    if html is None or wants.empty:
        return None
    scan = HtmlScan(wants)
    scan.feed(html)
    return scan.finish()


def _fields(facts: Facts) -> dict[str, Any]:
    return {name: getattr(facts, name) for name in Facts.__dataclass_fields__}


def _pairs(items: Sequence[str], what: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--{what}: {item!r} is not NAME=VALUE")
        out.setdefault(key, []).append(value)
    return out


def _single(items: Sequence[str], what: str) -> dict[str, str]:
    return {k: v[-1] for k, v in _pairs(items, what).items()}
