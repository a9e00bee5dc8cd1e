"""The dashboard's chart: events per minute as stacked bars, one colour per event name, in SVG.

Inline SVG sized by attributes and coloured by classes (admin.css), so the page's CSP needs
no inline styles; each bar carries a <title> for its tooltip.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from html import escape

from gateway.admin.data import Timeline

_COLORS = 8  # series classes s0..s7 in admin.css; the last one is "other"


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
    left, right, top, bottom = 44, 8, 10, 26
    plot_w, plot_h = width - left - right, height - top - bottom
    groups = series_groups(t)
    counts = [g[2] for g in groups]
    totals = [sum(c[m] for c in counts) for m in range(t.minutes)]
    peak = _nice(max(totals, default=0))
    slot = plot_w / t.minutes
    parts: list[str] = []
    for tick in (0, peak / 2, peak):
        y = top + plot_h - plot_h * tick / peak
        parts.append(
            f'<line class="grid" x1="{left}" x2="{width - right}" y1="{y:.1f}" y2="{y:.1f}"/>'
            f'<text class="axis" x="{left - 6}" y="{y + 4:.1f}" text-anchor="end">'
            f"{_tick(tick)}</text>"
        )
    for m in range(t.minutes):
        base = float(top + plot_h)
        at = _clock(t.start + 60 * m)
        for k, series in enumerate(counts):
            n = series[m]
            if not n:
                continue
            h = plot_h * n / peak
            base -= h
            parts.append(
                f'<rect class="s{k}" x="{left + m * slot + 1:.1f}" y="{base:.1f}" '
                f'width="{max(slot - 2, 1):.1f}" height="{h:.1f}">'
                f"<title>{_e(groups[k][0])} at {at}: {n:,}</title></rect>"
            )
    marks = ((0, "-60 min"), (15, "-45"), (30, "-30"), (45, "-15"), (t.minutes - 1, "now"))
    for m, label in marks:
        x = left + (m + 0.5) * slot
        parts.append(
            f'<text class="axis" x="{x:.1f}" y="{height - 8}" text-anchor="middle">{label}</text>'
        )
    total = sum(totals)
    return (
        f'<svg class="chart" viewBox="0 0 {width} {height}" role="img" '
        f'aria-label="Events per minute over the last hour: {total:,} in all">'
        + "".join(parts)
        + "</svg>"
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


def _e(text: str) -> str:
    return escape(text, quote=True)
