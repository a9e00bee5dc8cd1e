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
from typing import Any

import aiohttp
from aiohttp.base_protocol import BaseProtocol
from aiohttp.http import HttpResponseParser
from aiohttp.http_writer import _serialize_headers
from aiohttp.streams import EMPTY_PAYLOAD, StreamReader
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "TRACE"})
_READ_LIMIT = 2**16  # the StreamReader pauses the socket at twice this (as aiohttp's client)


class UpstreamError(aiohttp.ClientConnectionError):
    """The origin closed, reset or garbled the exchange (a 502, or an aborted body)."""


class _Dropped(UpstreamError):
    """A reused connection closed before any byte of the answer (safe to retry)."""


class UpstreamTimeout(aiohttp.ServerTimeoutError):
    """No connection, no answer or no body byte in time (a TimeoutError: 504)."""


class _Conn(BaseProtocol):
    """One upstream connection; the state of the exchange on it lives here too."""

    def __init__(self, loop: asyncio.AbstractEventLoop, client: UpstreamClient) -> None:
        super().__init__(loop)
        self.client = client
        self.waiter: asyncio.Future[tuple[Any, StreamReader]] | None = None
        self.payload: StreamReader | None = None
        self.reused = False
        self.got = False  # a byte of the current answer arrived
        self.done = False  # the current answer is complete
        self.should_close = False
        self.closed = False
        self.busy = False  # an exchange is under way (its answer may still be streaming)
        self.head = False  # the parser is set up for a HEAD answer
        self.counted = True  # holds one of the client's `limit` slots
        self.idle_since = 0.0
        self.last_read = 0.0
        self.read_timer: asyncio.TimerHandle | None = None
        self.deadline: asyncio.TimerHandle | None = None

    # -- the exchange ----------------------------------------------------------------------

    def start(self, head: bool) -> asyncio.Future[tuple[Any, StreamReader]]:
        """Get ready for one answer (written right after) and return its future."""
        client = self.client
        if head or self.head or self._parser is None:
            # One parser per connection, as aiohttp's server keeps one per connection: a
            # complete message leaves llhttp ready for the next. HEAD needs its own (no
            # body follows its Content-Length).
            self._parser = HttpResponseParser(
                self,
                self._loop,
                _READ_LIMIT,
                max_line_size=client.max_header_bytes,
                max_field_size=client.max_header_bytes,
                payload_exception=aiohttp.ClientPayloadError,
                response_with_body=not head,
                read_until_eof=True,
                auto_decompress=False,
            )
            self.head = head
        self.busy = True
        self.got = self.done = False
        self.payload = None
        waiter = self.waiter = self._loop.create_future()
        now = self.last_read = self._loop.time()
        if client.read_timeout and self.read_timer is None:
            # Left running between exchanges and moved on lazily (see _read_due): most
            # exchanges arm no timer at all.
            self.read_timer = self._loop.call_at(now + client.read_timeout, self._read_due)
        if client.total_timeout:
            self.deadline = self._loop.call_at(now + client.total_timeout, self._time_out)
        return waiter

    def data_received(self, data: bytes) -> None:
        parser = self._parser
        if not self.busy or parser is None:
            if data:
                # Bytes while idle are nobody's answer: this connection cannot be trusted.
                self.should_close = True
                self.close()
            return
        if data:
            self.got = True
            self.last_read = self._loop.time()
            if self.done:
                self.should_close = True  # more than the answer: never reuse
        try:
            messages, upgraded, _ = parser.feed_data(data)
        except Exception as exc:
            self._fail(UpstreamError(f"invalid response from the site: {exc}"))
            self.close()
            return
        for message, payload in messages:
            if 100 <= message.code < 200 and message.code != 101:
                continue  # interim answers (100, 103) are dropped, as aiohttp's client does
            if self.waiter is None or upgraded or message.code == 101:
                # A second answer, or a protocol switch nobody asked for.
                self._fail(UpstreamError("unexpected response from the site"))
                self.close()
                return
            self.should_close = self.should_close or message.should_close
            waiter, self.waiter = self.waiter, None
            self.payload = payload
            if not waiter.done():
                waiter.set_result((message, payload))
            payload.on_eof(self._complete)

    def _complete(self) -> None:
        self.done = True
        if self.deadline is not None:
            self.deadline.cancel()
            self.deadline = None

    def pause_reading(self) -> None:
        super().pause_reading()
        # The visitor reads slowly, the origin is not silent: no read timeout meanwhile.
        if self.read_timer is not None:
            self.read_timer.cancel()
            self.read_timer = None

    def resume_reading(self, resume_parser: bool = True) -> None:
        super().resume_reading(resume_parser)
        timeout = self.client.read_timeout
        if timeout and self.read_timer is None and self.busy and not self.done and not self.closed:
            self.last_read = self._loop.time()
            self.read_timer = self._loop.call_at(self.last_read + timeout, self._read_due)

    def _read_due(self) -> None:
        # Moved on lazily rather than re-armed on every read or exchange: cheaper.
        self.read_timer = None
        if not self.busy or self.done or self.closed:
            return  # idle or answered: nothing to time until the next exchange
        due = self.last_read + self.client.read_timeout
        if due > self._loop.time():
            self.read_timer = self._loop.call_at(due, self._read_due)
            return
        self._time_out()

    def _time_out(self) -> None:
        self.deadline = None
        self._fail(UpstreamTimeout("the site took too long to answer"))
        self.close()

    def _fail(self, exc: BaseException) -> None:
        self.should_close = True
        waiter, self.waiter = self.waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_exception(exc)
        payload = self.payload
        if payload is not None and not payload.is_eof():
            payload.set_exception(exc)

    def _stop_timers(self) -> None:
        if self.read_timer is not None:
            self.read_timer.cancel()
            self.read_timer = None
        if self.deadline is not None:
            self.deadline.cancel()
            self.deadline = None

    # -- the connection --------------------------------------------------------------------

    @property
    def reusable(self) -> bool:
        """Whether the answer ended cleanly on an open connection that may carry another."""
        return self.done and not self.should_close and not self.closed

    def close(self) -> None:
        """Close the connection (and give its slot back at once)."""
        self.should_close = True
        self.client._forget(self)
        if self.transport is not None:
            self.transport.close()

    def connection_lost(self, exc: BaseException | None) -> None:
        self.closed = True
        self._stop_timers()
        self.client._forget(self)
        parser, self._parser = self._parser, None
        payload = self.payload
        if parser is not None and exc is None and not self.done:
            try:
                # A close-delimited body ends here; a short Content-Length or chunked body
                # raises, and the visitor's response is aborted.
                parser.feed_eof()
            except Exception as err:
                if payload is not None:
                    payload.set_exception(aiohttp.ClientPayloadError(f"body cut short: {err}"))
        if self.waiter is not None:
            reason = f"the site closed the connection{f': {exc}' if exc else ''}"
            self._fail(_Dropped(reason) if self.reused and not self.got else UpstreamError(reason))
        elif payload is not None and not payload.is_eof():
            # Reset mid-body, even of a close-delimited one: never a clean end.
            payload.set_exception(aiohttp.ClientPayloadError("the site reset the connection"))
        super().connection_lost(exc)

    def eof_received(self) -> bool | None:
        return None  # close our side too; connection_lost ends what was under way


class UpstreamResponse:
    """The status, headers and streamed body of one answer (what the proxy reads)."""

    __slots__ = ("_conn", "content", "headers", "reason", "status")

    def __init__(self, conn: _Conn, message: Any, payload: StreamReader) -> None:
        self._conn: _Conn | None = conn
        self.status: int = message.code
        self.reason: str = message.reason
        self.headers: CIMultiDictProxy[str] = message.headers
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
        # C serializer: refuses CR/LF in names and values (no header injection).
        wire = _serialize_headers(f"{method} {target} HTTP/1.1", headers)
        head = method == "HEAD"
        conn = await self._acquire(fresh=False)
        try:
            return await self._exchange(conn, wire, head)
        except _Dropped:
            if method not in IDEMPOTENT:
                raise
        conn = await self._acquire(fresh=True)
        return await self._exchange(conn, wire, head)

    async def _exchange(self, conn: _Conn, wire: bytes, head: bool) -> UpstreamResponse:
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
        try:
            message, payload = await waiter
        except BaseException:
            # Timed out, garbled, or the visitor left: nothing more will be read here.
            conn.close()
            raise
        return UpstreamResponse(conn, message, payload if payload is not None else EMPTY_PAYLOAD)

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
