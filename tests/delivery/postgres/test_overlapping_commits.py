"""A replica's group commits overlap: one waiting on a row lock does not hold up the next.

A copy of an event that another replica's transaction has just inserted waits, in its
`INSERT ... ON CONFLICT`, until that transaction ends. With one group commit at a time the
whole replica's intake waited with it; now the next batch commits on another connection.
"""

from __future__ import annotations

import asyncio

import asyncpg

from gateway.delivery.postgres.commitcache import CommitCache
from gateway.delivery.postgres.outbox import PgOutbox
from gateway.delivery.postgres.pool import SCHEMA
from gateway.delivery.seal import Sealer
from gateway.delivery.visitcache import Seen, VisitCache
from tests.delivery.postgres.conftest import hold_key, purchase
from tests.delivery.stores import KEY


async def test_a_commit_waiting_on_another_transaction_does_not_hold_up_the_next(
    postgres_store_dsn: str,
) -> None:
    box = await PgOutbox.open(postgres_store_dsn, Sealer(KEY), group_commit_ms=1)
    other = await asyncpg.connect(postgres_store_dsn, server_settings={"search_path": SCHEMA})
    try:
        # Another replica's transaction, not committed yet, holds the key of "held".
        blocker = await hold_key(other, "held")
        waiting = asyncio.create_task(box.add([purchase("held")]))
        await asyncio.sleep(0.3)
        assert not waiting.done()  # its INSERT waits for the other transaction

        assert await asyncio.wait_for(box.add([purchase("free")]), 5) == ["new"]
        assert not waiting.done()

        await blocker.rollback()  # the other replica's insert never happened
        assert await asyncio.wait_for(waiting, 5) == ["new"]
        assert await other.fetchval("SELECT count(*) FROM events") == 2
    finally:
        await other.close()
        await box.close()


def test_each_commit_keeps_only_its_own_visitors_once_it_commits() -> None:
    shared = VisitCache()
    shared.stage({("", "old"): Seen(1.0, None)})
    shared.settle()
    failed, committed = CommitCache(shared), CommitCache(shared)
    assert failed.get(("", "old")) == Seen(1.0, None)  # reads go to the shared states

    failed.stage({("", "a"): Seen(2.0, None)})
    committed.stage({("", "b"): Seen(3.0, None)})
    failed.discard()
    assert shared.get(("", "b")) is None  # not before its commit
    committed.settle()

    assert shared.get(("", "a")) is None
    assert shared.get(("", "b")) == Seen(3.0, None)
    committed.hits += 2
    assert shared.hits == 2


async def test_while_another_replica_writes_a_replica_commits_one_batch_at_a_time(
    postgres_store_dsn: str,
) -> None:
    box = await PgOutbox.open(postgres_store_dsn, Sealer(KEY), group_commit_ms=1)
    peer = await PgOutbox.open(postgres_store_dsn, Sealer(KEY), group_commit_ms=1)
    other = await asyncpg.connect(postgres_store_dsn, server_settings={"search_path": SCHEMA})
    try:
        assert box.listener is not None
        await asyncio.wait_for(box.listener.listening.wait(), 5)
        assert await peer.add([purchase("peer's")]) == ["new"]
        for _ in range(100):  # the peer's notice reaches `box`
            if box.listener.notices:
                break
            await asyncio.sleep(0.05)
        assert box.listener.notices

        blocker = await hold_key(other, "held")
        waiting = asyncio.create_task(box.add([purchase("held")]))
        await asyncio.sleep(0.3)
        behind = asyncio.create_task(box.add([purchase("behind")]))
        await asyncio.sleep(0.5)
        assert not waiting.done()
        assert not behind.done()  # queued behind the waiting commit, not beside it

        await blocker.rollback()
        assert await asyncio.wait_for(waiting, 5) == ["new"]
        assert await asyncio.wait_for(behind, 5) == ["new"]
    finally:
        await other.close()
        await peer.close()
        await box.close()
