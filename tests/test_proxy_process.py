"""The proxy as it runs in production: `capi-gateway serve` and the site as subprocesses.

Memory is measured on the gateway's own process while 50 MB stream through it each way;
framing is checked on raw sockets (an HTTP/1.0 client, a client that vanishes mid-download);
`--workers 2` is checked to serve from both workers.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import hashlib
import http.client
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest

from gateway.delivery import schema
from tests.conftest import UA
from tests.fakes.processes import (
    HOST,
    Gateway,
    free_port,
    gateway_cmd,
    listening_url,
    serve_args,
    spawn,
    stop_process,
    tail,
)
from tests.fakes.upstream import MIB, parse_responses, raw_exchange, stream_digest

try:
    import psutil
except ImportError:  # psutil comes with the bench extra
    psutil = None

TRANSFER_MB = 50
RSS_BUDGET = 40 * MIB


@dataclass
class Site:
    """The upstream subprocess."""

    proc: subprocess.Popen[bytes]
    url: str


def start_site(log: Path) -> Site:
    proc = spawn([sys.executable, "-m", "tests.fakes.upstream", "--port", "0"], log)
    return Site(proc, listening_url(proc, log, "the upstream", 20))


def start_proxy(
    tmp: Path, upstream: str, *more: str, port: int = 0, buffer: Path | None = None
) -> Gateway:
    port = port or free_port()
    log = tmp / f"gateway-{port}.log"
    buffer = buffer or tmp / f"outbox-{port}.db"
    args = serve_args(port, buffer, "--upstream", upstream, "--dry-run", *more)
    gw = Gateway(spawn([*gateway_cmd(), *args], log), f"http://{HOST}:{port}", log)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if gw.proc.poll() is not None:
            raise AssertionError(f"the gateway exited with {gw.proc.returncode}:\n{tail(log)}")
        conn = http.client.HTTPConnection(HOST, port, timeout=2)
        with contextlib.suppress(OSError):
            conn.request("GET", "/_capi/health")
            if conn.getresponse().status == 200:
                conn.close()
                return gw
        conn.close()
        time.sleep(0.05)
    stop_process(gw.proc)
    raise AssertionError(f"the gateway did not become healthy:\n{tail(log)}")


@pytest.fixture(scope="module")
def procs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Site, Gateway]]:
    tmp = tmp_path_factory.mktemp("proxy-process")
    site = start_site(tmp / "upstream.log")
    try:
        gw = start_proxy(tmp, site.url)
    except BaseException:
        stop_process(site.proc)
        raise
    try:
        yield site, gw
    finally:
        stop_process(gw.proc, grace=5)
        stop_process(site.proc, grace=2)


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(
        auto_decompress=False,
        cookie_jar=aiohttp.DummyCookieJar(),
        headers={"User-Agent": UA},
        timeout=aiohttp.ClientTimeout(total=40),
    ) as s:
        yield s


def rss(pid: int) -> int:
    """Resident set size of `pid` in bytes."""
    if psutil is not None:
        return int(psutil.Process(pid).memory_info().rss)
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


@contextlib.asynccontextmanager
async def peak_rss(pid: int) -> AsyncIterator[list[int]]:
    """Sample the RSS of `pid` every 10 ms; yields [baseline, peak] (peak filled at the end)."""
    result = [rss(pid), 0]
    peak = result[0]
    stop = asyncio.Event()

    async def sample() -> None:
        nonlocal peak
        while not stop.is_set():
            peak = max(peak, rss(pid))
            await asyncio.sleep(0.01)

    task = asyncio.create_task(sample())
    try:
        yield result
    finally:
        stop.set()
        await task
        result[1] = max(peak, rss(pid))


async def warm_up(session: aiohttp.ClientSession, gw: Gateway) -> None:
    """Let the gateway allocate what any transfer needs before the baseline is taken."""
    for _ in range(3):
        async with session.get(f"{gw.url}/stream/2") as resp:
            await resp.read()
        async with session.post(f"{gw.url}/upload", data=b"x" * MIB) as resp:
            await resp.read()


async def test_streamed_download_keeps_memory_flat(
    procs: tuple[Site, Gateway], session: aiohttp.ClientSession
) -> None:
    _, gw = procs
    await warm_up(session, gw)
    digest = hashlib.sha256()
    received = 0
    async with (
        peak_rss(gw.proc.pid) as memory,
        session.get(f"{gw.url}/stream/{TRANSFER_MB}") as resp,
    ):
        assert resp.status == 200 and resp.content_length is None
        first = await resp.content.readexactly(MIB)
        digest.update(first)
        received += len(first)
        # A reader that stalls: a proxy without backpressure would now pull the whole
        # body from the site into memory.
        await asyncio.sleep(0.5)
        async for chunk in resp.content.iter_chunked(256 * 1024):
            digest.update(chunk)
            received += len(chunk)
    assert received == TRANSFER_MB * MIB
    assert digest.hexdigest() == stream_digest(TRANSFER_MB)
    baseline, peak = memory
    print(f"[rss] {(peak - baseline) / MIB:.1f} MiB over {baseline / MIB:.1f}")
    assert peak - baseline < RSS_BUDGET, f"RSS grew by {(peak - baseline) / MIB:.1f} MiB"


async def test_streamed_upload_keeps_memory_flat(
    procs: tuple[Site, Gateway], session: aiohttp.ClientSession
) -> None:
    _, gw = procs
    await warm_up(session, gw)
    block = bytes(range(256)) * 1024
    sent = hashlib.sha256()

    async def body() -> AsyncIterator[bytes]:
        for _ in range(TRANSFER_MB * MIB // len(block)):
            sent.update(block)
            yield block

    async with (
        peak_rss(gw.proc.pid) as memory,
        session.post(f"{gw.url}/upload", data=body()) as resp,
    ):
        assert resp.status == 200
        answer = await resp.json()
    assert answer["length"] == TRANSFER_MB * MIB
    assert answer["sha256"] == sent.hexdigest()
    baseline, peak = memory
    print(f"[rss] {(peak - baseline) / MIB:.1f} MiB over {baseline / MIB:.1f}")
    assert peak - baseline < RSS_BUDGET, f"RSS grew by {(peak - baseline) / MIB:.1f} MiB"


async def _events(session: aiohttp.ClientSession, site: Site) -> list[str]:
    async with session.get(f"{site.url}/_up/events") as resp:
        events: list[str] = await resp.json()
        return events


async def test_client_disconnect_mid_download_closes_the_upstream_request(
    procs: tuple[Site, Gateway], session: aiohttp.ClientSession
) -> None:
    site, gw = procs
    before = len(await _events(session, site))
    port = int(gw.url.rsplit(":", 1)[1])
    reader, writer = await asyncio.open_connection(HOST, port)
    # 50 MiB at one 64 KiB block per 5 ms: some four seconds if nobody stopped it.
    writer.write(b"GET /stream/50?delay_ms=5 HTTP/1.1\r\nHost: shop.example\r\n\r\n")
    got = 0
    while got < 512 * 1024:
        chunk = await asyncio.wait_for(reader.read(65536), 5)
        assert chunk
        got += len(chunk)
    writer.transport.abort()  # the visitor closed the tab
    began = time.monotonic()
    while time.monotonic() - began < 3:
        new = (await _events(session, site))[before:]
        if new:
            break
        await asyncio.sleep(0.05)
    assert new and new[0].startswith("stream-aborted:"), new
    sent = int(new[0].split(":")[1])
    assert sent < 25 * MIB  # stopped early, not streamed to the end into nowhere


@pytest.mark.parametrize("connection", ["", "Connection: keep-alive\r\n"])
async def test_http10_client_gets_a_chunked_upstream_response_unchunked(
    procs: tuple[Site, Gateway], connection: str
) -> None:
    _, gw = procs
    request = f"GET /stream/1 HTTP/1.0\r\nHost: shop.example\r\n{connection}\r\n"
    raw = await raw_exchange(gw.url, request.encode(), timeout=3)
    (resp,) = parse_responses(raw, ["GET"])
    assert resp.status == 200
    assert resp.framing in ("close", "length"), resp.headers
    assert hashlib.sha256(resp.body).hexdigest() == stream_digest(1)


@pytest.mark.parametrize("connection", ["", "Connection: keep-alive\r\n"])
async def test_http10_client_gets_an_injected_page(
    procs: tuple[Site, Gateway], connection: str
) -> None:
    _, gw = procs
    request = (
        f"GET /html?enc=gzip HTTP/1.0\r\nHost: shop.example\r\nUser-Agent: {UA}\r\n{connection}\r\n"
    )
    raw = await raw_exchange(gw.url, request.encode(), timeout=3)
    (resp,) = parse_responses(raw, ["GET"])
    assert resp.status == 200 and resp.framing == "close"
    assert gzip.decompress(resp.body).count(b'<script src="/_capi/px.js') == 1


async def test_every_response_parses_strictly(procs: tuple[Site, Gateway]) -> None:
    _, gw = procs
    paths = ["/stream/1", "/html?enc=br", "/bytes/5000", "/status/204", "/status/304", "/sse"]
    request = "".join(f"GET {p} HTTP/1.1\r\nHost: shop.example\r\n\r\n" for p in paths)
    request += "HEAD /bytes/10 HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"
    answers = parse_responses(
        await raw_exchange(gw.url, request.encode(), timeout=10), ["GET"] * len(paths) + ["HEAD"]
    )
    assert [a.status for a in answers] == [200, 200, 200, 204, 304, 200, 200]


@pytest.mark.skipif(psutil is None, reason="psutil (bench extra) tells the workers apart")
async def test_two_workers_both_serve(
    procs: tuple[Site, Gateway], tmp_path: Path, session: aiohttp.ClientSession
) -> None:
    assert psutil is not None
    site, _ = procs
    # A fresh buffer: the workers must not trip over each other creating it.
    port = free_port()
    buffer = tmp_path / "shared.db"
    gw = start_proxy(tmp_path, site.url, "--workers", "2", port=port, buffer=buffer)
    try:
        parent = psutil.Process(gw.proc.pid)
        deadline = time.monotonic() + 10
        while len(parent.children()) < 2 and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        workers = parent.children()
        assert len(workers) == 2

        def listening(w: psutil.Process) -> bool:
            conns = w.net_connections("tcp")
            return any(c.status == psutil.CONN_LISTEN and c.laddr.port == port for c in conns)

        # SO_REUSEPORT spreads connections only over workers that have bound already.
        while not all(listening(w) for w in workers) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        site_port = int(site.url.rsplit(":", 1)[1])

        async def one(i: int) -> int:
            # A fresh connection each: SO_REUSEPORT spreads connections, not requests.
            async with (
                aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as s,
                s.get(f"{gw.url}/echo?i={i}") as resp,
            ):
                await resp.read()
                return resp.status

        assert await asyncio.gather(*(one(i) for i in range(40))) == [200] * 40
        # Each worker keeps its own pooled connections to the site for a few seconds.
        used = [
            [c for c in w.net_connections("tcp") if c.raddr and c.raddr.port == site_port]
            for w in workers
        ]
        assert all(used), used
    finally:
        stop_process(gw.proc, grace=5)
    assert gw.proc.returncode == 0, tail(gw.log)


async def test_fresh_buffer_opened_by_several_workers_at_once(tmp_path: Path) -> None:
    """Workers starting together on a new buffer all get the one schema, none an error."""
    for round_ in range(10):
        path = tmp_path / f"outbox-{round_}.db"
        conns = await asyncio.gather(*(schema.connect(path) for _ in range(4)))
        for conn in conns:
            async with conn.execute("PRAGMA user_version") as cur:
                assert (await cur.fetchone()) == (schema.SCHEMA_VERSION,)
            await conn.close()
