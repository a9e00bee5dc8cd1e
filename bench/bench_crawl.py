"""Catalog crawl and product reading benchmark (not a test).

    python bench/bench_crawl.py [--pages 10000] [--concurrency 8] [--rate 100000]
                                [--reader-rounds 200] [--skip-crawl] [--skip-reader]

Two parts, each printing figures side by side:

1. ProductReader: process CPU µs per page, fed in 16 KiB chunks, for a 20 KiB page without
   products, a 20 KiB JSON-LD product page, a 200 KiB JSON-LD product page and a 200 KiB
   microdata product page; with products_from_page after it, and next to the rules' plain
   HtmlScan (meta + JSON-LD) over the same bytes, the cost the proxy already pays; and a
   200 KiB page whose microdata item spans the whole page (the slow case: see README).
2. crawl(): a loopback shop (its own process) serves `--pages` product pages listed by a
   sitemap index of two sitemaps (one gzip). The crawler runs in a fresh process per size —
   1/10 of `--pages`, then `--pages` — and reports pages/s, crawler CPU ms per page and its
   peak RSS (ru_maxrss), so bounded memory shows as the same peak for 10x the pages.

Loopback only; bounded loops. CPU time (not wall time) is the figure to compare on a shared
machine; pages/s depends on the shop process sharing the cores.
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import json
import multiprocessing
import os
import resource
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from gateway.html.products import ProductReader  # noqa: E402
from gateway.html.scan import HtmlScan, Wants  # noqa: E402
from gateway.pipeline.catalog import products_from_page  # noqa: E402

CHUNK = 16_384
FILLER = (
    '<div class="card"><a href="/c/{n}"><img src="/i/{n}.jpg" alt="Item {n}"></a>'
    '<p class="lead">Lorem ipsum dolor sit amet, consectetur adipiscing elit {n}.</p>'
    '<ul><li>one</li><li>two</li><li data-x="{n}">three</li></ul></div>\n'
)


def _filler(size: int) -> str:
    out, n = [], 0
    while sum(map(len, out)) < size:
        out.append(FILLER.format(n=n))
        n += 1
    return "".join(out)


def _head(extra: str = "") -> str:
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8"><title>Shop</title>'
        '<meta name="viewport" content="width=device-width"><link rel="stylesheet" href="/s.css">'
        '<meta property="og:site_name" content="Shop"><script src="/app.js" defer></script>'
        "<style>body{margin:0}.card{padding:1em}</style>" + extra + "</head><body>"
    )


def product_jsonld(sku: str, price: str = "49.90") -> str:
    doc = {
        "@context": "https://schema.org",
        "@type": "Product",
        "name": f"Product {sku}",
        "description": "A very good product. " * 20,
        "sku": sku,
        "brand": {"@type": "Brand", "name": "Acme"},
        "image": [f"/img/{sku}-{k}.jpg" for k in range(4)],
        "offers": {
            "@type": "Offer",
            "price": price,
            "priceCurrency": "EUR",
            "availability": "https://schema.org/InStock",
        },
    }
    return '<script type="application/ld+json">' + json.dumps(doc) + "</script>"


def product_microdata(sku: str) -> str:
    return (
        '<div itemscope itemtype="https://schema.org/Product">'
        f'<h1 itemprop="name">Product {sku}</h1><img itemprop="image" src="/img/{sku}.jpg">'
        f'<meta itemprop="sku" content="{sku}"><p itemprop="description">Good.</p>'
        '<div itemprop="offers" itemscope itemtype="https://schema.org/Offer">'
        '<meta itemprop="price" content="49.90"><meta itemprop="priceCurrency" content="EUR">'
        '<link itemprop="availability" href="https://schema.org/InStock"></div>'
    )


def pages() -> dict[str, bytes]:
    return {
        "20 KB, no product": (_head() + _filler(20_000) + "</body></html>").encode(),
        "20 KB, JSON-LD product": (
            _head(product_jsonld("A1")) + _filler(18_500) + "</body></html>"
        ).encode(),
        "200 KB, JSON-LD product": (
            _head(product_jsonld("A2")) + _filler(200_000) + "</body></html>"
        ).encode(),
        "200 KB, microdata product": (
            _head() + product_microdata("A3") + "</div>" + _filler(200_000) + "</body></html>"
        ).encode(),
        # Some themes wrap the whole page in the product's itemscope: all of it is parsed.
        "200 KB, microdata item spanning the page": (
            _head() + product_microdata("A4") + _filler(200_000) + "</div></body></html>"
        ).encode(),
    }


def _cpu_us(fn: Any, body: bytes, rounds: int) -> float:
    chunks = [body[i : i + CHUNK] for i in range(0, len(body), CHUNK)]
    fn(chunks)  # warm up (regex compilation, caches)
    start = time.process_time()
    for _ in range(rounds):
        fn(chunks)
    return (time.process_time() - start) / rounds * 1e6


def bench_reader(rounds: int) -> None:
    wants = Wants(meta=frozenset({"og:title", "product:price:amount"}), jsonld=True)

    def reader(chunks: list[bytes]) -> None:
        r = ProductReader()
        for c in chunks:
            r.feed(c)
        r.close()

    def reader_and_items(chunks: list[bytes]) -> None:
        r = ProductReader()
        for c in chunks:
            r.feed(c)
        products_from_page(r.close(), url="/p/x", public_origin="https://shop.example")

    def scan(chunks: list[bytes]) -> None:
        s = HtmlScan(wants)
        for c in chunks:
            s.feed(c)
        s.finish()

    print("\n## ProductReader: process CPU per page (fed in 16 KiB chunks)\n")
    print("| page | rules' HtmlScan µs | ProductReader µs | + products_from_page µs | items |")
    print("|---|---:|---:|---:|---:|")
    for name, body in pages().items():
        r = ProductReader()
        r.feed(body)
        found = products_from_page(r.close(), url="/p/x", public_origin="https://shop.example")
        print(
            f"| {name} | {_cpu_us(scan, body, rounds):,.0f} | {_cpu_us(reader, body, rounds):,.0f}"
            f" | {_cpu_us(reader_and_items, body, rounds):,.0f} | {len(found.items)} |"
        )


# --- the shop -----------------------------------------------------------------------------


def _shop(port: int, n: int, ready: Any) -> None:
    from aiohttp import web

    half = n // 2
    base = f"http://127.0.0.1:{port}"

    def urlset(lo: int, hi: int) -> bytes:
        body = "".join(f"<url><loc>{base}/p/{i}</loc></url>" for i in range(lo, hi))
        return (
            '<?xml version="1.0" encoding="UTF-8"?>'
            f'<urlset xmlns="http://www.sitemaps.org/schemas/sitemap/0.9">{body}</urlset>'
        ).encode()

    files = {
        "/robots.txt": b"User-agent: *\nDisallow: /private/\n",
        "/sitemap.xml": (
            '<?xml version="1.0" encoding="UTF-8"?>'
            '<sitemapindex xmlns="http://www.sitemaps.org/schemas/sitemap/0.9">'
            f"<sitemap><loc>{base}/maps/1.xml</loc></sitemap>"
            f"<sitemap><loc>{base}/maps/2.xml.gz</loc></sitemap></sitemapindex>"
        ).encode(),
        "/maps/1.xml": urlset(0, half),
        "/maps/2.xml.gz": gzip.compress(urlset(half, n)),
    }
    filler = _filler(18_000)

    async def handle(request: web.Request) -> web.Response:
        path = request.path
        if path in files:
            return web.Response(body=files[path], content_type="application/xml")
        if path.startswith("/p/"):
            sku = path[3:]
            body = _head(product_jsonld(f"SKU-{sku}", f"{int(sku) % 97}.90")) + filler
            return web.Response(text=body + "</body></html>", content_type="text/html")
        return web.Response(status=404)

    async def main() -> None:
        app = web.Application()
        app.router.add_get("/{tail:.*}", handle)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        ready.set()
        await asyncio.Event().wait()

    asyncio.run(main())


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def crawl_child(url: str, concurrency: int, rate: float, max_pages: int) -> None:
    """Runs in its own process: crawl, print one JSON line of figures."""
    from gateway.edge.crawl import crawl

    async def main() -> dict[str, Any]:
        count = items = 0
        wall, cpu = time.monotonic(), time.process_time()
        async for page in crawl(
            url,
            public_origin="https://shop.example",
            concurrency=concurrency,
            rate=rate,
            max_pages=max_pages,
        ):
            count += 1
            items += len(page.products.items) if page.products else 0
        return {
            "pages": count,
            "items": items,
            "wall": time.monotonic() - wall,
            "cpu": time.process_time() - cpu,
        }

    out = asyncio.run(main())
    out["maxrss_kib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps(out))


def bench_crawl(n: int, concurrency: int, rate: float) -> None:
    port = _free_port()
    ready = multiprocessing.Event()
    shop = multiprocessing.Process(target=_shop, args=(port, n, ready), daemon=True)
    shop.start()
    try:
        if not ready.wait(30):
            raise SystemExit("the shop did not start")
        print(f"\n## crawl(): {n:,} product pages, concurrency {concurrency}, rate {rate:g}/s\n")
        print("| pages | items | wall s | pages/s | crawler CPU ms/page | peak RSS MiB |")
        print("|---:|---:|---:|---:|---:|---:|")
        for size in (max(1, n // 10), n):
            res = subprocess.run(
                [
                    sys.executable,
                    __file__,
                    "--crawl-child",
                    f"http://127.0.0.1:{port}",
                    "--concurrency",
                    str(concurrency),
                    "--rate",
                    str(rate),
                    "--pages",
                    str(size),
                ],
                capture_output=True,
                text=True,
                check=True,
                timeout=3600,
                env={**os.environ, "PYTHONPATH": str(ROOT)},
            )
            r = json.loads(res.stdout.strip().splitlines()[-1])
            print(
                f"| {r['pages']:,} | {r['items']:,} | {r['wall']:.1f} | "
                f"{r['pages'] / r['wall']:,.0f} | {r['cpu'] / max(1, r['pages']) * 1e3:.2f} | "
                f"{r['maxrss_kib'] / 1024:.0f} |"
            )
    finally:
        shop.terminate()
        shop.join(10)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pages", type=int, default=10_000)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--rate", type=float, default=100_000.0)
    ap.add_argument("--reader-rounds", type=int, default=200)
    ap.add_argument("--skip-crawl", action="store_true")
    ap.add_argument("--skip-reader", action="store_true")
    ap.add_argument("--crawl-child", metavar="URL", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.crawl_child:
        crawl_child(args.crawl_child, args.concurrency, args.rate, args.pages)
        return
    if not args.skip_reader:
        bench_reader(args.reader_rounds)
    if not args.skip_crawl:
        bench_crawl(args.pages, args.concurrency, args.rate)


if __name__ == "__main__":
    main()
