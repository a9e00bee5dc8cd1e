"""Multi-touch attribution: visitors' journeys (visits and conversions) in, credited rows out.

Each conversion is credited to the same visitor's touches (visits) within `lookback` seconds
before it: `conversion.at - lookback <= touch.at <= conversion.at` (a touch at the same instant
counts). Touches are in time order; among touches with equal timestamps the journey's order
decides which is "first" and "last". The credits of one conversion always sum to 1, and its
value is credited in the same shares, per currency (two currencies are never added up; a
value without a currency is not credited). A conversion with no touch in the lookback is
credited to "Direct" (by channel), "(direct)" (by source) or "(not set)" (by campaign), as
GA4 does for a conversion without a known source.

Models, for touches t_1 … t_n (time order) of one conversion at time T:

- `first_click`: t_1 gets 1.
- `last_click`: the last touch whose channel is not Direct gets 1; a Direct touch only when
  all of them are Direct (GA4's "last non-direct click").
- `linear`: each gets 1/n.
- `time_decay`: t_i gets w_i / Σw with w_i = 2^(-(T - t_i.at) / half_life), so a touch one
  half-life older counts half as much; equal timestamps get equal weights.
- `position_based`: 40% to t_1, 40% to t_n, 20% shared equally by t_2 … t_(n-1); 50/50 when
  n = 2; 100% when n = 1.
- `data_driven`: the removal effect over a first-order Markov chain (Anderl et al. 2016) of
  all journeys' paths, converting or not (`journey_paths`; the chain and its exact solution
  are in `gateway.pipeline.markov`). Each conversion's credit is split among the distinct
  keys on its path in proportion to their removal effects: credit(k) = RE(k) / Σ_{j on
  path} RE(j). If every key on the path had RE 0 the conversion would fall back to `linear`
  (a safeguard: a key on a converting path has RE > 0 in exact arithmetic).

Rows are per key of the chosen dimension (`by`: channel, source or campaign) and sorted by
credited conversions, largest first (then by key).
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from itertools import pairwise
from typing import Any

from gateway.pipeline.markov import counted_removal_effects

MODELS: tuple[str, ...] = (
    "first_click",
    "last_click",
    "linear",
    "time_decay",
    "position_based",
    "data_driven",
)
BY: tuple[str, ...] = ("channel", "source", "campaign")

DIRECT_CHANNEL = "Direct"
# What a conversion without a touch in the lookback is credited to, per dimension.
NO_TOUCH_KEY: Mapping[str, str] = {
    "channel": DIRECT_CHANNEL,
    "source": "(direct)",
    "campaign": "(not set)",
}


@dataclass(frozen=True, slots=True)
class Touch:
    """One visit of a visitor: when it started and where it came from."""

    at: float
    channel: str
    source: str
    campaign: str


@dataclass(frozen=True, slots=True)
class Conversion:
    """One conversion (e.g. a Purchase) of a visitor, with its value if it has one."""

    at: float
    value: float | None
    currency: str | None


@dataclass(frozen=True, slots=True)
class Journey:
    """One visitor: visits sorted by time, conversions sorted by time."""

    touches: tuple[Touch, ...]
    conversions: tuple[Conversion, ...]


@dataclass(frozen=True, slots=True)
class Row:
    """Credited conversions (fractional) and value per currency of one key."""

    key: str
    conversions: float
    value: dict[str, float]


@dataclass(frozen=True, slots=True)
class Attribution:
    """The result of one model over a set of journeys."""

    model: str
    by: str
    conversions: int
    rows: tuple[Row, ...]

    def to_json(self) -> dict[str, Any]:
        """The report's JSON: model, by, conversions, rows [{key, conversions, value}]."""
        return {
            "model": self.model,
            "by": self.by,
            "conversions": self.conversions,
            "rows": [
                {
                    "key": row.key,
                    "conversions": round(row.conversions, 6),
                    "value": {cur: round(amount, 4) for cur, amount in sorted(row.value.items())},
                }
                for row in self.rows
            ],
        }


def _check(model: str, half_life: float) -> None:
    if model not in MODELS:
        raise ValueError(f"unknown attribution model {model!r}: use one of {', '.join(MODELS)}")
    if not half_life > 0:
        raise ValueError(f"half_life must be a positive number of seconds, not {half_life!r}")


def credits(model: str, touches: Sequence[Touch], at: float, *, half_life: float) -> list[float]:
    """One weight per touch, summing to 1, for a conversion at `at` (every model but data_driven).

    `touches` are the conversion's touches in the lookback, in time order; an empty sequence
    gives an empty list. data_driven needs the chain of all journeys: use `attribute`.
    """
    _check(model, half_life)
    n = len(touches)
    if n == 0:
        return []
    if model == "first_click":
        return [1.0] + [0.0] * (n - 1)
    if model == "last_click":
        out = [0.0] * n
        out[_last_non_direct(touches, 0, n)] = 1.0
        return out
    if model == "linear":
        return [1.0 / n] * n
    if model == "time_decay":
        return _time_decay(touches, 0, n, half_life)
    if model == "position_based":
        return _position_based(n)
    raise ValueError(
        "data_driven credits depend on all journeys: use attribute(..., model='data_driven')"
    )


def _in_time_order(touches: Sequence[Touch]) -> tuple[Sequence[Touch], list[float]]:
    """The touches and their times, sorted (stably) if a caller handed them out of order."""
    times = [t.at for t in touches]
    if any(later < earlier for earlier, later in pairwise(times)):
        touches = sorted(touches, key=lambda t: t.at)
        times.sort()
    return touches, times


def _last_non_direct(touches: Sequence[Touch], lo: int, hi: int) -> int:
    for i in range(hi - 1, lo - 1, -1):
        if touches[i].channel != DIRECT_CHANNEL:
            return i - lo
    return hi - 1 - lo


def _time_decay(touches: Sequence[Touch], lo: int, hi: int, half_life: float) -> list[float]:
    # Relative to the latest touch: the normalisation cancels the common factor, and old
    # touches cannot all underflow to zero.
    latest = touches[hi - 1].at
    weights = [2.0 ** ((touches[i].at - latest) / half_life) for i in range(lo, hi)]
    total = sum(weights)
    return [w / total for w in weights]


def _position_based(n: int) -> list[float]:
    if n == 1:
        return [1.0]
    if n == 2:
        return [0.5, 0.5]
    middle = 0.2 / (n - 2)
    return [0.4] + [middle] * (n - 2) + [0.4]


class _Totals:
    __slots__ = ("conversions", "value")

    def __init__(self) -> None:
        self.conversions: defaultdict[str, float] = defaultdict(float)
        self.value: defaultdict[str, defaultdict[str, float]] = defaultdict(
            lambda: defaultdict(float)
        )

    def add(self, key: str, share: float, conversion: Conversion) -> None:
        self.conversions[key] += share
        if conversion.value is not None and conversion.currency:
            self.value[key][conversion.currency] += share * conversion.value

    def rows(self) -> tuple[Row, ...]:
        rows = [
            Row(key=key, conversions=amount, value=dict(self.value.get(key, {})))
            for key, amount in self.conversions.items()
        ]
        rows.sort(key=lambda r: (-r.conversions, r.key))
        return tuple(rows)


def attribute(
    journeys: Iterable[Journey],
    *,
    model: str,
    by: str = "channel",
    lookback: float = 30 * 86400,
    half_life: float = 7 * 86400,
    idle_paths: Iterable[tuple[tuple[str, ...], int]] = (),
) -> Attribution:
    """Credit every conversion of every journey to its touches in the lookback, under `model`.

    `idle_paths` are journeys without a conversion already reduced to what the data-driven
    chain needs of them: (keys of `by` in time order, how many visitors took that path). A
    report passes those instead of building every such journey; the result is the same as
    with the journeys themselves. Other models ignore them (nothing to credit).
    """
    _check(model, half_life)
    if by not in BY:
        raise ValueError(f"unknown attribution dimension {by!r}: use one of {', '.join(BY)}")
    if not lookback >= 0:
        raise ValueError(f"lookback must be zero or more seconds, not {lookback!r}")
    effects: Mapping[str, float] | None = None
    if model == "data_driven":
        journeys = list(journeys)
        effects = removal_effects(journeys, by=by, lookback=lookback, idle_paths=idle_paths)
    no_touch = NO_TOUCH_KEY[by]
    totals = _Totals()
    count = 0
    for journey in journeys:
        conversions = journey.conversions
        if not conversions:
            continue
        touches, times = _in_time_order(journey.touches)
        for conversion in conversions:
            count += 1
            at = conversion.at
            lo = bisect_left(times, at - lookback)
            hi = bisect_right(times, at)
            n = hi - lo
            if n <= 0:
                totals.add(no_touch, 1.0, conversion)
            elif model == "first_click":
                totals.add(getattr(touches[lo], by), 1.0, conversion)
            elif model == "last_click":
                totals.add(
                    getattr(touches[lo + _last_non_direct(touches, lo, hi)], by), 1.0, conversion
                )
            elif model == "data_driven":
                assert effects is not None
                _add_data_driven(totals, touches, lo, hi, by, effects, conversion)
            else:
                if model == "linear":
                    weights = [1.0 / n] * n
                elif model == "time_decay":
                    weights = _time_decay(touches, lo, hi, half_life)
                else:
                    weights = _position_based(n)
                for i, weight in enumerate(weights):
                    totals.add(getattr(touches[lo + i], by), weight, conversion)
    return Attribution(model=model, by=by, conversions=count, rows=totals.rows())


def _add_data_driven(
    totals: _Totals,
    touches: Sequence[Touch],
    lo: int,
    hi: int,
    by: str,
    effects: Mapping[str, float],
    conversion: Conversion,
) -> None:
    keys = list(dict.fromkeys(getattr(touches[i], by) for i in range(lo, hi)))
    total = sum(effects.get(k, 0.0) for k in keys)
    if total > 0:
        for key in keys:
            share = effects.get(key, 0.0) / total
            if share:
                totals.add(key, share, conversion)
        return
    n = hi - lo
    for i in range(lo, hi):
        totals.add(getattr(touches[i], by), 1.0 / n, conversion)


# --- the Markov chain --------------------------------------------------------------------


def journey_paths(
    journeys: Iterable[Journey], *, by: str, lookback: float
) -> Iterable[tuple[tuple[str, ...], bool]]:
    """The paths the chain is built from: (keys in time order, converted?).

    Each conversion gives the path of its touches in the lookback (possibly empty), ending in
    conversion; the touches after a visitor's last conversion (all of them for a visitor who
    never converted) give a path ending in null. Other touches are in no path.
    """
    for journey in journeys:
        touches, times = _in_time_order(journey.touches)
        for conversion in journey.conversions:
            lo = bisect_left(times, conversion.at - lookback)
            hi = bisect_right(times, conversion.at)
            yield tuple(getattr(touches[i], by) for i in range(lo, hi)), True
        last = max((c.at for c in journey.conversions), default=None)
        start = 0 if last is None else bisect_right(times, last)
        if start < len(touches):
            yield tuple(getattr(touches[i], by) for i in range(start, len(touches))), False


def removal_effects(
    journeys: Iterable[Journey],
    *,
    by: str = "channel",
    lookback: float = 30 * 86400,
    idle_paths: Iterable[tuple[tuple[str, ...], int]] = (),
) -> dict[str, float]:
    """The removal effect RE(k) = 1 - P_{-k}(conv) / P(conv) of every key of dimension `by`
    in the first-order Markov chain of all journeys' paths (`journey_paths`), plus the
    null-ending `idle_paths` of journeys without a conversion, given with their counts; the
    chain and how it is solved are described in `gateway.pipeline.markov`."""
    paths: dict[tuple[tuple[str, ...], bool], int] = defaultdict(int)
    for path in journey_paths(journeys, by=by, lookback=lookback):
        paths[path] += 1
    for keys, count in idle_paths:
        if keys and count > 0:
            paths[(keys, False)] += count
    return counted_removal_effects((keys, done, n) for (keys, done), n in paths.items())
