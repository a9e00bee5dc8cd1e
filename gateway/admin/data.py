"""What the admin dashboard shows, read from the outbox: bounded queries in, plain data out.

Every query is bounded in time (the last hour; the last 24 hours, hour by hour, through the
`created_at` index) or by state and `sent_at`. Settled hours are aggregated once and kept in
a `DayCache`, so a page load scans the current hour and the last 60 minutes, whatever the
buffer holds. Nothing here unseals a row: match-key coverage comes from the `match_keys`
column written at insert, twins from the `twin` column.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import aiosqlite

from gateway.admin.day import DAY_S, Coverage, DayCache, Dedup, day_start, day_window
from gateway.admin.hints import MATCH_KEYS, Hint, RuleLike, coverage_hint
from gateway.delivery import reads
from gateway.delivery.dashboard import DashboardReads, dashboard_reads
from gateway.delivery.reads import BlockedPixel, DeadRow

__all__ = [
    "MATCH_KEYS",
    "BlockedPixel",
    "Coverage",
    "Dashboard",
    "DayCache",
    "DeadRow",
    "Dedup",
    "Delivery",
    "Hint",
    "RuleLike",
    "RuleStat",
    "Series",
    "Timeline",
    "coverage_hints",
    "load_dashboard",
]

DEAD_SHOWN = 100


@dataclass(frozen=True, slots=True)
class Series:
    """Events of one name per minute, oldest minute first."""

    event_name: str
    counts: tuple[int, ...]

    @property
    def total(self) -> int:
        """Events of this name in the whole window."""
        return sum(self.counts)


@dataclass(frozen=True, slots=True)
class Timeline:
    """Events per minute over the last hour; `start` is the epoch of the first minute."""

    start: float
    minutes: int
    series: tuple[Series, ...]


@dataclass(frozen=True, slots=True)
class Delivery:
    """Where the outbox's events stand."""

    sent: int  # delivered (or recorded by --dry-run) in the last 24 h
    sent_dry: int  # of which recorded by --dry-run
    pending: int  # waiting for their first attempt, or being sent right now
    retrying: int  # waiting for another attempt after a failed one
    dead: int  # dead letters, kept for dead_retention
    blocked: int  # parked behind a blocked pixel
    blocked_pixels: tuple[BlockedPixel, ...] = ()


@dataclass(frozen=True, slots=True)
class RuleStat:
    """A loaded rule and the distinct events it produced in the last 24 h."""

    name: str
    event_name: str
    trigger: str
    file: str
    fired: int


@dataclass(frozen=True, slots=True)
class Dashboard:
    """Everything on the page, as of `now`."""

    now: float
    day_start: float  # the 24-hour window: 23 whole hours before the current one
    timeline: Timeline
    delivery: Delivery
    dead_letters: tuple[DeadRow, ...]
    coverage: tuple[Coverage, ...]
    hints: tuple[Hint, ...]
    dedup: tuple[Dedup, ...]
    dedup_total: Dedup
    rules: tuple[RuleStat, ...]
    # Rule names that fired in the last 24 h but are not among the loaded rules (a webhook
    # mapping, or a rule since removed), with their counts.
    other_rules: tuple[tuple[str, int], ...] = field(default=())


async def load_dashboard(
    source: DashboardReads | aiosqlite.Connection,
    rules: Sequence[RuleLike],
    *,
    rules_dir: Path | None,
    prefix: str = "/_capi",
    now: float | None = None,
    cache: DayCache | None = None,
    sites: Sequence[str] | None = None,
    pixels: frozenset[str] | None = None,
) -> Dashboard:
    """Run the dashboard's queries on a store's reads (or a SQLite outbox connection).

    With `sites`, the events of those sites only (and the blocks of `pixels` only); the
    `cache` must then be one made for the same sites.
    """
    store = dashboard_reads(source)
    now = time.time() if now is None else now
    cache = cache if cache is not None else DayCache(sites)
    coverage, dedup, fired = await day_window(store, now, cache)
    names = {r.name for r in rules}
    return Dashboard(
        now=now,
        day_start=float(day_start(now)),
        timeline=await _timeline(store, now, sites=sites),
        delivery=await _delivery(store, now, sites, pixels),
        dead_letters=await store.dead_letters(DEAD_SHOWN, sites),
        coverage=tuple(coverage),
        hints=tuple(_hints(coverage, rules, rules_dir, prefix)),
        dedup=tuple(dedup),
        dedup_total=Dedup(
            "all",
            sum(d.browser for d in dedup),
            sum(d.server for d in dedup),
            sum(d.both for d in dedup),
        ),
        rules=tuple(
            RuleStat(r.name, r.event_name, r.trigger, r.file, fired.get(r.name, 0)) for r in rules
        ),
        other_rules=tuple(sorted((n, c) for n, c in fired.items() if n not in names)),
    )


async def coverage_hints(
    conn: aiosqlite.Connection,
    rules: Sequence[RuleLike],
    *,
    rules_dir: Path | None,
    prefix: str = "/_capi",
    now: float | None = None,
) -> list[Hint]:
    """The dashboard's plain-language hints for the weakest match key of each event name.

    [] for a buffer of an older schema (no `match_keys` yet): `doctor` reads files without
    migrating them, and the gateway adds the column on its next start.
    """
    if not await reads.has_match_keys(conn):
        return []
    now = time.time() if now is None else now
    coverage, _, _ = await day_window(dashboard_reads(conn), now, DayCache())
    return _hints(coverage, rules, rules_dir, prefix)


def _hints(
    coverage: Sequence[Coverage], rules: Sequence[RuleLike], rules_dir: Path | None, prefix: str
) -> list[Hint]:
    out: list[Hint] = []
    for cov in coverage:
        hint = coverage_hint(
            cov.event_name,
            cov.shares,
            cov.sources,
            rules,
            rules_dir=rules_dir,
            prefix=prefix,
            received=cov.received,
        )
        if hint is not None:
            out.append(hint)
    return out


# -- the queries ---------------------------------------------------------------------------


async def _timeline(
    store: DashboardReads,
    now: float,
    minutes: int = 60,
    *,
    sites: Sequence[str] | None = None,
) -> Timeline:
    # Whole minutes, the current one last, so bars do not shift within a minute.
    end = (int(now) // 60 + 1) * 60
    start = end - minutes * 60
    per_name: dict[str, list[int]] = {}
    for name, minute, count in await store.events_per_minute(start, sites):
        if 0 <= minute < minutes:
            per_name.setdefault(name, [0] * minutes)[minute] += count
    series = sorted(
        (Series(name, tuple(counts)) for name, counts in per_name.items()),
        key=lambda s: (-s.total, s.event_name),
    )
    return Timeline(float(start), minutes, tuple(series))


async def _delivery(
    store: DashboardReads,
    now: float,
    sites: Sequence[str] | None = None,
    pixels: frozenset[str] | None = None,
) -> Delivery:
    counts = await store.undelivered_counts(sites)
    sent = await store.delivered_since(now - DAY_S, sites)
    blocked = await store.blocked_pixels()
    if pixels is not None:
        blocked = tuple(b for b in blocked if b.pixel_id in pixels)
    return Delivery(
        sent=sent.get("sent", 0) + sent.get("sent-dry", 0),
        sent_dry=sent.get("sent-dry", 0),
        pending=counts.get(("pending", False), 0)
        + counts.get(("inflight", False), 0)
        + counts.get(("inflight", True), 0),
        retrying=counts.get(("pending", True), 0),
        dead=counts.get(("dead", False), 0) + counts.get(("dead", True), 0),
        blocked=counts.get(("blocked", False), 0) + counts.get(("blocked", True), 0),
        blocked_pixels=blocked,
    )
