"""A send result is recorded on the batch's rows by primary key, however many rows are
leased."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from gateway.delivery.postgres import results
from gateway.delivery.postgres.pool import Database

if TYPE_CHECKING:
    from gateway.delivery.postgres.pool import Conn


def _nodes(node: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield node
    for child in node.get("Plans", []):
        yield from _nodes(child)


async def _rows(db: Database, first: int, count: int, state: str) -> None:
    """`count` events from id `first` on, in `state` (inflight: leased to `o<id // 1000>`)."""

    async def work(conn: Conn) -> None:
        await conn.execute(
            "INSERT INTO event_data (id, pixel_id, event_name, event_id, event_time, source, "
            "payload, created_at) OVERRIDING SYSTEM VALUE "
            "SELECT g, '1', 'Purchase', 'e' || g, 0, 'api', '{}', 0 "
            "FROM generate_series($1::bigint, $2::bigint) AS g",
            first,
            first + count - 1,
        )
        await conn.execute(
            "INSERT INTO event_queue (id, pixel_id, event_name, state, next_attempt_at, "
            "created_at, lease_owner, lease_expires) "
            "SELECT g, '1', 'Purchase', $3, 0, 0, "
            "CASE WHEN $3 = 'inflight' THEN 'o' || g / 1000 END, "
            "CASE WHEN $3 = 'inflight' THEN 1e10 END "
            "FROM generate_series($1::bigint, $2::bigint) AS g",
            first,
            first + count - 1,
            state,
        )

    await db.run(work)


async def test_a_result_does_not_read_every_leased_row(db: Database) -> None:
    """1,000 rows of one sender among 12,000 leased and 30,000 sent, on statistics taken
    while 100 were leased: the sent-mark reads its rows through the primary key, not
    `events_leases` (every leased row, filtered or ANDed with the ids)."""
    await _rows(db, 1, 500, "sent")
    await _rows(db, 501, 100, "inflight")
    await db.fetchval("ANALYZE event_queue")
    # Young statistics, as a replica's first minutes of sending see them.
    await _rows(db, 1_000, 30_000, "sent")
    await _rows(db, 31_000, 12_000, "inflight")
    mine = list(range(35_000, 36_000))  # leased to "o35"

    async def plan(conn: Conn) -> Any:
        return await conn.fetchval(
            "EXPLAIN (ANALYZE, FORMAT JSON) "
            + results.leased_update("state = 'sent', sent_at = $3, fbtrace_id = $4"),
            mine,
            "o35",
            time.time(),
            None,
        )

    root = json.loads(str(await db.run(plan)))[0]["Plan"]
    nodes = list(_nodes(root))
    assert {n.get("Index Name") for n in nodes} - {None} == {"event_queue_pkey"}
    assert sum(int(n.get("Rows Removed by Filter", 0)) for n in nodes) == 0
    # EXPLAIN ANALYZE ran it: the batch was marked, and only it.
    assert await db.fetchval("SELECT count(*) FROM event_queue WHERE state = 'inflight'") == (
        12_100 - len(mine)
    )
