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
from gateway.admin.page import render_dashboard, render_login

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
        "code", "time", "meter", "b",
    }  # fmt: skip


def test_the_sign_in_form_escapes_the_error() -> None:
    html = render_login(prefix="/_capi", error=EVIL, version="1")
    assert "<script>alert" not in html
    assert '<p class="error" role="alert">&#34;&gt;&lt;script&gt;' in html
    assert '<form method="post" action="/_capi/admin/login">' in html
