"""What storing, claiming and recording tagged pages' PageViews costs, in-process (not a test).

    python bench/bench_pagestore.py [--batch 75] [--batches 150] [--rounds 3]
                                    [--root DIR ...]

The SQLite outbox alone on a temp file, as `serve` runs it (profiles and insights on, the
PageView's 3 s hold): batches of `--batch` PageViews of new visitors (each its own `_fbp`,
minted by the proxy), built by `pageview.build` with the tree's own event ids, stored with
`Outbox.add`, then claimed and marked sent (dry run), batch after batch, so the file grows as
under wrk. CPU seconds of the whole process (the event loop and the SQLite thread) per
PageView, split into the store (`add`) and the sender's part (claim + mark sent).

`--root DIR` runs the same measurement on another checkout (its .venv), alternating with
this one round by round, so that a busy machine disturbs both alike.
"""

from __future__ import annotations

import argparse
import asyncio
import inspect
import json
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
KEY = bytes(range(32))
UA = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 Chrome/124.0 Safari/537.36"


async def measure(batch: int, batches: int) -> dict[str, float]:
    """CPU µs per PageView of this interpreter's tree: store, and claim + mark sent."""
    from gateway.delivery.insightfacts import InsightPolicy
    from gateway.delivery.outbox import Outbox
    from gateway.delivery.profiles import ProfilePolicy
    from gateway.delivery.seal import Sealer
    from gateway.edge.pagetoken import new_event_id
    from gateway.models import NewEvent
    from gateway.pipeline import pageview
    from gateway.pipeline.events import Context, Target

    ctx = Context(
        targets=[Target("123456789012345", None)],
        default_country=None,
        max_future_skew=300,
        site=None,
        source="proxy",
    )
    # A tree from before `new_visitor` builds the same rows without it.
    fresh = (
        {"new_visitor": True}
        if "new_visitor" in inspect.signature(pageview.build).parameters
        else {}
    )

    def pages() -> list[NewEvent]:
        rows: list[NewEvent] = []
        for _ in range(batch):
            fbp = f"fb.1.{int(time.time() * 1000)}.{random.randrange(10**9, 10**10)}"
            built = pageview.build(
                event_id=new_event_id(),
                url="http://127.0.0.1:8080/products/merino-crew.html",
                referrer=None,
                user_agent=UA,
                client_ip="127.0.0.1",
                fbp=fbp,
                fbc=None,
                consent_fields={},
                ctx=ctx,
                hold=3.0,
                **fresh,
            )
            assert not isinstance(built, list)
            rows += built.rows
        return rows

    with tempfile.TemporaryDirectory(prefix="capigw-pagestore-") as tmp:
        policy = ProfilePolicy.from_key(KEY, ttl=90 * 86400, max_profiles=1_000_000)
        box = await Outbox.open(Path(tmp) / "o.db", Sealer(KEY), group_commit_ms=5, profiles=policy)
        box.insights = InsightPolicy.from_key(KEY, visit_timeout=1800, retention=90 * 86400)
        store = send = 0.0
        try:
            for _ in range(batches):
                rows = pages()
                started = time.process_time()
                await box.add(rows)
                stored = time.process_time()
                # As the sender after the hold: every due row, in one claim.
                got = await box.claim("bench", limit=1000, lease=30, now=time.time() + 10)
                await box.mark_sent([r.id for r in got], "bench", fbtrace_id=None, dry=True)
                send += time.process_time() - stored
                store += stored - started
        finally:
            await box.close()
    count = batch * batches
    return {"store": store / count * 1e6, "send": send / count * 1e6}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=75, help="PageViews per group commit")
    parser.add_argument("--batches", type=int, default=150)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--root", type=Path, action="append", default=[])
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        sys.path.insert(0, str(Path.cwd()))
        print(json.dumps(asyncio.run(measure(args.batch, args.batches))))
        return 0
    roots = [ROOT, *(r.resolve() for r in args.root)]
    results: dict[Path, list[dict[str, float]]] = {r: [] for r in roots}
    for _ in range(args.rounds):
        for root in roots:
            cmd = [str(root / ".venv" / "bin" / "python"), str(Path(__file__).resolve())]
            cmd += ["--child", "--batch", str(args.batch), "--batches", str(args.batches)]
            out = subprocess.run(cmd, cwd=root, check=True, capture_output=True, text=True)
            results[root].append(json.loads(out.stdout.strip().splitlines()[-1]))
    print(f"{'tree':<40}{'store µs':>10}{'claim+sent µs':>15}{'total µs':>10}   rounds (total)")
    for root, runs in results.items():
        store = statistics.median(r["store"] for r in runs)
        send = statistics.median(r["send"] for r in runs)
        each = ", ".join(f"{r['store'] + r['send']:.0f}" for r in runs)
        print(f"{root!s:<40}{store:>10.1f}{send:>15.1f}{store + send:>10.1f}   {each}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
