"""The asset lane: assets are relayed before the Application, with every pass-through rule.

Each test counts what reached the Application (the router, the request id middleware, the
Visitor, the page path) by wrapping the lane's `full` handler, and what the lane relayed
(`taken`) or handed back after seeing an HTML answer (`handed_back`).
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from prometheus_client import CollectorRegistry, Histogram, generate_latest

from gateway.app import reload
from gateway.edge.appkeys import RUNTIME
from gateway.edge.lane import Lane
from gateway.edge.visitor import SITE_LOOKUP, VISITOR_RULES, Visitor, VisitorRules
from gateway.siteapp import LANE
from gateway.tally import FoldFirst, ProxyTally
from tests.conftest import UA, make_settings
from tests.edge.conftest import StartGateway
from tests.edge.test_passthrough import raw_origin
from tests.edge.test_sites import HOST_B, site_tables
from tests.fakes.graph import FakeGraph
from tests.fakes.upstream import (
    Front,
    Upstream,
    parse_responses,
    raw_exchange,
    run_gateway,
    seeded_bytes,
    start_upstream,
)

Serve = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
ASSET = {"User-Agent": UA, "Accept": "*/*", "Sec-Fetch-Dest": "script"}


class Reached:
    """Counts the requests the lane left to the Application."""

    def __init__(self, lane: Lane) -> None:
        self.count = 0
        full = lane.full

        async def counting(request: web.Request) -> web.StreamResponse:
            self.count += 1
            return await full(request)

        lane.full = counting


def watch(gw: Front) -> tuple[Lane, Reached]:
    lane = gw.app[LANE]
    return lane, Reached(lane)


@contextlib.asynccontextmanager
async def serving(serve: Serve) -> AsyncIterator[str]:
    """A site of `serve` (raw asyncio streams) on loopback; its URL."""
    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    async with server:
        yield f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"


async def get(gw: Front, path: str, **headers: str) -> tuple[int, Any, bytes]:
    async with gw.session.get(
        gw.url + path, headers={**ASSET, **headers}, allow_redirects=False
    ) as resp:
        return resp.status, resp.headers, await resp.read()


async def test_the_server_calls_the_lane_and_an_asset_never_reaches_the_application(
    gw: Front, site: Upstream
) -> None:
    # Pins the internal hook: aiohttp's server calls `app._handle`, which the lane shadows.
    lane, reached = watch(gw)
    for _ in range(3):
        status, headers, body = await get(gw, "/bytes/100")
        assert status == 200 and body == seeded_bytes(100)
        assert headers["Content-Length"] == "100"
    assert (lane.taken, lane.handed_back, reached.count) == (3, 0, 0)
    # The site saw the visitor's request as the full path sends it.
    seen = site.requests[-1]
    assert seen.header("X-Forwarded-For") == ["127.0.0.1"]
    assert seen.header("X-Forwarded-Proto") == ["http"]
    # The gateway's own endpoints are the Application's.
    async with gw.session.get(gw.url + "/_capi/health") as resp:
        assert resp.status == 200 and "X-Request-ID" in resp.headers
    assert reached.count == 1


async def test_an_upgrade_goes_to_the_application(gw: Front) -> None:
    lane, reached = watch(gw)
    sent = {**ASSET, "Upgrade": "h2c", "Connection": "Upgrade"}
    async with gw.session.get(gw.url + "/bytes/10", headers=sent) as resp:
        assert resp.status == 200 and await resp.read() == seeded_bytes(10)
    assert (lane.taken, reached.count) == (0, 1)


@pytest.mark.parametrize(
    "headers",
    [{"Sec-Fetch-Dest": "document"}, {"Accept": "text/html,*/*;q=0.8", "Sec-Fetch-Dest": ""}],
    ids=["navigation", "html-accept"],
)
async def test_a_navigation_takes_the_lane_and_its_page_the_page_path(
    gw: Front, headers: dict[str, str]
) -> None:
    # Issue 19: a page's request reaches the site without the Application in front of it.
    lane, reached = watch(gw)
    sent = {**ASSET, **headers}
    if sent["Sec-Fetch-Dest"] == "":
        del sent["Sec-Fetch-Dest"]
    async with gw.session.get(gw.url + "/bytes/10", headers=sent) as resp:
        assert resp.status == 200 and await resp.read() == seeded_bytes(10)
    assert (lane.taken, lane.handed_back, reached.count) == (1, 0, 0)
    async with gw.session.get(gw.url + "/html", headers=sent) as resp:
        assert resp.status == 200 and "_fbp=" in resp.headers.get("Set-Cookie", "")
        page = await resp.read()
    assert b"/_capi/px.js" in page.split(b"</head>")[0]
    assert (lane.taken, lane.handed_back, reached.count) == (1, 1, 0)


async def test_an_html_answer_leaves_the_lane_for_the_page_path(gw: Front) -> None:
    lane, reached = watch(gw)
    status, _, body = await get(gw, "/html", **{"Sec-Fetch-Dest": "empty"})
    assert status == 200 and b"<script" not in body.split(b"</head>")[0]
    assert (lane.taken, lane.handed_back, reached.count) == (0, 1, 0)
    # The page path counted it as the Application would: a fragment left untagged.
    async with gw.session.get(gw.url + "/_capi/metrics") as resp:
        text = await resp.text()
    assert 'capi_gateway_pages_skipped_total{reason="fragment"} 1.0' in text


async def test_head_304_location_and_hop_by_hop_on_the_lane(gw: Front) -> None:
    lane, reached = watch(gw)
    async with gw.session.head(gw.url + "/bytes/100", headers=ASSET) as resp:
        assert resp.status == 200 and resp.headers["Content-Length"] == "100"
        assert await resp.read() == b""
    status, headers, _ = await get(gw, "/redirect?to=self", Host="shop.example")
    assert status == 302 and headers["Location"].startswith("http://shop.example/")
    status, headers, _ = await get(gw, "/hop")
    assert status == 200
    for name in ("X-Secret", "X-Other", "Keep-Alive", "Proxy-Authenticate", "Trailer"):
        assert name not in headers
    status, headers, body = await get(gw, "/status/204")
    assert status == 204 and body == b"" and "Content-Length" not in headers
    assert (lane.taken, reached.count) == (4, 0)


async def test_a_304_for_our_weak_etag_stays_weak_on_the_lane(start: StartGateway) -> None:
    async with raw_origin(b"304 Not Modified", [b'ETag: "v1"']) as origin:
        gw = await start(upstream=origin)
        lane, reached = watch(gw)
        status, headers, body = await get(gw, "/app.css", **{"If-None-Match": 'W/"v1"'})
        assert status == 304 and headers["ETag"] == 'W/"v1"' and body == b""
        status, headers, _ = await get(gw, "/app.css", **{"If-None-Match": '"v1"'})
        assert headers["ETag"] == '"v1"'
        assert (lane.taken, reached.count) == (2, 0)


async def test_http10_clients_on_the_lane(gw: Front) -> None:
    lane, reached = watch(gw)
    request = (
        b"GET /stream/1 HTTP/1.0\r\nHost: a\r\nConnection: keep-alive\r\n\r\n"  # chunked origin
    )
    (resp,) = parse_responses(await raw_exchange(gw.url, request, timeout=5), ["GET"])
    assert resp.status == 200 and resp.framing == "close" and len(resp.body) == 1 << 20
    request = (
        b"GET /bytes/10 HTTP/1.0\r\nHost: a\r\nConnection: keep-alive\r\n\r\n"
        b"GET /bytes/20 HTTP/1.0\r\nHost: a\r\n\r\n"
    )
    first, second = parse_responses(await raw_exchange(gw.url, request), ["GET", "GET"])
    assert first.header("Connection") == ["keep-alive"] and first.body == seeded_bytes(10)
    assert second.body == seeded_bytes(20)
    assert (lane.taken, reached.count) == (3, 0)


async def test_head_of_a_chunked_answer_has_no_body(start: StartGateway) -> None:
    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                writer.write(
                    b"HTTP/1.1 200 OK\r\nContent-Type: text/css\r\n"
                    b"Transfer-Encoding: chunked\r\n\r\n"
                    + (b"" if head.startswith(b"HEAD ") else b"3\r\nabc\r\n0\r\n\r\n")
                )
                await writer.drain()
        writer.close()

    async with serving(serve) as origin:
        gw = await start(upstream=origin)
        lane, _ = watch(gw)
        request = (
            b"HEAD /a.css HTTP/1.1\r\nHost: a\r\n\r\n"
            b"GET /a.css HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"
        )
        head, after = parse_responses(await raw_exchange(gw.url, request), ["HEAD", "GET"])
        assert head.status == 200 and head.body == b""
        assert after.body == b"abc"  # nothing of the HEAD's leaked into the next answer
        assert lane.taken == 2


async def test_a_chunked_answer_is_rechunked_for_http11(gw: Front) -> None:
    lane, _ = watch(gw)
    request = b"GET /stream/1 HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"
    (resp,) = parse_responses(await raw_exchange(gw.url, request, timeout=5), ["GET"])
    assert resp.status == 200 and resp.framing == "chunked" and len(resp.body) == 1 << 20
    assert lane.taken == 1


async def test_too_large_headers_leave_the_lane_for_the_431(
    start: StartGateway, site: Upstream
) -> None:
    gw = await start(max_request_headers_kb=4)
    lane, reached = watch(gw)
    filler = {f"X-Fill-{i}": "x" * 500 for i in range(10)}
    status, headers, _ = await get(gw, "/bytes/10", **filler)
    assert status == 431 and "X-Request-ID" in headers
    assert site.requests == [] and (lane.taken, reached.count) == (0, 1)


async def test_a_client_past_its_share_gets_the_503_from_the_application(
    start: StartGateway,
) -> None:
    gw = await start(upstream_connections_per_client=1)
    lane, reached = watch(gw)
    slow = asyncio.create_task(get(gw, "/slow-headers?s=0.5"))
    await asyncio.sleep(0.2)
    status, headers, _ = await get(gw, "/bytes/10")
    assert status == 503 and headers["Retry-After"] == "1"
    assert (await slow)[0] == 200
    assert (lane.taken, reached.count) == (1, 1)
    assert gw.app[LANE].holder.single is not None
    proxy = gw.app[LANE].holder.single.proxy
    assert proxy is not None and proxy.shares.held("127.0.0.1") == 0


async def test_an_unreachable_site_is_the_gateways_502_with_a_request_id(
    start: StartGateway,
) -> None:
    async with raw_origin(b"200 OK", []) as origin:
        pass  # closed: nothing listens there any more
    gw = await start(upstream=origin)
    _, reached = watch(gw)
    status, headers, _ = await get(gw, "/app.css", Accept="application/json")
    assert status == 502 and len(headers["X-Request-ID"]) == 32
    assert reached.count == 0


async def test_hosts_pick_their_sites_on_the_lane(tmp_path: Path, fake_graph: FakeGraph) -> None:
    async with start_upstream() as a, start_upstream() as b:
        settings = make_settings(
            tmp_path, fake_graph.url, pixel_id=[], events_api_keys=[], sites=site_tables(a, b)
        )
        async with run_gateway(settings) as gw:
            lane, reached = watch(gw)
            assert (await get(gw, "/bytes/5", Host="shop.alpha.example"))[0] == 200
            assert (await get(gw, "/bytes/6", Host=HOST_B))[0] == 200
            assert [r.path for r in a.requests] == ["/bytes/5"]
            assert [r.path for r in b.requests] == ["/bytes/6"]
            assert (await get(gw, "/bytes/7", Host="nobody.example"))[0] == 421
            assert (lane.taken, reached.count) == (2, 1)
            async with gw.session.get(gw.url + "/_capi/metrics") as resp:
                text = await resp.text()
            alpha = 'capi_gateway_site_proxy_requests_total{site="alpha",status_class="2xx"} 1.0'
            assert alpha in text


RULE = """
[[rule]]
name = "download"
event = "Lead"
method = "GET"
path = "/bytes/{n}"
"""


async def test_a_rule_added_by_a_reload_takes_its_path_off_the_lane(
    start: StartGateway, tmp_path: Path
) -> None:
    rules = tmp_path / "rules"
    rules.mkdir()
    gw = await start(rules=rules)
    lane, reached = watch(gw)
    assert (await get(gw, "/bytes/10"))[0] == 200
    assert (lane.taken, reached.count) == (1, 0)
    (rules / "download.toml").write_text(RULE)
    await reload(gw.app, gw.app[RUNTIME].settings)
    assert (await get(gw, "/bytes/10"))[0] == 200
    assert (await get(gw, "/other.css"))[0] == 404  # no rule there: still the lane
    assert (lane.taken, reached.count) == (2, 1)


async def test_metrics_count_what_the_lane_relayed(gw: Front) -> None:
    lane, reached = watch(gw)
    for path in ("/bytes/10", "/bytes/10", "/status/404", "/status/503"):
        await get(gw, path)
    assert (lane.taken, reached.count) == (4, 0)
    async with gw.session.get(gw.url + "/_capi/metrics") as resp:
        text = await resp.text()
    assert 'capi_gateway_proxy_requests_total{status_class="2xx"} 2.0' in text
    assert 'capi_gateway_proxy_requests_total{status_class="4xx"} 1.0' in text
    assert 'capi_gateway_proxy_requests_total{status_class="5xx"} 1.0' in text
    assert "capi_gateway_upstream_latency_seconds_count 4.0" in text


def test_a_folded_tally_reads_as_observed_series() -> None:
    def series(record: Callable[[Histogram], None]) -> str:
        registry = CollectorRegistry()
        latency = Histogram("lat", "", ["site"], buckets=(0.01, 0.1, 1.0), registry=registry)
        record(latency)
        return generate_latest(registry).decode()

    values = [0.001, 0.01, 0.05, 0.1, 0.5, 2.0, 2.0]

    def observed(latency: Histogram) -> None:
        for v in values:
            latency.labels("").observe(v)

    def tallied(latency: Histogram) -> None:
        from prometheus_client import Counter

        unused = CollectorRegistry()
        tally = ProxyTally(
            Counter("a", "", ["status_class"], registry=unused),
            Counter("b", "", ["site", "status_class"], registry=unused),
            latency,
            (0.01, 0.1, 1.0),
        )
        tally._timer = object()  # type: ignore[assignment]  # hold the fold back
        for v in values:
            tally.latency(v, "")
        tally._timer = None
        FoldFirst(tally.fold).collect()

    assert series(tallied) == series(observed)


async def test_counts_wait_for_no_scrape_to_reach_the_series() -> None:
    from gateway.metrics import Metrics

    metrics = Metrics()
    metrics.proxied(200)
    # Inside a loop the fold is batched: the registry's own collection folds first.
    assert 'capi_gateway_proxy_requests_total{status_class="2xx"} 1.0' in (
        generate_latest(metrics.registry).decode()
    )
    metrics.proxied(200)
    await asyncio.sleep(0.6)  # FOLD_INTERVAL: another worker's scrape would see it now
    assert metrics._proxied.labels("2xx")._value.get() == 2


async def test_a_navigations_page_is_prepared_while_the_site_answers(start: StartGateway) -> None:
    # Issue 19: the event id, token, triggers and cookies need only the request, so they are
    # worked out while the site answers, not after: a UUIDv7 event id and an `_fbp` carry
    # the millisecond they were made in.
    answered: list[float] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
            while True:
                await reader.readuntil(b"\r\n\r\n")
                await asyncio.sleep(0.3)  # the site at work
                answered.append(time.time())
                page = b"<!DOCTYPE html><html><head><title>t</title></head><body></body></html>"
                writer.write(
                    b"HTTP/1.1 200 OK\r\nContent-Type: text/html; charset=utf-8\r\n"
                    b"Content-Length: %d\r\n\r\n%s" % (len(page), page)
                )
                await writer.drain()
        writer.close()

    async with serving(serve) as origin:
        gw = await start(upstream=origin)
        lane, reached = watch(gw)
        made: dict[str, float] = {}
        for dest in ("document", "empty"):  # a navigation; a fetch of HTML (not one)
            headers = {**ASSET, "Sec-Fetch-Dest": dest, "Accept": "text/html"}
            async with gw.session.get(gw.url + "/", headers=headers) as resp:
                page = await resp.text()
                fbp = resp.cookies.get("_fbp")
            if dest == "document":
                assert fbp is not None
                found = re.search(r'data-event-id="([0-9a-f-]{36})"', page)
                assert found is not None
                made["event id"] = int(found.group(1).replace("-", "")[:12], 16) / 1000
                made["_fbp"] = int(fbp.value.split(".")[2]) / 1000
            else:
                assert "data-event-id" not in page  # a fragment: untagged, as before
        assert (lane.handed_back, lane.prepared, reached.count) == (2, 1, 0)
        for what, at in made.items():
            # Made before the site answered (a clock tick of slack), not once it had.
            assert at <= answered[0] - 0.2, f"{what} made {answered[0] - at:.3f} s before"
        # With injection off nothing will be tagged: nothing is prepared for it either.
        off = await start(upstream=origin, inject=False)
        lane, _ = watch(off)
        headers = {**ASSET, "Sec-Fetch-Dest": "document", "Accept": "text/html"}
        async with off.session.get(off.url + "/", headers=headers) as resp:
            assert "data-event-id" not in await resp.text()
        assert (lane.handed_back, lane.prepared) == (1, 0)


FORWARDING = [
    {},
    {"X-Forwarded-For": "203.0.113.7", "X-Forwarded-Proto": "https", "X-Forwarded-Host": HOST_B},
    {"X-Forwarded-For": "198.51.100.1, 203.0.113.9", "X-Forwarded-Proto": "https, http"},
    {"Forwarded": "for=192.0.2.60;proto=https"},
    {"X-Forwarded-Host": "www.alpha.example, evil.example", "X-Forwarded-For": "unknown"},
    {"Host": HOST_B},
]


@pytest.mark.parametrize("trusted", [["127.0.0.0/8"], []], ids=["trusted-peer", "untrusted"])
async def test_a_navigations_visitor_is_made_of_what_the_lane_read(
    tmp_path: Path, fake_graph: FakeGraph, monkeypatch: pytest.MonkeyPatch, trusted: list[str]
) -> None:
    # The lane reads trust, scheme, host, site and address once (house rule: a fact about a
    # request is computed once); the Visitor it settles must be the one `Visitor.of` reads
    # off the fields, forwarded or not, whichever site the host names.
    made: list[tuple[Visitor, Visitor, str | None, str | None]] = []
    known = Visitor.known

    def checked(request: web.Request, rules: VisitorRules, **facts: Any) -> Visitor:
        who = known(request, rules, **facts)
        app = request.app
        read = Visitor.of(request, app[VISITOR_RULES](), app.get(SITE_LOOKUP))
        made.append((who, read, who.client_ip, read.client_ip))
        return who

    monkeypatch.setattr(Visitor, "known", checked)
    async with start_upstream() as a, start_upstream() as b:
        settings = make_settings(
            tmp_path,
            fake_graph.url,
            pixel_id=[],
            events_api_keys=[],
            sites=site_tables(a, b),
            trusted_proxies=trusted,
        )
        async with run_gateway(settings) as gw:
            lane, reached = watch(gw)
            for extra in FORWARDING:
                sent = {**ASSET, "Sec-Fetch-Dest": "document", "Host": "www.alpha.example"}
                async with gw.session.get(gw.url + "/html", headers={**sent, **extra}) as resp:
                    assert resp.status == 200
    assert len(made) == len(FORWARDING) == lane.prepared and reached.count == 0
    for who, read, ip, read_ip in made:
        assert who == read and who._rules is read._rules and ip == read_ip
    # Forwarded facts count only from a trusted peer.
    assert [ip for _, _, ip, _ in made][1:4] == (
        ["203.0.113.7", "203.0.113.9", "192.0.2.60"] if trusted else ["127.0.0.1"] * 3
    )
    assert [who.site for who, *_ in made][:2] == ["alpha", "beta" if trusted else "alpha"]
