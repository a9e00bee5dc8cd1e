"""The sender against the fake Graph API, on both stores: retries, isolation, blocked tokens,
dry run."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from gateway.app import build_app, reload
from gateway.edge.appkeys import OUTBOX, SENDER
from tests.conftest import (
    PIXEL,
    TOKEN,
    GatewayFactory,
    auth,
    make_settings,
    wait_for,
    web_event,
)
from tests.delivery.stores import KEY, fetch
from tests.fakes.graph import FakeGraph


async def post(client: TestClient[Any, Any], events: list[dict[str, Any]]) -> list[str]:
    resp = await client.post("/_capi/events", json={"data": events}, headers=auth())
    assert resp.status == 202, await resp.text()
    ids: list[str] = (await resp.json())["event_ids"]
    return ids


async def states(client: TestClient[Any, Any]) -> dict[str, int]:
    result: dict[str, int] = (await client.app[OUTBOX].stats())["states"]
    return result


async def rows(client: TestClient[Any, Any]) -> list[dict[str, Any]]:
    found = await fetch(
        client.app[OUTBOX],
        "SELECT event_id, state, attempts, last_error, fbtrace_id FROM events ORDER BY id",
    )
    return [
        dict(zip(("event_id", "state", "attempts", "last_error", "fbtrace_id"), r, strict=True))
        for r in found
    ]


@pytest.fixture
def store(store_location: Path | str) -> dict[str, Any]:
    """The settings that put a gateway on this test's store (SQLite file or PostgreSQL)."""
    return {"buffer": store_location, "encryption_key": KEY.hex()}


@pytest.fixture
async def gateway(
    tmp_path: Path, fake_graph: FakeGraph, store: dict[str, Any]
) -> AsyncIterator[GatewayFactory]:
    """conftest's gateway, on each store backend."""
    clients: list[TestClient[Any, Any]] = []

    async def start(**overrides: Any) -> TestClient[Any, Any]:
        settings = make_settings(tmp_path, fake_graph.url, **{**store, **overrides})
        client: TestClient[Any, Any] = TestClient(TestServer(build_app(settings)))
        await client.start_server()
        clients.append(client)
        return client

    yield start
    for client in clients:
        await client.close()


async def settled(client: TestClient[Any, Any], **expected: int) -> None:
    async def check() -> bool:
        s = await states(client)
        return all(s[k.replace("_", "-")] == v for k, v in expected.items())

    deadline = time.monotonic() + 5
    while not await check():
        assert time.monotonic() < deadline, await states(client)
        await asyncio.sleep(0.02)


async def test_transient_errors_are_retried(gateway: GatewayFactory, fake_graph: FakeGraph) -> None:
    fake_graph.fail_next(1, status=500)
    fake_graph.fail_next(1, status=400, code=2, message="Service temporarily unavailable")
    fake_graph.fail_next(1, status=400, code=17, message="User request limit reached")
    client = await gateway()
    await post(client, [web_event(event_id="e1")])
    await settled(client, sent=1)
    assert fake_graph.event_ids() == ["e1"]
    assert len(fake_graph.requests) == 4
    (row,) = await rows(client)
    assert row["attempts"] == 4


async def test_timeout_is_retried(gateway: GatewayFactory, fake_graph: FakeGraph) -> None:
    fake_graph.hang_next(1, 3.0)
    client = await gateway(send_timeout=0.3)
    await post(client, [web_event(event_id="slow")])
    await settled(client, sent=1)
    assert "slow" in fake_graph.event_ids()


async def test_one_bad_event_does_not_sink_its_batch(
    gateway: GatewayFactory, fake_graph: FakeGraph
) -> None:
    fake_graph.reject_event_ids(["bad"])
    client = await gateway()
    events = [web_event(event_id=f"ok-{i}") for i in range(9)]
    events.insert(4, web_event(event_id="bad"))
    await post(client, events)
    await settled(client, sent=9, dead=1)
    assert sorted(fake_graph.event_ids()) == sorted(f"ok-{i}" for i in range(9))
    dead = [r for r in await rows(client) if r["state"] == "dead"]
    assert dead[0]["event_id"] == "bad"
    assert "2804001" in dead[0]["last_error"]
    assert dead[0]["fbtrace_id"]


async def test_expired_token_parks_events_until_token_changes(
    gateway: GatewayFactory, fake_graph: FakeGraph, tmp_path: Path, store: dict[str, Any]
) -> None:
    client = await gateway(access_token="EAAB-expired")
    await post(client, [web_event(event_id="p1"), web_event(event_id="p2")])
    await settled(client, blocked=2)
    first_requests = len(fake_graph.requests)
    # New events for the parked pixel are parked too, without burning requests.
    await post(client, [web_event(event_id="p3")])
    await settled(client, blocked=3)
    assert len(fake_graph.requests) == first_requests == 1
    stats = await client.app[OUTBOX].stats()
    assert stats["blocked_pixels"][0]["pixel_id"] == PIXEL
    assert "190" in stats["blocked_pixels"][0]["reason"]
    assert fake_graph.events == []

    # A reload with the same bad token keeps them parked; a new token releases them.
    await reload(
        client.app, make_settings(tmp_path, fake_graph.url, access_token="EAAB-expired", **store)
    )
    await settled(client, blocked=3)
    await reload(client.app, make_settings(tmp_path, fake_graph.url, **store))
    await settled(client, sent=3)
    assert sorted(fake_graph.event_ids()) == ["p1", "p2", "p3"]


async def test_blocked_events_are_released_by_a_restart_with_a_new_token(
    tmp_path: Path, fake_graph: FakeGraph, store: dict[str, Any]
) -> None:
    bad = TestClient(
        TestServer(build_app(make_settings(tmp_path, fake_graph.url, access_token="x", **store)))
    )
    await bad.start_server()
    try:
        await post(bad, [web_event(event_id="r1")])
        await settled(bad, blocked=1)
    finally:
        await bad.close()
    good = TestClient(TestServer(build_app(make_settings(tmp_path, fake_graph.url, **store))))
    await good.start_server()
    try:
        await settled(good, sent=1)
        assert fake_graph.event_ids() == ["r1"]
        assert fake_graph.requests[-1].access_token == TOKEN
    finally:
        await good.close()


async def test_permanent_rejection_is_dead_lettered(
    gateway: GatewayFactory, fake_graph: FakeGraph
) -> None:
    fake_graph.fail_next(1, status=400, code=368, message="Blocked for policy")
    client = await gateway(batch_size=1)
    await post(client, [web_event(event_id="policy")])
    await settled(client, dead=1)
    (row,) = await rows(client)
    assert "Blocked for policy" in row["last_error"]


async def test_gives_up_after_max_attempts(gateway: GatewayFactory, fake_graph: FakeGraph) -> None:
    fake_graph.fail_next(10, status=503)
    client = await gateway(max_attempts=3)
    await post(client, [web_event(event_id="tired")])
    await settled(client, dead=1)
    (row,) = await rows(client)
    assert row["attempts"] == 3
    assert "gave up after 3 attempts" in row["last_error"]


async def test_event_aged_past_window_is_dead_lettered_alone(
    gateway: GatewayFactory, fake_graph: FakeGraph
) -> None:
    client = await gateway()
    nearly_old = int(time.time()) - 7 * 86400 + 30
    await post(
        client, [web_event(event_id="old", event_time=nearly_old), web_event(event_id="new")]
    )
    await settled(client, sent=1, dead=1)
    assert fake_graph.event_ids() == ["new"]
    dead = [r for r in await rows(client) if r["state"] == "dead"]
    assert "7-day" in dead[0]["last_error"]


async def test_appsecret_proof_and_partner_agent(
    gateway: GatewayFactory, fake_graph: FakeGraph
) -> None:
    client = await gateway(app_secret="s3cret")
    await post(client, [web_event()])
    await wait_for(lambda: len(fake_graph.requests) == 1)
    request = fake_graph.requests[0]
    expected = hmac.new(b"s3cret", TOKEN.encode(), hashlib.sha256).hexdigest()
    assert request.appsecret_proof == expected
    assert request.body["partner_agent"].startswith("capi-gateway/")
    assert request.version == "v26.0"


async def test_dry_run_never_calls_meta(gateway: GatewayFactory, fake_graph: FakeGraph) -> None:
    client = await gateway(dry_run=True)
    await post(client, [web_event(), web_event()])
    await settled(client, sent_dry=2)
    assert fake_graph.requests == []


async def test_pixel_rate_limit_spaces_requests(
    gateway: GatewayFactory, fake_graph: FakeGraph
) -> None:
    client = await gateway(batch_size=1, pixel_rate=10, pixel_burst=1)
    await post(client, [web_event(event_id=f"r{i}") for i in range(5)])
    await settled(client, sent=5)
    assert len(fake_graph.requests) == 5
    # What Meta sees: after the first request, four more over at least three tenths of a
    # second (less a margin). The first is left out: its connect can delay it by as much as
    # a tenth on a loaded machine, so that the second arrives right behind it. Not how
    # often the sender had to wait: store round trips can space the sends by themselves.
    arrived = [r.received_at for r in fake_graph.requests]
    assert arrived[-1] - arrived[1] >= 0.25, arrived


async def test_held_events_wake_the_sender_when_due_not_at_every_commit(
    gateway: GatewayFactory, fake_graph: FakeGraph
) -> None:
    client = await gateway(assembly_hold=1.5, poll_interval=30)
    outbox = client.app[OUTBOX]
    await asyncio.sleep(0.2)  # the sender's first claim and maintenance at start
    claimed_at: list[float] = []
    claim = outbox.claim

    async def counted(*args: Any, **kwargs: Any) -> Any:
        claimed_at.append(time.monotonic())
        return await claim(*args, **kwargs)

    outbox.claim = counted  # type: ignore[method-assign]
    started = time.monotonic()
    for n in range(5):
        await post(client, [web_event(event_id=f"held-{n}")])
    await asyncio.sleep(0.5)
    # Five commits of held rows: no claim per commit (each would be an empty write
    # transaction); one at most, should the sender's first claim at start land this late.
    # Only claims before the first row comes due count: on a loaded machine the posts can
    # outlast the hold, and a claim then is the due-time wake this test wants.
    early = [at for at in claimed_at if at - started < 1.4]
    assert len(early) <= 1, [round(at - started, 3) for at in claimed_at]
    # Yet the rows go when due, not after the 30 s poll interval.
    await wait_for(lambda: len(fake_graph.event_ids()) == 5, timeout=15)
    assert time.monotonic() - started < 15
    assert sorted(fake_graph.event_ids()) == [f"held-{n}" for n in range(5)]


async def test_a_store_away_while_the_sender_idles_does_not_end_it(
    gateway: GatewayFactory, fake_graph: FakeGraph
) -> None:
    # A database restarting while the sender waits for work: reading when the next event is
    # due fails. The sender must go on (and send once the store is back), not die silently.
    client = await gateway(poll_interval=0.1)
    outbox = client.app[OUTBOX]
    next_due = outbox.next_due
    failures = 0

    async def away(*args: Any, **kwargs: Any) -> Any:
        nonlocal failures
        if failures < 3:
            failures += 1
            raise OSError("the store is away")
        return await next_due(*args, **kwargs)

    outbox.next_due = away  # type: ignore[method-assign]
    await wait_for(lambda: failures == 3, timeout=10)
    await post(client, [web_event(event_id="after-the-outage")])
    await wait_for(lambda: "after-the-outage" in fake_graph.event_ids(), timeout=10)
    task = client.app[SENDER]._run_task
    assert task is not None and not task.done()


async def test_held_rows_trickling_in_go_in_one_request_per_linger(
    gateway: GatewayFactory, fake_graph: FakeGraph
) -> None:
    # Behind a front proxy, documents come one by one and each group commit holds a
    # PageView or two: each used to cost a claim, a Graph request and a mark-sent.
    client = await gateway(assembly_hold=0.1, send_linger=1.5, poll_interval=30)
    await asyncio.sleep(0.2)  # the sender's first claim at start
    for n in range(8):
        await post(client, [web_event(event_id=f"trickle-{n}")])
        await asyncio.sleep(0.06)
    await wait_for(lambda: len(fake_graph.event_ids()) == 8, timeout=15)
    assert sorted(fake_graph.event_ids()) == sorted(f"trickle-{n}" for n in range(8))
    assert len(fake_graph.requests) <= 2, [r.received_at for r in fake_graph.requests]


async def test_rows_stored_without_a_hold_are_not_lingered(
    gateway: GatewayFactory, fake_graph: FakeGraph
) -> None:
    client = await gateway(assembly_hold=0, send_linger=30, poll_interval=30)
    await asyncio.sleep(0.2)
    for n in range(2):  # the second comes right after a claim: no linger for it either
        started = time.monotonic()
        await post(client, [web_event(event_id=f"now-{n}")])
        await wait_for(lambda n=n: f"now-{n}" in fake_graph.event_ids(), timeout=10)
        assert time.monotonic() - started < 5


async def test_a_claim_that_took_every_due_row_is_not_followed_by_an_empty_one(
    gateway: GatewayFactory, fake_graph: FakeGraph
) -> None:
    client = await gateway(poll_interval=30)
    outbox = client.app[OUTBOX]
    await asyncio.sleep(0.2)  # the sender's first claim at start (on a busy machine, later)
    claims: list[int] = []
    claim = outbox.claim

    async def counted(*args: Any, **kwargs: Any) -> Any:
        found = await claim(*args, **kwargs)
        claims.append(len(found))
        return found

    outbox.claim = counted  # type: ignore[method-assign]
    await post(client, [web_event(event_id="one"), web_event(event_id="two")])
    await wait_for(lambda: len(fake_graph.event_ids()) == 2, timeout=10)
    await asyncio.sleep(0.3)
    # A start claim that came after the 0.2 s (an empty one, before the post) is allowed;
    # an empty claim after the one that took both rows is what must not happen.
    assert claims in ([2], [0, 2])
