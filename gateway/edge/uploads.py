"""The visitor's request body on its way to the site: size limit, stall and rate deadlines.

Split from the proxy, which hands a RequestBody to aiohttp's client (bodies never take the
lean client's path).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable

import aiohttp

from gateway.edge.bodies import BodyCopy


class BodyTooLarge(Exception):
    """The client sent more than max_upload_mb."""


class ClientTooSlow(Exception):
    """The client stopped sending its body for longer than client_body_timeout."""


class RequestBody:
    """The visitor's request body on its way up, with the size limit and stall deadline.

    aiohttp does not reliably end the upstream call when the body generator fails, so
    `guard` races the call against the generator's failure and reports ours first.
    """

    def __init__(
        self,
        content: aiohttp.StreamReader,
        limit: int,
        stall: float,
        *,
        min_rate: int = 0,
        copy: BodyCopy | None = None,
    ) -> None:
        self.content = content
        self.limit = limit
        self.stall = stall
        self.min_rate = min_rate
        self.copy = copy
        self.prefix = bytearray()
        self.total = 0
        self.started = time.monotonic()
        self.failed: asyncio.Future[Exception] = asyncio.get_running_loop().create_future()

    async def buffer(self, bound: int) -> bool:
        """Read up to `bound` bytes into `prefix`; True when that was the whole body."""
        while len(self.prefix) <= bound:
            chunk = await self._next()
            if not chunk:
                return True
            self.prefix += chunk
        return False

    async def chunks(self) -> AsyncIterator[bytes]:
        """The body, chunk by chunk (what `buffer` read first), while within its bounds."""
        if self.prefix:
            yield bytes(self.prefix)
            self.prefix = bytearray()
        while chunk := await self._next():
            yield chunk

    async def _next(self) -> bytes:
        try:
            chunk = await asyncio.wait_for(self.content.readany(), self._patience())
        except TimeoutError:
            # A slow-body client must not hold a gateway and an upstream connection.
            raise self._fail(ClientTooSlow()) from None
        self.total += len(chunk)
        if self.total > self.limit:
            # Raising (not ending) makes aiohttp abort the upstream request instead of
            # finishing it with a truncated body.
            raise self._fail(BodyTooLarge())
        if chunk and self.copy is not None:
            self.copy.feed(chunk)
        return chunk

    def _patience(self) -> float:
        """How long the next read may take: the stall bound, and the minimum average rate
        (after a grace of one stall bound), so a byte every few seconds is not enough."""
        if not self.min_rate:
            return self.stall
        allowed = self.stall + self.total / self.min_rate
        left = allowed - (time.monotonic() - self.started)
        return max(0.0, min(self.stall, left))

    def _fail(self, exc: Exception) -> Exception:
        if not self.failed.done():
            self.failed.set_result(exc)
        return exc

    async def _failure(self) -> aiohttp.ClientResponse:
        # Same result type as the call, so the two can be raced with asyncio.wait.
        # Shielded: cancelling this watcher must not cancel the shared future.
        raise await asyncio.shield(self.failed)

    async def guard(self, call: Awaitable[aiohttp.ClientResponse]) -> aiohttp.ClientResponse:
        """The upstream response, unless the body failed first (then raise why)."""
        task = asyncio.ensure_future(call)
        watcher = asyncio.ensure_future(self._failure())
        try:
            await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            watcher.cancel()
            if not task.done():
                task.cancel()
        if self.failed.done() and not self.failed.cancelled():
            if task.done() and not task.cancelled() and task.exception() is None:
                task.result().close()
            raise self.failed.result()
        return task.result()
