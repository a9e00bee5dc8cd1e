"""Throughput benchmark of the events API and the sender (not a test: prints a table).

    python bench/bench_events.py [--seconds 5] [--concurrency 32] [--preload 50000]
                                 [--workers 1,2] [--assembly on] [--json PATH]
    python bench/bench_events.py --store pg|postgresql://… [--seconds 5]  (bench_replicas.py)

Everything runs on 127.0.0.1: the fake Graph API (`python -m tests.fakes.graph
--count-only`) and `capi-gateway serve` are subprocesses on a fresh temp buffer, the
clients are asyncio tasks in this process.

- Phase A: accepted events/s through `POST /_capi/events` with batches of 1 (N clients).
- Phase B: the same with batches of 100.
- Phase C: delivered events/s. A backlog is built while Meta refuses the gateway's token
  (the pixel is parked, nothing is sent); the gateway is then restarted with the right
  token, it releases the backlog at once, and the rate at which events reach the fake
  (`GET /_fake/stats` events_received) is measured until the backlog is gone.

All phases run once per `--workers` count (`serve --workers N`, default 1 and 2) and per
`--assembly` setting (`on`: visitor profiles on and a 1 s assembly hold; `off`: profiles
off, no hold; `--assembly off,on` compares them), and the table shows the runs side by
side with the ratio of the last to the first. Every event carries an `_fbp` (so profiles
learn and are looked up) and one in ten is a copy of a recent event with a phone number
added (so copies merge or come late). Peak RSS and
CPU of the gateway (all its processes) are sampled every 100 ms (psutil, from the `bench`
extra). See bench/README.md for the figures measured on the reference machine.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import random
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

try:
    import psutil
except ImportError:  # pragma: no cover - the bench extra is missing
    sys.exit("bench_events.py needs psutil: pip install -e '.[bench]'")

# `python bench/bench_events.py` puts bench/ on sys.path, not the repository root.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench_proxy import parse_workers  # one parser for both benchmarks' --workers

from tests.fakes.processes import (
    Gateway,
    queue_stats,
    start_fake,
    start_gateway,
    stop_at_exit,
    stop_process,
    wait_healthy,
)

PIXEL = "123456789012345"
TOKEN = "EAAB-bench-token-not-real"
API_KEY = "bench-api-key-0123456789"
UA = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 Chrome/156 Safari/537.36"

TARGET_ACCEPTED_100 = 5_000.0
TARGET_DELIVERED = 20_000.0
MAX_REQUESTS_PER_CLIENT = 1_000_000  # a bound on every client loop, never reached in practice


# -- processes ----------------------------------------------------------------------------

# The gateway's settings in every phase; CAPIGW_LOG_LEVEL comes from --log-level.
GATEWAY_ENV = {
    "CAPIGW_SEND_CONCURRENCY": "4",
    "CAPIGW_PIXEL_RATE": "1000",
    "CAPIGW_POLL_INTERVAL": "0.05",
    "CAPIGW_SHUTDOWN_GRACE": "5",
}


# What `--assembly on|off` sets: profiles and a short hold, or neither.
ASSEMBLY_ENV = {
    "on": {"CAPIGW_ASSEMBLY_HOLD": "1"},
    "off": {"CAPIGW_ASSEMBLY_HOLD": "0", "CAPIGW_PROFILE_TTL": "0"},
}


def bench_gateway(
    buffer: Path,
    graph_url: str,
    log: Path,
    *,
    token: str,
    log_level: str,
    workers: int,
    assembly: str = "on",
) -> Gateway:
    """`capi-gateway serve --workers N` with the benchmark's settings on a free port."""
    env = {
        **GATEWAY_ENV,
        **ASSEMBLY_ENV[assembly],
        "CAPIGW_LOG_LEVEL": log_level,
        "CAPIGW_WORKERS": str(workers),
    }
    return start_gateway(buffer, graph_url, log, pixel=PIXEL, token=token, api_key=API_KEY, env=env)


# Seconds between a sampler's looks for new children (see `Sampler.run`).
RESCAN_EVERY = 1.0


class Sampler(threading.Thread):
    """Peak RSS (summed) and CPU time of a process and its children (the workers), sampled
    every `interval` seconds."""

    def __init__(self, pid: int, interval: float = 0.1) -> None:
        super().__init__(daemon=True)
        self.proc = psutil.Process(pid)
        self.interval = interval
        self.peak_rss = 0
        self.samples = 0
        self._kids: dict[int, psutil.Process] = {}
        self._halt = threading.Event()

    def family(self, rescan: bool = True) -> list[psutil.Process]:
        """The process and its children (with `rescan`, workers forked since are picked up)."""
        if rescan:
            with contextlib.suppress(psutil.Error):
                for kid in self.proc.children():
                    self._kids.setdefault(kid.pid, kid)
        return [self.proc, *self._kids.values()]

    def run(self) -> None:
        # Looking for new children reads every process's /proc entry (~2.7 ms on the 2-core
        # machine): every 100 ms, with four samplers, that was ~10 % of a core, counted as
        # the load generator's CPU (~20 µs per accepted event) and taken from the gateways
        # and the database. Once a second is enough to find workers and new backends.
        next_scan = 0.0
        while not self._halt.is_set():
            rss = 0
            now = time.monotonic()
            rescan = now >= next_scan
            if rescan:
                next_scan = now + RESCAN_EVERY
            for p in self.family(rescan):
                with contextlib.suppress(psutil.Error):
                    rss += p.memory_info().rss
            if not self.proc.is_running():
                return
            self.peak_rss = max(self.peak_rss, rss)
            self.samples += 1
            self._halt.wait(self.interval)

    def cpu_seconds(self) -> float:
        """User + system CPU seconds of the process and its workers so far."""
        total = 0.0
        for p in self.family():
            with contextlib.suppress(psutil.Error):
                times = p.cpu_times()
                total += times.user + times.system
        return total

    def finish(self) -> None:
        """Stop sampling."""
        self._halt.set()
        self.join(timeout=5)


# -- load -----------------------------------------------------------------------------------


def event_json(event_id: str, now: int, *, phone: bool = False) -> str:
    """One realistic website Purchase of a visitor (its `_fbp`), as JSON text."""
    extra = ',"phone":"+4917012345678"' if phone else ""
    return (
        f'{{"event_name":"Purchase","event_time":{now},"event_id":"{event_id}",'
        '"event_source_url":"https://shop.example/thanks",'
        f'"user_data":{{"email":"jane.{event_id[:8]}@example.com","user_agent":"{UA}",'
        f'"ip":"203.0.113.7","external_id":"cust-{event_id[:12]}",'
        f'"fbp":"fb.1.1700000000000.{int(event_id[:8], 16)}"{extra}}},'
        f'"custom_data":{{"value":19.9,"currency":"EUR","order_id":"o-{event_id}"}}}}'
    )


_RECENT: list[str] = []


def body(batch: int) -> bytes:
    """A request body of `batch` events: nine in ten new, one a copy of a recent one."""
    now = int(time.time())
    events = []
    for _ in range(batch):
        if _RECENT and random.random() < 0.1:
            events.append(event_json(random.choice(_RECENT), now, phone=True))
            continue
        event_id = uuid.uuid4().hex
        _RECENT.append(event_id)
        if len(_RECENT) > 1000:
            del _RECENT[:500]
        events.append(event_json(event_id, now))
    return ('{"data":[' + ",".join(events) + "]}").encode()


@dataclass
class PhaseResult:
    """What one load phase measured."""

    events: int = 0
    requests: int = 0
    failures: int = 0
    seconds: float = 0.0
    client_cpu: float = 0.0  # CPU seconds of this (load generating) process
    latencies: list[float] = field(default_factory=list)
    statuses: dict[int, int] = field(default_factory=dict)

    @property
    def rate(self) -> float:
        return self.events / self.seconds if self.seconds else 0.0

    def percentile(self, q: float) -> float:
        if not self.latencies:
            return float("nan")
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def run_load(
    url: str, *, batch: int, concurrency: int, seconds: float, total: int | None = None
) -> PhaseResult:
    """N clients post batches for `seconds` (or until `total` events were accepted)."""
    result = PhaseResult()
    headers = {"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"}
    connector = aiohttp.TCPConnector(limit=concurrency)
    timeout = aiohttp.ClientTimeout(total=60)
    stop_at = time.monotonic() + seconds

    def done() -> bool:
        return time.monotonic() >= stop_at or (total is not None and result.events >= total)

    async def client(session: aiohttp.ClientSession) -> None:
        for _ in range(MAX_REQUESTS_PER_CLIENT):
            if done():
                return
            payload = body(batch)
            started = time.perf_counter()
            try:
                async with session.post(url, data=payload, headers=headers) as resp:
                    await resp.read()
                    status = resp.status
            except (aiohttp.ClientError, TimeoutError):
                result.failures += 1
                await asyncio.sleep(0.01)
                continue
            result.latencies.append(time.perf_counter() - started)
            result.requests += 1
            result.statuses[status] = result.statuses.get(status, 0) + 1
            if status == 202:
                result.events += batch

    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        began, cpu = time.perf_counter(), time.process_time()
        await asyncio.gather(*(client(session) for _ in range(concurrency)))
        result.seconds = time.perf_counter() - began
        result.client_cpu = time.process_time() - cpu
    return result


# -- the benchmark ------------------------------------------------------------------------------


@dataclass
class Row:
    """One line of the results table."""

    metric: str
    measured: float
    unit: str
    target: float | None = None
    higher_is_better: bool = True

    @property
    def ratio(self) -> float | None:
        if self.target is None or not self.measured:
            return None
        return self.measured / self.target if self.higher_is_better else self.target / self.measured


async def benchmark(
    args: argparse.Namespace, workdir: Path, workers: int, assembly: str = "on"
) -> dict[str, Any]:
    """Phases A, B and C against `serve --workers {workers}`: the rows and the details."""
    rows: list[Row] = []
    details: dict[str, Any] = {}
    print(f"-- --workers {workers}, assembly {assembly} --", flush=True)
    with stop_at_exit() as procs:
        fake = start_fake(workdir / "fake.log", token=TOKEN, count_only=True)
        procs.append(fake.proc)
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as control:
            # Phases A and B: one gateway, the sender delivering while clients post.
            gw = bench_gateway(
                workdir / "ab.db",
                fake.url,
                workdir / "gateway-ab.log",
                token=TOKEN,
                log_level=args.log_level,
                workers=workers,
                assembly=assembly,
            )
            procs.append(gw.proc)
            await wait_healthy(gw, control, timeout=20)
            sampler = Sampler(gw.proc.pid)
            sampler.start()
            phases: dict[str, PhaseResult] = {}
            cpu: dict[str, float] = {}
            for name, batch in (("A", 1), ("B", 100)):
                print(
                    f"phase {name}: batches of {batch}, {args.concurrency} clients, "
                    f"{args.seconds:g} s ...",
                    flush=True,
                )
                cpu_before = sampler.cpu_seconds()
                phases[name] = await run_load(
                    f"{gw.url}/_capi/events",
                    batch=batch,
                    concurrency=args.concurrency,
                    seconds=args.seconds,
                )
                cpu[name] = (sampler.cpu_seconds() - cpu_before) / phases[name].seconds
            sampler.finish()
            peak_ab = sampler.peak_rss
            code = stop_process(gw.proc, grace=15)
            print(f"  stopping the gateway (exit {code})", flush=True)

            # Phase C, preload: Meta refuses the token, the pixel is parked, nothing is sent.
            buffer = workdir / "drain.db"
            pre = bench_gateway(
                buffer,
                fake.url,
                workdir / "gateway-preload.log",
                token="EAAB-wrong-token",  # deliberately refused by the fake
                log_level=args.log_level,
                workers=workers,
                assembly=assembly,
            )
            procs.append(pre.proc)
            await wait_healthy(pre, control, timeout=20)
            print(
                f"phase C: preloading {args.preload} events while the token is refused ...",
                flush=True,
            )
            preload = await run_load(
                f"{pre.url}/_capi/events",
                batch=100,
                concurrency=min(args.concurrency, 16),
                seconds=args.drain_timeout,
                total=args.preload,
            )
            code = stop_process(pre.proc, grace=15)
            print(f"  stopping the preload gateway (exit {code})", flush=True)
            states = queue_stats(buffer)
            backlog = states["pending"] + states["blocked"]
            print(f"  backlog: {backlog} events ({states})", flush=True)

            # Phase C, drain: the right token releases the parked pixel at start.
            base = (await fake.get(control, "stats"))["events_received"]
            drain = bench_gateway(
                buffer,
                fake.url,
                workdir / "gateway-drain.log",
                token=TOKEN,
                log_level=args.log_level,
                workers=workers,
                assembly=assembly,
            )
            procs.append(drain.proc)
            sampler_c = Sampler(drain.proc.pid)
            sampler_c.start()
            # (when, events received so far, gateway CPU seconds so far)
            samples: list[tuple[float, int, float]] = []
            deadline = time.monotonic() + args.drain_timeout
            while time.monotonic() < deadline:
                received = (await fake.get(control, "stats"))["events_received"] - base
                samples.append((time.perf_counter(), received, sampler_c.cpu_seconds()))
                if received >= backlog or drain.proc.poll() is not None:
                    break
                await asyncio.sleep(0.05)
            sampler_c.finish()
            if not samples:
                raise SystemExit("no drain sample was taken")
            # From the last sample before the first delivery to the first sample with all.
            first = max((i for i, s in enumerate(samples) if s[1] == 0), default=0)
            t0, _, cpu_c0 = samples[first]
            t1, delivered, cpu_c1 = samples[-1]
            drain_seconds = max(t1 - t0, 1e-9)
            drain_rate = delivered / drain_seconds
            cpu_c = cpu_c1 - cpu_c0
            await wait_healthy(drain, control, timeout=20)
            code = stop_process(drain.proc, grace=15)
            print(f"  stopping the drain gateway (exit {code})", flush=True)
            final = queue_stats(buffer)

        a, b = phases["A"], phases["B"]
        rows = [
            Row("accepted ev/s, batches of 1", a.rate, "ev/s"),
            Row("accepted ev/s, batches of 100", b.rate, "ev/s", TARGET_ACCEPTED_100),
            Row("delivered ev/s (drain)", drain_rate, "ev/s", TARGET_DELIVERED),
            Row("/events p50, batches of 1", a.percentile(0.5) * 1000, "ms"),
            Row("/events p99, batches of 1", a.percentile(0.99) * 1000, "ms"),
            Row("/events p50, batches of 100", b.percentile(0.5) * 1000, "ms"),
            Row("/events p99, batches of 100", b.percentile(0.99) * 1000, "ms"),
            Row("gateway peak RSS, A+B", peak_ab / 2**20, "MiB"),
            Row("gateway peak RSS, drain", sampler_c.peak_rss / 2**20, "MiB"),
            Row("gateway CPU, A", cpu["A"] * 100, "%"),
            Row("gateway CPU, B", cpu["B"] * 100, "%"),
            Row("gateway CPU, drain", cpu_c / drain_seconds * 100, "%"),
            # CPU per event: what a feature costs, whatever else shares the machine's cores.
            Row("gateway CPU per event, A", _per_event(cpu["A"], a.rate), "µs"),
            Row("gateway CPU per event, B", _per_event(cpu["B"], b.rate), "µs"),
            Row("gateway CPU per event, drain", _per_event(cpu_c, delivered), "µs"),
            Row("load generator CPU, A", a.client_cpu / a.seconds * 100, "%"),
            Row("load generator CPU, B", b.client_cpu / b.seconds * 100, "%"),
            Row("preload accepted ev/s (sender parked)", preload.rate, "ev/s"),
            # Anything but 202 (or no answer) means the figures above are not comparable.
            Row("requests not answered 202, A / B", _refused(a) + _refused(b), "req"),
        ]
        details = {
            "phases": {
                name: {
                    "batch": batch,
                    "events": res.events,
                    "requests": res.requests,
                    "failures": res.failures,
                    "seconds": round(res.seconds, 3),
                    "statuses": res.statuses,
                }
                for name, batch, res in (("A", 1, a), ("B", 100, b), ("preload", 100, preload))
            },
            "drain": {
                "backlog": backlog,
                "delivered": delivered,
                "seconds": round(drain_seconds, 3),
                "final_states": final,
            },
        }
    return {"rows": rows, "details": details}


def print_table(results: dict[str, list[Row]]) -> None:
    """metric | measured per run | ratio last/first | target | ratio to target."""
    counts = list(results)
    first = results[counts[0]]
    width = max(len(r.metric) for r in first)
    heads = "".join(f"  {n:>16}" for n in counts)
    scale = "last/1st" if len(counts) > 1 else ""
    print()
    print(f"{'metric':<{width}}{heads}  {scale:>7}  {'target':>14}  {'to target':>9}")
    print("-" * (width + 18 * len(counts) + 38))
    for i, row in enumerate(first):
        cells = [results[n][i] for n in counts]
        values = "".join(f"  {f'{c.measured:,.1f} {c.unit}':>16}" for c in cells)
        ratio = ""
        if len(cells) > 1 and cells[0].measured:
            ratio = f"{cells[-1].measured / cells[0].measured:.2f}x"
        target = f">= {row.target:,.0f} {row.unit}" if row.target is not None else "-"
        to_target = " / ".join(f"{c.ratio:.2f}x" for c in cells if c.ratio is not None) or "-"
        print(f"{row.metric:<{width}}{values}  {ratio:>7}  {target:>14}  {to_target:>9}")


def _refused(res: PhaseResult) -> int:
    """Requests of a phase answered with anything but 202, or not answered."""
    return res.failures + sum(n for status, n in res.statuses.items() if status != 202)


def _per_event(cpu_seconds: float, events: float) -> float:
    """Microseconds of gateway CPU per event (`cpu_seconds` per second and `events` per
    second, or both totals)."""
    return cpu_seconds / events * 1e6 if events else 0.0


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="length of phases A and B")
    parser.add_argument(
        "--concurrency",
        type=int,
        default=32,
        help="concurrent clients (default 32; with --store the same count posts to every "
        "replica count. Two replicas against one on this 2-core machine: 1.14-1.18x at 16, "
        "median ~1.22x at 32; at 64 one replica's larger group commits cost less per event "
        "and two reached only 0.81-1.15x; bench/README, issue 15 round 7)",
    )
    parser.add_argument("--preload", type=int, default=50_000, help="backlog for phase C")
    parser.add_argument(
        "--drain-timeout", type=float, default=120.0, help="bound on preload and on drain"
    )
    parser.add_argument(
        "--workers",
        type=parse_workers,
        default=[1, 2],
        help="worker counts to compare, comma-separated (default: 1,2)",
    )
    parser.add_argument(
        "--assembly",
        type=lambda text: [v.strip() for v in text.split(",") if v.strip()],
        default=["on"],
        help="assembly settings to compare: on, off or off,on (default: on)",
    )
    parser.add_argument(
        "--log-level", default="info", help="the gateway's log level (default: info, as shipped)"
    )
    parser.add_argument("--json", type=Path, help="also write the results to this JSON file")
    parser.add_argument(
        "--workdir", type=Path, help="keep buffers and logs here (default: a temp dir, removed)"
    )
    parser.add_argument(
        "--store",
        help="compare SQLite with 1, 2, 3 replicas on PostgreSQL: a postgresql:// URL of a "
        "server that may create databases, or `pg` for a throwaway cluster (bench_replicas.py)",
    )
    parser.add_argument(
        "--statements",
        type=int,
        default=0,
        help="with --store pg: print the N costliest statements per replica count "
        "(pg_stat_statements)",
    )
    parser.add_argument(
        "--relations",
        type=int,
        default=0,
        help="with --store pg: print the N tables and indexes that took the most WAL per "
        "accepted event, with their record kinds (pg_walinspect)",
    )
    parser.add_argument(
        "--waits",
        type=int,
        default=0,
        help="with --store: print the N commonest (wait event, statement) pairs of the "
        "database's active backends while clients posted (pg_stat_activity, every 10 ms)",
    )
    parser.add_argument(
        "--replicas",
        type=lambda text: sorted({int(part) for part in text.split(",") if part.strip()}),
        default=[0, 1, 2, 3],
        help="with --store: replica counts to run, 0 for SQLite (default: 0,1,2,3)",
    )
    parser.add_argument(
        "--compare",
        type=Path,
        action="append",
        help="with --store: also run the gateway of this other checkout (its .venv), "
        "interleaved with this one's at each replica count (e.g. /work/wt/base); repeatable",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="with --store: run every configuration this many times, interleaved",
    )
    args = parser.parse_args(argv)
    if args.store is not None:
        from bench_replicas import run_store_bench

        with tempfile.TemporaryDirectory(prefix="capigw-") as tmp:
            run_store_bench(args, args.workdir or Path(tmp))
        return 0
    if args.seconds <= 0 or args.concurrency < 1 or args.preload < 1:
        parser.error("--seconds, --concurrency and --preload must be positive")

    if not args.assembly or any(v not in ASSEMBLY_ENV for v in args.assembly):
        parser.error("--assembly takes on, off or both, comma-separated")
    outcomes: dict[str, dict[str, Any]] = {}
    try:
        with contextlib.ExitStack() as stack:
            if args.workdir is not None:
                args.workdir.mkdir(parents=True, exist_ok=True)
                root = args.workdir
            else:
                root = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="capigw-")))
            for workers in args.workers:
                for assembly in args.assembly:
                    workdir = root / f"workers-{workers}-assembly-{assembly}"
                    workdir.mkdir(exist_ok=True)
                    for old in workdir.glob("*.db*"):  # a --workdir kept from an earlier run
                        old.unlink()
                    label = f"w{workers} asm={assembly}"
                    outcomes[label] = asyncio.run(benchmark(args, workdir, workers, assembly))
    except AssertionError as exc:  # a subprocess did not start or a CLI call failed
        raise SystemExit(str(exc)) from None
    results: dict[str, list[Row]] = {n: o["rows"] for n, o in outcomes.items()}
    print_table(results)
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        counts = list(results)
        document = {
            "machine": {
                "cpus": os.cpu_count(),
                "python": platform.python_version(),
                "platform": platform.platform(),
            },
            "args": {
                "seconds": args.seconds,
                "concurrency": args.concurrency,
                "preload": args.preload,
                "workers": args.workers,
                "assembly": args.assembly,
                "log_level": args.log_level,
            },
            "results": [
                {
                    "metric": row.metric,
                    "unit": row.unit,
                    "target": row.target,
                    "measured": {str(n): round(results[n][i].measured, 2) for n in counts},
                    "ratio_to_target": {str(n): _rounded(results[n][i].ratio) for n in counts},
                }
                for i, row in enumerate(results[counts[0]])
            ],
            "details": {str(n): o["details"] for n, o in outcomes.items()},
        }
        args.json.write_text(json.dumps(document, indent=2) + "\n")
        print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
