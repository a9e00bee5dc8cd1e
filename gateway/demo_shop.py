"""A small example shop to put the gateway in front of: `capi-gateway demo` runs it.

Home, product pages with schema.org JSON-LD, a cart in a cookie, a checkout form that
redirects to a thank-you page with the order id and total — gzip on, like a real site.
"""

from __future__ import annotations

import html
import json
import secrets
from dataclasses import dataclass
from decimal import Decimal
from urllib.parse import quote

from aiohttp import web


@dataclass(frozen=True, slots=True)
class Product:
    """One thing the shop sells."""

    sku: str
    name: str
    price: Decimal
    blurb: str


PRODUCTS = (
    Product("tee-01", "Loopback T-shirt", Decimal("19.90"), "Soft cotton, prints 127.0.0.1."),
    Product("mug-02", "Keep-Alive Mug", Decimal("12.50"), "Holds coffee for 15 seconds."),
    Product("cap-03", "Header Cap", Decimal("24.00"), "Never more than 8190 bytes."),
)
CURRENCY = "EUR"
_BY_SKU = {p.sku: p for p in PRODUCTS}


def _page(title: str, body: str, *, head: str = "") -> web.Response:
    doc = f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{html.escape(title)} · Demo Shop</title>
{head}
<style>body{{font-family:system-ui,sans-serif;max-width:42rem;margin:2rem auto;padding:0 1rem}}
nav a{{margin-right:1rem}} .product{{border:1px solid #ddd;padding:1rem;margin:1rem 0}}</style>
</head>
<body>
<nav><a href="/">Home</a><a href="/cart">Cart</a></nav>
<h1>{html.escape(title)}</h1>
{body}
</body>
</html>
"""
    response = web.Response(text=doc, content_type="text/html")
    response.enable_compression()  # gzip/deflate by Accept-Encoding, like most sites
    return response


def _cart(request: web.Request) -> list[str]:
    raw = request.cookies.get("cart", "")
    return [sku for sku in raw.split(".") if sku in _BY_SKU]


async def home(request: web.Request) -> web.StreamResponse:
    """The product list."""
    items = "".join(
        f'<div class="product"><a href="/product/{p.sku}">{html.escape(p.name)}</a> '
        f"— {p.price} {CURRENCY}</div>"
        for p in PRODUCTS
    )
    return _page("Demo Shop", f"<p>Everything here is on loopback.</p>{items}")


async def product(request: web.Request) -> web.StreamResponse:
    """A product page with schema.org Product JSON-LD."""
    item = _BY_SKU.get(request.match_info["sku"])
    if item is None:
        raise web.HTTPNotFound(text="no such product")
    ld = {
        "@context": "https://schema.org",
        "@type": "Product",
        "sku": item.sku,
        "name": item.name,
        "offers": {"@type": "Offer", "price": str(item.price), "priceCurrency": CURRENCY},
    }
    head = f'<script type="application/ld+json">{json.dumps(ld)}</script>'
    body = (
        f"<p>{html.escape(item.blurb)}</p><p><strong>{item.price} {CURRENCY}</strong></p>"
        f'<form method="post" action="/cart/add"><input type="hidden" name="sku" '
        f'value="{item.sku}"><button type="submit" class="add-to-cart" '
        f'data-sku="{item.sku}" data-price="{item.price}">Add to cart</button></form>'
    )
    return _page(item.name, body, head=head)


async def cart_add(request: web.Request) -> web.StreamResponse:
    """Add a product to the cart cookie, then back to the cart."""
    form = await request.post()
    sku = str(form.get("sku", ""))
    if sku not in _BY_SKU:
        raise web.HTTPBadRequest(text="unknown sku")
    response = web.HTTPSeeOther("/cart")
    response.set_cookie("cart", ".".join([*_cart(request), sku]), path="/", samesite="Lax")
    raise response


async def cart(request: web.Request) -> web.StreamResponse:
    """The cart and the checkout form."""
    skus = _cart(request)
    if not skus:
        return _page("Your cart", "<p>Your cart is empty.</p>")
    total = sum((_BY_SKU[s].price for s in skus), Decimal(0))
    lines = "".join(f"<li>{html.escape(_BY_SKU[s].name)} — {_BY_SKU[s].price}</li>" for s in skus)
    form = (
        '<form method="post" action="/checkout" id="checkout">'
        '<label>Email <input type="email" name="email" required></label> '
        '<label>Phone <input type="tel" name="phone"></label> '
        '<button type="submit">Pay now</button></form>'
    )
    return _page("Your cart", f"<ul>{lines}</ul><p>Total: {total} {CURRENCY}</p>{form}")


async def checkout(request: web.Request) -> web.StreamResponse:
    """Take the order and redirect to the thank-you page (a 302, like most shops)."""
    form = await request.post()
    skus = _cart(request)
    if not skus or "@" not in str(form.get("email", "")):
        return _page("Your cart", "<p>Please enter your email.</p>")
    total = sum((_BY_SKU[s].price for s in skus), Decimal(0))
    order = "A" + secrets.token_hex(4).upper()
    response = web.HTTPFound(f"/thank-you?order={order}&total={quote(str(total))}")
    response.del_cookie("cart", path="/")
    raise response


async def thank_you(request: web.Request) -> web.StreamResponse:
    """The order confirmation, with schema.org Order JSON-LD."""
    order = request.query.get("order", "")
    total = request.query.get("total", "0")
    ld = {
        "@context": "https://schema.org",
        "@type": "Order",
        "orderNumber": order,
        "price": total,
        "priceCurrency": CURRENCY,
    }
    head = f'<script type="application/ld+json">{json.dumps(ld)}</script>'
    body = (
        f'<p>Order <strong id="order-id">{html.escape(order)}</strong> is paid: '
        f"{html.escape(total)} {CURRENCY}.</p>"
    )
    return _page("Thank you!", body, head=head)


def shop_app() -> web.Application:
    """The demo shop as an aiohttp application."""
    app = web.Application()
    app.router.add_get("/", home)
    app.router.add_get("/product/{sku}", product)
    app.router.add_post("/cart/add", cart_add)
    app.router.add_get("/cart", cart)
    app.router.add_post("/checkout", checkout)
    app.router.add_get("/thank-you", thank_you)
    return app
