"""The dashboard's chart: events per minute as stacked bars, one colour per event name, in SVG.

Inline SVG sized by attributes and coloured by classes (admin.css), so the page's CSP needs
no inline styles; each bar carries a <title> for its tooltip. The geometry is worked out
here; templates/chart.svg draws it, escaping every name.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

from gateway.admin.data import Timeline
from gateway.admin.render import render

_COLORS = 8  # series classes s0..s7 in admin.css; the last one is "other"


@dataclass(frozen=True, slots=True)
class _Grid:
    y: str
    label_y: str
    label: str


@dataclass(frozen=True, slots=True)
class _Bar:
    series: int
    x: str
    y: str
    width: str
    height: str
    name: str
    at: str
    count: int


@dataclass(frozen=True, slots=True)
class _Mark:
    x: str
    label: str


@dataclass(frozen=True, slots=True)
class Chart:
    """The chart's geometry, numbers already formatted for the SVG."""

    width: int
    height: int
    left: int
    right: int
    total: int
    grid: tuple[_Grid, ...]
    bars: tuple[_Bar, ...]
    marks: tuple[_Mark, ...]


def series_groups(t: Timeline) -> list[tuple[str, int, Sequence[int]]]:
    """(name, total, per minute) per colour: the busiest names, then the rest as "other"."""
    if len(t.series) <= _COLORS:
        return [(s.event_name, s.total, s.counts) for s in t.series]
    rest = t.series[_COLORS - 1 :]
    other = [sum(s.counts[m] for s in rest) for m in range(t.minutes)]
    head = [(s.event_name, s.total, s.counts) for s in t.series[: _COLORS - 1]]
    return [*head, ("other", sum(other), other)]


def chart(t: Timeline, *, width: int = 720, height: int = 220) -> str:
    """Stacked bars of events per minute, one colour per event name, as inline SVG."""
    return render("chart.svg", c=layout(t, width, height)).strip()


def layout(t: Timeline, width: int = 720, height: int = 220) -> Chart:
    """Where each grid line, bar and label goes, for templates/chart.svg to draw."""
    left, right, top, bottom = 44, 8, 10, 26
    plot_w, plot_h = width - left - right, height - top - bottom
    groups = series_groups(t)
    counts = [g[2] for g in groups]
    totals = [sum(c[m] for c in counts) for m in range(t.minutes)]
    peak = _nice(max(totals, default=0))
    slot = plot_w / t.minutes
    grid = []
    for tick in (0, peak / 2, peak):
        y = top + plot_h - plot_h * tick / peak
        grid.append(_Grid(f"{y:.1f}", f"{y + 4:.1f}", _tick(tick)))
    bars = []
    for m in range(t.minutes):
        base = float(top + plot_h)
        at = _clock(t.start + 60 * m)
        for k, series in enumerate(counts):
            n = series[m]
            if not n:
                continue
            h = plot_h * n / peak
            base -= h
            x, w = left + m * slot + 1, max(slot - 2, 1)
            bars.append(
                _Bar(k, f"{x:.1f}", f"{base:.1f}", f"{w:.1f}", f"{h:.1f}", groups[k][0], at, n)
            )
    marks = ((0, "-60 min"), (15, "-45"), (30, "-30"), (45, "-15"), (t.minutes - 1, "now"))
    return Chart(
        width=width,
        height=height,
        left=left,
        right=width - right,
        total=sum(totals),
        grid=tuple(grid),
        bars=tuple(bars),
        marks=tuple(_Mark(f"{left + (m + 0.5) * slot:.1f}", label) for m, label in marks),
    )


def _nice(n: int) -> int:
    """The smallest 1, 2 or 5 times a power of ten at or above n (at least 2)."""
    if n <= 2:
        return 2
    magnitude = int(10 ** (len(str(n)) - 1))
    return next(m * magnitude for m in (1, 2, 5, 10) if n <= m * magnitude)


def _tick(value: float) -> str:
    return f"{value:,.0f}" if value == int(value) else f"{value:,.1f}"


def _clock(ts: float) -> str:
    return time.strftime("%H:%M UTC", time.gmtime(ts))
