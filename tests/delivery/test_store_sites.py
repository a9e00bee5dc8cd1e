"""Sites, fair claims and sender wake-ups at the store interface, on both backends."""

from __future__ import annotations

import math
import time
from dataclasses import replace

from gateway.delivery.outbox import Outbox
from gateway.delivery.postgres.outbox import PgOutbox
from gateway.delivery.postgres.reads import PgReader
from gateway.delivery.reads import BufferReader
from gateway.delivery.store import OutboxStore, StoreReader
from gateway.models import NewEvent


def event(event_id: str, *, pixel: str = "111", site: str | None = None) -> NewEvent:
    return NewEvent(
        pixel_id=pixel,
        event_name="Lead",
        event_id=event_id,
        event_time=int(time.time()),
        payload={"event_name": "Lead", "event_id": event_id, "user_data": {}},
        clear={"client_user_agent": "UA/1"},
        source="api",
        hold=0,
        site=site,
    )


async def reader_of(box: OutboxStore) -> StoreReader:
    if isinstance(box, Outbox):
        return await BufferReader.open(box.path, limit_bytes=1 << 30)
    assert isinstance(box, PgOutbox)
    return PgReader(box.db, limit_bytes=1 << 30)


async def test_a_fair_claim_skips_the_pixels_it_is_told_to(store: OutboxStore) -> None:
    await store.add([event("busy-1", pixel="111"), event("quiet-1", pixel="222")])
    claimed = await store.claim("w", limit=10, lease=30, skip=["111"])
    assert [c.event_id for c in claimed] == ["quiet-1"]
    rest = await store.claim("w", limit=10, lease=30, skip=[])
    assert [c.event_id for c in rest] == ["busy-1"]


async def test_each_event_keeps_its_site_and_a_tenants_numbers_are_its_own(
    store: OutboxStore,
) -> None:
    await store.add(
        [
            event("a-1", site="alpha"),
            event("a-2", site="alpha"),
            event("b-1", site="beta"),
            event("default-1"),
        ]
    )
    sent = [c for c in await store.claim("w", limit=10, lease=30) if c.event_id == "a-1"]
    await store.mark_sent([c.id for c in sent], "w", fbtrace_id="t")
    reader = await reader_of(store)
    try:
        alpha = await reader.snapshot(["alpha"])
        assert alpha.states["sent"] == 1
        assert alpha.states["inflight"] == 1
        assert sum(alpha.states.values()) == 2
        beta = await reader.snapshot(["beta"])
        assert sum(beta.states.values()) == 1
        assert beta.last_delivery is None
        assert sum((await reader.snapshot()).states.values()) == 4
        states = await reader.site_states(["alpha", "beta", "gamma"])
        assert states["alpha"]["sent"] == 1
        assert states["beta"]["inflight"] == 1
        assert sum(states["gamma"].values()) == 0
    finally:
        await reader.close()


async def test_a_commit_of_held_rows_announces_when_they_are_due(store: OutboxStore) -> None:
    assert store.take_wake_at() == math.inf
    before = time.time()
    await store.add([replace(event("held-1"), hold=30.0)])
    assert store.new_work.is_set()
    due = store.take_wake_at()
    assert before + 29 < due < time.time() + 31
    assert store.take_wake_at() == math.inf
    await store.add([event("now-1")])
    assert store.take_wake_at() <= time.time()
