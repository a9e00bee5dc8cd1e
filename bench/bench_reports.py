"""Insights: report latency on a big store (SQLite beside PostgreSQL) and what recording
touchpoints costs the proxy per tagged page (touchpoints on beside off), in one run.

Part 1, reports. A store with `--events` facts (default 1,000,000) and `--visits`
touchpoints (200,000) of `--visitors` visitors over the last 30 days, written straight into
the insights tables (executemany on SQLite, COPY on PostgreSQL: the rows the store's group
commit writes, without building a million CAPI payloads first) — SQLite in a temporary file,
PostgreSQL in a throwaway cluster on 127.0.0.1 (tests/fakes/pgcluster.py). Then each report
over the last 30 days, `--rounds` times, backends interleaved: summary, funnel, attribution
(last_click, linear, data_driven). Printed: the best and median wall time per report and
backend (target < 1 s), and the client process's CPU time of the best round.

Part 2, proxy cost. A `capi-gateway serve --dry-run` subprocess in front of a 20 KB page
served by this process; visitors each view `--views` pages (the first with utm parameters
or a click id, then internal pages, some after a referrer): the gateway process's CPU per
tagged page (psutil, user + system) with touchpoints recorded as shipped, beside the same
gateway with `outbox.insights = None` (nothing recorded), rounds interleaved. Target: < 5 %.

    python bench/bench_reports.py [--events 1000000] [--visits 200000] [--visitors 100000]
                                  [--rounds 3] [--pages 1500] [--views 5] [--skip-proxy]
                                  [--skip-reports] [--json PATH]

Not a test: it asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

# `python bench/bench_reports.py` puts bench/ on sys.path, not the repository root.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import aiohttp
import asyncpg
import psutil
from aiohttp import web

from gateway.delivery.insightfacts import FACT_COLUMNS
from gateway.delivery.insightreads import Window
from gateway.delivery.insights import SqliteInsights
from gateway.delivery.insightvisits import TOUCH_COLUMNS
from gateway.delivery.postgres.insights import PgInsights
from gateway.delivery.postgres.migrations import migrate
from gateway.delivery.postgres.pool import SCHEMA, Database
from gateway.delivery.schema import connect
from gateway.delivery.store import InsightReader
from gateway.insights.reports import Query, attribution, funnel, summary
from gateway.insightsettings import InsightSettings
from tests.fakes.pgcluster import throwaway_cluster

DAY = 86400
CHANNELS = (
    ("Paid Social", "facebook", "paid_social"),
    ("Organic Social", "instagram", "referral"),
    ("Paid Search", "google", "cpc"),
    ("Organic Search", "google", "organic"),
    ("Email", "newsletter", "email"),
    ("Referral", "blog.example", "referral"),
    ("Direct", "(direct)", "(none)"),
)
# Event mix of the facts (the rest are PageViews), and the share of visitors who buy.
MIX = (("ViewContent", 0.15), ("AddToCart", 0.06), ("InitiateCheckout", 0.03), ("Purchase", 0.02))


# Part 1: the store ------------------------------------------------------------------------


def generate(
    events: int, visits: int, visitors: int, now: int, seed: int = 18
) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    """Facts and touchpoints: every visit a touchpoint, events spread over visitors' visits."""
    rnd = random.Random(seed)
    keys = [f"{rnd.getrandbits(64):016x}" for _ in range(visitors)]
    touches: list[tuple[Any, ...]] = []
    starts: list[tuple[str, int]] = []
    for _ in range(visits):
        visitor = keys[rnd.randrange(visitors)]
        at = now - rnd.randrange(30 * DAY)
        channel, source, medium = CHANNELS[rnd.randrange(len(CHANNELS))]
        campaign = f"c{rnd.randrange(20)}" if medium not in ("(none)", "organic") else "(not set)"
        path = f"/p/{rnd.randrange(200)}"
        touches.append(("", visitor, at, channel, source, medium, campaign, None, None, path))
        starts.append((visitor, at))
    facts: list[tuple[Any, ...]] = []
    names = [name for name, _ in MIX]
    weights = [share for _, share in MIX]
    rest = 1 - sum(weights)
    for _ in range(events):
        visitor, at = starts[rnd.randrange(len(starts))]
        at += rnd.randrange(1800)
        name = rnd.choices([*names, "PageView"], [*weights, rest])[0]
        value = currency = None
        if name == "Purchase":
            value, currency = round(rnd.uniform(10, 300), 2), rnd.choice(("EUR", "EUR", "USD"))
        keys_present = "em,fbp,fbc,client_user_agent" if rnd.random() < 0.6 else "fbp"
        event_id = f"e{len(facts)}" if name != "PageView" else None
        facts.append(("", visitor, name, at, value, currency, None, keys_present, event_id))
    # A store writes rows as they happen: in time order, as here.
    facts.sort(key=lambda f: f[3])
    touches.sort(key=lambda t: t[2])
    return facts, touches


async def fill_sqlite(path: Path, facts: list[Any], touches: list[Any]) -> None:
    conn = await connect(path, durable=False)
    try:
        await conn.execute("BEGIN")
        await conn.executemany(
            f"INSERT INTO insight_events ({FACT_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?)", facts
        )
        await conn.executemany(
            f"INSERT INTO touchpoints ({TOUCH_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?)", touches
        )
        await conn.execute("COMMIT")
        await conn.execute("ANALYZE")
    finally:
        await conn.close()


async def fill_postgres(dsn: str, facts: list[Any], touches: list[Any]) -> None:
    # Its own connection: one COPY of a million rows outlasts the pool's command timeout.
    conn = await asyncpg.connect(dsn)
    try:
        await conn.copy_records_to_table(
            "insight_events",
            records=facts,
            columns=[c.strip() for c in FACT_COLUMNS.split(",")],
            schema_name=SCHEMA,
        )
        await conn.copy_records_to_table(
            "touchpoints",
            records=touches,
            columns=[c.strip() for c in TOUCH_COLUMNS.split(",")],
            schema_name=SCHEMA,
        )
        await conn.execute(f"ANALYZE {SCHEMA}.insight_events")
        await conn.execute(f"ANALYZE {SCHEMA}.touchpoints")
    finally:
        await conn.close()


Report = Callable[[InsightReader], Awaitable[Any]]


def reports(now: int) -> dict[str, Report]:
    cfg = InsightSettings()
    w = Window(now - 30 * DAY, now + 1)
    out: dict[str, Report] = {
        "summary": lambda r: summary(r, Query(w), cfg),
        "funnel": lambda r: funnel(r, Query(w), cfg),
    }
    for model in ("last_click", "linear", "data_driven"):
        out[f"attribution {model}"] = lambda r, m=model: attribution(r, Query(w, model=m), cfg)
    return out


def server_cpu(postmaster: psutil.Process | None) -> float:
    """CPU seconds of the PostgreSQL cluster's processes so far (0 without one)."""
    if postmaster is None:
        return 0.0
    total = sum(postmaster.cpu_times()[:2])
    for child in postmaster.children(recursive=True):
        with contextlib.suppress(psutil.Error):
            total += sum(child.cpu_times()[:2])
    return total


async def time_reports(
    readers: dict[str, InsightReader],
    now: int,
    rounds: int,
    servers: dict[str, psutil.Process | None],
) -> dict[str, dict[str, dict[str, float]]]:
    """report -> backend -> {best, median, cpu, server_cpu} in seconds."""
    out: dict[str, dict[str, dict[str, float]]] = {}
    me = psutil.Process()
    for name, run in reports(now).items():
        out[name] = {}
        for backend, reader in readers.items():
            walls: list[float] = []
            cpus: list[float] = []
            servers_cpu: list[float] = []
            for _ in range(rounds):
                c0, s0 = sum(me.cpu_times()[:2]), server_cpu(servers.get(backend))
                t0 = time.perf_counter()
                await run(reader)
                walls.append(time.perf_counter() - t0)
                cpus.append(sum(me.cpu_times()[:2]) - c0)
                servers_cpu.append(server_cpu(servers.get(backend)) - s0)
            best = min(range(rounds), key=lambda i: walls[i])
            out[name][backend] = {
                "best": walls[best],
                "median": statistics.median(walls),
                "cpu": cpus[best],
                "server_cpu": servers_cpu[best],
            }
            print(
                f"  {name:<26} {backend:<10} best {walls[best] * 1000:7.0f} ms  "
                f"median {statistics.median(walls) * 1000:7.0f} ms  CPU: bench "
                f"{cpus[best] * 1000:5.0f} ms, PostgreSQL {servers_cpu[best] * 1000:5.0f} ms",
                flush=True,
            )
    return out


async def part_reports(args: argparse.Namespace) -> dict[str, Any]:
    now = int(time.time())
    t0 = time.perf_counter()
    facts, touches = generate(args.events, args.visits, args.visitors, now)
    print(
        f"generated {len(facts):,} facts, {len(touches):,} touchpoints of "
        f"{args.visitors:,} visitors in {time.perf_counter() - t0:.1f} s",
        flush=True,
    )
    with tempfile.TemporaryDirectory() as tmp, throwaway_cluster() as cluster:
        path = Path(tmp) / "reports.db"
        t0 = time.perf_counter()
        await fill_sqlite(path, facts, touches)
        print(f"SQLite filled in {time.perf_counter() - t0:.1f} s", flush=True)
        admin = await Database.open(cluster.dsn(), health_interval=0)
        await admin.fetchval("CREATE DATABASE reports")
        await admin.close()
        db = await Database.open(cluster.dsn("reports"), health_interval=0)
        try:
            await migrate(db)
            t0 = time.perf_counter()
            await fill_postgres(cluster.dsn("reports"), facts, touches)
            print(f"PostgreSQL filled in {time.perf_counter() - t0:.1f} s", flush=True)
            del facts, touches
            sqlite_reader = await SqliteInsights.open(path)
            readers: dict[str, InsightReader] = {
                "sqlite": sqlite_reader,
                "postgresql": PgInsights(db),
            }
            try:
                pid = int((cluster.datadir / "postmaster.pid").read_text().split()[0])
                servers = {"sqlite": None, "postgresql": psutil.Process(pid)}
                timings = await time_reports(readers, now, args.rounds, servers)
            finally:
                await sqlite_reader.close()
        finally:
            await db.close()
    return timings


# Part 2: the proxy ------------------------------------------------------------------------

# Runs the gateway with touchpoints off: the policy the app installs becomes None.
_OFF = (
    "import sys, gateway.insights.policy as p; p.insight_policy = lambda *a, **k: None; "
    "from gateway.cli import main; sys.exit(main(sys.argv[1:]))"
)
_ON = "import sys; from gateway.cli import main; sys.exit(main(sys.argv[1:]))"
_PAGE = (
    "<!doctype html><html><head><title>Product</title></head><body>"
    + "<p>Lorem ipsum dolor sit amet, consectetur adipiscing elit.</p>" * 340
    + "</body></html>"
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.asynccontextmanager
async def origin() -> AsyncIterator[str]:
    async def page(request: web.Request) -> web.Response:
        return web.Response(text=_PAGE, content_type="text/html")

    app = web.Application()
    app.router.add_get("/{tail:.*}", page)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = _free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


@contextlib.contextmanager
def gateway(code: str, upstream: str, workdir: Path) -> Iterator[tuple[str, psutil.Process]]:
    port = _free_port()
    env = {**os.environ, "CAPIGW_LOG_LEVEL": "warning", "CAPIGW_PAGEVIEW_HOLD": "0"}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-c",
            code,
            "serve",
            "--upstream",
            upstream,
            "--dry-run",
            "--listen",
            f"127.0.0.1:{port}",
            "--buffer",
            str(workdir / f"gw-{port}.db"),
        ],
        env=env,
        cwd=workdir,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
                break
            time.sleep(0.1)
        else:
            raise RuntimeError("the gateway did not start")
        yield f"http://127.0.0.1:{port}", psutil.Process(proc.pid)
    finally:
        proc.terminate()
        proc.wait(30)


_LANDINGS = (
    "/?utm_source=facebook&utm_medium=paid_social&utm_campaign=winter",
    "/?gclid=Cj0KCQ",
    "/?utm_source=newsletter&utm_medium=email&utm_campaign=dec",
    "/?fbclid=IwAR0abc",
    "/",
)


async def browse(url: str, pages: int, views: int, seed: int) -> None:
    """`pages` tagged page views by visitors of `views` pages each, 8 at a time."""
    rnd = random.Random(seed)
    sem = asyncio.Semaphore(8)
    headers = {"User-Agent": "Mozilla/5.0 (X11; Linux x86_64) Chrome/156", "Accept": "text/html"}

    async def visitor(n: int, session: aiohttp.ClientSession) -> None:
        fbp = f"fb.1.1700000000000.{seed}{n}"
        async with sem:
            for k in range(views):
                path = rnd.choice(_LANDINGS) if k == 0 else f"/p/{rnd.randrange(50)}"
                extra = {"Referer": "https://www.google.com/"} if k == 3 else {}
                async with session.get(
                    url + path, headers={**headers, **extra, "Cookie": f"_fbp={fbp}"}
                ) as resp:
                    await resp.read()

    async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as session:
        await asyncio.gather(*(visitor(n, session) for n in range(pages // views)))


async def part_proxy(args: argparse.Namespace) -> dict[str, Any]:
    cpu: dict[str, list[float]] = {"off": [], "on": []}
    with tempfile.TemporaryDirectory() as tmp:
        async with origin() as upstream:
            for round_ in range(args.rounds):
                for mode, code in (("off", _OFF), ("on", _ON)):
                    with gateway(code, upstream, Path(tmp)) as (url, proc):
                        await browse(url, 100, args.views, seed=1000 + round_)  # warm-up
                        await asyncio.sleep(0.5)
                        c0 = sum(proc.cpu_times()[:2])
                        await browse(url, args.pages, args.views, seed=round_)
                        await asyncio.sleep(0.5)  # the last group commits
                        per = (sum(proc.cpu_times()[:2]) - c0) / args.pages
                    cpu[mode].append(per)
                    print(
                        f"  round {round_ + 1} touchpoints {mode:<3} {per * 1e6:7.0f} µs CPU/page"
                    )
    off, on = min(cpu["off"]), min(cpu["on"])
    moff, mon = statistics.median(cpu["off"]), statistics.median(cpu["on"])
    print(
        f"gateway CPU per tagged page: best of {args.rounds} off {off * 1e6:.0f} µs, on "
        f"{on * 1e6:.0f} µs ({(on / off - 1) * 100:+.1f} %); median off {moff * 1e6:.0f} µs, "
        f"on {mon * 1e6:.0f} µs ({(mon / moff - 1) * 100:+.1f} %)"
    )
    return {"off_us": off * 1e6, "on_us": on * 1e6, "ratio": on / off, "rounds": cpu}


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {"args": vars(args)}
    if not args.skip_reports:
        print("Part 1: reports over 30 days")
        out["reports"] = await part_reports(args)
    if not args.skip_proxy:
        print("Part 2: gateway CPU per tagged page, touchpoints off and on")
        out["proxy"] = await part_proxy(args)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--visits", type=int, default=200_000)
    parser.add_argument("--visitors", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--pages", type=int, default=1500)
    parser.add_argument("--views", type=int, default=5)
    parser.add_argument("--skip-proxy", action="store_true")
    parser.add_argument("--skip-reports", action="store_true")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    result = asyncio.run(main_async(args))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2, default=str))


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sqlite3.enable_callback_tracebacks(True)
        main()
