"""The PostgreSQL upkeep's size bounds (dead letters, profiles) cut from the oldest end.

Both used to delete `OFFSET bound` rows past the newest, which walks the whole bound on
every upkeep run even when nothing is over it; now the dead letters' number comes from the
queue counters and the profiles' from the planner's estimate while it is well under.
"""

from __future__ import annotations

import time

import asyncpg

from gateway.delivery.postgres.outbox import PgOutbox
from gateway.delivery.postgres.pool import SCHEMA
from gateway.delivery.profiles import ProfilePolicy
from gateway.delivery.seal import Sealer
from tests.delivery.stores import KEY


async def _profiles(dsn: str, expires: list[float], *, analyze: bool) -> None:
    conn = await asyncpg.connect(dsn, server_settings={"search_path": SCHEMA})
    try:
        await conn.executemany(
            "INSERT INTO profiles (key_hash, ids, updated_at, expires_at) "
            "VALUES ($1, '{}'::jsonb, $2, $2)",
            [(f"k{i:04d}", at) for i, at in enumerate(expires)],
        )
        if analyze:
            await conn.execute("ANALYZE profiles")
    finally:
        await conn.close()


async def _kept(dsn: str) -> list[str]:
    conn = await asyncpg.connect(dsn, server_settings={"search_path": SCHEMA})
    try:
        rows = await conn.fetch("SELECT key_hash FROM profiles ORDER BY key_hash")
    finally:
        await conn.close()
    return [r[0] for r in rows]


async def test_profiles_over_the_bound_lose_the_least_recently_updated(
    postgres_store_dsn: str,
) -> None:
    now = time.time()
    # Out of order on purpose: the cut follows expires_at, not insertion or key order.
    expires = [now + 100 + (i * 37) % 50 for i in range(50)]
    await _profiles(postgres_store_dsn, expires, analyze=True)
    box = await PgOutbox.open(
        postgres_store_dsn,
        Sealer(KEY),
        profiles=ProfilePolicy.from_key(KEY, ttl=3600, max_profiles=20),
    )
    try:
        box.purge_batch = 7  # several batches
        await box.expire_and_purge(retention=3600, dead_retention=3600, now=now)
        newest = sorted(range(50), key=lambda i: (expires[i], f"k{i:04d}"))[-20:]
        assert await _kept(postgres_store_dsn) == sorted(f"k{i:04d}" for i in newest)
    finally:
        await box.close()


async def test_profiles_well_under_the_bound_are_not_counted(postgres_store_dsn: str) -> None:
    now = time.time()
    await _profiles(postgres_store_dsn, [now + 100 + i for i in range(30)], analyze=True)
    box = await PgOutbox.open(
        postgres_store_dsn,
        Sealer(KEY),
        profiles=ProfilePolicy.from_key(KEY, ttl=3600, max_profiles=1000),
    )
    try:
        assert await box._profiles_over(1000) == 0
        # Past half the bound the estimate is not trusted: an exact count decides.
        assert await box._profiles_over(50) == -20
        assert await box._profiles_over(25) == 5
        await box.expire_and_purge(retention=3600, dead_retention=3600, now=now)
        assert len(await _kept(postgres_store_dsn)) == 30
    finally:
        await box.close()
