"""Flame graphs of a 1-worker gateway under wrk, one per file (not a test).

    python bench/flame_proxy.py --out bench/flames --tag after [--seconds 8] [--rate 250]
                                [--root /work/main] [--files css,js,html] [--env K=V]

Starts the origin (nginx, as bench_proxy.py does) and `capi-gateway serve --workers 1
--dry-run` as shipped (tagged page, `_fbp`, a PageView stored and dry-run sent), then for
each file runs wrk at `--concurrency` connections for `--seconds` while
`py-spy record --pid <gateway> --rate <rate>` samples the gateway, and writes
`<out>/<tag>-<file>.svg`. `--root DIR` profiles the checkout in DIR instead (its
`.venv/bin/capi-gateway`), e.g. main for the "before" graphs. It also prints the gateway's
CPU per request of each wrk run (py-spy's sampling adds a little to it). Needs py-spy
(`pip install py-spy`) and ptrace rights (root, or kernel.yama.ptrace_scope=0).
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import bench_proxy as bp

from tests.fakes.processes import wait_healthy


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("bench/flames"))
    parser.add_argument("--tag", default="profile", help="file name prefix, e.g. before/after")
    parser.add_argument("--seconds", type=int, default=8)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--rate", type=int, default=250, help="py-spy samples per second")
    parser.add_argument("--files", default="css,js,html")
    parser.add_argument(
        "--raw", action="store_true", help="collapsed stacks (.txt) instead of an SVG"
    )
    parser.add_argument("--native", action="store_true", help="py-spy --native (C frames)")
    parser.add_argument("--root", type=Path, help="profile this checkout (its .venv) instead")
    parser.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a gateway setting for the run, e.g. CAPIGW_RULES=rules (bench_front's gateway)",
    )
    args = parser.parse_args(argv)
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    nginx, wrk = bp.ensure_tools()
    wanted = args.files.split(",")
    args.out.mkdir(parents=True, exist_ok=True)
    wrk_args = argparse.Namespace(threads=1, concurrency=args.concurrency)
    with tempfile.TemporaryDirectory(prefix="capigw-flame-") as tmp, bp.processes() as procs:
        work = Path(tmp)
        bp.write_site(work / "www")
        _, origin, _ = bp.start_nginx(nginx, work, procs, 1)
        extra = dict(item.split("=", 1) for item in args.env)
        gw = bp.start_bench_gateway(work, "gateway", origin, procs, extra, 1, root=args.root)

        async def healthy() -> None:
            async with aiohttp.ClientSession() as session:
                await wait_healthy(gw, session, timeout=30)

        asyncio.run(healthy())
        family = procs.family(gw.proc)
        for f in bp.FILES:
            if f.key not in wanted:
                continue
            bp.run_wrk(wrk, gw.url + f.path, f.headers, wrk_args, 1)  # warm-up
            svg = args.out / f"{args.tag}-{f.key}.{'txt' if args.raw else 'svg'}"
            spy = subprocess.Popen(
                [py_spy, "record", "--pid", str(gw.proc.pid), "--rate", str(args.rate)]
                + ["--duration", str(args.seconds + 1), "--output", str(svg)]
                + ([] if args.native else ["--nonblocking"])
                + (
                    (["--format", "raw"] if args.raw else [])
                    + (["--native"] if args.native else [])
                ),
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
            )
            cpu0 = bp.cpu_seconds(family)
            result = bp.run_wrk(wrk, gw.url + f.path, f.headers, wrk_args, args.seconds)
            cpu = bp.cpu_seconds(family) - cpu0
            _, err = spy.communicate(timeout=60)
            if spy.returncode != 0:
                print(err.decode(errors="replace"), file=sys.stderr)
            per = cpu / max(result.requests, 1) * 1e6
            print(f"{f.label}: {result.rps:,.0f} req/s, {per:.0f} µs gateway CPU/req -> {svg}")
        procs.stop(gw.proc, grace=20)
    return 0


if __name__ == "__main__":
    sys.exit(main())
