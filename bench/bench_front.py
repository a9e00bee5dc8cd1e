"""Site-wide benchmark: whole page views through nginx alone, nginx + gateway, the gateway alone.

    python bench/bench_front.py [--seconds 5] [--rounds 3] [--concurrency 32] [--threads 2]
                                [--assets 40] [--workers 1] [--compare DIR] [--json PATH]
                                [--documents-to-site]

A page view is one tagged HTML document (20 KB, `Sec-Fetch-Dest: document`, a browser's
User-Agent: the gateway tags it, issues `_fbp` and stores a PageView, as shipped) and
`--assets` assets (JS 20 KB, CSS 2 KB, images 8 KB, with the `Sec-Fetch-Dest` a browser
sends). wrk (a Lua script cycling through the page's requests on each connection, closed
loop, `--concurrency` connections for `--seconds`) loads each setup in turn, `--rounds`
times interleaved (the median is shown), all on
127.0.0.1, nginx and the gateway as subprocesses of this script:

- nginx alone: a plain reverse proxy to the origin (itself a static nginx server block);
- nginx + gateway: the config `capi-gateway front-config nginx` generates from rules/, in
  front of `capi-gateway serve --dry-run --rules rules/` and the origin;
- the gateway alone: wrk straight at the gateway, which proxies everything.

`--compare DIR` adds the same gateway setups run from another checkout with its own .venv
("before", e.g. the tree of the day issue 19 was filed), interleaved in the same rounds:
"gateway alone (before)", and "nginx + gateway (before)" when that checkout has
`front-config` (its own generated config, in the same nginx).

`--documents-to-site` adds "nginx, front-config, documents to site" (and its "before"
twin with --compare): the generated config with its document tests deleted, so that
nothing of a page view reaches the gateway — nginx's cost of the routing alone, against
nginx alone.

Page views/s = requests/s / (1 + assets). It prints one table side by side with the ratio
to nginx alone, and after/before with --compare; target: nginx + gateway >= 0.8x nginx
alone. Not a test; asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench_proxy import (
    UA,
    Procs,
    cpu_seconds,
    css_file,
    ensure_tools,
    html_page,
    js_file,
    nginx_conf,
    processes,
    start_bench_gateway,
    wait_listening,
)

from tests.fakes.processes import HOST, ROOT, clean_env, free_port, spawn

DOCUMENT_LINE = re.compile(
    r'"~\^\(\?:document|"~\^:|^\s*(?:document|iframe|frame) 1;$|"~text/html" 1;'
)

TARGET = 0.8  # nginx + gateway page views/s >= 0.8 x nginx alone
DOCS_TO_SITE = "nginx, front-config, docs to site"
DOCUMENT = "/products/merino-crew.html"


@dataclass
class Result:
    """One setup's figures."""

    setup: str
    page_views: float = 0.0
    rps: float = 0.0
    p50: float = float("nan")
    p99: float = float("nan")
    errors: int = 0
    gateway_cpu: float = 0.0  # CPU seconds of the gateway per wall second
    nginx_cpu: float = 0.0
    cpu_per_view: float = 0.0  # µs of nginx + gateway CPU per page view
    low: float = 0.0  # page views/s, worst and best round
    high: float = 0.0


def write_site(root: Path, assets: int) -> list[tuple[str, str]]:
    """The origin's files; (path, Sec-Fetch-Dest) of each request of a page view."""
    page = root / DOCUMENT.lstrip("/")
    page.parent.mkdir(parents=True, exist_ok=True)
    page.write_bytes(html_page(20 * 1024))
    (root / "static").mkdir(exist_ok=True)
    requests = [(DOCUMENT, "document")]
    kinds = [("js", "script", js_file(20 * 1024)), ("css", "style", css_file(2048))]
    kinds.append(("png", "image", bytes(range(256)) * 32))
    for i in range(assets):
        ext, dest, body = kinds[i % len(kinds)]
        (root / "static" / f"a{i}.{ext}").write_bytes(body)
        requests.append((f"/static/a{i}.{ext}", dest))
    return requests


def lua_script(requests: list[tuple[str, str]]) -> str:
    """wrk's script: each thread cycles through the page view's requests in order."""
    lines = ["local reqs = {}", "init = function(args)"]
    for i, (path, dest) in enumerate(requests, 1):
        accept = "text/html,application/xhtml+xml,*/*;q=0.8" if dest == "document" else "*/*"
        headers = f'["User-Agent"]="{UA}", ["Accept"]="{accept}", ["Sec-Fetch-Dest"]="{dest}"'
        lines.append(f'  reqs[{i}] = wrk.format("GET", "{path}", {{{headers}}})')
    lines += [
        "end",
        "local n = 0",
        f"request = function() n = n % {len(requests)} + 1; return reqs[n] end",
    ]
    return "\n".join(lines) + "\n"


def run_wrk(wrk: str, url: str, script: Path, args: argparse.Namespace) -> tuple[float, ...]:
    """(requests/s, p50 ms, p99 ms, errors) of one wrk run."""
    cmd = [wrk, f"-t{args.threads}", f"-c{args.concurrency}", f"-d{args.seconds}s"]
    cmd += ["--timeout", "5s", "--latency", "-s", str(script), url]
    done = subprocess.run(
        cmd, capture_output=True, text=True, timeout=args.seconds + 30, check=False
    )
    if done.returncode != 0:
        raise AssertionError(f"wrk exited {done.returncode}:\n{done.stdout}\n{done.stderr}")
    out = done.stdout
    rate = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if rate is None:
        raise AssertionError(f"cannot read wrk's output:\n{out}")
    pct = {p: _ms(v) for p, v in re.findall(r"^\s+(50|99)%\s+(\S+)$", out, re.M)}
    errors = sum(int(n) for n in re.findall(r"(?:connect|read|write|timeout) (\d+)", out))
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors += int(bad.group(1)) if bad else 0
    return float(rate.group(1)), pct.get("50", float("nan")), pct.get("99", float("nan")), errors


def _ms(text: str) -> float:
    found = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text)
    if not found:
        return float("nan")
    return float(found.group(1)) * {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 6e4}[found.group(2)]


def measure(
    name: str,
    url: str,
    wrk: str,
    script: Path,
    args: argparse.Namespace,
    procs: Procs,
    gateway: subprocess.Popen[bytes] | None,
    nginx: subprocess.Popen[bytes],
    per_view: int,
) -> Result:
    """Warm up, then one measured wrk run with the CPU of nginx and the gateway around it."""
    warm = argparse.Namespace(**{**vars(args), "seconds": 1})
    run_wrk(wrk, url, script, warm)
    gw_family = procs.family(gateway) if gateway is not None else []
    ng_family = procs.family(nginx)
    gw0, ng0, t0 = cpu_seconds(gw_family), cpu_seconds(ng_family), time.monotonic()
    rps, p50, p99, errors = run_wrk(wrk, url, script, args)
    wall = time.monotonic() - t0
    res = Result(
        setup=name,
        page_views=rps / per_view,
        rps=rps,
        p50=p50,
        p99=p99,
        errors=errors,
        gateway_cpu=(cpu_seconds(gw_family) - gw0) / wall if gateway is not None else 0.0,
        nginx_cpu=(cpu_seconds(ng_family) - ng0) / wall,
    )
    res.cpu_per_view = (res.gateway_cpu + res.nginx_cpu) / max(res.page_views, 1e-9) * 1e6
    return res


def benchmark(args: argparse.Namespace, work: Path, nginx: str, wrk: str) -> list[Result]:
    requests = write_site(work / "www", args.assets)
    script = work / "pageview.lua"
    script.write_text(lua_script(requests))
    origin, proxy, front = free_port(), free_port(), free_port()
    with processes() as procs:
        gw = start_bench_gateway(
            work,
            "gateway",
            f"http://{HOST}:{origin}",
            procs,
            {"CAPIGW_RULES": str(ROOT / "rules")},
            args.workers,
            live=True,  # nginx, which serves the site, starts once the gateway's port is known
        )
        fronts = {"front.conf": front_config(ROOT, origin, gw.url, front)}
        setups = [
            ("nginx alone", f"http://{HOST}:{proxy}", None),
            ("nginx + gateway (front-config)", f"http://{HOST}:{front}", gw.proc),
            ("gateway alone", gw.url, gw.proc),
        ]
        if args.documents_to_site:
            port = free_port()
            text = without_documents(front_config(ROOT, origin, gw.url, port))
            fronts["front-nodocs.conf"] = _renamed(text, "capid_")
            setups.append((DOCS_TO_SITE, f"http://{HOST}:{port}", gw.proc))
        if args.compare is not None:
            before = start_bench_gateway(
                work,
                "gateway-before",
                f"http://{HOST}:{origin}",
                procs,
                {"CAPIGW_RULES": str(args.compare / "rules")},
                args.workers,
                root=args.compare,
                live=True,
            )
            setups.append(("gateway alone (before)", before.url, before.proc))
            if has_front_config(args.compare):
                front_before = free_port()
                generated = front_config(args.compare, origin, before.url, front_before)
                fronts["front-before.conf"] = _renamed(generated)
                url = f"http://{HOST}:{front_before}"
                setups.append(("nginx + gateway (before)", url, before.proc))
                if args.documents_to_site:
                    port = free_port()
                    text = front_config(args.compare, origin, before.url, port)
                    fronts["front-before-nodocs.conf"] = _renamed(without_documents(text), "capic_")
                    setups.append(
                        (DOCS_TO_SITE + " (before)", f"http://{HOST}:{port}", before.proc)
                    )
        conf = nginx_conf(work, nginx, origin, proxy, args.nginx_workers)
        # The generated files go where the user would put one: in the http {} context.
        conf = conf.rstrip().removesuffix("}")
        for name, text in fronts.items():
            (work / name).write_text(text)
            conf += f"    include {work}/{name};\n"
        (work / "nginx.conf").write_text(conf + "}\n")
        log = work / "nginx-error.log"
        cmd = [nginx, "-p", str(work), "-c", str(work / "nginx.conf"), "-e", str(log)]
        ng = spawn([*cmd, "-g", "daemon off;"], work / "nginx-stdout.log")
        procs.add(ng)
        for _, url, _ in setups:
            wait_listening(f"{url}{DOCUMENT}", ng, log, timeout=10)
        per_view = len(requests)
        # Rounds interleave the setups, so a load spike from elsewhere on the machine hits
        # them alike; each figure is the median over the rounds.
        runs: dict[str, list[Result]] = {name: [] for name, _, _ in setups}
        for _ in range(args.rounds):
            for name, url, gproc in setups:
                runs[name].append(measure(name, url, wrk, script, args, procs, gproc, ng, per_view))
        return [_median(name, found) for name, found in runs.items()]


def front_config(root: Path, origin: int, gateway: str, listen: int) -> str:
    """`capi-gateway front-config nginx` of the checkout at `root`, for its rules."""
    cmd = [str(root / ".venv" / "bin" / "capi-gateway"), "front-config", "nginx"]
    cmd += ["--rules", str(root / "rules"), "--upstream", f"http://{HOST}:{origin}"]
    cmd += ["--gateway", gateway, "--listen", f"{HOST}:{listen}"]
    done = subprocess.run(
        cmd, cwd=root, env=clean_env(), capture_output=True, text=True, timeout=60, check=False
    )
    if done.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} exited {done.returncode}:\n{done.stderr}")
    return done.stdout


def without_documents(conf: str) -> str:
    """A generated config with its document tests deleted, so documents go to the site.

    Knows both forms: the document map's two regexes (before) and the `Sec-Fetch-Dest`
    keys and `Accept` regex of the map chain (now).
    """
    kept = [line for line in conf.splitlines() if not DOCUMENT_LINE.search(line)]
    return "\n".join(kept) + "\n"


def has_front_config(root: Path) -> bool:
    """Whether the checkout at `root` has `capi-gateway front-config` (issue 19, lever 2)."""
    cmd = [str(root / ".venv" / "bin" / "capi-gateway"), "front-config", "--help"]
    done = subprocess.run(cmd, cwd=root, env=clean_env(), capture_output=True, timeout=60)
    return done.returncode == 0


def _renamed(conf: str, prefix: str = "capib_") -> str:
    """Another generated config in the same nginx: its own upstream and variable names."""
    return re.sub(r"(?<![A-Za-z0-9_])capi_", prefix, conf)


def _median(name: str, found: list[Result]) -> Result:
    def mid(values: list[float]) -> float:
        return statistics.median(values)

    views = [r.page_views for r in found]
    return Result(
        setup=name,
        page_views=mid(views),
        rps=mid([r.rps for r in found]),
        p50=mid([r.p50 for r in found]),
        p99=mid([r.p99 for r in found]),
        errors=sum(r.errors for r in found),
        gateway_cpu=mid([r.gateway_cpu for r in found]),
        nginx_cpu=mid([r.nginx_cpu for r in found]),
        cpu_per_view=mid([r.cpu_per_view for r in found]),
        low=min(views),
        high=max(views),
    )


def print_table(results: list[Result], args: argparse.Namespace) -> None:
    base = results[0].page_views or float("nan")
    print(
        f"\nSite-wide: 1 tagged document + {args.assets} assets per page view; wrk "
        f"-c{args.concurrency} -t{args.threads} {args.seconds}s, median of {args.rounds} "
        f"interleaved rounds; gateway --workers "
        f"{args.workers}; nginx worker_processes {args.nginx_workers}\n"
    )
    head = f"{'setup':<44}{'page views/s':>14}{'req/s':>10}{'p50 ms':>9}{'p99 ms':>9}"
    head += f"{'errors':>8}{'gw CPU':>8}{'nginx CPU':>10}{'CPU us/pv':>11}{'vs nginx':>10}"
    head += "  rounds (views/s)"
    print(head)
    for r in results:
        print(
            f"{r.setup:<44}{r.page_views:>14,.0f}{r.rps:>10,.0f}{r.p50:>9.2f}{r.p99:>9.2f}"
            f"{r.errors:>8}{r.gateway_cpu:>8.0%}{r.nginx_cpu:>10.0%}{r.cpu_per_view:>11,.0f}"
            f"{r.page_views / base:>9.2f}x"
            f"  {r.low:,.0f}-{r.high:,.0f}"
        )
    front = results[1].page_views / base
    verdict = "met" if front >= TARGET else "NOT met"
    print(f"\nTarget nginx + gateway >= {TARGET}x nginx alone: {front:.2f}x ({verdict}).")
    by_name = {r.setup: r for r in results}
    for after, before in (
        ("gateway alone", "gateway alone (before)"),
        ("nginx + gateway (front-config)", "nginx + gateway (before)"),
        (DOCS_TO_SITE, DOCS_TO_SITE + " (before)"),
    ):
        if before in by_name:
            now, then = by_name[after], by_name[before]
            print(
                f"{after}: {now.page_views / max(then.page_views, 1e-9):.2f}x the page views/s "
                f"of {before!r}, {now.cpu_per_view / max(then.cpu_per_view, 1e-9):.2f}x its "
                "CPU per page view"
            )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=int, default=5, help="length of each wrk run")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (median)")
    parser.add_argument("--concurrency", type=int, default=32, help="wrk connections")
    parser.add_argument("--threads", type=int, default=2, help="wrk threads")
    parser.add_argument("--assets", type=int, default=40, help="assets per page view")
    parser.add_argument("--workers", type=int, default=1, help="gateway worker processes")
    parser.add_argument("--nginx-workers", type=int, default=1, help="nginx worker_processes")
    parser.add_argument(
        "--compare",
        type=Path,
        metavar="DIR",
        help="also run the gateway setups from this checkout (its own .venv), interleaved",
    )
    parser.add_argument(
        "--documents-to-site",
        action="store_true",
        help="also the generated config with documents routed to the site (nginx's own cost)",
    )
    parser.add_argument("--json", type=Path, help="also write the results to this JSON file")
    parser.add_argument("--workdir", type=Path, help="keep configs and logs here")
    args = parser.parse_args(argv)
    if not (1 <= args.seconds <= 600 and 1 <= args.concurrency <= 1000 and args.assets >= 0):
        parser.error("--seconds 1..600, --concurrency 1..1000, --assets >= 0")
    if not 1 <= args.rounds <= 20:
        parser.error("--rounds 1..20")
    if args.compare is not None:
        args.compare = args.compare.resolve()
        if not (args.compare / ".venv" / "bin" / "capi-gateway").exists():
            parser.error(f"--compare: {args.compare}/.venv/bin/capi-gateway does not exist")
    nginx, wrk = ensure_tools()
    with tempfile.TemporaryDirectory(prefix="bench-front-") as tmp:
        work = args.workdir or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        results = benchmark(args, work, nginx, wrk)
    print_table(results, args)
    if args.json:
        args.json.write_text(json.dumps([asdict(r) for r in results], indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
