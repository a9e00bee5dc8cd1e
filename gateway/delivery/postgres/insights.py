"""The insights tables on PostgreSQL: facts and touchpoints written with each group commit,
read by reports. The same rows and reads as the SQLite store's (`delivery/insights.py`;
the `?` SQL of `delivery/insightreads.py` is numbered here); the previous state of a
batch's visitors is one query.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from gateway.delivery import insightfacts as facts_
from gateway.delivery import insightreads as sql
from gateway.delivery import insightrecord
from gateway.delivery import insightvisits as visits_
from gateway.delivery.insightfacts import InsightPolicy
from gateway.delivery.insightreads import ConversionRow, NameCount, TouchRow, Window
from gateway.delivery.postgres import profilerows
from gateway.delivery.postgres.pool import Database
from gateway.delivery.postgres.results import affected
from gateway.delivery.postgres.rows import column
from gateway.delivery.visitcache import Seen
from gateway.models import NewEvent
from gateway.pipeline.assembly import Outcome, State

if TYPE_CHECKING:
    from gateway.delivery.postgres.pool import Conn

_MARK = re.compile(r"\?")


def numbered(query: tuple[str, list[Any]]) -> tuple[str, list[Any]]:
    """SQLite's `?` placeholders as `$1, $2, ...`."""
    counter = iter(range(1, 10_000))
    return _MARK.sub(lambda _: f"${next(counter)}", query[0]), query[1]


# Each statement takes a whole group commit's rows as arrays (one execution, one round
# trip), not one execution per row: a fact per accepted event made the per-row form the
# most frequent statement of the hot path (90 executions per 100 accepted events).
_INSERT_FACTS = f"""
INSERT INTO insight_events ({facts_.FACT_COLUMNS})
SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::bigint[], $5::float8[],
    $6::text[], $7::text[], $8::text[], $9::text[])
"""
_INSERT_TOUCHES = f"""
INSERT INTO touchpoints ({visits_.TOUCH_COLUMNS})
SELECT * FROM unnest($1::text[], $2::text[], $3::bigint[], $4::text[], $5::text[],
    $6::text[], $7::text[], $8::text[], $9::text[], $10::text[])
"""
# `facts_.MERGE_SQL` over arrays. Each copy's fact is looked up by its event id alone, one
# index probe per copy (LATERAL; OFFSET 0 keeps the name test out of the probe), and only
# then matched on the name. Joined on both, the planner ANDed `insight_events_event` with
# `insight_events_name` per copy on a table never analyzed (its default estimate for one
# name is 0.5 % of the rows): every fact of that event name, 40,000 index entries per copy
# in a table of 40,000 facts; in a 30 s bench 110-170 µs of database time per accepted
# event, while the group commit held its row locks, which the copies of other commits and
# the senders' results wait on. A join on the ids without the name scanned the whole table
# instead on such estimates (once per statement).
_MERGE = """
WITH u AS (
    SELECT * FROM unnest($1::float8[], $2::text[], $3::text[], $4::text[], $5::text[],
        $6::text[]) AS u(value, currency, content_ids, match_keys, event_name, event_id)
), found AS MATERIALIZED (
    SELECT f.id, f.event_name AS stored_name, u.*
    FROM u CROSS JOIN LATERAL (
        SELECT id, event_name FROM insight_events AS i WHERE i.event_id = u.event_id OFFSET 0
    ) AS f
)
UPDATE insight_events AS f SET value = found.value, currency = found.currency,
    content_ids = found.content_ids, match_keys = found.match_keys
FROM found WHERE f.id = found.id AND found.stored_name = found.event_name
"""


def columns(values: Sequence[tuple[Any, ...]], width: int) -> list[list[Any] | None]:
    """Rows of `width` values as `width` column lists (the arrays `unnest` takes; NULL for a
    column of NULLs, see `rows.column`)."""
    return [column([row[i] for row in values]) for i in range(width)]


def last_per_event(changed: Sequence[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    """The last change per (event name, event id): applied one by one the last one wins,
    while one `UPDATE ... FROM` joining a row to several changes applies any one of them."""
    return list({(c[4], c[5]): c for c in changed}.values())


class PgFacts:
    """`insightrecord.FactsSql` on a connection in a PostgreSQL transaction."""

    def __init__(self, conn: Conn) -> None:
        self.conn = conn

    async def merge(self, changed: Sequence[tuple[Any, ...]]) -> None:
        if changed:
            await self.conn.execute(_MERGE, *columns(last_per_event(changed), 6))

    async def resolve(self, links: Iterable[str], *, now: float) -> dict[str, str]:
        return await profilerows.resolve(self.conn, links, now=now)

    async def seen(self, keys: Iterable[tuple[str, str]]) -> dict[tuple[str, str], Seen]:
        return await _seen(self.conn, keys)

    async def insert_facts(self, values: Sequence[tuple[Any, ...]]) -> None:
        if values:
            await self.conn.execute(_INSERT_FACTS, *columns(values, 9))

    async def insert_touches(self, values: Sequence[tuple[Any, ...]]) -> None:
        if values:
            await self.conn.execute(_INSERT_TOUCHES, *columns(values, 10))


async def record(
    conn: Conn,
    policy: InsightPolicy,
    rows: Sequence[NewEvent],
    outcomes: Sequence[Outcome],
    new: set[int],
    now: float,
    states: Sequence[State | None] | None = None,
) -> None:
    """`insightrecord.record` on a PostgreSQL transaction."""
    await insightrecord.record(PgFacts(conn), policy, rows, outcomes, new, now, states)


async def _seen(conn: Conn, visitors: Iterable[tuple[str, str]]) -> dict[tuple[str, str], Seen]:
    """Per (site, visitor): the last page view stored and the current visit's source."""
    pairs = sorted(visitors)
    sites = [s for s, _ in pairs]
    keys = [v for _, v in pairs]
    rows = await conn.fetch(
        "SELECT w.site, w.visitor, "
        "(SELECT MAX(e.at) FROM insight_events e WHERE e.visitor = w.visitor "
        " AND e.event_name = 'PageView' AND e.site = w.site) AS last, t.* "
        "FROM unnest($1::text[], $2::text[]) AS w(site, visitor) "
        "LEFT JOIN LATERAL (SELECT channel, source, medium, campaign, click_id, referrer_host, "
        " landing_path FROM touchpoints p WHERE p.visitor = w.visitor AND p.site = w.site "
        " ORDER BY p.at DESC, p.id DESC LIMIT 1) t ON true",
        sites,
        keys,
    )
    out: dict[tuple[str, str], Seen] = {}
    for r in rows:
        last = float(r["last"]) if r["last"] is not None else None
        current = None
        if last is not None and r["channel"] is not None:
            current = visits_.source_of(
                (
                    r["channel"],
                    r["source"],
                    r["medium"],
                    r["campaign"],
                    r["click_id"],
                    r["referrer_host"],
                    r["landing_path"],
                )
            )
        out[(r["site"], r["visitor"])] = Seen(last, current)
    return out


async def forget(conn: Conn, visitors: Iterable[str], *, site: str | None = None) -> int:
    """Delete the touchpoints of `visitors` and detach their facts (see the SQLite store);
    with `site`, that site's only."""
    keys = sorted({facts_.visitor_of(v) for v in visitors})
    if not keys:
        return 0
    scope = " AND site = $2" if site is not None else ""
    args: list[Any] = [keys] if site is None else [keys, site]
    count = affected(
        await conn.execute(f"DELETE FROM touchpoints WHERE visitor = ANY($1::text[]){scope}", *args)
    )
    await conn.execute(
        f"UPDATE insight_events SET visitor = NULL WHERE visitor = ANY($1::text[]){scope}", *args
    )
    return count


PURGE_SQL = (
    "DELETE FROM insight_events WHERE id IN (SELECT id FROM insight_events WHERE at < $1 LIMIT $2)",
    "DELETE FROM touchpoints WHERE id IN (SELECT id FROM touchpoints WHERE at < $1 LIMIT $2)",
)


class PgInsights:
    """Report reads on the store's pool."""

    def __init__(self, db: Database, *, owned: bool = False) -> None:
        self.db = db
        self._owned = owned

    async def close(self) -> None:
        """Close the pool when it is this reader's own (the CLI's)."""
        if self._owned:
            await self.db.close()

    async def _all(self, query: tuple[str, list[Any]]) -> list[Any]:
        text, values = numbered(query)

        async def read(conn: Conn) -> list[Any]:
            return list(await conn.fetch(text, *values))

        return await self.db.run(read, transaction=False)

    async def counts(self, w: Window) -> list[NameCount]:
        """Events per name of the range, with their value per currency."""
        found: dict[str, NameCount] = {}
        for name, currency, count, with_value, value in await self._all(sql.counts_sql(w)):
            entry = found.setdefault(name, NameCount(name, 0, {}))
            entry = NameCount(name, entry.count + int(count), entry.values)
            if currency is not None and with_value:
                entry.values[currency] = (int(with_value), float(value))
            found[name] = entry
        return sorted(found.values(), key=lambda e: e.name)

    async def visitors(self, w: Window, events: Sequence[str] | None = None) -> int:
        """Distinct visitors of the range (with one of `events`, when given)."""
        rows = await self._all(sql.visitors_sql(w, events))
        return int(rows[0][0]) if rows else 0

    async def funnel(self, w: Window, steps: Sequence[str]) -> list[int]:
        """Visitors at each step, in order."""
        rows = await self._all(sql.funnel_sql(w, steps))
        return [int(v) for v in rows[0]] if rows else [0] * len(steps)

    async def conversions(self, w: Window, events: Sequence[str]) -> list[ConversionRow]:
        """Conversion events of the range."""
        rows = await self._all(sql.conversions_sql(w, events))
        return [ConversionRow._make(r) for r in sql.in_order(rows, 2)]

    async def touches(
        self, w: Window, converted: tuple[Window, Sequence[str]] | None = None
    ) -> list[TouchRow]:
        """Touchpoints of the range (of converting visitors only, with `converted`)."""
        rows = await self._all(sql.touches_sql(w, converted))
        return [TouchRow._make(r) for r in sql.in_order(rows, 1)]

    async def idle_paths(
        self, w: Window, converted: tuple[Window, Sequence[str]], by: str
    ) -> list[tuple[tuple[str, ...], int]] | None:
        """Paths of the visitors without a conversion (see `idle_paths_sql`), or None."""
        rows = await self._all(sql.idle_paths_sql(w, converted, by))
        return sql.idle_paths_of(rows)

    async def daily(self, w: Window, events: Sequence[str]) -> list[tuple[int, str | None, float]]:
        """(UTC day number, currency, value) of `events`."""
        return [(int(r[0]), r[1], float(r[2])) for r in await self._all(sql.daily_sql(w, events))]
