"""The PostgreSQL outbox's intake: requests' events group-committed, several commits at once.

A mixin of `PgOutbox` (as `Results` and `Upkeep` are): `add` queues a request's events and
returns once the transaction holding them has committed; the write loop takes a batch per
window (`groupcommit.next_batch`) and commits it with the shared assembly
(`assembler.store` over `rows.PgSql`). Rows whose key another open commit is inserting
(`inflight`) are set apart into a transaction of their own after the batch's, so that
only they wait for that commit.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Sequence
from dataclasses import replace
from typing import TYPE_CHECKING

from gateway.delivery import assembler
from gateway.delivery.groupcommit import Pending, next_batch
from gateway.delivery.insightfacts import InsightPolicy
from gateway.delivery.postgres import inflight
from gateway.delivery.postgres import insights as pg_insights
from gateway.delivery.postgres import rows as pg_rows
from gateway.delivery.postgres.commitcache import CommitCache
from gateway.delivery.postgres.notify import announce
from gateway.delivery.postgres.pool import Database
from gateway.delivery.postgres.queue_schema import EVENTS_BYTES
from gateway.delivery.postgres.upkeep import Upkeep
from gateway.delivery.profiles import ProfilePolicy
from gateway.delivery.seal import Sealer
from gateway.delivery.sizeguard import SizeGuard
from gateway.delivery.store import OutboxClosed
from gateway.models import NewEvent
from gateway.pipeline.assembly import Outcome

if TYPE_CHECKING:
    from gateway.delivery.postgres.pool import Conn

log = logging.getLogger("gateway.outbox")

# Group commits of one replica in flight at once (each on a connection of the pool), while
# no other replica writes; one while others do (`Intake._overlap`).
WRITERS = 3
# Seconds after another replica's last announced commit during which this one commits one
# batch at a time.
OTHERS_QUIET = 2.0


class Intake(Upkeep):
    """Group commits of accepted events (`PgOutbox` sets the attributes below); over the
    store's upkeep, whose purge makes room when the store is over `max_buffer_mb`."""

    db: Database
    path: str
    sealer: Sealer
    assembly_hold: float
    profiles: ProfilePolicy | None
    insights: InsightPolicy | None
    commits: int
    committed_rows: int
    merged: int
    late: int
    _queue: asyncio.Queue[Pending | None]
    _window: float
    _writers: int
    _others_at: float
    _commit_seq: int
    _trailing: set[asyncio.Task[None]]
    _open_keys: dict[str, int]
    _me: str
    _closing: bool
    _size: SizeGuard

    async def add(self, events: Sequence[NewEvent]) -> list[Outcome]:
        """Store events durably; per event "new", "merged" or "late"."""
        if not events:
            return []
        if self._closing:
            raise OutboxClosed("the outbox is shutting down")
        await self._size.check()
        if self._closing:
            raise OutboxClosed("the outbox is shutting down")
        item = Pending(events)
        self._queue.put_nowait(item)
        return await asyncio.shield(item.done)

    async def _write_loop(self) -> None:
        # Up to `writers` group commits in flight while this replica writes alone (see
        # `_overlap`). One at a time, a commit that waited (on its fsync, on the event loop
        # between its statements) stalled the replica's whole intake: one replica left a
        # third of the cores idle. The next batch is taken only once a commit may start, so
        # while none may, requests gather into a larger batch, as before.
        running: set[asyncio.Task[None]] = set()
        while True:
            # A commit's set-apart rows (`_commit`) wait beside the next commits, not in
            # their way; bounded, as they hold a connection each while they wait.
            while len(running) >= self._overlap() or len(self._trailing) >= self._writers:
                await asyncio.wait(running | self._trailing, return_when=asyncio.FIRST_COMPLETED)
                running.difference_update([t for t in running if t.done()])
            batch, stop = await next_batch(self._queue, self._window)
            if batch:
                task = asyncio.create_task(self._commit(batch), name="outbox-commit")
                running.add(task)
                task.add_done_callback(running.discard)
            if stop:
                if running:
                    await asyncio.wait(running)
                if self._trailing:
                    await asyncio.wait(self._trailing)
                return

    def _overlap(self) -> int:
        """Group commits that may be in flight now: `writers` while no other replica has
        announced a commit for `OTHERS_QUIET` seconds, else one.

        With other replicas writing, the database's transactions overlap already, and
        more of them only made copies wait on each other more often (an `INSERT … ON
        CONFLICT` waits for the open transaction that inserted the same key) in smaller
        groups: accepted events/s at 2 and 3 replicas fell by about a quarter (median of
        nine interleaved runs each) with three commits per replica in flight. (Measured
        before copies of keys in open commits were set apart, `inflight`: three commits
        per replica at two replicas then had 1.36 backends waiting on such INSERTs, now
        0.13; not measured again on a quiet machine, so the policy stays.)
        """
        return 1 if self.others_writing() else self._writers

    def others_writing(self) -> bool:
        """Whether another replica announced a commit in the last `OTHERS_QUIET` seconds."""
        return time.monotonic() - self._others_at < OTHERS_QUIET

    def _heard(self, at: float) -> None:
        """Another replica committed rows due at `at` (0: the listener reconnected)."""
        if at > 0:
            self._others_at = time.monotonic()
        self.wake(at)

    async def _commit(self, batch: list[Pending]) -> None:
        rows = [ev for p in batch for ev in p.events]
        keys = [ev.row_key() for ev in rows]
        now = time.time()
        self._commit_seq += 1
        owner = f"{self._me}:{self._commit_seq}"
        outcomes: list[Outcome | None] = [None] * len(rows)

        async def enter(conn: Conn) -> set[str]:
            return await inflight.register(conn, owner, keys)

        # Rows whose key another open commit inserts go in a second transaction once the
        # first has committed: only they wait for that commit. This replica's own open
        # commits are known here; other replicas' through the database (`inflight`),
        # registered only while they write: a round trip less per commit while alone.
        mine = set(keys)
        busy = {k for k in mine if k in self._open_keys}
        shared = self.others_writing()
        for k in mine:
            self._open_keys[k] = self._open_keys.get(k, 0) + 1
        later: list[int] = []
        try:
            if shared:
                busy |= await self.db.run(enter, transaction=False)
            later = [i for i, k in enumerate(keys) if k in busy]
            first = [i for i, k in enumerate(keys) if k not in busy] if later else None
            await self._store(rows, first, outcomes, now, owner if shared else None)
        except Exception as exc:
            if shared:
                await self._forget(owner)
            log.error("Outbox write of %d event(s) failed: %s", len(rows), exc)
            for p in batch:
                if not p.done.done():
                    p.done.set_exception(exc)
            return
        finally:
            for k in mine:
                if self._open_keys[k] == 1:
                    del self._open_keys[k]
                else:
                    self._open_keys[k] -= 1
        self._settle(batch, outcomes, None)
        if later:
            # Requests with none of them are answered already; the others after these.
            task = asyncio.create_task(
                self._later(batch, rows, later, outcomes, now), name="outbox-commit-later"
            )
            self._trailing.add(task)
            task.add_done_callback(self._trailing.discard)

    async def _later(
        self,
        batch: list[Pending],
        rows: list[NewEvent],
        later: list[int],
        outcomes: list[Outcome | None],
        now: float,
    ) -> None:
        """The rows set apart from a commit, in a transaction of their own."""
        try:
            await self._store(rows, later, outcomes, now, None)
        except Exception as exc:
            log.error("Outbox write of %d event(s) failed: %s", len(later), exc)
            self._settle(batch, outcomes, exc)
            return
        self._settle(batch, outcomes, None)

    @staticmethod
    def _settle(
        batch: list[Pending], outcomes: list[Outcome | None], failed: Exception | None
    ) -> None:
        """Answer each request whose rows all have an outcome; with `failed`, the others
        fail with it (part of such a request may be stored: a retry merges it, as after a
        lost COMMIT, since writes are idempotent by event key)."""
        at = 0
        for p in batch:
            mine = outcomes[at : at + len(p.events)]
            at += len(p.events)
            if p.done.done():
                continue
            done = [o for o in mine if o is not None]
            if len(done) == len(mine):
                p.done.set_result(done)
            elif failed is not None:
                p.done.set_exception(failed)

    async def _store(
        self,
        batch: list[NewEvent],
        picked: list[int] | None,
        outcomes: list[Outcome | None],
        now: float,
        owner: str | None,
    ) -> None:
        """One transaction: the rows at `picked` of `batch` (None: all), their outcomes set
        in `outcomes`; with `owner`, its registration (`inflight`) leaves in it."""
        rows = batch if picked is None else [batch[i] for i in picked]
        holds = [self.hold_of(ev) for ev in rows]
        # Commits overlap (`_write_loop`): each stages its visitors' states apart and keeps
        # them only if it commits itself.
        cache = insight = None
        if self.insights is not None:
            cache = CommitCache(self.insights.cache)
            insight = replace(self.insights, cache=cache)

        async def work(conn: Conn) -> list[Outcome]:
            if cache is not None:
                cache.discard()  # a run again after a lost connection stages afresh
            stored: list[Outcome] = []
            if rows:
                stored = await assembler.store(
                    pg_rows.PgSql(conn, record=pg_insights.record),
                    rows,
                    holds,
                    sealer=self.sealer,
                    policy=self.profiles,
                    now=now,
                    key_order=True,
                    insight=insight,
                )
            if owner is not None:
                await inflight.release(conn, owner)
            if any(o != "late" for o in stored):
                # One notice per group commit, delivered only if it commits.
                await announce(conn, self._me, now + min(holds))
            return stored

        try:
            stored = await self.db.run(work)
        except Exception:
            if cache is not None:
                cache.discard()
            raise
        if cache is not None:
            cache.settle()
        self.commits += 1
        self.committed_rows += len(rows)
        self.merged += stored.count("merged")
        self.late += stored.count("late")
        for index, outcome in zip(
            range(len(batch)) if picked is None else picked, stored, strict=True
        ):
            outcomes[index] = outcome
        if holds:
            self.wake(now + min(holds))

    async def _forget(self, owner: str) -> None:
        """Remove a failed commit's registrations if the database answers (else they go
        stale: `inflight.STALE_AFTER`)."""

        async def work(conn: Conn) -> None:
            await inflight.release(conn, owner)

        with contextlib.suppress(Exception):
            await self.db.run(work, transaction=False, retry=False)

    def hold_of(self, ev: NewEvent) -> float:
        """Seconds `ev` waits before its first send: its own hold, else the default."""
        return assembler.hold_of(ev, self.assembly_hold)

    async def used_bytes(self) -> int:
        """Bytes of the events table with its indexes and TOAST (PostgreSQL's own figure)."""
        return int(str(await self.db.fetchval(EVENTS_BYTES)))
