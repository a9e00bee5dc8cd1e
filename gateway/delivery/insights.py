"""The insights tables on the SQLite file: facts and touchpoints written with each group
commit, purged after `touchpoint_retention`, erased by `forget`, read by reports.

Write functions run inside the outbox's write transaction; `SqliteInsights` reads on its
own connection (WAL readers never wait for the writer), running the SQL that
`insightreads` writes once for both backends.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import aiosqlite

from gateway.delivery import insightfacts as facts_
from gateway.delivery import insightrecord, profiles
from gateway.delivery import insightvisits as visits_
from gateway.delivery.insightfacts import InsightPolicy
from gateway.delivery.insightreads import (
    ConversionRow,
    NameCount,
    TouchRow,
    Window,
    conversions_sql,
    daily_sql,
    funnel_sql,
    grouped_paths,
    idle_keys_sql,
    in_order,
    name_counts_sql,
    names_sql,
    touches_sql,
    visitors_sql,
)
from gateway.delivery.visitcache import Seen
from gateway.models import NewEvent
from gateway.pipeline.assembly import Outcome, State

_CHUNK = 400


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
            f"INSERT INTO touchpoints ({visits_.TOUCH_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?)",
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
            current = visits_.source_of(tuple(row[3:])) if row[3] is not None else None
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
