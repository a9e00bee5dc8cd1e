"""Catalog benchmark: what reading product pages costs the proxy, and a 10,000-page crawl.

    python bench/bench_catalog.py [--requests 3000] [--concurrency 16] [--rounds 3]
                                  [--crawl-pages 10000] [--json PATH]

Everything runs on 127.0.0.1 as subprocesses of this script: a loopback shop
(`python -m tests.fakes.shop`, product pages of ~7 KB with schema.org Product JSON-LD) and
`capi-gateway serve --dry-run` in front of it, once with a `[catalog]` (every product page
read for products, items recorded, the catalog sender in dry run) and once without,
alternating `--rounds` times so both see the same machine. Per gateway: the gateway
process's CPU time per request (psutil, user + system; what the shared machine cannot
distort much) and requests/s of a closed-loop aiohttp client at `--concurrency`. The ratio
on/off is the cost of the feature.

The warm-up before the rounds shows every product once (first sight: the writes); the
rounds are the steady state, pages seen again.

Then `capi-gateway catalog crawl` walks the shop's sitemap of `--crawl-pages` product pages
into an empty store: pages/s, the crawl process's CPU, and its peak RSS (sampled every 20
ms), to show memory stays bounded however many pages.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

try:
    import psutil
except ImportError:  # pragma: no cover - the bench extra is missing
    sys.exit("bench_catalog.py needs psutil: pip install -e '.[bench]'")

# `python bench/bench_catalog.py` puts bench/ on sys.path, not the repository root.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.fakes.processes import (
    clean_env,
    free_port,
    gateway_cmd,
    listening_url,
    spawn,
    stop_process,
    tail,
)

CATALOG_ID = "111222333444555"
PRODUCTS = 200


def cpu(proc: psutil.Process) -> float:
    """User + system CPU seconds of a process and its children."""
    total = 0.0
    for p in [proc, *proc.children(recursive=True)]:
        with contextlib.suppress(psutil.Error):
            t = p.cpu_times()
            total += t.user + t.system
    return total


def start_shop(work: Path, products: int) -> tuple[subprocess.Popen[bytes], str]:
    log = work / f"shop-{products}.log"
    cmd = [sys.executable, "-m", "tests.fakes.shop", "--port", "0", "--products", str(products)]
    proc = spawn(cmd, log)
    return proc, listening_url(proc, log, "shop", 20)


def start_gateway(
    work: Path, name: str, upstream: str, catalog: bool
) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    env = {
        "CAPIGW_UPSTREAM": upstream,
        "CAPIGW_DRY_RUN": "true",
        "CAPIGW_LOG_LEVEL": "warning",
    }
    if catalog:
        env["CAPIGW_CATALOG"] = json.dumps({"catalog_id": CATALOG_ID})
    buffer = work / f"{name}.db"
    cmd = [*gateway_cmd(), "serve", "--listen", f"127.0.0.1:{port}", "--buffer", str(buffer)]
    log = work / f"{name}.log"
    proc = spawn(cmd, log, env=clean_env(**env))
    url = f"http://127.0.0.1:{port}"

    async def healthy() -> None:
        deadline = time.monotonic() + 30
        async with aiohttp.ClientSession() as session:
            while time.monotonic() < deadline:
                if proc.poll() is not None:
                    break
                with contextlib.suppress(aiohttp.ClientError):
                    async with session.get(f"{url}/_capi/health") as resp:
                        if resp.status == 200:
                            return
                await asyncio.sleep(0.05)
        raise SystemExit(f"the gateway did not start:\n{tail(log)}")

    asyncio.run(healthy())
    return proc, url


async def load(url: str, paths: list[str], concurrency: int) -> float:
    """Seconds to GET `paths` with `concurrency` connections."""
    queue: asyncio.Queue[str] = asyncio.Queue()
    for path in paths:
        queue.put_nowait(path)
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def worker() -> None:
            while not queue.empty():
                path = queue.get_nowait()
                async with session.get(url + path) as resp:
                    await resp.read()
                    if resp.status != 200:
                        raise SystemExit(f"{path}: HTTP {resp.status}")

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return time.perf_counter() - started


def hot_paths(requests: int) -> list[str]:
    """The same PRODUCTS pages over and over (a shop's steady traffic)."""
    return [f"/p/{n % PRODUCTS + 1}" for n in range(requests)]


def cold_paths(requests: int, round_no: int) -> list[str]:
    """`requests` product pages nobody viewed before (first sight: read, extracted, stored)."""
    first = PRODUCTS + (round_no - 1) * requests + 1
    return [f"/p/{n}" for n in range(first, first + requests)]


def proxy_rounds(work: Path, shop: str, args: argparse.Namespace) -> list[dict[str, Any]]:
    gateways = {
        "off": start_gateway(work, "catalog-off", shop, catalog=False),
        "on": start_gateway(work, "catalog-on", shop, catalog=True),
    }
    rows: list[dict[str, Any]] = []
    try:
        # Warm both up (connections, imports); the catalog gateway sees every product for
        # the first time here, so the rounds measure the steady state: pages seen again.
        for _, url in gateways.values():
            asyncio.run(load(url, hot_paths(2 * PRODUCTS), args.concurrency))
        for round_no in range(1, args.rounds + 1):
            for kind in ("hot", "cold"):
                paths = (
                    hot_paths(args.requests)
                    if kind == "hot"
                    else cold_paths(args.requests, round_no)
                )
                for name, (proc, url) in gateways.items():
                    ps = psutil.Process(proc.pid)
                    before = cpu(ps)
                    seconds = asyncio.run(load(url, paths, args.concurrency))
                    time.sleep(1.0)  # the catalog's background writes of this run
                    used = cpu(ps) - before
                    rows.append(
                        {
                            "round": round_no,
                            "pages": kind,
                            "catalog": name,
                            "requests": len(paths),
                            "rps": len(paths) / seconds,
                            "cpu_ms_per_request": 1000 * used / len(paths),
                        }
                    )
        time.sleep(2.0)
        status, dropped = asyncio.run(_status(gateways["on"][1]))
    finally:
        for proc, _ in gateways.values():
            stop_process(proc, grace=5)
    viewed = PRODUCTS + args.requests * args.rounds
    print(
        f"catalog after the runs: {status['items']} of {viewed} products viewed; "
        f"{dropped:.0f} page(s) dropped by the full queue (read again on their next view)"
    )
    return rows


async def _status(url: str) -> tuple[dict[str, Any], float]:
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{url}/_capi/catalog") as resp:
            body: dict[str, Any] = await resp.json()
        async with session.get(f"{url}/_capi/metrics") as resp:
            text = await resp.text()
    dropped = 0.0
    for line in text.splitlines():
        if line.startswith('capi_gateway_catalog_pages_total{outcome="dropped"}'):
            dropped = float(line.rsplit(" ", 1)[1])
    return body, dropped


def crawl_run(work: Path, args: argparse.Namespace) -> dict[str, Any]:
    shop_proc, shop = start_shop(work, args.crawl_pages)
    try:
        config = work / "crawl.toml"
        config.write_text(
            f'buffer = "{work / "crawl.db"}"\nupstream = "{shop}"\ndry_run = true\n'
            f'[catalog]\ncatalog_id = "{CATALOG_ID}"\n'
        )
        cmd = [
            *gateway_cmd(),
            "catalog",
            "crawl",
            "--config",
            str(config),
            "--public-origin",
            "https://shop.example",
            "--rate",
            str(args.crawl_rate),
            "--concurrency",
            "8",
            "--max-pages",
            str(args.crawl_pages + 10),
            "--json",
        ]
        started = time.perf_counter()
        proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=clean_env(), cwd=work
        )
        ps = psutil.Process(proc.pid)
        peak = 0
        used = 0.0
        while proc.poll() is None:
            with contextlib.suppress(psutil.Error):
                peak = max(peak, ps.memory_info().rss)
                t = ps.cpu_times()
                used = t.user + t.system
            time.sleep(0.02)
        seconds = time.perf_counter() - started
        out, err = proc.communicate()
        if proc.returncode != 0:
            raise SystemExit(f"the crawl failed:\n{err.decode()}")
        counts = json.loads(out)
        return {
            "pages": counts["pages"],
            "items": counts["items"],
            "seconds": seconds,
            "pages_per_s": counts["pages"] / seconds,
            "cpu_ms_per_page": 1000 * used / max(1, counts["pages"]),
            "peak_rss_mb": peak / 1e6,
        }
    finally:
        stop_process(shop_proc, grace=5)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--crawl-pages", type=int, default=10_000)
    parser.add_argument("--crawl-rate", type=float, default=5000.0)
    parser.add_argument("--skip-crawl", action="store_true")
    parser.add_argument("--skip-proxy", action="store_true")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    os.chdir(Path(__file__).resolve().parent.parent)  # `-m tests.fakes.shop` from the root
    with tempfile.TemporaryDirectory(prefix="bench-catalog-") as tmp:
        work = Path(tmp)
        rows: list[dict[str, Any]] = []
        if not args.skip_proxy:
            shop_proc, shop = start_shop(work, PRODUCTS + args.requests * args.rounds)
            try:
                rows = proxy_rounds(work, shop, args)
            finally:
                stop_process(shop_proc, grace=5)
            print_proxy(rows, args)
        crawl = None
        if not args.skip_crawl:
            crawl = crawl_run(work, args)
            print(
                f"\nCrawl of {crawl['pages']} product pages: {crawl['seconds']:.1f} s, "
                f"{crawl['pages_per_s']:.0f} pages/s, {crawl['cpu_ms_per_page']:.2f} CPU ms "
                f"per page, peak RSS {crawl['peak_rss_mb']:.0f} MB ({crawl['items']} items)"
            )
    if args.json is not None:
        args.json.write_text(json.dumps({"proxy": rows, "crawl": crawl}, indent=2))
    return 0


def print_proxy(rows: list[dict[str, Any]], args: argparse.Namespace) -> None:
    """The side-by-side table and the on/off ratios."""
    print(
        f"\nProduct pages through the proxy ({args.requests} requests per run, "
        f"concurrency {args.concurrency}):"
    )
    print("hot: the same 200 pages again and again; cold: pages never viewed before")
    print(f"{'round':>5} {'pages':>5} {'catalog':>8} {'req/s':>9} {'CPU ms/req':>11}")
    for row in rows:
        print(
            f"{row['round']:>5} {row['pages']:>5} {row['catalog']:>8} {row['rps']:>9.0f} "
            f"{row['cpu_ms_per_request']:>11.3f}"
        )
    for kind in ("hot", "cold"):
        for n in range(1, args.rounds + 1):
            pair = {r["catalog"]: r for r in rows if r["round"] == n and r["pages"] == kind}
            off = max(1e-9, pair["off"]["cpu_ms_per_request"])
            cpu_ratio = pair["on"]["cpu_ms_per_request"] / off
            rps_ratio = pair["on"]["rps"] / pair["off"]["rps"]
            print(
                f"{kind} round {n}: CPU per request on/off = {cpu_ratio:.3f}, "
                f"req/s on/off = {rps_ratio:.3f}"
            )


if __name__ == "__main__":
    raise SystemExit(main())
