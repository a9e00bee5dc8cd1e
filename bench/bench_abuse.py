"""What an outside probe does to the gateway, measured (not a test).

    python bench/bench_abuse.py [--slow 250,500,1000,2000] [--readers 500]
                                [--fuzz 3000] [--json PATH]

Everything runs on 127.0.0.1: the fake site (tests/fakes/upstream.py) and `capi-gateway
serve --dry-run` as subprocesses, the clients in this process. Each figure is taken twice
in one run, side by side: with the gateway as shipped ("guarded") and with its guards
against slow and greedy clients turned off ("open": `request_buffer_kb=0`,
`client_body_min_rate=0`, unbounded upstream share and connections).

1. Slow bodies: N clients (each from its own X-Forwarded-For address) POST with
   `Content-Length: 4096` and send one byte every 2 s; meanwhile 20 page requests from
   another address. The site is "up" when all 20 answer 200 within 3 s.
2. Slow readers: N clients GET a 2 MB tagged HTML page (plain, and brotli-encoded, which
   the gateway decodes and re-encodes) and stop reading after 16 KiB (a small receive
   buffer) for 10 s, then leave. The gateway's RSS idle, at the peak and 5 s
   after they left.
3. Fuzz: requests to `/events`, `/collect` and `/hooks/<name>` with mutated bodies (NaN,
   1e400, 400-digit integers, lists for strings, "http://[" URLs, cut and non-UTF-8 bytes)
   and non-UTF-8 `Authorization` headers; the count of 5xx answers and of tracebacks in the
   gateway's log.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import hmac
import json
import random
import re
import resource
import socket
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

try:
    import psutil
except ImportError:  # pragma: no cover - the bench extra is missing
    sys.exit("bench_abuse.py needs psutil: pip install -e '.[bench]'")

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.fakes.processes import (
    HOST,
    clean_env,
    free_port,
    gateway_cmd,
    listening_url,
    serve_args,
    spawn,
    stop_process,
    tail,
)

MIB = 1024 * 1024
PIXEL = "123456789012345"
API_KEY = "bench-api-key-0123456789"
RULES = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "fuzz-rules"
HOOK_SECRET = b"fuzz-secret-not-a-real-one"
UA = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0"
OPEN = {
    "CAPIGW_REQUEST_BUFFER_KB": "0",
    "CAPIGW_CLIENT_BODY_MIN_RATE": "0",
    "CAPIGW_UPSTREAM_CONNECTIONS_PER_CLIENT": "1000000",
    "CAPIGW_MAX_CONNECTIONS": "1000000",
    "CAPIGW_MAX_CONNECTIONS_PER_CLIENT": "1000000",
}


@dataclass
class Running:
    proc: Any
    port: int
    log: Path

    def rss(self) -> int:
        return int(psutil.Process(self.proc.pid).memory_info().rss)


async def start(tmp: Path, name: str, upstream: str, env: dict[str, str]) -> Running:
    port = free_port()
    log = tmp / f"{name}.log"
    args = serve_args(
        port,
        tmp / f"{name}.db",
        "--upstream",
        upstream,
        "--dry-run",
        "--pixel-id",
        PIXEL,
        "--access-token",
        "EAAB-bench",
        "--api-key",
        API_KEY,
        "--rules",
        str(RULES),
    )
    proc = spawn([*gateway_cmd(), *args], log, env=clean_env(**env))
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the gateway exited:\n{tail(log)}")
        with contextlib.suppress(OSError):
            status, _, _ = await request(port, "GET", "/_capi/health")
            if status == 200:
                return Running(proc, port, log)
        await asyncio.sleep(0.1)
    stop_process(proc)
    raise SystemExit(f"the gateway did not start:\n{tail(log)}")


async def request(
    port: int,
    method: str,
    path: str,
    body: bytes = b"",
    headers: dict[str, str] | None = None,
    *,
    raw_headers: bytes = b"",
    timeout: float = 10,
) -> tuple[int, dict[str, str], bytes]:
    """One request on its own connection: (status, headers, body); status 0 on a failure."""
    reader, writer = await asyncio.open_connection(HOST, port)
    try:
        head = f"{method} {path} HTTP/1.1\r\nHost: {HOST}:{port}\r\nConnection: close\r\n"
        for name, value in (headers or {}).items():
            head += f"{name}: {value}\r\n"
        if body or method == "POST":
            head += f"Content-Length: {len(body)}\r\n"
        writer.write(head.encode("latin-1") + raw_headers + b"\r\n" + body)
        data = await asyncio.wait_for(reader.read(), timeout)
    except (OSError, TimeoutError):
        return 0, {}, b""
    finally:
        writer.transport.abort()
    top, _, rest = data.partition(b"\r\n\r\n")
    lines = top.decode("latin-1").split("\r\n")
    try:
        status = int(lines[0].split(" ", 2)[1])
    except (IndexError, ValueError):
        return 0, {}, b""
    found = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        found.setdefault(name.strip().lower(), value.strip())
    return status, found, rest


# -- 1. slow bodies ---------------------------------------------------------------------------


async def slow_bodies(gw: Running, count: int, hold: float) -> tuple[int, float]:
    """(pages answered 200 within 3 s out of 20, their slowest time) while `count` trickle."""
    writers: list[asyncio.StreamWriter] = []
    for i in range(count):
        with contextlib.suppress(OSError):
            _, writer = await asyncio.open_connection(HOST, gw.port)
            writer.write(
                f"POST /upload HTTP/1.1\r\nHost: shop\r\nX-Forwarded-For: 10.{i // 65536}."
                f"{i // 256 % 256}.{i % 256}\r\nContent-Type: application/octet-stream\r\n"
                "Content-Length: 4096\r\n\r\n".encode()
            )
            writers.append(writer)

    async def drip() -> None:
        while True:
            for writer in writers:
                if not writer.is_closing():
                    writer.write(b"x")
            await asyncio.sleep(2)

    task = asyncio.create_task(drip())
    try:
        await asyncio.sleep(hold)

        async def page() -> float | None:
            began = time.monotonic()
            status, _, _ = await request(
                gw.port, "GET", "/html", headers={"X-Forwarded-For": "192.0.2.1"}, timeout=3
            )
            return time.monotonic() - began if status == 200 else None

        times = await asyncio.gather(*(page() for _ in range(20)))
        ok = [t for t in times if t is not None and t <= 3]
        return len(ok), max(ok, default=float("nan"))
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        for writer in writers:
            writer.transport.abort()
        await asyncio.sleep(1)


# -- 2. slow readers --------------------------------------------------------------------------


PAGES = {"plain": "/bytes/2000000?ct=text/html", "br": "/html?pad=2000000&enc=br"}


async def slow_readers(gw: Running, count: int, hold: float, path: str) -> tuple[int, int, int]:
    """RSS (idle, peak, 5 s after) around `count` clients that stop reading a 2 MB page."""
    idle = gw.rss()
    socks: list[socket.socket] = []
    reading: list[bool] = []
    loop = asyncio.get_running_loop()

    async def one(i: int) -> None:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.setblocking(False)
        try:
            await loop.sock_connect(sock, (HOST, gw.port))
            await loop.sock_sendall(
                sock,
                f"GET {path} HTTP/1.1\r\nHost: shop\r\nAccept: text/html\r\n"
                f"X-Forwarded-For: 10.1.{i // 256}.{i % 256}\r\n"  # visitors, not one
                f"Accept-Encoding: br\r\nUser-Agent: {UA}\r\n\r\n".encode(),
            )
            first = await asyncio.wait_for(loop.sock_recv(sock, 4096), 10)
            got = len(first)
            while got < 16384:
                chunk = await asyncio.wait_for(loop.sock_recv(sock, 4096), 10)
                if not chunk:
                    break
                got += len(chunk)
            reading.append(got >= 16384 and b" 200 " in first)
        except (OSError, TimeoutError):
            pass
        socks.append(sock)

    await asyncio.gather(*(one(i) for i in range(count)))
    print(f"  ({sum(reading)} of {count} readers got the page's first 16 KiB)", flush=True)
    peak = gw.rss()
    began = time.monotonic()
    while time.monotonic() - began < hold:
        peak = max(peak, gw.rss())
        await asyncio.sleep(0.25)
    for sock in socks:
        sock.close()
    await asyncio.sleep(5)
    return idle, peak, gw.rss()


# -- 3. fuzz ----------------------------------------------------------------------------------

NASTY: list[Any] = [
    float("nan"),
    float("inf"),
    -float("inf"),
    10**400,
    -(10**400),
    ["home_delivery"],
    {"a": [1, {"b": None}]},
    "http://[",
    "",
    None,
    True,
    "x" * 5000,
    "\udcff",
    1e308,
    -1,
]


def mutate(value: Any, rng: random.Random, depth: int = 0) -> Any:
    if isinstance(value, dict):
        out = {k: mutate(v, rng, depth + 1) for k, v in value.items()}
        if out and rng.random() < 0.3:
            out[rng.choice(list(out))] = rng.choice(NASTY)
        return out
    if isinstance(value, list):
        return [mutate(v, rng, depth + 1) for v in value]
    return rng.choice(NASTY) if rng.random() < 0.15 else value


def encode(value: Any, rng: random.Random) -> bytes:
    data = json.dumps(value, allow_nan=True).encode("utf-8", "surrogateescape")
    roll = rng.random()
    if roll < 0.05:
        return data[: rng.randrange(len(data) + 1)]
    if roll < 0.08:
        return data.replace(b'"', b"\xff", 1)
    return data


async def fuzz(gw: Running, count: int, seed: int) -> tuple[int, int, int]:
    """(requests, 5xx answers, tracebacks in the log) for `count` fuzzed requests."""
    rng = random.Random(seed)
    status, headers, body = await request(
        gw.port, "GET", "/html", headers={"User-Agent": UA, "Accept": "text/html"}
    )
    page = body.decode("utf-8", "replace")
    token = re.search(r'data-token="([^"]+)"', page)
    event_id = re.search(r'data-event-id="([^"]+)"', page)
    cookie = headers.get("set-cookie", "").split(";", 1)[0]
    if status != 200 or not token or not event_id:
        raise SystemExit("the page was not tagged: no beacon to fuzz")
    now = int(time.time())
    event = {
        "event_name": "Purchase",
        "event_time": now,
        "event_id": "x",
        "action_source": "website",
        "event_source_url": "https://shop.example/p",
        "user_data": {"em": "a@b.example", "ph": "+14155550100", "client_user_agent": UA},
        "custom_data": {"value": 9.5, "currency": "EUR", "contents": [{"id": "1", "quantity": 1}]},
    }
    beacon = {
        "token": token.group(1),
        "url": f"http://{HOST}:{gw.port}/html",
        "referrer": "https://www.google.com/",
        "events": [{**event, "event_id": event_id.group(1) + ".1"}],
    }
    hook = {
        "type": "order.paid",
        "id": "o1",
        "amount": 12.5,
        "currency": "usd",
        "customer": {"email": "a@b.example", "phone": "+1 415 555 0100", "id": 7},
    }
    sem = asyncio.Semaphore(32)
    fivexx = 0

    async def one(i: int) -> None:
        nonlocal fivexx
        kind = i % 4
        if kind == 0:
            data = encode(mutate({"data": [dict(event, event_id=f"e{i}")]}, rng), rng)
            args = (
                "/_capi/events",
                data,
                {"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"},
                b"",
            )
        elif kind == 1:
            data = encode(mutate(beacon, rng), rng)
            args = (
                "/_capi/collect",
                data,
                {
                    "Origin": f"http://{HOST}:{gw.port}",
                    "User-Agent": UA,
                    "Cookie": cookie,
                    "Referer": rng.choice(["http://[", "x"]),
                    "Content-Type": "text/plain;charset=UTF-8",
                },
                b"",
            )
        elif kind == 2:
            data = encode(mutate(dict(hook, id=f"o{i}"), rng), rng)
            sig = hmac.new(HOOK_SECRET, data, hashlib.sha256).hexdigest()
            args = (
                "/_capi/hooks/fuzz",
                data,
                {"X-Sig": sig, "Content-Type": "application/json"},
                b"",
            )
        else:
            path = rng.choice(["/_capi/events", "/_capi/status", "/_capi/metrics", "/_capi/admin"])
            auth = b"Authorization: Bearer \xff\xfe" + bytes(
                rng.randrange(128, 256) for _ in range(4)
            )
            args = (path, b"{}", {"Content-Type": "application/json"}, auth + b"\r\n")
        path, data, headers, raw = args
        async with sem:
            status, _, _ = await request(
                gw.port,
                "POST"
                if path != "/_capi/status" and path != "/_capi/metrics" and path != "/_capi/admin"
                else "GET",
                path,
                data,
                headers,
                raw_headers=raw,
            )
        fivexx += status >= 500

    await asyncio.gather(*(one(i) for i in range(count)))
    await asyncio.sleep(0.5)
    tracebacks = gw.log.read_text(errors="replace").count("Traceback")
    return count, fivexx, tracebacks


# -- run --------------------------------------------------------------------------------------


async def run(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    site_log = tmp / "upstream.log"
    site = spawn([sys.executable, "-m", "tests.fakes.upstream", "--port", "0"], site_log)
    upstream = listening_url(site, site_log, "the upstream", 20)
    results: dict[str, Any] = {"slow_bodies": {}, "slow_readers": {}, "fuzz": {}}
    try:
        for variant, env in (("open", OPEN), ("guarded", {})):
            gw = await start(tmp, f"gw-{variant}", upstream, env)
            try:
                for n in args.slow:
                    ok, worst = await slow_bodies(gw, n, hold=args.hold)
                    results["slow_bodies"][f"{variant}/{n}"] = {"pages_ok": ok, "slowest_s": worst}
                    print(
                        f"slow bodies  {variant:8} {n:5} clients: {ok:2}/20 pages in <3 s"
                        f" (slowest {worst:.2f} s)",
                        flush=True,
                    )
                for kind, path in PAGES.items():
                    idle, peak, after = await slow_readers(gw, args.readers, 10, path)
                    results["slow_readers"][f"{variant}/{kind}"] = {
                        "idle": idle,
                        "peak": peak,
                        "after": after,
                    }
                    print(
                        f"slow readers {variant:8} {args.readers} clients, {kind} page:"
                        f" RSS idle {idle / MIB:.0f} MiB, peak {peak / MIB:.0f} MiB,"
                        f" 5 s after {after / MIB:.0f} MiB",
                        flush=True,
                    )
                total, fivexx, tracebacks = await fuzz(gw, args.fuzz, seed=12)
                results["fuzz"][variant] = {
                    "requests": total,
                    "5xx": fivexx,
                    "tracebacks": tracebacks,
                }
                print(
                    f"fuzz         {variant:8} {total} requests: {fivexx} 5xx,"
                    f" {tracebacks} tracebacks in the log",
                    flush=True,
                )
            finally:
                stop_process(gw.proc, grace=5)
    finally:
        stop_process(site, grace=2)
    print()
    print("figure                         open      guarded")
    for n in args.slow:
        o = results["slow_bodies"][f"open/{n}"]["pages_ok"]
        g = results["slow_bodies"][f"guarded/{n}"]["pages_ok"]
        print(f"pages ok, {n:5} slow bodies     {o:2}/20     {g:2}/20")
    for kind in PAGES:
        o = results["slow_readers"][f"open/{kind}"]
        g = results["slow_readers"][f"guarded/{kind}"]
        print(
            f"RSS peak, {args.readers} slow readers ({kind:5}) {o['peak'] / MIB:5.0f} MiB"
            f"  {g['peak'] / MIB:5.0f} MiB   (ratio {g['peak'] / o['peak']:.2f})"
        )
        print(
            f"RSS 5 s after ({kind:5})           {o['after'] / MIB:5.0f} MiB"
            f"  {g['after'] / MIB:5.0f} MiB"
        )
    print(
        f"fuzz 5xx                       {results['fuzz']['open']['5xx']:5}      "
        f"{results['fuzz']['guarded']['5xx']:5}"
    )
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--slow",
        type=lambda t: [int(x) for x in t.split(",")],
        default=[250, 500, 1000, 2000],
        help="slow-body client counts",
    )
    parser.add_argument("--hold", type=float, default=8.0, help="seconds before the page probe")
    parser.add_argument("--readers", type=int, default=500, help="slow readers of a 2 MB page")
    parser.add_argument("--fuzz", type=int, default=3000, help="fuzzed requests")
    parser.add_argument("--json", type=Path, help="also write the results to this JSON file")
    args = parser.parse_args(argv)
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    with tempfile.TemporaryDirectory(prefix="bench-abuse-") as tmp:
        results = asyncio.run(run(args, Path(tmp)))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
