"""Instructions per proxied request, counted by callgrind (not a test).

    python bench/callgrind_proxy.py [--requests 2000] [--files css,js] [--connections 8]
                                    [--root DIR ...] [--floor lean-proxy ...] [--settle S]

CPU seconds per request move with the load the other processes put on the machine;
the instructions the gateway's process executes for a fixed number of requests do not.
Starts the origin (nginx, as bench_proxy.py does), then each target under
`valgrind --tool=callgrind`: this checkout's gateway (`--workers 1 --dry-run`, as
bench_proxy.py runs it), each `--root DIR`'s gateway (its .venv), and each `--floor` mode
of bench_floor.py. For each file it sends `--requests` warm-up requests, zeroes the
counters, sends `--requests` more (keep-alive, `--connections` at once, the headers of
bench_proxy.py) and dumps: instructions of that process per request, all threads.
`--settle S` waits S seconds before the dump, so that what the requests left to do (a
page's PageView stored, claimed and recorded) is counted; with `--idle` the idle rate
over the load and the wait is taken out in the "less idle" columns.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import bench_proxy as bp

from tests.fakes.processes import HOST, ROOT, clean_env, free_port, serve_args, spawn

_FLOOR = Path(__file__).resolve().with_name("bench_floor.py")


def _request(path: str, headers: dict[str, str], port: int) -> bytes:
    lines = [f"GET {path} HTTP/1.1", f"Host: {HOST}:{port}"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


async def _one_connection(port: int, wire: bytes, count: int) -> None:
    reader, writer = await asyncio.open_connection(HOST, port)
    try:
        for _ in range(count):
            writer.write(wire)
            head = await reader.readuntil(b"\r\n\r\n")
            if not head.startswith(b"HTTP/1.1 200"):
                raise AssertionError(f"unexpected answer: {head[:200]!r}")
            match = re.search(rb"(?i)\r\ncontent-length:\s*(\d+)", head)
            if match is not None:
                await reader.readexactly(int(match.group(1)))
            else:  # chunked
                while True:
                    size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
                    await reader.readexactly(size + 2)
                    if size == 0:
                        break
    finally:
        writer.close()


async def load(port: int, wire: bytes, requests: int, connections: int) -> None:
    """`requests` keep-alive requests over `connections` connections at once."""
    share, extra = divmod(requests, connections)
    await asyncio.gather(
        *(_one_connection(port, wire, share + (i < extra)) for i in range(connections))
    )


def _control(pid: int, *flags: str) -> None:
    subprocess.run(["callgrind_control", *flags, str(pid)], check=True, capture_output=True)


def _total(out: Path) -> int:
    """The instructions in callgrind's dumps of the measured part (all threads' files)."""
    total = 0
    for part in out.parent.glob(out.name + "*"):
        text = part.read_text(errors="replace")
        if "Trigger: dump" not in text:
            continue  # the start-up, or the dump at exit
        match = re.search(r"^totals:\s*(\d+)", text, flags=re.M)
        if match is not None:
            total += int(match.group(1))
    return total


def _wait_up(port: int, proc: subprocess.Popen[bytes], log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    wire = _request(bp.FILES[2].path, bp.FILES[2].headers, port)
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"exited:\n{log.read_text(errors='replace')[-3000:]}")
        try:
            asyncio.run(load(port, wire, 1, 1))
            return
        except (OSError, AssertionError, asyncio.IncompleteReadError):
            time.sleep(1.0)
    raise AssertionError(f"did not answer in {timeout} s:\n{log.read_text(errors='replace')}")


def measure(
    name: str,
    cmd: list[str],
    env: dict[str, str],
    cwd: Path,
    port: int,
    work: Path,
    args: argparse.Namespace,
    procs: bp.Procs,
) -> dict[str, float]:
    """Instructions per request of one target, for each wanted file."""
    out = work / f"callgrind.{name}.out"
    valgrind = [
        "valgrind",
        "--tool=callgrind",
        f"--callgrind-out-file={out}",
        "--separate-threads=yes",
        "--dump-instr=no",
    ]
    log = work / f"{name}.log"
    proc = spawn([*valgrind, *cmd], log, env=env, cwd=cwd)
    procs.add(proc)
    results: dict[str, float] = {}
    try:
        _wait_up(port, proc, log, timeout=300)
        if args.idle:
            # What the process executes with no request at all (timers, background tasks):
            # under valgrind a run lasts ~50x longer, so that share is ~50x overstated.
            for part in work.glob(out.name + "*"):
                part.unlink()
            _control(proc.pid, "--zero")
            time.sleep(args.idle)
            _control(proc.pid, "--dump")
            time.sleep(0.5)
            results["idle Ir/s"] = _total(out) / args.idle
        for f in bp.FILES:
            if f.key not in args.files.split(","):
                continue
            wire = _request(f.path, f.headers, port)
            asyncio.run(load(port, wire, args.requests, args.connections))
            time.sleep(args.settle)  # the warm-up's own leftovers are not counted
            for part in work.glob(out.name + "*"):
                part.unlink()
            _control(proc.pid, "--zero")
            started = time.monotonic()
            asyncio.run(load(port, wire, args.requests, args.connections))
            # The page's PageViews are stored and claimed after it has left (group commits,
            # the hold, the sender's linger): counted too, as bench_proxy.py counts them.
            time.sleep(args.settle)
            _control(proc.pid, "--dump")
            results[f.key + " s"] = time.monotonic() - started
            time.sleep(0.5)
            results[f.key] = _total(out) / args.requests
            if args.keep is not None:
                args.keep.mkdir(parents=True, exist_ok=True)
                for part in work.glob(out.name + ".*-*"):
                    shutil.copy(part, args.keep / f"{name}-{f.key}-{part.name}")
    finally:
        procs.stop(proc, grace=30)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--files", default="css,js")
    parser.add_argument("--root", type=Path, action="append", default=[])
    parser.add_argument("--floor", action="append", default=[], choices=("fixed", "lean-proxy"))
    parser.add_argument(
        "--idle", type=float, default=0.0, help="also count N seconds without requests"
    )
    parser.add_argument(
        "--settle",
        type=float,
        default=0.0,
        help="seconds to wait after the load before counting stops (the work it leaves)",
    )
    parser.add_argument("--asyncio", action="store_true", help="floors on asyncio's own loop")
    parser.add_argument("--no-self", action="store_true", help="skip this checkout's gateway")
    parser.add_argument("--keep", type=Path, help="copy the dumps here (for callgrind_annotate)")
    args = parser.parse_args(argv)
    if shutil.which("valgrind") is None or shutil.which("callgrind_control") is None:
        raise SystemExit("needs valgrind (callgrind_control)")
    nginx, _ = bp.ensure_tools()
    rows: list[tuple[str, dict[str, float]]] = []
    with tempfile.TemporaryDirectory(prefix="capigw-callgrind-") as tmp, bp.processes() as procs:
        work = Path(tmp)
        bp.write_site(work / "www")
        _, origin, _ = bp.start_nginx(nginx, work, procs, 1)
        roots = ([] if args.no_self else [ROOT]) + [r.resolve() for r in args.root]
        for root in roots:
            port = free_port()
            buffer = work / f"gw{port}.db"
            python = root / ".venv" / "bin" / "python"
            subprocess.run([python, "-c", bp._CREATE_OUTBOX, buffer], cwd=root, check=True)
            more = ["--pixel-id", bp.PIXEL, "--access-token", bp.TOKEN]
            more += ["--graph-url", bp.GRAPH_URL, "--api-key", bp.API_KEY]
            cli = root / ".venv" / "bin" / "capi-gateway"
            cmd = [str(python), str(cli), *serve_args(port, buffer, *more)]
            env = clean_env(CAPIGW_UPSTREAM=origin, CAPIGW_WORKERS="1", CAPIGW_DRY_RUN="true")
            if not bp._knows_setting(root, "assembly_hold"):  # a tree from before assembly
                del env["CAPIGW_ASSEMBLY_HOLD"]
            name = "gateway" if root == ROOT else f"gateway {root}"
            rows.append((name, measure(f"gw{port}", cmd, env, root, port, work, args, procs)))
        for mode in args.floor:
            port = free_port()
            cmd = [sys.executable, str(_FLOOR), "--serve", mode, "--port", str(port)]
            cmd += ["--upstream", origin, *(["--asyncio"] if args.asyncio else [])]
            rows.append((mode, measure(mode, cmd, clean_env(), ROOT, port, work, args, procs)))
    files = args.files.split(",")
    head = "".join(f"{f + ' Ir/req':>16}" for f in files)
    if args.idle:
        head += f"{'idle Ir/s':>16}" + "".join(f"{f + ' less idle':>16}" for f in files)
    print(f"{'target':<40}{head}")
    for name, results in rows:
        cells = "".join(f"{results.get(f, float('nan')):>16,.0f}" for f in files)
        if args.idle:
            idle = results.get("idle Ir/s", 0.0)
            cells += f"{idle:>16,.0f}"
            for f in files:
                less = results.get(f, 0.0) - idle * results.get(f + " s", 0.0) / args.requests
                cells += f"{less:>16,.0f}"
        print(f"{name:<40}{cells}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
