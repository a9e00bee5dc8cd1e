"""Schema migration 13: what storing, claiming and sending an event writes to the indexes
and how the oldest undelivered event is found without `events_open` over inflight rows."""

from __future__ import annotations

import json
import time
from typing import Any

import asyncpg
import pytest

from gateway.delivery.postgres.leanindexes import OLDEST_OPEN
from gateway.delivery.postgres.outbox import PgOutbox
from gateway.delivery.seal import Sealer
from gateway.models import NewEvent
from tests.delivery.stores import KEY

# WAL records of this database between two LSNs, by relation and kind (pg_walinspect).
_RECORDS = """
WITH recs AS (
    SELECT regexp_match(block_ref, 'rel \\d+/(\\d+)/(\\d+)') AS m,
        resource_manager || '/' || record_type AS kind
    FROM pg_get_wal_records_info($1::text::pg_lsn, $2::text::pg_lsn)
)
SELECT pg_filenode_relation(0, m[2]::oid)::text AS rel, kind, count(*) AS n FROM recs
WHERE m[1]::oid = (SELECT oid FROM pg_database WHERE datname = current_database())
GROUP BY 1, 2
"""
COUNT = 120


def _events(prefix: str, count: int) -> list[NewEvent]:
    now = int(time.time())
    return [
        NewEvent("1", "Purchase", f"{prefix}-{i}", now, {}, {}, "api", hold=0) for i in range(count)
    ]


async def _writes(box: PgOutbox, start: str) -> dict[tuple[str, str], int]:
    end = await box.db.fetchval("SELECT pg_current_wal_insert_lsn()::text")
    # The test cluster does not flush at commit (fsync off): the WAL read must be on disk.
    await box.db.fetchval("SELECT pg_switch_wal()")
    async with box.db.connection() as conn:
        rows = await conn.fetch(_RECORDS, start, end)
    return {(str(r["rel"]), str(r["kind"])): int(r["n"]) for r in rows}


async def test_an_event_costs_fewer_index_entries_and_row_locks(postgres_store_dsn: str) -> None:
    """Stored, claimed and sent, an event adds 9 B-tree entries to its two tables' indexes
    (11 before migration 13: `events_open` took one again at the claim, `events_created` one
    per event) and its queue row's two updates stay on their page (fillfactor): one row-lock
    record per event (the claim's), not three."""
    box = await PgOutbox.open(postgres_store_dsn, Sealer(KEY), group_commit_ms=1)
    try:
        try:
            await box.db.fetchval("CREATE EXTENSION IF NOT EXISTS pg_walinspect")
        except asyncpg.PostgresError as exc:
            pytest.skip(f"this server's role may not read its WAL: {exc}")
        start = await box.db.fetchval("SELECT pg_current_wal_insert_lsn()::text")
        assert await box.add(_events("lean", COUNT)) == ["new"] * COUNT
        claimed = await box.claim("replica-a", limit=COUNT, lease=60)
        assert len(claimed) == COUNT
        await box.mark_sent([c.id for c in claimed], "replica-a", fbtrace_id="tr")
        writes = await _writes(box, start)
    finally:
        await box.close()
    tables = ("event_data", "event_queue")
    index_names = {
        rel for rel, _ in writes if rel not in tables and rel.startswith(("event", "events"))
    }
    entries = sum(
        n
        for (rel, kind), n in writes.items()
        if rel in index_names and kind.startswith("Btree/INSERT_LEAF")
    )
    locks = writes.get(("event_queue", "Heap/LOCK"), 0)
    assert not any(k.startswith("Btree") for (rel, k) in writes if rel == "events_created")
    assert entries == 9 * COUNT, sorted(writes.items())
    assert locks <= 1.2 * COUNT, sorted(writes.items())


async def test_the_oldest_undelivered_event_is_read_through_partial_indexes(
    postgres_store_dsn: str,
) -> None:
    """A claimed event older than every pending one is still the oldest undelivered: the
    read takes pending rows from `events_open_pending` and inflight ones from
    `events_leases`, and reads no delivered row."""
    box = await PgOutbox.open(postgres_store_dsn, Sealer(KEY), group_commit_ms=1)
    try:
        assert await box.add(_events("old", 1)) == ["new"]
        [sending] = await box.claim("replica-a", limit=1, lease=60)
        assert await box.add(_events("young", 3)) == ["new"] * 3
        claimed_at = await box.db.fetchval(
            "SELECT created_at FROM event_queue WHERE id = $1", sending.id
        )
        assert isinstance(claimed_at, float)
        assert await box.db.fetchval(OLDEST_OPEN) == claimed_at
        stats = await box.stats()
        assert stats["oldest_pending_age"] >= time.time() - claimed_at - 1
        async with box.db.connection() as conn, conn.transaction():
            # The planner's choice on a small table would be a scan: ask for the indexes'.
            await conn.execute("SET LOCAL enable_seqscan = off")
            plan: Any = await conn.fetchval("EXPLAIN (FORMAT JSON) " + OLDEST_OPEN)
        used = _indexes(json.loads(plan) if isinstance(plan, str) else plan)
        assert {"events_open_pending", "events_leases"} <= used, used
    finally:
        await box.close()


def _indexes(node: Any) -> set[str]:
    """Every index a JSON plan reads."""
    if isinstance(node, list):
        return set().union(*(_indexes(n) for n in node)) if node else set()
    if not isinstance(node, dict):
        return set()
    found = {str(node["Index Name"])} if "Index Name" in node else set()
    for value in node.values():
        if isinstance(value, list | dict):
            found |= _indexes(value)
    return found
