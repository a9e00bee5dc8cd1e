"""The dashboard's HTML: the dashboard's data in, one server-rendered page out.

Rendered by the Jinja2 templates in gateway/admin/templates, which escape every value, so
what a row or a rule file supplies is never markup. The page has an inline SVG chart and no
inline script: styles and the small script come from `{prefix}/admin/assets/`
(gateway/admin/static), which the page's CSP allows and nothing else; bars and meters are
sized by attributes, never by inline styles.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from gateway.admin.chart import layout, series_groups
from gateway.admin.data import Coverage, Dashboard
from gateway.admin.hints import MATCH_KEYS, WEAK, hinted_keys
from gateway.admin.render import render
from gateway.settings import Settings


@dataclass(frozen=True, slots=True)
class PixelInTestMode:
    """A pixel whose events go to Meta's Test Events tab, and the code that sends them there."""

    pixel_id: str
    code: str


def pixels_in_test_mode(settings: Settings) -> tuple[PixelInTestMode, ...]:
    """The configured pixels in test mode: a `test_event_code` of their own or the top level's."""
    return tuple(
        PixelInTestMode(p.id, p.test_event_code)
        for p in settings.effective_pixels()
        if p.test_event_code
    )


def render_dashboard(
    d: Dashboard,
    *,
    prefix: str,
    csrf: str,
    notice: str,
    signed_in: bool,
    dry_run: bool,
    version: str,
    testing: Sequence[PixelInTestMode] = (),
    sites: Sequence[str] = (),
    site: str | None = None,
    tenant: bool = False,
    audiences: Sequence[Any] = (),
    catalog: Sequence[Mapping[str, Any]] = (),
) -> str:
    """The whole dashboard page; `sites`: the site selector's choices, `site`: the one shown;
    `audiences`: the audiences panel's rows (gateway/admin/audiences.py); `catalog`: the
    catalog panels (gateway.admin.catalog)."""
    s = d.delivery
    tiles = [
        ("sent", "Sent", s.sent, "delivered in the last 24\u00a0h"),
        ("pending", "Pending", s.pending, "waiting for their first attempt"),
        ("retrying", "Retrying", s.retrying, "waiting for another attempt"),
        ("dead", "Dead", s.dead, "refused for good or expired"),
    ]
    if s.blocked:
        tiles.append(("blocked", "Blocked", s.blocked, "held until a pixel's token is fixed"))
    return render(
        "dashboard.html",
        d=d,
        prefix=prefix,
        admin=f"{prefix}/admin",
        csrf=csrf,
        notice=notice,
        signed_in=signed_in,
        dry_run=dry_run,
        version=version,
        testing=testing,
        sites=sites,
        site=site,
        tenant=tenant,
        catalog=catalog,
        c=layout(d.timeline),
        series=series_groups(d.timeline),
        tiles=tiles,
        match_keys=MATCH_KEYS,
        coverage=[(c, _cells(c)) for c in d.coverage],
        audiences=audiences,
    )


def render_login(*, prefix: str, error: str, version: str) -> str:
    """The sign-in form."""
    return render("login.html", prefix=prefix, error=error, version=version)


@dataclass(frozen=True, slots=True)
class Cell:
    """One match key of one event name: its share as sent and as received."""

    key: str
    sent: float
    received: float
    weak: bool  # under WEAK as sent, where the event is expected to carry the key

    @property
    def lifted(self) -> bool:
        """Assembly or profiles changed the share visibly (as whole percents)."""
        return round(self.sent * 100) != round(self.received * 100)


def _cells(c: Coverage) -> list[Cell]:
    """A cell per match key: weak where the event is expected to carry it."""
    expected = hinted_keys(c.event_name)
    return [
        Cell(
            key,
            c.shares.get(key, 0.0),
            c.received_share(key),
            c.shares.get(key, 0.0) < WEAK and key in expected,
        )
        for key, _ in MATCH_KEYS
    ]
