"""A small example site to put the gateway in front of: `capi-gateway demo` runs it.

A shop (product pages with schema.org JSON-LD, search, a cart in a cookie, a checkout
form that redirects to a thank-you page with the order id and total), a contact form, a
booking flow priced in IDR and a signup form — gzip on, like a real site. Forms answer
302 when they succeed and 200 with the errors when they do not, as most sites do. The
example rule files in `rules/` are written against these pages.
"""

from __future__ import annotations

import html
import json
import secrets
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from urllib.parse import quote

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware


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


SHOP_NAME = "Demo Shop"


def _page(title: str, body: str, *, head: str = "") -> web.Response:
    full = title if title == SHOP_NAME else f"{title} · {SHOP_NAME}"
    # An empty icon: no /favicon.ico request, so no 404 in the browser's console.
    doc = f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{html.escape(full)}</title>
<link rel="icon" href="data:,">
{head}
<style>body{{font-family:system-ui,sans-serif;max-width:42rem;margin:2rem auto;padding:0 1rem}}
nav a{{margin-right:1rem}} .product{{border:1px solid #ddd;padding:1rem;margin:1rem 0}}</style>
</head>
<body>
<nav><a href="/">Home</a><a href="/search">Search</a><a href="/cart">Cart</a>
<a href="/contact">Contact</a><a href="/book">Book a fitting</a><a href="/signup">Sign up</a></nav>
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
    return _page(SHOP_NAME, f"<p>Everything here is on loopback.</p>{items}")


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
        "description": item.blurb,
        # Meta's catalog needs an image: the demo's catalog sync reads this page.
        "image": f"/product/{item.sku}/image.svg",
        "offers": {
            "@type": "Offer",
            "price": str(item.price),
            "priceCurrency": CURRENCY,
            "availability": "https://schema.org/InStock",
        },
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
    return _page(
        "Your cart",
        f'<ul>{lines}</ul><p>Total: {total} {CURRENCY}</p><a href="/checkout">Checkout</a>',
    )


def _checkout_form(skus: list[str], error: str = "") -> web.Response:
    total = sum((_BY_SKU[s].price for s in skus), Decimal(0))
    form = (f'<p class="error">{html.escape(error)}</p>' if error else "") + (
        f'<form method="post" action="/checkout" id="checkout" data-total="{total}" '
        f'data-items="{len(skus)}" data-currency="{CURRENCY}">'
        '<label>Email <input type="email" name="email" required></label> '
        '<label>Phone <input type="tel" name="phone"></label> '
        '<button type="submit">Pay now</button></form>'
    )
    return _page("Checkout", f"<p>{len(skus)} item(s), {total} {CURRENCY}.</p>{form}")


async def checkout_page(request: web.Request) -> web.StreamResponse:
    """The checkout form (or back to the cart when it is empty)."""
    skus = _cart(request)
    if not skus:
        raise web.HTTPSeeOther("/cart")
    return _checkout_form(skus)


async def checkout(request: web.Request) -> web.StreamResponse:
    """Take the order and redirect to the thank-you page (a 302, like most shops)."""
    form = await request.post()
    skus = _cart(request)
    if not skus:
        raise web.HTTPSeeOther("/cart")
    if "@" not in str(form.get("email", "")):
        return _checkout_form(skus, "Please enter your email.")
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


async def search(request: web.Request) -> web.StreamResponse:
    """Products whose name contains `q`."""
    q = request.query.get("q", "").strip()
    found = [p for p in PRODUCTS if q and q.lower() in p.name.lower()]
    items = "".join(f'<li><a href="/product/{p.sku}">{html.escape(p.name)}</a></li>' for p in found)
    form = (
        f'<form action="/search"><input name="q" value="{html.escape(q)}">'
        "<button>Search</button></form>"
    )
    return _page("Search", form + (f"<ul>{items}</ul>" if q else ""))


def _form_page(title: str, action: str, fields: str, error: str = "") -> web.Response:
    note = f'<p class="error">{html.escape(error)}</p>' if error else ""
    body = f'{note}<form method="post" action="{action}">{fields}<button>Send</button></form>'
    return _page(title, body)


_CONTACT_FIELDS = (
    '<label>Name <input name="name"></label> '
    '<label>Email <input type="email" name="email"></label> '
    '<label>Phone <input type="tel" name="phone"></label> '
    '<label>Message <textarea name="message"></textarea></label>'
)


async def contact(request: web.Request) -> web.StreamResponse:
    """A lead form: 302 to a thank-you page when valid, the form with errors otherwise."""
    if request.method == "POST":
        form = await request.post()
        if "@" in str(form.get("email", "")):
            raise web.HTTPFound("/contact/thanks")
        return _form_page("Contact us", "/contact", _CONTACT_FIELDS, "Please enter your email.")
    return _form_page("Contact us", "/contact", _CONTACT_FIELDS)


async def contact_thanks(request: web.Request) -> web.StreamResponse:
    """Where a valid contact form lands."""
    return _page("Thanks!", "<p>We will get back to you within a day.</p>")


# Fittings are priced in Indonesian rupiah, written the Indonesian way (dots group thousands).
SERVICES = {"fitting": "350.000", "tailoring": "1.250.000"}


async def book(request: web.Request) -> web.StreamResponse:
    """A booking form (service, date, contact) → 302 to the confirmation page."""
    options = "".join(f'<option value="{k}">{k} — Rp {v}</option>' for k, v in SERVICES.items())
    fields = (
        f'<label>Service <select name="service">{options}</select></label> '
        '<label>Date <input type="date" name="date"></label> '
        '<label>Email <input type="email" name="email"></label> '
        '<label>Phone <input type="tel" name="phone"></label>'
    )
    if request.method == "POST":
        form = await request.post()
        service = str(form.get("service", ""))
        if service in SERVICES and "@" in str(form.get("email", "")) and form.get("date"):
            booking = "B" + secrets.token_hex(3).upper()
            raise web.HTTPFound(
                f"/book/confirmed?booking={booking}&service={service}"
                f"&amount={quote(SERVICES[service])}"
            )
        return _form_page("Book a fitting", "/book", fields, "Choose a service, a date and email.")
    return _form_page("Book a fitting", "/book", fields)


async def book_confirmed(request: web.Request) -> web.StreamResponse:
    """The booking confirmation, its price in a data attribute."""
    booking = html.escape(request.query.get("booking", ""))
    amount = html.escape(request.query.get("amount", "0"))
    body = (
        f'<p id="booking" data-booking="{booking}" data-amount="{amount}" data-currency="IDR">'
        f"Booking {booking} confirmed: Rp {amount}.</p>"
    )
    return _page("Booking confirmed", body)


_SIGNUP_FIELDS = (
    '<label>Email <input type="email" name="email"></label> '
    '<label>Password <input type="password" name="password"></label>'
)


async def signup(request: web.Request) -> web.StreamResponse:
    """Registration: 302 to /welcome when valid, the form again (200) with errors otherwise."""
    if request.method == "POST":
        form = await request.post()
        if "@" in str(form.get("email", "")) and len(str(form.get("password", ""))) >= 8:
            raise web.HTTPFound("/welcome")
        return _form_page(
            "Sign up", "/signup", _SIGNUP_FIELDS, "Use an email and 8+ character password."
        )
    return _form_page("Sign up", "/signup", _SIGNUP_FIELDS)


async def welcome(request: web.Request) -> web.StreamResponse:
    """Where a new account lands."""
    return _page("Welcome!", "<p>Your account is ready.</p>")


async def favicon(request: web.Request) -> web.StreamResponse:
    """No icon, said without an error (pages that ask anyway, like the dashboard's)."""
    return web.Response(status=204, headers={"Cache-Control": "max-age=86400"})


# Meta's pixel base code as sites paste it (capi-reference §7), loading the local stand-in.
_BASE_CODE = (
    "!function(f,b,e,v,n,t,s){{if(f.fbq)return;n=f.fbq=function(){{n.callMethod?"
    "n.callMethod.apply(n,arguments):n.queue.push(arguments)}};if(!f._fbq)f._fbq=n;"
    "n.push=n;n.loaded=!0;n.version='2.0';n.queue=[];t=b.createElement(e);t.async=!0;"
    "t.src=v;s=b.getElementsByTagName(e)[0];s.parentNode.insertBefore(t,s)}}(window,"
    "document,'script','/fbevents.js');\nfbq('init', '{pixel}');\nfbq('track', 'PageView');"
)
_FBEVENTS = Path(__file__).resolve().parent / "static" / "demo" / "fbevents.js"


def _with_pixel(pixel_id: str) -> Middleware:
    head = f"<script>\n{_BASE_CODE.format(pixel=pixel_id)}\n</script>\n</head>"

    @web.middleware
    async def add_pixel(request: web.Request, handler: Handler) -> web.StreamResponse:
        response = await handler(request)
        if isinstance(response, web.Response) and response.content_type == "text/html":
            response.text = (response.text or "").replace("</head>", head, 1)
        return response

    return add_pixel


async def fbevents(request: web.Request) -> web.StreamResponse:
    """The stand-in for Meta's fbevents.js (gateway/static/demo/fbevents.js)."""
    return web.Response(
        body=_FBEVENTS.read_bytes(),
        content_type="application/javascript",
        headers={"Cache-Control": "no-cache"},
    )


def shop_app(pixel_id: str | None = None) -> web.Application:
    """The demo site as an aiohttp application; with `pixel_id`, its pages carry a Meta
    pixel (base code and a local fbevents.js stand-in: no network)."""
    app = web.Application(middlewares=[_with_pixel(pixel_id)] if pixel_id else [])
    if pixel_id:
        app.router.add_get("/fbevents.js", fbevents)
    app.router.add_get("/", home)
    app.router.add_get("/favicon.ico", favicon)
    app.router.add_get("/product/{sku}", product)
    app.router.add_get("/search", search)
    app.router.add_post("/cart/add", cart_add)
    app.router.add_get("/cart", cart)
    app.router.add_get("/checkout", checkout_page)
    app.router.add_post("/checkout", checkout)
    app.router.add_get("/thank-you", thank_you)
    app.router.add_route("*", "/contact", contact)
    app.router.add_get("/contact/thanks", contact_thanks)
    app.router.add_route("*", "/book", book)
    app.router.add_get("/book/confirmed", book_confirmed)
    app.router.add_route("*", "/signup", signup)
    app.router.add_get("/welcome", welcome)
    return app
