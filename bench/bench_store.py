"""What event assembly and visitor profiles cost at the store, in-process (not a test).

    python bench/bench_store.py [--rounds 4] [--batches 50] [--load worst|mix] [--no-insights]

The outbox alone on a temp file (no HTTP, no pipeline): `Outbox.add` of batches of 100
ready events, then claim + mark sent of all of them, once with assembly off (no profiles,
no hold) and once on (profiles, a 1 s hold), alternating for `--rounds` rounds so that a
busy machine disturbs both alike. CPU seconds of the whole process (the event loop and the
SQLite thread) per event; the table gives the medians and the ratio on/off. Report facts
and touchpoints are recorded with every commit, as `serve` does (`--no-insights`: not).

Loads: `worst` (every event a Purchase with an email and external_id of a new visitor, so
every one writes a profile; one in ten a copy of a recent event with a phone added) and
`mix` (four in five PageViews of 4,096 returning visitors without identifiers, which the
profiles complete at claim; the rest as in `worst`).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import random
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

# `python bench/bench_store.py` puts bench/ on sys.path, not the repository root.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from gateway.delivery.insightfacts import InsightPolicy
from gateway.delivery.outbox import Outbox
from gateway.delivery.profiles import ProfilePolicy
from gateway.delivery.seal import Sealer
from gateway.models import NewEvent

KEY = bytes(range(32))
UA = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 Chrome/156 Safari/537.36"
BATCH = 100


def sha(text: str) -> str:
    """SHA-256 hex, as normalized identifiers are stored."""
    return hashlib.sha256(text.encode()).hexdigest()


class Load:
    """Ready-to-store events of the chosen load."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.recent: list[str] = []

    def event(self, event_id: str, *, copy: bool = False) -> NewEvent:
        """One event: a PageView of a returning visitor (mix) or a Purchase."""
        now = int(time.time())
        if self.kind == "mix" and not copy and random.random() < 0.8:
            fbp = f"fb.1.1700000000000.{int(event_id[:3], 16)}"
            body = {
                "event_name": "PageView",
                "event_time": now,
                "event_id": event_id,
                "action_source": "website",
                "event_source_url": "https://shop.example/p",
            }
            clear = {"client_user_agent": UA, "client_ip_address": "203.0.113.7", "fbp": fbp}
            return NewEvent("123", "PageView", event_id, now, body, clear, "proxy")
        user = {"em": sha(f"jane.{event_id[:8]}@example.com"), "external_id": sha(event_id[:12])}
        if copy:
            user["ph"] = sha("4917012345678")
        visitor = event_id[:3] if self.kind == "mix" else event_id[:8]
        body = {
            "event_name": "Purchase",
            "event_time": now,
            "event_id": event_id,
            "action_source": "website",
            "event_source_url": "https://shop.example/thanks",
            "user_data": user,
            "custom_data": {"value": 19.9, "currency": "EUR", "order_id": f"o-{event_id}"},
        }
        clear = {
            "client_user_agent": UA,
            "client_ip_address": "203.0.113.7",
            "fbp": f"fb.1.1700000000000.{int(visitor, 16)}",
        }
        return NewEvent("123", "Purchase", event_id, now, body, clear, "api")

    def batch(self) -> list[NewEvent]:
        """A batch: nine in ten new events, one in ten a copy of a recent one."""
        out = []
        for _ in range(BATCH):
            if self.recent and random.random() < 0.1:
                out.append(self.event(random.choice(self.recent), copy=True))
                continue
            event_id = uuid.uuid4().hex
            self.recent = [*self.recent[-999:], event_id]
            out.append(self.event(event_id))
        return out


async def one_run(
    on: bool, batches: int, load: Load, *, insights: bool = True
) -> tuple[float, float]:
    """(add, claim + mark sent) CPU µs per event, assembly on or off."""
    with tempfile.TemporaryDirectory(prefix="capigw-store-") as tmp:
        policy = ProfilePolicy.from_key(KEY, ttl=3600, max_profiles=1_000_000) if on else None
        box = await Outbox.open(
            Path(tmp) / "o.db",
            Sealer(KEY),
            durable=False,
            assembly_hold=1.0 if on else 0.0,
            profiles=policy,
        )
        if insights:
            box.insights = InsightPolicy.from_key(KEY, visit_timeout=1800, retention=90 * 86400)
        try:
            data = [load.batch() for _ in range(batches)]
            began = time.process_time()
            for events in data:
                await box.add(events)
            add = time.process_time() - began
            began, claimed = time.process_time(), 0
            for _ in range(10 * batches):  # bounded: far more claims than rows need
                rows = await box.claim("bench", limit=1000, lease=60, now=time.time() + 5)
                if not rows:
                    break
                claimed += len(rows)
                await box.mark_sent([r.id for r in rows], "bench", fbtrace_id=None, dry=True)
            send = time.process_time() - began
        finally:
            await box.close()
    return add / (batches * BATCH) * 1e6, send / max(claimed, 1) * 1e6


async def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=4, help="alternating off/on rounds")
    parser.add_argument("--batches", type=int, default=50, help="batches of 100 per run")
    parser.add_argument("--load", choices=("worst", "mix"), default="worst")
    parser.add_argument(
        "--no-insights", action="store_true", help="record no report facts or touchpoints"
    )
    args = parser.parse_args(argv)
    runs: dict[str, list[tuple[float, float]]] = {"off": [], "on": []}
    for _ in range(max(args.rounds, 1)):
        for mode in runs:
            runs[mode].append(
                await one_run(
                    mode == "on", args.batches, Load(args.load), insights=not args.no_insights
                )
            )
    add = {m: statistics.median(a for a, _ in r) for m, r in runs.items()}
    send = {m: statistics.median(s for _, s in r) for m, r in runs.items()}
    facts = "without" if args.no_insights else "with"
    print(
        f"load {args.load}, {args.rounds} rounds of {args.batches} x {BATCH} events, "
        f"{facts} report facts"
    )
    print(f"{'CPU µs per event (median)':<30}{'off':>10}{'on':>10}{'on/off':>9}")
    for label, figures in (("Outbox.add", add), ("claim + mark sent", send)):
        ratio = figures["on"] / figures["off"]
        print(f"{label:<30}{figures['off']:>10.1f}{figures['on']:>10.1f}{ratio:>8.2f}x")
    total = {m: add[m] + send[m] for m in runs}
    print(
        f"{'store path in all':<30}{total['off']:>10.1f}{total['on']:>10.1f}"
        f"{total['on'] / total['off']:>8.2f}x"
    )
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
