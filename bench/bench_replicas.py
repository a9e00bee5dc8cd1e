"""`bench_events.py --store postgresql://…|pg`: replicas on one PostgreSQL beside SQLite.

Accepted and delivered events/s with batches of 100 for SQLite (one `serve`) and for 1, 2
and 3 `serve` replicas on one PostgreSQL database (a fresh database per count), in one run,
with the CPU µs spent per accepted event by the gateways and by PostgreSQL, so the point
where the cores run out is visible. `--store pg` starts a throwaway cluster with
PostgreSQL's durable defaults (tests/fakes/pgcluster.py, with the default 128 MB of
shared_buffers); a URL names a server whose user
may create databases. Clients spread requests over the replicas round-robin, as a load
balancer would, each on a kept-alive connection per replica (the run prints how many TCP
connections the clients opened: one per client and replica, no reconnects); the bodies
are encoded before the clock starts and posted by a minimal HTTP/1.1 client (`_Connection`),
so that the load generator's own CPU per event (`load µs/ev`) takes less of the cores it
shares with what it measures. `--compare
TREE` runs another checkout's gateway (its .venv) right after this one's at each replica
count, and `--rounds N` repeats the lot, so A and B see the same load from elsewhere.
`--statements N` (with `pg`) loads pg_stat_statements into the cluster and
prints, per replica count, the N statements that took the most time while clients posted:
calls per batch of 100 accepted events, execution µs and WAL bytes per accepted event.
With a throwaway cluster (`pg`) every run also counts, from the first post until the drain
ends (so every accepted event was stored, claimed and sent in the window), the database's
writes per accepted event from its WAL records (pg_walinspect): bytes, heap tuples written
(inserts and updates, HOT ones apart), row locks and B-tree index entries added, which the
machine's load does not move; `--relations N` splits them by table and index
(`walrelations.py`).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import aiohttp
import asyncpg
import psutil
from bench_events import API_KEY, GATEWAY_ENV, PIXEL, TOKEN, Sampler, body
from walrelations import print_relations

from tests.fakes.pgcluster import throwaway_cluster
from tests.fakes.processes import (
    HOST,
    Gateway,
    clean_env,
    free_port,
    gateway_cmd,
    spawn,
    start_fake,
    stop_at_exit,
    stop_process,
    wait_healthy,
)

KEY = "ab" * 32
BATCH = 100
# Seconds without a new event at the fake that end the drain (see `_one`).
QUIET = 3.0


@dataclass
class StoreRun:
    """What one configuration measured."""

    label: str
    accepted: float  # events/s while clients posted
    delivered: float  # events/s from the first request until all had reached the fake
    gateway_us: float  # gateway CPU µs per accepted event
    database_us: float  # PostgreSQL CPU µs per accepted event (0 for SQLite)
    errors: int
    wal_bytes: float = 0.0  # WAL bytes per accepted event (0 for SQLite)
    # What else the cores did per accepted event: this process posting the batches, and the
    # fake Graph API taking the deliveries; `busy` is the share of all cores in use while
    # the clients posted (near 1.0: the cores ran out, more replicas cannot add).
    load_us: float = 0.0
    graph_us: float = 0.0
    busy: float = 0.0
    # From the first post until the drain ended, per accepted event (pg_walinspect; None:
    # not available): WAL bytes, and WAL records by kind (heap inserts, updates, HOT
    # updates, row locks, B-tree index entries).
    writes: dict[str, float] | None = None
    # Transactions the store's database committed per 100 accepted events while the clients
    # posted (pg_stat_database.xact_commit; its backends report within a second, so a
    # little of the window's edge goes to the neighbour): group commits, claims, results.
    commits: float = 0.0


# WAL record kinds (pg_walinspect's "resource_manager/record_type") counted per event.
WRITE_KINDS = {
    "heap ins": (
        "Heap/INSERT",
        "Heap2/MULTI_INSERT",
        "Heap2/MULTI_INSERT+INIT",
        "Heap/INSERT+INIT",
    ),
    "heap upd": ("Heap/UPDATE", "Heap/UPDATE+INIT"),
    "HOT upd": ("Heap/HOT_UPDATE", "Heap/HOT_UPDATE+INIT"),
    "locks": ("Heap/LOCK",),
    "idx ins": ("Btree/INSERT_LEAF", "Btree/INSERT_UPPER", "Btree/INSERT_POST"),
}


async def _wal_writes(admin: str, start: int, end: int, events: int) -> dict[str, float] | None:
    """WAL bytes and records by kind between two LSNs, per accepted event."""
    conn = await asyncpg.connect(admin)
    try:
        await conn.execute("CREATE EXTENSION IF NOT EXISTS pg_walinspect")
        rows = await conn.fetch(
            'SELECT "resource_manager/record_type" AS kind, count, combined_size '
            "FROM pg_get_wal_stats('0/0'::pg_lsn + $1::numeric, '0/0'::pg_lsn + $2::numeric, "
            "true) WHERE count > 0",
            start,
            end,
        )
    except asyncpg.PostgresError:
        return None  # an older server, or a role that may not read the WAL
    finally:
        await conn.close()
    per = max(events, 1)
    counts = {str(r["kind"]): int(r["count"]) for r in rows}
    out = {"WAL B": sum(int(r["combined_size"]) for r in rows) / per}
    for name, kinds in WRITE_KINDS.items():
        out[name] = sum(counts.get(k, 0) for k in kinds) / per
    return out


def _serve(buffer: str, graph_url: str, log: Path, tree: Path | None = None) -> Gateway:
    """`serve` of this checkout, or with `tree` of that one (its .venv's script, its cwd)."""
    port = free_port()
    cmd = [
        *(gateway_cmd() if tree is None else [str(tree / ".venv" / "bin" / "capi-gateway")]),
        "serve",
        "--listen",
        f"{HOST}:{port}",
        "--buffer",
        buffer,
        "--pixel-id",
        PIXEL,
        "--access-token",
        TOKEN,
        "--graph-url",
        graph_url,
        "--api-key",
        API_KEY,
    ]
    env = clean_env(
        **GATEWAY_ENV,
        CAPIGW_ENCRYPTION_KEY=KEY,
        CAPIGW_LOG_LEVEL="warning",
        CAPIGW_ASSEMBLY_HOLD="0",
    )
    if tree is None:
        return Gateway(spawn(cmd, log, env=env), f"http://{HOST}:{port}", log)
    # The other checkout's own code: a PYTHONPATH naming this one (a snapshot of it run
    # while the checkout is edited) would make the comparison one of this code with itself.
    env.pop("PYTHONPATH", None)
    return Gateway(spawn(cmd, log, env=env, cwd=tree), f"http://{HOST}:{port}", log)


# Accepted events/s a run is not expected to pass: bodies are encoded for this many before
# the clients start (more are encoded while they post, should a run go faster).
BODIES_PER_SECOND = 15_000 // BATCH


def _bodies(seconds: float) -> list[bytes]:
    """The request bodies of a run, encoded before its clock starts: the same events as
    encoded per request (nine in ten new, one a copy of a recent one, `body`), without the
    load generator's ~3 µs per event of JSON on the cores the gateways and the database
    share while they are measured."""
    return [body(BATCH) for _ in range(int(seconds * BODIES_PER_SECOND) + 1)]


class _Connection:
    """One kept-alive HTTP/1.1 connection of a client to a replica, posting prepared
    bodies and reading whole responses (Content-Length, as the gateway answers): the same
    bytes on the wire as aiohttp's client, one request at a time. With the bodies encoded
    ahead (`_bodies`) the load generator's CPU per accepted event fell from 8-12 µs to
    3-5 (bench/README, issue 15 round 7), on the cores it shares with what it measures."""

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        self.host = parts.hostname or HOST
        self.port = parts.port or 80
        self.head = (
            f"POST {parts.path} HTTP/1.1\r\nHost: {parts.netloc}\r\n"
            f"Authorization: Bearer {API_KEY}\r\nContent-Type: application/json\r\n"
            "Content-Length: "
        ).encode()
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def post(self, payload: bytes) -> tuple[int, bool]:
        """POST `payload`: (status, whether a TCP connection was opened for it)."""
        opened = False
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
            opened = True
        assert self.reader is not None
        self.writer.write(b"%s%d\r\n\r\n%s" % (self.head, len(payload), payload))
        status = int((await self.reader.readline()).split(b" ", 2)[1])
        length, close = 0, False
        while (line := await self.reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"content-length":
                length = int(value)
            elif name == b"connection" and value.strip().lower() == b"close":
                close = True
            elif name == b"transfer-encoding":
                raise ConnectionError(f"unexpected Transfer-Encoding: {value.strip()!r}")
        await self.reader.readexactly(length)
        if close:
            self.close()
        return status, opened

    def close(self) -> None:
        """Drop the connection (the next post opens another)."""
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


async def _load(
    urls: list[str], concurrency: int, seconds: float, bodies: list[bytes]
) -> tuple[int, int, float]:
    """Clients post `bodies` (then fresh ones) round-robin over `urls` for `seconds`:
    (accepted, errors, s)."""
    accepted = errors = opened = 0
    stop_at = time.monotonic() + seconds
    queued = iter(bodies)

    async def client(n: int) -> None:
        nonlocal accepted, errors, opened
        connections = [_Connection(url) for url in urls]
        try:
            for i in range(1_000_000):
                if time.monotonic() >= stop_at:
                    return
                conn = connections[(n + i) % len(urls)]
                try:
                    async with asyncio.timeout(60):
                        status, new = await conn.post(next(queued, None) or body(BATCH))
                    opened += new
                    if status == 202:
                        accepted += BATCH
                    else:
                        errors += 1
                except (OSError, ValueError, IndexError, TimeoutError, asyncio.IncompleteReadError):
                    conn.close()
                    errors += 1
        finally:
            for conn in connections:
                conn.close()

    began = time.perf_counter()
    await asyncio.gather(*(client(n) for n in range(concurrency)))
    print(f"   connections opened by the clients: {opened}", flush=True)
    return accepted, errors, time.perf_counter() - began


_WAITS = """
SELECT coalesce(wait_event_type, 'CPU') || ':' || coalesce(wait_event, '-') AS wait,
    left(regexp_replace(query, '\\s+', ' ', 'g'), 50) || coalesce(' <- ' || (
        SELECT left(regexp_replace(b.query, '\\s+', ' ', 'g'), 40) FROM pg_stat_activity AS b
        WHERE b.pid = (pg_blocking_pids(a.pid))[1]), '') AS query
FROM pg_stat_activity AS a
WHERE datname = $1 AND state = 'active' AND pid <> pg_backend_pid()
"""


async def _sample_waits(admin: str, dsn: str, stop: asyncio.Event) -> dict[tuple[str, str], int]:
    """What the database's active backends wait on, sampled every 10 ms until `stop`."""
    name = urlsplit(dsn).path.lstrip("/")
    seen: dict[tuple[str, str], int] = {}
    conn = await asyncpg.connect(admin)
    try:
        while not stop.is_set():
            for r in await conn.fetch(_WAITS, name):
                key = (str(r["wait"]), str(r["query"]))
                seen[key] = seen.get(key, 0) + 1
            seen[("samples", "")] = seen.get(("samples", ""), 0) + 1
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.01)
    finally:
        await conn.close()
    return seen


def _print_waits(seen: dict[tuple[str, str], int], top: int) -> None:
    samples = max(seen.pop(("samples", ""), 1), 1)
    print(f"   waits: active backends per sample ({samples} samples), by wait and statement")
    for (wait, query), n in sorted(seen.items(), key=lambda kv: -kv[1])[:top]:
        print(f"   {n / samples:>6.2f}  {wait:<28} {query}")


_TOP = """
SELECT calls, total_exec_time, rows, wal_bytes, toplevel, query,
    shared_blks_hit + shared_blks_read AS blocks FROM pg_stat_statements
WHERE dbid = (SELECT oid FROM pg_database WHERE datname = $1)
ORDER BY total_exec_time DESC
"""


async def _commits(admin: str, dsn: str) -> int:
    """Transactions committed so far in the database `dsn` names (pg_stat_database)."""
    conn = await asyncpg.connect(admin)
    try:
        return int(
            await conn.fetchval(
                "SELECT xact_commit FROM pg_stat_database WHERE datname = $1",
                urlsplit(dsn).path.lstrip("/"),
            )
            or 0
        )
    finally:
        await conn.close()


async def _wal_lsn(admin: str) -> int:
    conn = await asyncpg.connect(admin)
    try:
        return int(await conn.fetchval("SELECT pg_current_wal_lsn() - '0/0'::pg_lsn"))
    except asyncpg.PostgresError:
        return 0  # a server that does not say (a standby): no WAL column
    finally:
        await conn.close()


async def _reset_statements(admin: str) -> None:
    conn = await asyncpg.connect(admin)
    try:
        await conn.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
        await conn.execute("SELECT pg_stat_statements_reset()")
    except asyncpg.PostgresError:
        pass  # not loaded on a server named by URL: `_print_statements` says so
    finally:
        await conn.close()


async def _print_statements(admin: str, dsn: str, accepted: int, top: int) -> None:
    """The `top` statements by execution time since the reset, per accepted event."""
    name = urlsplit(dsn).path.lstrip("/")
    conn = await asyncpg.connect(admin)
    try:
        rows = await conn.fetch(_TOP, name)
    except asyncpg.PostgresError as exc:
        # A server named by URL without pg_stat_statements in shared_preload_libraries.
        print(f"   statements: not available ({exc})")
        return
    finally:
        await conn.close()
    events = max(accepted, 1)
    top_level = [r for r in rows if r["toplevel"]]
    total = sum(float(r["total_exec_time"]) for r in top_level)
    calls = sum(int(r["calls"]) for r in top_level)
    wal = sum(int(r["wal_bytes"]) for r in top_level)
    blocks = sum(int(r["blocks"]) for r in top_level)
    print(
        f"   statements: {calls / events * BATCH:.1f} top-level calls per 100 events, "
        f"{total * 1000 / events:.1f} µs/event executing (wall, incl. waits), "
        f"{wal / events:,.0f} WAL bytes and {blocks / events:.1f} buffer reads per event"
    )
    print(
        f"   {'calls/100ev':>11} {'µs/ev':>7} {'rows/call':>9} {'WAL B/ev':>9} "
        f"{'bufs/ev':>7}  statement"
    )
    for r in rows[:top]:
        query = " ".join(str(r["query"]).split())
        nested = "" if r["toplevel"] else "(nested) "
        print(
            f"   {int(r['calls']) / events * BATCH:>11.2f} "
            f"{float(r['total_exec_time']) * 1000 / events:>7.1f} "
            f"{int(r['rows']) / max(int(r['calls']), 1):>9.1f} "
            f"{int(r['wal_bytes']) / events:>9.0f} {int(r['blocks']) / events:>7.1f}  "
            f"{nested}{query[:100]}"
        )


async def _one(
    label: str,
    buffers: list[str],
    workdir: Path,
    args: argparse.Namespace,
    postmaster: int | None,
    admin: str | None = None,
    tree: Path | None = None,
) -> StoreRun:
    print(f"-- {label} --", flush=True)
    with stop_at_exit() as procs:
        fake = start_fake(workdir / f"fake-{label}.log", token=TOKEN, count_only=True)
        procs.append(fake.proc)
        gateways = []
        for i, buffer in enumerate(buffers):
            gw = _serve(buffer, fake.url, workdir / f"gw-{label}-{i}.log", tree)
            procs.append(gw.proc)
            gateways.append(gw)
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as control:
            for gw in gateways:
                await wait_healthy(gw, control, timeout=30)
            samplers = [Sampler(gw.proc.pid) for gw in gateways]
            graph = Sampler(fake.proc.pid)
            graph.start()
            me = psutil.Process()
            database = Sampler(postmaster) if postmaster is not None else None
            for s in [*samplers, *([database] if database else [])]:
                s.start()
            statements = getattr(args, "statements", 0)
            if admin is not None and statements:
                await _reset_statements(admin)
            wal0 = await _wal_lsn(admin) if admin is not None else 0
            commits0 = await _commits(admin, buffers[0]) if admin is not None else 0
            gw_cpu0 = sum(s.cpu_seconds() for s in samplers)
            db_cpu0 = database.cpu_seconds() if database else 0.0
            base = (await fake.get(control, "stats"))["events_received"]
            waits = getattr(args, "waits", 0)
            stop_waits = asyncio.Event()
            sampling = (
                asyncio.create_task(_sample_waits(admin, buffers[0], stop_waits))
                if admin is not None and waits
                else None
            )
            bodies = _bodies(args.seconds)
            graph_cpu0 = graph.cpu_seconds()
            load_cpu0 = sum(me.cpu_times()[:2])
            machine0 = psutil.cpu_times()
            started = time.perf_counter()
            accepted, errors, seconds = await _load(
                [f"{gw.url}/_capi/events" for gw in gateways],
                args.concurrency,
                args.seconds,
                bodies,
            )
            machine1 = psutil.cpu_times()
            load_cpu = sum(me.cpu_times()[:2]) - load_cpu0
            graph_cpu = graph.cpu_seconds() - graph_cpu0
            idle = (machine1.idle + machine1.iowait) - (machine0.idle + machine0.iowait)
            total = sum(machine1) - sum(machine0)
            gw_cpu = sum(s.cpu_seconds() for s in samplers) - gw_cpu0
            db_cpu = (database.cpu_seconds() - db_cpu0) if database else 0.0
            wal = (await _wal_lsn(admin) - wal0) if admin is not None else 0
            commits = (await _commits(admin, buffers[0]) - commits0) if admin is not None else 0
            if sampling is not None:
                stop_waits.set()
                _print_waits(await sampling, waits)
            if admin is not None and statements:
                await _print_statements(admin, buffers[0], accepted, statements)
            deadline = time.monotonic() + args.drain_timeout
            received = 0
            # When the fake last saw the count grow: how many posts were copies (merged,
            # not sent again) is random, so "all sent" is also a count that stops growing
            # for QUIET seconds once most have arrived. Timed from its last growth, not
            # from when the wait noticed (a run just short of the 90 % mark once waited out
            # the whole drain timeout and printed 315 delivered ev/s).
            grew_at = time.perf_counter()
            while time.monotonic() < deadline:
                now_received = (await fake.get(control, "stats"))["events_received"] - base
                if now_received != received:
                    received, grew_at = now_received, time.perf_counter()
                # Copies merge (one in ten events is a copy): fewer sends than posts.
                if received >= accepted * 0.9 - BATCH:
                    await asyncio.sleep(0.2)
                    received = (await fake.get(control, "stats"))["events_received"] - base
                    grew_at = time.perf_counter()
                    break
                if received >= accepted * 0.8 and time.perf_counter() - grew_at > QUIET:
                    # Said, so that a stall past 80 % is not taken for the end of the copies.
                    print(
                        f"   drain ended by {QUIET:.0f} s without a send: {received:,} events "
                        f"reached the fake for {accepted:,} accepted"
                    )
                    break
                await asyncio.sleep(0.05)
            drained = grew_at - started
            wal_end = await _wal_lsn(admin) if admin is not None else 0
            writes = (
                await _wal_writes(admin, wal0, wal_end, accepted)
                if admin is not None and postmaster is not None
                else None
            )
            relations = int(getattr(args, "relations", 0) or 0)
            if relations and admin is not None and postmaster is not None:
                await print_relations(buffers[0], wal0, wal_end, accepted, relations)
            for s in [*samplers, graph, *([database] if database else [])]:
                s.finish()
        for gw in gateways:
            stop_process(gw.proc, grace=10)
    run = StoreRun(
        label,
        accepted / seconds,
        received / drained,
        gw_cpu / max(accepted, 1) * 1e6,
        db_cpu / max(accepted, 1) * 1e6,
        errors,
        wal / max(accepted, 1),
        load_cpu / max(accepted, 1) * 1e6,
        graph_cpu / max(accepted, 1) * 1e6,
        1.0 - idle / total if total > 0 else 0.0,
        writes,
        commits / max(accepted, 1) * BATCH,
    )
    print(
        f"   accepted {run.accepted:,.0f} ev/s, delivered {run.delivered:,.0f} ev/s, "
        f"CPU {run.gateway_us:,.0f} + {run.database_us:,.0f} µs/event, "
        f"WAL {run.wal_bytes:,.0f} B/event, {run.commits:.2f} commits/100 events, "
        f"errors {errors}",
        flush=True,
    )
    return run


@contextlib.contextmanager
def _server(store: str, statements: bool) -> Iterator[tuple[str, int | None]]:
    """(admin URL, postmaster pid or None) of the server `--store` names; with `statements`
    a throwaway cluster runs with pg_stat_statements loaded."""
    if store == "pg":
        with throwaway_cluster(durable=True) as cluster:
            # PostgreSQL's default shared_buffers (the test clusters' 32 MB made backends
            # evict and write dirty pages themselves within a few seconds of load, a cost
            # no production server pays).
            cluster.options += ("shared_buffers=128MB",)
            if statements:
                # Statements run by triggers and SQL functions too (the queue counters).
                cluster.options += (
                    "shared_preload_libraries=pg_stat_statements",
                    "pg_stat_statements.track=all",
                )
            cluster.restart()
            pid = int((cluster.datadir / "postmaster.pid").read_text().split()[0])
            yield cluster.dsn(), pid
        return
    yield store, None


async def _database(admin: str) -> str:
    name = f"capigw_bench_{secrets.token_hex(4)}"
    conn = await asyncpg.connect(admin)
    try:
        await conn.execute(f"CREATE DATABASE {name}")
    finally:
        await conn.close()
    return urlunsplit(urlsplit(admin)._replace(path=f"/{name}"))


def run_store_bench(args: argparse.Namespace, root: Path) -> list[StoreRun]:
    """SQLite, then 1, 2, 3 replicas on PostgreSQL; prints the table and returns the runs."""
    counts = getattr(args, "replicas", None) or [0, 1, 2, 3]
    compare: list[Path] = getattr(args, "compare", None) or []
    rounds = max(1, int(getattr(args, "rounds", 1) or 1))
    # This checkout's gateway ("pg xN") and, with --compare, the others' ("B xN", "C xN"),
    # one after the other at each count and round, so all see the same load from elsewhere.
    trees: list[tuple[str, Path | None]] = [("pg", None)]
    for index, tree in enumerate(compare):
        trees.append((chr(ord("B") + index), tree.resolve()))
        print(f"{trees[-1][0]}: {trees[-1][1]}")
    runs = []
    statements = int(getattr(args, "statements", 0) or 0)
    with _server(args.store, statements > 0 and args.store == "pg") as (admin, postmaster):
        for n in range(rounds):
            # A folder per round: the fake's and gateways' logs are looked into for their
            # start, and one written by the round before would answer for them.
            workdir = root / f"round-{n}"
            workdir.mkdir(parents=True, exist_ok=True)
            if 0 in counts:
                sqlite = workdir / "sqlite.db"
                runs.append(asyncio.run(_one("sqlite", [str(sqlite)], workdir, args, None)))
            for count in [c for c in counts if c > 0]:
                for name, tree in trees:
                    dsn = asyncio.run(_database(admin))
                    label = f"{name} x{count}"
                    runs.append(
                        asyncio.run(
                            _one(label, [dsn] * count, workdir, args, postmaster, admin, tree)
                        )
                    )
    # Ratios to each tree's x1 of the same round only when it ran (`--replicas` without 1:
    # none).
    ones: dict[tuple[int, str], float] = {}
    per_round = len(runs) // rounds
    for index, r in enumerate(runs):
        name, _, count = r.label.partition(" x")
        if count == "1":
            ones[(index // per_round, name)] = r.accepted
    print()
    print(
        f"{'store':<10}{'accepted ev/s':>15}{'delivered ev/s':>16}{'vs x1':>10}"
        f"{'gw µs/ev':>10}{'db µs/ev':>10}{'load µs/ev':>12}{'graph µs/ev':>13}"
        f"{'cores busy':>12}{'WAL B/ev':>10}{'xact/100ev':>11}{'errors':>8}"
    )
    for index, r in enumerate(runs):
        one = ones.get((index // per_round, r.label.partition(" x")[0]), 0.0)
        print(
            f"{r.label:<10}{r.accepted:>15,.0f}{r.delivered:>16,.0f}"
            f"{f'{r.accepted / one:.2f}x' if one else '-':>10}"
            f"{r.gateway_us:>10,.0f}{r.database_us:>10,.0f}{r.load_us:>12,.0f}"
            f"{r.graph_us:>13,.0f}{r.busy:>12.0%}{r.wal_bytes:>10,.0f}{r.commits:>11.2f}"
            f"{r.errors:>8}"
        )
    counted = [r for r in runs if r.writes]
    if counted:
        print()
        print("database writes per accepted event, first post to end of drain (pg_walinspect):")
        names = list(counted[0].writes or {})
        print(f"{'store':<10}" + "".join(f"{n:>10}" for n in names))
        for r in counted:
            w = r.writes or {}
            print(f"{r.label:<10}" + "".join(f"{w.get(n, 0.0):>10,.2f}" for n in names))
    print(
        f"(batches of {BATCH}, {args.concurrency} clients, {args.seconds:g} s; "
        f"{psutil.cpu_count()} CPUs shared by load generator, gateways, database and fake "
        "Graph API; cores busy: all CPUs' use while the clients posted)"
    )
    return runs
