"""One pooled connection of the proxy's lean client (`gateway.edge.upstream`): the protocol
that parses an answer with aiohttp's own C response parser (llhttp) into a StreamReader,
times the exchange and decides whether the connection may carry another.

Reuse rules (RFC 9112 §9): only a complete, length-delimited answer without
`Connection: close` on a connection that sent nothing more leaves it reusable.
"""

from __future__ import annotations

import asyncio
from typing import Any, Protocol

import aiohttp
from aiohttp.base_protocol import BaseProtocol
from aiohttp.http import HttpResponseParser
from aiohttp.streams import StreamReader

IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "TRACE"})
_READ_LIMIT = 2**16  # the StreamReader pauses the socket at twice this (as aiohttp's client)


class UpstreamError(aiohttp.ClientConnectionError):
    """The origin closed, reset or garbled the exchange (a 502, or an aborted body)."""


class _Dropped(UpstreamError):
    """A reused connection closed before any byte of the answer (safe to retry)."""


class UpstreamTimeout(aiohttp.ServerTimeoutError):
    """No connection, no answer or no body byte in time (a TimeoutError: 504)."""


class Pool(Protocol):
    """What a connection reads from, and reports to, the client that pools it."""

    max_header_bytes: int
    read_timeout: float
    total_timeout: float

    def _forget(self, conn: _Conn) -> None: ...

    def _release(self, conn: _Conn) -> None: ...


class _Conn(BaseProtocol):
    """One upstream connection; the state of the exchange on it lives here too."""

    def __init__(self, loop: asyncio.AbstractEventLoop, client: Pool) -> None:
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
