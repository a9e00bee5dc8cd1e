"""The durable outbox: accepted events in, leased batches out, send results recorded.

One writer task group-commits everything the API accepts (many events per transaction,
waiting at most `group_commit_ms`), and `add` returns only once its transaction has
committed. A copy of an event already stored (same pixel, event_name, event_id) merges
into it while it is unsent (event assembly, `gateway/pipeline/assembly.py`); each event is
held `assembly_hold` seconds before its first send so that copies can meet, and the
visitor profiles of the same file are learned in the same transaction.

Senders claim due rows with a lease (`UPDATE ... RETURNING`), so several
workers or processes can share one file and a crashed worker's rows come back when its
lease expires.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import socket
import sqlite3
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import aiosqlite

from gateway.delivery import assembler, completion, profiles, queuerows, reads
from gateway.delivery import rows as rows_sql
from gateway.delivery.groupcommit import Pending, next_batch
from gateway.delivery.insightfacts import InsightPolicy
from gateway.delivery.leases import pid_gone
from gateway.delivery.profiles import ProfilePolicy
from gateway.delivery.profiles import register as register_profiles
from gateway.delivery.results import Results
from gateway.delivery.schema import connect, write_transaction
from gateway.delivery.seal import Sealer, SealError
from gateway.delivery.sizeguard import SizeGuard
from gateway.delivery.store import Claimed, KeyMismatch, OutboxClosed
from gateway.delivery.upkeep import Upkeep
from gateway.models import NewEvent, row_key
from gateway.pipeline import jsonfast
from gateway.pipeline.assembly import Outcome

log = logging.getLogger("gateway.outbox")


class Outbox(Results, Upkeep):
    """The SQLite outbox. Create with `await Outbox.open(...)`, end with `close()`."""

    def __init__(
        self,
        conn: aiosqlite.Connection,
        sealer: Sealer,
        *,
        path: Path,
        group_commit_ms: float,
        max_bytes: int,
        assembly_hold: float = 0.0,
        profiles: ProfilePolicy | None = None,
    ) -> None:
        self.path = path
        self.assembly_hold = assembly_hold
        self.profiles = profiles if profiles is not None and profiles.enabled else None
        self.sealer = sealer
        self._conn = conn
        self._lock = asyncio.Lock()
        self._queue: asyncio.Queue[Pending | None] = asyncio.Queue()
        self._window = group_commit_ms / 1000.0
        # Measured at most once a second: page_count is cheap on the writer's connection.
        self._size = SizeGuard(
            str(path),
            max_bytes,
            every=1.0,
            used=self.used_bytes,
            purge=lambda: self.purge_sent_oldest(fraction=0.5),
        )
        self._closing = False
        self._writer: asyncio.Task[None] | None = None
        # Set after each commit so an idle sender wakes at once instead of polling; with
        # `_wake_at` (the earliest due time of what was committed since the sender last
        # looked) it tells a sender whether the new rows are due yet or still held.
        self.new_work = asyncio.Event()
        self._wake_at = math.inf
        # Group-commit figures: transactions and the rows they carried.
        self.commits = 0
        self.committed_rows = 0
        # Copies of events merged into a pending event, and copies that came after the send.
        self.merged = 0
        self.late = 0
        # Facts and touchpoints for reports (None: not recorded); set by the app. They do
        # not count towards `max_buffer_mb` (see `reads.used_bytes`).
        self.insights: InsightPolicy | None = None
        self._insight_bytes = reads.InsightBytes(limit=max_bytes)

    @classmethod
    async def open(
        cls,
        path: Path,
        sealer: Sealer,
        *,
        group_commit_ms: float = 5.0,
        max_buffer_mb: float = 1024.0,
        durable: bool = True,
        assembly_hold: float = 0.0,
        profiles: ProfilePolicy | None = None,
    ) -> Outbox:
        """Open (and migrate) the buffer file and start the writer task.

        `assembly_hold`: seconds an event other than a PageView waits before its first send
        unless it names its own `hold`; `profiles`: visitor profiles (None: off).
        """
        conn = await connect(path, durable=durable)
        await register_profiles(conn)
        box = cls(
            conn,
            sealer,
            path=path,
            group_commit_ms=group_commit_ms,
            max_bytes=int(max_buffer_mb * 1024 * 1024),
            assembly_hold=assembly_hold,
            profiles=profiles,
        )
        box._writer = asyncio.create_task(box._write_loop(), name="outbox-writer")
        await box.reclaim_dead_leases()
        return box

    async def reclaim_dead_leases(self) -> int:
        """Rows leased by processes of this host that no longer exist go back to pending.

        After a SIGKILL a restarted gateway resends its in-flight rows at once instead of
        after the whole lease; a live process keeps its leases (a reused pid only delays).
        """
        async with self._transaction() as conn:
            count = await queuerows.reclaim_leases(conn, socket.gethostname(), pid_gone)
        if count:
            log.info("Took back %d event(s) leased by stopped processes of this host.", count)
            self.wake()
        return count

    async def check_key(self) -> None:
        """`KeyMismatch` unless the key opens the newest sealed row (when there is one)."""
        async with (
            self._lock,
            self._conn.execute(
                "SELECT pixel_id, event_name, event_id, sealed FROM event_data "
                "WHERE sealed IS NOT NULL ORDER BY id DESC LIMIT 1"
            ) as cur,
        ):
            row = await cur.fetchone()
        if row is None:
            return
        try:
            self.sealer.open(row[3], row_key(row[0], row[1], row[2]))
        except SealError as exc:
            raise KeyMismatch(
                f"the encryption key does not open the events already stored in {self.path}: "
                "use the key they were written with (encryption_key or the key file)"
            ) from exc

    async def close(self) -> None:
        """Flush what was accepted, stop the writer and close the file."""
        self._closing = True
        if self._writer is not None:
            self._queue.put_nowait(None)
            await self._writer
            self._writer = None
        # Wait out any statement still running (a late release) before closing under it.
        async with self._lock:
            await self._conn.close()

    @contextlib.asynccontextmanager
    async def _transaction(self) -> AsyncIterator[aiosqlite.Connection]:
        """One write transaction on the shared connection, taken before any other writer's."""
        async with write_transaction(self._conn, self._lock) as conn:
            yield conn

    # writing ------------------------------------------------------------------

    async def add(self, events: Sequence[NewEvent]) -> list[Outcome]:
        """Store events durably; per event "new", "merged" (into the pending copy of the
        same event) or "late" (that event was already sent: recorded, not sent again)."""
        if not events:
            return []
        try:
            await self._size.check()
        except (ValueError, sqlite3.ProgrammingError) as exc:
            if self._closing:
                raise OutboxClosed("the outbox is shutting down") from exc
            raise
        # No await between this check and the put: nothing can be queued behind the
        # writer's stop marker, so every accepted item is committed by close().
        if self._closing:
            raise OutboxClosed("the outbox is shutting down")
        item = Pending(events)
        self._queue.put_nowait(item)
        return await asyncio.shield(item.done)

    async def _write_loop(self) -> None:
        while True:
            batch, stop = await next_batch(self._queue, self._window)
            if batch:
                await self._commit(batch)
            if stop:
                return

    async def _commit(self, batch: list[Pending]) -> None:
        rows: list[NewEvent] = [ev for p in batch for ev in p.events]
        now = time.time()
        try:
            async with self._transaction() as conn:
                # Taken under the write lock: commits of several workers get increasing
                # times, which `profile_seen` relies on (see assembler.AssemblySql).
                now = time.time()
                outcomes = await assembler.store(
                    assembler.SqliteSql(conn),
                    rows,
                    [self.hold_of(ev) for ev in rows],
                    sealer=self.sealer,
                    policy=self.profiles,
                    now=now,
                    insight=self.insights,
                )
            self.commits += 1
            self.committed_rows += len(rows)
        except Exception as exc:
            if self.insights is not None:
                self.insights.cache.discard()
            log.error("Outbox write of %d event(s) failed: %s", len(rows), exc)
            for p in batch:
                if not p.done.done():
                    p.done.set_exception(exc)
            return
        if self.insights is not None:
            self.insights.cache.settle()
        self.merged += outcomes.count("merged")
        self.late += outcomes.count("late")
        at = 0
        for p in batch:
            if not p.done.done():
                p.done.set_result(outcomes[at : at + len(p.events)])
            at += len(p.events)
        self.wake(now + min(self.hold_of(ev) for ev in rows))

    def wake(self, at: float = 0.0) -> None:
        """Tell an idle sender that rows become due at epoch `at` (0: now)."""
        self._wake_at = min(self._wake_at, at)
        self.new_work.set()

    def take_wake_at(self) -> float:
        """The earliest due time announced by `wake` since the last call (inf: none).

        A sender woken by a commit of held rows goes back to sleep until they are due
        instead of claiming nothing in a write transaction after every commit.
        """
        at, self._wake_at = self._wake_at, math.inf
        return at

    def hold_of(self, ev: NewEvent) -> float:
        """Seconds `ev` waits before its first send: its own hold, else the default."""
        return assembler.hold_of(ev, self.assembly_hold)

    async def used_bytes(self) -> int:
        """Bytes of database pages in use.

        Free pages and the WAL do not count: new rows reuse them rather than grow the file.
        """
        async with self._lock:
            return await reads.used_bytes(self._conn, self._insight_bytes)

    # leasing and results ------------------------------------------------------------

    async def claim(
        self,
        owner: str,
        *,
        limit: int,
        lease: float,
        now: float | None = None,
        skip: Sequence[str] = (),
    ) -> list[Claimed]:
        """Lease up to `limit` due rows of unblocked pixels (none of `skip`) to `owner`.

        With profiles on, each event of a known visitor gets the identifiers it lacks from
        the visitor's profile, recorded on the row (what is sent is what the row shows).
        """
        now = time.time() if now is None else now
        # No transaction around it: each of the claim's writes is one statement, a
        # transaction of its own (see rows.claim), which saves two trips to the thread.
        async with self._lock:
            rows = await rows_sql.claim(
                self._conn, owner, limit=limit, lease=lease, now=now, skip=skip
            )
        rows.sort(key=lambda r: int(r[0]))
        claimed = [self._open_row(r) for r in rows]
        if self.profiles is None or not claimed:
            return claimed
        # Rows under one fbp key (nearly all) are compared with their profiles in SQL, and
        # only those a profile may add to come back; the others (stored while profiles were
        # off, or with stitch keys) go the general way. Outside the claim's write
        # transaction: the rows are ours now, and the group-commit writer should not wait.
        plain: list[int] = []
        others = []
        for r in rows:
            if profiles.plain_key(r[9]):
                plain.append(int(r[0]))
            else:
                others.append(r)
        async with self._lock:
            hits = await profiles.changed(self._conn, plain, now=now) if plain else []
        events = {row.id: row.event for row in claimed}
        done = completion.completed(events, hits)
        if others:
            newer = profiles.unchanged_since([(r[9], r[10]) for r in others])

            async def lookup(wanted: list[str]) -> dict[str, profiles.Dated]:
                async with self._lock:
                    return await profiles.lookup(self._conn, wanted, now=now, newer=newer)

            done |= await completion.completions(
                lookup,
                {int(r[0]): events[int(r[0])] for r in others},
                self.profiles,
                {int(r[0]): r[9] for r in others},
                {int(r[0]): r[10] for r in others},
            )
        if not done:
            return claimed
        async with self._transaction() as conn:
            await rows_sql.record_completed(conn, done, owner)
        return completion.applied(claimed, done)

    def _open_row(self, r: Any) -> Claimed:
        event: dict[str, Any] = jsonfast.loads(r[7])
        clear = self.sealer.open(r[8], row_key(r[1], r[2], r[3]))
        if clear:
            event["user_data"] = {**event.get("user_data", {}), **clear}
        return Claimed(
            id=int(r[0]),
            pixel_id=r[1],
            event_name=r[2],
            event_id=r[3],
            event_time=int(r[4]),
            attempts=int(r[5]),
            test_event_code=r[6],
            event=event,
        )
