"""Due-work notices between replicas: one NOTIFY per group commit out, wake-ups in.

A replica's sender sleeps while nothing is due. Its own commits wake it directly
(`PgOutbox.wake`); another replica's commits reach it as a NOTIFY on `CHANNEL`, sent inside
the committing transaction (so it is delivered only if the rows are), carrying when the
earliest of them becomes due. Each replica LISTENs on a connection of its own, outside the
pool; when that connection is lost (a restart, a failover) it reconnects with backoff and
wakes its sender once, since notices sent meanwhile are gone. The sender's poll interval
stays as the fallback, so a missed notice delays a send, never loses one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import asyncpg

from gateway.delivery.postgres.pool import LOST, PING_TIMEOUT, describe

if TYPE_CHECKING:
    from gateway.delivery.postgres.pool import Conn

log = logging.getLogger("gateway.postgres")

CHANNEL = "capigw_due"
_FAILED: tuple[type[BaseException], ...] = (*LOST, asyncpg.PostgresError)


def new_sender_id() -> str:
    """A replica's id in its notices, so that it can ignore its own."""
    return uuid.uuid4().hex[:12]


async def announce(conn: Conn, me: str, due_at: float) -> None:
    """NOTIFY the other replicas (in the caller's transaction) that rows are due at `due_at`."""
    await conn.execute("SELECT pg_notify($1, $2)", CHANNEL, f"{me} {due_at:.3f}")


def parse(payload: str, me: str) -> float | None:
    """The due time of another replica's notice; None for our own or a malformed one."""
    sender, _, at = payload.partition(" ")
    if sender == me:
        return None
    try:
        return float(at)
    except ValueError:
        return None


class DueListener:
    """LISTENs for other replicas' notices and calls `on_due(epoch)` for each one.

    `start()` returns at once (it connects in the background); `close()` ends it.
    """

    def __init__(
        self,
        dsn: str,
        me: str,
        on_due: Callable[[float], None],
        *,
        connect_timeout: float = 5.0,
        check_interval: float = 5.0,
    ) -> None:
        self._dsn = dsn
        self._me = me
        self._on_due = on_due
        self._connect_timeout = connect_timeout
        self._check_interval = check_interval
        self._task: asyncio.Task[None] | None = None
        self._stop = asyncio.Event()
        self._lost = asyncio.Event()
        # Set while a listening connection is up (tests and /health read it).
        self.listening = asyncio.Event()
        # Connections opened so far (the first one included).
        self.connections = 0
        self.notices = 0

    def start(self) -> None:
        """Connect and listen in the background, reconnecting until `close()`."""
        self._task = asyncio.create_task(self._run(), name="postgres-listen")

    async def close(self) -> None:
        """Stop listening and close the connection."""
        self._stop.set()
        if self._task is not None:
            await self._task
            self._task = None

    def _notice(self, _conn: Any, _pid: int, _channel: str, payload: object) -> None:
        at = parse(str(payload), self._me)
        if at is not None:
            self.notices += 1
            self._on_due(at)

    def _closed(self, _conn: Any) -> None:
        self._lost.set()

    async def _run(self) -> None:
        attempt = 0
        while not self._stop.is_set():
            conn: asyncpg.Connection[Any] | None = None
            try:
                conn = await asyncpg.connect(
                    self._dsn,
                    timeout=self._connect_timeout,
                    server_settings={"application_name": "capi-gateway-listen"},
                )
                self._lost.clear()
                conn.add_termination_listener(self._closed)
                await conn.add_listener(CHANNEL, self._notice)
                self.connections += 1
                if attempt or self.connections > 1:
                    log.info("Listening for due events on %s again.", describe(self._dsn))
                    # Notices sent while we were away are lost: look once.
                    self._on_due(0.0)
                attempt = 0
                self.listening.set()
                await self._watch(conn)
            except _FAILED as exc:
                attempt += 1
                if attempt == 1:
                    log.warning(
                        "Listening for due events on %s failed (%s); the sender polls "
                        "meanwhile and this reconnects.",
                        describe(self._dsn),
                        type(exc).__name__,
                    )
            finally:
                self.listening.clear()
                if conn is not None and not conn.is_closed():
                    with contextlib.suppress(*_FAILED):
                        await asyncio.wait_for(conn.close(), PING_TIMEOUT)
            if attempt:
                delay = random.uniform(0, min(2.0, 0.05 * 2**attempt))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), delay)

    async def _watch(self, conn: asyncpg.Connection[Any]) -> None:
        """Until stopped or the connection is gone; a silent loss is found by a ping."""
        while not self._stop.is_set():
            stop = asyncio.ensure_future(self._stop.wait())
            lost = asyncio.ensure_future(self._lost.wait())
            try:
                await asyncio.wait(
                    {stop, lost}, timeout=self._check_interval, return_when="FIRST_COMPLETED"
                )
            finally:
                stop.cancel()
                lost.cancel()
            if self._stop.is_set():
                return
            if self._lost.is_set() or conn.is_closed():
                raise ConnectionResetError("the listening connection was closed")
            async with asyncio.timeout(PING_TIMEOUT):
                await conn.fetchval("SELECT 1")
