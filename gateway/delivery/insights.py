"""The insights tables on the SQLite file: facts and touchpoints written with each group
commit, purged after `touchpoint_retention`, erased by `forget`, read by reports.

Write functions run inside the outbox's write transaction; `SqliteInsights` reads on its
own connection (WAL readers never wait for the writer). The SQL of the reads is written
once, with `?` placeholders, and shared with the PostgreSQL backend (`postgres/insights.py`
numbers them).
"""

from __future__ import annotations

import os
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from operator import itemgetter
from pathlib import Path
from typing import Any, NamedTuple

import aiosqlite

from gateway.delivery import insightfacts as facts_
from gateway.delivery import insightrecord, profiles
from gateway.delivery.insightfacts import InsightPolicy
from gateway.delivery.visitcache import Seen
from gateway.models import NewEvent
from gateway.pipeline.assembly import Outcome, State

_CHUNK = 400


@dataclass(frozen=True, slots=True)
class Window:
    """A report's range: epoch seconds [since, until), and a site ('' none; None every site)."""

    since: int
    until: int
    site: str | None = None

    def where(self, alias: str = "") -> tuple[str, list[Any]]:
        """` AND ...` over `at` (and `site`), with its values."""
        sql = f" AND {alias}at >= ? AND {alias}at < ?"
        values: list[Any] = [self.since, self.until]
        if self.site is not None:
            sql += f" AND {alias}site = ?"
            values.append(self.site)
        return sql, values


@dataclass(frozen=True, slots=True)
class NameCount:
    """Events of one name in a range: how many, and per currency (count with a value,
    value sum)."""

    name: str
    count: int
    values: dict[str, tuple[int, float]]


class ConversionRow(NamedTuple):
    """A conversion event as attribution reads it (a named tuple: reports read tens of
    thousands, and a tuple is made several times faster than a frozen dataclass)."""

    visitor: str | None
    event_name: str
    at: int
    value: float | None
    currency: str | None
    match_keys: str


class TouchRow(NamedTuple):
    """A stored touchpoint as reports read it (a named tuple: the data-driven model reads
    every visit of the range, hundreds of thousands)."""

    visitor: str
    at: int
    channel: str
    source: str | None
    campaign: str | None
    landing_path: str | None


# The reads, in `?` form ------------------------------------------------------------------


def counts_sql(w: Window) -> tuple[str, list[Any]]:
    """Events and value sum per event name and currency (one GROUP BY: PostgreSQL hashes)."""
    where, values = w.where()
    return (
        "SELECT event_name, currency, COUNT(*), COUNT(value), SUM(value) FROM insight_events "
        f"WHERE 1=1{where} GROUP BY event_name, currency",
        values,
    )


def visitors_sql(
    w: Window, events: Sequence[str] | None, *, hint: str = ""
) -> tuple[str, list[Any]]:
    """Distinct visitors (with one of `events`, when given). Grouped in a subquery rather
    than COUNT(DISTINCT): both engines then walk an index in visitor order (SQLite, with
    `hint`) or hash (PostgreSQL) instead of sorting every row of the range."""
    where, values = w.where()
    if events is not None:
        where = f" AND event_name IN ({','.join('?' * len(events))})" + where
        values = [*events, *values]
        hint = ""
    return (
        f"SELECT COUNT(*) FROM (SELECT visitor FROM insight_events{hint} "
        f"WHERE visitor IS NOT NULL{where} GROUP BY visitor) AS v",
        values,
    )


def names_sql() -> tuple[str, list[Any]]:
    """Every event name stored (an index's distinct leading values: no scan)."""
    return "SELECT DISTINCT event_name FROM insight_events", []


def name_counts_sql(w: Window, name: str) -> tuple[str, list[Any]]:
    """Events of one name, and their value per currency (one covering-index range each)."""
    where, values = w.where()
    return (
        "SELECT NULL, COUNT(*), NULL FROM insight_events WHERE event_name = ?"
        f"{where} UNION ALL SELECT currency, COUNT(*), SUM(value) FROM insight_events "
        f"WHERE event_name = ?{where} AND value IS NOT NULL AND currency IS NOT NULL "
        "GROUP BY currency",
        [name, *values, name, *values],
    )


def funnel_sql(w: Window, steps: Sequence[str]) -> tuple[str, list[Any]]:
    """Visitors reaching each step in order: each step's earliest time after the last's."""
    parts: list[str] = []
    values: list[Any] = []
    for index, step in enumerate(steps):
        where, wv = w.where("e.")
        if index == 0:
            parts.append(
                "s0 AS (SELECT e.visitor, MIN(e.at) AS t FROM insight_events e "
                f"WHERE e.event_name = ? AND e.visitor IS NOT NULL{where} GROUP BY e.visitor)"
            )
        else:
            parts.append(
                f"s{index} AS (SELECT e.visitor, MIN(e.at) AS t FROM insight_events e "
                f"JOIN s{index - 1} p ON e.visitor = p.visitor AND e.at >= p.t "
                f"WHERE e.event_name = ?{where} GROUP BY e.visitor)"
            )
        values += [step, *wv]
    select = ", ".join(f"(SELECT COUNT(*) FROM s{i})" for i in range(len(steps)))
    return f"WITH {', '.join(parts)} SELECT {select}", values


def conversions_sql(w: Window, events: Sequence[str]) -> tuple[str, list[Any]]:
    """Conversion events of the range, their id last (`in_order` sorts them: an ORDER BY
    would lead SQLite to walk the time index over every event of the range instead)."""
    where, values = w.where()
    return (
        "SELECT visitor, event_name, at, value, currency, match_keys, id FROM insight_events "
        f"WHERE event_name IN ({','.join('?' * len(events))}){where}",
        [*events, *values],
    )


def touches_sql(
    w: Window, converted: tuple[Window, Sequence[str]] | None = None
) -> tuple[str, list[Any]]:
    """Touchpoints of the range, their id last (see `conversions_sql`); with `converted` (a
    range and event names) only those of visitors with such an event in that range."""
    where, values = w.where()
    if converted is not None:
        cw, events = converted
        inner, inner_values = cw.where()
        where += (
            " AND visitor IN (SELECT visitor FROM insight_events WHERE event_name IN "
            f"({','.join('?' * len(events))}){inner})"
        )
        values += [*events, *inner_values]
    return (
        "SELECT visitor, at, channel, source, campaign, landing_path, id FROM touchpoints "
        f"WHERE 1=1{where}",
        values,
    )


# PostgreSQL joins a visitor's keys into one path string; a key holding it is ambiguous.
PATH_SEPARATOR = "\x1f"
PATH_KEYS = ("channel", "source", "campaign")


def _idle(
    w: Window, converted: tuple[Window, Sequence[str]], by: str
) -> tuple[str, str, list[Any]]:
    """The key column and the ` AND ...` of the touchpoints of visitors *without* an event
    of `converted` in its range, with their values."""
    if by not in PATH_KEYS:
        raise ValueError(f"by: {by!r} is not one of {', '.join(PATH_KEYS)}")
    key = by if by == "channel" else f"COALESCE({by}, '')"
    where, values = w.where()
    cw, events = converted
    inner, inner_values = cw.where()
    # IS NOT NULL: one NULL in a NOT IN list would make it false for every visitor.
    where += (
        " AND visitor NOT IN (SELECT visitor FROM insight_events WHERE visitor IS NOT NULL "
        f"AND event_name IN ({','.join('?' * len(events))}){inner})"
    )
    return key, where, [*values, *events, *inner_values]


def idle_keys_sql(
    w: Window, converted: tuple[Window, Sequence[str]], by: str, *, hint: str = ""
) -> tuple[str, list[Any]]:
    """(visitor, `by` key) of each touchpoint of the range of visitors without a
    conversion, per visitor in time order (ties in stored order, as `in_order`): SQLite
    before 3.44 has no ORDER BY inside group_concat, and its window functions cost twice
    what grouping these rows in Python (`grouped_paths`) does."""
    key, where, values = _idle(w, converted, by)
    return (
        f"SELECT visitor, {key} FROM touchpoints{hint} WHERE 1=1{where} ORDER BY visitor, at, id",
        values,
    )


def grouped_paths(rows: Iterable[Sequence[Any]]) -> list[tuple[tuple[str, ...], int]]:
    """Rows of `idle_keys_sql` as distinct paths with how many visitors took each."""
    counts: defaultdict[tuple[str, ...], int] = defaultdict(int)
    last: object = None
    path: list[str] = []
    # A plain loop: twice as fast as itertools.groupby here (100k+ rows, 1-3 per visitor).
    for visitor, key in rows:
        if visitor != last:
            if path:
                counts[tuple(path)] += 1
            last, path = visitor, [key]
        else:
            path.append(key)
    if path:
        counts[tuple(path)] += 1
    return list(counts.items())


def idle_paths_sql(
    w: Window, converted: tuple[Window, Sequence[str]], by: str
) -> tuple[str, list[Any]]:
    """`idle_keys_sql` grouped in PostgreSQL: (path, keys on it, visitors), the path a
    visitor's keys joined by `PATH_SEPARATOR` (the first parameter) in time order."""
    key, where, values = _idle(w, converted, by)
    return (
        f"SELECT path, n, COUNT(*) FROM (SELECT string_agg({key}, CAST(? AS TEXT) "
        f"ORDER BY at, id) AS path, COUNT(*) AS n FROM touchpoints WHERE 1=1{where} "
        "GROUP BY visitor) AS p GROUP BY path, n",
        [PATH_SEPARATOR, *values],
    )


def idle_paths_of(rows: Iterable[Sequence[Any]]) -> list[tuple[tuple[str, ...], int]] | None:
    """Rows of `idle_paths_sql` as (keys, visitors); None when a key held the separator
    (the path cannot be split back: the caller reads the touchpoints instead)."""
    out: list[tuple[tuple[str, ...], int]] = []
    for path, n, count in rows:
        keys = tuple(path.split(PATH_SEPARATOR))
        if len(keys) != n:
            return None
        out.append((keys, int(count)))
    return out


def daily_sql(w: Window, events: Sequence[str]) -> tuple[str, list[Any]]:
    """Value of `events` per UTC day and currency."""
    where, values = w.where()
    return (
        "SELECT at / 86400 AS day, currency, SUM(value), COUNT(*) FROM insight_events "
        f"WHERE event_name IN ({','.join('?' * len(events))}){where} AND value IS NOT NULL "
        "GROUP BY day, currency ORDER BY day, currency",
        [*events, *values],
    )


def in_order(rows: Sequence[Sequence[Any]], at: int) -> list[Sequence[Any]]:
    """Rows of `conversions_sql` (`at` 2) or `touches_sql` (`at` 1) oldest first, ties in
    the order they were stored, without their trailing id."""
    return [r[:-1] for r in sorted(rows, key=itemgetter(at, -1))]


# Writes (inside the outbox's transaction) ---------------------------------------------------


class SqliteFacts:
    """`insightrecord.FactsSql` on the SQLite store's connection."""

    def __init__(self, conn: aiosqlite.Connection) -> None:
        self.conn = conn

    async def merge(self, changed: Sequence[tuple[Any, ...]]) -> None:
        await self.conn.executemany(facts_.MERGE_SQL, changed)

    async def resolve(self, links: Iterable[str], *, now: float) -> dict[str, str]:
        return await profiles.resolve(self.conn, links, now=now)

    async def seen(self, keys: Iterable[tuple[str, str]]) -> dict[tuple[str, str], Seen]:
        return await _seen(self.conn, keys)

    async def insert_facts(self, values: Sequence[tuple[Any, ...]]) -> None:
        await self.conn.executemany(
            f"INSERT INTO insight_events ({facts_.FACT_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?)",
            values,
        )

    async def insert_touches(self, values: Sequence[tuple[Any, ...]]) -> None:
        await self.conn.executemany(
            f"INSERT INTO touchpoints ({facts_.TOUCH_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?)",
            values,
        )


async def record(
    conn: aiosqlite.Connection,
    policy: InsightPolicy,
    rows: Sequence[NewEvent],
    outcomes: Sequence[Outcome],
    new: set[int],
    now: float,
    states: Sequence[State | None] | None = None,
) -> None:
    """`insightrecord.record` on the SQLite store's transaction."""
    await insightrecord.record(SqliteFacts(conn), policy, rows, outcomes, new, now, states)


async def _seen(
    conn: aiosqlite.Connection, keys: Iterable[tuple[str, str]]
) -> dict[tuple[str, str], Seen]:
    """Per (site, visitor): the last page view stored and the current visit's source (its
    newest touchpoint); one query for the whole batch."""
    wanted = set(keys)
    visitors = sorted({v for _, v in wanted})
    found: dict[tuple[str, str], Seen] = {}
    for start in range(0, len(visitors), _CHUNK):
        part = visitors[start : start + _CHUNK]
        for row in await conn.execute_fetchall(
            "SELECT p.site, p.visitor, p.last, t.channel, t.source, t.medium, t.campaign, "
            "t.click_id, t.referrer_host, t.landing_path FROM (SELECT site, visitor, "
            "MAX(at) AS last FROM insight_events WHERE event_name = 'PageView' AND visitor "
            f"IN ({','.join('?' * len(part))}) GROUP BY visitor, site) AS p "
            "LEFT JOIN touchpoints AS t ON t.id = (SELECT MAX(id) FROM touchpoints AS n "
            "WHERE n.visitor = p.visitor AND n.site = p.site)",
            part,
        ):
            current = facts_.source_of(tuple(row[3:])) if row[3] is not None else None
            found[(row[0], row[1])] = Seen(float(row[2]), current)
    return {key: found.get(key, Seen(None, None)) for key in wanted}


async def purge(conn: aiosqlite.Connection, *, retention: float, now: float) -> int:
    """Delete facts and touchpoints older than `retention`; returns how many rows."""
    cut = int(now - retention)
    count = 0
    async with conn.execute(names_sql()[0]) as names:
        found = [name for (name,) in await names.fetchall()]
    for name in found:
        # Name by name: a range of the name index each (no index on time alone to keep up).
        cur = await conn.execute(
            "DELETE FROM insight_events WHERE event_name = ? AND at < ?", (name, cut)
        )
        count += int(cur.rowcount)
    cur = await conn.execute("DELETE FROM touchpoints WHERE at < ?", (cut,))
    return count + int(cur.rowcount)


async def forget(
    conn: aiosqlite.Connection, visitors: Iterable[str], *, site: str | None = None
) -> int:
    """Delete the touchpoints of `visitors` and detach their facts; returns touchpoints gone.

    Facts stay as anonymous counts (an event happened, with its value): they name no one
    once their visitor key is gone. With `site`, that site's only.
    """
    keys = sorted({facts_.visitor_of(v) for v in visitors})
    scope, extra = (" AND site = ?", [site]) if site is not None else ("", [])
    total = 0
    for start in range(0, len(keys), _CHUNK):
        part = keys[start : start + _CHUNK]
        marks = ",".join("?" * len(part))
        cur = await conn.execute(
            f"DELETE FROM touchpoints WHERE visitor IN ({marks}){scope}", [*part, *extra]
        )
        total += int(cur.rowcount)
        await conn.execute(
            f"UPDATE insight_events SET visitor = NULL WHERE visitor IN ({marks}){scope}",
            [*part, *extra],
        )
    return total


# Reads -------------------------------------------------------------------------------------


def read_only_uri(path: Path) -> str:
    """The file as a read-only SQLite URI, percent-encoded (a space or a `?` stays a path)."""
    return f"{Path(os.path.abspath(path)).as_uri()}?mode=ro"


class SqliteInsights:
    """Report reads on a read-only connection to the buffer file."""

    def __init__(self, conn: aiosqlite.Connection) -> None:
        self._conn = conn

    @classmethod
    async def open(cls, path: Path) -> SqliteInsights:
        """Open the buffer file for reading (it must exist and be migrated)."""
        conn = await aiosqlite.connect(read_only_uri(path), uri=True)
        await conn.execute("PRAGMA busy_timeout = 10000")
        return cls(conn)

    async def close(self) -> None:
        """Close the connection."""
        await self._conn.close()

    async def _all(self, query: tuple[str, list[Any]]) -> list[Any]:
        async with self._conn.execute(query[0], query[1]) as cur:
            return list(await cur.fetchall())

    async def counts(self, w: Window) -> list[NameCount]:
        """Events per name of the range, with their value per currency.

        Name by name: each is a range of the covering index, where one GROUP BY over the
        range would sort a million rows.
        """
        out: list[NameCount] = []
        for (name,) in await self._all(names_sql()):
            rows = await self._all(name_counts_sql(w, name))
            total = next((int(n) for cur, n, _ in rows if cur is None), 0)
            if total:
                values = {cur: (int(n), float(v)) for cur, n, v in rows if cur is not None}
                out.append(NameCount(name, total, values))
        return out

    async def visitors(self, w: Window, events: Sequence[str] | None = None) -> int:
        """Distinct visitors of the range (with one of `events`, when given)."""
        rows = await self._all(visitors_sql(w, events, hint=" INDEXED BY insight_events_visitor"))
        return int(rows[0][0]) if rows else 0

    async def funnel(self, w: Window, steps: Sequence[str]) -> list[int]:
        """Visitors at each step, in order."""
        rows = await self._all(funnel_sql(w, steps))
        return [int(v) for v in rows[0]] if rows else [0] * len(steps)

    async def conversions(self, w: Window, events: Sequence[str]) -> list[ConversionRow]:
        """Conversion events of the range."""
        rows = await self._all(conversions_sql(w, events))
        return [ConversionRow._make(r) for r in in_order(rows, 2)]

    async def touches(
        self, w: Window, converted: tuple[Window, Sequence[str]] | None = None
    ) -> list[TouchRow]:
        """Touchpoints of the range (of converting visitors only, with `converted`)."""
        rows = await self._all(touches_sql(w, converted))
        return [TouchRow._make(r) for r in in_order(rows, 1)]

    async def idle_paths(
        self, w: Window, converted: tuple[Window, Sequence[str]], by: str
    ) -> list[tuple[tuple[str, ...], int]] | None:
        """Paths of the visitors without a conversion (see `idle_keys_sql`); never None."""
        query = idle_keys_sql(w, converted, by, hint=" INDEXED BY touchpoints_visitor")
        return grouped_paths(await self._all(query))

    async def daily(self, w: Window, events: Sequence[str]) -> list[tuple[int, str | None, float]]:
        """(UTC day number, currency, value) of `events`."""
        return [(int(r[0]), r[1], float(r[2])) for r in await self._all(daily_sql(w, events))]
