"""What the PostgreSQL store's schema costs on its hot paths, side by side in one run.

Starts a throwaway PostgreSQL cluster (tests/fakes/pgcluster.py; PostgreSQL's default
durability: fsync on, synchronous commit) on 127.0.0.1, migrates two fresh databases with
the store's schema (gateway/delivery/postgres/schema.py), and on each, for 1 and 2 writer
pools ("replicas"):

- accept: INSERT of batches of `--batch` rows (one statement over unnest() arrays,
  ON CONFLICT ... DO NOTHING RETURNING, as the store's group commit will issue it);
- deliver: claim `--batch` due rows (FOR UPDATE SKIP LOCKED, leased) and mark them sent,
  one transaction each.

Database "counters" keeps the queue-depth counters (statement-level triggers) as shipped;
database "bare" has those triggers disabled, so the ratio is what exact queue depth costs.
Beside rows/s (wall clock, noisy on a shared machine) it prints the server's CPU per row
(user + system time of the cluster's processes, via psutil), which load on other cores
disturbs far less. It is not a test and asserts nothing.

    python bench/bench_pg_queue.py [--seconds 3] [--batch 100] [--rounds 2] [--json PATH]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

# `python bench/bench_pg_queue.py` puts bench/ on sys.path, not the repository root.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import psutil

from gateway.delivery.postgres import queue
from gateway.delivery.postgres.migrations import migrate
from gateway.delivery.postgres.pool import Database
from tests.fakes.pgcluster import throwaway_cluster

if TYPE_CHECKING:
    from gateway.delivery.postgres.pool import Conn

# The event once into `event_data`, its delivery state into `event_queue` (migration 11;
# every row of a batch here is new and due at $8's one value).
_INSERT = """
WITH stored AS (
    INSERT INTO event_data (pixel_id, event_name, event_id, event_time, source, payload,
                            sealed, created_at, match_keys, received_keys, sources)
    SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::bigint[], $5::text[],
                         $6::jsonb[], $7::bytea[], $9::float8[], $10::text[],
                         $11::text[], $12::jsonb[])
    ON CONFLICT (pixel_id, event_name, event_id) DO NOTHING
    RETURNING id, pixel_id, event_name, created_at
), queued AS (
    INSERT INTO event_queue (id, pixel_id, event_name, next_attempt_at, created_at)
    SELECT id, pixel_id, event_name, ($8::float8[])[1], created_at FROM stored
)
SELECT id FROM stored
"""
_PAYLOAD = json.dumps(
    {
        "event_name": "Purchase",
        "action_source": "website",
        "event_source_url": "https://shop.example/checkout/thank-you?order=12345",
        "user_data": {
            "em": ["a" * 64],
            "ph": ["b" * 64],
            "external_id": ["c" * 64],
        },
        "custom_data": {"value": 49.9, "currency": "EUR", "content_ids": ["sku-1", "sku-2"]},
    },
    separators=(",", ":"),
)
_SEALED = os.urandom(180)


def _batch(size: int) -> list[Any]:
    now = time.time()
    ids = [uuid.uuid4().hex for _ in range(size)]
    return [
        ["123456789012345"] * size,
        ["Purchase"] * size,
        ids,
        [int(now)] * size,
        ["api"] * size,
        [_PAYLOAD] * size,
        [_SEALED] * size,
        [now] * size,
        [now] * size,
        ["em,ph,external_id,client_ip_address,client_user_agent,fbp"] * size,
        ["em,ph,external_id,client_ip_address,client_user_agent,fbp"] * size,
        ['["api"]'] * size,
    ]


async def _accept(pools: list[Database], seconds: float, batch: int) -> tuple[int, float]:
    done = 0
    stop = time.monotonic() + seconds

    async def writer(db: Database) -> None:
        nonlocal done

        async def insert(conn: Conn) -> int:
            return len(await conn.fetch(_INSERT, *_batch(batch)))

        while time.monotonic() < stop:
            done += await db.run(insert)

    started = time.monotonic()
    # Two writers per pool: a replica's group commit overlaps one transaction with the next.
    await asyncio.gather(*(writer(db) for db in pools for _ in range(2)))
    return done, time.monotonic() - started


async def _deliver(pools: list[Database], seconds: float, batch: int) -> tuple[int, float]:
    done = 0
    stop = time.monotonic() + seconds

    async def sender(db: Database, owner: str) -> None:
        nonlocal done

        async def claim_and_mark(conn: Conn) -> int:
            rows = await queue.claim(conn, owner, limit=batch, lease=60, now=time.time())
            await conn.execute(
                "UPDATE event_queue SET state = 'sent', sent_at = $1, lease_owner = NULL, "
                "lease_expires = NULL WHERE id = ANY($2::bigint[]) AND lease_owner = $3",
                time.time(),
                [int(r["id"]) for r in rows],
                owner,
            )
            return len(rows)

        while time.monotonic() < stop:
            got = await db.run(claim_and_mark)
            if not got:
                return
            done += got

    started = time.monotonic()
    await asyncio.gather(*(sender(db, f"r{i}") for i, db in enumerate(pools)))
    return done, time.monotonic() - started


def _server_cpu(postmaster: psutil.Process) -> float:
    """CPU seconds used so far by the server and its live backends."""
    total = 0.0
    for proc in (postmaster, *postmaster.children(recursive=True)):
        try:
            times = proc.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += times.user + times.system
    return total


async def _case(
    dsn: str, replicas: int, counters: bool, args: argparse.Namespace, postmaster: psutil.Process
) -> dict[str, float]:
    pools = [await Database.open(dsn, max_size=4, health_interval=0) for _ in range(replicas)]
    try:
        await pools[0].fetchval("TRUNCATE event_data, event_queue, queue_counts")
        if not counters:
            await pools[0].fetchval("ALTER TABLE event_queue DISABLE TRIGGER USER")
        # Every connection open before the CPU count starts: backends that exit take theirs.
        await asyncio.gather(*(db.fetchval("SELECT 1") for db in pools for _ in range(4)))
        figures: dict[str, float] = {}
        for phase, run in (("accepted", _accept), ("delivered", _deliver)):
            cpu = _server_cpu(postmaster)
            rows, wall = await run(pools, args.seconds, args.batch)
            figures[phase] = rows / wall
            figures[f"{phase} cpu_us"] = (_server_cpu(postmaster) - cpu) / max(rows, 1) * 1e6
        return figures
    finally:
        for db in pools:
            await db.close()


async def _main(args: argparse.Namespace) -> dict[str, Any]:
    results: dict[str, Any] = {}
    with throwaway_cluster(durable=True) as cluster:
        pid = int((cluster.datadir / "postmaster.pid").read_text().split()[0])
        postmaster = psutil.Process(pid)
        admin = await Database.open(cluster.dsn(), health_interval=0)
        for name in ("counters", "bare"):
            await admin.fetchval(f"CREATE DATABASE {name}")
        await admin.close()
        for name in ("counters", "bare"):
            db = await Database.open(cluster.dsn(name), health_interval=0)
            await migrate(db)
            await db.close()
        # Interleaved rounds, best of each: a shared machine's noise only ever slows a case.
        for _ in range(args.rounds):
            for replicas in (1, 2):
                for name in ("counters", "bare"):
                    key = f"{name}, {replicas} replica(s)"
                    got = await _case(
                        cluster.dsn(name), replicas, name == "counters", args, postmaster
                    )
                    best = results.setdefault(key, got)
                    for metric, value in got.items():
                        pick = min if metric.endswith("cpu_us") else max
                        best[metric] = pick(best[metric], value)
    return results


def main() -> None:
    """Run the cases and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=2, help="best of this many runs per case")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    results = asyncio.run(_main(args))
    print(
        f"batch {args.batch}, {args.seconds:g} s per phase, best of {args.rounds}, "
        f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}"
    )
    print(
        f"{'case':<26} {'accepted rows/s':>16} {'server µs/row':>14} "
        f"{'delivered rows/s':>17} {'server µs/row':>14}"
    )
    for key, f in results.items():
        print(
            f"{key:<26} {f['accepted']:>16,.0f} {f['accepted cpu_us']:>14,.0f} "
            f"{f['delivered']:>17,.0f} {f['delivered cpu_us']:>14,.0f}"
        )
    for replicas in (1, 2):
        on = results[f"counters, {replicas} replica(s)"]
        bare = results[f"bare, {replicas} replica(s)"]
        print(
            f"counters / bare, {replicas} replica(s): server CPU per row accept "
            f"{on['accepted cpu_us'] / bare['accepted cpu_us']:.2f}x, deliver "
            f"{on['delivered cpu_us'] / bare['delivered cpu_us']:.2f}x; rows/s accept "
            f"{on['accepted'] / bare['accepted']:.2f}x, deliver "
            f"{on['delivered'] / bare['delivered']:.2f}x"
        )
    one, two = results["counters, 1 replica(s)"], results["counters, 2 replica(s)"]
    print(
        f"2 replicas / 1 (counters), rows/s: accept {two['accepted'] / one['accepted']:.2f}x, "
        f"deliver {two['delivered'] / one['delivered']:.2f}x"
    )
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
