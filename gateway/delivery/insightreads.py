"""The insights reads written once, with `?` placeholders, for both backends: the report
range (`Window`), the rows reports read, and the SQL of each read (`SqliteInsights` runs it
as is; `postgres/insights.py` numbers the placeholders).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from operator import itemgetter
from typing import Any, NamedTuple


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
