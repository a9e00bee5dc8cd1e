"""A loopback shop with product pages for the catalog tests and benchmarks.

    async with start_shop(products=3) as shop:
        shop.products["/p/1"].price = "7.90"       # the next view shows the new price
        shop.status["/p/2"] = 410                  # the page is gone
        ...  # point the gateway's `upstream` at shop.url

Product pages carry schema.org Product JSON-LD with an Offer (`/p/<n>`, sku `SKU-<n>`);
`/robots.txt` allows everything but `/private/`; `/sitemap.xml` lists every product page on
the shop's own URL. `status[path]` answers a status instead (503, 404, 410...), `delay[path]`
holds the answer for that many seconds, `gzip = True` compresses pages.

As a separate process (the benchmarks)::

    python -m tests.fakes.shop --port 0 --products 10000

prints ``listening on http://127.0.0.1:N`` and serves until SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gzip as gzip_codec
import html
import json
import signal
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from aiohttp import web
from aiohttp.test_utils import TestServer


@dataclass
class Product:
    """One product as its page shows it."""

    sku: str
    name: str
    price: str = "19.90"
    currency: str = "EUR"
    availability: str = "InStock"
    sale_price: str | None = None

    def json_ld(self, link: str) -> str:
        """The page's schema.org Product."""
        offer: dict[str, object] = {
            "@type": "Offer",
            "price": self.sale_price or self.price,
            "priceCurrency": self.currency,
            "availability": f"https://schema.org/{self.availability}",
            "url": link,
        }
        if self.sale_price:
            offer["priceSpecification"] = {
                "@type": "UnitPriceSpecification",
                "priceType": "https://schema.org/StrikethroughPrice",
                "price": self.price,
                "priceCurrency": self.currency,
            }
        return json.dumps(
            {
                "@context": "https://schema.org",
                "@type": "Product",
                "name": self.name,
                "description": f"{self.name}, made to last.",
                "sku": self.sku,
                "image": f"/img/{self.sku}.jpg",
                "brand": {"@type": "Brand", "name": "Acme"},
                "offers": offer,
            }
        )


def product_page(product: Product | None, *, path: str, filler: int = 6000) -> str:
    """A product page of a typical size (or a page without a product when None)."""
    ld = (
        f'<script type="application/ld+json">{product.json_ld(path)}</script>'
        if product is not None
        else ""
    )
    title = html.escape(product.name if product else "About us")
    return (
        f"<!doctype html><html><head><meta charset=utf-8><title>{title}</title>{ld}</head>"
        f"<body><h1>{title}</h1><p>{'Lorem ipsum dolor sit amet. ' * (filler // 28)}</p>"
        "</body></html>"
    )


@dataclass
class Shop:
    """The shop's state; tests change it between requests."""

    products: dict[str, Product | None] = field(default_factory=dict)
    status: dict[str, int] = field(default_factory=dict)
    delay: dict[str, float] = field(default_factory=dict)
    gzip: bool = False
    url: str = ""
    # Pages served as they are (text/html), ahead of `products`: real shops' markup.
    raw: dict[str, bytes] = field(default_factory=dict)
    hits: dict[str, int] = field(default_factory=dict)

    def add(self, n: int) -> None:
        """Add products 1..n at /p/1 ... /p/n."""
        for i in range(1, n + 1):
            self.products[f"/p/{i}"] = Product(f"SKU-{i}", f"Thing {i}")

    def app(self) -> web.Application:
        """The aiohttp application."""
        app = web.Application()
        app.router.add_get("/robots.txt", self._robots)
        app.router.add_get("/sitemap.xml", self._sitemap)
        app.router.add_get("/{tail:.*}", self._page)
        return app

    async def _robots(self, request: web.Request) -> web.Response:
        return web.Response(text="User-agent: *\nDisallow: /private/\n")

    async def _sitemap(self, request: web.Request) -> web.Response:
        urls = "".join(f"<url><loc>{self.url}{p}</loc></url>" for p in self.products)
        body = (
            '<?xml version="1.0" encoding="UTF-8"?>'
            f'<urlset xmlns="http://www.sitemaps.org/schemas/sitemap/0.9">{urls}</urlset>'
        )
        return web.Response(text=body, content_type="application/xml")

    async def _page(self, request: web.Request) -> web.Response:
        path = request.path
        self.hits[path] = self.hits.get(path, 0) + 1
        if path in self.delay:
            await asyncio.sleep(self.delay[path])
        if path in self.status:
            return web.Response(status=self.status[path], text="not available")
        if path in self.raw:
            body = self.raw[path]
        elif path in self.products:
            body = product_page(self.products[path], path=path).encode()
        else:
            return web.Response(status=404, text="no such page")
        headers = {"Content-Type": "text/html; charset=utf-8"}
        if self.gzip:
            body = gzip_codec.compress(body)
            headers["Content-Encoding"] = "gzip"
        return web.Response(body=body, headers=headers)


@contextlib.asynccontextmanager
async def start_shop(products: int = 0, port: int = 0) -> AsyncIterator[Shop]:
    """Serve a shop with `products` product pages on 127.0.0.1 until the block ends."""
    shop = Shop()
    shop.add(products)
    server = TestServer(shop.app(), host="127.0.0.1", port=port)
    await server.start_server()
    shop.url = str(server.make_url("")).rstrip("/")
    try:
        yield shop
    finally:
        await server.close()


async def _serve(port: int, products: int) -> None:
    async with start_shop(products, port) as shop:
        print(f"listening on {shop.url}", flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--products", type=int, default=100)
    args = parser.parse_args()
    asyncio.run(_serve(args.port, args.products))
