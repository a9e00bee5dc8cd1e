"""CPU floors of a Python hop, beside which the gateway's per-request CPU is judged (not a test).

    python bench/bench_floor.py [--seconds 5] [--concurrency 32] [--files css,js]

Each floor is one process, one event loop (the gateway's: uvloop when installed;
`--asyncio` for asyncio's own), access log off, under the same wrk as bench_proxy.py
(nginx as the origin):
- `fixed`: a bare aiohttp server whose handler answers a fixed 100-byte body (no upstream);
- `aiohttp-proxy`: a bare aiohttp server forwarding through an aiohttp ClientSession set up
  as the gateway's was (no header rules, no metrics, no page plan);
- `lean-proxy`: the same server forwarding through gateway.edge.upstream.UpstreamClient.
What separates the gateway from `lean-proxy` is the gateway's own per-request work.
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import bench_proxy as bp

from tests.fakes.processes import free_port

MODES = ("fixed", "aiohttp-proxy", "lean-proxy")


async def _serve(mode: str, port: int, upstream: str) -> None:
    import aiohttp
    from aiohttp import web
    from multidict import CIMultiDict
    from yarl import URL

    from gateway.edge.upstream import UpstreamClient

    body = b"x" * 100
    origin = URL(upstream)
    session = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=256, keepalive_timeout=4),
        auto_decompress=False,
        cookie_jar=aiohttp.DummyCookieJar(),
        skip_auto_headers=("Accept", "Accept-Encoding", "User-Agent", "Content-Type"),
    )
    lean = UpstreamClient(
        origin,
        limit=256,
        keepalive=4,
        connect_timeout=5,
        read_timeout=60,
        total_timeout=None,
        max_header_bytes=32768,
    )

    async def fixed(request: web.Request) -> web.StreamResponse:
        return web.Response(body=body, content_type="text/css")

    async def relay(
        request: web.Request, status: int, headers: object, content: aiohttp.StreamReader
    ) -> web.StreamResponse:
        response = web.StreamResponse(status=status)
        for name in ("Content-Type", "Content-Length", "ETag", "Last-Modified"):
            value = headers.get(name)  # type: ignore[attr-defined]
            if value is not None:
                response.headers[name] = value
        await response.prepare(request)
        while chunk := await content.readany():
            await response.write(chunk)
        await response.write_eof()
        return response

    async def via_aiohttp(request: web.Request) -> web.StreamResponse:
        url = URL(upstream + request.raw_path, encoded=True)
        async with session.get(url, headers={"Host": origin.raw_authority or ""}) as up:
            return await relay(request, up.status, up.headers, up.content)

    async def via_lean(request: web.Request) -> web.StreamResponse:
        up = await lean.request(
            "GET", request.raw_path, CIMultiDict({"Host": origin.raw_authority or ""})
        )
        try:
            return await relay(request, up.status, up.headers, up.content)
        finally:
            up.release()

    handler = {"fixed": fixed, "aiohttp-proxy": via_aiohttp, "lean-proxy": via_lean}[mode]
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handler)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, bp.HOST, port).start()
    await asyncio.Event().wait()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--files", default="css,js")
    parser.add_argument(
        "--asyncio", action="store_true", help="asyncio's own loop, not the gateway's (uvloop)"
    )
    parser.add_argument("--serve", choices=MODES, help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--upstream", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        if args.asyncio:
            asyncio.run(_serve(args.serve, args.port, args.upstream))
        else:
            # The gateway's own loop (uvloop when installed): the floor must not differ from
            # the gateway in what runs the server, or the gap includes the loop's cost.
            from gateway.cli import run

            run(_serve(args.serve, args.port, args.upstream))
        return 0
    nginx, wrk = bp.ensure_tools()
    files = [f for f in bp.FILES if f.key in args.files.split(",")]
    rows: list[tuple[str, str, float, float]] = []
    with tempfile.TemporaryDirectory(prefix="capigw-floor-") as tmp, bp.processes() as procs:
        work = Path(tmp)
        bp.write_site(work / "www")
        _, origin, _ = bp.start_nginx(nginx, work, procs, 1)
        for mode in MODES:
            port = free_port()
            log = work / f"{mode}.log"
            cmd = [sys.executable, __file__, "--serve", mode, "--port", str(port)]
            cmd += ["--asyncio"] if args.asyncio else []
            proc = subprocess.Popen(
                [*cmd, "--upstream", origin], stdout=log.open("wb"), stderr=subprocess.STDOUT
            )
            procs.add(proc)
            url = f"http://{bp.HOST}:{port}"
            bp.wait_listening(url + bp.FILES[2].path, proc, log, timeout=15)
            for f in files if mode != "fixed" else files[:1]:
                bp.run_wrk(wrk, url + f.path, f.headers, args, 1)  # warm-up
                family = procs.family(proc)
                cpu0, t0 = bp.cpu_seconds(family), time.monotonic()
                res = bp.run_wrk(wrk, url + f.path, f.headers, args, args.seconds)
                cpu = bp.cpu_seconds(family) - cpu0
                label = "100 B fixed" if mode == "fixed" else f.label
                us = cpu / max(res.requests, 1) * 1e6
                rows.append((mode, label, us, res.requests / (time.monotonic() - t0)))
            procs.stop(proc)
    print(f"{'floor':<16}{'file':<14}{'CPU µs/req':>12}{'req/s':>10}")
    for mode, label, us, rps in rows:
        print(f"{mode:<16}{label:<14}{us:>12.0f}{rps:>10.0f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
