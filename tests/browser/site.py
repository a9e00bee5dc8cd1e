"""The website the browser tests put the gateway in front of, with a local stand-in for fbevents.js.

Its pages carry Meta's pixel base code as sites paste it (capi-reference §7), except that the
script URL is this site's own ``/fbevents.js``: the tests have no internet. The stand-in does
what the real library does with the stub -- takes ``window.fbq``, sets ``fbq.callMethod``,
replays ``fbq.queue`` through it -- and records every call it gets in ``window.__fbqCalls``
and, by ``sendBeacon`` to ``POST /__record`` (which survives a navigation), in
``Site.calls`` where a test reads it server-side.

Pages: ``/`` (PageView), ``/product`` (a button firing AddToCart), ``/early`` (AddToCart queued
before fbevents.js loads), ``/buy`` (Purchase in a click handler that navigates to ``/thanks``),
``/nopixel`` (no Meta pixel; a button calling ``window.capi.track('Lead', ...)``), ``/landing``
(strips its query with ``replaceState`` before the pixel runs, as many sites do), ``/thanks`` and
``/csp`` (``script-src 'self'``, no inline script: the base code is ``/pixel-base.js``).
"""

from __future__ import annotations

import contextlib
import html
import json
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

PIXEL = "123456789012345"

# What the stand-in records per call: method, event, params, eventID, pixel and whether the
# call came from the stub's queue (made before the library loaded) or directly.
FBEVENTS_JS = r"""
(function (w) {
  "use strict";
  var fbq = w.fbq;
  if (!fbq || fbq.__standIn) return;
  fbq.__standIn = true;
  var calls = w.__fbqCalls = w.__fbqCalls || [];
  var pixels = [];
  var replaying = true;
  function plain(value) {
    try { return JSON.parse(JSON.stringify(value === undefined ? null : value)); }
    catch (e) { return String(value); }
  }
  function record(args) {
    var a = Array.prototype.slice.call(args);
    var rec = { method: a[0], via: replaying ? "queue" : "call", page: w.location.pathname };
    if (a[0] === "init") {
      pixels.push(String(a[1]));
      rec.pixel = String(a[1]);
    } else if (a[0] === "track" || a[0] === "trackCustom") {
      rec.event = a[1];
      rec.params = plain(a[2]);
      rec.eventID = a[3] && a[3].eventID ? String(a[3].eventID) : null;
      rec.pixel = pixels.join(",");
    } else if (a[0] === "trackSingle" || a[0] === "trackSingleCustom") {
      rec.pixel = String(a[1]);
      rec.event = a[2];
      rec.params = plain(a[3]);
      rec.eventID = a[4] && a[4].eventID ? String(a[4].eventID) : null;
    } else {
      rec.args = plain(a.slice(1));
    }
    calls.push(rec);
    var body = JSON.stringify(rec);
    if (!(navigator.sendBeacon && navigator.sendBeacon("/__record", body))) {
      w.fetch("/__record", { method: "POST", body: body, keepalive: true });
    }
  }
  fbq.callMethod = function () { record(arguments); };
  var queue = fbq.queue || [];
  for (var i = 0; i < queue.length; i++) fbq.callMethod.apply(fbq, queue[i]);
  fbq.queue = [];
  replaying = false;
})(window);
"""

# Meta's base code as published, with the library URL made local.
BASE_CODE = (
    "!function(f,b,e,v,n,t,s){if(f.fbq)return;n=f.fbq=function(){n.callMethod?"
    "n.callMethod.apply(n,arguments):n.queue.push(arguments)};if(!f._fbq)f._fbq=n;"
    "n.push=n;n.loaded=!0;n.version='2.0';n.queue=[];t=b.createElement(e);t.async=!0;"
    "t.src=v;s=b.getElementsByTagName(e)[0];s.parentNode.insertBefore(t,s)}(window,"
    " document,'script','/fbevents.js');\n"
    f"fbq('init', '{PIXEL}');\n"
    "fbq('track', 'PageView');\n"
)
NOSCRIPT = (
    '<noscript><img height="1" width="1" style="display:none" '
    f'src="https://www.facebook.com/tr?id={PIXEL}&ev=PageView&noscript=1"/></noscript>'
)
PIXEL_HEAD = f"<script>\n{BASE_CODE}</script>\n{NOSCRIPT}\n"


def document(title: str, body: str, *, head: str = PIXEL_HEAD) -> str:
    """An HTML page with `head` (the pixel by default) at the end of its <head>."""
    return (
        "<!doctype html>\n<html lang=en>\n<head>\n<meta charset=utf-8>\n"
        f"<title>{html.escape(title)}</title>\n{head}</head>\n<body>\n"
        f"<h1>{html.escape(title)}</h1>\n{body}\n</body>\n</html>\n"
    )


PAGES: dict[str, str] = {
    "/": document("Home", '<p><a href="/product">A product</a></p>'),
    "/product": document(
        "Product",
        '<button id="add">Add to cart</button>\n<script>\n'
        'document.getElementById("add").addEventListener("click", function () {\n'
        "  fbq('track', 'AddToCart', {value: 9.5, currency: 'EUR'});\n"
        "});\n</script>",
    ),
    "/early": document(
        "Early",
        "<p>AddToCart was called before fbevents.js could load.</p>",
        head=(
            f"<script>\n{BASE_CODE}"
            "fbq('track', 'AddToCart', {value: 9.5, currency: 'EUR'});\n"
            f"</script>\n{NOSCRIPT}\n"
        ),
    ),
    "/buy": document(
        "Buy",
        '<a id="buy" href="/thanks">Buy now</a>\n<script>\n'
        'document.getElementById("buy").addEventListener("click", function (ev) {\n'
        "  ev.preventDefault();\n"
        "  fbq('track', 'Purchase', {value: 20, currency: 'EUR'});\n"
        "  location.href = '/thanks';\n"
        "});\n</script>",
    ),
    "/nopixel": document(
        "No pixel",
        '<button id="lead">Contact me</button>\n<script>\n'
        'document.getElementById("lead").addEventListener("click", function () {\n'
        "  window.__leadIds = window.__leadIds || [];\n"
        "  window.__leadIds.push(window.capi.track('Lead', {value: 1, currency: 'EUR'}));\n"
        "});\n</script>",
        head="",
    ),
    "/landing": document(
        "Landing",
        "<p>The query was removed from the address bar before the pixel ran.</p>",
        head='<script>history.replaceState(null, "", location.pathname);</script>\n' + PIXEL_HEAD,
    ),
    "/thanks": document("Thank you", "<p>Order received.</p>", head=""),
    "/csp": document(
        "Strict CSP",
        "<p>Only same-origin scripts run here.</p>",
        head='<script src="/pixel-base.js"></script>\n',
    ),
}
STRICT_CSP = "script-src 'self'"


@dataclass
class Site:
    """The site's state: every fbq call the stand-in recorded and every path requested."""

    url: str = ""
    calls: list[dict[str, Any]] = field(default_factory=list)
    paths: list[str] = field(default_factory=list)

    def tracked(self, event: str, page: str | None = None) -> list[dict[str, Any]]:
        """Recorded track calls of `event` (on `page` when given), in order."""
        return [
            c
            for c in self.calls
            if c.get("event") == event and (page is None or c.get("page") == page)
        ]

    def app(self) -> web.Application:
        """The aiohttp application."""
        app = web.Application()
        app.router.add_get("/fbevents.js", self._fbevents)
        app.router.add_get("/pixel-base.js", self._pixel_base)
        app.router.add_post("/__record", self._record)
        app.router.add_get("/{path:.*}", self._page)
        return app

    async def _fbevents(self, request: web.Request) -> web.Response:
        self.paths.append(request.path)
        return web.Response(text=FBEVENTS_JS, content_type="application/javascript")

    async def _pixel_base(self, request: web.Request) -> web.Response:
        self.paths.append(request.path)
        return web.Response(text=BASE_CODE, content_type="application/javascript")

    async def _record(self, request: web.Request) -> web.Response:
        call = json.loads(await request.read())
        if isinstance(call, dict):
            self.calls.append(call)
        return web.Response(status=204)

    async def _page(self, request: web.Request) -> web.Response:
        self.paths.append(request.path)
        text = PAGES.get(request.path)
        if text is None:
            raise web.HTTPNotFound()
        headers = {"Cache-Control": "no-store"}
        if request.path == "/csp":
            headers["Content-Security-Policy"] = STRICT_CSP
        return web.Response(text=text, content_type="text/html", headers=headers)


@contextlib.asynccontextmanager
async def serve(app: web.Application) -> AsyncIterator[str]:
    """Serve `app` on 127.0.0.1 (a free port) for the block; yields its root URL."""
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
    await runner.setup()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.bind(("127.0.0.1", 0))
        await web.SockSite(runner, sock).start()
    except BaseException:
        sock.close()
        await runner.cleanup()
        raise
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        await runner.cleanup()
        sock.close()


@contextlib.asynccontextmanager
async def start_site() -> AsyncIterator[Site]:
    """The test site on 127.0.0.1 for the duration of the block."""
    site = Site()
    async with serve(site.app()) as url:
        site.url = url
        yield site
