"""`capi-gateway rules test` and `check` on the example rules in rules/: each example fires for
the request it is written for and stays quiet for its failure case."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from gateway.cli import main
from gateway.pipeline.ruleload import load_rules
from tests.fakes.processes import CLI

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "rules"
SHOP = "https://shop.example"


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


@pytest.fixture(autouse=True)
def clean_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No META_* / CAPIGW_* from the test runner; run where relative paths are tmp_path's."""
    for key in list(os.environ):
        if key.startswith(("META_", "CAPIGW_")):
            monkeypatch.delenv(key)
    monkeypatch.chdir(tmp_path)


def rules_test(
    capsys: pytest.CaptureFixture[str], url: str, *args: str, rules: Path = EXAMPLES
) -> tuple[int, dict[str, Any]]:
    """Exit code and JSON report of `capi-gateway rules test`."""
    code = main(["rules", "test", "--rules", str(rules), url, *args])
    out, err = capsys.readouterr()
    assert err == ""
    return code, json.loads(out)


def fired(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Rule name -> the event payload it would queue."""
    return {e["rule"]: e["event"] for e in report["events"]}


def skipped(report: dict[str, Any]) -> dict[str, str]:
    return {s["rule"]: s["reason"] for s in report["skipped"]}


def page(tmp_path: Path, name: str, head: str = "", body: str = "") -> str:
    path = tmp_path / name
    path.write_text(f"<!doctype html><html><head>{head}</head><body>{body}</body></html>")
    return str(path)


def jsonld(data: dict[str, Any]) -> str:
    return f'<script type="application/ld+json">{json.dumps(data)}</script>'


# shop.toml ---------------------------------------------------------------------------------


def test_view_product_from_json_ld(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    html = page(
        tmp_path,
        "product.html",
        head=jsonld(
            {
                "@context": "https://schema.org",
                "@type": "Product",
                "sku": "TEE-1",
                "name": "Blue T-shirt",
                "offers": {"@type": "Offer", "price": "19.90", "priceCurrency": "eur"},
            }
        ),
        body='<button class="add-to-cart" data-sku="TEE-1" data-price="19.90">Add</button>',
    )
    code, report = rules_test(capsys, f"{SHOP}/product/TEE-1", "--html", html)
    assert code == 0
    event = fired(report)["view-product"]
    assert event["event_name"] == "ViewContent"
    assert event["custom_data"] == {
        "content_ids": ["TEE-1"],
        "content_type": "product",
        "content_name": "Blue T-shirt",
        "value": 19.9,
        "currency": "EUR",
    }
    assert event["event_source_url"] == f"{SHOP}/product/TEE-1"
    assert event["user_data"]["client_ip_address"] == report["visitor"]["client_ip_address"]
    # The click rule for the page's button is handed to px.js, not fired here.
    (trigger,) = report["browser_triggers"]
    assert (trigger["r"], trigger["e"], trigger["t"]) == ("add-to-cart", "AddToCart", "click")
    assert trigger["s"] == "button.add-to-cart"
    assert trigger["d"] == ["sku", "price"]


def test_view_product_not_for_a_missing_product(capsys: pytest.CaptureFixture[str]) -> None:
    code, report = rules_test(capsys, f"{SHOP}/product/NOPE", "--status", "404")
    assert code == 1
    assert report["events"] == []
    assert skipped(report) == {
        "view-product": "the response (404, text/html) is not the one the rule asks for"
    }


def test_add_to_cart_trigger_only_on_product_pages(capsys: pytest.CaptureFixture[str]) -> None:
    _, report = rules_test(capsys, f"{SHOP}/checkout")
    assert report["browser_triggers"] == []


def test_initiate_checkout_from_form_attributes(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    html = page(
        tmp_path,
        "checkout.html",
        body='<form method="post" action="/checkout" id="checkout" data-total="59.80" '
        'data-items="3" data-currency="EUR"><input name="email"></form>',
    )
    code, report = rules_test(capsys, f"{SHOP}/checkout", "--html", html)
    assert code == 0
    assert list(fired(report)) == ["initiate-checkout"]
    assert fired(report)["initiate-checkout"]["custom_data"] == {
        "value": 59.8,
        "num_items": 3,
        "currency": "EUR",
    }


def test_payment_submitted_from_the_redirect(capsys: pytest.CaptureFixture[str]) -> None:
    code, report = rules_test(
        capsys,
        f"{SHOP}/checkout",
        *("--method", "POST", "--status", "302"),
        *("--form", "email= Jane@Example.com", "--form", "phone=+49 151 1234 5678"),
        *("--response-header", "Location=/thank-you?order=A1B2C3D4&total=59.80"),
    )
    assert code == 0
    assert list(fired(report)) == ["payment-submitted"]
    event = fired(report)["payment-submitted"]
    assert event["event_name"] == "AddPaymentInfo"
    assert event["event_id"] == "payment-A1B2C3D4"
    assert event["custom_data"] == {"order_id": "A1B2C3D4", "value": 59.8, "currency": "EUR"}
    assert event["user_data"]["em"] == sha("jane@example.com")
    assert event["user_data"]["ph"] == sha("4915112345678")
    assert "Jane" not in json.dumps(report)


def test_no_payment_for_a_checkout_form_with_errors(capsys: pytest.CaptureFixture[str]) -> None:
    # The shop answers 200 and shows the form again.
    code, report = rules_test(
        capsys, f"{SHOP}/checkout", "--method", "POST", "--form", "email=not-an-address"
    )
    assert code == 1
    assert skipped(report) == {
        "payment-submitted": "the response (200, text/html) is not the one the rule asks for"
    }


def test_no_payment_without_an_email_field(capsys: pytest.CaptureFixture[str]) -> None:
    code, report = rules_test(
        capsys,
        f"{SHOP}/checkout",
        *("--method", "POST", "--status", "302", "--form", "phone=1"),
        *("--response-header", "Location=/thank-you?order=A1&total=1"),
    )
    assert code == 1
    assert skipped(report) == {
        "payment-submitted": "the request body does not have the fields the rule asks for"
    }


def test_purchase_from_the_order_json_ld_and_reload_gives_the_same_id(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    html = page(
        tmp_path,
        "thanks.html",
        head=jsonld(
            {"@type": "Order", "orderNumber": "A1B2C3D4", "price": "59.80", "priceCurrency": "EUR"}
        ),
    )
    url = f"{SHOP}/thank-you?order=A1B2C3D4&total=59.80"
    code, first = rules_test(capsys, url, "--html", html)
    assert code == 0
    event = fired(first)["purchase"]
    assert event["event_name"] == "Purchase"
    assert event["event_id"] == "purchase-A1B2C3D4"
    assert event["custom_data"] == {"order_id": "A1B2C3D4", "value": 59.8, "currency": "EUR"}
    _, again = rules_test(capsys, url, "--html", html)
    assert fired(again)["purchase"]["event_id"] == "purchase-A1B2C3D4"


def test_purchase_falls_back_to_the_query(capsys: pytest.CaptureFixture[str]) -> None:
    code, report = rules_test(capsys, f"{SHOP}/thank-you?order=Z9&total=12.50")
    assert code == 0
    event = fired(report)["purchase"]
    assert event["event_id"] == "purchase-Z9"
    assert event["custom_data"] == {"order_id": "Z9", "value": 12.5, "currency": "EUR"}


def test_no_purchase_without_an_order(capsys: pytest.CaptureFixture[str]) -> None:
    code, report = rules_test(capsys, f"{SHOP}/thank-you")
    assert code == 1
    assert report["events"] == [] and report["skipped"] == []
    code, report = rules_test(capsys, f"{SHOP}/thank-you?order=")
    assert code == 1
    assert skipped(report) == {"purchase": "a required value is missing"}


def test_search(capsys: pytest.CaptureFixture[str]) -> None:
    code, report = rules_test(capsys, f"{SHOP}/search?q=blue+shoes")
    assert code == 0
    assert fired(report)["search"]["custom_data"] == {"search_string": "blue shoes"}
    code, report = rules_test(capsys, f"{SHOP}/search?q=+++")
    assert code == 1
    assert report["events"] == []


# leads.toml --------------------------------------------------------------------------------


def test_contact_lead_with_hashed_contact_details(capsys: pytest.CaptureFixture[str]) -> None:
    code, report = rules_test(
        capsys,
        f"{SHOP}/contact",
        *("--method", "POST", "--status", "302"),
        *("--form", "email=Jane.Doe@Example.com", "--form", "name=Jane Doe"),
        *("--form", "phone=+1 (650) 555-1212", "--form", "message=call me"),
    )
    assert code == 0
    event = fired(report)["contact-lead"]
    assert event["event_name"] == "Lead"
    assert event["custom_data"] == {"content_name": "contact form"}
    user = event["user_data"]
    assert user["em"] == sha("jane.doe@example.com")
    assert user["fn"] == sha("jane")
    assert user["ph"] == sha("16505551212")
    assert "call me" not in json.dumps(report)


def test_no_lead_for_a_contact_form_without_email(capsys: pytest.CaptureFixture[str]) -> None:
    code, report = rules_test(
        capsys,
        f"{SHOP}/contact",
        *("--method", "POST", "--status", "302", "--form", "name=Jane"),
    )
    assert code == 1
    assert skipped(report) == {
        "contact-lead": "the request body does not have the fields the rule asks for"
    }


def test_no_lead_when_the_contact_form_comes_back(capsys: pytest.CaptureFixture[str]) -> None:
    code, report = rules_test(
        capsys, f"{SHOP}/contact", "--method", "POST", "--form", "email=jane@example.com"
    )
    assert code == 1
    assert list(skipped(report)) == ["contact-lead"]


# booking.toml ------------------------------------------------------------------------------


def test_booking_lead_in_rupiah(capsys: pytest.CaptureFixture[str]) -> None:
    location = "/book/confirmed?booking=B1A2B3&service=tailoring&amount=1.250.000"
    code, report = rules_test(
        capsys,
        f"{SHOP}/book",
        *("--method", "POST", "--status", "302", "--response-header", f"Location={location}"),
        *("--form", "service=tailoring", "--form", "email=budi@example.co.id"),
        *("--form", "phone=+62 812 3456 7890", "--form", "date=2026-12-01"),
    )
    assert code == 0
    event = fired(report)["booking-lead"]
    assert event["event_name"] == "Lead"
    assert event["custom_data"] == {
        "content_name": "tailoring",
        "value": 1250000.0,
        "currency": "IDR",
        "booking_id": "B1A2B3",
    }
    assert event["user_data"]["em"] == sha("budi@example.co.id")


def test_no_booking_lead_when_the_form_comes_back(capsys: pytest.CaptureFixture[str]) -> None:
    code, report = rules_test(
        capsys, f"{SHOP}/book", "--method", "POST", "--form", "service=tailoring"
    )
    assert code == 1
    assert list(skipped(report)) == ["booking-lead"]


def test_booking_scheduled_once_per_booking(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    html = page(
        tmp_path,
        "confirmed.html",
        body='<p id="booking" data-booking="B1A2B3" data-amount="1.250.000" '
        'data-currency="IDR">Booking B1A2B3 confirmed: Rp 1.250.000.</p>',
    )
    url = f"{SHOP}/book/confirmed?booking=B1A2B3&service=tailoring"
    code, report = rules_test(capsys, url, "--html", html)
    assert code == 0
    event = fired(report)["booking-scheduled"]
    assert event["event_name"] == "Schedule"
    assert event["event_id"] == "schedule-B1A2B3"
    assert event["custom_data"] == {"value": 1250000.0, "currency": "IDR", "booking_id": "B1A2B3"}


def test_no_schedule_without_a_booking(capsys: pytest.CaptureFixture[str]) -> None:
    code, report = rules_test(capsys, f"{SHOP}/book/confirmed")
    assert code == 1
    assert report["events"] == [] and report["skipped"] == []


# signup.toml -------------------------------------------------------------------------------


def test_signup_answered_with_a_redirect_is_a_registration(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, report = rules_test(
        capsys,
        f"{SHOP}/signup",
        *("--method", "POST", "--status", "303", "--form", "email=New.User@Example.com"),
    )
    assert code == 0
    event = fired(report)["signup"]
    assert event["event_name"] == "CompleteRegistration"
    assert event["custom_data"] == {"status": "registered"}
    assert event["user_data"]["em"] == sha("new.user@example.com")


def test_failed_signup_answered_200_is_not(capsys: pytest.CaptureFixture[str]) -> None:
    code, report = rules_test(
        capsys,
        f"{SHOP}/signup",
        *("--method", "POST", "--status", "200", "--form", "email=new@example.com"),
    )
    assert code == 1
    assert report["events"] == []
    assert skipped(report) == {
        "signup": "the response (200, text/html) is not the one the rule asks for"
    }


def test_a_get_of_the_signup_page_is_nothing(capsys: pytest.CaptureFixture[str]) -> None:
    code, report = rules_test(capsys, f"{SHOP}/signup")
    assert code == 1
    assert report == {
        "url": f"{SHOP}/signup",
        "visitor": report["visitor"],
        "events": [],
        "skipped": [],
        "browser_triggers": [],
    }


# More of what `rules test` describes ------------------------------------------------------


def test_json_body_cookie_header_and_referrer(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    rules = tmp_path / "custom-rules"
    rules.mkdir()
    (rules / "api.toml").write_text(
        """
[[rule]]
name = "api-order"
event = "Purchase"
method = "POST"
path = "/api/orders"
json = { status = "paid" }
referrer = { regex = "^https://shop\\\\.example/" }
event_id = "order-{order_id}"

[rule.extract]
order_id = { source = "json", key = "order.id" }
value = { source = "json", key = "order.total_cents", divide = 100 }
currency = { source = "header", key = "X-Currency", upper = true }
external_id = { source = "cookie", key = "uid" }
"""
    )
    body = json.dumps({"status": "paid", "order": {"id": 77, "total_cents": 4990}})
    args = (
        *("--method", "POST", "--json-body", body, "--header", "X-Currency=eur"),
        *("--cookie", "uid=U-1", "--cookie", "_fbp=fb.1.1700000000000.123"),
    )
    code, report = rules_test(
        capsys, f"{SHOP}/api/orders", *args, "--referrer", f"{SHOP}/cart", rules=rules
    )
    assert code == 0
    event = fired(report)["api-order"]
    assert event["event_id"] == "order-77"
    assert event["custom_data"] == {"order_id": "77", "value": 49.9, "currency": "EUR"}
    assert event["user_data"]["external_id"] == sha("u-1")
    assert event["user_data"]["fbp"] == "fb.1.1700000000000.123"
    code, report = rules_test(capsys, f"{SHOP}/api/orders", *args, rules=rules)
    assert code == 1  # no referrer from the shop


CONFIG_ERROR = "capi-gateway: config error: "


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["http://[::1/x"], "url: 'http://[::1/x' is not a URL"),
        (["/thank-you"], "url: '/thank-you' is not an absolute http(s) URL"),
        ([f"{SHOP}/x", "--form", "novalue"], "--form: 'novalue' is not NAME=VALUE"),
        ([f"{SHOP}/x", "--json-body", "{nope"], "--json-body: not JSON"),
        (
            [f"{SHOP}/x", "--html", "missing.html"],
            "--html: cannot read missing.html (No such file or directory)",
        ),
    ],
)
def test_rules_test_errors_are_one_line(
    capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    assert main(["rules", "test", "--rules", str(EXAMPLES), *args]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith(CONFIG_ERROR + message)
    assert err.count("\n") == 1


def test_rules_test_needs_a_rules_directory(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["rules", "test", f"{SHOP}/x"]) == 2
    assert capsys.readouterr().err == (
        "capi-gateway: config error: rules: no rule directory; pass --rules DIR "
        "(or set it in the config)\n"
    )


# check --------------------------------------------------------------------------------------


def test_check_validates_the_examples(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", "--dry-run", "--rules", str(EXAMPLES)]) == 0
    out = capsys.readouterr().out
    ruleset = load_rules(EXAMPLES)
    assert len(ruleset.rules) >= 10
    assert (
        f"rules OK: {len(ruleset.rules)} rule(s), {len(ruleset.webhooks)} webhook(s) from "
        f"{len(list(EXAMPLES.glob('*.toml')))} file(s) in {EXAMPLES}"
    ) in out


BROKEN = """
[[rule]]
name = "purchase"
event = "Purchase"
path = "/thank-you"

[rule.extract]
value = { source = "qury", key = "total" }
"""


def test_check_names_file_rule_and_field(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    (tmp_path / "rules").mkdir()
    (tmp_path / "rules" / "shop.toml").write_text(BROKEN)
    assert main(["check", "--dry-run", "--rules", "rules"]) == 2
    assert capsys.readouterr().err == (
        "capi-gateway: rule error: rules/shop.toml: rule 'purchase': extract.value: unknown "
        "source 'qury' (expected one of: const, query, path, form, json, cookie, header, "
        "response_header, meta, jsonld, selector)\n"
    )


def test_the_readme_shows_the_message_check_prints(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    (tmp_path / "rules").mkdir()
    (tmp_path / "rules" / "shop.toml").write_text(BROKEN)
    main(["check", "--dry-run", "--rules", "rules"])
    line = capsys.readouterr().err.strip()
    assert f"\n{line}\n" in (ROOT / "README.md").read_text()


def test_check_toml_syntax_error(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    (tmp_path / "rules").mkdir()
    (tmp_path / "rules" / "leads.toml").write_text('[[rule]]\nname = "x"\nevent "Lead"\n')
    assert main(["check", "--dry-run", "--rules", "rules"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("capi-gateway: rule error: rules/leads.toml: TOML syntax error: ")
    assert "(at line 3, column 7)" in err


def test_rules_test_with_a_broken_rule_file(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    (tmp_path / "rules").mkdir()
    (tmp_path / "rules" / "shop.toml").write_text(BROKEN.replace("path =", "paht ="))
    assert main(["rules", "test", "--rules", "rules", f"{SHOP}/thank-you"]) == 2
    assert capsys.readouterr().err == (
        "capi-gateway: rule error: rules/shop.toml: rule 'purchase': paht: unknown key; "
        "did you mean `path`?\n"
    )


# The installed console script ----------------------------------------------------------------


def run_script(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(cwd), "LANG": "C.UTF-8"}
    return subprocess.run(
        [str(CLI), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=30, check=False
    )


def test_script_rules_test_and_check(tmp_path: Path) -> None:
    assert CLI.exists(), "install the project: .venv/bin/pip install -e '.[test]'"
    result = run_script(
        tmp_path,
        *("rules", "test", "--rules", str(EXAMPLES), f"{SHOP}/signup"),
        *("--method", "POST", "--status", "302", "--form", "email=jane@example.com"),
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert [e["rule"] for e in report["events"]] == ["signup"]
    assert report["events"][0]["event"]["user_data"]["em"] == sha("jane@example.com")

    (tmp_path / "rules").mkdir()
    (tmp_path / "rules" / "shop.toml").write_text(BROKEN)
    result = run_script(tmp_path, "check", "--dry-run", "--rules", "rules")
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert result.stderr.splitlines() == [
        "capi-gateway: rule error: rules/shop.toml: rule 'purchase': extract.value: unknown "
        "source 'qury' (expected one of: const, query, path, form, json, cookie, header, "
        "response_header, meta, jsonld, selector)"
    ]
    assert "rules OK" not in result.stdout
