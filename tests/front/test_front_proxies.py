"""Generated front configs in real nginx and Caddy, in front of the gateway and the demo shop.

The gateway runs as a subprocess (dry run, the repository's rules/), the demo shop
in-process with a request log and a few assets added. Every request rule of rules/ must
still fire through the front (sent the way a fetch would be: no document headers, so only
the rule's own route gets it to the gateway), px.js and /collect must work, and assets
must reach the site without the gateway seeing them: the site's log shows one forwarding
hop for them, and the gateway's proxy counter does not move.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import aiohttp
import pytest
from aiohttp import web

from gateway.demo_shop import shop_app
from tests.fakes.processes import (
    Gateway,
    clean_env,
    free_port,
    gateway_cmd,
    run_cli,
    serve_args,
    spawn,
    stop_process,
    tail,
    wait_healthy,
)

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "rules"
NGINX = shutil.which("nginx") or next((p for p in ("/usr/sbin/nginx",) if Path(p).exists()), None)
CADDY = shutil.which("caddy")
ASSETS = [f"/static/{name}" for name in ("app.js", "site.css", "logo.png", "font.woff2")]
FETCH = {"Accept": "*/*", "Sec-Fetch-Dest": "empty"}
BROWSER = {
    "User-Agent": "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 Chrome/126.0 Safari/537.36",
    "Accept-Encoding": "gzip",
}


def need(tool: str | None, name: str, how: str) -> str:
    """The tool's path; skip outside CI when it is missing (CI must have it)."""
    if tool is None:
        if os.environ.get("CI"):
            pytest.fail(f"{name} is not installed but CI must run this test ({how})")
        pytest.skip(f"{name} is not installed ({how}); the front-config test needs it")
    return tool


@dataclass
class Site:
    """The demo shop plus assets and a JSON API, logging (method, path, X-Forwarded-For)."""

    url: str = ""
    seen: list[tuple[str, str, str]] = field(default_factory=list)

    def hops(self, method: str, path: str) -> list[int]:
        """Forwarding hops of each request seen for (method, path): 1 = front only."""
        return [len(xff.split(",")) for m, p, xff in self.seen if (m, p) == (method, path)]


@contextlib.asynccontextmanager
async def start_site() -> AsyncIterator[Site]:
    site = Site()

    @web.middleware
    async def record(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        xff = request.headers.get("X-Forwarded-For", "")
        site.seen.append((request.method, request.path, xff))
        return await handler(request)

    async def asset(request: web.Request) -> web.Response:
        return web.Response(body=b"x" * 512, content_type="application/octet-stream")

    async def api(request: web.Request) -> web.Response:
        await request.read()
        return web.json_response({"items": 1})

    app = shop_app()
    app.middlewares.append(record)
    app.router.add_get("/static/{name}", asset)
    app.router.add_route("*", "/api/cart", api)
    app.router.add_route("*", "/api/items/{id}", api)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    site.url = f"http://127.0.0.1:{port}"
    try:
        yield site
    finally:
        await runner.cleanup()


@contextlib.contextmanager
def gateway_process(tmp_path: Path, rules: Path, upstream: str) -> Iterator[Gateway]:
    port = free_port()
    cmd = [
        *gateway_cmd(),
        *serve_args(port, tmp_path / "outbox.db", "--dry-run", "--rules", str(rules)),
        "--upstream",
        upstream,
    ]
    log = tmp_path / "gateway.log"
    proc = spawn(cmd, log, env=clean_env(CAPIGW_PAGEVIEW_HOLD="0"))
    try:
        yield Gateway(proc, f"http://127.0.0.1:{port}", log)
    finally:
        stop_process(proc, grace=5)


def generate(flavor: str, rules: Path, site: Site, gw: Gateway, listen: str) -> str:
    args = ["front-config", flavor, "--rules", str(rules), "--upstream", site.url]
    return run_cli(*args, "--gateway", gw.url, "--listen", listen).stdout


@contextlib.contextmanager
def run_front(flavor: str, config: str, tmp_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    """nginx (one process, foreground) or Caddy serving `config` on loopback."""
    work = tmp_path / flavor
    work.mkdir(exist_ok=True)
    log = work / "error.log"
    if flavor == "nginx":
        (work / "site.conf").write_text(config)
        (work / "nginx.conf").write_text(
            f"pid {work}/nginx.pid;\nerror_log {log};\ndaemon off;\nmaster_process off;\n"
            f"events {{}}\nhttp {{\n  access_log off;\n  client_body_temp_path {work}/body;\n"
            f"  proxy_temp_path {work}/proxy;\n  include {work}/site.conf;\n}}\n"
        )
        cmd = [need(NGINX, "nginx", "bench/install-nginx.sh"), "-p", str(work)]
        cmd += ["-c", str(work / "nginx.conf")]
    else:
        # Plain HTTP, no admin endpoint, nothing written outside tmp_path.
        (work / "Caddyfile").write_text("{\n\tadmin off\n\tauto_https off\n}\n\n" + config)
        cmd = [need(CADDY, "caddy", "apt-get install caddy"), "run", "--adapter", "caddyfile"]
        cmd += ["--config", str(work / "Caddyfile")]
    env = {
        **clean_env(),
        "HOME": str(work),
        "XDG_DATA_HOME": str(work),
        "XDG_CONFIG_HOME": str(work),
    }
    proc = spawn(cmd, log, env=env, cwd=work)
    try:
        yield proc
    finally:
        stop_process(proc, grace=5)


async def wait_up(url: str, proc: subprocess.Popen[bytes], log: Path) -> None:
    async with aiohttp.ClientSession() as session:
        for _ in range(200):
            if proc.poll() is not None:
                raise AssertionError(f"the front proxy exited:\n{tail(log)}")
            with contextlib.suppress(aiohttp.ClientError):
                async with session.get(url + "/static/ping", headers=FETCH) as resp:
                    if resp.status == 200:
                        return
            await asyncio.sleep(0.05)
    raise AssertionError(f"the front proxy did not start:\n{tail(log)}")


async def wait_log(log: Path, text: str, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while text not in log.read_text(errors="replace"):
        if time.monotonic() > deadline:
            raise AssertionError(f"{text!r} not in the gateway's log:\n{tail(log)}")
        await asyncio.sleep(0.05)


async def proxied(session: aiohttp.ClientSession, gw: Gateway) -> int:
    """The gateway's count of requests it proxied to the site."""
    async with session.get(gw.url + "/_capi/metrics") as resp:
        text = await resp.text()
    return int(
        sum(
            float(v)
            for v in re.findall(r"^capi_gateway_proxy_requests_total\{[^}]*\} (\S+)$", text, re.M)
        )
    )


def rules_fired(buffer: Path) -> list[str]:
    rows = run_cli("queue", "list", "--json", "--buffer", str(buffer), "--limit", "500").stdout
    return sorted({json.loads(line)["rule"] for line in rows.splitlines() if line.strip()} - {None})


async def wait_rules(buffer: Path, wanted: set[str], timeout: float = 15) -> list[str]:
    fired: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        fired = await asyncio.to_thread(rules_fired, buffer)
        if wanted <= set(fired):
            return fired
        await asyncio.sleep(0.25)
    raise AssertionError(f"rules fired {fired}, wanted {sorted(wanted)}")


async def walk_the_shop(front: str, gw: Gateway, site: Site) -> None:
    """Every example rule, px.js, /collect and assets, through the front at `front`."""
    jar = aiohttp.DummyCookieJar()
    async with aiohttp.ClientSession(cookie_jar=jar, headers=BROWSER) as s:
        nav = {"Accept": "text/html,*/*;q=0.8", "Sec-Fetch-Dest": "document"}
        async with s.get(front + "/product/tee-01", headers=nav) as resp:
            assert resp.status == 200
            page = await resp.text()
            assert "_fbp=" in resp.headers.get("Set-Cookie", "")
        tag = dict(re.findall(r'(data-[a-z-]+)="([^"]*)"', page))
        assert tag["data-endpoint"] == "/_capi/collect"
        # A navigation of an older browser (no Sec-Fetch-Dest) is tagged too.
        async with s.get(front + "/", headers={"Accept": "text/html"}) as resp:
            assert "/_capi/px.js" in await resp.text()
        async with s.get(front + "/_capi/px.js") as resp:
            assert resp.status == 200 and "javascript" in resp.headers["Content-Type"]
        beacon = {
            "token": tag["data-token"],
            "url": front + "/product/tee-01",
            "events": [
                {
                    "event_name": "AddToCart",
                    "event_id": tag["data-event-id"] + ".1",
                    "rule": "add-to-cart",
                    "data": {"sku": "tee-01", "price": "19.90"},
                }
            ],
        }
        headers = {"Origin": front, "Content-Type": "text/plain"}
        async with s.post(front + "/_capi/collect", data=json.dumps(beacon), headers=headers) as r:
            assert r.status == 204, await r.text()

        # Request rules, sent like fetches: only their own routes bring them to the gateway.
        async def go(method: str, path: str, **kw: Any) -> aiohttp.ClientResponse:
            kw.setdefault("headers", {})
            kw["headers"] = {**FETCH, **kw["headers"]}
            async with s.request(method, front + path, allow_redirects=False, **kw) as resp:
                await resp.read()
                return resp

        cart = {"Cookie": "cart=tee-01.mug-02"}
        assert (await go("GET", "/product/mug-02")).status == 200
        assert (await go("GET", "/checkout", headers=cart)).status == 200
        paid = await go("POST", "/checkout", data={"email": "jane@example.com"}, headers=cart)
        assert paid.status == 302
        assert (await go("GET", paid.headers["Location"])).status == 200
        assert (await go("GET", "/search?q=mug")).status == 200
        lead = {"name": "Jane", "email": "jane@example.com", "message": "hi"}
        assert (await go("POST", "/contact", data=lead)).status == 302
        booking = {"service": "tailoring", "date": "2030-05-01", "email": "b@example.co.id"}
        booked = await go("POST", "/book", data=booking)
        assert booked.status == 302
        booking_id = parse_qs(urlsplit(booked.headers["Location"]).query)["booking"][0]
        assert (await go("GET", f"/book/confirmed?booking={booking_id}")).status == 200
        signup = {"email": "ann@x.io", "password": "long enough"}
        assert (await go("POST", "/signup", data=signup)).status == 302
        for method, path in (("POST", "/checkout"), ("GET", "/search"), ("POST", "/signup")):
            assert site.hops(method, path) and set(site.hops(method, path)) == {2}, path

        # Assets and an API call no rule reads: straight to the site.
        before = await proxied(s, gw)
        for path in [*ASSETS, "/api/cart"]:
            assert (await go("GET", path)).status == 200
        assert (await go("POST", "/api/cart", data=b"{}")).status == 200
        assert await proxied(s, gw) == before
        for path in ASSETS:
            assert site.hops("GET", path) == [1], path
        assert site.hops("POST", "/api/cart") == [1]
        # ... except an odd path, which only the gateway can judge.
        assert (await go("GET", "/static/logo%20copy.png")).status == 200
        assert await proxied(s, gw) == before + 1


ALL_RULES = {
    "add-to-cart",
    "booking-lead",
    "booking-scheduled",
    "contact-lead",
    "initiate-checkout",
    "payment-submitted",
    "purchase",
    "search",
    "signup",
    "view-product",
}


@pytest.mark.parametrize("flavor", ["nginx", "caddy"])
async def test_every_rule_fires_through_the_front_and_assets_bypass_the_gateway(
    tmp_path: Path, flavor: str
) -> None:
    need(NGINX if flavor == "nginx" else CADDY, flavor, "see bench/README.md")
    port = free_port()
    listen = f"127.0.0.1:{port}" if flavor == "nginx" else f"http://127.0.0.1:{port}"
    front = f"http://127.0.0.1:{port}"
    async with start_site() as site:
        with gateway_process(tmp_path, RULES, site.url) as gw:
            async with aiohttp.ClientSession() as session:
                await wait_healthy(gw, session)
            config = generate(flavor, RULES, site, gw, listen)
            with run_front(flavor, config, tmp_path) as proc:
                await wait_up(front, proc, tmp_path / flavor / "error.log")
                await walk_the_shop(front, gw, site)
            fired = await wait_rules(tmp_path / "outbox.db", ALL_RULES)
    assert set(fired) == ALL_RULES


async def test_a_new_rule_changes_the_routing_and_check_warns_until_regenerated(
    tmp_path: Path,
) -> None:
    need(NGINX, "nginx", "bench/install-nginx.sh")
    rules = tmp_path / "rules"
    shutil.copytree(RULES, rules)
    port = free_port()
    front = f"http://127.0.0.1:{port}"
    async with start_site() as site:
        with gateway_process(tmp_path, rules, site.url) as gw:
            async with aiohttp.ClientSession(headers=BROWSER) as session:
                await wait_healthy(gw, session)
                old = generate("nginx", rules, site, gw, f"127.0.0.1:{port}")
                (tmp_path / "old.conf").write_text(old)
                (rules / "api.toml").write_text(
                    '[[rule]]\nname = "api-cart"\nevent = "AddToCart"\nmethod = "POST"\n'
                    'path = "/api/cart"\n[rule.extract]\ncontent_type = "product"\n'
                )
                checked = run_cli(
                    "check",
                    "--dry-run",
                    "--rules",
                    str(rules),
                    "--front-config",
                    str(tmp_path / "old.conf"),
                ).stdout
                assert "rule 'api-cart'" in checked and "not covered" in checked
                new = generate("nginx", rules, site, gw, f"127.0.0.1:{port}")
                (tmp_path / "new.conf").write_text(new)
                checked = run_cli(
                    "check",
                    "--dry-run",
                    "--rules",
                    str(rules),
                    "--front-config",
                    str(tmp_path / "new.conf"),
                ).stdout
                assert "not covered" not in checked
                gw.proc.send_signal(signal.SIGHUP)  # the gateway loads the new rule
                await wait_log(gw.log, "Reloaded the configuration")
                for config, hops in ((old, 1), (new, 2)):
                    site.seen.clear()
                    with run_front("nginx", config, tmp_path) as proc:
                        await wait_up(front, proc, tmp_path / "nginx" / "error.log")
                        async with session.post(
                            front + "/api/cart", data=b"{}", headers=FETCH
                        ) as r:
                            assert r.status == 200
                    assert site.hops("POST", "/api/cart") == [hops]
            await wait_rules(tmp_path / "outbox.db", {"api-cart"})


ROUTING_RULES = """
[[rule]]
name = "cart-post"
event = "Lead"
method = "POST"
path = "/api/cart"
[[rule]]
name = "item-get"
event = "Lead"
method = "GET"
path = "/api/items/{id}"
[[rule]]
name = "any-method"
event = "Lead"
path = "/api/any"
"""


async def test_each_stage_of_the_nginx_map_chain_routes_what_it_must(tmp_path: Path) -> None:
    """Documents by header (hash, or Accept without Sec-Fetch-Dest), a literal rule path by
    path and method (hashes), a patterned one by regex; the same paths with another method,
    and fetches that only look like documents, go straight to the site."""
    need(NGINX, "nginx", "bench/install-nginx.sh")
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "r.toml").write_text(ROUTING_RULES)
    port = free_port()
    front = f"http://127.0.0.1:{port}"
    cases = [
        # (method, path, headers, hops at the site: 2 = through the gateway)
        ("GET", "/static/a.js", {"Sec-Fetch-Dest": "document", "Accept": "*/*"}, 2),
        ("GET", "/static/b.js", {"Sec-Fetch-Dest": "iframe", "Accept": "*/*"}, 2),
        ("GET", "/static/c.js", {"Accept": "text/html,*/*"}, 2),
        ("GET", "/static/d.js", {"Sec-Fetch-Dest": "empty", "Accept": "text/html"}, 1),
        ("GET", "/static/e.js", {"Sec-Fetch-Dest": "script", "Accept": "*/*"}, 1),
        ("POST", "/api/cart", FETCH, 2),
        ("GET", "/api/cart", FETCH, 1),
        ("PUT", "/api/cart", FETCH, 1),
        ("GET", "/api/items/7", FETCH, 2),
        ("POST", "/api/items/7", FETCH, 1),
        ("GET", "/api/items/7/more", FETCH, 1),
        ("DELETE", "/api/any", FETCH, 2),
    ]
    async with start_site() as site:
        with gateway_process(tmp_path, rules, site.url) as gw:
            async with aiohttp.ClientSession() as session:
                await wait_healthy(gw, session)
                config = generate("nginx", rules, site, gw, f"127.0.0.1:{port}")
                assert '"/api/cart" $capi_via_POST;' in config  # a hash, not a regex
                with run_front("nginx", config, tmp_path) as proc:
                    await wait_up(front, proc, tmp_path / "nginx" / "error.log")
                    for method, path, headers, _ in cases:
                        async with session.request(
                            method, front + path, headers=headers, allow_redirects=False
                        ) as resp:
                            await resp.read()
        for method, path, _, hops in cases:
            assert site.hops(method, path) == [hops], (method, path, site.hops(method, path))
