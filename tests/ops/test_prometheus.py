"""`GET /_capi/metrics`: Prometheus text that moves as requests, events and deliveries happen.

In-process gateways in front of tests.fakes.upstream and the fake Graph API, scraped and
parsed with prometheus_client's own parser; `--workers 2` as a subprocess, where every
scrape, whichever worker answers it, must show both workers' totals.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.parser import text_string_to_metric_families

from gateway.edge.appkeys import PAGES
from gateway.metrics import Metrics
from gateway.ops.prometheus import render
from tests.conftest import (
    API_KEY,
    PIXEL,
    TOKEN,
    UA,
    GatewayFactory,
    auth,
    make_settings,
    web_event,
)
from tests.edge.test_collect import beacon, visit
from tests.edge.test_collect import event as collect_event
from tests.fakes.graph import FakeGraph
from tests.fakes.processes import (
    start_fake,
    start_gateway,
    stop_at_exit,
    stop_process,
    tail,
    wait_healthy,
)
from tests.fakes.upstream import Front, run_gateway, start_upstream

BROWSER = {"User-Agent": UA, "Accept": "text/html"}
BOT = {"User-Agent": "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)"}


class Samples:
    """One parsed scrape: sample name + labels -> value."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.values: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                self.values[(sample.name, frozenset(sample.labels.items()))] = sample.value

    def get(self, name: str, **labels: str) -> float:
        """The sample's value, 0 when absent (a labelled counter not moved yet)."""
        return self.values.get((name, frozenset(labels.items())), 0.0)

    def has(self, name: str) -> bool:
        return any(key[0] == name for key in self.values)


async def scrape(session: aiohttp.ClientSession, url: str, **headers: str) -> Samples:
    async with session.get(f"{url}/_capi/metrics", headers=headers) as resp:
        assert resp.status == 200, await resp.text()
        assert resp.headers["Content-Type"].startswith("text/plain")
        return Samples(await resp.text())


async def scrape_client(client: TestClient[Any, Any]) -> Samples:
    resp = await client.get("/_capi/metrics")
    assert resp.status == 200, await resp.text()
    return Samples(await resp.text())


async def eventually(
    get: Callable[[], Any], check: Callable[[Samples], bool], timeout: float = 5.0
) -> Samples:
    """Scrape until `check` holds (counters move right after a response is sent)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            samples: Samples = await get()
        except aiohttp.ClientConnectionError:
            # SO_REUSEPORT: a connection the kernel handed to a worker as it was killed is
            # refused or reset; the next one goes to a live worker.
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.05)
            continue
        if check(samples):
            return samples
        if time.monotonic() > deadline:
            raise AssertionError(f"metrics never matched:\n{samples.text}")
        await asyncio.sleep(0.05)


@contextlib.asynccontextmanager
async def front(tmp_path: Path, fake_graph: FakeGraph, **overrides: Any) -> AsyncIterator[Front]:
    async with start_upstream() as site:
        settings = make_settings(tmp_path, fake_graph.url, upstream=site.url, **overrides)
        async with run_gateway(settings) as gw:
            yield gw


async def test_proxied_requests_pages_and_drops_are_counted(
    tmp_path: Path, fake_graph: FakeGraph
) -> None:
    async with front(tmp_path, fake_graph, consent="consent", consent_values=["yes"]) as gw:
        for path, headers in [
            ("/html", {**BROWSER, "Cookie": "consent=yes"}),  # tagged, PageView stored
            ("/html", BROWSER),  # tagged, no consent: PageView dropped
            ("/html", {**BOT, "Cookie": "consent=yes"}),  # untagged, bot
            ("/bytes/10", {}),
            ("/status/404", {}),
            ("/status/503", {}),
        ]:
            async with gw.session.get(gw.url + path, headers=headers) as resp:
                await resp.read()
        await gw.app[PAGES].drain()

        samples = await eventually(
            lambda: scrape(gw.session, gw.url),
            lambda s: s.get("capi_gateway_proxy_requests_total", status_class="5xx") == 1,
        )
    assert samples.get("capi_gateway_proxy_requests_total", status_class="2xx") == 4
    assert samples.get("capi_gateway_proxy_requests_total", status_class="4xx") == 1
    assert samples.get("capi_gateway_upstream_latency_seconds_count") == 6
    assert samples.get("capi_gateway_pages_tagged_total") == 2
    assert samples.get("capi_gateway_pages_skipped_total", reason="bot") == 1
    assert samples.get("capi_gateway_events_dropped_total", source="proxy", reason="bot") == 1
    assert samples.get("capi_gateway_events_dropped_total", source="proxy", reason="consent") == 1
    assert (
        samples.get(
            "capi_gateway_events_total", source="proxy", event_name="PageView", outcome="accepted"
        )
        == 1
    )
    # The scrape itself is no proxied request, and no `_created` noise next to counters.
    assert not samples.has("capi_gateway_proxy_requests_created")


async def test_beacons_count_as_collect_events_and_drops(
    tmp_path: Path, fake_graph: FakeGraph
) -> None:
    overrides = {"consent": "consent", "consent_values": ["yes"], "pageview_hold": 30}
    async with front(tmp_path, fake_graph, **overrides) as gw:
        page = await visit(gw, cookie="consent=yes")
        await gw.app[PAGES].drain()
        cart = collect_event("AddToCart", page.event_id + ".1")
        sent = [collect_event("PageView", page.event_id), cart]
        assert (await beacon(gw, page, sent)).status == 204
        assert (await beacon(gw, page, [cart])).status == 204
        # Consent withdrawn since the page was served: the beacon's events are dropped.
        page.cookies["consent"] = "no"
        assert (await beacon(gw, page, [cart])).status == 204

        samples = await eventually(
            lambda: scrape(gw.session, gw.url),
            lambda s: (
                s.get("capi_gateway_events_dropped_total", source="collect", reason="consent") == 1
            ),
        )

    def events(source: str, name: str, outcome: str) -> float:
        return samples.get(
            "capi_gateway_events_total", source=source, event_name=name, outcome=outcome
        )

    # The beacon's PageView completed the proxy's own: one event, counted once as new.
    assert events("proxy", "PageView", "accepted") == 1
    assert events("collect", "PageView", "duplicate") == 1
    assert events("collect", "PageView", "accepted") == 0
    assert events("collect", "AddToCart", "accepted") == 1
    assert events("collect", "AddToCart", "duplicate") == 1


async def test_events_accepted_duplicate_rejected_and_delivered(
    gateway: GatewayFactory, fake_graph: FakeGraph
) -> None:
    client = await gateway()
    event = web_event(event_id="order-1")
    for _ in range(2):
        resp = await client.post("/_capi/events", json={"data": [event]}, headers=auth())
        assert resp.status == 202
    bad = web_event(event_id="order-2", event_time=int(time.time()) + 86400)
    resp = await client.post("/_capi/events", json={"data": [bad]}, headers=auth())
    assert resp.status == 400

    samples = await eventually(
        lambda: scrape_client(client),
        # The request is counted when Meta answers, the row is marked right after.
        lambda s: (
            s.get("capi_gateway_delivered_events_total", mode="live") == 1
            and s.get("capi_gateway_queue_events", state="sent") == 1
        ),
    )
    labels = {"source": "api", "event_name": "Purchase"}
    assert samples.get("capi_gateway_events_total", **labels, outcome="accepted") == 1
    assert samples.get("capi_gateway_events_total", **labels, outcome="duplicate") == 1
    assert samples.get("capi_gateway_events_total", **labels, outcome="rejected") == 1
    assert samples.get("capi_gateway_send_requests_total", outcome="sent") == 1
    assert samples.get("capi_gateway_send_batch_size_count") == 1
    assert samples.get("capi_gateway_send_batch_size_sum") == 1
    assert samples.get("capi_gateway_send_latency_seconds_count") == 1
    # Read from the buffer at scrape time.
    assert samples.get("capi_gateway_queue_events", state="sent") == 1
    assert samples.get("capi_gateway_queue_events", state="pending") == 0
    assert time.time() - samples.get("capi_gateway_last_delivery_timestamp_seconds") < 60
    assert samples.get("capi_gateway_buffer_readable") == 1
    assert samples.get("capi_gateway_workers") == 1


async def test_delivery_errors_are_counted_by_meta_code(
    gateway: GatewayFactory, fake_graph: FakeGraph
) -> None:
    client = await gateway()
    fake_graph.fail_next(1, status=500, code=2, is_transient=True)
    fake_graph.fail_next(1, status=502)  # a load balancer's page: no Meta code
    resp = await client.post("/_capi/events", json={"data": [web_event()]}, headers=auth())
    assert resp.status == 202

    samples = await eventually(
        lambda: scrape_client(client),
        lambda s: s.get("capi_gateway_delivered_events_total", mode="live") == 1,
    )
    assert samples.get("capi_gateway_send_errors_total", code="2") == 1
    assert samples.get("capi_gateway_send_errors_total", code="http_502") == 1
    assert samples.get("capi_gateway_send_requests_total", outcome="retry") == 2
    assert samples.get("capi_gateway_send_requests_total", outcome="sent") == 1
    assert samples.get("capi_gateway_send_latency_seconds_count") == 3


async def test_refused_token_shows_in_queue_gauges(
    gateway: GatewayFactory, fake_graph: FakeGraph
) -> None:
    client = await gateway()
    fake_graph.fail_next(1, status=400, code=190)
    data = [web_event(event_id=f"e{i}") for i in range(3)]
    assert (await client.post("/_capi/events", json={"data": data}, headers=auth())).status == 202

    samples = await eventually(
        lambda: scrape_client(client),
        lambda s: s.get("capi_gateway_queue_events", state="blocked") == 3,
    )
    assert samples.get("capi_gateway_blocked_pixels") == 1
    assert samples.get("capi_gateway_send_errors_total", code="190") == 1
    assert samples.get("capi_gateway_send_requests_total", outcome="blocked") == 1


async def test_oldest_pending_age_while_meta_fails(
    gateway: GatewayFactory, fake_graph: FakeGraph
) -> None:
    client = await gateway(retry_base=5, retry_cap=10)
    fake_graph.fail_next(100, status=500, code=2, is_transient=True)
    resp = await client.post("/_capi/events", json={"data": [web_event()]}, headers=auth())
    assert resp.status == 202
    await asyncio.sleep(0.2)
    samples = await eventually(
        lambda: scrape_client(client),
        lambda s: s.get("capi_gateway_send_errors_total", code="2") >= 1,
    )
    waiting = samples.get("capi_gateway_queue_events", state="pending") + samples.get(
        "capi_gateway_queue_events", state="inflight"
    )
    assert waiting == 1
    assert 0.1 < samples.get("capi_gateway_queue_oldest_pending_age_seconds") < 60


async def test_rate_limit_waits_are_counted(gateway: GatewayFactory, fake_graph: FakeGraph) -> None:
    client = await gateway(pixel_rate=20, pixel_burst=1, batch_size=1)
    data = [web_event(event_id=f"r{i}") for i in range(3)]
    assert (await client.post("/_capi/events", json={"data": data}, headers=auth())).status == 202
    samples = await eventually(
        lambda: scrape_client(client),
        lambda s: s.get("capi_gateway_delivered_events_total", mode="live") == 3,
    )
    assert samples.get("capi_gateway_rate_limit_waits_total") >= 1
    assert samples.get("capi_gateway_rate_limit_wait_seconds_total") > 0
    assert samples.get("capi_gateway_send_batch_size_count") == 3


async def test_dry_run_records_count_separately(gateway: GatewayFactory) -> None:
    client = await gateway(dry_run=True)
    assert (
        await client.post("/_capi/events", json={"data": [web_event()]}, headers=auth())
    ).status == 202
    samples = await eventually(
        lambda: scrape_client(client),
        lambda s: s.get("capi_gateway_delivered_events_total", mode="dry_run") == 1,
    )
    assert samples.get("capi_gateway_delivered_events_total", mode="live") == 0
    assert samples.get("capi_gateway_send_requests_total", outcome="sent") == 0


async def test_openmetrics_when_asked_for(gateway: GatewayFactory) -> None:
    client = await gateway()
    resp = await client.get(
        "/_capi/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0"}
    )
    assert resp.status == 200
    assert resp.headers["Content-Type"].startswith("application/openmetrics-text")
    assert (await resp.text()).endswith("# EOF\n")


async def test_metrics_take_the_admin_token_as_bearer(gateway: GatewayFactory) -> None:
    client = await gateway(admin_token="scrape-secret-123456")
    resp = await client.get("/_capi/metrics")
    assert resp.status == 401
    assert (await resp.json())["error"] == "unauthorized"
    resp = await client.get("/_capi/metrics", headers={"Authorization": "Bearer nope"})
    assert resp.status == 401
    resp = await client.get(
        "/_capi/metrics", headers={"Authorization": "Bearer scrape-secret-123456"}
    )
    assert resp.status == 200
    assert "scrape-secret-123456" not in await resp.text()


async def test_custom_event_names_are_capped() -> None:
    metrics = Metrics()
    for i in range(60):
        metrics.event("api", f"Custom{i}", "accepted")
    metrics.event("api", "Purchase", "accepted")
    metrics.event("api", "NeverSeenBefore", "rejected")
    body, _ = await render(metrics, None, "")
    samples = Samples(body.decode())
    names = {
        dict(labels)["event_name"]
        for (name, labels) in samples.values
        if name == "capi_gateway_events_total"
    }
    assert len(names - {"other", "Purchase"}) == 50
    other = {"source": "api", "event_name": "other"}
    assert samples.get("capi_gateway_events_total", **other, outcome="accepted") == 10
    assert samples.get("capi_gateway_events_total", **other, outcome="rejected") == 1
    # Without a buffer to read, the scrape still answers and says so.
    assert samples.get("capi_gateway_buffer_readable") == 0


# -- several workers --------------------------------------------------------------------------


async def _fresh_get(url: str, **headers: str) -> tuple[int, str]:
    # A new connection per request: SO_REUSEPORT spreads connections, not requests.
    async with (
        aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as s,
        s.get(url, headers=headers) as resp,
    ):
        return resp.status, await resp.text()


async def _fresh_post(url: str, body: Any) -> int:
    async with (
        aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as s,
        s.post(url, json=body, headers=auth()) as resp,
    ):
        await resp.read()
        return resp.status


def _accepted_per_worker(directory: Path) -> dict[str, float]:
    """Accepted Purchase events in each worker's own counter file."""
    out: dict[str, float] = {}
    for path in directory.glob("counter_*.db"):
        for metric in MultiProcessCollector.merge([str(path)]):  # type: ignore[no-untyped-call]
            for sample in metric.samples:
                if (
                    sample.name == "capi_gateway_events_total"
                    and sample.labels.get("outcome") == "accepted"
                ):
                    out[path.stem] = out.get(path.stem, 0.0) + sample.value
    return out


@pytest.mark.timeout(90)
async def test_two_workers_scrapes_add_up_both(tmp_path: Path) -> None:
    buffer = tmp_path / "outbox.db"
    with stop_at_exit() as procs:
        fake = start_fake(tmp_path / "graph.log", token=TOKEN)
        procs.append(fake.proc)
        gw = start_gateway(
            buffer,
            fake.url,
            tmp_path / "gateway.log",
            pixel=PIXEL,
            token=TOKEN,
            api_key=API_KEY,
            env={"CAPIGW_WORKERS": "2", "CAPIGW_POLL_INTERVAL": "0.05"},
        )
        procs.append(gw.proc)
        async with aiohttp.ClientSession() as session:
            await wait_healthy(gw, session)
        started = time.monotonic()

        async def worker_pids(want: int) -> set[int]:
            seen: set[int] = set()
            for _ in range(100):
                status, text = await _fresh_get(f"{gw.url}/_capi/status")
                assert status == 200, text
                seen.add(int(json.loads(text)["pid"]))
                if len(seen) >= want:
                    break
            return seen

        pids = await worker_pids(2)
        assert len(pids) == 2, tail(gw.log)

        for i in range(30):
            body = {"data": [web_event(event_id=f"w{i}")]}
            assert await _fresh_post(f"{gw.url}/_capi/events", body) == 202

        # Both workers took events: each has its own counter file with some of them.
        per_worker = _accepted_per_worker(buffer.with_name("outbox.db.metrics"))
        assert len(per_worker) == 2 and all(v > 0 for v in per_worker.values()), per_worker
        assert sum(per_worker.values()) == 30

        accepted = {"source": "api", "event_name": "Purchase", "outcome": "accepted"}
        for _ in range(10):
            status, text = await _fresh_get(f"{gw.url}/_capi/metrics")
            assert status == 200, text
            samples = Samples(text)
            assert samples.get("capi_gateway_events_total", **accepted) == 30
            assert samples.get("capi_gateway_workers") == 2

        async def fetch() -> Samples:
            status, text = await _fresh_get(f"{gw.url}/_capi/metrics")
            assert status == 200, text
            return Samples(text)

        await eventually(
            fetch,
            lambda s: (
                s.get("capi_gateway_delivered_events_total", mode="live") == 30
                and s.get("capi_gateway_queue_events", state="sent") == 30
            ),
            timeout=15,
        )

        # A worker dies: its replacement counts from zero, its own counts stay in the total,
        # and its live gauge goes (the supervisor marks it dead).
        await asyncio.sleep(max(0.0, 2.5 - (time.monotonic() - started)))
        victim = pids.pop()
        os.kill(victim, signal.SIGKILL)
        samples = await eventually(
            fetch,
            lambda s: (
                s.get("capi_gateway_workers") == 2
                and victim not in {int(p) for p in _live_pids(buffer)}
            ),
            timeout=20,
        )
        assert samples.get("capi_gateway_events_total", **accepted) == 30
        stop_process(gw.proc, grace=10)
    assert gw.proc.returncode == 0, tail(gw.log)
    assert "Traceback" not in gw.log.read_text()


def _live_pids(buffer: Path) -> list[str]:
    directory = buffer.with_name(buffer.name + ".metrics")
    return [p.stem.rsplit("_", 1)[1] for p in directory.glob("gauge_livesum_*.db")]
