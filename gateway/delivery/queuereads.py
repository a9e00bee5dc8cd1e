"""The outbox's numbers on a read-only connection: depth per state, oldest pending, blocks,
bytes in use, `queue stats` and match-key coverage, and the connections they read on.

Plain functions over an aiosqlite connection: `BufferReader` (delivery/reads.py) runs them
for /status, /health and /metrics, the `queue` and `doctor` commands on connections of
their own. The dashboard's queries are in dashboardreads.py, the commands' own in
commandreads.py.
"""

from __future__ import annotations

import contextlib
import math
import sqlite3
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiosqlite

from gateway.delivery.schema import STATES

# The states of an event that is still to be delivered.
UNDELIVERED = ("pending", "inflight", "blocked")


@dataclass(frozen=True, slots=True)
class BlockedPixel:
    """A pixel parked because Meta refused its token."""

    pixel_id: str
    reason: str
    fbtrace_id: str | None
    since: float


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """The newest dead-lettered event's error."""

    pixel_id: str
    error: str
    fbtrace_id: str | None
    at: float


@dataclass(frozen=True, slots=True)
class QueueSnapshot:
    """The outbox's numbers at one moment."""

    states: dict[str, int]
    oldest_pending_age: float | None
    last_delivery: float | None
    blocked: tuple[BlockedPixel, ...]
    last_dead: DeadLetter | None
    used_bytes: int
    limit_bytes: int


# -- connections ----------------------------------------------------------------------------


async def open_reader(path: Path, *, must_exist: bool = False) -> aiosqlite.Connection:
    """A read-only connection to the outbox file; `must_exist`: never create a missing one."""
    where = _existing(path) if must_exist else str(path)
    conn = await aiosqlite.connect(where, uri=must_exist, isolation_level=None)
    try:
        await conn.execute("PRAGMA busy_timeout = 5000")
        await conn.execute("PRAGMA query_only = ON")
    except BaseException:
        await conn.close()
        raise
    return conn


@contextlib.asynccontextmanager
async def reading(path: Path, *, must_exist: bool = False) -> AsyncIterator[aiosqlite.Connection]:
    """`open_reader` for the length of a block: the reader never holds the writer's lock."""
    # Each query reads in its own snapshot: a cold 24-hour scan must not pin the WAL.
    conn = await open_reader(path, must_exist=must_exist)
    try:
        yield conn
    finally:
        await conn.close()


# -- the queue's numbers (status, health, /metrics, `queue stats`, doctor) --------------------


def site_filter(sites: Sequence[str] | None) -> tuple[str, list[Any]]:
    """` AND site IN (...)` and its values for `sites` (None: every row, no clause)."""
    if sites is None:
        return "", []
    return f" AND site IN ({','.join('?' * len(sites))})" if sites else " AND 0", list(sites)


async def state_counts(
    conn: aiosqlite.Connection, sites: Sequence[str] | None = None
) -> dict[str, int]:
    """Rows per state, every state present (of `sites` only, when given)."""
    states = dict.fromkeys(STATES, 0)
    only, values = site_filter(sites)
    async with conn.execute(
        f"SELECT state, COUNT(*) FROM events WHERE 1{only} GROUP BY state", values
    ) as cur:
        for state, count in await cur.fetchall():
            states[str(state)] = int(count)
    return states


async def oldest_pending(
    conn: aiosqlite.Connection, sites: Sequence[str] | None = None
) -> float | None:
    """When the oldest event still waiting to be sent was stored (Unix time)."""
    only, values = site_filter(sites)
    oldest = await scalar(
        conn,
        f"SELECT MIN(created_at) FROM events WHERE state IN ('pending','inflight'){only}",
        *values,
    )
    return None if oldest is None else float(oldest)


async def blocked_pixels(conn: aiosqlite.Connection) -> tuple[BlockedPixel, ...]:
    """Pixels parked because Meta refused their token, by pixel id."""
    async with conn.execute(
        "SELECT pixel_id, reason, fbtrace_id, since FROM blocked_pixels ORDER BY pixel_id"
    ) as cur:
        return tuple(
            BlockedPixel(str(r[0]), str(r[1]), r[2], float(r[3])) for r in await cur.fetchall()
        )


async def used_bytes(conn: aiosqlite.Connection, insights: InsightBytes | None = None) -> int:
    """Bytes of pages in use (free pages are reused before the file grows); with `insights`,
    less the tables of `APART` (see there)."""
    pages = await scalar(conn, "PRAGMA page_count")
    free = await scalar(conn, "PRAGMA freelist_count")
    size = await scalar(conn, "PRAGMA page_size")
    used = int((pages - free) * size)
    if insights is None:
        return used
    outbox = used - await insights.measure(conn)
    if outbox > insights.limit:
        # Over the bound by an old measurement: measure now before refusing anything.
        outbox = used - await insights.measure(conn, fresh=True)
    return outbox


# Tables beside the outbox that `max_buffer_mb` does not bound (each has its own bound:
# `touchpoint_retention`, the catalog's and the audiences' sizes): reports, the catalog and
# audiences must never make the outbox refuse events. PostgreSQL counts `events` alone.
APART = (
    "insight_events",
    "touchpoints",
    "catalog_items",
    "catalog_syncs",
    "audiences",
    "audience_members",
    "audience_lease",
)


@dataclass
class InsightBytes:
    """Bytes the tables of `APART` and their indexes occupy, measured at most every `every`
    seconds (dbstat walks their pages: about 0.15 s for 200 MB)."""

    limit: int = 0  # the bound: above it, a measurement is always fresh
    every: float = 60.0
    value: int = 0
    at: float = -math.inf

    async def measure(self, conn: aiosqlite.Connection, *, fresh: bool = False) -> int:
        """The last measurement, taken again when it is `every` seconds old (or `fresh`)."""
        now = time.monotonic()
        if now - self.at < self.every and not fresh:
            return self.value
        self.at = now
        try:
            async with conn.execute(
                f"SELECT name FROM sqlite_master WHERE tbl_name IN ({','.join('?' * len(APART))})",
                APART,
            ) as cur:
                names = [str(r[0]) for r in await cur.fetchall()]
            if not names:
                self.value = 0
                return 0
            self.value = int(
                await scalar(
                    conn,
                    "SELECT COALESCE(SUM(pgsize), 0) FROM dbstat('main', 1) WHERE name IN "
                    f"({','.join('?' * len(names))})",
                    *names,
                )
            )
        except sqlite3.OperationalError:
            self.value = 0  # an SQLite without dbstat: the insights count with the outbox
        return self.value


async def queue_stats(
    conn: aiosqlite.Connection, now: float | None = None, *, site: str | None = None
) -> dict[str, Any]:
    """The numbers `queue stats` and doctor show: per state, per event name, oldest, blocks.

    With `site`, that site's events only (blocked pixels are listed whoever they belong to).
    """
    now = time.time() if now is None else now
    states: dict[str, int] = dict.fromkeys(STATES, 0)
    by_name: dict[str, dict[str, int]] = {}
    sites = None if site is None else (site,)
    only, values = site_filter(sites)
    async with conn.execute(
        f"SELECT event_name, state, COUNT(*) FROM events WHERE 1{only} GROUP BY event_name, state",
        values,
    ) as cur:
        for name, state, count in await cur.fetchall():
            states[state] = states.get(state, 0) + count
            by_name.setdefault(name, {})[state] = count
    oldest = await oldest_pending(conn, sites)
    return {
        "states": states,
        "by_event_name": dict(sorted(by_name.items())),
        "oldest_pending_age": now - oldest if oldest is not None else None,
        "blocked_pixels": [
            {
                "pixel_id": b.pixel_id,
                "reason": b.reason,
                "fbtrace_id": b.fbtrace_id,
                "since": b.since,
            }
            for b in await blocked_pixels(conn)
        ],
    }


async def match_key_coverage(
    conn: aiosqlite.Connection, *, since: float
) -> dict[str, dict[str, Any]]:
    """Per event name: how many events since `since`, and per user_data key how many
    carried it as received (the first copy) and as sent (after assembly and profiles).

    `{"Purchase": {"events": 10, "keys": {"em": {"received": 0, "sent": 10}, ...}}}`;
    rows of releases before assembly count their keys as both.
    """
    out: dict[str, dict[str, Any]] = {}
    async with conn.execute(
        "SELECT event_name, received_keys, match_keys FROM events "
        "WHERE created_at >= ? AND match_keys IS NOT NULL",
        (since,),
    ) as cur:
        async for name, received, sent in cur:
            entry = out.setdefault(name, {"events": 0, "keys": {}})
            entry["events"] += 1
            for column, keys in (("received", received or sent), ("sent", sent)):
                for key in filter(None, keys.split(",")):
                    counts = entry["keys"].setdefault(key, {"received": 0, "sent": 0})
                    counts[column] += 1
    return dict(sorted(out.items()))


async def scalar(conn: aiosqlite.Connection, sql: str, *values: Any) -> Any:
    """The first column of the first row of `sql`, None without a row."""
    async with conn.execute(sql, values) as cur:
        row = await cur.fetchone()
    return row[0] if row else None


def _existing(path: Path) -> str:
    # mode=rw: a missing file is an error, not a new empty outbox.
    return f"{path.resolve().as_uri()}?mode=rw"
