"""Rules benchmark: proxy requests/s on the HTML page with 0, 10 and 200 rules (not a test).

    python bench/bench_rules.py [--seconds 5] [--rounds 3] [--concurrency 32] [--json PATH]

The origin is the nginx of bench/bench_proxy.py serving its 20 KiB product page (schema.org
Product JSON-LD, a form, reviews); the gateway is `capi-gateway serve --upstream <origin>
--dry-run --workers 2`, as shipped otherwise (the page is tagged, its PageView stored), with:

- `0 rules`: no `--rules`;
- `10 rules`: one ViewContent rule that matches the page and reads its JSON-LD (so every
  page is scanned and stores a ViewContent), plus 9 realistic rules that do not match it;
- `200 rules`: the same matching rule plus 199 that do not match, spread over ~90 paths
  (thank-you pages, forms answered 302, searches, other catalogues, click and submit
  triggers on other pages, and eight under the page's own `/products/` prefix that the
  index cannot rule out: other methods, sub-paths, JSON responses);
- `200 rules, none match`: the 199 plus one more that does not match, to separate the cost
  of matching 200 rules from the cost of the one event the page makes.

Each variant runs in turn on a fresh buffer, `--rounds` times interleaved (0, 10, 200,
200-none, 0, 10, ...) so that drift on a shared machine hits them alike; wrk (closed loop,
browser headers) measures requests/s, psutil the gateway's CPU. The ratio of each variant's
median requests/s to `0 rules` is printed beside the issue's target: 200 rules must cost less
than 20 % of throughput. nginx and wrk come from bench/install-nginx.sh.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import sqlite3
import statistics
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

# `python bench/bench_rules.py` puts bench/ on sys.path: bench_proxy (and through it the
# repository root) is importable from here.
import bench_proxy as bp

from gateway.pipeline.ruleload import load_rules

TARGET_COST = 0.20  # 200 rules may cost at most 20 % of the requests/s of 0 rules
PAGE = bp.FILES[0]  # the 20 KiB HTML product page
assert PAGE.key == "html"

MATCHING_RULE = """
[[rule]]
# The one rule that matches the benchmark's page: a product view from its JSON-LD.
name = "view-product"
event = "ViewContent"
method = "GET"
path = "/products/{handle}"
status = 200
response_type = "text/html"
require = ["content_ids"]

[rule.extract]
content_ids = { source = "jsonld", key = "Product.sku" }
content_type = "product"
content_name = { source = "jsonld", key = "Product.name" }
value = { source = "jsonld", key = "Product.offers.price" }
currency = { source = "jsonld", key = "Product.offers.priceCurrency" }
"""

# Rules a real site has that do not match a GET of /products/<handle>.html; `{i}` spreads
# them over many paths. Four templates use `{prefix}`: the page's own `/products` for the
# first rules made from them (the index cannot rule those out: the rule is tested), another
# shop section for the rest.
TEMPLATES = (
    """
[[rule]]
name = "review-{i}"
event = "SubmitApplication"
method = "POST"
path = "/{prefix}/{{handle}}/reviews"
status = "3xx"
form = {{ rating = true }}
extract.email = {{ source = "form", key = "email" }}
""",
    """
[[rule]]
name = "product-json-{i}"
event = "ViewContent"
method = "GET"
path = "/{prefix}/{{handle}}.json"
response_type = "application/json"
extract.content_ids = {{ source = "path", key = "handle" }}
""",
    """
[[rule]]
name = "size-guide-{i}"
event = "ViewContent"
path = "/{prefix}/{{handle}}/size-guide-{i}"
extract.content_name = {{ source = "meta", key = "og:title" }}
""",
    """
[[rule]]
name = "notify-{i}"
event = "Subscribe"
trigger = "submit"
selector = "form.notify-{i}"
path = "/collections-{i}/*"
extract.email = {{ source = "field", key = "email" }}
""",
    """
[[rule]]
name = "wishlist-{i}"
event = "AddToWishlist"
method = "POST"
path = "/{prefix}/{{handle}}/wishlist"
extract.content_ids = {{ source = "path", key = "handle" }}
""",
    """
[[rule]]
name = "purchase-{i}"
event = "Purchase"
method = "GET"
path = "/checkout-{i}/thank-you"
query = {{ order = true }}
event_id = "purchase-{{order_id}}"
require = ["order_id"]
extract.order_id = {{ source = "query", key = "order" }}
extract.value = {{ source = "query", key = "total", type = "number" }}
extract.currency = "EUR"
""",
    """
[[rule]]
name = "lead-{i}"
event = "Lead"
method = "POST"
path = "/forms/{i}/submit"
status = [301, 302, 303]
form = {{ email = {{ regex = "@" }} }}
extract.email = {{ source = "form", key = "email" }}
extract.phone = {{ source = "form", key = "phone" }}
""",
    """
[[rule]]
name = "search-{i}"
event = "Search"
method = "GET"
path = "/search-{i}"
query = {{ q = {{ regex = "\\\\S" }} }}
extract.search_string = {{ source = "query", key = "q" }}
""",
    """
[[rule]]
name = "catalogue-{i}"
event = "ViewContent"
path = "/catalogue-{i}/{{sku}}"
status = 200
extract.content_ids = {{ source = "path", key = "sku" }}
extract.value = {{ source = "jsonld", key = "Product.offers.price" }}
""",
    """
[[rule]]
name = "signup-{i}"
event = "CompleteRegistration"
method = "POST"
path = "/account-{i}/register"
status = "300-399"
extract.email = {{ source = "form", key = "email", lower = true }}
""",
    """
[[rule]]
name = "booking-{i}"
event = "Schedule"
path = "/book-{i}/confirmed"
query = {{ booking = true }}
event_id = "schedule-{{order_id}}"
extract.order_id = {{ source = "query", key = "booking" }}
""",
    """
[[rule]]
name = "cta-{i}"
event = "Contact"
trigger = "click"
selector = "a.call-{i}"
path = "/pages/contact-{i}"
""",
    """
[[rule]]
name = "api-order-{i}"
event = "Purchase"
method = "POST"
path = "/api/v{i}/orders"
content_type = "application/json"
json = {{ status = "paid" }}
extract.order_id = {{ source = "json", key = "id" }}
extract.value = {{ source = "json", key = "total_cents", divide = 100 }}
extract.currency = {{ source = "json", key = "currency", upper = true }}
""",
)


def rule_file(matching: bool, others: int) -> str:
    """The text of one rule file: the matching rule (or not) and `others` that do not match."""
    parts = [MATCHING_RULE] if matching else []
    parts += [
        TEMPLATES[i % len(TEMPLATES)].format(
            i=i, prefix="products" if i < 2 * len(TEMPLATES) else f"shop-{i % 40}"
        )
        for i in range(others)
    ]
    return "".join(parts)


@dataclass(frozen=True)
class Variant:
    key: str
    label: str
    matching: bool
    others: int

    @property
    def rules(self) -> int:
        return self.others + self.matching


VARIANTS = (
    Variant("rules-0", "0 rules", False, 0),
    Variant("rules-10", "10 rules (1 matches)", True, 9),
    Variant("rules-200", "200 rules (1 matches)", True, 199),
    Variant("rules-200-none", "200 rules, none match", False, 200),
)


@dataclass
class Run:
    """One wrk run of one variant."""

    rps: float
    p50: float
    p99: float
    errors: int
    gw_us: float  # gateway CPU per request, µs
    pages: int  # pages answered (wrk and warm-up)
    stored: dict[str, int]  # outbox rows by event name


@dataclass
class Result:
    variant: Variant
    runs: list[Run] = field(default_factory=list)

    def median(self, name: str) -> float:
        return float(statistics.median(getattr(r, name) for r in self.runs))


def write_rules(workdir: Path, v: Variant) -> Path | None:
    """The variant's rules directory, checked with the gateway's own loader."""
    if v.rules == 0:
        return None
    directory = workdir / v.key
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "rules.toml").write_text(rule_file(v.matching, v.others))
    loaded = load_rules(directory)
    assert len(loaded.rules) == v.rules, (v.key, len(loaded.rules))
    return directory


def check_page(url: str) -> None:
    """The page through the gateway: 200 and tagged."""

    async def fetch() -> None:
        async with (
            aiohttp.ClientSession(auto_decompress=False) as session,
            session.get(url + PAGE.path, headers=PAGE.headers) as resp,
        ):
            body = await resp.read()
            if resp.status != 200 or b"data-event-id=" not in body:
                raise AssertionError(f"{url}{PAGE.path}: HTTP {resp.status}, or not tagged")

    asyncio.run(fetch())


def stored_events(buffer: Path) -> dict[str, int]:
    """Rows of the outbox by event name (read after the gateway stopped)."""
    with contextlib.closing(sqlite3.connect(buffer)) as conn:
        rows = conn.execute("SELECT event_name, count(*) FROM events GROUP BY event_name")
        return {str(name): int(n) for name, n in rows}


def measure(
    v: Variant, round_no: int, args: argparse.Namespace, workdir: Path, origin: str, wrk: str,
    procs: bp.Procs,
) -> Run:  # fmt: skip
    rules = write_rules(workdir, v)
    extra = {"CAPIGW_RULES": str(rules)} if rules is not None else {}
    name = f"{v.key}-r{round_no}"
    gw = bp.start_bench_gateway(workdir, name, origin, procs, extra, workers=args.workers)
    try:
        check_page(gw.url)
        family = procs.family(gw.proc)
        pages = 1
        if args.warmup > 0:
            pages += bp.run_wrk(wrk, gw.url + PAGE.path, PAGE.headers, args, args.warmup).requests
        cpu0 = bp.cpu_seconds(family)
        result = bp.run_wrk(wrk, gw.url + PAGE.path, PAGE.headers, args, args.seconds)
        cpu = bp.cpu_seconds(family) - cpu0
        pages += result.requests
    finally:
        procs.stop(gw.proc, grace=30)
    return Run(
        rps=result.rps,
        p50=result.p50,
        p99=result.p99,
        errors=result.errors,
        gw_us=cpu / max(result.requests, 1) * 1e6,
        pages=pages,
        stored=stored_events(workdir / f"{name}.db"),
    )


def benchmark(args: argparse.Namespace, workdir: Path, nginx: str, wrk: str) -> list[Result]:
    bp.write_site(workdir / "www")
    results = [Result(v) for v in VARIANTS]
    with bp.processes() as procs:
        nginx_proc, origin, _ = bp.start_nginx(nginx, workdir, procs, workers=args.workers)
        print(f"nginx origin {origin}; gateway --workers {args.workers}; page {PAGE.path}")
        for round_no in range(1, args.rounds + 1):
            for result in results:
                v = result.variant
                print(f"round {round_no}: {v.label}, wrk {args.concurrency} conn, {args.seconds} s")
                run = measure(v, round_no, args, workdir, origin, wrk, procs)
                result.runs.append(run)
                views = run.stored.get("ViewContent", 0)
                print(
                    f"  {run.rps:,.0f} req/s, gateway {run.gw_us:.0f} µs/request, "
                    f"ViewContent stored {views} for {run.pages} pages"
                )
        procs.stop(nginx_proc, grace=10)
    return results


def report(results: list[Result], args: argparse.Namespace) -> dict[str, Any]:
    base = results[0].median("rps")
    rounds = {r.variant.key: " / ".join(f"{run.rps:,.0f}" for run in r.runs) for r in results}
    wide = max(20, *(len(text) for text in rounds.values()))
    head = (
        f"{'rules':<24} {'req/s (each round)':<{wide}} {'median':>8} {'x 0 rules':>9} "
        f"{'p50 ms':>7} {'p99 ms':>7} {'gw µs/req':>9} {'err':>4}"
    )
    print()
    print(
        f"{PAGE.label} page through the gateway (--workers {args.workers}, tagged, PageView "
        f"stored), wrk {args.concurrency} connections, {args.seconds} s, {args.rounds} round(s)"
    )
    print(head)
    print("-" * len(head))
    rows = []
    for r in results:
        rps = r.median("rps")
        print(
            f"{r.variant.label:<24} {rounds[r.variant.key]:<{wide}} {rps:>8,.0f} "
            f"{rps / base:>8.2f}x "
            f"{r.median('p50'):>7.2f} {r.median('p99'):>7.2f} {r.median('gw_us'):>9.0f} "
            f"{sum(run.errors for run in r.runs):>4}"
        )
        rows.append(
            {
                "variant": r.variant.key,
                "rules": r.variant.rules,
                "matching": r.variant.matching,
                "rps": [round(run.rps, 1) for run in r.runs],
                "rps_median": round(rps, 1),
                "ratio_to_0": round(rps / base, 3),
                "p50_ms": r.median("p50"),
                "p99_ms": r.median("p99"),
                "gateway_us_per_request": round(r.median("gw_us"), 1),
                "errors": sum(run.errors for run in r.runs),
                "stored": [run.stored for run in r.runs],
                "pages": [run.pages for run in r.runs],
            }
        )
    by_key = {r.variant.key: r.median("rps") for r in results}
    cpu = {r.variant.key: r.median("gw_us") for r in results}
    cost = 1 - by_key["rules-200"] / base
    cpu_cost = 1 - cpu["rules-0"] / cpu["rules-200"]  # throughput lost if CPU-bound
    print()
    print(
        f"200 rules cost {cost:.1%} of the requests/s of 0 rules "
        f"(target < {TARGET_COST:.0%}): {'met' if cost < TARGET_COST else 'NOT met'}; "
        f"by gateway CPU per request: {cpu_cost:.1%}"
    )
    for key, label, ref in (
        ("rules-200-none", "200 rules that do not match, vs 0 rules", "rules-0"),
        ("rules-200", "190 more rules (200 vs 10, one matching in both)", "rules-10"),
        ("rules-10", "one JSON-LD rule matching every page (10 vs 0)", "rules-0"),
    ):
        print(
            f"  {label}: req/s {by_key[key] / by_key[ref] - 1:+.1%}, "
            f"CPU/request {cpu[key] / cpu[ref] - 1:+.1%} ({cpu[key] - cpu[ref]:+.0f} µs)"
        )
    return {
        "results": rows,
        "cost_200_rps": round(cost, 4),
        "cost_200_cpu": round(cpu_cost, 4),
        "target": TARGET_COST,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=int, default=5, help="length of each wrk run")
    parser.add_argument("--rounds", type=int, default=3, help="times each variant is measured")
    parser.add_argument("--concurrency", type=int, default=32, help="wrk connections")
    parser.add_argument("--threads", type=int, default=2, help="wrk threads")
    parser.add_argument("--warmup", type=int, default=1, help="unmeasured wrk run before each")
    parser.add_argument("--workers", type=int, default=2, help="gateway (and nginx) workers")
    parser.add_argument("--json", type=Path, help="also write the results to this JSON file")
    parser.add_argument("--workdir", type=Path, help="keep rules, buffers and logs here")
    args = parser.parse_args(argv)
    if min(args.seconds, args.rounds, args.concurrency, args.threads, args.workers) < 1:
        parser.error("--seconds, --rounds, --concurrency, --threads and --workers must be >= 1")
    nginx, wrk = bp.ensure_tools()
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]

    def interrupted(_signum: int, _frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, interrupted)
    try:
        if args.workdir is not None:
            args.workdir.mkdir(parents=True, exist_ok=True)
            results = benchmark(args, args.workdir.resolve(), nginx, wrk)
        else:
            with tempfile.TemporaryDirectory(prefix="capigw-rules-") as tmp:
                results = benchmark(args, Path(tmp), nginx, wrk)
    except AssertionError as exc:
        raise SystemExit(str(exc)) from None
    except KeyboardInterrupt:
        print("\ninterrupted: nginx and the gateway are stopped", file=sys.stderr)
        return 130
    document = report(results, args)
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        document["args"] = {k: v for k, v in vars(args).items() if k not in {"json", "workdir"}}
        args.json.write_text(json.dumps(document, indent=2) + "\n")
        print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
