"""The dashboard's reads as one small interface both stores provide.

The admin side asks these questions and never sees which store answers: `SqliteDashboard`
runs them on a read-only connection to the outbox file (delivery/dashboardreads.py), and
`gateway.delivery.postgres.dashboard.PgDashboard` on the PostgreSQL store's pool.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import aiosqlite

from gateway.delivery import reads
from gateway.delivery.reads import BlockedPixel, DeadRow


class DashboardReads(Protocol):
    """The queries behind the dashboard page, each bounded in time or by state."""

    async def events_per_minute(
        self, start: float, sites: Sequence[str] | None = None
    ) -> list[tuple[str, int, int]]:
        """(event name, minute since `start`, rows) for the rows stored since `start`."""
        ...

    async def undelivered_counts(
        self, sites: Sequence[str] | None = None
    ) -> dict[tuple[str, bool], int]:
        """Rows not delivered, by (state, tried at least once)."""
        ...

    async def delivered_since(
        self, since: float, sites: Sequence[str] | None = None
    ) -> dict[str, int]:
        """Rows sent (or recorded by --dry-run) since `since`, by state."""
        ...

    async def blocked_pixels(self) -> tuple[BlockedPixel, ...]:
        """Pixels parked because Meta refused their token, by pixel id."""
        ...

    async def dead_letters(
        self, limit: int, sites: Sequence[str] | None = None
    ) -> tuple[DeadRow, ...]:
        """The newest `limit` dead letters, newest first."""
        ...

    async def hour_groups(
        self,
        start: float,
        end: float,
        keys: Sequence[str],
        sites: Sequence[str] | None = None,
    ) -> list[tuple[Any, ...]]:
        """The rows stored in [start, end) grouped by event name, source and rule (see
        `gateway.delivery.reads.hour_groups` for the columns)."""
        ...


class SqliteDashboard:
    """`DashboardReads` on a read-only connection to a SQLite outbox file."""

    def __init__(self, conn: aiosqlite.Connection) -> None:
        self.conn = conn

    async def events_per_minute(
        self, start: float, sites: Sequence[str] | None = None
    ) -> list[tuple[str, int, int]]:
        """(event name, minute since `start`, rows) for the rows stored since `start`."""
        return await reads.events_per_minute(self.conn, start, sites)

    async def undelivered_counts(
        self, sites: Sequence[str] | None = None
    ) -> dict[tuple[str, bool], int]:
        """Rows not delivered, by (state, tried at least once)."""
        return await reads.undelivered_counts(self.conn, sites)

    async def delivered_since(
        self, since: float, sites: Sequence[str] | None = None
    ) -> dict[str, int]:
        """Rows sent (or recorded by --dry-run) since `since`, by state."""
        return await reads.delivered_since(self.conn, since, sites)

    async def blocked_pixels(self) -> tuple[BlockedPixel, ...]:
        """Pixels parked because Meta refused their token, by pixel id."""
        return await reads.blocked_pixels(self.conn)

    async def dead_letters(
        self, limit: int, sites: Sequence[str] | None = None
    ) -> tuple[DeadRow, ...]:
        """The newest `limit` dead letters, newest first."""
        return await reads.dead_letters(self.conn, limit, sites)

    async def hour_groups(
        self,
        start: float,
        end: float,
        keys: Sequence[str],
        sites: Sequence[str] | None = None,
    ) -> list[tuple[Any, ...]]:
        """The rows stored in [start, end) grouped by event name, source and rule."""
        return await reads.hour_groups(self.conn, start, end, keys, sites)


def dashboard_reads(source: DashboardReads | aiosqlite.Connection) -> DashboardReads:
    """The reads of `source`: a SQLite connection is wrapped, a store's reads kept as they are."""
    if isinstance(source, aiosqlite.Connection):
        return SqliteDashboard(source)
    return source
