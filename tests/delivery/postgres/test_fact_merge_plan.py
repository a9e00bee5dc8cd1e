"""The fact merge of a group commit (copies of stored events) reads its facts by event id."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

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
