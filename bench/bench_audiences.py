"""What computing and syncing a Custom Audience costs, SQLite and PostgreSQL side by side.

Fills a fresh store of each backend (a SQLite file; a throwaway PostgreSQL cluster from
tests/fakes/pgcluster.py) through the outbox as the gateway would, visitor profiles on:
`--visitors` visitors, each with `--pageviews` PageViews (which the audience query must skip),
one or two AddToCart and, for a third of them, a Purchase after the cart, all within the last
14 days, each visitor with a hashed email (some with a phone). Then, for the audience "added
to cart in 14 days, did not buy":

- compute: the membership and the members' rows (`audiences_sync.current_rows`);
- first sync: create + upload every row to the fake Custom Audience API on loopback
  (tests/fakes/audiences.py, in-process);
- steady sync: the same again with nothing changed (what the hourly task costs).

Per phase it prints wall time and CPU: the benchmark process's (user + system, which
includes the fake's share in the sync phases) and, for PostgreSQL, the server's (its
processes via psutil); and CPU per stored event scanned. It is not a test and asserts nothing.

    python bench/bench_audiences.py [--visitors 10000] [--pageviews 4] [--json PATH]
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import resource
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

# `python bench/bench_audiences.py` puts bench/ on sys.path, not the repository root.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import aiohttp
import psutil

from gateway.delivery.audiences import SqliteAudiences
from gateway.delivery.audiences_sync import AudienceSync, current_rows, targets
from gateway.delivery.graph import GraphClient
from gateway.delivery.outbox import Outbox
from gateway.delivery.postgres.audiences import PgAudiences
from gateway.delivery.postgres.outbox import PgOutbox
from gateway.delivery.profiles import ProfilePolicy
from gateway.delivery.retry import RetryPolicy
from gateway.delivery.seal import Sealer
from gateway.delivery.store import AudienceStore, OutboxStore
from gateway.models import NewEvent
from gateway.settings import Settings
from tests.fakes.audiences import start_fake_audiences
from tests.fakes.pgcluster import throwaway_cluster

KEY = bytes(range(32))
TOKEN = "EAAB-bench"
DAY = 86400


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _events(visitors: int, pageviews: int, now: float) -> list[NewEvent]:
    out: list[NewEvent] = []
    for v in range(visitors):
        fbp = f"fb.1.1700000000000.{v}"
        ids: dict[str, list[str]] = {"em": [_sha(f"visitor{v}@example.com")]}
        if v % 2:
            ids["ph"] = [_sha(f"3361{v:07d}")]
        start = now - (v % 13 + 1) * DAY
        names = ["PageView"] * pageviews + ["AddToCart"] * (1 + v % 2)
        if v % 3 == 0:
            names.append("Purchase")
        for i, name in enumerate(names):
            at = int(start + i * 60)
            payload: dict[str, Any] = {
                "event_name": name,
                "event_time": at,
                "action_source": "website",
                "event_source_url": f"https://shop.example/p/{v % 100}",
                "user_data": ids,
                "custom_data": {"value": 19.9, "currency": "EUR"},
            }
            out.append(
                NewEvent(
                    pixel_id="123456789012345",
                    event_name=name,
                    event_id=f"{v}-{i}",
                    event_time=at,
                    payload=payload,
                    clear={"fbp": fbp, "client_user_agent": "Mozilla/5.0"},
                    source="events_api",
                )
            )
    return out


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _server_cpu(postmaster: psutil.Process | None) -> float:
    if postmaster is None:
        return 0.0
    total = 0.0
    for proc in (postmaster, *postmaster.children(recursive=True)):
        try:
            times = proc.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += times.user + times.system
    return total


async def _phase(
    run: Callable[[], Awaitable[Any]], postmaster: psutil.Process | None
) -> tuple[float, float, float]:
    wall, cpu, server = time.monotonic(), _cpu(), _server_cpu(postmaster)
    await run()
    return time.monotonic() - wall, _cpu() - cpu, _server_cpu(postmaster) - server


async def _case(
    box: OutboxStore,
    store: AudienceStore,
    args: argparse.Namespace,
    postmaster: psutil.Process | None,
) -> dict[str, float]:
    now = time.time()
    events = _events(args.visitors, args.pageviews, now)
    for start in range(0, len(events), 1000):
        await box.add(events[start : start + 1000])
    settings = Settings.model_validate(
        {
            "pixel_id": ["123456789012345"],
            "access_token": TOKEN,
            "ad_account_id": "1234567",
            "audiences": [
                {
                    "name": "Cart, no purchase",
                    "events": ["AddToCart"],
                    "exclude_events": ["Purchase"],
                    "window": "14d",
                }
            ],
        }
    )
    (target,) = targets(settings)
    figures: dict[str, float] = {"events": len(events)}
    rows: dict[str, Any] = {}

    async def compute() -> None:
        rows.update(await current_rows(store, target, now=now))

    wall, cpu, server = await _phase(compute, postmaster)
    figures.update(members=len(rows), compute_s=wall, compute_cpu=cpu, compute_server=server)
    async with start_fake_audiences(token=TOKEN) as fake, aiohttp.ClientSession() as session:
        graph = GraphClient(
            session, graph_url=fake.url, graph_version="v26.0", timeout=60, partner_agent="b"
        )
        sync = AudienceSync(store, graph, RetryPolicy(base=0.1, cap=1))
        for name in ("first_sync", "steady_sync"):
            wall, cpu, server = await _phase(lambda: sync.sync(target, now=now), postmaster)
            figures.update({f"{name}_s": wall, f"{name}_cpu": cpu, f"{name}_server": server})
    return figures


async def _main(args: argparse.Namespace) -> dict[str, dict[str, float]]:
    policy = ProfilePolicy.from_key(KEY, ttl=30 * DAY, max_profiles=10_000_000)
    results: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bench.db"
        box = await Outbox.open(path, Sealer(KEY), profiles=policy, group_commit_ms=5)
        store = await SqliteAudiences.open(path)
        try:
            results["sqlite"] = await _case(box, store, args, None)
        finally:
            await store.close()
            await box.close()
    with throwaway_cluster(durable=True) as cluster:
        pid = int((cluster.datadir / "postmaster.pid").read_text().split()[0])
        pg = await PgOutbox.open(cluster.dsn(), Sealer(KEY), profiles=policy)
        try:
            results["postgresql"] = await _case(pg, PgAudiences(pg.db), args, psutil.Process(pid))
        finally:
            await pg.close()
    return results


def _print(results: dict[str, dict[str, float]]) -> None:
    lite, pg = results["sqlite"], results["postgresql"]
    n = lite["events"]
    print(
        f"{int(n):,} stored events, {int(lite['members']):,} members (sqlite) / "
        f"{int(pg['members']):,} (postgresql)"
    )
    print(
        f"{'phase':<14}{'sqlite wall':>13}{'sqlite cpu':>12}{'pg wall':>10}"
        f"{'pg cpu+srv':>12}{'pg/sqlite cpu':>15}{'sqlite µs/ev':>14}"
    )
    for phase in ("compute", "first_sync", "steady_sync"):
        lite_cpu = lite[f"{phase}_cpu"]
        pg_cpu = pg[f"{phase}_cpu"] + pg[f"{phase}_server"]
        print(
            f"{phase:<14}{lite[f'{phase}_s']:>12.2f}s{lite_cpu:>11.2f}s"
            f"{pg[f'{phase}_s']:>9.2f}s{pg_cpu:>11.2f}s{pg_cpu / max(lite_cpu, 1e-9):>14.2f}x"
            f"{lite_cpu / n * 1e6:>14.1f}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--visitors", type=int, default=10_000)
    parser.add_argument("--pageviews", type=int, default=4)
    parser.add_argument("--json", type=Path, help="write the figures here too")
    args = parser.parse_args()
    results = asyncio.run(_main(args))
    _print(results)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
