"""The dashboard page from its templates: every string a row or a rule supplies is escaped."""

from __future__ import annotations

import re

from gateway.admin.data import (
    BlockedPixel,
    Dashboard,
    DeadRow,
    Delivery,
    RuleStat,
    Series,
    Timeline,
)
from gateway.admin.day import Coverage, Dedup
from gateway.admin.hints import Hint
from gateway.admin.page import (
    PixelInTestMode,
    pixels_in_test_mode,
    render_dashboard,
    render_login,
)
from gateway.settings import Settings

EVIL = "\"><script>alert(1)</script><b x='y'>"


def _dashboard(text: str) -> Dashboard:
    return Dashboard(
        now=1.7e9,
        day_start=1.7e9 - 86400,
        timeline=Timeline(0.0, 60, (Series(text, (2, *([0] * 59))),)),
        delivery=Delivery(1, 0, 0, 0, 1, 1, (BlockedPixel(text, text, text, 0.0),)),
        dead_letters=(DeadRow(7, text, text, text, text, 1, text, text, 1.7e9),),
        coverage=(Coverage(text, 3, {"em": 0.5}, {text: 3}),),
        hints=(Hint(text, "em", 0.5, text),),
        dedup=(Dedup(text, 1, 1, 1),),
        dedup_total=Dedup("All", 1, 1, 1),
        rules=(RuleStat(text, text, text, text, 0),),
        other_rules=((text, 2),),
    )


def test_no_string_from_the_store_becomes_markup() -> None:
    html = render_dashboard(
        _dashboard(EVIL),
        prefix="/_capi",
        csrf=EVIL,
        notice=EVIL,
        signed_in=True,
        dry_run=True,
        version=EVIL,
        testing=(PixelInTestMode(EVIL, EVIL),),
    )
    assert "<script>alert" not in html and "<b x=" not in html
    # One escaped copy per place the page shows it: every field of every section.
    assert html.count("&lt;script&gt;alert(1)&lt;/script&gt;") >= 20
    # Every element the page opens is one of the template's own.
    tags = set(re.findall(r"<([a-z0-9]+)[\s>/]", html))
    assert "b" in tags  # the dedup section's own <b>Browser</b>
    assert tags <= {
        "html", "head", "meta", "title", "link", "script", "body", "header", "h1", "h2", "h3",
        "span", "p", "a", "form", "input", "button", "main", "section", "svg", "line", "text",
        "rect", "ul", "li", "div", "table", "thead", "tbody", "tfoot", "tr", "th", "td",
        "code", "time", "meter", "b", "strong",
    }  # fmt: skip


def test_the_sign_in_form_escapes_the_error() -> None:
    html = render_login(prefix="/_capi", error=EVIL, version="1")
    assert "<script>alert" not in html
    assert '<p class="error" role="alert">&#34;&gt;&lt;script&gt;' in html
    assert '<form method="post" action="/_capi/admin/login">' in html


def _page(*, dry_run: bool = False, testing: tuple[PixelInTestMode, ...] = ()) -> str:
    return render_dashboard(
        _dashboard("PageView"),
        prefix="/_capi",
        csrf="t",
        notice="",
        signed_in=False,
        dry_run=dry_run,
        version="1",
        testing=testing,
    )


def _badges(html: str) -> list[str]:
    """The text of each test-mode badge, tags dropped and spaces collapsed."""
    items = re.findall(r'<li data-pixel="\d+">(.*?)</li>', html)
    return [" ".join(re.sub(r"<[^>]+>", "", item).split()) for item in items]


def test_a_badge_for_each_pixel_in_test_mode() -> None:
    html = _page(testing=(PixelInTestMode("111", "TEST123"), PixelInTestMode("333", "TEST9")))
    assert _badges(html) == [
        f"TEST MODE — Pixel {pixel}: events go to Test Events (code {code}), not to your ads. "
        "Remove its test_event_code once testing is done."
        for pixel, code in (("111", "TEST123"), ("333", "TEST9"))
    ]
    assert html.index('class="test-mode"') < html.index('id="traffic"')
    # In a dry run nothing leaves, so the badge says where events would go.
    dry = _page(dry_run=True, testing=(PixelInTestMode("111", "TEST123"),))
    assert "events would go to Test Events (code TEST123)" in _badges(dry)[0]


def test_no_badge_without_a_pixel_in_test_mode() -> None:
    html = _page()
    assert _badges(html) == [] and "test-mode" not in html and "TEST MODE" not in html


def test_the_pixels_in_test_mode_come_from_their_own_code_or_the_top_level_one() -> None:
    settings = Settings.model_validate(
        {
            "pixel_id": ["1111111111", "2222222222"],
            "test_event_code": "TOP1",
            "pixels": [{"id": "3333333333", "test_event_code": "OWN3"}, {"id": "4444444444"}],
            "access_token": "EAAB" + "x" * 40,
        }
    )
    assert pixels_in_test_mode(settings) == (
        PixelInTestMode("1111111111", "TOP1"),
        PixelInTestMode("2222222222", "TOP1"),
        PixelInTestMode("3333333333", "OWN3"),
        PixelInTestMode("4444444444", "TOP1"),
    )
    live = Settings.model_validate(
        {"pixels": [{"id": "3333333333", "test_event_code": "OWN3"}, {"id": "4444444444"}]}
    )
    assert pixels_in_test_mode(live) == (PixelInTestMode("3333333333", "OWN3"),)
    assert pixels_in_test_mode(Settings.model_validate({"pixel_id": ["1111111111"]})) == ()
