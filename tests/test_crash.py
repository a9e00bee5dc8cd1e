"""At-least-once delivery across a SIGKILL of the gateway process.

The gateway runs as a real subprocess (`capi-gateway serve`) in front of the fake Graph API
(also a subprocess). Eight clients post batches while the fake is slow and sometimes
failing, so that at kill time the outbox holds rows that are pending (not yet claimed or
waiting for a retry) and rows that are inflight (leased to the killed process). The
gateway is then restarted on the same buffer and must deliver every event it answered
202 for. Duplicates are allowed (at-least-once) and reported, not failed on.
"""

from __future__ import annotations

import asyncio
import json
import random
import signal
import time
import uuid
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.conftest import API_KEY, PIXEL, TOKEN, web_event
from tests.fakes.processes import (
    queue_stats,
    start_fake,
    start_gateway,
    stop_at_exit,
    tail,
    wait_healthy,
)

EVENT_NAMES = ("Purchase", "Lead", "ViewContent", "AddToCart")

# The killed process's leases expire after CAPIGW_LEASE seconds: the lease length is
# stamped on each row when it is claimed, so it must be short in the run that gets killed.
GATEWAY_ENV = {
    "CAPIGW_LEASE": "1",
    "CAPIGW_POLL_INTERVAL": "0.05",
    "CAPIGW_RETRY_BASE": "0.05",
    "CAPIGW_RETRY_CAP": "0.3",
    "CAPIGW_BATCH_SIZE": "50",
    "CAPIGW_PIXEL_RATE": "500",
    "CAPIGW_PIXEL_BURST": "500",
    "CAPIGW_SEND_TIMEOUT": "5",
    "CAPIGW_SHUTDOWN_GRACE": "1",
}
# start_gateway with the pixel, token and events API key of tests.conftest.
serve = partial(start_gateway, pixel=PIXEL, token=TOKEN, api_key=API_KEY)


# -- load ------------------------------------------------------------------------------------


@dataclass
class Load:
    """What the clients sent and what the gateway acknowledged."""

    names: dict[str, str] = field(default_factory=dict)  # event_id -> event_name sent
    acked: set[str] = field(default_factory=set)
    requests: int = 0
    errors: int = 0
    unexpected: list[str] = field(default_factory=list)


async def client(
    session: aiohttp.ClientSession,
    url: str,
    load: Load,
    rng: random.Random,
    *,
    stop_at: float,
    killed: asyncio.Event,
) -> None:
    """Post batches of 1 or 10 events until `stop_at` or until the gateway is killed."""
    headers = {"Authorization": f"Bearer {API_KEY}"}
    for _ in range(100_000):
        if time.monotonic() >= stop_at or killed.is_set():
            return
        events = []
        for _ in range(rng.choice((1, 10))):
            event_id = uuid.uuid4().hex
            name = rng.choice(EVENT_NAMES)
            load.names[event_id] = name
            events.append(web_event(event_name=name, event_id=event_id))
        load.requests += 1
        try:
            async with session.post(url, json={"data": events}, headers=headers) as resp:
                body = await resp.json()
                status = resp.status
        except (aiohttp.ClientError, TimeoutError, json.JSONDecodeError):
            # Only a request cut short by the kill may fail; it was never acknowledged.
            load.errors += 1
            if killed.is_set():
                return
            await asyncio.sleep(0.01)
            continue
        if status == 202:
            assert body["event_ids"] == [e["event_id"] for e in events]
            load.acked.update(body["event_ids"])
        else:
            load.unexpected.append(f"{status}: {body}")


# -- the test --------------------------------------------------------------------------------


@pytest.mark.timeout(60)
async def test_no_acknowledged_event_is_lost_across_sigkill(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    buffer = tmp_path / "outbox.db"
    started = time.monotonic()
    with stop_at_exit() as procs:
        fake = start_fake(tmp_path / "fake.log", token=TOKEN)
        procs.append(fake.proc)
        timeout = aiohttp.ClientTimeout(total=10)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            # Slow and flaky Meta: sends take a while (rows stay leased) and the first few
            # fail (rows go back to pending with a retry time).
            await fake.control(session, {"latency": 0.4, "fail_next": {"n": 3, "status": 503}})
            gw = serve(buffer, fake.url, tmp_path / "gateway-1.log", env=GATEWAY_ENV)
            procs.append(gw.proc)
            await wait_healthy(gw, session)

            load = Load()
            killed = asyncio.Event()
            rng = random.Random(20240601)
            clients = [
                asyncio.create_task(
                    client(
                        session,
                        f"{gw.url}/_capi/events",
                        load,
                        random.Random(rng.random()),
                        stop_at=time.monotonic() + 2.0,
                        killed=killed,
                    )
                )
                for _ in range(8)
            ]
            await asyncio.sleep(1.2)
            gw.proc.send_signal(signal.SIGKILL)
            gw.proc.wait(timeout=10)
            killed.set()
            await asyncio.wait_for(asyncio.gather(*clients), timeout=15)
            assert gw.proc.returncode == -signal.SIGKILL
            assert not load.unexpected, load.unexpected[:5]
            assert len(load.acked) > 100, f"too little load: {len(load.acked)} acked"

            at_kill = queue_stats(buffer)
            delivered_before = len(await fake.get(session, "events"))
            # The test is only worth something if the killed process left work behind.
            assert at_kill["pending"] > 0, at_kill
            assert at_kill["inflight"] > 0, at_kill

            # Meta is healthy again; restart on the same buffer.
            await fake.control(session, {"latency": 0})
            gw2 = serve(buffer, fake.url, tmp_path / "gateway-2.log", env=GATEWAY_ENV)
            procs.append(gw2.proc)
            await wait_healthy(gw2, session)

            received: list[dict[str, Any]] = []
            missing: set[str] = set(load.acked)
            deadline = time.monotonic() + 20
            while missing and time.monotonic() < deadline:
                await asyncio.sleep(0.25)
                received = await fake.get(session, "events")
                missing = load.acked - {e["event_id"] for e in received}
            assert not missing, (
                f"{len(missing)} of {len(load.acked)} acknowledged events never reached Meta, "
                f"e.g. {sorted(missing)[:3]}\n{tail(gw2.log)}"
            )

            # Rows committed but never acknowledged (cut by the kill) drain too.
            final: dict[str, int] = {}
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                final = queue_stats(buffer)
                if final["pending"] == 0 and final["inflight"] == 0:
                    break
                await asyncio.sleep(0.2)
            received = await fake.get(session, "events")

        names: dict[str, set[str]] = defaultdict(set)
        for event in received:
            names[event["event_id"]].add(event["event_name"])
        mixed = {eid: n for eid, n in names.items() if len(n) > 1}
        assert not mixed, f"event_ids sent as different events: {list(mixed.items())[:3]}"
        wrong = {eid for eid in load.acked if names[eid] != {load.names[eid]}}
        assert not wrong, f"events delivered under another name: {sorted(wrong)[:3]}"
        unknown = set(names) - set(load.names)
        assert not unknown, f"the fake received events nobody sent: {sorted(unknown)[:3]}"

        assert final["pending"] == 0 and final["inflight"] == 0, final
        assert final["dead"] == 0 and final["blocked"] == 0, final
        assert final["sent"] == len(names), (final, len(names))

        counts = Counter(event["event_id"] for event in received)
        duplicates = sum(n - 1 for n in counts.values())
        with capsys.disabled():
            print(
                f"\n[crash] {load.requests} requests, {len(load.acked)} events acknowledged, "
                f"{load.errors} requests cut by the kill; at kill: {at_kill['pending']} pending, "
                f"{at_kill['inflight']} inflight, {delivered_before} delivered; after restart: "
                f"{len(counts)} distinct events delivered, {duplicates} duplicate deliveries; "
                f"{time.monotonic() - started:.1f} s"
            )
