"""The store's pool against a real server that stops, restarts and refuses."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import TYPE_CHECKING
from urllib.parse import urlsplit, urlunsplit

import pytest

from gateway.delivery.postgres.pool import Database, DatabaseUnavailable, describe
from tests.fakes.pgcluster import Cluster

if TYPE_CHECKING:
    from gateway.delivery.postgres.pool import Conn


@contextlib.contextmanager
def server_back_after(cluster: Cluster) -> Iterator[None]:
    """Whatever the test does to the server, it runs again afterwards (other tests share it)."""
    try:
        yield
    finally:
        if not cluster.running():
            cluster.start()


async def test_the_pool_survives_a_server_restart(
    postgres_dsn: str, postgres_cluster: Cluster
) -> None:
    db = await Database.open(postgres_dsn, min_size=3, max_size=3, health_interval=0)
    try:
        await db.fetchval("CREATE SCHEMA capigw")
        await db.fetchval("CREATE TABLE t (n int)")
        await db.fetchval("INSERT INTO t VALUES (1)")
        # A query running when the server goes down is cut, and runs again once it is back.
        running = asyncio.create_task(db.fetchval("SELECT count(*) FROM t, pg_sleep(2)"))
        while not await db.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' "
            "AND query LIKE '%pg_sleep(2)%' AND pid <> pg_backend_pid()"
        ):
            await asyncio.sleep(0.02)
        with server_back_after(postgres_cluster):
            # Every pooled connection is cut by the restart.
            await asyncio.to_thread(postgres_cluster.restart)
        assert await asyncio.wait_for(running, 20) == 1
        assert db.reconnects >= 1
        assert await db.fetchval("SELECT count(*) FROM t") == 1
        # Several connections at once: none of the pool's dead ones is handed out.
        counts = await asyncio.gather(*(db.fetchval("SELECT count(*) FROM t") for _ in range(6)))
        assert counts == [1] * 6
    finally:
        await db.close()


async def test_work_waits_for_a_server_that_comes_back(
    postgres_dsn: str, postgres_cluster: Cluster
) -> None:
    db = await Database.open(postgres_dsn, health_interval=0, reconnect_timeout=30)
    try:
        assert await db.fetchval("SELECT 1") == 1
        with server_back_after(postgres_cluster):
            await asyncio.to_thread(postgres_cluster.stop)
            query = asyncio.create_task(db.fetchval("SELECT 2"))
            await asyncio.sleep(0.5)
            assert not query.done()  # retrying, not failed
            await asyncio.to_thread(postgres_cluster.start)
            assert await asyncio.wait_for(query, 20) == 2
        assert db.reconnects >= 1
    finally:
        await db.close()


async def test_a_server_that_stays_down_is_unavailable_in_time(
    postgres_dsn: str, postgres_cluster: Cluster
) -> None:
    db = await Database.open(postgres_dsn, health_interval=0, reconnect_timeout=0.5)
    try:
        with server_back_after(postgres_cluster):
            await asyncio.to_thread(postgres_cluster.stop)
            started = time.monotonic()
            with pytest.raises(DatabaseUnavailable) as raised:
                await db.fetchval("SELECT 1")
            assert time.monotonic() - started < 5
        message = str(raised.value)
        assert describe(postgres_dsn) in message
        assert postgres_cluster.password not in message
        # The server is back: the same pool works again.
        assert await db.fetchval("SELECT 3") == 3
    finally:
        await db.close()


async def test_the_health_check_notices_an_outage_and_the_recovery(
    postgres_dsn: str, postgres_cluster: Cluster
) -> None:
    db = await Database.open(postgres_dsn, health_interval=0.05)
    try:
        with server_back_after(postgres_cluster):
            await asyncio.to_thread(postgres_cluster.stop)
            await _until(lambda: not db.healthy)
            assert db.last_error
            await asyncio.to_thread(postgres_cluster.start)
        await _until(lambda: db.healthy)
        assert db.last_error is None
    finally:
        await db.close()


async def test_a_wrong_password_is_a_clear_error(postgres_dsn: str) -> None:
    parts = urlsplit(postgres_dsn)
    wrong = urlunsplit(
        parts._replace(netloc=f"{parts.username}:not-the-password@{parts.hostname}:{parts.port}")
    )
    with pytest.raises(DatabaseUnavailable, match="refused the password") as raised:
        await Database.open(wrong, health_interval=0)
    assert "not-the-password" not in str(raised.value)


async def test_a_missing_database_is_a_clear_error(postgres_dsn: str) -> None:
    missing = urlunsplit(urlsplit(postgres_dsn)._replace(path="/no_such_database"))
    with pytest.raises(DatabaseUnavailable, match="does not exist"):
        await Database.open(missing, health_interval=0)


def test_describe_hides_the_password() -> None:
    assert describe("postgresql://gw:s3cret@db.internal:5433/shop") == (
        "postgresql://gw@db.internal:5433/shop"
    )
    assert describe("postgresql:///shop") == "postgresql://localhost/shop"


async def _until(predicate: object, timeout: float = 10.0) -> None:
    assert callable(predicate)
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.02)


async def test_a_deadlocked_transaction_runs_again(postgres_dsn: str) -> None:
    db = await Database.open(postgres_dsn, health_interval=0)
    try:
        await db.fetchval("CREATE SCHEMA capigw")
        await db.fetchval("CREATE TABLE t (id int PRIMARY KEY, n int NOT NULL)")
        await db.fetchval("INSERT INTO t VALUES (1, 0), (2, 0)")
        both_hold_one = asyncio.Barrier(2)
        runs = 0

        def crossing(first: int, second: int) -> Callable[[Conn], Awaitable[None]]:
            async def work(conn: Conn) -> None:
                nonlocal runs
                runs += 1
                first_try = runs <= 2
                await conn.execute("UPDATE t SET n = n + 1 WHERE id = $1", first)
                if first_try:
                    await both_hold_one.wait()
                await conn.execute("UPDATE t SET n = n + 1 WHERE id = $1", second)

            return work

        # Each holds the row the other wants next: PostgreSQL aborts one of them.
        await asyncio.wait_for(asyncio.gather(db.run(crossing(1, 2)), db.run(crossing(2, 1))), 20)
        assert runs == 3  # the victim ran twice
        assert await db.fetchval("SELECT string_agg(n::text, ',' ORDER BY id) FROM t") == "2,2"
    finally:
        await db.close()


async def test_a_statement_prepared_before_another_replica_migrated_runs_again(
    postgres_dsn: str,
) -> None:
    replica = await Database.open(postgres_dsn, min_size=1, max_size=1, health_interval=0)
    other = await Database.open(postgres_dsn, health_interval=0)
    try:
        await replica.fetchval("CREATE SCHEMA capigw")
        await replica.fetchval("CREATE TABLE t (id int, n int)")
        await replica.fetchval("INSERT INTO t VALUES (1, 2)")

        async def read(conn: Conn) -> list[object]:
            return [tuple(r) for r in await conn.fetch("SELECT * FROM t")]

        assert await replica.run(read) == [(1, 2)]
        # The column list of `SELECT *` changes under the prepared statement.
        await other.fetchval("ALTER TABLE t ADD COLUMN note text")
        assert await replica.run(read) == [(1, 2, None)]
    finally:
        await replica.close()
        await other.close()


async def test_a_released_connection_costs_no_reset_round_trip(postgres_dsn: str) -> None:
    """`run` hands back its connection without asyncpg's session reset (`RESET ALL` and
    co., one round trip per use); `connection()`, whose users take session locks, still
    resets its own (the migrations' advisory lock cannot outlive it)."""
    db = await Database.open(postgres_dsn, min_size=1, max_size=1, health_interval=0)
    other = await Database.open(postgres_dsn, min_size=1, max_size=1, health_interval=0)
    try:

        async def mine(conn: Conn) -> int:
            return int(await conn.fetchval("SELECT pg_backend_pid()"))

        pid = await db.run(mine, transaction=False)
        last = await other.fetchval("SELECT query FROM pg_stat_activity WHERE pid = $1", pid)
        assert last == "SELECT pg_backend_pid()"
        async with db.connection() as conn:
            await conn.execute("SELECT pg_advisory_lock(4242)")
        assert await other.fetchval("SELECT pg_try_advisory_lock(4242)") is True
    finally:
        await other.close()
        await db.close()
