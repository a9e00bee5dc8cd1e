"""Rule files in, validated rules or one clear error out: every error names file, rule, field."""

from __future__ import annotations

import re
import string
from pathlib import Path
from typing import Any

import pytest
import tomli_w
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.pipeline.rulefile import (
    REQUEST_SOURCES,
    RuleError,
    RuleModel,
    read_rule_file,
    template_fields,
)
from gateway.pipeline.ruleload import load_rules
from gateway.pipeline.rules import RuleSet

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "rules"
HEAD = '[[rule]]\nname = "r"\nevent = "Lead"\n'


def write(directory: Path, name: str, text: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_text(text, encoding="utf-8")
    return path


def load_error(tmp_path: Path, text: str, name: str = "x.toml") -> str:
    """The message of the RuleError loading a directory holding one file with `text`."""
    write(tmp_path / "rules", name, text)
    with pytest.raises(RuleError) as caught:
        load_rules(tmp_path / "rules")
    return str(caught.value)


def rule_text(extra: str) -> str:
    """A `[[rule]]` named r for a Lead, with `extra` keys (which may set name or event)."""
    head = "[[rule]]\n"
    if not extra.startswith("name ="):
        head += 'name = "r"\n'
    if not extra.startswith("event ="):
        head += 'event = "Lead"\n'
    return head + extra


@pytest.fixture
def in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Run in tmp_path, so that errors show `rules/x.toml` as a site owner would see it."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


# The shipped examples ------------------------------------------------------------------


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("*.toml")), ids=lambda p: p.name)
def test_every_file_in_rules_validates(path: Path) -> None:
    rules, hooks = read_rule_file(path)
    assert rules or hooks
    assert all(isinstance(rule, RuleModel) for rule in rules)


def test_the_examples_load_together_with_unique_names() -> None:
    ruleset = load_rules(EXAMPLES)
    names = [rule.name for rule in ruleset.rules]
    assert len(names) == len(set(names))
    assert {
        "view-product",
        "add-to-cart",
        "initiate-checkout",
        "payment-submitted",
        "purchase",
        "search",
        "contact-lead",
        "booking-lead",
        "booking-scheduled",
        "signup",
    } <= set(names)
    assert len(ruleset.files) == len(list(EXAMPLES.glob("*.toml")))


# The example message, word for word ------------------------------------------------


def test_unknown_source_message_is_the_documented_one(in_tmp: Path) -> None:
    text = (
        '[[rule]]\nname = "purchase"\nevent = "Purchase"\npath = "/thank-you"\n'
        '[rule.extract]\nvalue = { source = "qury", key = "total" }\n'
    )
    message = load_error(in_tmp, text, "shop.toml")
    assert message == (
        "rules/shop.toml: rule 'purchase': extract.value: unknown source 'qury' (expected one "
        "of: const, query, path, form, json, cookie, header, response_header, meta, jsonld, "
        "selector)"
    )
    assert ", ".join(REQUEST_SOURCES) in message


def test_unknown_source_on_a_click_rule_lists_the_browser_sources(in_tmp: Path) -> None:
    text = (
        '[[rule]]\nname = "cart"\nevent = "AddToCart"\ntrigger = "click"\nselector = "button"\n'
        '[rule.extract]\nvalue = { source = "dta", key = "price" }\n'
    )
    assert load_error(in_tmp, text) == (
        "rules/x.toml: rule 'cart': extract.value: unknown source 'dta' "
        "(expected one of: const, data, field, query)"
    )


# File-level errors ------------------------------------------------------------------------


def test_toml_syntax_error_names_file_and_line(in_tmp: Path) -> None:
    message = load_error(in_tmp, HEAD + 'path = "/a"\nmethod "POST"\n', "shop.toml")
    assert message.startswith("rules/shop.toml: TOML syntax error: ")
    assert "(at line 5, column" in message


def test_toml_syntax_error_on_a_later_line(in_tmp: Path) -> None:
    text = HEAD + "\n" * 10 + '[rule.extract]\nvalue = { source = "query", key = }\n'
    message = load_error(in_tmp, text)
    assert message.startswith("rules/x.toml: TOML syntax error: ")
    assert "line 15" in message


def test_not_utf8(in_tmp: Path) -> None:
    (in_tmp / "rules").mkdir()
    (in_tmp / "rules" / "x.toml").write_bytes(HEAD.encode() + b'path = "/caf\xe9"\n')
    at = len(HEAD) + len('path = "/caf')
    with pytest.raises(RuleError, match=rf"^rules/x\.toml: not UTF-8 text \(.* at byte {at}\)$"):
        load_rules(in_tmp / "rules")


def test_unreadable_file(in_tmp: Path) -> None:
    (in_tmp / "rules" / "dir.toml").mkdir(parents=True)
    with pytest.raises(RuleError, match=r"^rules/dir\.toml: cannot read the file \(.+\)$"):
        load_rules(in_tmp / "rules")


def test_rules_directory_missing(tmp_path: Path) -> None:
    with pytest.raises(RuleError, match="is not a directory; point --rules at one"):
        load_rules(tmp_path / "nope")


def test_deeply_nested_arrays_are_an_error_not_a_crash(in_tmp: Path) -> None:
    text = HEAD + "[rule.custom]\nx = " + "[" * 5000 + "]" * 5000 + "\n"
    assert load_error(in_tmp, text) == "rules/x.toml: arrays or tables nested too deeply"


def test_an_empty_directory_and_an_empty_file_load(tmp_path: Path) -> None:
    assert load_rules(tmp_path).rules == ()
    write(tmp_path, "empty.toml", "# nothing yet\n")
    ruleset = load_rules(tmp_path)
    assert ruleset.rules == ()
    assert len(ruleset.files) == 1


def test_files_that_are_not_toml_are_ignored(tmp_path: Path) -> None:
    write(tmp_path, "notes.txt", "not [ toml")
    write(tmp_path, "a.toml", HEAD)
    assert [rule.name for rule in load_rules(tmp_path).rules] == ["r"]


# Unknown keys at every level ----------------------------------------------------------------

UNKNOWN = "unknown key (check its spelling against the rules guide in README.md)"
SPEC_KEYS = (
    "expected source, key, value, attr, type, decimal, divide, lower, upper, pattern, split, "
    "default, map"
)
HOOK = (
    '[[webhook]]\nname = "h"\nhook = "stripe"\nevent = "Purchase"\ndelivery_id = "id"\n'
    'signature = { type = "stripe", secrets = ["whsec_test"] }\n'
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param(
            '[[rules]]\nname = "r"\n',
            "rules: unknown key; did you mean `rule`? (a rule file holds [[rule]] and "
            "[[webhook]] tables)",
            id="top",
        ),
        pytest.param(
            HEAD + "paht = '/a'\n", "rule 'r': paht: unknown key; did you mean `path`?", id="rule"
        ),
        pytest.param(HEAD + "xyzzy = '/a'\n", f"rule 'r': xyzzy: {UNKNOWN}", id="rule-far"),
        pytest.param(
            HEAD + "[rule.extract]\nvalue = { source = 'query', key = 'v', tpye = 'number' }\n",
            f"rule 'r': extract.value.tpye: unknown key ({SPEC_KEYS})",
            id="source-spec",
        ),
        pytest.param(
            HEAD + "[rule.extract]\nvalue = [{ source = 'query', key = 'v' }, "
            "{ source = 'const', value = 1, vaule = 2 }]\n",
            f"rule 'r': extract.value.1.vaule: unknown key ({SPEC_KEYS})",
            id="second-source",
        ),
        pytest.param(
            HEAD + "[rule.extract]\ncontents = { source = 'json', key = 'items', "
            "map = { id = 'sku', quantity = { key = 'qty', tpye = 'integer' } } }\n",
            "rule 'r': extract.contents.map.quantity.tpye: unknown key "
            "(expected key, type, divide, decimal)",
            id="map-item",
        ),
        pytest.param(
            HEAD + "[rule.custom]\nplan = { source = 'query', key = 'p', lowr = true }\n",
            f"rule 'r': custom.plan.lowr: unknown key ({SPEC_KEYS})",
            id="custom",
        ),
        pytest.param(
            HEAD + "query = { q = { regex = 'x', flags = 'i' } }\n",
            f"rule 'r': query.q.flags: {UNKNOWN}",
            id="query-regex",
        ),
        pytest.param(
            HEAD + "referrer = { regx = 'google' }\n",
            f"rule 'r': referrer.regx: {UNKNOWN}",
            id="referrer",
        ),
        pytest.param(
            HEAD + "[rule.stitch]\nkeys = ['order_id']\nttl = '1d'\nshare = true\n",
            f"rule 'r': stitch.share: {UNKNOWN}",
            id="stitch",
        ),
        pytest.param(
            HOOK + "evnt_id = 'x'\n",
            "webhook 'h': evnt_id: unknown key; did you mean `event_id`?",
            id="webhook",
        ),
        pytest.param(
            HOOK.replace('type = "stripe"', 'type = "hmac", algo = "sha1"'),
            f"webhook 'h': signature.algo: {UNKNOWN}",
            id="webhook-signature",
        ),
    ],
)
def test_unknown_keys_are_errors_at_every_level(in_tmp: Path, text: str, expected: str) -> None:
    assert load_error(in_tmp, text) == f"rules/x.toml: {expected}"


# Every other error path: file, rule and field named -------------------------------------


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        # the rule itself
        (
            'name = "bad name!"\n',
            "rule 'bad name!': name: use 1-64 letters, digits, '_', '-' or '.'",
        ),
        ('name = "a\\n"\n', "rule 'a\\n': name: use 1-64 letters, digits, '_', '-' or '.'"),
        ('event = ""\n', "rule 'r': event: String should have at least 1 character"),
        (
            'event = "' + "E" * 51 + '"\n',
            "rule 'r': event: String should have at most 50 characters",
        ),
        ("enabled = 'yes please'\n", "rule 'r': enabled: Input should be a valid boolean"),
        (
            'trigger = "hover"\n',
            "rule 'r': trigger: Input should be 'request', 'click' or 'submit'",
        ),
        # request matchers
        ('method = "FETCH"\n', "rule 'r': method: unknown method 'FETCH'"),
        ('method = ["GET", "YOINK"]\n', "rule 'r': method: unknown method 'YOINK'"),
        ('path = "thank-you"\n', "rule 'r': path: 'thank-you' must start with '/'"),
        (
            'path = "/a/{x}/{x}"\n',
            "rule 'r': path: '/a/{x}/{x}': {x} appears twice; name each part once",
        ),
        ("host = 5\n", "rule 'r': host: Input should be a valid string"),
        (
            'path_regex = "(unclosed"\n',
            "rule 'r': path_regex: invalid regular expression "
            "'(unclosed': missing ), unterminated subpattern at position 0",
        ),
        (
            'path_regex = "a{4294967296}"\n',
            "rule 'r': path_regex: invalid regular expression "
            "'a{4294967296}': the repetition number is too large",
        ),
        (
            'query = { q = { regex = "[" } }\n',
            "rule 'r': query.q.regex: invalid regular "
            "expression '[': unterminated character set at position 0",
        ),
        ("query = { q = [1, 2] }\n", "rule 'r': query.q: Input should be a valid boolean"),
        (
            'referrer = { regex = "*" }\n',
            "rule 'r': referrer.regex: invalid regular expression "
            "'*': nothing to repeat at position 0",
        ),
        # response matchers
        (
            'status = "abc"\n',
            "rule 'r': status: 'abc' is not a status; use 302, [301, 302], \"300-399\" or \"3xx\"",
        ),
        (
            'status = "200, 6xx"\n',
            "rule 'r': status: '6xx' is not a status; use 302, [301, 302], \"300-399\" or \"3xx\"",
        ),
        (
            'status = "\u00b2"\n',
            "rule 'r': status: '\u00b2' is not a status; use 302, [301, 302], "
            '"300-399" or "3xx"',
        ),
        (
            "status = [200, 1.5]\n",
            "rule 'r': status.1: Input should be a valid integer, got a "
            "number with a fractional part",
        ),
        # browser triggers
        (
            'trigger = "click"\n',
            "rule 'r': selector: a click rule needs selector = (a CSS selector)",
        ),
        (
            'selector = "button"\n',
            "rule 'r': selector: only click and submit rules use a "
            'selector; add trigger = "click"',
        ),
        (
            'trigger = "submit"\nselector = "form"\nstatus = 302\n',
            "rule 'r': status: not available on a submit rule",
        ),
        (
            'trigger = "click"\nselector = "a"\nform = { email = true }\n',
            "rule 'r': form: not available on a click rule",
        ),
        (
            'trigger = "click"\nselector = "a"\njson = { paid = true }\n',
            "rule 'r': json: not available on a click rule",
        ),
        (
            'trigger = "click"\nselector = "a"\nevent_id = "cart-1"\n',
            "rule 'r': event_id: not available on a click rule (px.js gives the browser pixel "
            "and the server one id)",
        ),
        (
            'trigger = "click"\nselector = "a["\n',
            "rule 'r': selector: selector 'a[': unbalanced "
            "brackets: '[' at position 1 is never closed",
        ),
        (
            'trigger = "click"\nselector = "a"\n[rule.extract]\nvalue = { source = "form", '
            'key = "v" }\n',
            "rule 'r': extract.value: source 'form' is not available here "
            "(expected one of: const, data, field, query)",
        ),
        # extract
        (
            "[rule.extract]\nprice = 1\n",
            "rule 'r': extract.price: unknown target 'price' "
            "(custom_data: value, currency, content_ids, contents, content_type, content_name, "
            "content_category, num_items, order_id, search_string, status, predicted_ltv, "
            "delivery_category; user_data: ",
        ),
        (
            '[rule.extract]\ncustom = { plan = "pro" }\n',
            "rule 'r': extract.custom: put custom properties in the rule's [rule.custom] table",
        ),
        (
            "[rule.custom]\nvalue = 1\n",
            "rule 'r': custom.value: value is a standard field: set it in extract",
        ),
        (
            '[rule.extract]\nemail = { source = "form", key = "e" }\nem = { source = "form", '
            'key = "e2" }\n',
            "rule 'r': extract.em: the same field as extract.email",
        ),
        (
            '[rule.extract]\nvalue = { source = "data", key = "price" }\n',
            "rule 'r': "
            "extract.value: source 'data' is not available here (expected one of: const, query, "
            "path, form, json, cookie, header, response_header, meta, jsonld, selector)",
        ),
        (
            '[rule.extract]\nvalue = { source = "const" }\n',
            "rule 'r': extract.value: a const source needs value = ...",
        ),
        (
            '[rule.extract]\nvalue = { source = "query" }\n',
            "rule 'r': extract.value: source 'query' needs key = ...",
        ),
        (
            '[rule.extract]\nvalue = { key = "total" }\n',
            "rule 'r': extract.value.source: required key is missing (e.g. source = \"query\")",
        ),
        (
            '[rule.extract]\nvalue = { source = "selector", key = "#t" }\n',
            "rule 'r': extract.value: a selector source needs attr = (e.g. \"data-sku\")",
        ),
        (
            '[rule.extract]\nvalue = { source = "selector", key = "#t[", attr = "data-v" }\n',
            "rule 'r': extract.value.key: selector '#t[': unbalanced brackets: '[' at position 2 "
            "is never closed",
        ),
        (
            '[rule.extract]\nvalue = { source = "jsonld", key = "Product..price" }\n',
            "rule 'r': extract.value.key: use a path such as Product.offers.price",
        ),
        (
            '[rule.extract]\ncurrency = { source = "query", key = "c", lower = true, '
            "upper = true }\n",
            "rule 'r': extract.currency: choose lower or upper, not both",
        ),
        (
            '[rule.extract]\ncontents = { source = "json", key = "items" }\n',
            "rule 'r': "
            'extract.contents: contents are objects: add map = { id = "sku", quantity = "qty" }',
        ),
        (
            '[rule.extract]\ncontents = { source = "json", key = "items", map = { qty = "q" } }\n',
            "rule 'r': extract.contents.map: map needs at least an 'id' entry, e.g. "
            "map = { id = 'sku' }",
        ),
        (
            '[rule.extract]\ncontent_name = { source = "query", key = "n", divide = 100 }\n',
            "rule 'r': extract.content_name.divide: only numbers can be divided: add "
            'type = "number"',
        ),
        (
            '[rule.extract]\nvalue = { source = "query", key = "v", divide = 0 }\n',
            "rule 'r': extract.value.divide: Input should be greater than 0",
        ),
        (
            '[rule.extract]\nvalue = { source = "query", key = "v", decimal = ";" }\n',
            "rule 'r': extract.value.decimal: Input should be 'auto', '.' or ','",
        ),
        (
            '[rule.extract]\nvalue = { source = "query", key = "v", type = "money" }\n',
            "rule 'r': extract.value.type: Input should be 'string', 'number', 'integer', 'list' "
            "or 'boolean'",
        ),
        (
            '[rule.extract]\nvalue = { source = "query", key = "v", pattern = "(" }\n',
            "rule 'r': extract.value.pattern: invalid regular expression '(': missing ), "
            "unterminated subpattern at position 0",
        ),
        (
            '[rule.extract]\nvalue = [{ source = "query", key = "v" }, 5]\n',
            "rule 'r': "
            'extract.value: expected a constant, a source table such as { source = "query", '
            'key = "q" }, or a list of source tables (first match wins)',
        ),
        (
            '[rule.extract]\nvalue = [{ source = "query", key = "v" }, { source = "qury" }]\n',
            "rule 'r': extract.value.1: unknown source 'qury' (expected one of: const, query, "
            "path, form, json, cookie, header, response_header, meta, jsonld, selector)",
        ),
        # what the event carries
        ('require = ["order_id"]\n', "rule 'r': require: 'order_id' is not extracted by this rule"),
        (
            'event_id = "purchase-{order_id}"\n',
            "rule 'r': event_id: {order_id} is not extracted by this rule",
        ),
        (
            'event_id = "lead-{email}"\n[rule.extract]\nemail = { source = "form", key = "e" }\n',
            "rule 'r': event_id: {email} is customer data and would reach Meta in clear",
        ),
        ('event_id = ""\n', "rule 'r': event_id: String should have at least 1 character"),
        (
            '[rule.stitch]\nkeys = ["order_id"]\n',
            "rule 'r': stitch.keys: 'order_id' is not extracted by this rule",
        ),
        (
            "[rule.stitch]\nkeys = []\n",
            "rule 'r': stitch.keys: List should have at least 1 item after validation, not 0",
        ),
        (
            '[rule.custom]\nb = { source = "query", key = "b" }\n[rule.stitch]\nkeys = ["b"]\n'
            'ttl = "soon"\n',
            "rule 'r': stitch.ttl: 'soon' is not a duration: use seconds or a "
            "string like 30s, 15m, 7d",
        ),
    ],
)
def test_error_names_file_rule_and_field(in_tmp: Path, extra: str, expected: str) -> None:
    message = load_error(in_tmp, rule_text(extra))
    assert message.startswith(f"rules/x.toml: {expected}"), message
    assert "\n" not in message.replace("\\n", "")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('[[rule]]\nevent = "Lead"\n', "rule #1: name: required key is missing"),
        (
            HEAD + '[[rule]]\nname = 7\nevent = "Lead"\n',
            "rule #2: name: Input should be a valid string",
        ),
        ('[[rule]]\nname = "r"\n', "rule 'r': event: required key is missing"),
        (
            '[[webhook]]\nname = "h"\nhook = "x"\nevent = "Purchase"\n',
            "webhook 'h': signature: required key is missing",
        ),
        (
            "rule = 5\n",
            "rule: Input should be a valid list (a rule file holds [[rule]] and "
            "[[webhook]] tables)",
        ),
        (
            "rule = [1]\n",
            "rule.0: Input should be a valid dictionary (a rule file holds [[rule]] "
            "and [[webhook]] tables)",
        ),
    ],
)
def test_rules_without_a_usable_name_are_numbered(in_tmp: Path, text: str, expected: str) -> None:
    assert load_error(in_tmp, text) == f"rules/x.toml: {expected}"


def test_errors_outside_the_working_directory_name_the_full_path(tmp_path: Path) -> None:
    message = load_error(tmp_path, HEAD + "bogus = 1\n")
    assert message.startswith(f"{tmp_path / 'rules' / 'x.toml'}: rule 'r': bogus: ")


# Names across files ---------------------------------------------------------------------


def test_duplicate_rule_names_across_files(in_tmp: Path) -> None:
    write(in_tmp / "rules", "a.toml", HEAD)
    message = load_error(in_tmp, HEAD.replace("Lead", "Purchase"), "b.toml")
    assert message == (
        "rules/b.toml: rule 'r': name already used in rules/a.toml; rule names must be unique"
    )


def test_duplicate_rule_names_in_one_file(in_tmp: Path) -> None:
    message = load_error(in_tmp, HEAD + HEAD)
    assert message == (
        "rules/x.toml: rule 'r': name already used in rules/x.toml; rule names must be unique"
    )


def test_a_disabled_rule_still_owns_its_name(in_tmp: Path) -> None:
    write(in_tmp / "rules", "a.toml", HEAD + "enabled = false\n")
    message = load_error(in_tmp, HEAD, "b.toml")
    assert "name already used in rules/a.toml" in message


def test_duplicate_webhook_names_across_files(in_tmp: Path) -> None:
    write(in_tmp / "rules", "a.toml", HOOK)
    assert load_error(in_tmp, HOOK, "b.toml") == (
        "rules/b.toml: webhook 'h': name already used in rules/a.toml"
    )


def test_a_rule_and_a_webhook_may_share_a_name(tmp_path: Path) -> None:
    write(tmp_path, "a.toml", HEAD.replace('"r"', '"h"') + HOOK)
    ruleset = load_rules(tmp_path)
    assert [r.name for r in ruleset.rules] == ["h"]
    assert [w.name for w in ruleset.webhooks] == ["h"]


def test_disabled_rules_are_not_loaded_and_files_load_in_name_order(tmp_path: Path) -> None:
    write(tmp_path, "b.toml", HEAD.replace('"r"', '"b1"'))
    write(
        tmp_path,
        "a.toml",
        HEAD.replace('"r"', '"a1"') + HEAD.replace('"r"', '"a2"') + "enabled = false\n",
    )
    ruleset = load_rules(tmp_path)
    assert [r.name for r in ruleset.rules] == ["a1", "b1"]
    assert [r.index for r in ruleset.rules] == [0, 1]
    assert ruleset.by_name("a2") is None


def test_template_fields() -> None:
    assert template_fields("purchase-{order_id}") == ["order_id"]
    assert template_fields("{a}-{b}-x") == ["a", "b"]
    assert template_fields("plain") == []


# No rule file crashes the loader ----------------------------------------------------------

# Pieces a rule file is made of, good and bad, for the text-level fuzzer.
FRAGMENTS = [
    "[[rule]]",
    "[[webhook]]",
    "[rule.extract]",
    "[rule.custom]",
    "[rule.stitch]",
    "[[rule.extract]]",
    'name = "r"',
    'name = "r2"',
    'event = "Purchase"',
    'trigger = "click"',
    'selector = "button.buy"',
    'selector = "a[href^=x"',
    'path = "/product/{sku}"',
    'path = ["/a/*", "/a/**", "/{x}/{x}"]',
    'path_regex = "^/p/(?P<sku>[^/]+)$"',
    'path_regex = "(?P<"',
    'host = "*.example.com"',
    'method = ["POST", "get"]',
    "status = 302",
    'status = "3xx"',
    'status = "300-399, 2xx"',
    'status = "x"',
    "query = { order = true, q = { regex = '\\\\S' } }",
    "form = { email = { regex = '(' } }",
    'json = { "a.b" = 1 }',
    'referrer = "https://*.google.*/*"',
    'event_id = "purchase-{order_id}"',
    'event_id = "{}"',
    'require = ["order_id", "value"]',
    'order_id = { source = "query", key = "order" }',
    'value = [{ source = "jsonld", key = "Order.price" }, { source = "query", key = "t" }]',
    'value = { source = "query", key = "t", type = "number", divide = 100 }',
    'value = { source = "selector", key = "#x", attr = "data-v", decimal = "," }',
    'contents = { source = "json", key = "items", map = { id = "sku", quantity = { key = "q", '
    'type = "integer" } } }',
    'email = { source = "form", key = "email", lower = true }',
    'content_ids = { source = "data", key = "sku", split = "," }',
    'keys = ["order_id"]',
    'ttl = "7d"',
    'hook = "stripe"',
    'signature = { type = "stripe", secrets = ["env:X"] }',
    'when = { type = "checkout.session.completed" }',
    "x = " + "[" * 50 + "]" * 50,
    "= broken",
    '"" = ""',
    "a.b.c = 1",
]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(
        st.one_of(
            st.sampled_from(FRAGMENTS),
            st.text(alphabet=string.printable + "{}[]=\"'\u00e9\u2212\u00b2", max_size=30),
        ),
        max_size=25,
    )
)
def test_no_text_crashes_the_loader(
    tmp_path_factory: pytest.TempPathFactory, lines: list[str]
) -> None:
    assert_loads_or_rule_error(tmp_path_factory.mktemp("fuzz"), "\n".join(lines))


# Structured fuzzing: real TOML (written by tomli-w) built from the keys a rule file has, each
# with values that are mostly right and sometimes wrong, so that many files get deep into
# compiling (and a fair share load) rather than all failing on their first key.
scalars = st.one_of(
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(allow_nan=True),
    st.text(max_size=10),
)
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner),
    max_leaves=8,
)


def mostly(usual: st.SearchStrategy[Any], rare: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """`usual` seven times in eight (one_of would give each distinct branch an equal share)."""
    return st.integers(0, 7).flatmap(lambda n: rare if n == 5 else usual)


def some(good: list[Any]) -> st.SearchStrategy[Any]:
    """Mostly one of the good values, sometimes anything at all."""
    return mostly(st.sampled_from(good), values)


GOOD_SPECS: list[Any] = [
    {"source": "query", "key": "order"},
    {"source": "query", "key": "t", "type": "number", "divide": 100},
    {"source": "path", "key": "sku"},
    {"source": "form", "key": "email", "lower": True},
    {"source": "json", "key": "items.0.sku"},
    {
        "source": "json",
        "key": "items",
        "map": {"id": "sku", "quantity": {"key": "q", "type": "integer"}},
    },
    {"source": "cookie", "key": "plan", "default": "free"},
    {"source": "header", "key": "X-Order", "pattern": "(?P<value>[A-Z0-9]+)"},
    {"source": "response_header", "key": "Location", "pattern": "order=(\\w+)"},
    {"source": "meta", "key": "og:title"},
    {"source": "jsonld", "key": "Product.offers.price", "decimal": ","},
    {"source": "selector", "key": "#cart[data-total]", "attr": "data-total"},
    {"source": "data", "key": "data-sku", "split": ","},
    {"source": "field", "key": "email"},
    {"source": "const", "value": "EUR", "upper": True},
    {"source": "const", "value": [1, 2]},
    "EUR",
    19.9,
]
TARGETS = [
    "value", "currency", "order_id", "content_ids", "contents", "num_items", "content_name",
    "email", "phone", "em", "predicted_ltv", "status", "custom", "price",
]  # fmt: skip
specs = some(GOOD_SPECS).flatmap(
    lambda spec: (
        st.just(spec)
        if not isinstance(spec, dict)
        else st.dictionaries(
            st.sampled_from(["type", "divide", "lower", "upper", "default", "split", "key"]),
            some(["number", "integer", "list", "boolean", 100, True, "x", ","]),
            max_size=1,
        ).map(lambda extra: {**spec, **extra})
    )
)
tables = st.dictionaries(
    st.sampled_from(TARGETS), st.one_of(specs, st.lists(specs, min_size=1, max_size=3)), max_size=4
)
conditions = st.dictionaries(
    st.sampled_from(["q", "order", "email", "a.b"]),
    some([True, False, "x", 3, {"regex": "^\\d+$"}, {"regex": "("}]),
    max_size=2,
)
RULE_KEYS: dict[str, st.SearchStrategy[Any]] = {
    "enabled": some([True, False]),
    "trigger": some(["request", "request", "click", "submit"]),
    "selector": some(["button.buy", "form#signup", "a["]),
    "host": some(["shop.example", "*.example.com", ["a.example", "b.example"]]),
    "path": some(
        ["/thank-you", "/product/{sku}", "/a/*", "/docs/**", ["/a/x", "/a/y"], "/{x}/{x}"]
    ),
    "path_regex": some(["^/p/(?P<sku>[^/]+)$", "/checkout", "(?P<"]),
    "method": some(["GET", "post", ["POST", "PUT"], "FETCH"]),
    "query": conditions,
    "form": conditions,
    "json": conditions,
    "content_type": some(["application/x-www-form-urlencoded", ["application/json"]]),
    "status": some([200, [301, 302], "3xx", "300-399", "200, 3xx", "6xx"]),
    "response_type": some(["text/html", ["text/html", "application/json"]]),
    "referrer": some(["https://*.google.*/*", {"regex": "google"}, {"regex": "["}]),
    "event_id": some(["purchase-{order_id}", "{value}", "{email}", "static"]),
    "require": some([["order_id"], ["value", "currency"], ["nope"]]),
    "action_source": some(["website", "email"]),
    "extract": tables,
    "custom": tables,
    "stitch": some([{"keys": ["order_id"]}, {"keys": ["email"], "ttl": "7d"}, {"keys": []}]),
}
rules = st.fixed_dictionaries(
    {
        "name": mostly(st.text("abcdefgh", min_size=1, max_size=6), st.sampled_from(["", "a b"])),
        "event": some(["Purchase", "Lead"]),
    },
    optional=RULE_KEYS,
)
webhooks = st.fixed_dictionaries(
    {
        "name": st.text("abcdefgh", min_size=1, max_size=6),
        "hook": some(["stripe", "shop"]),
        "event": some(["Purchase"]),
        "signature": some(
            [
                {"type": "stripe", "secrets": ["whsec_x"]},
                {"type": "hmac", "secrets": ["s"], "header": "X-Sig"},
                {"type": "hmac", "secrets": ["env:CAPIGW_TEST_UNSET_SECRET"]},
                {"type": "hmac", "secrets": []},
            ]
        ),
    },
    optional={
        "delivery_id": some(["id"]),
        "event_id": some(["purchase-{order_id}", "{email}"]),
        "when": conditions,
        "extract": tables,
        "custom": tables,
        "require": some([["order_id"]]),
        "stitch": some([["order_id"], ["email"]]),
    },
)


def _spoil(data: dict[str, Any], how: int) -> dict[str, Any]:
    """Now and then a key no rule file has, at the top or in each rule."""
    if how == 5:
        return {"other": 1, **data}
    if how == 6:
        return {**data, "rule": [{**r, "bogus": 1} for r in data["rule"]]}
    return data


rule_files = st.builds(
    _spoil,
    st.fixed_dictionaries(
        {"rule": st.lists(rules, max_size=3)},
        optional={"webhook": st.lists(webhooks, max_size=2)},
    ),
    st.integers(0, 15),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rule_files)
def test_no_structured_rule_file_crashes_the_loader(
    tmp_path_factory: pytest.TempPathFactory, data: dict[str, Any]
) -> None:
    assert_loads_or_rule_error(tmp_path_factory.mktemp("fuzz"), tomli_w.dumps(data))


def assert_loads_or_rule_error(directory: Path, text: str) -> None:
    """Either a rule set or a RuleError that starts with the file's name: nothing else."""
    path = directory / "fuzz.toml"
    path.write_text(text, encoding="utf-8")
    try:
        ruleset = load_rules(directory)
    except RuleError as exc:
        assert str(exc).startswith(f"{path}: "), str(exc)
    else:
        assert isinstance(ruleset, RuleSet)


def test_every_rule_example_in_the_readme_loads(tmp_path: Path) -> None:
    guide = (ROOT / "README.md").read_text().split("\n## Rules\n", 1)[1].split("\n## ", 1)[0]
    blocks = [b for b in re.findall(r"```toml\n(.*?)```", guide, re.S) if "[[rule]]" in b]
    assert len(blocks) >= 3
    for i, block in enumerate(blocks):
        write(tmp_path / str(i), "example.toml", block)
        assert len(load_rules(tmp_path / str(i)).rules) == 1


# Collecting every problem (what `check` does) ------------------------------------------------


def test_with_a_problems_list_every_problem_is_collected_and_valid_rules_still_load(
    in_tmp: Path,
) -> None:
    rules = in_tmp / "rules"
    write(rules, "a.toml", '[[rule]]\nname = "a"\nevent = "purchase"\npaht = "/x"\n' + HEAD)
    write(rules, "b.toml", "x = [\n")
    write(rules, "c.toml", '[[rule]]\nname = "r"\nevent = "Lead"\n')
    problems: list[str] = []
    ruleset = load_rules(rules, problems)
    assert problems == [
        "rules/a.toml: rule 'a': event: 'purchase' is not a standard event (names are "
        "case-sensitive); did you mean 'Purchase'? A custom event must not differ from a "
        "standard one by case only",
        "rules/a.toml: rule 'a': paht: unknown key; did you mean `path`?",
        "rules/b.toml: TOML syntax error: Invalid value (at end of document)",
        "rules/c.toml: rule 'r': name already used in rules/a.toml; rule names must be unique",
    ]
    assert [rule.name for rule in ruleset.rules] == ["r"]
    # Without the list, the first problem is raised, as `serve` wants.
    with pytest.raises(RuleError, match=r"^rules/a\.toml: rule 'a': paht: "):
        load_rules(rules)


def test_an_empty_directory_loads_with_a_note(tmp_path: Path) -> None:
    write(tmp_path, "shop.tml", HEAD)
    ruleset = load_rules(tmp_path)
    assert ruleset.rules == ()
    assert ruleset.warnings() == [
        f"{tmp_path}/shop.tml: not read: rule files must end in .toml (rename it to shop.toml)",
        f"rules: no rule file (*.toml) in {tmp_path} (it holds shop.tml): no rule will fire",
    ]
