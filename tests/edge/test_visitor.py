"""`Visitor`: what one request tells about its visitor, read through real HTTP on loopback.

A small aiohttp app answers with the facts `visitor(request)` worked out; it listens on
127.0.0.1, or on a dual-stack socket where the same client is the IPv4-mapped peer
`::ffff:127.0.0.1`. The gateway's own use of the Visitor (once per request, lazily) is
checked through the real proxy.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from gateway.app import reload
from gateway.edge import visitor as visitor_module
from gateway.edge.appkeys import RUNTIME
from gateway.edge.visitor import VISITOR_RULES, Visitor, VisitorRules, visitor
from tests.conftest import UA, make_settings
from tests.edge.conftest import StartGateway
from tests.fakes.graph import FakeGraph
from tests.fakes.upstream import Upstream, run_gateway

BOT = "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)"


async def _facts(request: web.Request) -> web.Response:
    who = visitor(request)
    assert visitor(request) is who  # built once, kept on the request
    return web.json_response(
        {
            "peer": request.remote,
            "peer_trusted": who.peer_trusted,
            "origin": who.origin,
            "client_ip": who.client_ip,
            "user_agent": who.user_agent,
            "consent": [who.consent.track, who.consent.opt_out, who.consent.ldu],
            "gpc": who.gpc,
            "bot": who.bot,
            "prefetch": who.prefetch,
            "fbp": who.fbp,
            "fbc": who.fbc,
            "user_data": who.user_data(),
            "site": who.site,
        }
    )


@contextlib.asynccontextmanager
async def facts_server(
    tmp_path: Path, *, dual_stack: bool = False, **settings: Any
) -> AsyncIterator[str]:
    """A server answering `visitor(request)`'s facts as JSON; yields its URL on 127.0.0.1."""
    rules = VisitorRules.from_settings(make_settings(tmp_path, "http://127.0.0.1:9", **settings))
    app = web.Application()
    app[VISITOR_RULES] = lambda: rules
    app.router.add_get("/", _facts)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site: web.BaseSite
    if dual_stack:
        sock = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.bind(("::", 0))
        site = web.SockSite(runner, sock)
    else:
        site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    server = site._server
    assert server is not None
    port = server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


async def ask(url: str, **headers: str) -> dict[str, Any]:
    async with (
        aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as session,
        session.get(url + "/", headers={"User-Agent": UA, **_dashed(headers)}) as resp,
    ):
        assert resp.status == 200
        return await resp.json()  # type: ignore[no-any-return]


def _dashed(headers: dict[str, str]) -> dict[str, str]:
    return {k.replace("_", "-"): v for k, v in headers.items()}


FORWARDED = {
    "Host": "127.0.0.1:1",
    "X-Forwarded-For": "198.51.100.4, 203.0.113.9",
    "X-Forwarded-Proto": "https",
    "X-Forwarded-Host": "shop.example",
}


@pytest.mark.parametrize("dual_stack", [False, True], ids=["ipv4", "ipv4-mapped"])
async def test_forwarded_headers_count_from_a_trusted_proxy(
    tmp_path: Path, dual_stack: bool
) -> None:
    async with facts_server(tmp_path, dual_stack=dual_stack) as url:
        facts = await ask(url, **FORWARDED)
    assert facts["peer"] == ("::ffff:127.0.0.1" if dual_stack else "127.0.0.1")
    # One answer for both spellings of the same loopback peer.
    assert facts["peer_trusted"] is True
    assert facts["origin"] == "https://shop.example"
    assert facts["client_ip"] == "203.0.113.9"  # the right-most untrusted hop


@pytest.mark.parametrize("dual_stack", [False, True], ids=["ipv4", "ipv4-mapped"])
async def test_forwarded_headers_from_an_untrusted_peer_are_ignored(
    tmp_path: Path, dual_stack: bool
) -> None:
    async with facts_server(tmp_path, dual_stack=dual_stack, trusted_proxies=["10.0.0.0/8"]) as url:
        facts = await ask(url, **FORWARDED)
    assert facts["peer_trusted"] is False
    assert facts["origin"] == "http://127.0.0.1:1"
    # Meta wants the IPv4 address, not its IPv6 mapping.
    assert facts["client_ip"] == "127.0.0.1"


@pytest.mark.parametrize("dual_stack", [False, True], ids=["ipv4", "ipv4-mapped"])
async def test_client_ips_remembered_per_peer_follow_each_forwarded_chain(
    tmp_path: Path, dual_stack: bool
) -> None:
    # One VisitorRules serves every request (as in the gateway): what it remembers about a
    # peer must never answer for another chain, nor for a request that forwards no one.
    chains = [
        ("198.51.100.4, 203.0.113.9", "203.0.113.9"),
        ("203.0.113.77", "203.0.113.77"),
        ("198.51.100.4, 203.0.113.9", "203.0.113.9"),
        ("10.1.2.3, 127.0.0.1", "10.1.2.3"),  # a trusted hop is skipped
        ("unknown", "127.0.0.1"),  # unreadable: the last hop read (the peer)
    ]
    async with facts_server(tmp_path, dual_stack=dual_stack) as url:
        for chain, want in chains:
            facts = await ask(url, **{**FORWARDED, "X-Forwarded-For": chain})
            assert facts["client_ip"] == want, chain
        facts = await ask(url, Forwarded='for="[2001:db8::5]:4711"')
        assert facts["client_ip"] == "2001:db8::5"
        facts = await ask(url)
        assert facts["client_ip"] == "127.0.0.1"  # nothing forwarded: the peer itself
    async with facts_server(tmp_path, dual_stack=dual_stack, trusted_proxies=[]) as url:
        for chain, _ in chains:
            facts = await ask(url, **{**FORWARDED, "X-Forwarded-For": chain})
            assert facts["client_ip"] == "127.0.0.1", chain


async def test_identity_consent_and_speculation(tmp_path: Path) -> None:
    fbp = "fb.1.1763840000000.1234567890"
    fbc = "fb.1.1763840000000.IwAR0click"
    async with facts_server(tmp_path, consent="consent", consent_values=["yes"]) as url:
        plain = await ask(url, Cookie=f"consent=yes; _fbp={fbp}; _fbc={fbc}", Sec_GPC="1")
        refused = await ask(url, Cookie="consent=no")
        bot = await ask(url, User_Agent=BOT, Sec_Purpose="prefetch;prerender")
    assert plain["consent"] == [True, True, False]  # GPC means opt-out by default
    assert plain["gpc"] is True and plain["bot"] is False and plain["prefetch"] is False
    assert (plain["fbp"], plain["fbc"]) == (fbp, fbc)
    assert plain["user_data"] == {
        "client_user_agent": UA,
        "client_ip_address": "127.0.0.1",
        "fbp": fbp,
        "fbc": fbc,
    }
    assert plain["site"] is None
    assert refused["consent"] == [False, False, False] and refused["gpc"] is False
    assert refused["user_data"] == {"client_user_agent": UA, "client_ip_address": "127.0.0.1"}
    assert bot["bot"] is True and bot["prefetch"] is True


async def test_the_gateways_cookies_read_alike_from_plain_and_unusual_headers(
    tmp_path: Path,
) -> None:
    # A plain Cookie header is read for _fbp, _fbc and the consent cookies alone; a quoted
    # value or a spaced "=" goes through aiohttp's whole parser: same answers either way.
    fbp = "fb.1.1763840000000.1234567890"
    async with facts_server(
        tmp_path, consent="consent", consent_values=["yes"], opt_out_cookie="no_ads"
    ) as url:
        plain = await ask(url, Cookie=f"_ga=GA1.1.1; consent=yes; _fbp={fbp}; no_ads=1")
        quoted = await ask(url, Cookie=f'_ga="GA1 1"; consent = yes; _fbp="{fbp}"; no_ads=1')
        repeated = await ask(url, Cookie=f"_fbp=fb.1.1.1; consent=no; consent=yes; _fbp={fbp}")
    for facts in (plain, quoted):
        assert (facts["fbp"], facts["consent"]) == (fbp, [True, True, False])
    assert (repeated["fbp"], repeated["consent"]) == (fbp, [True, False, False])


def test_bot_answers_are_remembered_per_rules_and_bounded(tmp_path: Path) -> None:
    """Each rule set answers from its own patterns and keeps at most _UA_CACHE answers."""
    default = VisitorRules.from_settings(make_settings(tmp_path, "http://127.0.0.1:9"))
    custom = VisitorRules.from_settings(
        make_settings(tmp_path, "http://127.0.0.1:9", bot_user_agents=["mymonitor"])
    )
    assert default.is_bot(BOT) and not default.is_bot(UA)
    # The same UA, another rule set: its own answer, not the first set's remembered one.
    assert not custom.is_bot(BOT) and custom.is_bot("MyMonitor/2")
    for i in range(visitor_module._UA_CACHE + 10):
        assert not default.is_bot(f"{UA} build/{i}")
    assert len(default._bot_uas) <= visitor_module._UA_CACHE
    assert default.is_bot(BOT)


def test_user_data_prefers_the_ids_the_response_settled_on() -> None:
    who = Visitor(peer_trusted=False, scheme="https", host="shop.example", user_agent="UA/1")
    assert who.origin == "https://shop.example"
    with pytest.raises(AssertionError, match="made by hand"):
        _ = who.client_ip  # a hand-made Visitor has no request to read more from


async def test_the_proxy_leaves_tracking_facts_of_an_asset_unread(
    tmp_path: Path, fake_graph: FakeGraph, site: Upstream
) -> None:
    seen: list[Visitor] = []

    async def record(request: web.Request, response: web.StreamResponse) -> None:
        if not request.path.startswith("/_capi"):
            seen.append(visitor(request))

    settings = make_settings(tmp_path, fake_graph.url, upstream=site.url)
    async with run_gateway(settings, on_response_prepare=[record]) as gw:
        headers = {"User-Agent": UA, "Accept": "text/html"}
        async with gw.session.get(gw.url + "/bytes/100", headers=headers) as resp:
            assert resp.status == 200
        async with gw.session.get(gw.url + "/html", headers=headers) as resp:
            assert resp.status == 200 and b"px.js" in await resp.read()
    asset, page = seen
    # Forwarding needs only the peer's trust, the origin and the client address (its share
    # of the upstream pool); a tagged page needs the rest.
    assert asset.computed == frozenset({"ip"})
    assert {"consent", "bot", "prefetch", "ip"} <= page.computed


async def test_a_tagged_page_s_request_is_freed_without_the_cyclic_gc(
    tmp_path: Path, fake_graph: FakeGraph, site: Upstream
) -> None:
    # The request keeps its Visitor; a Visitor holding the request strongly made every
    # request a reference cycle, which only the cyclic GC freed (with the headers, the
    # writer and the rest it holds): a fifth of a page's GC work at saturation.
    settings = make_settings(tmp_path, fake_graph.url, upstream=site.url)
    async with run_gateway(settings) as gw:
        # Each connection closed after its page: none keeps its last request.
        headers = {"User-Agent": UA, "Accept": "text/html", "Connection": "close"}
        gc.collect()
        gc.disable()
        try:
            for _ in range(5):
                async with gw.session.get(gw.url + "/html", headers=headers) as resp:
                    assert resp.status == 200 and b"px.js" in await resp.read()
            await asyncio.sleep(0.1)  # the connections' last steps after the answer
            # The gateway's requests: those with a Visitor (the fake site's have none).
            alive = [
                o
                for o in gc.get_objects()
                if isinstance(o, web.BaseRequest) and visitor_module._KEY in o
            ]
        finally:
            gc.enable()
    assert alive == []


async def test_a_reload_changes_which_peers_are_trusted(start: StartGateway) -> None:
    gw = await start()
    headers = {"User-Agent": UA, "Accept": "text/html", "X-Forwarded-Proto": "https"}
    async with gw.session.get(gw.url + "/html", headers=headers) as resp:
        assert "Secure" in " ".join(resp.headers.getall("Set-Cookie"))
    settings = gw.app[RUNTIME].settings
    await reload(gw.app, settings.model_copy(update={"trusted_proxies": ["10.0.0.0/8"]}))
    async with gw.session.get(gw.url + "/html", headers=headers) as resp:
        assert "Secure" not in " ".join(resp.headers.getall("Set-Cookie"))
