"""The dashboard's chart: events per minute as stacked bars, one colour per event name, in SVG.

Inline SVG coloured by classes (admin.css), so the page's CSP needs no inline styles; each
bar carries a <title> for its tooltip. The geometry is worked out here; templates/chart.html
draws it, escaping every name.

The chart is as wide as its box, from a phone to a desktop, and its text never shrinks with
it: only the bars sit in a viewBox that stretches sideways (`preserveAspectRatio="none"`),
while the tick labels are drawn unscaled in CSS pixels: the counts in an axis of their own to
the left, the times at percentages of the plot's width. Heights are fixed, so nothing is
squashed vertically either.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

from gateway.admin.data import Timeline
from gateway.admin.render import render

_COLORS = 8  # series classes s0..s7 in admin.css; the last one is "other"
_UNIT = 10  # viewBox units per minute in the bars' own coordinates; a bar leaves 1 to each side
_CHAR_PX = 8  # a generous width of one tick-label character at the phone's 13 px font
# The times under the plot: (minute, label, minor). Minor ones are hidden on narrow screens.
_MARKS = ((0, "-60 min", False), (15, "-45", True), (30, "-30", False), (45, "-15", True))


@dataclass(frozen=True, slots=True)
class _Grid:
    y: str
    label_y: str
    label: str


@dataclass(frozen=True, slots=True)
class _Bar:
    series: int
    x: int
    y: str
    width: int
    height: str
    name: str
    at: str
    count: int


@dataclass(frozen=True, slots=True)
class _Mark:
    x: str  # percent of the plot's width
    anchor: str
    label: str
    minor: bool


@dataclass(frozen=True, slots=True)
class Chart:
    """The chart's geometry, numbers already formatted for the SVG.

    Pixel values (`height`, `top`, `plot_h`, `axis_w`, grid and label positions) are CSS
    pixels; bars are in the bars' viewBox, `units` wide and `plot_h` high.
    """

    height: int
    top: int
    plot_h: int
    axis_w: int
    units: int
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


def chart(t: Timeline, *, height: int = 220) -> str:
    """Stacked bars of events per minute, one colour per event name, as inline SVG."""
    return render("chart.html", c=layout(t, height)).strip()


def layout(t: Timeline, height: int = 220) -> Chart:
    """Where each grid line, bar and label goes, for templates/chart.html to draw."""
    top, bottom = 10, 26
    plot_h = height - top - bottom
    groups = series_groups(t)
    counts = [g[2] for g in groups]
    totals = [sum(c[m] for c in counts) for m in range(t.minutes)]
    peak = _nice(max(totals, default=0))
    grid = []
    for tick in (0, peak / 2, peak):
        y = top + plot_h - plot_h * tick / peak
        grid.append(_Grid(f"{y:.1f}", f"{y + 4:.1f}", _tick(tick)))
    bars = []
    for m in range(t.minutes):
        base = float(plot_h)
        at = _clock(t.start + 60 * m)
        for k, series in enumerate(counts):
            n = series[m]
            if not n:
                continue
            h = plot_h * n / peak
            base -= h
            bars.append(
                _Bar(k, m * _UNIT + 1, f"{base:.2f}", _UNIT - 2, f"{h:.2f}", groups[k][0], at, n)
            )
    marks = [
        _Mark("0", "start", label, minor) if m == 0 else _mark(m, t.minutes, label, minor)
        for m, label, minor in _MARKS
        if m < t.minutes
    ]
    marks.append(_Mark("100", "end", "now", False))
    return Chart(
        height=height,
        top=top,
        plot_h=plot_h,
        axis_w=6 + _CHAR_PX * max(len(g.label) for g in grid),
        units=t.minutes * _UNIT,
        total=sum(totals),
        grid=tuple(grid),
        bars=tuple(bars),
        marks=tuple(marks),
    )


def _mark(minute: int, minutes: int, label: str, minor: bool) -> _Mark:
    """A time label centred under its minute's bar."""
    return _Mark(f"{100 * (minute + 0.5) / minutes:.2f}", "middle", label, minor)


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
