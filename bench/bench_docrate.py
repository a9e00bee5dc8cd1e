"""The gateway's CPU per tagged document at a fixed, unsaturated rate (issue 19, behind nginx).

    python bench/bench_docrate.py [--rate 250] [--seconds 8] [--idle 10] [--rounds 3]
                                  [--compare DIR] [--env KEY=VALUE ...] [--pyspy SVG]

Behind `capi-gateway front-config` the gateway sees only documents, a few hundred a second,
each arriving alone; `bench_front.py` measures that through wrk's closed loop, whose rate
moves with the machine's load, so its "gw CPU" per document is not comparable across runs.
Here a bounded aiohttp loop sends `--rate` tagged 20 KB documents a second (a browser's
headers, no cookies: each is a new visitor, as in bench_front) straight to the gateway
(`serve --dry-run --rules rules/`, one worker) for `--seconds`, on schedule whether or not
answers are back. Before the load the gateway's idle CPU over `--idle` seconds is measured,
so that background loops and timers can be told from the per-document cost.

`--compare DIR` runs another checkout's gateway in the same rounds, interleaved;
`--env KEY=VALUE` adds this checkout's gateway with that setting (an experiment) to the
rounds;
`--pyspy SVG` records this checkout's gateway with py-spy during its first loaded run.
Prints per gateway: idle CPU (% of a core), CPU µs per document (raw and less idle), p50.
Not a test; asserts nothing. Loopback only; every load is bounded in count and time.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench_proxy import (
    FILES,
    HTML_HEADERS,
    Procs,
    cpu_seconds,
    ensure_tools,
    open_loop,
    processes,
    start_bench_gateway,
    start_nginx,
    write_site,
)

from tests.fakes.processes import ROOT


@dataclass
class Runs:
    """One gateway's figures over the rounds."""

    name: str
    idle: list[float] = field(default_factory=list)  # CPU s per wall s, no traffic
    per_doc: list[float] = field(default_factory=list)  # CPU µs per document, under load
    kernel: list[float] = field(default_factory=list)  # of which system (kernel) time
    p50: list[float] = field(default_factory=list)
    errors: int = 0


def system_seconds(family: list[psutil.Process]) -> float:
    """System (kernel) CPU seconds of these processes so far."""
    total = 0.0
    for p in family:
        with contextlib.suppress(psutil.Error):
            total += p.cpu_times().system
    return total


def loaded(
    url: str, rate: float, seconds: float, procs: Procs, proc: subprocess.Popen[bytes]
) -> tuple[float, float, float, int]:
    """(CPU µs per document, of which kernel, p50 ms, errors) of one fixed-rate run."""
    family = procs.family(proc)
    before, kernel = cpu_seconds(family), system_seconds(family)
    result = asyncio.run(open_loop(url, HTML_HEADERS, rate, seconds))
    # The rows of the last documents are stored and sent after their answers: let the
    # window and the sender finish so that the run pays for all of its documents.
    time.sleep(0.5)
    used, kernel = cpu_seconds(family) - before, system_seconds(family) - kernel
    sent = max(result.sent, 1)
    return used / sent * 1e6, kernel / sent * 1e6, result.pct(0.5), result.errors


def idle_cpu(seconds: float, procs: Procs, proc: subprocess.Popen[bytes]) -> float:
    """CPU seconds per wall second of the gateway with no traffic at all."""
    family = procs.family(proc)
    before, t0 = cpu_seconds(family), time.monotonic()
    time.sleep(seconds)
    return (cpu_seconds(family) - before) / (time.monotonic() - t0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=float, default=250.0, help="documents/s")
    parser.add_argument("--seconds", type=float, default=8.0, help="length of each load")
    parser.add_argument("--idle", type=float, default=10.0, help="idle measure, seconds")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds")
    parser.add_argument("--compare", type=Path, help="another checkout (its .venv)")
    parser.add_argument("--env", action="append", default=[], help="KEY=VALUE for ours")
    parser.add_argument("--pyspy", type=Path, help="flame graph of ours, first loaded run")
    args = parser.parse_args(argv)
    if args.rate * args.seconds > 20_000:
        parser.error("keep the load bounded: rate x seconds <= 20000")
    nginx, _ = ensure_tools()
    extra = dict(item.split("=", 1) for item in args.env)
    page = FILES[0].path
    with tempfile.TemporaryDirectory(prefix="bench-docrate-") as tmp, processes() as procs:
        work = Path(tmp)
        write_site(work / "www")
        _, origin, _ = start_nginx(nginx, work, procs, 1)
        rules = {"CAPIGW_RULES": str(ROOT / "rules")}
        gateways = [("ours", start_bench_gateway(work, "ours", origin, procs, rules, 1))]
        if extra:  # the experiment beside the plain gateway, in the same rounds
            gw = start_bench_gateway(work, "ours-env", origin, procs, {**rules, **extra}, 1)
            gateways.append((f"ours with {' '.join(args.env)}"[:39], gw))
        if args.compare is not None:
            other = {"CAPIGW_RULES": str(args.compare / "rules")}
            gw = start_bench_gateway(work, "other", origin, procs, other, 1, root=args.compare)
            gateways.append((f"other ({args.compare})", gw))
        runs = {name: Runs(name) for name, _ in gateways}
        for _name, gw in gateways:  # warm: imports, the first connections, the visit cache
            asyncio.run(open_loop(gw.url + page, HTML_HEADERS, args.rate, 1.0))
        for round_no in range(args.rounds):
            for name, gw in gateways:
                runs[name].idle.append(idle_cpu(args.idle, procs, gw.proc))
                spy = None
                if args.pyspy is not None and name == "ours" and round_no == 0:
                    spy = subprocess.Popen(
                        [
                            str(Path(sys.executable).with_name("py-spy")),
                            "record",
                            "-r",
                            "200",
                            "-p",
                            str(gw.proc.pid),
                            "-o",
                            str(args.pyspy),
                            "-f",
                            "flamegraph" if args.pyspy.suffix == ".svg" else "raw",
                            "-d",
                            str(int(args.seconds)),
                            "--nonblocking",
                        ],
                        stdout=subprocess.DEVNULL,
                        stderr=subprocess.DEVNULL,
                    )
                per_doc, kernel, p50, errors = loaded(
                    gw.url + page, args.rate, args.seconds, procs, gw.proc
                )
                if spy is not None:
                    spy.wait(timeout=60)
                runs[name].per_doc.append(per_doc)
                runs[name].kernel.append(kernel)
                runs[name].p50.append(p50)
                runs[name].errors += errors
    print(
        f"\nTagged 20 KB documents at {args.rate:.0f}/s for {args.seconds:.0f} s, "
        f"{args.rounds} interleaved rounds, gateway --workers 1 --dry-run --rules rules/\n"
    )
    print(
        f"{'gateway':<40}{'idle CPU':>10}{'µs/doc':>9}{'less idle':>11}{'kernel':>8}{'p50 ms':>8}"
        f"{'errors':>8}  rounds µs/doc"
    )
    for r in runs.values():
        idle = statistics.median(r.idle)
        doc = statistics.median(r.per_doc)
        print(
            f"{r.name:<40}{idle:>10.1%}{doc:>9,.0f}{doc - idle / args.rate * 1e6:>11,.0f}"
            f"{statistics.median(r.kernel):>8,.0f}"
            f"{statistics.median(r.p50):>8.2f}{r.errors:>8}  "
            + " ".join(f"{v:,.0f}" for v in r.per_doc)
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
