"""WebSocket upgrades relayed through the gateway to a real echo server on loopback."""

from __future__ import annotations

import asyncio
import os

import aiohttp
import pytest
from aiohttp import WSMsgType

from tests.conftest import UA, wait_for
from tests.fakes.upstream import MIB, Front, Upstream

TIMEOUT = 5.0


def connect(
    gw: Front, path: str = "/ws", **kwargs: object
) -> aiohttp.client._WSRequestContextManager:
    options: dict[str, object] = {
        "protocols": ("chat",),
        "autoping": False,
        "max_msg_size": 32 * MIB,
        "headers": {"User-Agent": UA, "Origin": "http://shop.example"},
    }
    options.update(kwargs)
    return gw.session.ws_connect(gw.url + path, **options)  # type: ignore[arg-type]


async def receive(ws: aiohttp.ClientWebSocketResponse) -> aiohttp.WSMessage:
    return await asyncio.wait_for(ws.receive(), TIMEOUT)


async def test_text_binary_and_empty_messages_echo(gw: Front) -> None:
    async with connect(gw) as ws:
        assert ws.protocol == "chat"
        for text in ("hello", "grüße ✓", ""):
            await ws.send_str(text)
            msg = await receive(ws)
            assert (msg.type, msg.data) == (WSMsgType.TEXT, text)
        for data in (b"\x00\xff\x10binary", b""):
            await ws.send_bytes(data)
            msg = await receive(ws)
            assert (msg.type, msg.data) == (WSMsgType.BINARY, data)
        await ws.close()


async def test_sixteen_mib_message(gw: Front) -> None:
    data = os.urandom(16 * MIB)
    async with connect(gw) as ws:
        await ws.send_bytes(data)
        msg = await asyncio.wait_for(ws.receive(), 20)
        assert msg.type is WSMsgType.BINARY and msg.data == data
        await ws.close()


async def test_ping_from_the_client_is_answered_by_the_upstream(gw: Front, site: Upstream) -> None:
    async with connect(gw) as ws:
        await ws.ping(b"are-you-there")
        msg = await receive(ws)
        assert (msg.type, msg.data) == (WSMsgType.PONG, b"are-you-there")
        await ws.close()
    assert ("ping", b"are-you-there", None) in site.ws_events


async def test_ping_from_the_upstream_reaches_the_client(gw: Front, site: Upstream) -> None:
    async with connect(gw) as ws:
        await ws.send_str("ping:from-site")
        msg = await receive(ws)
        assert (msg.type, msg.data) == (WSMsgType.PING, b"from-site")
        await ws.pong(msg.data)
        msg = await receive(ws)
        assert (msg.type, msg.data) == (WSMsgType.TEXT, "pong-seen:from-site")
        await ws.close()


async def test_subprotocol_is_negotiated_with_the_upstream(gw: Front, site: Upstream) -> None:
    async with connect(gw, protocols=("v2.other", "chat")) as ws:
        assert ws.protocol == "chat"
        await ws.close()
    assert site.ws_events[0] == ("open", "chat", None)
    # No protocol asked: none chosen on either side.
    async with connect(gw, protocols=()) as ws:
        assert ws.protocol is None
        await ws.close()
    assert ("open", None, None) in site.ws_events


async def test_close_code_and_reason_from_the_client(gw: Front, site: Upstream) -> None:
    async with connect(gw) as ws:
        await ws.send_str("warm-up")
        assert (await receive(ws)).data == "warm-up"
        await asyncio.wait_for(ws.close(code=4001, message=b"client says bye"), TIMEOUT)
        assert ws.close_code == 4001
    await wait_for(lambda: any(e[0] == "close" for e in site.ws_events))
    assert ("close", 4001, "client says bye") in site.ws_events


async def test_client_vanishing_closes_the_upstream_socket(gw: Front, site: Upstream) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
    writer.write(
        b"GET /ws HTTP/1.1\r\nHost: shop.example\r\nUpgrade: websocket\r\n"
        b"Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    )
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), TIMEOUT)
    assert head.startswith(b"HTTP/1.1 101 ")
    writer.close()  # no close frame: the browser tab just died
    await wait_for(lambda: any(e[0] in ("close", "gone") for e in site.ws_events))
    assert ("close", 1001, "") in site.ws_events


async def test_close_code_and_reason_from_the_upstream(gw: Front) -> None:
    async with connect(gw, autoclose=True) as ws:
        await ws.send_str("close:4002:site says bye")
        msg = await receive(ws)
        assert msg.type is WSMsgType.CLOSE
        assert (msg.data, msg.extra) == (4002, "site says bye")
        assert ws.close_code == 4002


async def test_refused_upgrade_is_relayed(gw: Front, site: Upstream) -> None:
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        async with connect(gw, path="/ws-refuse"):
            pass
    assert refused.value.status == 403
    assert site.paths() == ["/ws-refuse"]


async def test_upgrade_headers_reach_the_upstream(gw: Front, site: Upstream) -> None:
    async with connect(gw, headers={"User-Agent": UA, "Cookie": "sid=7", "X-Custom": "1"}) as ws:
        await ws.close()
    seen = site.requests[0]
    assert seen.header("Cookie") == ["sid=7"] and seen.header("X-Custom") == ["1"]
    assert seen.header("X-Forwarded-For") == ["127.0.0.1"]
    assert seen.header("Upgrade") == ["websocket"]
