"""Match-key hints against real rule files: never advise a mapping that exists already."""

from __future__ import annotations

from pathlib import Path

from gateway.admin.hints import coverage_hint
from gateway.pipeline.ruleload import load_rules

ROOT = Path(__file__).resolve().parents[2]
FULL = {
    "em": 1.0,
    "ph": 1.0,
    "external_id": 1.0,
    "fbp": 1.0,
    "fbc": 0.0,
    "client_ip_address": 1.0,
    "client_user_agent": 1.0,
}


def test_a_field_mapped_for_another_event_is_not_advised_again() -> None:
    # The example shop maps the checkout form's email for AddPaymentInfo (the form's POST);
    # its Purchase comes from the thank-you page, which the form never reaches.
    rules = load_rules(ROOT / "rules").rules
    shop = next(r.file for r in rules if r.name == "purchase")
    hint = coverage_hint(
        "Purchase", {**FULL, "em": 0.0}, {"rule": 40}, rules, rules_dir=ROOT / "rules"
    )
    assert hint is not None and hint.key == "em"
    assert "map the checkout form's email field" not in hint.text
    # The shop's own checkout rule first, then the other example files' rules.
    assert hint.text == (
        f"Purchase events carry email in 0% of cases: rule 'purchase' ({shop}), which makes "
        "them, maps no email (it is mapped only for AddPaymentInfo (rule 'payment-submitted'), "
        "CompleteRegistration (rule 'signup') and 2 more): map an email that the Purchase request "
        "carries in that rule"
    )


def test_a_mapped_field_that_is_often_empty_is_named_with_its_source(tmp_path: Path) -> None:
    (tmp_path / "checkout.toml").write_text(
        '[[rule]]\nname = "order"\nevent = "Purchase"\nmethod = "POST"\npath = "/order"\n'
        '[rule.extract]\nemail = { source = "form", key = "customer_email" }\n'
    )
    rules = load_rules(tmp_path).rules
    hint = coverage_hint("Purchase", {**FULL, "em": 0.4}, {"rule": 10}, rules, rules_dir=tmp_path)
    assert hint is not None
    assert hint.text == (
        f"Purchase events carry email in 40% of cases: rule 'order' ({rules[0].file}) "
        "maps email from the form field 'customer_email'; the Purchase events without it came "
        "from requests with no value there: check that they carry it under that name, or map "
        "email from where they do"
    )
