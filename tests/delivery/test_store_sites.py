"""Sites, fair claims and sender wake-ups at the store interface, on both backends."""

from __future__ import annotations

import asyncio
import json
import math
import time
from dataclasses import replace
from pathlib import Path

import pytest

from gateway.cli import main
from gateway.delivery.outbox import Outbox
from gateway.delivery.postgres.outbox import PgOutbox
from gateway.delivery.postgres.reads import PgReader
from gateway.delivery.reads import BufferReader
from gateway.delivery.seal import Sealer
from gateway.delivery.store import OutboxStore, StoreReader
from gateway.models import NewEvent
from tests.delivery.stores import KEY


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


async def test_queue_stats_with_site_counts_that_sites_events_only(
    store_location: Path | str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CAPIGW_ENCRYPTION_KEY", KEY.hex())
    box: OutboxStore
    if isinstance(store_location, Path):
        box = await Outbox.open(store_location, Sealer(KEY))
    else:
        box = await PgOutbox.open(store_location, Sealer(KEY))
    try:
        await box.add(
            [event("a-1", site="alpha"), event("b-1", site="beta"), event("b-2", site="beta")]
        )
    finally:
        await box.close()
    config = tmp_path / "sites.toml"
    config.write_text(
        "".join(
            f'[[sites]]\nname = "{name}"\nhosts = ["{name}.example"]\n'
            'upstream = "http://127.0.0.1:9"\npixel_id = [111111]\n'
            for name in ("alpha", "beta")
        )
    )
    argv = ["queue", "stats", "--json", "--buffer", str(store_location), "--config", str(config)]
    assert await asyncio.to_thread(main, [*argv, "--site", "beta"]) == 0
    beta = json.loads(capsys.readouterr().out)
    assert beta["states"]["pending"] == 2
    assert beta["by_event_name"] == {"Lead": {"pending": 2}}
    assert await asyncio.to_thread(main, argv) == 0
    assert json.loads(capsys.readouterr().out)["states"]["pending"] == 3


async def test_a_tenants_retry_and_discard_touch_its_own_sites_dead_letters_only(
    store: OutboxStore,
) -> None:
    await store.add([event("a-1", site="alpha"), event("b-1", site="beta"), event("c-1")])
    claimed = await store.claim("w", limit=10, lease=30)
    ids = {c.event_id: c.id for c in claimed}
    await store.mark_dead(list(ids.values()), "w", error="refused", fbtrace_id=None)

    assert await store.discard_dead([ids["b-1"], ids["c-1"]], sites={"alpha"}) == 0
    assert await store.requeue_dead(None, sites={"alpha"}) == 1
    assert await store.requeue_dead([ids["b-1"]], sites={"alpha"}) == 0
    again = await store.claim("w", limit=10, lease=30)
    assert [c.event_id for c in again] == ["a-1"]
    assert await store.discard_dead([ids["a-1"], ids["b-1"]], sites={"beta"}) == 1
    # The global operator's actions reach every row, with or without a site.
    assert await store.requeue_dead(None) == 1
    assert [c.event_id for c in await store.claim("w", limit=10, lease=30)] == ["c-1"]
