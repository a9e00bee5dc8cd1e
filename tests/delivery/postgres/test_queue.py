"""Claims and queue depth on PostgreSQL: replicas never claim the same row, counts stay exact."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import pytest

from gateway.delivery.postgres import queue
from gateway.delivery.postgres.migrations import migrate
from gateway.delivery.postgres.pool import Database
from tests.delivery.postgres.conftest import add_rows

if TYPE_CHECKING:
    from gateway.delivery.postgres.pool import Conn

LEASE = 60.0


async def _claim(db: Database, owner: str, limit: int, now: float | None = None) -> list[int]:
    async def work(conn: Conn) -> list[int]:
        rows = await queue.claim(
            conn, owner, limit=limit, lease=LEASE, now=time.time() if now is None else now
        )
        return [int(r["id"]) for r in rows]

    return await db.run(work)


async def _counted(db: Database) -> dict[str, dict[str, int]]:
    async def work(conn: Conn) -> dict[str, dict[str, int]]:
        out: dict[str, dict[str, int]] = {}
        for r in await conn.fetch(
            "SELECT event_name, state, count(*) AS n FROM events GROUP BY event_name, state"
        ):
            out.setdefault(r["event_name"], {})[r["state"]] = int(r["n"])
        return out

    return await db.run(work)


async def _depth(db: Database) -> dict[str, dict[str, int]]:
    return await db.run(queue.queue_depth)


async def test_a_claim_skips_rows_another_transaction_holds(db: Database) -> None:
    ids = await add_rows(db, 30)
    async with db.connection() as holder, holder.transaction():
        first = await queue.claim(holder, "replica-a", limit=10, lease=LEASE, now=time.time())
        # Replica A has not committed: B gets other rows at once instead of waiting for A.
        second = await asyncio.wait_for(_claim(db, "replica-b", 50), 5)
    first_ids = {int(r["id"]) for r in first}
    assert len(first_ids) == 10 and len(second) == 20
    assert first_ids.isdisjoint(second)
    assert first_ids | set(second) == set(ids)
    # The claimed rows carry the columns the sender needs, in the SQLite store's order.
    assert list(first[0].keys()) == [c.strip() for c in queue.CLAIMED_COLUMNS.split(",")]
    assert first[0]["attempts"] == 1


async def test_replicas_claiming_together_never_share_a_row(postgres_dsn: str) -> None:
    replicas = [await Database.open(postgres_dsn, health_interval=0) for _ in range(3)]
    try:
        await asyncio.gather(*(migrate(db) for db in replicas))
        ids = await add_rows(replicas[0], 600)
        claimed: dict[str, list[int]] = {f"replica-{i}": [] for i in range(len(replicas))}

        async def drain(db: Database, owner: str) -> None:
            # Bounded: 600 rows in batches of 7 need at most ~86 claims between them.
            for _ in range(200):
                got = await _claim(db, owner, 7)
                if not got:
                    return
                claimed[owner].extend(got)

        await asyncio.gather(
            *(drain(db, owner) for db, owner in zip(replicas, claimed, strict=True))
        )
        every = [i for got in claimed.values() for i in got]
        assert len(every) == len(set(every)) == len(ids)
        assert set(every) == set(ids)
        # Each replica took part (they claimed concurrently, not one after the other).
        assert all(claimed.values())
    finally:
        for db in replicas:
            await db.close()


async def test_rows_wait_until_due(db: Database) -> None:
    now = time.time()
    held = await add_rows(db, 3, due=now + 30)
    due = await add_rows(db, 2, due=now - 1)
    assert sorted(await _claim(db, "a", 10, now=now)) == sorted(due)
    assert sorted(await _claim(db, "a", 10, now=now + 31)) == sorted(held)


async def test_an_expired_lease_goes_to_the_next_claimer(db: Database) -> None:
    now = time.time()
    ids = await add_rows(db, 4)
    assert sorted(await _claim(db, "dead-replica", 10, now=now)) == sorted(ids)
    assert await _claim(db, "replica-b", 10, now=now + LEASE - 1) == []
    assert sorted(await _claim(db, "replica-b", 10, now=now + LEASE + 1)) == sorted(ids)
    assert await db.fetchval("SELECT max(attempts) FROM events") == 2
    assert await db.fetchval("SELECT DISTINCT lease_owner FROM events") == "replica-b"


async def test_a_blocked_pixels_rows_are_parked_not_claimed(db: Database) -> None:
    blocked = await add_rows(db, 3, pixel_id="111")
    fine = await add_rows(db, 2, pixel_id="222")
    await db.fetchval(
        "INSERT INTO blocked_pixels (pixel_id, token_fingerprint, reason, since) "
        "VALUES ('111', 'fp', 'token refused', 0)"
    )
    assert sorted(await _claim(db, "a", 10)) == sorted(fine)
    assert await db.fetchval("SELECT count(*) FROM events WHERE state = 'blocked'") == len(blocked)


async def test_queue_depth_counters_match_count_star(db: Database) -> None:
    await add_rows(db, 40, event_name="Purchase")
    await add_rows(db, 25, event_name="PageView")
    await _claim(db, "a", 30)
    await db.fetchval("UPDATE events SET state = 'sent', sent_at = 1 WHERE id % 3 = 0")
    await db.fetchval("UPDATE events SET state = 'dead' WHERE id % 7 = 0 AND state <> 'sent'")
    await db.fetchval("DELETE FROM events WHERE id % 5 = 0")
    # A merge: ON CONFLICT ... DO UPDATE of events that exist (their `event_data` rows,
    # since migration 11: a merge leaves the state alone), plus one new row.
    await db.fetchval(
        "INSERT INTO event_data (pixel_id, event_name, event_id, event_time, source, payload, "
        "created_at) SELECT pixel_id, event_name, event_id, event_time, "
        "'webhook', payload, 0 FROM events WHERE id % 2 = 0 "
        "ON CONFLICT (pixel_id, event_name, event_id) DO UPDATE SET source = excluded.source"
    )
    await db.fetchval(
        "INSERT INTO events (pixel_id, event_name, event_id, event_time, source, payload, "
        "next_attempt_at, created_at) VALUES ('1', 'Lead', 'new-one', 0, 'api', '{}', 0, 0)"
    )
    depth = await _depth(db)
    assert depth == await _counted(db)
    assert depth["Lead"] == {"pending": 1}
    assert sum(queue.totals(depth).values()) == await db.fetchval("SELECT count(*) FROM events")


async def test_queue_depth_stays_exact_under_concurrent_writers(postgres_dsn: str) -> None:
    writers = [await Database.open(postgres_dsn, health_interval=0) for _ in range(3)]
    try:
        await asyncio.gather(*(migrate(db) for db in writers))
        await asyncio.gather(
            *(
                add_rows(db, 50, event_name=name)
                for db in writers
                for name in ("Purchase", "Lead", "PageView")
            ),
            *(_claim(db, f"w{i}", 20) for i, db in enumerate(writers)),
        )
        assert await _depth(writers[0]) == await _counted(writers[0])
        # The counters are spread over shards: several rows for one (event_name, state).
        shards = await writers[0].fetchval(
            "SELECT max(c) FROM (SELECT count(*) AS c FROM queue_counts "
            "GROUP BY event_name, state) AS s"
        )
        assert isinstance(shards, int) and shards >= 1
    finally:
        for db in writers:
            await db.close()


@pytest.mark.parametrize("limit", [1, 1000])
async def test_claim_takes_the_oldest_due_first(db: Database, limit: int) -> None:
    now = time.time()
    late = await add_rows(db, 2, due=now - 1)
    early = await add_rows(db, 2, due=now - 10)
    got = await _claim(db, "a", limit, now=now)
    assert got == sorted((early + late)[:limit])


async def test_blocked_pixels_rows_are_parked_by_the_upkeep_claim_only(db: Database) -> None:
    """A claim between upkeeps reads no pending row beyond the due ones it takes: a
    blocked pixel's rows wait, unclaimed, for the next upkeep claim to park them; with no
    pixel blocked the parking statement reads nothing at all."""
    blocked = await add_rows(db, 3, pixel_id="111")
    fine = await add_rows(db, 2, pixel_id="222")
    plan = json.loads(str(await db.fetchval("EXPLAIN (ANALYZE, FORMAT JSON) " + queue._PARK)))
    scans = [n for n in _nodes(plan[0]["Plan"]) if n.get("Relation Name") == "event_queue"]
    assert scans and all(n["Actual Loops"] == 0 for n in scans if "Scan" in n["Node Type"])
    await db.fetchval(
        "INSERT INTO blocked_pixels (pixel_id, token_fingerprint, reason, since) "
        "VALUES ('111', 'fp', 'token refused', 0)"
    )

    async def plain(conn: Conn) -> list[int]:
        rows = await queue.claim(conn, "a", limit=10, lease=LEASE, now=time.time(), upkeep=False)
        return [int(r["id"]) for r in rows]

    assert sorted(await db.run(plain, transaction=False)) == sorted(fine)
    assert await db.fetchval("SELECT count(*) FROM events WHERE state = 'pending'") == 3
    assert await _claim(db, "a", 10) == []
    assert await db.fetchval("SELECT count(*) FROM events WHERE state = 'blocked'") == len(blocked)


def _nodes(node: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield node
    for child in node.get("Plans", []):
        yield from _nodes(child)


async def test_a_claim_reads_due_rows_in_order_while_a_pixel_is_blocked(db: Database) -> None:
    """With one pixel's rows in the table and another pixel blocked, the claim still walks
    `events_due` from its first entry: no scan of the whole table and sort per claim."""
    await add_rows(db, 5000)
    await db.fetchval(
        "INSERT INTO blocked_pixels (pixel_id, token_fingerprint, reason, since) "
        "VALUES ('999', 'fp', 'token refused', 0)"
    )
    await db.fetchval("ANALYZE event_queue")
    await db.fetchval("ANALYZE blocked_pixels")

    async def plan(conn: Conn) -> Any:
        return await conn.fetchval(
            "EXPLAIN (FORMAT JSON) " + queue._CLAIM, "a", time.time() + LEASE, time.time(), 100, []
        )

    nodes = list(_nodes(json.loads(str(await db.run(plan, transaction=False)))[0]["Plan"]))
    scans = [
        n for n in nodes if n.get("Relation Name") == "event_queue" and "Scan" in n["Node Type"]
    ]
    assert [n.get("Index Name") for n in scans if n["Node Type"] != "Index Scan"] == []
    assert "Sort" not in {n["Node Type"] for n in nodes}
    assert len(await _claim(db, "a", 100)) == 100
