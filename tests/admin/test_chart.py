"""The dashboard's chart: stacked bars per minute, eight colours, escaped names."""

from __future__ import annotations

import re

from gateway.admin.chart import chart, series_groups
from gateway.admin.data import Series, Timeline


def test_the_chart_has_eight_colours_the_quietest_names_share_one() -> None:
    counts = {f"Event{n}": n for n in range(10, 0, -1)}  # the busiest first, as loaded
    series = tuple(Series(name, (n, *([0] * 58), 1)) for name, n in counts.items())
    timeline = Timeline(start=0.0, minutes=60, series=series)
    groups = series_groups(timeline)
    assert [g[0] for g in groups] == [f"Event{n}" for n in range(10, 3, -1)] + ["other"]
    assert groups[-1][1] == 3 + 2 + 1 + 3  # Event3..Event1, in both minutes
    svg = chart(timeline)
    assert set(re.findall(r'<rect class="(s\d)"', svg)) == {f"s{i}" for i in range(8)}
    # 55 events in the first minute: the axis goes to 100.
    assert ">100</text>" in svg and "<title>other at 00:00 UTC: 6</title>" in svg


def test_event_names_in_the_chart_are_escaped() -> None:
    timeline = Timeline(start=0.0, minutes=60, series=(Series("<img src=x>", (1,) * 60),))
    svg = chart(timeline)
    assert "<img" not in svg and "<title>&lt;img src=x&gt; at 00:00 UTC: 1</title>" in svg
