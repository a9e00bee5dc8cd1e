"""`bench_events.py --store pg --relations N`: the WAL of a run by table and index.

pg_walinspect's records between two LSNs, grouped by the relation of their first block
reference (a heap's or an index's file node, named in the bench's own database) and by
record kind: per accepted event, how many records and how many bytes (full-page images
included) each table and index cost. The totals (`bench_replicas._wal_writes`) say how
many index entries an event adds; this says which indexes they went to.
"""

from __future__ import annotations

import asyncpg

# Records grouped by the file node of their first block (most records have one block; a
# heap UPDATE's second block is the same relation), named by the database they are read in.
_BY_RELATION = """
WITH recs AS (
    SELECT (regexp_match(block_ref, 'rel \\d+/\\d+/(\\d+)'))[1]::oid AS node,
        resource_manager || '/' || record_type AS kind, record_length
    FROM pg_get_wal_records_info('0/0'::pg_lsn + $1::numeric, '0/0'::pg_lsn + $2::numeric)
)
SELECT coalesce(pg_filenode_relation(0, node)::text, node::text, '(no block)') AS rel, kind,
    count(*) AS n, sum(record_length) AS bytes
FROM recs GROUP BY 1, 2
"""


async def print_relations(dsn: str, start: int, end: int, events: int, top: int) -> None:
    """The `top` relations by WAL bytes between LSNs `start` and `end`, per accepted event,
    with their commonest record kinds (read in the database `dsn`, whose relations they
    name)."""
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("CREATE EXTENSION IF NOT EXISTS pg_walinspect")
        rows = await conn.fetch(_BY_RELATION, start, end)
    except asyncpg.PostgresError as exc:
        print(f"   WAL by relation: not available ({exc})")
        return
    finally:
        await conn.close()
    per = max(events, 1)
    by_rel: dict[str, dict[str, tuple[int, int]]] = {}
    for r in rows:
        by_rel.setdefault(str(r["rel"]), {})[str(r["kind"])] = (int(r["n"]), int(r["bytes"]))
    ranked = sorted(by_rel.items(), key=lambda kv: -sum(b for _, b in kv[1].values()))
    print("   WAL by relation, per accepted event (records, bytes; its commonest kinds):")
    for rel, kinds in ranked[:top]:
        n = sum(c for c, _ in kinds.values())
        size = sum(b for _, b in kinds.values())
        common = sorted(kinds.items(), key=lambda kv: -kv[1][0])[:4]
        detail = ", ".join(f"{k} {c / per:.2f}" for k, (c, _) in common)
        print(f"   {n / per:>7.2f} {size / per:>8,.0f} B  {rel:<28} {detail}")
