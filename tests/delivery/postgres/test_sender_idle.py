"""An idle sender on PostgreSQL sleeps while the earliest pending row is one it cannot claim.

A claim skips rows another transaction holds (`FOR UPDATE SKIP LOCKED`) and rows of blocked
pixels not parked yet. If `next_due` still said "due now" for them, the sender would claim,
find nothing, ask again and claim again, without sleeping, for as long as the row stays so.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from aiohttp.test_utils import TestClient, TestServer

from gateway.app import build_app
from gateway.delivery.postgres.outbox import PgOutbox
from gateway.delivery.postgres.pool import SCHEMA
from gateway.edge.appkeys import OUTBOX
from tests.conftest import auth, make_settings, wait_for, web_event
from tests.delivery.stores import KEY
from tests.fakes.graph import FakeGraph


@pytest.fixture
async def client(
    tmp_path: Path, fake_graph: FakeGraph, postgres_store_dsn: str
) -> AsyncIterator[TestClient[Any, Any]]:
    """A gateway on PostgreSQL whose sender, once idle, sleeps 30 s unless woken."""
    settings = make_settings(
        tmp_path,
        fake_graph.url,
        buffer=postgres_store_dsn,
        encryption_key=KEY.hex(),
        poll_interval=30,
        assembly_hold=0.5,
    )
    test_client: TestClient[Any, Any] = TestClient(TestServer(build_app(settings)))
    await test_client.start_server()
    await asyncio.sleep(0.3)  # the sender's first claim and maintenance at start
    yield test_client
    await test_client.close()


def count_claims(outbox: PgOutbox) -> list[int]:
    """Counts the outbox's claims from now on (in a one-element list)."""
    claims = [0]
    claim = outbox.claim

    async def counted(*args: Any, **kwargs: Any) -> Any:
        claims[0] += 1
        return await claim(*args, **kwargs)

    outbox.claim = counted  # type: ignore[method-assign]
    return claims


async def test_a_due_row_another_transaction_holds_is_not_claimed_in_a_loop(
    client: TestClient[Any, Any], fake_graph: FakeGraph, postgres_store_dsn: str
) -> None:
    outbox = client.app[OUTBOX]
    assert isinstance(outbox, PgOutbox)
    resp = await client.post(
        "/_capi/events", json={"data": [web_event(event_id="held")]}, headers=auth()
    )
    assert resp.status == 202
    holder = await asyncpg.connect(postgres_store_dsn)
    try:
        async with holder.transaction():
            # Held (as a group commit merging a copy into it would) from before it is due
            # until a second after.
            assert (
                await holder.fetchval(
                    f"SELECT count(*) FROM (SELECT id FROM {SCHEMA}.events WHERE state = 'pending' "
                    "FOR UPDATE) AS held"
                )
                == 1
            )
            claims = count_claims(outbox)
            await asyncio.sleep(1.5)
            # Without the fix: one claim per round trip pair, hundreds in this second.
            assert 1 <= claims[0] <= 40
            assert fake_graph.event_ids() == []
        released = time.monotonic()
    finally:
        await holder.close()
    # Once the holder lets go it is sent without anyone waking the sender.
    await wait_for(lambda: fake_graph.event_ids() == ["held"], timeout=5)
    assert time.monotonic() - released < 2


async def test_a_blocked_pixels_pending_row_is_not_claimed_in_a_loop(
    client: TestClient[Any, Any], fake_graph: FakeGraph, postgres_store_dsn: str
) -> None:
    outbox = client.app[OUTBOX]
    assert isinstance(outbox, PgOutbox)
    conn = await asyncpg.connect(postgres_store_dsn)
    try:
        # A row stored while its pixel's block was being committed: pending, not parked.
        await conn.execute(
            f"INSERT INTO {SCHEMA}.blocked_pixels (pixel_id, token_fingerprint, reason, since) "
            "VALUES ('999', 'fp', 'token refused', 0)"
        )
        await conn.execute(
            f"INSERT INTO {SCHEMA}.events (pixel_id, event_name, event_id, event_time, source, "
            "payload, next_attempt_at, created_at) VALUES ('999', 'Purchase', 'b1', $1, 'api', "
            "'{}', 0, $2)",
            int(time.time()),
            time.time(),
        )
    finally:
        await conn.close()
    claims = count_claims(outbox)
    outbox.wake()  # as its commit would have
    await asyncio.sleep(1.5)
    # Without the fix: a claim loop until the upkeep claim parks the row, a second later.
    assert 1 <= claims[0] <= 40
    await wait_for(lambda: fake_graph.event_ids() == [], timeout=1)
