"""While other replicas write, a claim that drained the queue holds the next one back, so
N replicas' senders do not each take 1/N of the rows in N times as many claims."""

from __future__ import annotations

import asyncio
import time

import pytest

from gateway.delivery.postgres import outbox as pg_outbox
from gateway.delivery.postgres.outbox import PgOutbox
from gateway.delivery.seal import Sealer
from gateway.models import NewEvent
from tests.delivery.stores import KEY


def _event(event_id: str) -> NewEvent:
    return NewEvent("1", "Purchase", event_id, int(time.time()), {}, {}, "api", hold=0)


async def _heard_from(box: PgOutbox, peer: PgOutbox) -> None:
    assert box.listener is not None
    await asyncio.wait_for(box.listener.listening.wait(), 5)
    await peer.add([_event(f"peer-{time.monotonic()}")])
    for _ in range(100):
        if box.others_writing():
            return
        await asyncio.sleep(0.05)
    raise AssertionError("the peer's notice never came")


async def test_a_drained_claim_holds_the_next_back_while_another_replica_writes(
    postgres_store_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Longer than the peer's commit below takes on a loaded machine.
    monkeypatch.setattr(pg_outbox, "SHARED_CLAIM_GAP", 2.0)
    box = await PgOutbox.open(postgres_store_dsn, Sealer(KEY), group_commit_ms=1)
    peer = await PgOutbox.open(postgres_store_dsn, Sealer(KEY), group_commit_ms=1)
    try:
        # Alone: claims follow each other at once, drained or not.
        assert len(await box.claim("a", limit=100, lease=60)) == 0
        assert len(await box.claim("a", limit=100, lease=60)) == 0
        assert box.claims_held == 0

        await _heard_from(box, peer)
        first = await box.claim("a", limit=100, lease=60)  # takes the peer's row: drained
        drained = time.monotonic()
        assert len(first) == 1
        await peer.add([_event("next")])
        second = await box.claim("a", limit=100, lease=60)
        assert box.claims_held == 1
        assert time.monotonic() - drained >= 1.9
        assert [c.event_id for c in second] == ["next"]
    finally:
        await peer.close()
        await box.close()


async def test_a_full_claim_does_not_hold_the_next_back(postgres_store_dsn: str) -> None:
    box = await PgOutbox.open(postgres_store_dsn, Sealer(KEY), group_commit_ms=1)
    peer = await PgOutbox.open(postgres_store_dsn, Sealer(KEY), group_commit_ms=1)
    try:
        await peer.add([_event(f"e{n}") for n in range(4)])
        await _heard_from(box, peer)
        assert len(await box.claim("a", limit=2, lease=60)) == 2  # a backlog: full
        assert len(await box.claim("a", limit=2, lease=60)) == 2
        assert box.claims_held == 0
    finally:
        await peer.close()
        await box.close()
