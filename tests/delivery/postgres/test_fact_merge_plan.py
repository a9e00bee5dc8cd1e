"""The fact merge of a group commit (copies of stored events) reads its facts by event id."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import pytest

from gateway.delivery.postgres import insights
from gateway.delivery.postgres.pool import Database

if TYPE_CHECKING:
    from gateway.delivery.postgres.pool import Conn


def _nodes(node: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield node
    for child in node.get("Plans", []):
        yield from _nodes(child)


async def test_the_fact_merge_does_not_read_every_fact_of_an_event_name(db: Database) -> None:
    """Two copies among 6,000 facts of two event names: the merge finds their facts through
    `insight_events_event`, not by ANDing it with every fact of the name."""
    await db.fetchval(
        "INSERT INTO insight_events (site, visitor, event_name, at, event_id) "
        "SELECT '', 'v' || g, CASE WHEN g % 2 = 0 THEN 'Purchase' ELSE 'PageView' END, 1, "
        "'e' || g FROM generate_series(1, 6000) AS g"
    )
    # No ANALYZE: a young table, as every group commit of a shop's first hours sees it.

    async def plan(conn: Conn) -> Any:
        return await conn.fetchval(
            "EXPLAIN (ANALYZE, FORMAT JSON) " + insights._MERGE,
            [1.0, 2.0],
            ["EUR", "EUR"],
            [None, None],
            ["em", "em"],
            ["Purchase", "PageView"],
            ["e10", "e11"],
        )

    root = json.loads(str(await db.run(plan)))[0]["Plan"]
    nodes = list(_nodes(root))
    # The facts by event id, then each by its primary key: never `insight_events_name`.
    assert {n.get("Index Name") for n in nodes} - {None} == {
        "insight_events_event",
        "insight_events_pkey",
    }
    read = sum(int(n.get("Actual Rows", 0)) for n in nodes if "Index" in n["Node Type"])
    assert read <= 2 * 2  # each copy's own fact (loops counted once per node here)


@pytest.mark.parametrize(("facts", "copies"), [(40_000, 12), (20_000, 40)])
async def test_the_fact_merge_probes_each_copys_fact_on_a_table_never_analyzed(
    db: Database, facts: int, copies: int
) -> None:
    """One event name, never analyzed: its default estimate (0.5 % of the rows per name)
    made the merge AND every fact of the name with the ids per copy (40,000 facts, 12
    copies) or scan the table (20,000 facts, 40 copies). Each copy is one probe of
    `insight_events_event`, then one of the primary key."""
    await db.fetchval(
        "INSERT INTO insight_events (site, visitor, event_name, at, event_id, currency, value) "
        "SELECT '', 'v' || g, 'Purchase', 1700000000 + g, md5(g::text), 'EUR', 1.0 "
        "FROM generate_series(1, $1::int) AS g",
        facts,
    )
    ids = [str(await db.fetchval("SELECT md5($1)", str(facts - 2 * i))) for i in range(copies)]

    async def plan(conn: Conn) -> Any:
        return await conn.fetchval(
            "EXPLAIN (ANALYZE, FORMAT JSON) " + insights._MERGE,
            [2.0] * copies,
            ["USD"] * copies,
            None,
            ["em"] * copies,
            ["Purchase"] * copies,
            ids,
        )

    root = json.loads(str(await db.run(plan)))[0]["Plan"]
    nodes = list(_nodes(root))
    assert {n.get("Index Name") for n in nodes} - {None} == {
        "insight_events_event",
        "insight_events_pkey",
    }
    assert not [n for n in nodes if n["Node Type"] == "Seq Scan"]
    read = sum(
        int(n.get("Actual Rows", 0)) * int(n.get("Actual Loops", 1))
        for n in nodes
        if "Index" in n["Node Type"]
    )
    assert read <= 2 * copies
    updated = await db.fetchval(
        "SELECT count(*) FROM insight_events WHERE event_id = ANY($1::text[]) "
        "AND currency = 'USD' AND value = 2.0",
        ids,
    )
    assert updated == copies
