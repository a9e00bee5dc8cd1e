"""Three `serve` processes on one PostgreSQL: a visit spread over all three is one Purchase,
and with one SIGKILLed and the database restarted under load every acknowledged event still
reaches the fake Graph API.

Duplicates can only come from batches Meta had accepted that their replica could not mark
sent: the killed replica's batches in flight (sent again when their lease expires) and
batches whose result could not be recorded while the database was down. The test counts
them and bounds them by what can be in flight.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
from aiohttp import web

from gateway.demo_shop import shop_app
from tests.browser.site import serve
from tests.conftest import API_KEY, PIXEL, TOKEN, web_event
from tests.edge.test_assembly_journeys import PHONE, assert_the_richest_purchase, stripe_payment
from tests.edge.test_stitching import FBCLID, RULES, Visitor
from tests.edge.test_webhooks import ENV, stripe_headers
from tests.fakes.pgcluster import Cluster
from tests.fakes.processes import (
    HOST,
    Gateway,
    clean_env,
    free_port,
    gateway_cmd,
    run_cli,
    spawn,
    start_fake,
    stop_at_exit,
    tail,
    wait_healthy,
)
from tests.fakes.upstream import Front

KEY = "ab" * 32
BATCH = 10  # events per /events request
SEND_BATCH = 50  # events per Graph request
SEND_CONCURRENCY = 2
LOAD_SECONDS = 3.0


def _start(
    dsn: str, graph_url: str, log: Path, *more: str, env: dict[str, str] | None = None
) -> Gateway:
    port = free_port()
    cmd = [
        *gateway_cmd(),
        "serve",
        "--listen",
        f"{HOST}:{port}",
        "--buffer",
        dsn,
        "--pixel-id",
        PIXEL,
        "--access-token",
        TOKEN,
        "--graph-url",
        graph_url,
        "--api-key",
        API_KEY,
        *more,
    ]
    env = clean_env(
        CAPIGW_ENCRYPTION_KEY=KEY,
        CAPIGW_LEASE="3",
        CAPIGW_BATCH_SIZE=str(SEND_BATCH),
        CAPIGW_SEND_CONCURRENCY=str(SEND_CONCURRENCY),
        CAPIGW_RETRY_BASE="0.1",
        CAPIGW_RETRY_CAP="0.5",
        CAPIGW_POLL_INTERVAL="0.1",
        **(env or {}),
    )
    return Gateway(spawn(cmd, log, env=env), f"http://{HOST}:{port}", log)


async def _stitches(dsn: str) -> int:
    conn = await asyncpg.connect(dsn)
    try:
        return int(await conn.fetchval("SELECT count(*) FROM capigw.stitches"))
    finally:
        await conn.close()


async def test_a_visit_on_a_its_checkout_on_b_and_the_webhook_on_c_are_one_purchase(
    tmp_path: Path, postgres_dsn: str
) -> None:
    fake = start_fake(tmp_path / "fake.log", token=TOKEN)
    # The page's Purchase waits this long for the webhook's copy (another replica's).
    settings = {**ENV, "CAPIGW_ASSEMBLY_HOLD": "2", "CAPIGW_PAGEVIEW_HOLD": "0"}
    with stop_at_exit() as procs:
        procs.append(fake.proc)
        async with serve(shop_app()) as shop:
            a, b, c = gateways = [
                _start(
                    postgres_dsn,
                    fake.url,
                    tmp_path / f"gw{i}.log",
                    "--upstream",
                    shop,
                    "--rules",
                    str(RULES),
                    env=settings,
                )
                for i in range(3)
            ]
            procs += [gw.proc for gw in gateways]
            timeout = aiohttp.ClientTimeout(total=10)
            async with aiohttp.ClientSession(timeout=timeout) as session:
                for gw in gateways:
                    await wait_healthy(gw, session, timeout=30)

                def front(gw: Gateway) -> Front:
                    # A process: no app of ours in this one, only its URL.
                    return Front(gw.url, web.Application(), session)

                ann = Visitor(front(a))
                assert (await ann.go("GET", f"/?fbclid={FBCLID}")).status == 200
                assert "_fbp" in ann.cookies and "_fbc" in ann.cookies
                # The load balancer sends the rest of the visit to B.
                ann.front = front(b)
                assert (await ann.go("POST", "/cart/add", data={"sku": "tee-01"})).status == 303
                paid = await ann.go(
                    "POST", "/checkout", data={"email": "Ann@Example.com", "phone": PHONE}
                )
                assert paid.status == 302, tail(b.log)
                order = paid.headers["Location"].split("order=")[1].split("&")[0]
                thanks = await ann.go("GET", f"/thank-you?order={order}&total=19.90")
                assert thanks.status == 200
                # B keeps the visit (order id and email) after answering: wait for it.
                deadline = time.monotonic() + 5
                while await _stitches(postgres_dsn) < 2:
                    assert time.monotonic() < deadline, tail(b.log)
                    await asyncio.sleep(0.05)
                # Stripe's webhook lands on C, within the page Purchase's hold.
                body = stripe_payment(order)
                async with session.post(
                    f"{c.url}/_capi/hooks/stripe", data=body, headers=stripe_headers(body)
                ) as resp:
                    answer = await resp.json()
                assert resp.status == 200, answer
                [event] = answer["events"]
                assert event["event_id"] == f"purchase-{order}", answer
                assert event["outcome"] == "merged", answer

                def purchases(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
                    return [e for e in events if e["event_name"] == "Purchase"]

                deadline = time.monotonic() + 10
                while not purchases(await fake.get(session, "events")):
                    assert time.monotonic() < deadline, tail(a.log) + tail(c.log)
                    await asyncio.sleep(0.1)
                # A moment more: a second Purchase from any replica would show by now.
                await asyncio.sleep(0.5)
                [purchase] = purchases(await fake.get(session, "events"))
                assert purchase["event_id"] == f"purchase-{order}"
                assert_the_richest_purchase(purchase, ann.cookies)


async def test_a_killed_replica_and_a_database_restart_lose_nothing_acknowledged(
    tmp_path: Path, postgres_dsn: str, postgres_cluster: Cluster
) -> None:
    fake = start_fake(tmp_path / "fake.log", token=TOKEN)
    with stop_at_exit() as procs:
        procs.append(fake.proc)
        gateways = [_start(postgres_dsn, fake.url, tmp_path / f"gw{i}.log") for i in range(3)]
        procs += [gw.proc for gw in gateways]
        timeout = aiohttp.ClientTimeout(total=20)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            for gw in gateways:
                await wait_healthy(gw, session, timeout=30)
            accepted: list[str] = []
            refused = 0
            killed: set[int] = set()
            stop = asyncio.Event()

            async def load(worker: int) -> None:
                nonlocal refused
                n = 0
                while not stop.is_set():
                    target = (worker + n) % len(gateways)
                    n += 1
                    if target in killed:
                        continue
                    ids = [f"w{worker}-{n}-{j}" for j in range(BATCH)]
                    body = {"data": [web_event(event_id=i) for i in ids]}
                    try:
                        async with session.post(
                            f"{gateways[target].url}/_capi/events",
                            json=body,
                            headers={"Authorization": f"Bearer {API_KEY}"},
                        ) as resp:
                            if resp.status == 202:
                                accepted.extend(ids)
                            else:
                                assert resp.status == 503, await resp.text()
                                assert resp.headers.get("Retry-After")
                                refused += 1
                    except (aiohttp.ClientError, TimeoutError):
                        refused += 1  # the killed replica's connection: never acknowledged

            tasks = [asyncio.create_task(load(w)) for w in range(6)]
            started = time.monotonic()
            await asyncio.sleep(LOAD_SECONDS / 3)
            gateways[0].proc.kill()
            killed.add(0)
            await asyncio.sleep(LOAD_SECONDS / 6)
            await asyncio.to_thread(postgres_cluster.restart)
            await asyncio.sleep(max(0.0, LOAD_SECONDS - (time.monotonic() - started)))
            stop.set()
            await asyncio.gather(*tasks)
            assert len(accepted) > 100, (len(accepted), refused)

            deadline = time.monotonic() + 40
            while True:
                delivered = [e["event_id"] for e in await fake.get(session, "events")]
                if set(accepted) <= set(delivered) or time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.2)
            missing = set(accepted) - set(delivered)
            assert not missing, f"{len(missing)} acknowledged events never sent"
            await asyncio.sleep(0.5)
            delivered = [e["event_id"] for e in await fake.get(session, "events")]
            dupes = {i: c for i, c in Counter(delivered).items() if c > 1}
            print(
                f"accepted {len(accepted)}, refused requests {refused}, delivered "
                f"{len(delivered)}, duplicated events {len(dupes)}"
            )
            # Only what one replica can have in flight (its batches Meta accepted before the
            # kill), once more for the outage, can arrive twice; Meta drops those by event_id.
            assert len(dupes) <= 2 * SEND_BATCH * SEND_CONCURRENCY, len(dupes)
            # Any surviving replica's host counts every replica's events.
            stats = json.loads(
                run_cli("queue", "stats", "--json", "--buffer", postgres_dsn).stdout
            )["states"]
            assert stats["pending"] == 0 and stats["inflight"] == 0, stats
            assert stats["sent"] >= len(set(accepted)), stats
        for gw in gateways[1:]:
            with contextlib.suppress(ProcessLookupError):
                gw.proc.terminate()


async def test_serve_workers_on_postgresql_deliver_everything_once(
    tmp_path: Path, postgres_dsn: str
) -> None:
    fake = start_fake(tmp_path / "fake.log", token=TOKEN)
    with stop_at_exit() as procs:
        procs.append(fake.proc)
        gw = _start(postgres_dsn, fake.url, tmp_path / "gw.log", "--workers", "2")
        procs.append(gw.proc)
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=20)) as session:
            await wait_healthy(gw, session, timeout=30)
            ids = [f"wk-{i}" for i in range(200)]
            for start in range(0, len(ids), 20):
                async with session.post(
                    f"{gw.url}/_capi/events",
                    json={"data": [web_event(event_id=i) for i in ids[start : start + 20]]},
                    headers={"Authorization": f"Bearer {API_KEY}"},
                ) as resp:
                    assert resp.status == 202, await resp.text()
            deadline = time.monotonic() + 20
            while True:
                delivered = [e["event_id"] for e in await fake.get(session, "events")]
                if set(ids) <= set(delivered) or time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.1)
            assert sorted(delivered) == sorted(ids)
