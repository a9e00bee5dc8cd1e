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


# RFC 6455 §7.4: codes a close frame may carry; others (1005, 1006, 1015, ...) are local.
_GOING_AWAY = 1001
_INTERNAL_ERROR = 1011
# A close on one side ends the other direction by itself; this only bounds a peer that never
# answers the close handshake (aiohttp gives up on its own after 10 s).
_CLOSE_GRACE = 15.0


def _sendable(code: int | None) -> bool:
    return code is not None and (
        code in (1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014)
        or 3000 <= code <= 4999
    )


async def _pump_both(
    client: web.WebSocketResponse, upstream: aiohttp.ClientWebSocketResponse
) -> None:
    to_upstream = asyncio.create_task(
        _pump(client, upstream, gone=_GOING_AWAY), name="ws-to-upstream"
    )
    to_client = asyncio.create_task(
        _pump(upstream, client, gone=_INTERNAL_ERROR), name="ws-to-client"
    )
    tasks = {to_upstream, to_client}
    try:
        done, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        if pending and all(task.exception() is None for task in done):
            # The finished direction closed both sockets (or is about to, through the other
            # one): let the close handshake finish instead of cutting it off.
            _, pending = await asyncio.wait(pending, timeout=_CLOSE_GRACE)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    for task in tasks:
        if task.cancelled():
            continue
        exc = task.exception()
        if isinstance(exc, aiohttp.ClientError | ConnectionError):
            log.info("Websocket relay ended: %s", exc)
        elif exc is not None:
            raise exc


Socket = web.WebSocketResponse | aiohttp.ClientWebSocketResponse


async def _pump(source: Socket, sink: Socket, *, gone: int) -> None:
    """Copy frames from source to sink; a close on one side closes the other with its code.

    Not `async for`: it stops at a close frame without handing it over, and the code and
    reason would be lost.
    """
    while True:
        msg = await source.receive()
        if msg.type is WSMsgType.TEXT:
            await sink.send_str(msg.data)
        elif msg.type is WSMsgType.BINARY:
            await sink.send_bytes(msg.data)
        elif msg.type is WSMsgType.PING:
            await sink.ping(msg.data)
        elif msg.type is WSMsgType.PONG:
            await sink.pong(msg.data)
        elif msg.type is WSMsgType.CLOSE:
            code = msg.data if _sendable(msg.data) else 1000
            reason = (msg.extra or "").encode()
            # Pass the close on (this waits for the other side's answer), then answer the
            # side that started it with the same code, as RFC 6455 §5.5.1 asks.
            await sink.close(code=code, message=reason)
            await source.close(code=code, message=reason)
            return
        elif msg.type is WSMsgType.CLOSING:
            return  # the other direction is closing both sockets
        else:
            # CLOSED or ERROR: the source went away without a close frame.
            await sink.close(code=gone)
            return
