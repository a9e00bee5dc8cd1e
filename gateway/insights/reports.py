"""A store reader and a range in, the reports out: summary, funnel, attribution (the JSON
contract of issue 18), plus what the marketer's dashboard page shows.

Counting is done by the store in SQL (events, values, distinct visitors, the ordered
funnel); attribution loads the range's journeys (touchpoints from `lookback` before the
range, conversions in it) and hands them to `gateway.pipeline.attribution.attribute`.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import gc
from collections import Counter, defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from gateway.delivery.insightreads import ConversionRow, TouchRow, Window
from gateway.delivery.store import InsightReader
from gateway.insightsettings import InsightSettings
from gateway.pipeline.attribution import BY, MODELS, Conversion, Journey, Touch, attribute
from gateway.pipeline.recommend import InsightFacts, KeyCoverage, recommend

REPORTS = ("summary", "funnel", "attribution")
TOP = 5
# Match keys whose coverage recommendations look at.
_COVERAGE_KEYS = ("em", "ph", "external_id", "fn", "ln", "fbc", "fbp", "client_user_agent")


class ReportError(ValueError):
    """A report parameter that is none of the accepted values."""


@dataclass(frozen=True, slots=True)
class Query:
    """One report request: the range, the model and dimension of attribution."""

    window: Window
    model: str = "last_click"
    by: str = "channel"

    def __post_init__(self) -> None:
        if self.model not in MODELS:
            raise ReportError(f"model: {self.model!r} is not one of {', '.join(MODELS)}")
        if self.by not in BY:
            raise ReportError(f"by: {self.by!r} is not one of {', '.join(BY)}")


def _round(x: float) -> float:
    return round(x, 4)


async def summary(store: InsightReader, q: Query, cfg: InsightSettings) -> dict[str, Any]:
    """Visitors, events and value per name and currency, conversion rate, average order
    value per currency, top converting landing pages and channels (last non-direct visit)."""
    w = q.window
    events: dict[str, dict[str, Any]] = {}
    conv_value: dict[str, float] = defaultdict(float)
    conv_count: dict[str, int] = defaultdict(int)
    for found in await store.counts(w):
        events[found.name] = {
            "count": found.count,
            "value": {c: _round(v) for c, (_, v) in sorted(found.values.items())},
        }
        if found.name in cfg.conversion_events:
            for currency, (count, value) in found.values.items():
                conv_value[currency] += value
                conv_count[currency] += count
    visitors = await store.visitors(w)
    converters = await store.visitors(w, cfg.conversion_events)
    conversions = await store.conversions(w, cfg.conversion_events)
    touches = await _touches(store, w, cfg, converters=True)
    pages, channels = _top_sources(conversions, touches, cfg.lookback)
    return {
        "visitors": visitors,
        "events": dict(sorted(events.items())),
        "conversion_rate": round(converters / visitors, 6) if visitors else 0.0,
        "average_order_value": {
            c: _round(conv_value[c] / conv_count[c]) for c in sorted(conv_value) if conv_count[c]
        },
        "top_landing_pages": pages,
        "top_channels": channels,
    }


async def funnel(store: InsightReader, q: Query, cfg: InsightSettings) -> dict[str, Any]:
    """Visitors at each step of `cfg.funnel`, in order per visitor, and the drop-off."""
    counts = await store.funnel(q.window, cfg.funnel)
    steps: list[dict[str, Any]] = []
    for index, (name, count) in enumerate(zip(cfg.funnel, counts, strict=True)):
        step: dict[str, Any] = {"event": name, "visitors": count}
        if index:
            before = counts[index - 1]
            step["drop_off"] = round(1 - count / before, 6) if before else 0.0
        steps.append(step)
    return {"steps": steps}


async def attribution(store: InsightReader, q: Query, cfg: InsightSettings) -> dict[str, Any]:
    """Each conversion of the range credited to its visitor's visits under `q.model`.

    The data-driven chain also needs the journeys of visitors who did not convert: the
    store hands those over already reduced to distinct paths with counts (a few thousand
    rows for hundreds of thousands of visits), so only converting visitors' touches are
    loaded, as for every other model. The credits are the same as from full journeys.
    """
    w = q.window
    idle: list[tuple[tuple[str, ...], int]] | None = []
    if q.model == "data_driven":
        back = Window(int(w.since - cfg.lookback), w.until, w.site)
        # Side by side: on PostgreSQL the server groups paths while this process decodes
        # the converting visitors' rows (SQLite's one connection takes them in turn).
        idle, (touches, conversions) = await asyncio.gather(
            store.idle_paths(back, (w, cfg.conversion_events), q.by),
            _load(store, w, cfg, every_visitor=False),
        )
        if idle is None:
            touches, conversions = await _load(store, w, cfg, every_visitor=True)
    else:
        touches, conversions = await _load(store, w, cfg, every_visitor=False)
    with _bulk():
        result = attribute(
            journeys_of(touches, conversions),
            model=q.model,
            by=q.by,
            lookback=cfg.lookback,
            half_life=cfg.half_life,
            idle_paths=idle or (),
        )
    return result.to_json()


async def _touches(
    store: InsightReader, w: Window, cfg: InsightSettings, *, converters: bool
) -> list[TouchRow]:
    """The touchpoints conversions of `w` can look back to: of every visitor, or only of
    those who converted in `w` (all that every model but `data_driven` needs)."""
    back = Window(int(w.since - cfg.lookback), w.until, w.site)
    return await store.touches(back, (w, cfg.conversion_events) if converters else None)


async def _load(
    store: InsightReader, w: Window, cfg: InsightSettings, *, every_visitor: bool
) -> tuple[list[TouchRow], list[ConversionRow]]:
    touches = await _touches(store, w, cfg, converters=not every_visitor)
    return touches, await store.conversions(w, cfg.conversion_events)


async def load_journeys(
    store: InsightReader, w: Window, cfg: InsightSettings, *, every_visitor: bool = True
) -> list[Journey]:
    """The visitors' journeys: touches from `lookback` before the range, conversions in the
    range; of every visitor (converting or not: the data-driven model needs both) or of
    converting visitors only."""
    touches, conversions = await _load(store, w, cfg, every_visitor=every_visitor)
    with _bulk():
        return journeys_of(touches, conversions)


def journeys_of(touches: Sequence[TouchRow], conversions: Sequence[ConversionRow]) -> list[Journey]:
    """Touches and conversions grouped per visitor; a conversion without a visitor is a
    journey of its own with no touches."""
    converted: dict[str, list[Conversion]] = defaultdict(list)
    out: list[Journey] = []
    for c in conversions:
        conversion = Conversion(at=float(c.at), value=c.value, currency=c.currency)
        if c.visitor is None:
            out.append(Journey(touches=(), conversions=(conversion,)))
        else:
            converted[c.visitor].append(conversion)
    paths: dict[str, list[Touch]] = defaultdict(list)
    for visitor, at, channel, source, campaign, _ in touches:
        paths[visitor].append(
            Touch(at=float(at), channel=channel, source=source or "", campaign=campaign or "")
        )
    for visitor, path in paths.items():
        out.append(Journey(tuple(path), tuple(converted.pop(visitor, ()))))
    out += [Journey((), tuple(c)) for c in converted.values()]
    return out


@contextlib.contextmanager
def _bulk() -> Iterator[None]:
    """Collector paused while a report builds its objects (hundreds of thousands for the
    data-driven model, which would otherwise trigger collections that double its time).
    Only around synchronous code: no other task runs meanwhile."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _last_touch(
    touches: Sequence[TouchRow], times: Sequence[int], at: int, lookback: float
) -> TouchRow | None:
    """The visit a conversion at `at` came through: the last non-Direct one in the
    lookback, Direct only when there is nothing else (as `last_click`)."""
    hi = bisect.bisect_right(times, at)
    lo = bisect.bisect_left(times, at - lookback)
    window = touches[lo:hi]
    for t in reversed(window):
        if t.channel != "Direct":
            return t
    return window[-1] if window else None


def _per_visitor(touches: Sequence[TouchRow]) -> dict[str, tuple[list[TouchRow], list[int]]]:
    out: dict[str, tuple[list[TouchRow], list[int]]] = {}
    for t in touches:
        rows, times = out.setdefault(t.visitor, ([], []))
        rows.append(t)
        times.append(t.at)
    return out


def _top_sources(
    conversions: Sequence[ConversionRow], touches: Sequence[TouchRow], lookback: float
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    per = _per_visitor(touches)
    pages: Counter[str] = Counter()
    channels: Counter[str] = Counter()
    for c in conversions:
        found = per.get(c.visitor) if c.visitor else None
        touch = _last_touch(found[0], found[1], c.at, lookback) if found else None
        channels[touch.channel if touch else "Direct"] += 1
        if touch and touch.landing_path:
            pages[touch.landing_path] += 1
    return (
        [{"path": k, "conversions": n} for k, n in _top(pages)],
        [{"channel": k, "conversions": n} for k, n in _top(channels)],
    )


def _top(counter: Counter[str]) -> list[tuple[str, int]]:
    return sorted(counter.items(), key=lambda kv: (-kv[1], kv[0]))[:TOP]


# The dashboard page ---------------------------------------------------------------------------


async def coverage(
    store: InsightReader, w: Window, cfg: InsightSettings
) -> tuple[list[KeyCoverage], dict[str, float]]:
    """Per conversion event name and channel (and over all channels: channel ""), the share
    of events carrying each match key; and conversions per channel (last non-direct visit)."""
    conversions = await store.conversions(w, cfg.conversion_events)
    per = _per_visitor(await _touches(store, w, cfg, converters=True))
    groups: dict[tuple[str, str], list[set[str]]] = defaultdict(list)
    by_channel: dict[str, float] = defaultdict(float)
    for c in conversions:
        found = per.get(c.visitor) if c.visitor else None
        touch = _last_touch(found[0], found[1], c.at, cfg.lookback) if found else None
        channel = touch.channel if touch else "Direct"
        by_channel[channel] += 1
        keys = set(c.match_keys.split(",")) if c.match_keys else set()
        groups[(c.event_name, channel)].append(keys)
        groups[(c.event_name, "")].append(keys)
    out = [
        KeyCoverage(
            event_name=name,
            channel=channel,
            events=len(sets),
            keys={k: sum(k in s for s in sets) / len(sets) for k in _COVERAGE_KEYS},
        )
        for (name, channel), sets in sorted(groups.items())
    ]
    return out, dict(by_channel)


async def dashboard(store: InsightReader, q: Query, cfg: InsightSettings) -> dict[str, Any]:
    """Everything the marketer's page shows, for one range and model."""
    w = q.window
    days: dict[str, dict[int, float]] = defaultdict(dict)
    for day, currency, value in await store.daily(w, cfg.conversion_events):
        if currency:
            days[currency][day] = value
    the_summary = await summary(store, q, cfg)
    the_funnel = await funnel(store, q, cfg)
    the_attribution = await attribution(store, q, cfg)
    cov, by_channel = await coverage(store, w, cfg)
    facts = InsightFacts(
        coverage=tuple(cov),
        funnel=tuple((s["event"], s["visitors"]) for s in the_funnel["steps"]),
        conversions_by_channel=by_channel,
        visitors=the_summary["visitors"],
    )
    return {
        "summary": the_summary,
        "funnel": the_funnel,
        "attribution": the_attribution,
        "daily": {c: sorted(v.items()) for c, v in sorted(days.items())},
        "recommendations": [
            {"kind": r.kind, "text": r.text, "figure": r.figure} for r in recommend(facts)
        ],
    }


async def run(name: str, store: InsightReader, q: Query, cfg: InsightSettings) -> dict[str, Any]:
    """The report `name` (one of `REPORTS`)."""
    if name == "summary":
        return await summary(store, q, cfg)
    if name == "funnel":
        return await funnel(store, q, cfg)
    if name == "attribution":
        return await attribution(store, q, cfg)
    raise ReportError(f"report: {name!r} is not one of {', '.join(REPORTS)}")
