"""What the admin dashboard shows, read from the outbox: bounded queries in, plain data out.

Every query is bounded in time (the last hour, the last 24 hours, through the `created_at`
and `(state, sent_at)` indexes) or by state, so a buffer holding a million rows still
answers in well under a second. Nothing here unseals a row: match-key coverage comes from
the `match_keys` column written at insert, twins from the `twin` column.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import aiosqlite

from gateway.delivery.rows import BROWSER_SOURCE
from gateway.ops.hints import MATCH_KEYS, Hint, RuleLike, coverage_hint

__all__ = [
    "MATCH_KEYS",
    "Coverage",
    "Dashboard",
    "DeadLetter",
    "Dedup",
    "Delivery",
    "Hint",
    "RuleLike",
    "RuleStat",
    "Series",
    "Timeline",
    "coverage_hints",
    "load_dashboard",
    "reader",
]

HOUR = 3600.0
DAY = 86400.0
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
class BlockedPixel:
    """A pixel whose token Meta refused: its events wait until the token is replaced."""

    pixel_id: str
    reason: str
    fbtrace_id: str | None


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
class DeadLetter:
    """An event Meta refused for good (or that expired), with Meta's reason."""

    id: int
    pixel_id: str
    event_name: str
    event_id: str
    source: str
    attempts: int
    error: str | None
    fbtrace_id: str | None
    died_at: float | None


@dataclass(frozen=True, slots=True)
class Coverage:
    """The share of one event name's events (last 24 h) that carry each match key."""

    event_name: str
    events: int  # events whose keys are known (rows written before the column are not)
    shares: Mapping[str, float]
    sources: Mapping[str, int]  # rows per source, to tell where a fix belongs


@dataclass(frozen=True, slots=True)
class Dedup:
    """Browser-pixel events and server events of one name (last 24 h), and their twins.

    `browser`: events the browser pixel reported (mirrored to /collect); `server`: events the
    server sent (proxy PageView, rule, /events, webhook); `both`: events both sides reported
    with the same pixel, event name and event_id.
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
    timeline: Timeline
    delivery: Delivery
    dead_letters: tuple[DeadLetter, ...]
    coverage: tuple[Coverage, ...]
    hints: tuple[Hint, ...]
    dedup: tuple[Dedup, ...]
    dedup_total: Dedup
    rules: tuple[RuleStat, ...]
    # Rule names that fired in the last 24 h but are not among the loaded rules (a webhook
    # mapping, or a rule since removed), with their counts.
    other_rules: tuple[tuple[str, int], ...] = field(default=())


@contextlib.asynccontextmanager
async def reader(path: Path) -> AsyncIterator[aiosqlite.Connection]:
    """A read-only connection of its own: the dashboard never holds the outbox's writer lock."""
    conn = await aiosqlite.connect(str(path))
    try:
        await conn.execute("PRAGMA busy_timeout = 5000")
        await conn.execute("PRAGMA query_only = ON")
        yield conn
    finally:
        await conn.close()


async def load_dashboard(
    conn: aiosqlite.Connection,
    rules: Sequence[RuleLike],
    *,
    rules_dir: Path | None,
    prefix: str = "/_capi",
    now: float | None = None,
) -> Dashboard:
    """Run the dashboard's queries on an outbox connection."""
    now = time.time() if now is None else now
    coverage, dedup = await _day_scan(conn, now - DAY)
    fired = await _rule_fires(conn, now - DAY)
    names = {r.name for r in rules}
    return Dashboard(
        now=now,
        timeline=await _timeline(conn, now),
        delivery=await _delivery(conn, now),
        dead_letters=await _dead_letters(conn),
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
    """The dashboard's plain-language hints for the weakest match key of each event name."""
    now = time.time() if now is None else now
    coverage, _ = await _day_scan(conn, now - DAY)
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
            [r for r in rules if r.event_name == cov.event_name],
            rules_dir=rules_dir,
            prefix=prefix,
        )
        if hint is not None:
            out.append(hint)
    return out


# -- the queries ---------------------------------------------------------------------------


async def _timeline(conn: aiosqlite.Connection, now: float, minutes: int = 60) -> Timeline:
    # Whole minutes, the current one last, so bars do not shift within a minute.
    end = (int(now) // 60 + 1) * 60
    start = end - minutes * 60
    per_name: dict[str, list[int]] = {}
    async with conn.execute(
        "SELECT event_name, CAST((created_at - ?) / 60 AS INTEGER) AS minute, COUNT(*) "
        "FROM events WHERE created_at >= ? GROUP BY event_name, minute",
        (start, start),
    ) as cur:
        for name, minute, count in await cur.fetchall():
            if 0 <= minute < minutes:
                per_name.setdefault(name, [0] * minutes)[minute] += count
    series = sorted(
        (Series(name, tuple(counts)) for name, counts in per_name.items()),
        key=lambda s: (-s.total, s.event_name),
    )
    return Timeline(float(start), minutes, tuple(series))


async def _delivery(conn: aiosqlite.Connection, now: float) -> Delivery:
    counts: dict[tuple[str, bool], int] = {}
    async with conn.execute(
        "SELECT state, attempts > 0, COUNT(*) FROM events "
        "WHERE state IN ('pending','inflight','dead','blocked') GROUP BY 1, 2"
    ) as cur:
        for state, tried, count in await cur.fetchall():
            counts[(state, bool(tried))] = count
    sent: dict[str, int] = {}
    async with conn.execute(
        "SELECT state, COUNT(*) FROM events WHERE state IN ('sent','sent-dry') AND sent_at >= ? "
        "GROUP BY state",
        (now - DAY,),
    ) as cur:
        for state, count in await cur.fetchall():
            sent[state] = count
    async with conn.execute(
        "SELECT pixel_id, reason, fbtrace_id FROM blocked_pixels ORDER BY pixel_id"
    ) as cur:
        blocked = tuple(BlockedPixel(r[0], r[1], r[2]) for r in await cur.fetchall())
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


async def _dead_letters(
    conn: aiosqlite.Connection, limit: int = DEAD_SHOWN
) -> tuple[DeadLetter, ...]:
    async with conn.execute(
        "SELECT id, pixel_id, event_name, event_id, source, attempts, last_error, fbtrace_id, "
        "sent_at FROM events WHERE state='dead' ORDER BY sent_at DESC, id DESC LIMIT ?",
        (limit,),
    ) as cur:
        return tuple(
            DeadLetter(int(r[0]), r[1], r[2], r[3], r[4], int(r[5]), r[6], r[7], r[8])
            for r in await cur.fetchall()
        )


def _key_sums() -> str:
    return ", ".join(f"SUM(instr(k, ',{key},') > 0)" for key, _ in MATCH_KEYS)


async def _day_scan(conn: aiosqlite.Connection, since: float) -> tuple[list[Coverage], list[Dedup]]:
    """Coverage and twins per event name, in one pass over the window's rows."""
    keyed: dict[str, list[int]] = {}  # name -> [events with keys, count per key...]
    sources: dict[str, dict[str, int]] = {}
    sides: dict[str, list[int]] = {}  # name -> [browser, server, both]
    async with conn.execute(
        f"SELECT event_name, source, COUNT(*), SUM(twin), COUNT(k), {_key_sums()} "
        "FROM (SELECT event_name, source, twin, ',' || match_keys || ',' AS k FROM events "
        "WHERE created_at >= ?) GROUP BY event_name, source",
        (since,),
    ) as cur:
        rows = await cur.fetchall()
    for name, source, count, twins, known, *per_key in rows:
        sources.setdefault(name, {})[source] = count
        acc = keyed.setdefault(name, [0] * (1 + len(MATCH_KEYS)))
        acc[0] += known
        for i, n in enumerate(per_key, start=1):
            acc[i] += n or 0
        side = sides.setdefault(name, [0, 0, 0])
        twins = twins or 0
        # A kept row stands for its dropped (or merged) twin from the other side too.
        if source == BROWSER_SOURCE:
            side[0] += count
            side[1] += twins
        else:
            side[1] += count
            side[0] += twins
        side[2] += twins
    coverage = [
        Coverage(
            name,
            acc[0],
            {key: (acc[i] / acc[0] if acc[0] else 0.0) for i, (key, _) in enumerate(MATCH_KEYS, 1)},
            sources[name],
        )
        for name, acc in sorted(keyed.items())
        if acc[0]
    ]
    dedup = [Dedup(name, *side) for name, side in sorted(sides.items())]
    return coverage, dedup


async def _rule_fires(conn: aiosqlite.Connection, since: float) -> dict[str, int]:
    # One event per pixel shares its event_id: count the firing once.
    async with conn.execute(
        "SELECT rule, COUNT(DISTINCT event_id) FROM events "
        "WHERE created_at >= ? AND rule IS NOT NULL GROUP BY rule",
        (since,),
    ) as cur:
        return {r[0]: int(r[1]) for r in await cur.fetchall()}
