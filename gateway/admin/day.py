"""The dashboard's 24-hour window: match-key coverage, twins and rule firings per event name.

The window is read hour by hour through the `created_at` index, in one pass per hour.
Settled hours are aggregated once and kept in a `DayCache`, so a page load scans only the
current hour whatever the buffer holds.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from gateway.admin.hints import MATCH_KEYS
from gateway.delivery.dashboard import DashboardReads
from gateway.delivery.rows import BROWSER_SOURCE

HOUR_S = 3600
DAY_S = 86400


@dataclass(frozen=True, slots=True)
class Coverage:
    """The share of one event name's events (last 24 h) that carry each match key."""

    event_name: str
    events: int  # events whose keys are known (rows written before the column are not)
    shares: Mapping[str, float]  # as sent: after assembly merged copies and profiles added
    sources: Mapping[str, int]  # rows per source, to tell where a fix belongs
    # As received: the first copy of each event, before assembly and profiles (empty: the
    # same as `shares`).
    received: Mapping[str, float] = field(default_factory=dict)

    def received_share(self, key: str) -> float:
        """The share of events whose first copy carried `key`."""
        return self.received.get(key, self.shares.get(key, 0.0))

    def lift(self, key: str) -> float:
        """How much of `key`'s share assembly and profiles added (sent - received)."""
        return self.shares.get(key, 0.0) - self.received_share(key)


@dataclass(frozen=True, slots=True)
class Dedup:
    """Browser-pixel events and server events of one name (last 24 h), and their twins.

    `browser`: events the browser pixel reported (mirrored to /collect); `server`: events the
    gateway sent, its own (proxy PageView, rule, /events, webhook) and the mirrored ones;
    `both`: events both sides reported with the same pixel, event name and event_id.
    """

    event_name: str
    browser: int
    server: int
    both: int

    @property
    def browser_share(self) -> float | None:
        """Of the browser's events, the share that has a server twin."""
        return self.both / self.browser if self.browser else None

    @property
    def server_share(self) -> float | None:
        """Of the server's events, the share that has a browser twin."""
        return self.both / self.server if self.server else None


# Per (event_name, source): rows, twins, rows with known keys, then rows per match key as
# sent, then rows per match key as received.
_Groups = dict[tuple[str, str], list[int]]


@dataclass(frozen=True, slots=True)
class _Hour:
    groups: _Groups
    fired: dict[str, int]  # rule -> distinct event ids


class DayCache:
    """The aggregates of settled hours, so a page load scans only the current hour.

    An hour is settled SETTLE seconds after it ends: by then its rows' twins and enriched
    keys have arrived (a beacon comes seconds after its page). Later changes to its rows
    (a very late beacon, an early purge under disk pressure) are not reflected.
    """

    SETTLE = 600.0

    def __init__(self, sites: Sequence[str] | None = None) -> None:
        self._hours: dict[int, _Hour] = {}
        # The sites whose events this cache aggregates (None: every event).
        self.sites = tuple(sites) if sites is not None else None

    async def hour(self, store: DashboardReads, start: int, now: float) -> _Hour:
        """The aggregates of the hour starting at `start`, from the cache once settled."""
        cached = self._hours.get(start)
        if cached is not None:
            return cached
        found = await _scan_hour(store, start, start + HOUR_S, self.sites)
        if now >= start + HOUR_S + self.SETTLE:
            self._hours[start] = found
            # Hours that left the window are never asked for again.
            for old in [h for h in self._hours if h < start - DAY_S]:
                del self._hours[old]
        return found


def day_start(now: float) -> int:
    """The start of the 24-hour window: 23 whole hours before the current one."""
    return (int(now) // HOUR_S - 23) * HOUR_S


async def day_window(
    store: DashboardReads, now: float, cache: DayCache
) -> tuple[list[Coverage], list[Dedup], dict[str, int]]:
    """Coverage, twins and rule firings per name over the window, hour by hour."""
    groups: _Groups = {}
    fired: dict[str, int] = {}
    for start in range(day_start(now), int(now) + 1, HOUR_S):
        hour = await cache.hour(store, start, now)
        for key, values in hour.groups.items():
            acc = groups.setdefault(key, [0] * len(values))
            for i, n in enumerate(values):
                acc[i] += n
        for rule, n in hour.fired.items():
            fired[rule] = fired.get(rule, 0) + n
    coverage, dedup = _summarize(groups)
    return coverage, dedup, fired


def _summarize(groups: _Groups) -> tuple[list[Coverage], list[Dedup]]:
    keyed: dict[str, list[int]] = {}  # name -> [rows with known keys, rows per key...]
    sources: dict[str, dict[str, int]] = {}
    sides: dict[str, list[int]] = {}  # name -> [browser, server, both]
    for (name, source), (count, twins, known, *per_key) in sorted(groups.items()):
        sources.setdefault(name, {})[source] = count
        acc = keyed.setdefault(name, [0] * (1 + 2 * len(MATCH_KEYS)))
        acc[0] += known
        for i, n in enumerate(per_key, start=1):
            acc[i] += n
        side = sides.setdefault(name, [0, 0, 0])
        if source == BROWSER_SOURCE:
            # px.js mirrors what the browser pixel sends (hooked fbq calls, capi.track,
            # click and submit rules) and the gateway sends the same event under the same
            # id: each such row is a pair Meta counts once, whether or not the server side
            # also made a copy of its own (merged into it as a twin).
            side[0] += count
            side[1] += count
            side[2] += count
        else:
            # A kept server row stands for its dropped (or merged) browser twin too.
            side[1] += count
            side[0] += twins
            side[2] += twins
    coverage = [
        Coverage(
            name,
            acc[0],
            {key: acc[i] / acc[0] for i, (key, _) in enumerate(MATCH_KEYS, 1)},
            sources[name],
            {key: acc[i] / acc[0] for i, (key, _) in enumerate(MATCH_KEYS, 1 + len(MATCH_KEYS))},
        )
        for name, acc in keyed.items()
        if acc[0]
    ]
    return coverage, [Dedup(name, *side) for name, side in sides.items()]


async def _scan_hour(
    store: DashboardReads, start: float, end: float, sites: Sequence[str] | None = None
) -> _Hour:
    """One pass over an hour's rows: per name and source, and the rules that fired."""
    groups: _Groups = {}
    fired: dict[str, int] = {}
    keys = [key for key, _ in MATCH_KEYS]
    rows = await store.hour_groups(start, end, keys, sites)
    for name, source, rule, fires, *values in rows:
        acc = groups.setdefault((name, source), [0] * len(values))
        for i, n in enumerate(values):
            acc[i] += int(n or 0)
        if rule is not None:
            fired[rule] = fired.get(rule, 0) + int(fires)
    return _Hour(groups, fired)
