"""A pooled keep-alive HTTP/1.1 client for the proxy's body-less GET and HEAD requests.

aiohttp's ClientSession spends more CPU on a proxied asset than the rest of the gateway
(request object, connector bookkeeping, tracing hooks, cookie and redirect machinery the
proxy turns off anyway). This client does only what a transparent hop needs: the already
filtered headers serialized in C, written on a pooled connection, the answer parsed by
aiohttp's own C response parser (llhttp, the parser aiohttp's client and server use, so
limits and leniency stay the same; no new dependency) into the StreamReader the proxy
already streams from, with its flow control.

Reuse rules (RFC 9112 §9): a connection goes back to the pool only after a complete,
length-delimited response without `Connection: close`; anything else is closed. A body-less
idempotent request whose *reused* connection died before the first byte of the answer is
sent once more on a fresh connection, as nginx's proxy_next_upstream does: the origin
closed an idle connection while we were picking it, nothing was processed.
"""

from __future__ import annotations

import asyncio
import ssl
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp.http_writer import _serialize_headers
from aiohttp.streams import EMPTY_PAYLOAD, StreamReader
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from gateway.edge.upstream_conn import IDEMPOTENT, UpstreamError, UpstreamTimeout, _Conn, _Dropped

__all__ = ["IDEMPOTENT", "UpstreamClient", "UpstreamError", "UpstreamResponse", "UpstreamTimeout"]


class UpstreamResponse:
    """The status, headers and streamed body of one answer (what the proxy reads)."""

    __slots__ = ("_conn", "content", "headers", "raw_headers", "reason", "status")

    def __init__(self, conn: _Conn, message: Any, payload: StreamReader) -> None:
        self._conn: _Conn | None = conn
        self.status: int = message.code
        self.reason: str = message.reason
        self.headers: CIMultiDictProxy[str] = message.headers
        # The fields as the parser split them, bytes (the asset lane copies these).
        self.raw_headers: tuple[tuple[bytes, bytes], ...] = message.raw_headers
        self.content = payload

    def release(self) -> None:
        """Back to the pool if the answer was read to its clean end; closed otherwise."""
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.client._release(conn)

    def close(self) -> None:
        """Drop the connection, whatever is left unread."""
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()


class UpstreamClient:
    """At most `limit` connections to one origin, idle ones kept `keepalive` seconds."""

    def __init__(
        self,
        origin: URL,
        *,
        limit: int,
        keepalive: float,
        connect_timeout: float | None,
        read_timeout: float | None,
        total_timeout: float | None,
        max_header_bytes: int,
    ) -> None:
        self.host = origin.raw_host or "localhost"
        self.port = origin.port or (443 if origin.scheme == "https" else 80)
        self.ssl: ssl.SSLContext | None = (
            ssl.create_default_context() if origin.scheme == "https" else None
        )
        self.limit = limit
        self.keepalive = keepalive
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout or 0.0
        self.total_timeout = total_timeout or 0.0
        self.max_header_bytes = max_header_bytes
        self._idle: list[_Conn] = []  # oldest first; taken from the end (warmest)
        self._open = 0
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._sweeper: asyncio.TimerHandle | None = None
        self._closed = False

    async def request(
        self, method: str, target: str, headers: CIMultiDict[str]
    ) -> UpstreamResponse:
        """Send one body-less request; its answer once the status and headers are in.

        Raises TimeoutError subclasses for the 504 cases, aiohttp.ClientError subclasses
        or OSError for the 502 ones.
        """
        return await self.send(method, self.wire(method, target, headers))

    @staticmethod
    def wire(method: str, target: str, headers: CIMultiDict[str]) -> bytes:
        """The request line and fields as `send` takes them."""
        # C serializer: refuses CR/LF in names and values (no header injection).
        return _serialize_headers(f"{method} {target} HTTP/1.1", headers)

    async def send(
        self,
        method: str,
        wire: bytes,
        meanwhile: Callable[[], Awaitable[None]] | None = None,
    ) -> UpstreamResponse:
        """`request` for a request already on the wire (request line, fields, blank line).

        `meanwhile` runs once the request is written, while the site works on it (the
        page path's own preparations); it must not raise."""
        head = method == "HEAD"
        # A warm idle connection without a coroutine of its own (nearly every request), and
        # the exchange awaited here: each coroutine level more is resumed on every wake-up.
        conn = self._take_idle() or await self._acquire(fresh=False)
        try:
            answer = self._send(conn, wire, head)
            if meanwhile is not None:
                try:
                    await meanwhile()
                except BaseException:
                    # Cancelled while preparing: nobody awaits the answer now, and the
                    # connection's close must not leave an exception in it unretrieved.
                    answer.cancel()
                    raise
            message, payload = await answer
        except _Dropped:
            conn.close()
            if method not in IDEMPOTENT:
                raise
            conn = await self._acquire(fresh=True)
            try:
                message, payload = await self._send(conn, wire, head)
            except BaseException:
                conn.close()
                raise
        except BaseException:
            # Timed out, garbled, or the visitor left: nothing more will be read here.
            conn.close()
            raise
        return UpstreamResponse(conn, message, payload if payload is not None else EMPTY_PAYLOAD)

    def _send(
        self, conn: _Conn, wire: bytes, head: bool
    ) -> asyncio.Future[tuple[Any, StreamReader]]:
        """Write the request on `conn`; the future of its answer's status and headers."""
        waiter = conn.start(head)
        transport = conn.transport
        if transport is None or transport.is_closing():
            conn.close()
            raise (
                _Dropped("the pooled connection was closed")
                if conn.reused
                else UpstreamError("the site closed the connection")
            )
        transport.write(wire)
        return waiter

    # -- the pool --------------------------------------------------------------------------

    async def _acquire(self, *, fresh: bool) -> _Conn:
        if not fresh:
            conn = self._take_idle()
            if conn is not None:
                return conn
        try:
            return await asyncio.wait_for(self._slot_then_connect(fresh), self.connect_timeout)
        except TimeoutError:
            raise UpstreamTimeout("no connection to the site in time") from None

    async def _slot_then_connect(self, fresh: bool) -> _Conn:
        while True:
            if not fresh:
                conn = self._take_idle()
                if conn is not None:
                    return conn
            if self._open < self.limit:
                # Taken before the first await: concurrent callers cannot overshoot the limit.
                self._open += 1
                return await self._connect()
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            try:
                await waiter
            finally:
                if not waiter.done():
                    self._waiters.remove(waiter)

    async def _connect(self) -> _Conn:
        """A new connection in the slot the caller took."""
        loop = asyncio.get_running_loop()
        try:
            if self._closed:
                raise UpstreamError("the upstream client is closed")
            _, conn = await loop.create_connection(
                lambda: _Conn(loop, self), self.host, self.port, ssl=self.ssl
            )
        except BaseException:
            self._open -= 1
            self._wake()
            raise
        return conn

    def _take_idle(self) -> _Conn | None:
        idle = self._idle
        while idle:
            conn = idle.pop()
            if conn.closed or conn.transport is None or conn.transport.is_closing():
                continue
            if conn._loop.time() - conn.idle_since >= self.keepalive:
                conn.close()
                continue
            conn.reused = True
            return conn
        return None

    def _release(self, conn: _Conn) -> None:
        if not conn.reusable or self._closed:
            conn.close()
            return
        conn.busy = False
        conn.payload = None
        conn.idle_since = conn._loop.time()
        self._idle.append(conn)
        if self._sweeper is None:
            self._sweeper = conn._loop.call_at(conn.idle_since + self.keepalive, self._sweep)
        self._wake()

    def _forget(self, conn: _Conn) -> None:
        """A connection closed: its slot is free, and it is no longer idle."""
        if conn.counted:
            conn.counted = False
            self._open -= 1
            self._wake()
        if conn in self._idle:
            self._idle.remove(conn)

    def _wake(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    def _sweep(self) -> None:
        # Idle connections are closed by us before the origin's own idle timeout closes
        # them under a request (keepalive below the site's).
        self._sweeper = None
        idle = self._idle
        if not idle:
            return
        now = idle[0]._loop.time()
        while idle and now - idle[0].idle_since >= self.keepalive:
            idle[0].close()  # removes itself from the list
        if idle:
            self._sweeper = idle[0]._loop.call_at(idle[0].idle_since + self.keepalive, self._sweep)

    async def close(self) -> None:
        """Close every idle connection; busy ones close when released."""
        self._closed = True
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        for conn in list(self._idle):
            conn.close()
