"""nginx's own cost per request of a front-proxy config, in instructions and syscalls.

    python bench/callgrind_front.py [--views 5,25] [--assets 40] [--compare DIR]
                                    [--conf NAME=PATH ...] [--only NAMES] [--strace]
                                    [--pcre-jit] [--wrk SECONDS,ROUNDS] [--json PATH]

Wall-clock req/s on a shared machine moves with whatever else runs; the instructions nginx
executes per request do not. For each config, one nginx runs under
`valgrind --tool=callgrind` (`master_process off`: the one process that does the work) in
front of an origin (a second, ordinary nginx serving `bench_front`'s site), and a client in
this script sends whole page views (`bench_front`'s request list and headers: one document
and `--assets` assets) over one keep-alive connection. It runs twice, with the two counts
of `--views`, and the difference of the instruction totals divided by the difference of
the request counts is the cost of one request (start-up and shutdown cancel out).

Configs (each is a file in the `http {}` context next to the same settings as bench_front):

- `plain`: bench_proxy's plain reverse-proxy block (proxy_pass, Connection "", Host,
  X-Forwarded-For, -Proto): what "nginx alone" costs;
- `generated`: `capi-gateway front-config nginx` of this checkout for rules/, its gateway
  pointed at the origin too, so that no Python runs and the documents' route is measured
  like the assets' (nginx's share only);
- `generated (documents to site)`: the same, with `--documents-to-site` (the document
  test off: only the prefix, rules and odd paths go to the gateway) — nginx's routing
  cost alone;
- `before`, `before (documents to site)` with `--compare DIR`: the same from another
  checkout (its own .venv); the second by deleting its document map's tests;
- `--conf NAME=PATH`: any other file, with `@LISTEN@` and `@ORIGIN@` replaced by the
  proxy's listen address and the origin's `host:port` (for bisecting a config by hand).

`--wrk SECONDS,ROUNDS` measures instead, without valgrind, the CPU per request of one
ordinary nginx worker serving every config on a port of its own under wrk (32 connections,
the page view's requests), the configs interleaved in each round; the median and every
round are printed. Noisy on a shared machine, unlike the instruction counts.

`--strace` also counts, without valgrind, the syscalls of the proxy per request
(`strace -c -f`) and the upstream connections it opened (`connect`), which shows whether
keep-alive to the origin is reused. Not a test; asserts nothing but the responses' status.
"""

from __future__ import annotations

import argparse
import http.client
import json
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench_front import _renamed, has_front_config, lua_script, without_documents, write_site
from bench_proxy import UA, ensure_tools, nginx_conf

from tests.fakes.processes import HOST, ROOT, clean_env, free_port, spawn, stop_process

PLAIN = """server {
    listen @LISTEN@;
    location / {
        proxy_pass http://plain_origin;
        proxy_http_version 1.1;
        proxy_set_header Connection "";
        proxy_set_header Host $http_host;
        proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
        proxy_set_header X-Forwarded-Proto $scheme;
    }
}
upstream plain_origin {
    server @ORIGIN@;
    keepalive 32;
}
"""


JIT = False  # --pcre-jit: `pcre_jit on;` in the main context of every measured config


@dataclass
class Cost:
    """One config's cost per request."""

    config: str
    instructions: float = float("nan")  # per request, callgrind Ir
    syscalls: float = float("nan")  # per request, strace -c
    connects: int = -1  # upstream connections opened for the strace run's requests
    requests: int = 0


def http_settings(work: Path, nginx: str) -> str:
    """bench_front's `http {}` settings (temp paths, types, sendfile...), no server block."""
    conf = nginx_conf(work, nginx, 1, 2, 1)
    head, _, _ = conf.partition("    upstream origin {")
    return head


def main_conf(work: Path, nginx: str, body: str) -> str:
    """The whole nginx.conf of the measured proxy around `body` (server blocks and maps)."""
    main = "pcre_jit on;\n" if JIT else ""
    return main + http_settings(work, nginx) + body + "\n}\n"


def origin_conf(work: Path, nginx: str, port: int) -> str:
    """The origin: bench_front's static site, an ordinary nginx of its own."""
    head = http_settings(work, nginx).replace(f"pid {work}/nginx.pid;", f"pid {work}/origin.pid;")
    return (
        head
        + f"    server {{\n        listen {HOST}:{port};\n        root {work}/www;\n    }}\n}}\n"
    )


def requests_of(work: Path, assets: int) -> list[tuple[str, dict[str, str]]]:
    """The page view's requests with the headers bench_front's wrk script sends."""
    out = []
    for path, dest in write_site(work / "www", assets):
        accept = "text/html,application/xhtml+xml,*/*;q=0.8" if dest == "document" else "*/*"
        out.append((path, {"User-Agent": UA, "Accept": accept, "Sec-Fetch-Dest": dest}))
    return out


def send(port: int, page: list[tuple[str, dict[str, str]]], views: int) -> int:
    """`views` page views over one keep-alive connection; the number of requests."""
    conn = http.client.HTTPConnection(HOST, port, timeout=120)
    sent = 0
    try:
        for _ in range(views):
            for path, headers in page:
                conn.request("GET", path, headers=headers)
                resp = conn.getresponse()
                resp.read()
                if resp.status != 200:
                    raise AssertionError(f"{path}: {resp.status}")
                sent += 1
    finally:
        conn.close()
    return sent


def wait_port(port: int, proc: subprocess.Popen[bytes], timeout: float) -> None:
    """Until something accepts on `port` (a bare connect: no request is counted)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"nginx exited {proc.returncode}")
        try:
            socket.create_connection((HOST, port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    raise AssertionError(f"nothing listens on {port}")


def run_proxy(
    nginx: str, work: Path, name: str, body: str, wrap: list[str]
) -> tuple[subprocess.Popen[bytes], int]:
    """The proxy for one config under `wrap` (valgrind or nothing); (process, port)."""
    port = free_port()
    conf = work / f"{name}.conf"
    conf.write_text(main_conf(work, nginx, body.replace("@LISTEN@", f"{HOST}:{port}")))
    log = work / f"{name}-error.log"
    cmd = [*wrap, nginx, "-p", str(work), "-c", str(conf), "-e", str(log)]
    cmd += ["-g", "daemon off; master_process off;"]
    proc = spawn(cmd, work / f"{name}-stdout.log", cwd=work)
    wait_port(port, proc, timeout=60)
    return proc, port


def callgrind_ir(
    nginx: str, work: Path, name: str, body: str, page: list[tuple[str, dict[str, str]]], views: int
) -> tuple[int, int]:
    """(instructions of the whole run, requests) for `views` page views."""
    out = work / f"callgrind.{name}.{views}"
    wrap = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}"]
    proc, port = run_proxy(nginx, work, f"{name}-{views}", body, wrap)
    try:
        sent = send(port, page, views)
        if proc.poll() is not None:
            raise AssertionError(f"{name}: nginx under valgrind exited before the requests ended")
    finally:
        # nginx without a master quits gracefully on SIGQUIT; callgrind then writes its file.
        proc.send_signal(signal.SIGQUIT)
        try:
            proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            stop_process(proc)
    found = re.search(r"^(?:summary|totals): (\d+)", out.read_text(), re.M)
    if found is None:
        raise AssertionError(f"no totals in {out}")
    return int(found.group(1)), sent


def strace_counts(
    nginx: str, work: Path, name: str, body: str, page: list[tuple[str, dict[str, str]]], views: int
) -> tuple[float, int, int]:
    """(syscalls per request, upstream connects, requests) of `views` page views."""
    proc, port = run_proxy(nginx, work, f"{name}-strace", body, [])
    out = work / f"strace.{name}"
    tracer = subprocess.Popen(
        ["strace", "-c", "-f", "-o", str(out), "-p", str(proc.pid)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        time.sleep(1.0)  # strace attaches
        sent = send(port, page, views)
    finally:
        tracer.send_signal(signal.SIGINT)
        tracer.wait(timeout=30)
        stop_process(proc, grace=5)
    text = out.read_text()
    total = re.search(r"^\s*100\.00\s+\S+\s+\S+\s+(\d+)(?:\s+\d+)?\s+total$", text, re.M)
    if total is None:
        raise AssertionError(f"cannot read {out}:\n{text}")
    connects = re.search(r"^\s*[\d.]+\s+\S+\s+\S+\s+(\d+)(?:\s+\d+)?\s+connect$", text, re.M)
    return int(total.group(1)) / sent, int(connects.group(1)) if connects else 0, sent


def wrk_rounds(
    nginx: str, work: Path, found: dict[str, str], seconds: int, rounds: int
) -> dict[str, list[float]]:
    """CPU µs per request of one ordinary nginx worker serving every config on its own port,
    under wrk (bench_front's request list, 32 connections), `rounds` times interleaved."""
    body, ports = "", {}
    for i, (name, text) in enumerate(found.items()):
        ports[name] = free_port()
        text = text.replace("@LISTEN@", f"{HOST}:{ports[name]}")
        # Each config its own upstream and variable names, in one http {} block.
        body += re.sub(r"(?<![A-Za-z0-9_])(?:capib?|plain)_", f"c{i}_", text) + "\n"
    conf = work / "wrk.conf"
    conf.write_text(main_conf(work, nginx, body))
    cmd = [nginx, "-p", str(work), "-c", str(conf), "-e", str(work / "wrk-error.log")]
    proc = spawn([*cmd, "-g", "daemon off;"], work / "wrk-stdout.log", cwd=work)
    cpu: dict[str, list[float]] = {name: [] for name in found}
    try:
        for port in ports.values():
            wait_port(port, proc, timeout=10)
        worker = psutil.Process(proc.pid).children()[0]
        for _ in range(rounds):
            for name, port in ports.items():
                url = f"http://{HOST}:{port}"
                load = ["wrk", "-t2", "-c32", f"-d{seconds}s", "-s", str(work / "pageview.lua")]
                before = sum(worker.cpu_times()[:2])
                out = subprocess.run(
                    [*load, url], capture_output=True, text=True, timeout=seconds + 30, check=True
                ).stdout
                used = sum(worker.cpu_times()[:2]) - before
                done = re.search(r"(\d+) requests in", out)
                if done is None or "Non-2xx" in out:
                    raise AssertionError(f"wrk on {name}:\n{out}")
                cpu[name].append(used / int(done.group(1)) * 1e6)
    finally:
        stop_process(proc, grace=5)
    return cpu


def generated(root: Path, origin: int) -> str:
    """`front-config nginx` of the checkout at `root`, its gateway pointed at the origin."""
    cmd = [str(root / ".venv" / "bin" / "capi-gateway"), "front-config", "nginx"]
    cmd += ["--rules", str(root / "rules"), "--upstream", f"http://{HOST}:{origin}"]
    cmd += ["--gateway", f"http://{HOST}:{origin}", "--listen", f"{HOST}:9"]
    done = subprocess.run(
        cmd, cwd=root, env=clean_env(), capture_output=True, text=True, timeout=60, check=False
    )
    if done.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} exited {done.returncode}:\n{done.stderr}")
    return done.stdout.replace(f"listen {HOST}:9;", "listen @LISTEN@;")


def configs(args: argparse.Namespace, origin: int) -> dict[str, str]:
    """Name -> config text (with @LISTEN@ left in) of every config to measure."""
    addr = f"{HOST}:{origin}"
    found = {"plain": PLAIN.replace("@ORIGIN@", addr)}
    found["generated"] = generated(ROOT, origin)
    found["generated (documents to site)"] = without_documents(found["generated"])
    if args.compare is not None and has_front_config(args.compare):
        before = generated(args.compare, origin)
        found["before"] = _renamed(before)
        found["before (documents to site)"] = _renamed(without_documents(before))
    for item in args.conf:
        name, _, path = item.partition("=")
        found[name] = Path(path).read_text().replace("@ORIGIN@", addr)
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--views", default="5,25", help="two page-view counts, e.g. 5,25")
    parser.add_argument("--assets", type=int, default=40, help="assets per page view")
    parser.add_argument("--compare", type=Path, metavar="DIR", help="another checkout")
    parser.add_argument(
        "--conf", action="append", default=[], metavar="NAME=PATH", help="another config"
    )
    parser.add_argument("--only", help="comma-separated config names to measure")
    parser.add_argument("--strace", action="store_true", help="also count syscalls per request")
    parser.add_argument("--pcre-jit", action="store_true", help="pcre_jit on in every config")
    parser.add_argument(
        "--wrk",
        metavar="SECONDS,ROUNDS",
        help="instead of callgrind: nginx's CPU per request under wrk, interleaved rounds",
    )
    parser.add_argument("--json", type=Path, help="also write the results to this JSON file")
    parser.add_argument("--workdir", type=Path, help="keep configs, logs and profiles here")
    args = parser.parse_args(argv)
    low, high = (int(v) for v in args.views.split(","))
    if not 1 <= low < high <= 1000:
        parser.error("--views LOW,HIGH with 1 <= LOW < HIGH <= 1000")
    if args.compare is not None:
        args.compare = args.compare.resolve()
    global JIT
    JIT = args.pcre_jit
    nginx, _ = ensure_tools()
    with tempfile.TemporaryDirectory(prefix="callgrind-front-") as tmp:
        work = args.workdir or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        page = requests_of(work, args.assets)
        (work / "pageview.lua").write_text(lua_script([(p, h["Sec-Fetch-Dest"]) for p, h in page]))
        origin_port = free_port()
        (work / "origin.conf").write_text(origin_conf(work, nginx, origin_port))
        origin = spawn(
            [nginx, "-p", str(work), "-c", str(work / "origin.conf"), "-g", "daemon off;"],
            work / "origin-stdout.log",
            cwd=work,
        )
        results = []
        try:
            wait_port(origin_port, origin, timeout=10)
            wanted = set(args.only.split(",")) if args.only else None
            found = {
                name: body
                for name, body in configs(args, origin_port).items()
                if wanted is None or name in wanted
            }
            if args.wrk:
                seconds, rounds = (int(v) for v in args.wrk.split(","))
                per_request = wrk_rounds(nginx, work, found, seconds, rounds)
                base_cpu = statistics.median(next(iter(per_request.values())))
                print(f"\n{'config':<34}{'CPU us/req':>11}{'vs first':>10}  rounds")
                for name, values in per_request.items():
                    mid = statistics.median(values)
                    print(
                        f"{name:<34}{mid:>11.1f}{mid / base_cpu:>9.2f}x  "
                        + " ".join(f"{v:.1f}" for v in values)
                    )
                return 0
            for name, body in found.items():
                ident = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
                ir_low, n_low = callgrind_ir(nginx, work, ident, body, page, low)
                ir_high, n_high = callgrind_ir(nginx, work, ident, body, page, high)
                cost = Cost(name, (ir_high - ir_low) / (n_high - n_low), requests=n_high - n_low)
                if args.strace:
                    cost.syscalls, cost.connects, _ = strace_counts(
                        nginx, work, ident, body, page, high
                    )
                results.append(cost)
                print(f"{name}: {cost.instructions:,.0f} instructions/request", flush=True)
        finally:
            stop_process(origin, grace=5)
    base = results[0].instructions if results else float("nan")
    print(f"\n{'config':<34}{'Ir/request':>12}{'vs first':>10}{'syscalls/req':>14}{'connects':>10}")
    for r in results:
        print(
            f"{r.config:<34}{r.instructions:>12,.0f}{r.instructions / base:>9.2f}x"
            f"{r.syscalls:>14.2f}{r.connects:>10}"
        )
    if args.json:
        args.json.write_text(json.dumps([asdict(r) for r in results], indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
