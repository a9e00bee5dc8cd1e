"""A copy of a key another open commit inserts waits alone, not with its whole batch.

While other replicas write, each group commit registers its keys in `event_inflight`
first; rows whose key another open commit registered (or one of this replica's own open
commits holds) go in a second transaction after the first has committed.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import asyncpg

from gateway.delivery.postgres.outbox import PgOutbox
from gateway.delivery.postgres.pool import SCHEMA
from gateway.delivery.seal import Sealer
from gateway.models import row_key
from tests.delivery.postgres.conftest import hold_key, purchase
from tests.delivery.stores import KEY


async def _hold(other: asyncpg.Connection, event_id: str) -> asyncpg.transaction.Transaction:
    """Another replica's open group commit: `event_id` registered, inserted, not committed."""
    await other.execute(
        "INSERT INTO event_inflight (owner, keys) "
        "VALUES ('peer:1', ARRAY[hashtextextended($1, 0)])",
        row_key("1", "Purchase", event_id),
    )
    blocker = await hold_key(other, event_id)
    await other.execute(
        "DELETE FROM event_inflight WHERE owner = 'peer:1'"
    )  # leaves with the commit
    return blocker


async def _peer_writes(box: PgOutbox, dsn: str) -> PgOutbox:
    """Another replica that has just committed: `box` registers its keys from now on."""
    peer = await PgOutbox.open(dsn, Sealer(KEY), group_commit_ms=1)
    assert box.listener is not None
    await asyncio.wait_for(box.listener.listening.wait(), 5)
    assert await peer.add([purchase("peer's")]) == ["new"]
    for _ in range(100):
        if box.others_writing():
            break
        await asyncio.sleep(0.05)
    assert box.others_writing()
    return peer


@contextlib.asynccontextmanager
async def _replicas(
    dsn: str, *, group_commit_ms: int, peer_wrote: bool = True
) -> AsyncIterator[tuple[PgOutbox, PgOutbox, asyncpg.Connection]]:
    """This replica's outbox, another replica's (that has just written, unless told not),
    and a third connection for another replica's open transactions; all closed after."""
    box = await PgOutbox.open(dsn, Sealer(KEY), group_commit_ms=group_commit_ms)
    try:
        if peer_wrote:
            peer = await _peer_writes(box, dsn)
        else:
            peer = await PgOutbox.open(dsn, Sealer(KEY), group_commit_ms=1)
        try:
            other = await asyncpg.connect(dsn, server_settings={"search_path": SCHEMA})
            try:
                yield box, peer, other
            finally:
                await other.close()
        finally:
            await peer.close()
    finally:
        await box.close()


async def test_the_rest_of_a_batch_commits_while_a_copy_waits_for_its_original(
    postgres_store_dsn: str,
) -> None:
    box = await PgOutbox.open(postgres_store_dsn, Sealer(KEY), group_commit_ms=1)
    peer = await _peer_writes(box, postgres_store_dsn)
    other = await asyncpg.connect(postgres_store_dsn, server_settings={"search_path": SCHEMA})
    look = await asyncpg.connect(postgres_store_dsn, server_settings={"search_path": SCHEMA})
    try:
        blocker = await _hold(other, "held")
        waiting = asyncio.create_task(box.add([purchase("held"), purchase("free")]))
        seen = False
        for _ in range(100):
            if await look.fetchval("SELECT count(*) FROM events WHERE event_id = 'free'"):
                seen = True
                break
            await asyncio.sleep(0.05)
        assert seen  # committed while the other transaction still holds "held"
        assert not waiting.done()  # the copy waits for it

        await blocker.commit()
        assert await asyncio.wait_for(waiting, 5) == ["merged", "new"]
        assert await look.fetchval("SELECT count(*) FROM events WHERE event_id <> 'peer''s'") == 2
        assert await look.fetchval("SELECT count(*) FROM event_inflight") == 0
    finally:
        await look.close()
        await other.close()
        await peer.close()
        await box.close()


async def test_a_copy_whose_original_rolled_back_is_stored_as_new(
    postgres_store_dsn: str,
) -> None:
    async with _replicas(postgres_store_dsn, group_commit_ms=1) as (box, _, other):
        blocker = await _hold(other, "held")
        commits = box.commits
        waiting = asyncio.create_task(box.add([purchase("free"), purchase("held")]))
        await asyncio.sleep(0.3)
        await blocker.rollback()
        assert await asyncio.wait_for(waiting, 5) == ["new", "new"]
        assert await other.fetchval("SELECT count(*) FROM events") == 3
        assert box.commits == commits + 2


async def test_a_stale_registration_does_not_count_and_upkeep_deletes_it(
    postgres_store_dsn: str,
) -> None:
    async with _replicas(postgres_store_dsn, group_commit_ms=1) as (box, _, other):
        # A replica killed mid-commit left its registration behind an hour ago.
        await other.execute(
            "INSERT INTO event_inflight (owner, keys, since) "
            "VALUES ('gone:1', ARRAY[hashtextextended($1, 0)], now() - interval '1 hour')",
            row_key("1", "Purchase", "old"),
        )
        commits = box.commits
        assert await box.add([purchase("old"), purchase("new")]) == ["new", "new"]
        assert box.commits == commits + 1  # one transaction: nothing was set apart

        await box.expire_and_purge(retention=3600, dead_retention=3600)
        assert await other.fetchval("SELECT count(*) FROM event_inflight") == 0


async def test_rows_set_apart_wait_beside_the_next_commit_not_in_its_way(
    postgres_store_dsn: str,
) -> None:
    async with _replicas(postgres_store_dsn, group_commit_ms=1, peer_wrote=False) as (
        box,
        peer,
        other,
    ):
        assert box.listener is not None
        await asyncio.wait_for(box.listener.listening.wait(), 5)
        assert await peer.add([purchase("peer's")]) == ["new"]
        for _ in range(100):  # the peer's notice reaches `box`: one commit at a time
            if box.others_writing():
                break
            await asyncio.sleep(0.05)
        assert box.others_writing()

        blocker = await _hold(other, "held")
        waiting = asyncio.create_task(box.add([purchase("held")]))
        await asyncio.sleep(0.3)
        assert await asyncio.wait_for(box.add([purchase("next")]), 5) == ["new"]
        assert not waiting.done()

        await blocker.commit()
        assert await asyncio.wait_for(waiting, 5) == ["merged"]


async def test_a_request_without_rows_set_apart_is_answered_at_the_first_commit(
    postgres_store_dsn: str,
) -> None:
    async with _replicas(postgres_store_dsn, group_commit_ms=200) as (box, _, other):
        blocker = await _hold(other, "held")
        commits = box.commits
        # One batch (the 200 ms window) of two requests, one with a copy of "held".
        waiting = asyncio.create_task(box.add([purchase("held"), purchase("mine")]))
        alone = asyncio.create_task(box.add([purchase("alone")]))
        assert await asyncio.wait_for(alone, 5) == ["new"]
        assert not waiting.done()
        assert box.commits == commits + 1

        await blocker.commit()
        assert await asyncio.wait_for(waiting, 5) == ["merged", "new"]


async def test_alone_a_replica_sets_apart_copies_of_its_own_open_commits_without_registering(
    postgres_store_dsn: str,
) -> None:
    box = await PgOutbox.open(postgres_store_dsn, Sealer(KEY), group_commit_ms=1)
    other = await asyncpg.connect(postgres_store_dsn, server_settings={"search_path": SCHEMA})
    try:
        # Not registered: the box's first commit waits for it inside its INSERT.
        blocker = await hold_key(other, "held")
        first = asyncio.create_task(box.add([purchase("held")]))
        await asyncio.sleep(0.3)
        assert not first.done()
        # A copy of the key the box's own open commit holds waits apart; the rest commits.
        second = asyncio.create_task(box.add([purchase("held"), purchase("free")]))
        look = await asyncpg.connect(postgres_store_dsn, server_settings={"search_path": SCHEMA})
        try:
            seen = False
            for _ in range(100):
                if await look.fetchval("SELECT count(*) FROM events WHERE event_id = 'free'"):
                    seen = True
                    break
                await asyncio.sleep(0.05)
            assert seen
            assert not second.done()
            # Registered, the waiting commit's row would be there until it commits.
            assert await look.fetchval("SELECT count(*) FROM event_inflight") == 0
            await blocker.rollback()
            one, two = await asyncio.wait_for(asyncio.gather(first, second), 5)
            # Both copies of "held" waited for the other transaction; either goes first.
            assert sorted([*one, two[0]]) == ["merged", "new"]
            assert two[1] == "new"
        finally:
            await look.close()
    finally:
        await other.close()
        await box.close()
