"""LISTEN/NOTIFY between replicas: one store's commit wakes another store's idle sender, one
notice per group commit, and the listening connection comes back after a server restart."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from gateway.app import build_app
from gateway.delivery.postgres.outbox import PgOutbox
from gateway.delivery.seal import Sealer
from gateway.edge.appkeys import OUTBOX, SENDER
from tests.conftest import auth, make_settings, wait_for, web_event
from tests.delivery.postgres.test_pool import server_back_after
from tests.delivery.test_assembly_store import copy
from tests.fakes.graph import FakeGraph
from tests.fakes.pgcluster import Cluster

KEY = bytes(range(32))


@pytest.fixture
async def pair(postgres_store_dsn: str) -> AsyncIterator[tuple[PgOutbox, PgOutbox]]:
    """Two stores ("replicas") on one database, both listening."""
    a = await PgOutbox.open(postgres_store_dsn, Sealer(KEY), group_commit_ms=20)
    b = await PgOutbox.open(postgres_store_dsn, Sealer(KEY), group_commit_ms=20)
    try:
        for box in (a, b):
            assert box.listener is not None
            await asyncio.wait_for(box.listener.listening.wait(), 10)
        yield a, b
    finally:
        await a.close()
        await b.close()


def quiet(box: PgOutbox) -> None:
    """Forget earlier wake-ups, as a sender does before it sleeps."""
    box.new_work.clear()
    box.take_wake_at()


async def woken(box: PgOutbox, within: float = 5.0) -> float:
    """When `box` was told rows become due (epoch), waiting up to `within` seconds."""
    await asyncio.wait_for(box.new_work.wait(), within)
    return box.take_wake_at()


async def test_a_commit_on_one_replica_wakes_the_other(pair: tuple[PgOutbox, PgOutbox]) -> None:
    a, b = pair
    quiet(b)
    before = time.time()
    assert await a.add([copy("api", event_id="now", hold=0)]) == ["new"]
    at = await woken(b)
    assert before - 1 <= at <= time.time() + 1
    # A held event announces when it becomes due, so the sender sleeps until then.
    quiet(b)
    assert await a.add([copy("api", event_id="held", hold=30)]) == ["new"]
    at = await woken(b)
    assert before + 29 <= at <= time.time() + 31
    # A replica ignores its own notices (its commit already woke it directly).
    assert a.listener is not None
    assert a.listener.notices == 0


async def test_one_notice_per_group_commit(pair: tuple[PgOutbox, PgOutbox]) -> None:
    a, b = pair
    assert b.listener is not None
    quiet(b)
    start = b.listener.notices
    commits = a.commits
    events = [copy("api", event_id=f"e{i}", hold=0) for i in range(50)]
    # 50 requests of one event each within one window: a few commits, not 50.
    await asyncio.gather(*(a.add([ev]) for ev in events))
    await woken(b)
    await asyncio.sleep(0.3)
    assert b.listener.notices - start == a.commits - commits
    assert a.commits - commits < 10


async def test_the_listener_reconnects_after_a_server_restart(
    pair: tuple[PgOutbox, PgOutbox], postgres_cluster: Cluster
) -> None:
    a, b = pair
    assert b.listener is not None
    connections = b.listener.connections
    with server_back_after(postgres_cluster):
        await asyncio.to_thread(postgres_cluster.restart)
    deadline = time.monotonic() + 20
    while b.listener.connections == connections or not b.listener.listening.is_set():
        assert time.monotonic() < deadline, "the listener did not reconnect"
        await asyncio.sleep(0.05)
    quiet(b)
    assert await a.add([copy("api", event_id="after-restart", hold=0)]) == ["new"]
    await woken(b)


async def test_an_idle_sender_on_another_replica_sends_at_once(
    postgres_store_dsn: str, fake_graph: FakeGraph, tmp_path: Path
) -> None:
    """Replica A accepts an event but does not send (its sender is stopped); replica B's
    sender, idle with a 30 s poll interval, is woken by A's NOTIFY and sends it."""
    clients: list[TestClient[Any, Any]] = []
    try:
        for name in ("a", "b"):
            (tmp_path / name).mkdir()
            settings = make_settings(
                tmp_path / name,
                fake_graph.url,
                buffer=postgres_store_dsn,
                encryption_key=KEY.hex(),
                poll_interval=30,
            )
            client: TestClient[Any, Any] = TestClient(TestServer(build_app(settings)))
            await client.start_server()
            clients.append(client)
        a, b = clients
        await a.app[SENDER].stop(0)
        b_outbox = b.app[OUTBOX]
        assert isinstance(b_outbox, PgOutbox) and b_outbox.listener is not None
        await asyncio.wait_for(b_outbox.listener.listening.wait(), 10)
        await asyncio.sleep(0.3)  # B's sender has made its first claims and sleeps
        started = time.monotonic()
        resp = await a.post(
            "/_capi/events", json={"data": [web_event(event_id="via-notify")]}, headers=auth()
        )
        assert resp.status == 202, await resp.text()
        await wait_for(lambda: fake_graph.event_ids() == ["via-notify"], timeout=10)
        assert time.monotonic() - started < 10  # not the 30 s poll
    finally:
        for client in clients:
            await client.close()
