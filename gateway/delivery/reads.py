"""The store's read side: every query the operator side runs, on connections of its own.

/status, /health and /metrics (through `BufferReader`), the dashboard, `queue` and `doctor`
read the outbox file here and nowhere else. They read on a read-only connection of their
own instead of the outbox's: WAL lets them read while every worker writes, so a scrape, a
page load or a health check never waits behind a group commit or a claim, and the numbers
are the same whichever worker answers (the file is the shared truth). The writes live
beside the outbox (rows.py, housekeeping.py).
"""

from __future__ import annotations

import asyncio
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


class BufferReader:
    """Reads the buffer on a connection of its own, never taking the outbox's write path.

    WAL lets it read while the workers write; scrapes and health checks therefore never
    wait behind a group commit or a claim.
    """

    def __init__(self, conn: aiosqlite.Connection, limit_bytes: int) -> None:
        self._conn = conn
        self._lock = asyncio.Lock()
        self.limit_bytes = limit_bytes
        self._insights = InsightBytes(limit=limit_bytes)

    @classmethod
    async def open(cls, path: Path, *, limit_bytes: int) -> BufferReader:
        """Open a read-only view of the (already created) buffer file."""
        return cls(await open_reader(path), limit_bytes)

    async def close(self) -> None:
        """Close the connection."""
        async with self._lock:
            await self._conn.close()

    async def used_bytes(self) -> int:
        """Bytes of pages in use (free pages are reused before the file grows), as the outbox."""
        async with self._lock:
            return await used_bytes(self._conn, self._insights)

    async def has_delivered(self) -> bool:
        """True when delivered rows exist: the outbox purges those first to make room."""
        async with self._lock:
            return bool(
                await _scalar(
                    self._conn,
                    "SELECT EXISTS (SELECT 1 FROM events WHERE state IN ('sent','sent-dry'))",
                )
            )

    async def site_states(self, sites: Sequence[str]) -> dict[str, dict[str, int]]:
        """Rows per state of each of `sites` (every state present, every site listed)."""
        out = {site: dict.fromkeys(STATES, 0) for site in sites}
        if not sites:
            return out
        only, values = site_filter(sites)
        async with (
            self._lock,
            self._conn.execute(
                f"SELECT site, state, COUNT(*) FROM events WHERE 1{only} GROUP BY site, state",
                values,
            ) as cur,
        ):
            for site, state, count in await cur.fetchall():
                out[str(site)][str(state)] = int(count)
        return out

    async def snapshot(self, sites: Sequence[str] | None = None) -> QueueSnapshot:
        """Depth per state, oldest pending age, last delivery, blocks, newest dead letter.

        With `sites`, the numbers of those sites' events only (a tenant's view).
        """
        now = time.time()
        async with self._lock:
            # One read transaction: the numbers belong to the same moment.
            await self._conn.execute("BEGIN")
            try:
                return await self._snapshot(now, sites)
            finally:
                await self._conn.execute("COMMIT")

    async def _snapshot(self, now: float, sites: Sequence[str] | None) -> QueueSnapshot:
        conn = self._conn
        only, values = site_filter(sites)
        oldest = await oldest_pending(conn, sites)
        last = await _scalar(
            conn, f"SELECT MAX(sent_at) FROM events WHERE state='sent'{only}", *values
        )
        async with conn.execute(
            "SELECT pixel_id, last_error, fbtrace_id, sent_at FROM events "
            f"WHERE state='dead'{only} ORDER BY sent_at DESC LIMIT 1",
            values,
        ) as cur:
            row = await cur.fetchone()
        dead = None
        if row is not None:
            dead = DeadLetter(str(row[0]), str(row[1] or ""), row[2], float(row[3] or 0.0))
        return QueueSnapshot(
            states=await state_counts(conn, sites),
            oldest_pending_age=max(0.0, now - oldest) if oldest is not None else None,
            last_delivery=float(last) if last is not None else None,
            blocked=await blocked_pixels(conn),
            last_dead=dead,
            used_bytes=await used_bytes(conn, self._insights),
            limit_bytes=self.limit_bytes,
        )


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
    oldest = await _scalar(
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
    pages = await _scalar(conn, "PRAGMA page_count")
    free = await _scalar(conn, "PRAGMA freelist_count")
    size = await _scalar(conn, "PRAGMA page_size")
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
                await _scalar(
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


# -- the dashboard ----------------------------------------------------------------------------


async def events_per_minute(
    conn: aiosqlite.Connection, start: float, sites: Sequence[str] | None = None
) -> list[tuple[str, int, int]]:
    """(event name, minute since `start`, rows) for the rows stored since `start`."""
    only, values = site_filter(sites)
    async with conn.execute(
        "SELECT event_name, CAST((created_at - ?) / 60 AS INTEGER) AS minute, COUNT(*) "
        f"FROM events WHERE created_at >= ?{only} GROUP BY event_name, minute",
        (start, start, *values),
    ) as cur:
        return [(str(n), int(m), int(c)) for n, m, c in await cur.fetchall()]


async def undelivered_counts(
    conn: aiosqlite.Connection, sites: Sequence[str] | None = None
) -> dict[tuple[str, bool], int]:
    """Rows not delivered, by (state, tried at least once)."""
    only, values = site_filter(sites)
    async with conn.execute(
        "SELECT state, attempts > 0, COUNT(*) FROM events "
        f"WHERE state IN ('pending','inflight','dead','blocked'){only} GROUP BY 1, 2",
        values,
    ) as cur:
        return {(str(s), bool(tried)): int(n) for s, tried, n in await cur.fetchall()}


async def delivered_since(
    conn: aiosqlite.Connection, since: float, sites: Sequence[str] | None = None
) -> dict[str, int]:
    """Rows sent (or recorded by --dry-run) since `since`, by state."""
    only, values = site_filter(sites)
    async with conn.execute(
        "SELECT state, COUNT(*) FROM events WHERE state IN ('sent','sent-dry') AND sent_at >= ?"
        f"{only} GROUP BY state",
        (since, *values),
    ) as cur:
        return {str(s): int(n) for s, n in await cur.fetchall()}


@dataclass(frozen=True, slots=True)
class DeadRow:
    """A dead letter as the dashboard lists it."""

    id: int
    pixel_id: str
    event_name: str
    event_id: str
    source: str
    attempts: int
    error: str | None
    fbtrace_id: str | None
    died_at: float | None


async def dead_letters(
    conn: aiosqlite.Connection, limit: int, sites: Sequence[str] | None = None
) -> tuple[DeadRow, ...]:
    """The newest `limit` dead letters, newest first."""
    only, values = site_filter(sites)
    async with conn.execute(
        "SELECT id, pixel_id, event_name, event_id, source, attempts, last_error, fbtrace_id, "
        f"sent_at FROM events WHERE state='dead'{only} ORDER BY sent_at DESC, id DESC LIMIT ?",
        (*values, limit),
    ) as cur:
        return tuple(
            DeadRow(int(r[0]), r[1], r[2], r[3], r[4], int(r[5]), r[6], r[7], r[8])
            for r in await cur.fetchall()
        )


async def has_match_keys(conn: aiosqlite.Connection) -> bool:
    """False for an outbox of an older schema, written before the `match_keys` column."""
    return (
        await _scalar(conn, "SELECT 1 FROM pragma_table_info('events') WHERE name='match_keys'")
        is not None
    )


async def hour_groups(
    conn: aiosqlite.Connection,
    start: float,
    end: float,
    keys: Sequence[str],
    sites: Sequence[str] | None = None,
) -> list[tuple[Any, ...]]:
    """One pass over the rows stored in [start, end), grouped by event name, source and rule.

    Each row: event name, source, rule, distinct event ids the rule made, rows, rows with a
    twin, rows with known keys, then rows carrying each of `keys` (match keys, in order) as
    sent (after assembly and profiles), then as received (the first copy), in the same order.
    """
    sums = ", ".join(
        [f"SUM(instr({col}, ',' || ? || ',') > 0)" for col in ("k", "r") for _ in keys]
    )
    only, values = site_filter(sites)
    # Rows written before the match_keys column existed have NULL keys: COUNT(k) leaves
    # them out of the coverage denominator instead of counting them as carrying nothing.
    # One event per pixel shares its event_id: a rule's firing is counted once.
    async with conn.execute(
        f"SELECT event_name, source, rule, COUNT(DISTINCT CASE WHEN rule IS NOT NULL "
        f"THEN event_id END), COUNT(*), SUM(twin), COUNT(k), {sums} "
        "FROM (SELECT event_name, source, rule, event_id, twin, ',' || match_keys || ',' AS k, "
        "',' || COALESCE(received_keys, match_keys) || ',' AS r "
        f"FROM events WHERE created_at >= ? AND created_at < ?{only}) "
        "GROUP BY event_name, source, rule",
        (*keys, *keys, start, end, *values),
    ) as cur:
        return [tuple(r) for r in await cur.fetchall()]


# -- the queue command ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class EventFilter:
    """Which rows a `queue` subcommand acts on; `states` applies when `state` is None."""

    state: str | None = None
    event_name: str | None = None
    pixel_id: str | None = None
    ids: tuple[int, ...] = ()
    site: str | None = None
    states: tuple[str, ...] = ()

    def where(self) -> tuple[str, list[Any]]:
        """A ` WHERE ...` clause over fixed column names, and its bound values."""
        clauses: list[str] = []
        values: list[Any] = []
        for column, value in (
            ("state", self.state),
            ("event_name", self.event_name),
            ("pixel_id", self.pixel_id),
            ("site", self.site),
        ):
            if value is not None:
                clauses.append(f"{column} = ?")
                values.append(value)
        if self.ids:
            clauses.append(f"id IN ({','.join('?' * len(self.ids))})")
            values += self.ids
        if self.state is None and self.states:
            clauses.append(f"state IN ({','.join('?' * len(self.states))})")
            values += self.states
        return (" WHERE " + " AND ".join(clauses)) if clauses else "", values


async def list_events(
    conn: aiosqlite.Connection, which: EventFilter, *, limit: int | None
) -> list[aiosqlite.Row]:
    """The rows `which` selects, newest first, every column `queue list|export` shows."""
    where, values = which.where()
    sql = (
        "SELECT id, pixel_id, event_name, event_id, event_time, source, rule, "
        "test_event_code, payload, sealed, state, attempts, next_attempt_at, last_error, "
        f"fbtrace_id, created_at, sent_at, sources, late FROM events{where} ORDER BY id DESC"
    )
    if limit is not None:
        sql += f" LIMIT {int(limit)}"
    conn.row_factory = aiosqlite.Row
    async with conn.execute(sql, values) as cur:
        return list(await cur.fetchall())


# -- doctor -----------------------------------------------------------------------------------


async def schema_version(conn: aiosqlite.Connection) -> int:
    """The file's `user_version`: 0 for a file no release of the gateway has set up."""
    return int(await _scalar(conn, "PRAGMA user_version") or 0)


async def table_count(conn: aiosqlite.Connection) -> int:
    """Tables, indexes and views in the file (another application's, at version 0)."""
    return int(await _scalar(conn, "SELECT COUNT(*) FROM sqlite_master") or 0)


async def integrity_problems(conn: aiosqlite.Connection, limit: int = 5) -> list[str]:
    """SQLite's quick check: ["ok"], or up to `limit` problems."""
    async with conn.execute(f"PRAGMA quick_check({int(limit)})") as cur:
        return [str(row[0]) for row in await cur.fetchall()]


async def sealed_undelivered(conn: aiosqlite.Connection) -> int:
    """Rows still to be delivered whose clear fields are sealed (they need the key)."""
    marks = ",".join("?" * len(UNDELIVERED))
    async with conn.execute(
        f"SELECT COUNT(*) FROM events WHERE sealed IS NOT NULL AND state IN ({marks})",
        UNDELIVERED,
    ) as cur:
        row = await cur.fetchone()
    return int(row[0]) if row else 0


def _existing(path: Path) -> str:
    # mode=rw: a missing file is an error, not a new empty outbox.
    return f"{path.resolve().as_uri()}?mode=rw"


async def _scalar(conn: aiosqlite.Connection, sql: str, *values: Any) -> Any:
    async with conn.execute(sql, values) as cur:
        row = await cur.fetchone()
    return row[0] if row else None


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
