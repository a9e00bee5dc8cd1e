"""The marketer's page (`{prefix}/admin/insights`): the reports' data in, one page out.

Value per day and currency as SVG bars (one chart per currency: two currencies are never
stacked or added up), the funnel, the attribution table with a model selector, a range
selector, and the recommendations with the figure behind each. The same templates, CSP and
escaping as the operator's dashboard; bars are sized by attributes, never inline styles.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from gateway.admin.render import render
from gateway.pipeline.attribution import BY, MODELS

# The range selector's presets: label, `since` value.
RANGES = (("Last 7 days", "7d"), ("Last 30 days", "30d"), ("Last 90 days", "90d"))
_PLOT_H = 120


@dataclass(frozen=True, slots=True)
class DayBar:
    """One day's bar of a currency's chart (x and width in viewBox units of one day each)."""

    x: int
    y: str
    height: str
    day: str
    value: str


@dataclass(frozen=True, slots=True)
class ValueChart:
    """A currency's value per day over the range."""

    currency: str
    total: str
    days: int
    height: int
    bars: tuple[DayBar, ...]
    peak: str


def value_charts(
    daily: dict[str, list[tuple[int, float]]], since: int, until: int
) -> list[ValueChart]:
    """One chart per currency, a bar per UTC day of [since, until) that had value."""
    first, last = since // 86400, (until - 1) // 86400
    days = max(1, last - first + 1)
    out = []
    for currency, points in daily.items():
        peak = max((v for _, v in points), default=0.0) or 1.0
        bars = []
        for day, value in points:
            h = value / peak * _PLOT_H
            bars.append(
                DayBar(
                    x=(day - first) * 10 + 1,
                    y=f"{_PLOT_H - h:.2f}",
                    height=f"{h:.2f}",
                    day=time.strftime("%Y-%m-%d", time.gmtime(day * 86400)),
                    value=f"{value:,.2f}",
                )
            )
        out.append(
            ValueChart(
                currency=currency,
                total=f"{sum(v for _, v in points):,.2f}",
                days=days * 10,
                height=_PLOT_H,
                bars=tuple(bars),
                peak=f"{peak:,.2f}",
            )
        )
    return out


def money(value: dict[str, float]) -> list[str]:
    """Per currency "1,234.50 EUR", one string each (never summed across currencies)."""
    return [f"{v:,.2f} {c}" for c, v in sorted(value.items())]


def render_insights(
    data: dict[str, Any],
    *,
    prefix: str,
    since: int,
    until: int,
    chosen: dict[str, str],
    sites: tuple[str, ...],
    site: str | None,
    version: str,
) -> str:
    """The page's HTML."""
    return render(
        "insights.html",
        d=data,
        prefix=prefix,
        admin=f"{prefix}/admin",
        charts=value_charts(dict(data["daily"]), since, until),
        money=money,
        ranges=RANGES,
        models=MODELS,
        dimensions=BY,
        chosen=chosen,
        since_day=time.strftime("%Y-%m-%d", time.gmtime(since)),
        until_day=time.strftime("%Y-%m-%d", time.gmtime(until - 1)),
        sites=sites,
        site=site,
        version=version,
    )
