"""Reverse-proxy benchmark: the gateway beside nginx and the bare origin (not a test).

    python bench/bench_proxy.py [--seconds 5] [--concurrency 32] [--threads 2]
                                [--rate 100] [--latency-seconds 5] [--workers 1,2] [--sites]
                                [--compare DIR] [--rounds N] [--json PATH]

Everything runs on 127.0.0.1, as subprocesses of this script:

- one nginx (`worker_processes` = the largest `--workers`, config and logs in a temp dir)
  with two server blocks:
  the origin, serving a 20 KB HTML page, a 20 KB JavaScript file and a 100-byte CSS file
  from the temp dir, and a plain reverse proxy to that origin (upstream keep-alive);
- `capi-gateway serve --upstream <origin> --workers N --dry-run`, settings as shipped
  otherwise (every tagged page also stores a PageView), then a variant where no PageView is
  stored (`CAPIGW_CONSENT` names a cookie the client never sends: the page is still
  tagged), one without visitor profiles or assembly hold (`CAPIGW_PROFILE_TTL=0`: what
  they cost per page), then one with `CAPIGW_INJECT=false` (proxying alone); one gateway at a time,
  each for every N of `--workers` (default 1 and 2, compared side by side at the end);
- the load: `wrk` (closed loop, `--concurrency` connections for `--seconds`, no Lua) for
  requests/s and latency percentiles, and an open-loop asyncio client in this process sending
  `--rate` requests/s for `--latency-seconds` for the latency added at a low rate (each
  gateway's against the origin's p50 measured right before it: at a low rate the machine's
  idle wake-ups move the p50 of every path by tenths of a ms over a run).

Per file: direct to the origin, through nginx (its proxy block in the origin's process, and a
second nginx that only proxies, so that its latency pays the process hop the gateway pays
too), and through the gateway and its two variants
with each worker count. CPU of nginx, of the gateway (all its processes) and of wrk is
measured over each wrk run; load generator and servers share the machine's cores. nginx
and wrk come from bench/install-nginx.sh. See bench/README.md for the figures measured on
the reference machine.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import grp
import json
import os
import platform
import pwd
import re
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

try:
    import psutil
except ImportError:  # pragma: no cover - the bench extra is missing
    sys.exit("bench_proxy.py needs psutil: pip install -e '.[bench]'")

# `python bench/bench_proxy.py` puts bench/ on sys.path, not the repository root.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.fakes.processes import (
    HOST,
    ROOT,
    Gateway,
    clean_env,
    free_port,
    queue_stats,
    serve_args,
    spawn,
    start_gateway,
    stop_process,
    tail,
    wait_healthy,
)

PIXEL = "123456789012345"
TOKEN = "EAAB-bench-token-not-real"
API_KEY = "bench-api-key-0123456789"
GRAPH_URL = f"http://{HOST}:9"  # dry run: never called
UA = (
    "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/156.0.0.0 Safari/537.36"
)
INSTALL = Path(__file__).resolve().with_name("install-nginx.sh")

TARGET_HTML_VS_NGINX = 0.25  # gateway req/s >= 25 % of nginx's on the HTML page
TARGET_ADDED_P50_MS = 2.0  # gateway p50 - direct p50 at --rate req/s
TARGET_WORKERS = 2  # the req/s target is for `--workers 2`

# -- the site --------------------------------------------------------------------------------


@dataclass(frozen=True)
class File:
    """One file the origin serves and the headers a browser would send for it."""

    key: str
    label: str
    path: str
    headers: dict[str, str]


HTML_HEADERS = {
    "User-Agent": UA,
    "Accept": "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8",
    "Accept-Language": "en-US,en;q=0.9",
    "Sec-Fetch-Dest": "document",
    "Sec-Fetch-Mode": "navigate",
}
ASSET_HEADERS = {
    "User-Agent": UA,
    "Accept": "*/*",
    "Accept-Language": "en-US,en;q=0.9",
    "Sec-Fetch-Dest": "script",
    "Sec-Fetch-Mode": "no-cors",
}
FILES = (
    File("html", "HTML 20 KB", "/products/merino-crew.html", HTML_HEADERS),
    File("js", "JS 20 KB", "/static/app.js", ASSET_HEADERS),
    File("css", "CSS 100 B", "/static/tiny.css", {**ASSET_HEADERS, "Sec-Fetch-Dest": "style"}),
)
SIZES = {"html": 20 * 1024, "js": 20 * 1024, "css": 100}
# `--returning`: the page as a returning visitor asks for it on a real shop, from another page
# of the site: its `_fbp` and the site's own cookies (analytics, session, cart), a Referer,
# and a campaign query on the URL. Every part is read on the page path (cookies, fbclid).
RETURNING_COOKIE = (
    "_ga=GA1.1.123456789.1763840000; _fbp=fb.1.1763840000000.1234567890; "
    "_gcl_au=1.1.1234567.1763840000; session=eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkw"
    "IiwibmFtZSI6IkpvaG4gRG9lIiwiaWF0IjoxNTE2MjM5MDIyfQ.SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJ; "
    "cart=abc123; _ga_ABC123=GS1.1.1763840000.1.1.1763840100.0.0.0; "
    "_hjSessionUser_123=eyJpZCI6ImFiYyJ9; lang=en"
)


def returning_files() -> tuple[File, ...]:
    """FILES with the page asked for as a returning visitor does (`--returning`)."""
    page = FILES[0]
    headers = {
        **page.headers,
        "Cookie": RETURNING_COOKIE,
        "Referer": "http://127.0.0.1/collections/knitwear?sort=price&page=2",
        "Sec-Fetch-Site": "same-origin",
    }
    returning = File(page.key, page.label, page.path + "?utm_source=news&utm_medium=email", headers)
    return (returning, *FILES[1:])


_WORDS = (
    "soft merino wool knit keeps you warm without bulk breathable fabric regulates "
    "temperature naturally odour resistant fibres stay fresh for days ribbed cuffs and hem "
    "hold their shape wash cold lay flat to dry relaxed fit true to size model wears medium "
    "ethically sourced from certified farms finished in our Porto workshop free returns "
    "within thirty days"
).split()


def _text(seed: int, words: int) -> str:
    """Deterministic product copy."""
    out = [_WORDS[(seed * 7 + i * 3 + i // 5) % len(_WORDS)] for i in range(words)]
    return " ".join(out).capitalize() + "."


def html_page(size: int) -> bytes:
    """A realistic product page of exactly `size` bytes (UTF-8)."""
    head = f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Merino Crew Sweater &ndash; Northwind Outfitters</title>
<meta name="description" content="{_text(1, 24)}">
<link rel="canonical" href="https://shop.example/products/merino-crew">
<link rel="preconnect" href="https://cdn.shop.example" crossorigin>
<link rel="icon" href="/favicon.ico" sizes="any">
<link rel="stylesheet" href="/static/tiny.css">
<meta property="og:type" content="product">
<meta property="og:title" content="Merino Crew Sweater">
<meta property="og:image" content="https://cdn.shop.example/img/merino-crew-1200.jpg">
<script type="application/ld+json">{{"@context":"https://schema.org","@type":"Product",\
"name":"Merino Crew Sweater","sku":"NW-MC-001","offers":{{"@type":"Offer","price":"89.00",\
"priceCurrency":"EUR","availability":"https://schema.org/InStock"}}}}</script>
<script src="/static/app.js" defer></script>
</head>
<body class="product-page">
<header class="site-header">
<a class="logo" href="/">Northwind Outfitters</a>
<nav><ul>
<li><a href="/collections/women">Women</a></li>
<li><a href="/collections/men">Men</a></li>
<li><a href="/collections/knitwear">Knitwear</a></li>
<li><a href="/pages/about">About</a></li>
<li><a href="/cart" class="cart-link">Cart (0)</a></li>
</ul></nav>
</header>
<main id="content">
<nav class="breadcrumbs"><a href="/">Home</a> / <a href="/collections/knitwear">Knitwear</a>
 / <span>Merino Crew Sweater</span></nav>
<section class="product">
<img src="https://cdn.shop.example/img/merino-crew-800.jpg" alt="Merino crew sweater in navy"
 width="800" height="1000" loading="eager">
<h1>Merino Crew Sweater</h1>
<p class="price">€89.00</p>
<form action="/cart/add" method="post"><input type="hidden" name="id" value="40213">
<label for="size">Size</label><select id="size" name="size"><option>S</option>
<option selected>M</option><option>L</option><option>XL</option></select>
<button type="submit" class="add-to-cart">Add to cart</button></form>
<p>{_text(2, 60)}</p>
<p>{_text(3, 60)}</p>
</section>
<section class="reviews"><h2>Reviews</h2>
"""
    foot = """</section>
</main>
<footer class="site-footer"><p>&copy; Northwind Outfitters.
<a href="/pages/privacy">Privacy</a> · <a href="/pages/terms">Terms</a></p></footer>
</body>
</html>
"""
    parts: list[str] = [head]
    used = len(head.encode()) + len(foot.encode())
    i = 0
    while True:
        review = (
            f'<article class="review" id="r{i}"><h3>{_text(i + 10, 5)}</h3>'
            f'<p class="stars">{"★" * (3 + i % 3)}</p><p>{_text(i + 20, 45)}</p></article>\n'
        )
        if used + len(review.encode()) > size - 64:
            break
        parts.append(review)
        used += len(review.encode())
        i += 1
    gap = size - used - len("<p></p>\n")
    parts.append("<p>" + (_text(99, 20) * 3)[: gap - 1] + ".</p>\n" + foot)
    page = "".join(parts).encode()
    assert len(page) == size, len(page)
    return page


def js_file(size: int) -> bytes:
    """A JavaScript file of exactly `size` bytes."""
    chunks = ['"use strict";\n']
    i = 0
    while sum(map(len, chunks)) < size - 200:
        chunks.append(
            f"function widget{i}(root) {{\n"
            f"  const el = root.querySelector('[data-widget=\"w{i}\"]');\n"
            "  if (!el) return null;\n"
            f"  el.addEventListener('click', (ev) => {{ ev.preventDefault(); "
            f"el.classList.toggle('open-{i}'); }});\n"
            f"  return {{ id: {i}, name: 'widget-{i}', ready: Date.now() }};\n}}\n"
        )
        i += 1
    body = "".join(chunks)
    return (body + "/*" + "-" * (size - len(body) - 5) + "*/\n").encode()


def css_file(size: int) -> bytes:
    """A CSS file of exactly `size` bytes."""
    rule = "body{margin:0;font:16px/1.5 system-ui,sans-serif;color:#222}"
    return (rule + "/*" + " " * (size - len(rule) - 5) + "*/\n").encode()


def write_site(root: Path) -> dict[str, bytes]:
    """The origin's files under `root`; their bodies by file key."""
    bodies = {
        "html": html_page(SIZES["html"]),
        "js": js_file(SIZES["js"]),
        "css": css_file(SIZES["css"]),
    }
    for f in FILES:
        target = root / f.path.split("?", 1)[0].lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(bodies[f.key])
    return bodies


# -- processes --------------------------------------------------------------------------------


def find_tool(name: str) -> str | None:
    """`name` on PATH, else in /usr/sbin (not on a normal user's PATH)."""
    found = shutil.which(name)
    if found:
        return found
    candidate = Path("/usr/sbin") / name
    return str(candidate) if os.access(candidate, os.X_OK) else None


def ensure_tools() -> tuple[str, str]:
    """nginx and wrk, installing them with install-nginx.sh when root, else exit with how to."""
    nginx, wrk = find_tool("nginx"), find_tool("wrk")
    if nginx and wrk:
        return nginx, wrk
    if os.geteuid() != 0:
        sys.exit(f"nginx and wrk are needed: run `sudo bash {INSTALL.relative_to(ROOT)}` first")
    print("nginx or wrk is missing: running bench/install-nginx.sh ...", flush=True)
    subprocess.run(["bash", str(INSTALL)], check=True, timeout=900)
    nginx, wrk = find_tool("nginx"), find_tool("wrk")
    if not (nginx and wrk):
        sys.exit("install-nginx.sh did not install nginx and wrk")
    return nginx, wrk


def nginx_conf(
    tmp: Path, nginx: str, origin: int, proxy: int, workers: int, *, serve_origin: bool = True
) -> str:
    """One nginx, two server blocks: the static origin and a plain reverse proxy to it
    (`serve_origin=False`: the proxy alone, to an origin another nginx serves)."""
    flags = subprocess.run([nginx, "-V"], capture_output=True, text=True, check=False).stderr
    # Temp paths default to /var/lib/nginx, writable by root only: keep them in `tmp`.
    temp = "\n".join(
        f"    {name}_temp_path {tmp}/temp-{name};"
        for name, flag in (
            ("client_body", "client-body"),
            ("proxy", "proxy"),
            ("fastcgi", "fastcgi"),
            ("uwsgi", "uwsgi"),
            ("scgi", "scgi"),
        )
        if f"--http-{flag}-temp-path" in flags
    )
    # As root the workers would switch to `nobody`; keep them as the user running the bench.
    origin_block = (
        f"    server {{\n        listen {HOST}:{origin};\n        root {tmp}/www;\n    }}"
        if serve_origin
        else ""
    )
    user = ""
    if os.geteuid() == 0:
        user = f"user {pwd.getpwuid(os.geteuid()).pw_name} {grp.getgrgid(os.getegid()).gr_name};"
    return f"""{user}
worker_processes {workers};
pid {tmp}/nginx.pid;
error_log {tmp}/nginx-error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
{temp}
    types {{ text/html html; application/javascript js; text/css css; }}
    default_type application/octet-stream;
    charset utf-8;
    charset_types text/css application/javascript;  # text/html always
    sendfile on;
    tcp_nopush on;
    keepalive_requests 100000;
    open_file_cache max=64;

    upstream origin {{
        server {HOST}:{origin};
        keepalive 32;
    }}
{origin_block}
    server {{
        listen {HOST}:{proxy};
        location / {{
            proxy_pass http://origin;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $http_host;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Proto $scheme;
        }}
    }}
}}
"""


class Procs:
    """The subprocesses of the run: each stopped with SIGTERM and a grace, then its children
    (nginx and gateway workers) killed by pid if they outlived their parent."""

    def __init__(self) -> None:
        self.running: list[tuple[subprocess.Popen[bytes], list[psutil.Process]]] = []

    def add(self, proc: subprocess.Popen[bytes]) -> None:
        self.running.append((proc, []))

    def family(self, proc: subprocess.Popen[bytes]) -> list[psutil.Process]:
        """`proc` and its children now (remembered for the stop)."""
        for entry in self.running:
            if entry[0] is proc:
                try:
                    parent = psutil.Process(proc.pid)
                    kids = parent.children(recursive=True)
                except psutil.Error:
                    return []
                known = {p.pid for p in entry[1]}
                entry[1].extend(k for k in kids if k.pid not in known)
                return [parent, *kids]
        return []

    def stop(self, proc: subprocess.Popen[bytes], grace: float = 10.0) -> int | None:
        for entry in list(self.running):
            if entry[0] is proc:
                self.running.remove(entry)
                if proc.poll() is None:
                    self.family(proc)  # workers forked since the last look
                code = stop_process(proc, grace=grace)
                for kid in entry[1]:
                    with contextlib.suppress(psutil.Error):
                        if kid.is_running():
                            kid.kill()
                return code
        return None

    def stop_all(self) -> None:
        for proc, _ in reversed(list(self.running)):
            self.stop(proc, grace=5.0)


@contextlib.contextmanager
def processes() -> Iterator[Procs]:
    """Procs whose members are all stopped when the block ends (also on Ctrl-C)."""
    procs = Procs()
    try:
        yield procs
    finally:
        procs.stop_all()


def cpu_seconds(family: list[psutil.Process]) -> float:
    """User + system CPU seconds of these processes so far."""
    total = 0.0
    for p in family:
        with contextlib.suppress(psutil.Error):
            t = p.cpu_times()
            total += t.user + t.system
    return total


def after_work(family: list[psutil.Process], *, step: float = 0.5, limit: float = 30.0) -> float:
    """CPU seconds these processes spend after a run until they idle. Idle means under 2 %
    of a core for 2.5 s on end: longer than `send_linger` (1 s), so a sender waiting out its
    linger is not taken for done; the idle tail itself is not counted."""
    began = last = busy_until = cpu_seconds(family)
    t0 = time.monotonic()
    quiet = 0
    while time.monotonic() - t0 < limit:
        time.sleep(step)
        now = cpu_seconds(family)
        if now - last < 0.02 * step:
            quiet += 1
            if quiet >= 5:
                return busy_until - began
        else:
            quiet = 0
            busy_until = now
        last = now
    return cpu_seconds(family) - began


def busy_seconds() -> float:
    """Non-idle CPU seconds of the whole machine so far."""
    t = psutil.cpu_times()
    busy = t.user + t.nice + t.system  # guest time is already part of user
    return float(busy + getattr(t, "irq", 0.0) + getattr(t, "softirq", 0.0))


def wait_listening(url: str, proc: subprocess.Popen[bytes], log: Path, timeout: float) -> None:
    """Until `url` answers 200 (any server), or fail with the log."""

    async def poll() -> None:
        deadline = time.monotonic() + timeout
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as session:
            while time.monotonic() < deadline:
                if proc.poll() is not None:
                    break
                with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                    async with session.get(url) as resp:
                        if resp.status == 200:
                            return
                await asyncio.sleep(0.05)
        raise AssertionError(f"{url} did not answer:\n{tail(log)}")

    asyncio.run(poll())


def start_nginx(
    nginx: str, tmp: Path, procs: Procs, workers: int
) -> tuple[subprocess.Popen[bytes], str, str]:
    """nginx with the origin and the proxy; (process, origin URL, proxy URL)."""
    origin, proxy = free_port(), free_port()
    conf = tmp / "nginx.conf"
    conf.write_text(nginx_conf(tmp, nginx, origin, proxy, workers))
    log = tmp / "nginx-error.log"
    cmd = [nginx, "-p", str(tmp), "-c", str(conf), "-e", str(log), "-g", "daemon off;"]
    proc = spawn(cmd, tmp / "nginx-stdout.log")
    procs.add(proc)
    origin_url, proxy_url = f"http://{HOST}:{origin}", f"http://{HOST}:{proxy}"
    for url in (origin_url, proxy_url):
        wait_listening(url + FILES[2].path, proc, log, timeout=10)
    return proc, origin_url, proxy_url


def start_nginx_apart(
    nginx: str, tmp: Path, procs: Procs, origin: str
) -> tuple[subprocess.Popen[bytes], str]:
    """A second nginx, one worker, that only proxies to `origin`: the plain proxy's latency
    with the process hop the gateway pays too (the first nginx's proxy block answers from
    the origin's own process); (process, proxy URL)."""
    home = tmp / "nginx-apart"
    home.mkdir(exist_ok=True)
    port = free_port()
    conf = home / "nginx.conf"
    origin_port = int(origin.rsplit(":", 1)[1])
    conf.write_text(nginx_conf(home, nginx, origin_port, port, 1, serve_origin=False))
    log = home / "nginx-error.log"
    cmd = [nginx, "-p", str(home), "-c", str(conf), "-e", str(log), "-g", "daemon off;"]
    proc = spawn(cmd, home / "nginx-stdout.log")
    procs.add(proc)
    url = f"http://{HOST}:{port}"
    wait_listening(url + FILES[2].path, proc, log, timeout=10)
    return proc, url


async def create_outbox(buffer: Path) -> None:
    """Create the outbox schema before the workers start. Two workers opening a new file at
    once can race: one reads `user_version` 0 before the other's migration commits and the
    table count after it, and refuses the file as "another application's"."""
    from gateway.delivery.schema import connect

    conn = await connect(buffer)
    await conn.close()


# create_outbox() in another checkout's interpreter (`--compare DIR`).
_CREATE_OUTBOX = """
import asyncio, sys
from pathlib import Path
from gateway.delivery.schema import connect
async def create() -> None:
    await (await connect(Path(sys.argv[1]))).close()
asyncio.run(create())
"""


def start_bench_gateway(
    workdir: Path,
    name: str,
    upstream: str,
    procs: Procs,
    extra: dict[str, str],
    workers: int,
    root: Path | None = None,
    *,
    live: bool = False,
) -> Gateway:
    """`capi-gateway serve --upstream ... --workers N --dry-run`, waited for until every
    worker listens; `root`: the checkout to run instead of this one (its .venv); `live`:
    only alive, for a site not started yet (`/health` is not ready while it is down)."""
    env = {
        "CAPIGW_UPSTREAM": upstream,
        "CAPIGW_WORKERS": str(workers),
        "CAPIGW_DRY_RUN": "true",
        **extra,
    }
    buffer = workdir / f"{name}.db"
    for suffix in ("", "-wal", "-shm", ".key"):  # a --workdir kept from an earlier run
        buffer.with_name(buffer.name + suffix).unlink(missing_ok=True)
    if root is None:
        asyncio.run(create_outbox(buffer))
    else:  # its own schema, which may be older than this checkout's
        python = root / ".venv" / "bin" / "python"
        cmd = [python, "-c", _CREATE_OUTBOX, buffer]
        subprocess.run(cmd, cwd=root, env=clean_env(), check=True, timeout=60)
    if root is None:
        gw = start_gateway(
            buffer,
            GRAPH_URL,
            workdir / f"{name}.log",
            pixel=PIXEL,
            token=TOKEN,
            api_key=API_KEY,
            env=env,
        )
    else:
        gw = start_other_gateway(root, buffer, workdir / f"{name}.log", env)
    procs.add(gw.proc)

    async def healthy() -> None:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session:
            await wait_healthy(gw, session, timeout=30, live=live)

    asyncio.run(healthy())
    port = int(gw.url.rsplit(":", 1)[1])
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:  # SO_REUSEPORT: connections go only to bound workers
        listening = 0
        family = procs.family(gw.proc)
        # One worker is the process itself; with more, the parent only supervises.
        for kid in family if workers == 1 else family[1:]:
            with contextlib.suppress(psutil.Error):
                conns = kid.net_connections(kind="tcp")
                listening += any(
                    c.status == psutil.CONN_LISTEN and c.laddr.port == port for c in conns
                )
        if listening >= workers:
            return gw
        time.sleep(0.05)
    raise AssertionError(f"the gateway's {workers} workers did not listen:\n{tail(gw.log)}")


def start_other_gateway(root: Path, buffer: Path, log: Path, env: dict[str, str]) -> Gateway:
    """The gateway of another checkout (`--compare DIR`: its own .venv and code)."""
    cli = root / ".venv" / "bin" / "capi-gateway"
    if not cli.exists():
        raise AssertionError(f"{cli} does not exist: make a venv in {root} first")
    port = free_port()
    more = ["--pixel-id", PIXEL, "--access-token", TOKEN, "--graph-url", GRAPH_URL]
    cmd = [str(cli), *serve_args(port, buffer, *more, "--api-key", API_KEY)]
    full = clean_env(**env)
    if not _knows_setting(root, "assembly_hold"):  # a tree from before event assembly
        del full["CAPIGW_ASSEMBLY_HOLD"]
    proc = spawn(cmd, log, env=full, cwd=root)
    return Gateway(proc, f"http://{HOST}:{port}", log)


def _knows_setting(root: Path, name: str) -> bool:
    """Whether the checkout at `root` documents the setting `name` (its README's reference)."""
    return f"`{name}`" in (root / "README.md").read_text(encoding="utf-8")


# -- load -----------------------------------------------------------------------------------

_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3}


def _ms(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text)
    if not match:
        raise ValueError(f"not a wrk duration: {text!r}")
    return float(match.group(1)) * _UNITS[match.group(2)]


def _bytes(number: str, unit: str) -> float:
    return float(number) * {"B": 1, "KB": 2**10, "MB": 2**20, "GB": 2**30, "TB": 2**40}[unit]


@dataclass
class WrkResult:
    """What one wrk run reported, and the CPU it used."""

    rps: float = 0.0
    requests: int = 0
    seconds: float = 0.0
    bytes_per_request: float = 0.0
    p50: float = float("nan")  # ms
    p90: float = float("nan")
    p99: float = float("nan")
    errors: int = 0  # socket errors + non-2xx/3xx
    cpu: float = 0.0  # CPU seconds of wrk


def run_wrk(
    wrk: str, url: str, headers: dict[str, str], args: argparse.Namespace, seconds: int
) -> WrkResult:
    """`wrk` (no Lua script) with `--latency`; its figures and its own CPU time."""
    cmd = [
        wrk,
        f"-t{min(args.threads, args.concurrency)}",
        f"-c{args.concurrency}",
        f"-d{seconds}s",
        "--timeout",
        "5s",
        "--latency",
    ]
    for name, value in headers.items():
        cmd += ["-H", f"{name}: {value}"]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    done = subprocess.run(
        [*cmd, url], capture_output=True, text=True, timeout=seconds + 30, check=False
    )
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise AssertionError(f"wrk exited {done.returncode}:\n{done.stdout}\n{done.stderr}")
    out = done.stdout
    res = WrkResult(
        cpu=(after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime),
    )
    for pct, value in re.findall(r"^\s+(50|90|99)%\s+(\S+)$", out, re.M):
        setattr(res, f"p{pct}", _ms(value))
    total = re.search(r"(\d+) requests in ([\d.]+)(us|ms|s|m), ([\d.]+)(B|KB|MB|GB|TB) read", out)
    rate = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if not total or not rate:
        raise AssertionError(f"cannot read wrk's output:\n{out}")
    res.requests = int(total.group(1))
    res.seconds = _ms(total.group(2) + total.group(3)) / 1000
    res.bytes_per_request = _bytes(total.group(4), total.group(5)) / max(res.requests, 1)
    res.rps = float(rate.group(1))
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    if sock:
        res.errors += sum(int(n) for n in sock.groups())
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if bad:
        res.errors += int(bad.group(1))
    return res


OPEN_LOOP_WARMUP = 5  # unrecorded requests before each open-loop run


@dataclass
class OpenLoop:
    """Latency at a fixed, low request rate."""

    sent: int = 0
    errors: int = 0
    latencies: list[float] = field(default_factory=list)  # ms

    def pct(self, q: float) -> float:
        if not self.latencies:
            return float("nan")
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def open_loop(url: str, headers: dict[str, str], rate: float, seconds: float) -> OpenLoop:
    """Send `rate` requests/s for `seconds` on schedule, whether or not answers are back
    (open loop); each latency from the moment its request is issued to its last byte."""
    result = OpenLoop()
    connector = aiohttp.TCPConnector(limit=64)
    timeout = aiohttp.ClientTimeout(total=10)
    async with aiohttp.ClientSession(
        connector=connector, timeout=timeout, auto_decompress=False
    ) as session:

        async def one(record: bool) -> None:
            started = time.perf_counter()
            try:
                async with session.get(url, headers=headers) as resp:
                    await resp.read()
                    ok = resp.status == 200
            except (aiohttp.ClientError, TimeoutError):
                ok = False
            if not record:
                return
            if ok:
                result.latencies.append((time.perf_counter() - started) * 1000)
            else:
                result.errors += 1

        for _ in range(OPEN_LOOP_WARMUP):  # a pooled connection first, as a browser has
            await one(record=False)
        loop = asyncio.get_running_loop()
        tasks: list[asyncio.Task[None]] = []
        began = loop.time()
        for i in range(max(1, int(rate * seconds))):
            delay = began + i / rate - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(record=True)))
            result.sent += 1
        await asyncio.gather(*tasks)
    return result


# -- the benchmark --------------------------------------------------------------------------------

BASE_PATHS = {
    "direct": "direct (origin)",
    "nginx": "nginx proxy",
    "nginx-apart": "nginx proxy, own process",
}
# The gateway's variants, one at a time, each on a fresh buffer:
# - as shipped: the page is tagged, gets the _fbp cookie, and a PageView is stored;
# - no PageView: a consent cookie is required (CAPIGW_CONSENT) and the client sends none, so
#   the page is still tagged but no cookie is set and nothing is stored;
# - INJECT=false: the HTML streams through like any other response (proxying alone);
# - no linger: as shipped, but the sender claims held rows as they come due (send_linger=0);
# - no assembly: as shipped, but without visitor profiles (`CAPIGW_PROFILE_TTL=0`) or a
#   hold before the first send: what event assembly and profiles cost per page.
VARIANTS: tuple[tuple[str, str, dict[str, str]], ...] = (
    ("gateway", "gateway", {}),
    (
        "gateway-noassembly",
        "gateway, no profiles/hold",
        {"CAPIGW_PROFILE_TTL": "0", "CAPIGW_ASSEMBLY_HOLD": "0"},
    ),
    ("gateway-nostore", "gateway, no PageView", {"CAPIGW_CONSENT": "bench_consent"}),
    ("gateway-noinject", "gateway, INJECT=false", {"CAPIGW_INJECT": "false"}),
    # The sender claiming held rows as each commit's come due (before `send_linger`).
    ("gateway-nolinger", "gateway, send_linger=0", {"CAPIGW_SEND_LINGER": "0"}),
)
TAGGING = frozenset(
    {
        "gateway",
        "gateway-noassembly",
        "gateway-nolinger",
        "gateway-nostore",
        "gateway-sites1",
        "gateway-sites50",
    }
)
TARGET_ASSEMBLY = 0.85
# Routing by host among 50 sites costs < 5% against 1 site: gateway CPU per request, which a
# shared machine disturbs far less than req/s (the req/s ratio is printed beside it).
TARGET_SITES_CPU = 1.05
# `--compare DIR`: variants run from another checkout ("before"), by variant key.
ROOTS: dict[str, Path] = {}
BEFORE = "-before"
# Issue 19, lever 1: gateway CPU per request with one worker, and the added p50 at --rate.
TARGET_ASSET_US = 120.0
TARGET_PAGE_US = 320.0
TARGET_LEAN_ADDED_P50_MS = 0.8


def sites_env(count: int) -> dict[str, str]:
    """`CAPIGW_SITES` with `count` sites; the one the load asks for (127.0.0.1) comes last,
    after sites with exact and wildcard hosts, so that the lookup does all its work."""
    tables: list[dict[str, Any]] = [
        {"name": f"shop{i}", "hosts": [f"shop{i}.example", f"*.brand{i}.example"]}
        for i in range(count - 1)
    ]
    tables.append({"name": "bench", "hosts": [HOST]})
    return {"CAPIGW_SITES": json.dumps(tables)}


def routing_cost(count: int, rounds: int = 200_000) -> float:
    """µs per host lookup with `count` sites configured as `sites_env` configures them."""
    from gateway.edge.sites import SiteRouter, SiteStages
    from gateway.settings import Settings
    from gateway.siteapp import site_runtimes

    tables = json.loads(sites_env(count)["CAPIGW_SITES"])
    settings = Settings.model_validate(
        {"upstream": "http://127.0.0.1:9", "pixel_id": [PIXEL], "dry_run": True, "sites": tables}
    )
    runtimes = site_runtimes(settings)
    router = SiteRouter(
        (site.hosts, site.default, SiteStages(site.name, runtimes[site.name]))
        for site in settings.site_list()
    )
    host = f"{HOST}:8080"
    started = time.perf_counter()
    for _ in range(rounds):
        router.lookup(host)
    return (time.perf_counter() - started) / rounds * 1e6


# `--sites`: the shipped gateway without sites, with 1 site, and with 50, side by side.
SITE_VARIANTS: tuple[tuple[str, str, dict[str, str]], ...] = (
    ("gateway", "gateway", {}),
    ("gateway-sites1", "gateway, 1 site", sites_env(1)),
    ("gateway-sites50", "gateway, 50 sites", sites_env(50)),
)


def gateway_path(variant: str, workers: int) -> str:
    """The key of a gateway variant run with `workers` workers, e.g. `gateway-w2`."""
    return f"{variant}-w{workers}"


def variant_of(path: str) -> str:
    """`gateway-nostore-w2` -> `gateway-nostore`; `direct` and `nginx` stay as they are."""
    return path if path in BASE_PATHS else path.rsplit("-w", 1)[0]


def label_of(path: str) -> str:
    """The path as the tables show it, e.g. `gateway, no PageView [2w]`."""
    if path in BASE_PATHS:
        return BASE_PATHS[path]
    variant, _, workers = path.rpartition("-w")
    return f"{next(label for key, label, _ in VARIANTS if key == variant)} [{workers}w]"


def all_paths(workers: list[int]) -> list[str]:
    """Every path in table order: direct, nginx, then each variant per worker count."""
    return [*BASE_PATHS, *(gateway_path(v, n) for n in workers for v, _, _ in VARIANTS)]


@dataclass
class Measure:
    """One file through one path."""

    file: str
    path: str
    wrk: WrkResult
    # CPU seconds of nginx during the wrk run (both instances: origin and proxy blocks, and
    # the own-process proxy).
    nginx_cpu: float
    gateway_cpu: float | None  # CPU seconds of all gateway processes during the wrk run
    latency: OpenLoop
    # Busy CPU of the whole machine during the wrk run less nginx, gateway and wrk: other
    # processes, and kernel network work not charged to any of them.
    other_cpu: float = 0.0
    # CPU seconds the gateway spent after the run until it idled (the run's PageViews still
    # being stored and claimed): the run's work too, or the next file would pay for it.
    after_cpu: float = 0.0
    # The origin's open-loop p50 measured just before this path's own (gateways): the
    # machine's idle-wakeup cost drifts by ~0.3 ms over a run, so the reference is taken
    # beside each measurement, not once at the start.
    direct_p50: float | None = None

    def added_p50(self, direct_once: float) -> float:
        """Open-loop p50 less the origin's: the adjacent reference, else `direct_once`."""
        base = self.direct_p50 if self.direct_p50 is not None else direct_once
        return self.latency.pct(0.5) - base

    def gateway_us(self) -> float | None:
        """Gateway CPU µs per request, the work it left for after the run included."""
        if self.gateway_cpu is None:
            return None
        return (self.gateway_cpu + self.after_cpu) / max(self.wrk.requests, 1) * 1e6

    def summary(self) -> dict[str, Any]:
        w, lat = self.wrk, self.latency
        return {
            "file": self.file,
            "path": self.path,
            "rps": round(w.rps, 1),
            "requests": w.requests,
            "seconds": round(w.seconds, 3),
            "bytes_per_response": round(w.bytes_per_request),
            "p50_ms": w.p50,
            "p90_ms": w.p90,
            "p99_ms": w.p99,
            "errors": w.errors,
            "nginx_cpu_pct": round(self.nginx_cpu / w.seconds * 100, 1),
            "gateway_cpu_pct": None
            if self.gateway_cpu is None
            else round(self.gateway_cpu / w.seconds * 100, 1),
            "gateway_cpu_us_per_request": None
            if self.gateway_cpu is None
            else round(self.gateway_us() or 0.0, 1),
            "gateway_after_cpu_s": round(self.after_cpu, 3),
            "wrk_cpu_pct": round(w.cpu / w.seconds * 100, 1),
            "other_cpu_pct": round(self.other_cpu / w.seconds * 100, 1),
            "open_loop": {
                "rate": None,
                "sent": lat.sent,
                "errors": lat.errors,
                "p50_ms": round(lat.pct(0.5), 3),
                "p90_ms": round(lat.pct(0.9), 3),
                "p99_ms": round(lat.pct(0.99), 3),
            },
        }


def check_responses(urls: dict[str, str], bodies: dict[str, bytes]) -> dict[str, Any]:
    """Every file through every path once: 200, the assets byte-identical, the page tagged
    only through a tagging gateway."""

    async def fetch_all() -> dict[str, Any]:
        seen: dict[str, Any] = {}
        async with aiohttp.ClientSession(auto_decompress=False) as session:
            for path, base in urls.items():
                for f in FILES:
                    async with session.get(base + f.path, headers=f.headers) as resp:
                        body = await resp.read()
                        if resp.status != 200:
                            raise AssertionError(f"{path} {f.path}: HTTP {resp.status}")
                        tagged = b"data-event-id=" in body
                        want_tag = f.key == "html" and variant_of(path) in TAGGING
                        if tagged != want_tag:
                            raise AssertionError(f"{path} {f.path}: tagged={tagged}")
                        if not want_tag and body != bodies[f.key]:
                            raise AssertionError(f"{path} {f.path}: the body changed")
                        if f.key == "html":
                            seen[path] = {
                                "content_type": resp.headers.get("Content-Type"),
                                "body_bytes": len(body),
                                "set_cookie": len(resp.headers.getall("Set-Cookie", [])),
                            }
        return seen

    return asyncio.run(fetch_all())


def measure_path(
    key: str,
    base: str,
    wrk: str,
    args: argparse.Namespace,
    nginx_family: list[psutil.Process],
    gateway_family: list[psutil.Process] | None,
    origin: str | None = None,
) -> tuple[list[Measure], int]:
    """Open-loop latency of each file first (quiet machine; with `origin`, the origin's
    right before each, as that measure's reference), then wrk for each file; the measures,
    and how many HTML pages were answered in all (warm-ups included)."""
    label = label_of(key)
    latencies: dict[str, OpenLoop] = {}
    beside: dict[str, float] = {}
    for f in FILES:
        if origin is not None:
            print(f"  direct (origin): {f.label} at {args.rate:g} req/s, the reference ...")
            beside[f.key] = asyncio.run(
                open_loop(origin + f.path, f.headers, args.rate, args.latency_seconds)
            ).pct(0.5)
        print(f"  {label}: {f.label} at {args.rate:g} req/s for {args.latency_seconds:g} s ...")
        latencies[f.key] = asyncio.run(
            open_loop(base + f.path, f.headers, args.rate, args.latency_seconds)
        )
    pages = len(latencies["html"].latencies) + OPEN_LOOP_WARMUP
    out: list[Measure] = []
    for f in FILES:
        print(f"  {label}: {f.label}, wrk {args.concurrency} connections, {args.seconds:g} s ...")
        if args.warmup > 0:
            warm = run_wrk(wrk, base + f.path, f.headers, args, args.warmup)
            pages += warm.requests if f.key == "html" else 0
        ng0 = cpu_seconds(nginx_family)
        gw0 = cpu_seconds(gateway_family) if gateway_family else 0.0
        busy0 = busy_seconds()
        result = run_wrk(wrk, base + f.path, f.headers, args, args.seconds)
        busy = busy_seconds() - busy0
        ng1 = cpu_seconds(nginx_family)
        gw1 = cpu_seconds(gateway_family) if gateway_family else 0.0
        gateway_cpu = gw1 - gw0 if gateway_family else None
        ours = (ng1 - ng0) + (gateway_cpu or 0.0) + result.cpu
        m = Measure(f.key, key, result, ng1 - ng0, gateway_cpu, latencies[f.key])
        m.direct_p50 = beside.get(f.key)
        m.other_cpu = max(0.0, busy - ours)
        if gateway_family:
            m.after_cpu = after_work(gateway_family)
        out.append(m)
        pages += result.requests if f.key == "html" else 0
    return out, pages


def benchmark(args: argparse.Namespace, workdir: Path, nginx: str, wrk: str) -> dict[str, Any]:
    www = workdir / "www"
    bodies = write_site(www)
    measures: list[Measure] = []
    pageviews: dict[str, Any] = {}
    with processes() as procs:
        nginx_proc, origin, proxy = start_nginx(nginx, workdir, procs, max(args.workers))
        nginx_family = procs.family(nginx_proc)
        print(f"nginx: origin {origin}, proxy {proxy} ({len(nginx_family) - 1} workers)")
        apart_proc, apart = start_nginx_apart(nginx, workdir, procs, origin)
        nginx_family += procs.family(apart_proc)
        print(f"nginx, own process: proxy {apart} to the origin")
        bases = {"direct": origin, "nginx": proxy, "nginx-apart": apart}
        checks = check_responses(bases, bodies)
        for key, base in bases.items():
            measures += measure_path(key, base, wrk, args, nginx_family, None)[0]
        # Each round runs every gateway (a --compare pair back to back) once more; the
        # report keeps, per file and gateway, the round with the median CPU per request.
        rounds: dict[tuple[str, str], list[Measure]] = {}
        for key, workers, extra, root, round_no in (
            (gateway_path(v, n), n, extra, ROOTS.get(v), r)
            for r in range(1, args.rounds + 1)
            for n in args.workers
            for v, _, extra in VARIANTS
        ):
            gw = start_bench_gateway(workdir, key, origin, procs, extra, workers, root=root)
            family = procs.family(gw.proc)
            at = f" (round {round_no} of {args.rounds})" if args.rounds > 1 else ""
            print(f"{label_of(key)}: {gw.url} ({workers} worker(s)), upstream {origin}{at}")
            checks.update(check_responses({key: gw.url}, bodies))
            found, pages = measure_path(key, gw.url, wrk, args, nginx_family, family, origin)
            for m in found:
                rounds.setdefault((m.file, m.path), []).append(m)
            code = procs.stop(gw.proc, grace=30)
            print(f"  stopping the gateway (exit {code})")
            states = queue_stats(workdir / f"{key}.db")
            stored = sum(states.values())
            pageviews[key] = {"html_answered": pages + 1, "stored": stored, "states": states}
            print(f"  PageViews in the outbox: {stored} for ~{pages + 1} pages answered")
        procs.stop(apart_proc, grace=10)
        procs.stop(nginx_proc, grace=10)
    measures += [median_round(runs) for runs in rounds.values()]
    per_round = {
        f"{f} {p}": [round(m.gateway_us() or 0.0) for m in runs] for (f, p), runs in rounds.items()
    }
    # The open-loop p50 of each round minus the origin's, measured beside it.
    direct = {m.file: m.latency.pct(0.5) for m in measures if m.path == "direct"}
    added = {
        f"{f} {p}": [round(m.added_p50(direct[f]), 2) for m in runs]
        for (f, p), runs in rounds.items()
    }
    return {
        "measures": measures,
        "checks": checks,
        "pageviews": pageviews,
        "rounds": per_round,
        "rounds_added_p50": added,
    }


def median_round(runs: list[Measure]) -> Measure:
    """The run with the median gateway CPU per request (the lower middle of an even count):
    one whole run, so its req/s, latencies and CPU belong together."""
    ordered = sorted(runs, key=lambda m: m.gateway_us() or 0.0)
    return ordered[(len(ordered) - 1) // 2]


# -- the report -----------------------------------------------------------------------------


def _get(measures: list[Measure], file: str, path: str) -> Measure | None:
    return next((m for m in measures if m.file == file and m.path == path), None)


def _f(value: float | None, spec: str) -> str:
    return "-" if value is None or value != value else format(value, spec)


def print_table(measures: list[Measure], args: argparse.Namespace) -> list[dict[str, Any]]:
    """The matrix (file x path), then the ratios beside their targets; the targets as data."""
    rate = args.rate
    files = {f.key: f.label for f in FILES}
    head = (
        f"{'file':<10} {'path':<27} {'req/s':>8} {'p50':>7} {'p90':>7} {'p99':>7} {'err':>4} "
        f"{'nginx':>6} {'gw':>6} {'wrk':>5} {'gw µs':>6}  {'@' + format(rate, 'g') + '/s p50':>11} "
        f"{'p99':>6}"
    )
    print()
    print(
        f"req/s, p50/p90/p99 (ms): wrk, {args.concurrency} connections, {args.seconds} s. "
        "nginx / gw / wrk: CPU during that run, % of one core\n(nginx = both nginx instances; "
        "gw = all gateway processes). gw µs: gateway CPU per request, with the work it did "
        "after the run until idle (storing and claiming its PageViews). "
        f"@{rate:g}/s: open-loop latency, ms."
    )
    print(head)
    print("-" * len(head))
    for f in FILES:
        for key in all_paths(args.workers):
            m = _get(measures, f.key, key)
            if m is None:
                continue
            label = label_of(key)
            w = m.wrk
            gw_pct = None if m.gateway_cpu is None else m.gateway_cpu / w.seconds * 100
            gw_us = m.gateway_us()
            print(
                f"{files[f.key] if key == 'direct' else '':<10} {label:<27} {w.rps:>8,.0f} "
                f"{_f(w.p50, '.2f'):>7} {_f(w.p90, '.2f'):>7} {_f(w.p99, '.2f'):>7} "
                f"{w.errors:>4} {m.nginx_cpu / w.seconds * 100:>5.0f}% "
                f"{_f(gw_pct, '5.0f') + '%' if gw_pct is not None else '-':>6} "
                f"{w.cpu / w.seconds * 100:>4.0f}% {_f(gw_us, '.0f'):>6}  "
                f"{_f(m.latency.pct(0.5), '.2f'):>11} {_f(m.latency.pct(0.99), '.2f'):>6}"
            )
    busiest = max(measures, key=lambda m: m.other_cpu / m.wrk.seconds, default=None)
    if busiest is not None:
        share = busiest.other_cpu / busiest.wrk.seconds * 100
        print(
            f"CPU not used by nginx, the gateway or wrk during a run: at most {share:.0f}% of "
            f"a core ({files[busiest.file]}, {label_of(busiest.path)})"
            + (": other processes were busy, figures may be low" if share > 25 else "")
        )
    targets: list[dict[str, Any]] = []

    def ratio(file: str, a: str, b: str, target: float | None) -> None:
        ma, mb = _get(measures, file, a), _get(measures, file, b)
        if not ma or not mb or not mb.wrk.rps:
            return
        targets.append(
            {
                "metric": f"{label_of(a)} / {label_of(b)} req/s, {files[file]}",
                "measured": ma.wrk.rps / mb.wrk.rps,
                "unit": "x",
                "target": target,
                "kind": ">=",
            }
        )

    def cpu(file: str, a: str, b: str, target: float | None) -> None:
        ma, mb = _get(measures, file, a), _get(measures, file, b)
        if not ma or not mb or not ma.gateway_cpu or not mb.gateway_cpu:
            return
        per_a = (ma.gateway_us() or 0.0) / 1e6
        per_b = (mb.gateway_us() or 0.0) / 1e6
        targets.append(
            {
                "metric": f"{label_of(a)} / {label_of(b)} gw CPU per request, {files[file]}",
                "measured": per_a / per_b,
                "unit": "x",
                "target": target,
                "kind": "<=",
            }
        )

    def added(file: str, path: str, target: float | None) -> None:
        m, d = _get(measures, file, path), _get(measures, file, "direct")
        if not m or not d:
            return
        targets.append(
            {
                "metric": f"added p50 @{rate:g}/s, {label_of(path)} - direct, {files[file]}",
                "measured": m.added_p50(d.latency.pct(0.5)),
                "unit": "ms",
                "target": target,
                "kind": "<=",
            }
        )

    variants = ("gateway-noassembly", "gateway-nostore", "gateway-noinject")
    for n in args.workers:
        for f in FILES:
            # Routing by host: 50 sites against 1 (and 1 site against none).
            sites50, sites1 = gateway_path("gateway-sites50", n), gateway_path("gateway-sites1", n)
            cpu(f.key, sites50, sites1, TARGET_SITES_CPU)
            cpu(f.key, sites1, gateway_path("gateway", n), None)
            ratio(f.key, sites50, sites1, None)
            ratio(f.key, sites1, gateway_path("gateway", n), None)
    for n in args.workers:
        gateway = gateway_path("gateway", n)
        for f in FILES:
            html = f.key == "html"
            target = TARGET_HTML_VS_NGINX if html and n == TARGET_WORKERS else None
            ratio(f.key, gateway, "nginx", target)
            ratio(f.key, gateway, "direct", None)
            if html:
                # Assembly and profiles must cost < 15% per page.
                ratio(f.key, gateway, gateway_path("gateway-noassembly", n), TARGET_ASSEMBLY)
            for variant in variants if html else ():
                ratio(f.key, gateway_path(variant, n), "nginx", None)
    for n in args.workers:
        gateway = gateway_path("gateway", n)
        for f in FILES:
            html = f.key == "html"
            added(f.key, gateway, TARGET_ADDED_P50_MS if html else None)
            for variant in variants if html else ():
                added(f.key, gateway_path(variant, n), None)
    for f in FILES:
        added(f.key, "nginx", None)
        added(f.key, "nginx-apart", None)
    width = max(len(t["metric"]) for t in targets) if targets else 10
    print()
    print(f"{'ratio / added latency':<{width}}  {'measured':>10}  {'target':>10}  {'met':>4}")
    print("-" * (width + 32))
    for t in targets:
        value = t["measured"]
        shown = f"{value:.2f}x" if t["unit"] == "x" else f"{value:+.2f} ms"
        target = "-"
        met = ""
        if t["target"] is not None:
            target = f"{t['kind']} {t['target']:g}{'x' if t['unit'] == 'x' else ' ms'}"
            ok = value >= t["target"] if t["kind"] == ">=" else value <= t["target"]
            t["met"] = ok
            met = "yes" if ok else "NO"
        print(f"{t['metric']:<{width}}  {shown:>10}  {target:>10}  {met:>4}")
    return targets


def print_scaling(measures: list[Measure], args: argparse.Namespace) -> list[dict[str, Any]]:
    """Each gateway variant and file with every worker count side by side, and the ratio of
    the last count to the first; the same as data."""
    counts = args.workers
    if len(counts) < 2:
        return []
    rows: list[dict[str, Any]] = []
    scale = f"{counts[-1]}/{counts[0]}"
    cols = "".join(f" {f'w{n} req/s':>10}" for n in counts)
    us = "".join(f" {f'w{n} µs':>7}" for n in counts)
    p50 = "".join(f" {f'w{n} p50':>7}" for n in counts)
    head = f"{'file':<10} {'gateway':<21}{cols} {scale:>6}{us}{p50}"
    print()
    print(
        f"Worker counts side by side: wrk req/s, gateway CPU µs per request, and p50 (ms) at "
        f"{args.rate:g} req/s; {scale} = req/s with {counts[-1]} workers / with {counts[0]}."
    )
    print(head)
    print("-" * len(head))
    files = {f.key: f.label for f in FILES}
    for f in FILES:
        for i, (variant, label, _) in enumerate(VARIANTS):
            found = [_get(measures, f.key, gateway_path(variant, n)) for n in counts]
            got = [m for m in found if m is not None]
            if len(got) != len(counts):
                continue
            rps = [m.wrk.rps for m in got]
            cpu = [m.gateway_us() or 0.0 for m in got]
            lat = [m.latency.pct(0.5) for m in got]
            ratio = rps[-1] / rps[0] if rps[0] else float("nan")
            print(
                f"{files[f.key] if i == 0 else '':<10} {label:<21}"
                + "".join(f" {r:>10,.0f}" for r in rps)
                + f" {_f(ratio, '.2f') + 'x':>6}"
                + "".join(f" {c:>7.0f}" for c in cpu)
                + "".join(f" {_f(v, '.2f'):>7}" for v in lat)
            )
            rows.append(
                {
                    "file": f.key,
                    "variant": variant,
                    "rps": {str(n): round(r, 1) for n, r in zip(counts, rps, strict=True)},
                    "ratio": round(ratio, 3),
                    "gateway_cpu_us": {
                        str(n): round(c, 1) for n, c in zip(counts, cpu, strict=True)
                    },
                    "open_loop_p50_ms": {
                        str(n): round(v, 3) for n, v in zip(counts, lat, strict=True)
                    },
                }
            )
    return rows


def _us(m: Measure | None) -> float | None:
    if m is None or m.gateway_cpu is None:
        return None
    return m.gateway_us()


def print_before_after(measures: list[Measure], args: argparse.Namespace) -> list[dict[str, Any]]:
    """`--compare`: each variant before and after, per worker count and file: gateway CPU
    per request (the figure a shared machine does not distort), req/s, and the open-loop
    p50 added to the direct one; then issue 19's lever-1 targets (1 worker)."""
    rows: list[dict[str, Any]] = []
    files = {f.key: f.label for f in FILES}
    pairs = [(key, label) for key, label, _ in VARIANTS if key + BEFORE in ROOTS]
    if not pairs:
        return rows
    head = (
        f"{'file':<10} {'gateway':<24} {'w':>2} {'µs before':>9} {'µs after':>9} {'after/b':>7} "
        f"{'req/s before':>12} {'req/s after':>12} {'+p50 before':>11} {'+p50 after':>10}"
    )
    print()
    print(
        "Before (--compare) and after: gateway CPU µs per request of the wrk run, wrk req/s, "
        f"and the open-loop p50 at {args.rate:g} req/s minus the direct p50 measured beside "
        "it (ms)."
    )
    print(head)
    print("-" * len(head))
    for f in FILES:
        direct = _get(measures, f.key, "direct")
        base = direct.latency.pct(0.5) if direct else float("nan")
        for key, label in pairs:
            for n in args.workers:
                old = _get(measures, f.key, gateway_path(key + BEFORE, n))
                new = _get(measures, f.key, gateway_path(key, n))
                if old is None or new is None:
                    continue
                b, a = _us(old), _us(new)
                row = {
                    "file": f.key,
                    "variant": key,
                    "workers": n,
                    "us_before": b,
                    "us_after": a,
                    "rps_before": old.wrk.rps,
                    "rps_after": new.wrk.rps,
                    "added_p50_before_ms": old.added_p50(base),
                    "added_p50_after_ms": new.added_p50(base),
                }
                rows.append(row)
                print(
                    f"{files[f.key]:<10} {label:<24} {n:>2} {_f(b, '.0f'):>9} {_f(a, '.0f'):>9} "
                    f"{_f(a / b if a and b else None, '.2f') + 'x':>7} "
                    f"{old.wrk.rps:>12,.0f} {new.wrk.rps:>12,.0f} "
                    f"{row['added_p50_before_ms']:>+11.2f} {row['added_p50_after_ms']:>+10.2f}"
                )
    print()
    for f in FILES:
        page = f.key == "html"
        new = _get(measures, f.key, gateway_path("gateway", 1))
        if new is None:
            continue
        us = _us(new) or float("nan")
        target = TARGET_PAGE_US if page else TARGET_ASSET_US
        direct = _get(measures, f.key, "direct")
        added = new.added_p50(direct.latency.pct(0.5) if direct else float("nan"))
        later = new.after_cpu / max(new.wrk.requests, 1) * 1e6
        print(
            f"issue 19, {files[f.key]}, 1 worker: {us:.0f} µs per request, {later:.0f} of them "
            f"after the run (target <= "
            f"{target:g}: {'met' if us <= target else 'NOT met'}), added p50 {added:+.2f} ms "
            f"(target <= {TARGET_LEAN_ADDED_P50_MS:g}: "
            f"{'met' if added <= TARGET_LEAN_ADDED_P50_MS else 'NOT met'})"
        )
    return rows


def parse_workers(text: str) -> list[int]:
    """`1,2` -> [1, 2]: the worker counts to compare, each run in turn."""
    try:
        counts = sorted({int(part) for part in text.split(",") if part.strip()})
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a list of worker counts: {text!r}") from None
    if not counts or counts[0] < 1 or counts[-1] > 64:
        raise argparse.ArgumentTypeError("worker counts go from 1 to 64")
    return counts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--seconds", type=int, default=5, help="length of each wrk run (whole seconds)"
    )
    parser.add_argument("--concurrency", type=int, default=32, help="wrk connections")
    parser.add_argument("--threads", type=int, default=2, help="wrk threads (default 2)")
    parser.add_argument(
        "--warmup", type=int, default=1, help="unmeasured wrk run before each (s; 0: none)"
    )
    parser.add_argument("--rate", type=float, default=100.0, help="open-loop requests/s")
    parser.add_argument(
        "--latency-seconds", type=float, default=5.0, help="length of each open-loop run"
    )
    parser.add_argument(
        "--workers",
        type=parse_workers,
        default=[1, 2],
        help="gateway worker counts to compare, comma-separated (default: 1,2)",
    )
    parser.add_argument(
        "--sites",
        action="store_true",
        help="compare the gateway with no, 1 and 50 [[sites]] instead of the usual variants",
    )
    parser.add_argument(
        "--variants",
        help="only these gateway variants, comma-separated (e.g. gateway,gateway-noinject)",
    )
    parser.add_argument(
        "--compare",
        type=Path,
        metavar="DIR",
        help="also run each gateway variant from the checkout in DIR (its .venv), as "
        "'before', back to back with this one, and print the two side by side",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="run every gateway (each --compare pair back to back) this many times, "
        "interleaved, and report the round with the median CPU per request (default 1)",
    )
    parser.add_argument(
        "--returning",
        action="store_true",
        help="ask for the page as a returning visitor: eight cookies (its _fbp among them), "
        "a Referer and a campaign query (default: a first visit, no cookie, no Referer)",
    )
    parser.add_argument("--json", type=Path, help="also write the results to this JSON file")
    parser.add_argument(
        "--workdir", type=Path, help="keep the site, configs and logs here (default: a temp dir)"
    )
    args = parser.parse_args(argv)
    global VARIANTS, TAGGING, FILES  # one run measures one set of variants and requests
    if args.returning:
        FILES = returning_files()
    if args.sites:
        VARIANTS = SITE_VARIANTS
    if args.variants:
        wanted = [v.strip() for v in args.variants.split(",") if v.strip()]
        unknown = sorted(set(wanted) - {key for key, _, _ in VARIANTS})
        if unknown:
            parser.error(f"unknown variants {unknown}: {[key for key, _, _ in VARIANTS]}")
        VARIANTS = tuple(v for v in VARIANTS if v[0] in wanted)
    if args.compare is not None:
        root = args.compare.resolve()
        if not (root / ".venv" / "bin" / "capi-gateway").exists():
            parser.error(f"--compare: {root}/.venv/bin/capi-gateway does not exist")
        # Before and after of each variant back to back, so a load spike hits both alike.
        VARIANTS = tuple(
            pair
            for key, label, extra in VARIANTS
            for pair in ((key + BEFORE, f"{label} (before)", extra), (key, label, extra))
        )
        ROOTS.update({key: root for key, _, _ in VARIANTS if key.endswith(BEFORE)})
        TAGGING = TAGGING | {key + BEFORE for key in TAGGING}
    if not 1 <= args.rounds <= 9:
        parser.error("--rounds goes from 1 to 9")
    if min(args.seconds, args.rate, args.latency_seconds) <= 0 or args.warmup < 0:
        parser.error("--seconds, --rate and --latency-seconds must be positive")
    if args.concurrency < 1 or args.threads < 1 or args.seconds > 600 or args.latency_seconds > 600:
        parser.error("--concurrency and --threads must be >= 1, durations at most 600 s")
    nginx, wrk = ensure_tools()
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]

    def interrupted(_signum: int, _frame: object) -> None:
        # Raised wherever the run is, also inside asyncio.run (which would only cancel its
        # task); the subprocesses got the terminal's SIGINT too and are stopped in `finally`.
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, interrupted)
    try:
        if args.workdir is not None:
            args.workdir.mkdir(parents=True, exist_ok=True)
            outcome = benchmark(args, args.workdir.resolve(), nginx, wrk)
        else:
            with tempfile.TemporaryDirectory(prefix="capigw-proxy-") as tmp:
                outcome = benchmark(args, Path(tmp), nginx, wrk)
    except AssertionError as exc:  # a subprocess did not start or answered wrongly
        raise SystemExit(str(exc)) from None
    except KeyboardInterrupt:
        print("\ninterrupted: nginx and the gateway are stopped", file=sys.stderr)
        return 130
    measures: list[Measure] = outcome["measures"]
    targets = print_table(measures, args)
    if args.sites:
        # End-to-end req/s on a shared machine moves by more than 5% from run to run: the
        # lookup itself, beside the gateway's CPU per request, says what routing costs.
        one, fifty = routing_cost(1), routing_cost(50)
        print(
            f"\nhost lookup: {one:.2f} µs with 1 site, {fifty:.2f} µs with 50 sites "
            f"({fifty / one:.2f}x); gateway CPU per request above: hundreds of µs"
        )
    scaling = print_scaling(measures, args)
    compared = print_before_after(measures, args)
    if args.rounds > 1:
        print(
            f"\nGateway CPU µs per request in each of the {args.rounds} rounds (the tables "
            "above show the round with the median):"
        )
        for name, values in outcome["rounds"].items():
            print(f"  {name:<48} {', '.join(str(v) for v in values)}")
        print(
            f"Added p50 at {args.rate:g} req/s (ms) in each round, against the direct p50 "
            "measured beside it:"
        )
        for name, added in outcome["rounds_added_p50"].items():
            print(f"  {name:<48} {', '.join(f'{v:+.2f}' for v in added)}")
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        results = [m.summary() for m in measures]
        for r in results:
            r["open_loop"]["rate"] = args.rate
        document = {
            "machine": {
                "cpus": os.cpu_count(),
                "python": platform.python_version(),
                "platform": platform.platform(),
                "nginx": subprocess.run(
                    [nginx, "-v"], capture_output=True, text=True, check=False
                ).stderr.strip(),
            },
            "args": {
                k: v for k, v in vars(args).items() if k not in {"json", "workdir", "compare"}
            },
            "workers": args.workers,
            "workers_side_by_side": scaling,
            "before_after": compared,
            "results": results,
            "targets": [{**t, "measured": round(t["measured"], 3)} for t in targets],
            "checks": outcome["checks"],
            "pageviews": outcome["pageviews"],
            "rounds": outcome["rounds"],
            "rounds_added_p50": outcome["rounds_added_p50"],
        }
        args.json.write_text(json.dumps(document, indent=2, default=asdict) + "\n")
        print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
