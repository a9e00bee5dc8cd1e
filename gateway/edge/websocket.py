"""WebSocket upgrades relayed to the upstream: frames both ways, close codes kept.

The upstream handshake happens first, so a refused upgrade (403, 404, ...) reaches the
browser as the upstream's own answer instead of a socket that opens and dies.
"""

from __future__ import annotations

import asyncio
import logging

import aiohttp
from aiohttp import WSMsgType, web
from multidict import CIMultiDict
from yarl import URL

log = logging.getLogger("gateway.websocket")

# Handshake fields aiohttp's client and server negotiate themselves.
_HANDSHAKE = (
    "Sec-WebSocket-Key",
    "Sec-WebSocket-Version",
    "Sec-WebSocket-Extensions",
    "Sec-WebSocket-Protocol",
    "Sec-WebSocket-Accept",
    "Upgrade",
    "Connection",
    "Content-Length",
)


def is_websocket_upgrade(request: web.Request) -> bool:
    """A GET asking to switch to the websocket protocol."""
    return (
        request.method == "GET"
        and request.headers.get("Upgrade", "").lower() == "websocket"
        and "upgrade" in request.headers.get("Connection", "").lower()
    )


async def relay_websocket(
    request: web.Request,
    target: URL,
    headers: CIMultiDict[str],
    *,
    session: aiohttp.ClientSession | None = None,
    max_msg_size: int = 64 * 1024 * 1024,
) -> web.StreamResponse:
    """Open the upstream socket, then accept the client's and pump frames until one closes."""
    for name in _HANDSHAKE:
        headers.popall(name, None)
    protocols = [
        p.strip()
        for line in request.headers.getall("Sec-WebSocket-Protocol", ())
        for p in line.split(",")
        if p.strip()
    ]
    ws_url = target.with_scheme("wss" if target.scheme == "https" else "ws")
    own_session = session is None
    client_session = session or aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar())
    try:
        try:
            upstream = await client_session.ws_connect(
                ws_url,
                headers=headers,
                protocols=protocols,
                autoping=False,
                autoclose=False,
                max_msg_size=max_msg_size,
            )
        except aiohttp.WSServerHandshakeError as exc:
            log.info("Upstream refused a websocket upgrade on %s (%s).", request.path, exc.status)
            return web.Response(status=exc.status, text=exc.message or "upgrade refused")
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            log.warning("Upstream websocket unreachable on %s: %s", request.path, exc)
            return web.Response(status=502, text="Bad Gateway")
        async with upstream:
            client = web.WebSocketResponse(
                protocols=[upstream.protocol] if upstream.protocol else (),
                autoping=False,
                autoclose=False,
                max_msg_size=max_msg_size,
            )
            await client.prepare(request)
            await _pump_both(client, upstream)
            return client
    finally:
        if own_session:
            await client_session.close()


async def _pump_both(
    client: web.WebSocketResponse, upstream: aiohttp.ClientWebSocketResponse
) -> None:
    to_upstream = asyncio.create_task(_pump(client, upstream), name="ws-to-upstream")
    to_client = asyncio.create_task(_pump(upstream, client), name="ws-to-client")
    done, pending = await asyncio.wait(
        {to_upstream, to_client}, return_when=asyncio.FIRST_COMPLETED
    )
    for task in pending:
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    for task in done:
        task.result()


Socket = web.WebSocketResponse | aiohttp.ClientWebSocketResponse


async def _pump(source: Socket, sink: Socket) -> None:
    """Copy frames from source to sink; a close on one side closes the other with its code."""
    async for msg in source:
        if msg.type is WSMsgType.TEXT:
            await sink.send_str(msg.data)
        elif msg.type is WSMsgType.BINARY:
            await sink.send_bytes(msg.data)
        elif msg.type is WSMsgType.PING:
            await sink.ping(msg.data)
        elif msg.type is WSMsgType.PONG:
            await sink.pong(msg.data)
        elif msg.type is WSMsgType.CLOSE:
            await sink.close(code=msg.data or 1000, message=(msg.extra or "").encode())
            await source.close()
            return
        elif msg.type in (WSMsgType.ERROR, WSMsgType.CLOSED, WSMsgType.CLOSING):
            break
    # The source ended without a close frame: end the other side too.
    await sink.close(code=source.close_code or 1011)
