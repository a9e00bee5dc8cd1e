"""A pool of asyncpg connections to the store's database that outlives server restarts.

`Database.run(work)` runs `work(conn)` in a transaction on a pooled connection. When the
server is unreachable, restarting, failing over or cut the connection (and on deadlocks and
serialization failures, which PostgreSQL asks clients to retry), the pool's connections are
replaced and `work` runs again, with backoff, for up to `reconnect_timeout` seconds; then
`DatabaseUnavailable` is raised (callers answer 503 with Retry-After). A background health
check pings the server every `health_interval` seconds so a dead pool is noticed, and
replaced, before a request finds out.

Exceptions: `DatabaseUnavailable` (retry later) is the only one this module adds; SQL
errors (`asyncpg.PostgresError` subclasses other than the transient ones) pass through.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, TypeAlias, TypeVar
from urllib.parse import urlsplit

import asyncpg
import asyncpg.exceptions as pg_errors

if TYPE_CHECKING:
    from asyncpg.pool import PoolConnectionProxy

    # What `run` hands to its work: a pooled connection (any asyncpg Connection method).
    Conn: TypeAlias = PoolConnectionProxy[asyncpg.Record]

log = logging.getLogger("gateway.postgres")

T = TypeVar("T")

# The store's tables live in a schema of their own, so a database shared with an
# application never mixes their tables with ours.
SCHEMA = "capigw"
# A health check slower than this counts as a failure.
PING_TIMEOUT = 2.0
# The server going away, not coming back yet, or cutting us off.
LOST: tuple[type[BaseException], ...] = (
    OSError,  # refused, reset, unreachable
    TimeoutError,  # connect timeout
    pg_errors.PostgresConnectionError,  # class 08, incl. ConnectionDoesNotExistError
    pg_errors.CannotConnectNowError,  # 57P03: starting up or shutting down
    pg_errors.AdminShutdownError,  # 57P01: pg_ctl stop/restart, failover
    pg_errors.CrashShutdownError,  # 57P02
    pg_errors.TooManyConnectionsError,  # 53300: other replicas hold every slot for now
    # A pooled connection the server ended while it sat idle (pg_ctl stop sends FATAL, then
    # closes): asyncpg may hand it out having read the error but not yet the close, and the
    # next statement fails with "cannot switch to state 11; another operation (2) is in
    # progress".
    pg_errors.InternalClientError,
)
# PostgreSQL's own advice for these is: run the transaction again.
_TRANSIENT: tuple[type[BaseException], ...] = (
    pg_errors.DeadlockDetectedError,
    pg_errors.SerializationError,
    # Another replica migrated the schema under a statement this connection had prepared;
    # asyncpg drops the stale statement, the next run prepares it afresh.
    pg_errors.InvalidCachedStatementError,
)

# InterfaceError: a ping cut by its timeout mid-query leaves asyncpg cancelling it, and the
# release that follows can fail with "another operation is in progress" (the pool drops that
# connection). That is a failed ping, not a reason for the health check to die.
_PING_FAILED: tuple[type[BaseException], ...] = (
    *LOST,
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
)


class DatabaseUnavailable(Exception):
    """The database could not be reached (or kept failing) within `reconnect_timeout`."""


def describe(dsn: str) -> str:
    """The DSN without its password, for messages and logs."""
    parts = urlsplit(dsn)
    host = parts.hostname or "localhost"
    port = f":{parts.port}" if parts.port else ""
    user = f"{parts.username}@" if parts.username else ""
    return f"{parts.scheme}://{user}{host}{port}{parts.path}"


class Database:
    """The store's connection pool. Create with `await Database.open(dsn)`, end with `close()`."""

    def __init__(
        self,
        pool: asyncpg.Pool[asyncpg.Record],
        dsn: str,
        *,
        reconnect_timeout: float,
        health_interval: float,
    ) -> None:
        self.name = describe(dsn)
        self._pool = pool
        self._reconnect_timeout = reconnect_timeout
        self._health_interval = health_interval
        self._health: asyncio.Task[None] | None = None
        self._stop = asyncio.Event()
        # What the health check and the last failures saw, for /health and the dashboard.
        self.healthy = True
        self.last_error: str | None = None
        # Times a connection was found lost and the pool replaced its connections.
        self.reconnects = 0

    @classmethod
    async def open(
        cls,
        dsn: str,
        *,
        min_size: int = 1,
        max_size: int = 10,
        connect_timeout: float = 5.0,
        command_timeout: float = 30.0,
        reconnect_timeout: float = 10.0,
        health_interval: float = 5.0,
    ) -> Database:
        """Open the pool (waiting up to `reconnect_timeout` for the server) and start checks.

        `health_interval` 0 turns the background health check off.
        """
        deadline = time.monotonic() + reconnect_timeout
        attempt = 0
        while True:
            try:
                pool = await asyncpg.create_pool(
                    dsn,
                    min_size=min_size,
                    max_size=max_size,
                    # A short store_connect_timeout bounds one attempt too.
                    timeout=min(connect_timeout, reconnect_timeout),
                    command_timeout=command_timeout,
                    server_settings={"search_path": SCHEMA, "application_name": "capi-gateway"},
                    reset=_keep_session,
                )
                break
            except LOST as exc:
                attempt += 1
                if time.monotonic() >= deadline:
                    raise DatabaseUnavailable(
                        f"PostgreSQL at {describe(dsn)} is unreachable ({_what(exc)}); check "
                        "that the server runs and that --buffer names it correctly"
                    ) from exc
                await asyncio.sleep(_backoff(attempt))
            except pg_errors.InvalidPasswordError as exc:
                raise DatabaseUnavailable(
                    f"PostgreSQL at {describe(dsn)} refused the password: fix the user or "
                    "password in the postgresql:// URL"
                ) from exc
            except pg_errors.InvalidCatalogNameError as exc:
                raise DatabaseUnavailable(
                    f"PostgreSQL at {describe(dsn)}: the database does not exist; create it "
                    "(createdb) or name an existing one in the postgresql:// URL"
                ) from exc
        db = cls(pool, dsn, reconnect_timeout=reconnect_timeout, health_interval=health_interval)
        if health_interval > 0:
            db._health = asyncio.create_task(db._health_loop(), name="postgres-health")
        return db

    async def run(
        self,
        work: Callable[[Conn], Awaitable[T]],
        *,
        transaction: bool = True,
        retry: bool = True,
    ) -> T:
        """`work(conn)` in a transaction; again after a lost connection or a deadlock.

        `work` must be safe to run twice: a connection lost while COMMIT was on its way
        leaves it unknown whether the first run committed (the store's writes are
        idempotent by event key for this reason). With `retry=False` a failure raises at once.
        """
        deadline = time.monotonic() + self._reconnect_timeout
        attempt = 0
        while True:
            try:
                async with self._pool.acquire() as conn:
                    if not transaction:
                        result = await work(conn)
                    else:
                        async with conn.transaction():
                            result = await work(conn)
                if not self.healthy:
                    self.healthy, self.last_error = True, None
                return result
            except LOST as exc:
                await self._lost(exc)
                error: BaseException = exc
            except _TRANSIENT as exc:
                error = exc
            attempt += 1
            if not retry or time.monotonic() >= deadline:
                raise DatabaseUnavailable(
                    f"PostgreSQL at {self.name} is unavailable ({_what(error)})"
                ) from error
            await asyncio.sleep(min(_backoff(attempt), max(0.0, deadline - time.monotonic())))

    async def fetchval(self, sql: str, *args: object) -> object:
        """One value of one statement, outside an explicit transaction."""

        async def one(conn: Conn) -> object:
            return await conn.fetchval(sql, *args)

        return await self.run(one, transaction=False)

    async def ping(self) -> bool:
        """Whether the server answers `SELECT 1` within `PING_TIMEOUT` seconds."""
        try:
            async with asyncio.timeout(PING_TIMEOUT), self._pool.acquire() as conn:
                await conn.fetchval("SELECT 1")
        except _PING_FAILED as exc:
            await self._lost(exc)
            return False
        self.healthy, self.last_error = True, None
        return True

    @contextlib.asynccontextmanager
    async def connection(self) -> AsyncIterator[Conn]:
        """A pooled connection as is: no retry (for the migrations' session-level lock).

        Its session state (advisory locks, settings) is reset when it goes back to the pool,
        which the pool does not do for `run` (see `_keep_session`).
        """
        async with self._pool.acquire() as conn:
            try:
                yield conn
            finally:
                await conn.reset()

    async def _lost(self, exc: BaseException) -> None:
        self.healthy, self.last_error = False, _what(exc)
        self.reconnects += 1
        # Every idle connection went down with the one that failed: replace them all on
        # their next acquire rather than let each request find one dead.
        await self._pool.expire_connections()
        log.warning("Lost the connection to PostgreSQL at %s: %s", self.name, self.last_error)

    async def _health_loop(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), self._health_interval)
                return
            await self.ping()

    async def close(self) -> None:
        """Stop the health check and close every connection (waiting for those in use)."""
        self._stop.set()
        if self._health is not None:
            await self._health
            self._health = None
        try:
            await asyncio.wait_for(self._pool.close(), 10)
        except TimeoutError:
            self._pool.terminate()


async def _keep_session(conn: asyncpg.Connection[asyncpg.Record]) -> None:
    """The pool's reset of a released connection: nothing beyond asyncpg's rollback of an
    open transaction.

    asyncpg's default runs `pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN *; RESET ALL` on
    every release, one round trip more per use: half the round trips of a claim or of a
    recorded result. The work `run` hands a connection to leaves no session state (no
    SET, LISTEN, cursors or session locks; the LISTEN connection is outside the pool);
    `connection()`, which may, resets its connection itself.
    """


def _backoff(attempt: int) -> float:
    # Full jitter: replicas reconnecting after one failover spread out instead of stampeding.
    return random.uniform(0, min(1.0, 0.05 * 2**attempt))


def _what(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
