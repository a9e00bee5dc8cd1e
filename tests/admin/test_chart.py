"""The dashboard's chart: stacked bars per minute, eight colours, escaped names."""

from __future__ import annotations

import re
from xml.etree import ElementTree

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


def test_only_the_bars_scale_with_the_width_never_the_text() -> None:
    # 20,000 events in the last minute: the longest count label.
    timeline = Timeline(start=0.0, minutes=60, series=(Series("PageView", (*([1] * 59), 20_000)),))
    # Inline SVG in HTML needs no namespace: the markup parses as plain XML.
    root = ElementTree.fromstring(chart(timeline))
    svgs = {svg.get("class"): svg for svg in root.iter("svg")}
    assert set(svgs) == {"chart-counts", "chart", "bars"}
    # The bars stretch sideways in a viewBox of their own, as wide as the plot...
    bars = svgs["bars"]
    assert bars.get("preserveAspectRatio") == "none" and bars.get("width") == "100%"
    assert bars.get("viewBox") == "0 0 600 184"
    rects = list(bars.iter("rect"))
    assert len(rects) == 60
    assert all(0 < float(r.get("x", "")) < float(r.get("x", "")) + float(r.get("width", "")) < 600
               for r in rects)  # fmt: skip
    # ...while no text sits in a scaled (viewBox) coordinate system.
    for svg in svgs.values():
        if svg.get("viewBox"):
            assert list(svg.iter("text")) == []
    assert root.find(".//*[@viewBox]") is bars
    # The counts have an axis wide enough for "20,000" at 8 px a character.
    counts = [t.text for t in svgs["chart-counts"].iter("text")]
    assert counts == ["0", "10,000", "20,000"]
    assert int(svgs["chart-counts"].get("width", "")) >= 8 * len("20,000")
    # The times sit at percentages of the plot: the first and last ones flush with its edges;
    # the quarter hours in between are minor, hidden on a phone (admin.css).
    times = [
        (t.text, t.get("x"), t.get("text-anchor"), "minor" in t.get("class", ""))
        for t in svgs["chart"].iter("text")
    ]
    assert times == [
        ("-60 min", "0%", "start", False),
        ("-45", "25.83%", "middle", True),
        ("-30", "50.83%", "middle", False),
        ("-15", "75.83%", "middle", True),
        ("now", "100%", "end", False),
    ]
