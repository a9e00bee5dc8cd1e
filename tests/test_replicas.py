"""Replicas sharing one PostgreSQL store: any replica accepts, stitches, sends and counts.

Three gateways (each its own app, pool, group-commit writer and sender) in front of the demo
shop, on one database of the session's throwaway PostgreSQL cluster, sending to the fake
Graph API.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest

from gateway.delivery.postgres.schema import SCHEMA_VERSION
from gateway.demo_shop import shop_app
from tests.browser.site import serve
from tests.commands.test_doctor import cli
from tests.conftest import auth, make_settings, wait_for, web_event
from tests.edge.test_stitching import FBCLID, RULES, VISITOR_IP, Visitor
from tests.edge.test_webhooks import ENV, body_of, stripe_event, stripe_headers
from tests.fakes.graph import FakeGraph
from tests.fakes.pgcluster import Cluster
from tests.fakes.upstream import Front, run_gateway

KEY = "ab" * 32  # every replica shares the encryption key
UA = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 Chrome/156 Safari/537.36"

Start = Callable[..., Awaitable[list[Front]]]


@pytest.fixture
async def replicas(
    tmp_path: Path, fake_graph: FakeGraph, monkeypatch: pytest.MonkeyPatch, postgres_dsn: str
) -> AsyncIterator[Start]:
    """`await replicas(n)`: n gateways in front of one demo shop, on one PostgreSQL store."""
    for name, value in ENV.items():
        monkeypatch.setenv(name, value)
    async with contextlib.AsyncExitStack() as stack:

        async def start(count: int = 3, **overrides: Any) -> list[Front]:
            shop = await stack.enter_async_context(serve(shop_app()))
            fronts = []
            for i in range(count):
                # A directory each: nothing of a replica's own lives beside another's.
                own = tmp_path / f"replica-{i}"
                own.mkdir()
                settings = make_settings(
                    own,
                    fake_graph.url,
                    upstream=shop,
                    rules=RULES,
                    buffer=postgres_dsn,
                    encryption_key=KEY,
                    **overrides,
                )
                fronts.append(await stack.enter_async_context(run_gateway(settings)))
            return fronts

        yield start


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


async def _stitches(dsn: str) -> int:
    conn = await asyncpg.connect(dsn)
    try:
        return int(await conn.fetchval("SELECT count(*) FROM capigw.stitches"))
    finally:
        await conn.close()


async def test_a_visit_on_a_its_checkout_on_b_and_the_webhook_on_c_make_one_purchase(
    replicas: Start, fake_graph: FakeGraph, postgres_dsn: str
) -> None:
    a, b, c = await replicas()
    ann = Visitor(a)
    landing = await ann.go("GET", f"/?fbclid={FBCLID}")
    assert landing.status == 200
    fbp, fbc = ann.cookies["_fbp"], ann.cookies["_fbc"]
    # The load balancer sends the rest of the visit elsewhere.
    ann.front = b
    assert (await ann.go("POST", "/cart/add", data={"sku": "tee-01"})).status == 303
    paid = await ann.go("POST", "/checkout", data={"email": "Ann@Example.com", "phone": ""})
    assert paid.status == 302
    order = paid.headers["Location"].split("order=")[1].split("&")[0]
    # The checkout rule keeps the visit (asynchronously) in the shared store.
    deadline = time.monotonic() + 5
    while await _stitches(postgres_dsn) < 2:
        assert time.monotonic() < deadline, "the checkout's visit was not kept"
        await asyncio.sleep(0.05)
    body = body_of(stripe_event(order))
    async with c.session.post(
        f"{c.url}/_capi/hooks/stripe", data=body, headers=stripe_headers(body)
    ) as resp:
        answer = await resp.json()
    assert resp.status == 200, answer
    assert answer["events"][0]["stitched"] is True
    await wait_for(lambda: any(e["event_name"] == "Purchase" for e in fake_graph.events))
    await asyncio.sleep(0.3)
    [purchase] = [e for e in fake_graph.events if e["event_name"] == "Purchase"]
    assert purchase["event_id"] == f"purchase-{order}"
    assert purchase["user_data"]["em"] == sha("ann@example.com")
    assert purchase["user_data"]["fbp"] == fbp
    assert purchase["user_data"]["fbc"] == fbc
    assert purchase["user_data"]["client_ip_address"] == VISITOR_IP
    assert purchase["user_data"]["client_user_agent"] == ann.ua
    assert purchase["custom_data"]["value"] == 19.9


async def _post(front: Front, events: list[dict[str, Any]]) -> tuple[int, dict[str, Any], str]:
    async with front.session.post(
        f"{front.url}/_capi/events", json={"data": events}, headers=auth()
    ) as resp:
        return resp.status, await resp.json(), resp.headers.get("Retry-After", "")


async def test_events_spread_over_replicas_are_sent_once_and_counted_by_each(
    replicas: Start, fake_graph: FakeGraph, postgres_dsn: str, tmp_path: Path
) -> None:
    fronts = await replicas()
    batches = [
        [web_event(event_id=f"r{r}-{i}-{j}") for j in range(20)]
        for r in range(len(fronts))
        for i in range(5)
    ]
    # A copy of one event reaching two replicas is one event (merged, not sent twice).
    batches.append([web_event(event_id="r0-0-0")])
    answers = await asyncio.gather(
        *(_post(fronts[n % len(fronts)], batch) for n, batch in enumerate(batches))
    )
    assert all(status == 202 for status, _, _ in answers), answers
    expected = {f"r{r}-{i}-{j}" for r in range(3) for i in range(5) for j in range(20)}
    await wait_for(lambda: set(fake_graph.event_ids()) >= expected, timeout=15)
    await asyncio.sleep(0.3)
    assert sorted(fake_graph.event_ids()) == sorted(expected)  # each exactly once
    for front in fronts:
        async with front.session.get(f"{front.url}/_capi/status") as resp:
            status = await resp.json()
        text = str(status)
        assert resp.status == 200, text
        assert "300" in text, text  # every replica sees all 300 sent events
    # `queue stats` (of any replica's host) reads the shared counters: every replica's events.
    result = await cli("queue", "stats", "--json", "--buffer", postgres_dsn, cwd=tmp_path)
    assert result.code == 0, result.text
    stats = json.loads(result.out)
    assert stats["states"]["sent"] == 300 and stats["states"]["pending"] == 0
    assert stats["by_event_name"] == {"Purchase": {"sent": 300}}
    doctor = await cli(
        "doctor", "--buffer", postgres_dsn, "--dry-run", cwd=tmp_path, CAPIGW_ENCRYPTION_KEY=KEY
    )
    assert f"schema v{SCHEMA_VERSION}" in doctor.text and "0 pending" in doctor.text, doctor.text
    assert "key" not in [line.split()[1] for line in doctor.out.splitlines() if "FAIL" in line]
    # Erasure takes the URL too (the events are sent: nothing of them is left to scrub).
    forgot = await cli(
        "forget",
        "--email",
        "Jane@Example.com",
        "--json",
        "--buffer",
        postgres_dsn,
        cwd=tmp_path,
        CAPIGW_ENCRYPTION_KEY=KEY,
    )
    assert forgot.code == 0, forgot.text
    assert json.loads(forgot.out) == {"events": 0, "profiles": 0, "stitches": 0, "touchpoints": 0}


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
async def test_serve_exits_2_when_its_key_does_not_open_the_stored_events(
    backend: str, tmp_path: Path, postgres_dsn: str, fake_graph: FakeGraph
) -> None:
    buffer = str(tmp_path / "outbox.db") if backend == "sqlite" else postgres_dsn
    settings = make_settings(tmp_path, fake_graph.url, buffer=buffer, encryption_key=KEY)
    async with run_gateway(settings) as front:
        assert (await _post(front, [web_event(event_id="k1")]))[0] == 202
    other = "cd" * 32
    result = await cli(
        "serve", "--buffer", buffer, "--dry-run", cwd=tmp_path, CAPIGW_ENCRYPTION_KEY=other
    )
    assert result.code == 2, result.text
    assert "encryption key does not open the events already stored" in result.err


async def test_a_database_outage_answers_503_and_the_gateway_reconnects(
    replicas: Start, fake_graph: FakeGraph, postgres_cluster: Cluster
) -> None:
    (front,) = await replicas(1)
    status, _, _ = await _post(front, [web_event(event_id="before")])
    assert status == 202
    await asyncio.to_thread(postgres_cluster.stop)
    try:
        status, body, retry = await _post(front, [web_event(event_id="during")])
        assert status == 503, body
        assert retry and int(retry) > 0
        assert body["error"]
        # Status and metrics still answer, at once, saying the store cannot be read.
        began = time.monotonic()
        async with front.session.get(f"{front.url}/_capi/status") as resp:
            assert resp.status == 200
            assert "cannot read the buffer" in str((await resp.json())["queue"])
        async with front.session.get(f"{front.url}/_capi/metrics") as resp:
            assert resp.status == 200
        # So does the dashboard (it reads the database): a 503 naming the store, not a 500.
        async with front.session.get(
            f"{front.url}/_capi/admin", headers={"Accept": "text/html"}
        ) as resp:
            assert resp.status == 503, await resp.text()
            assert resp.headers["Retry-After"] == "5"
            assert "cannot read the buffer" in (await resp.json())["detail"]
        # Well under the pool's 10 s reconnect wait: these reads fail fast, never hang.
        assert time.monotonic() - began < 8
        # The site itself is still served.
        async with (
            aiohttp.ClientSession() as session,
            session.get(front.url + "/", headers={"User-Agent": UA}) as page,
        ):
            assert page.status == 200
    finally:
        await asyncio.to_thread(postgres_cluster.start)
    status, _, _ = await _post(front, [web_event(event_id="after")])
    assert status == 202
    await wait_for(lambda: {"before", "after"} <= set(fake_graph.event_ids()), timeout=30)
    assert "during" not in fake_graph.event_ids()
