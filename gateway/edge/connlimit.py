"""Accepted connections in, the server's protocol out — or a 503 and a close past the bounds.

aiohttp accepts every connection it is offered: 4,000 idle sockets from one prober were
4,000 open handlers. `ConnectionLimits` wraps the server's protocol factory and counts open
connections, in all and per socket peer (peers in `trusted_proxies` are exempt from the
per-peer bound: behind nginx every connection comes from it).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import gc
import ipaddress
import logging
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any, cast

from aiohttp import web

from gateway.edge.identity import Network

log = logging.getLogger("gateway.connections")

_BODY = b'{"error": "too many connections", "detail": "retry in a moment, with fewer"}'
_REFUSAL = (
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
    b"Retry-After: 1\r\nConnection: close\r\nContent-Length: %d\r\n\r\n%s"
) % (len(_BODY), _BODY)


class ConnectionLimits:
    """A protocol factory that refuses connections past `total` or `per_peer` open ones."""

    def __init__(
        self,
        factory: Callable[[], asyncio.BaseProtocol],
        *,
        total: int,
        per_peer: int,
        exempt: Sequence[Network] = (),
    ) -> None:
        self.factory = factory
        self.total = total
        self.per_peer = per_peer
        self.exempt = tuple(exempt)
        self.open = 0
        self.by_peer: Counter[str] = Counter()
        self.refused = 0
        self.peak = 0  # most connections open at once since memory was last given back
        self.trims = 0

    def __call__(self) -> asyncio.Protocol:
        """A guard for one new connection."""
        return _Guard(self)

    def admit(self, peer: str) -> bool:
        """Count a new connection from `peer`; False (not counted) when over a bound."""
        capped = not _in(peer, self.exempt)
        if self.open >= self.total or (capped and self.by_peer[peer] >= self.per_peer):
            self.refused += 1
            if self.refused == 1 or self.refused % 1000 == 0:
                log.warning(
                    "Refusing connections: %d open (max_connections %d, %d per peer); "
                    "%d refused so far.",
                    self.open,
                    self.total,
                    self.per_peer,
                    self.refused,
                )
            return False
        self.open += 1
        self.peak = max(self.peak, self.open)
        self.by_peer[peer] += 1
        return True

    def release(self, peer: str) -> None:
        """A counted connection closed."""
        self.open -= 1
        left = self.by_peer[peer] - 1
        if left > 0:
            self.by_peer[peer] = left
        else:
            del self.by_peer[peer]
        if self.peak >= _STORM and self.open <= self.peak // 8:
            # A storm of connections is over: hand the heap pages it left free back to the
            # system, or the worker keeps its peak size for good.
            self.peak = self.open
            self.trims += 1
            asyncio.get_running_loop().call_soon(give_memory_back)


_STORM = 256  # connections open at once that count as a storm worth trimming after


def give_memory_back() -> None:
    """`malloc_trim(0)`: return free heap pages to the system (glibc only; else nothing)."""
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def _in(peer: str, networks: Sequence[Network]) -> bool:
    try:
        address = ipaddress.ip_address(peer.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return any(address in net for net in networks)


class _Guard(asyncio.Protocol):
    """The server's own protocol behind a count; the transport talks to this object."""

    def __init__(self, limits: ConnectionLimits) -> None:
        self.limits = limits
        self.inner: Any = None
        self.peer = ""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        peername = transport.get_extra_info("peername")
        self.peer = str(peername[0]) if isinstance(peername, tuple | list) and peername else ""
        if not self.limits.admit(self.peer):
            # uvloop's transports are not asyncio.Transport subclasses: cast, don't check.
            stream = cast(asyncio.Transport, transport)
            stream.write(_REFUSAL)
            stream.close()
            return
        self.inner = self.limits.factory()
        self.inner.connection_made(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.inner is not None:
            self.limits.release(self.peer)
            self.inner.connection_lost(exc)
            self.inner = None

    def data_received(self, data: bytes) -> None:
        if self.inner is not None:
            self.inner.data_received(data)

    def eof_received(self) -> bool | None:
        if self.inner is not None:
            return bool(self.inner.eof_received())
        return None

    def pause_writing(self) -> None:
        if self.inner is not None:
            self.inner.pause_writing()

    def resume_writing(self) -> None:
        if self.inner is not None:
            self.inner.resume_writing()


class LimitedSite(web.TCPSite):
    """`web.TCPSite` whose connections pass through `ConnectionLimits` first."""

    def __init__(
        self,
        runner: web.BaseRunner,
        host: str,
        port: int,
        *,
        total: int,
        per_peer: int,
        exempt: Sequence[Network] = (),
        reuse_port: bool = False,
    ) -> None:
        super().__init__(runner, host, port, reuse_port=reuse_port)
        self.total = total
        self.per_peer = per_peer
        self.exempt = exempt
        self.limits: ConnectionLimits | None = None

    async def start(self) -> None:
        """Listen, as TCPSite does, with the limits in front of the server's protocol."""
        await web.BaseSite.start(self)
        server = self._runner.server
        assert server is not None
        self.limits = ConnectionLimits(
            server, total=self.total, per_peer=self.per_peer, exempt=self.exempt
        )
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            self.limits,
            self._host,
            self._port,
            backlog=self._backlog,
            reuse_address=self._reuse_address,
            reuse_port=self._reuse_port,
        )
