"""The PostgreSQL outbox: the store interface (`gateway.delivery.store`) over a shared database.

Each replica group-commits what its requests accept (one transaction per window of
`group_commit_ms`, like the SQLite outbox; up to `WRITERS` in flight at once while no other
replica writes) and `add` returns only after that commit; copies of a stored event merge
into it under a row lock (`rows.assemble`). Any replica claims any
due row (`FOR UPDATE SKIP LOCKED`, leases; `queue.claim`), so a dead replica's rows go to
the others when its lease expires. Upkeep deletes in batches so no purge holds long locks;
queue depth comes from the trigger-kept counters. A lost connection is retried by the pool
for `reconnect_timeout`; then `DatabaseUnavailable`, which the intake answers with a 503.
"""

from __future__ import annotations

import asyncio
import logging
import math
import socket
import time
from collections.abc import Collection, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from gateway.delivery import completion, profiles
from gateway.delivery.forget import Person, add_counts
from gateway.delivery.groupcommit import Pending
from gateway.delivery.insightfacts import InsightPolicy
from gateway.delivery.leases import pid_gone, pid_of
from gateway.delivery.postgres import profilerows, queue
from gateway.delivery.postgres import rows as pg_rows
from gateway.delivery.postgres.forget import forget as forget_person
from gateway.delivery.postgres.intake import WRITERS, Intake
from gateway.delivery.postgres.migrations import SchemaError, migrate
from gateway.delivery.postgres.notify import DueListener, new_sender_id
from gateway.delivery.postgres.pool import Database, DatabaseUnavailable
from gateway.delivery.postgres.reads import queue_stats
from gateway.delivery.postgres.results import Results, affected
from gateway.delivery.profiles import ProfilePolicy
from gateway.delivery.seal import Sealer, SealError
from gateway.delivery.sizeguard import SizeGuard
from gateway.delivery.store import Claimed, KeyMismatch
from gateway.models import row_key
from gateway.pipeline import jsonfast
from gateway.settings import ConfigError, Settings

if TYPE_CHECKING:
    import asyncpg

    from gateway.delivery.postgres.pool import Conn

log = logging.getLogger("gateway.outbox")

# Seconds between the claims that also take back expired leases.
CLAIM_UPKEEP_EVERY = 1.0
# Seconds a claim waits after one that drained the queue, while other replicas write.
SHARED_CLAIM_GAP = 0.2


class PgOutbox(Intake, Results):
    """The outbox on PostgreSQL. Create with `await PgOutbox.open(dsn, ...)`, end with `close()`."""

    def __init__(
        self,
        db: Database,
        sealer: Sealer,
        *,
        group_commit_ms: float,
        max_bytes: int,
        assembly_hold: float,
        profiles: ProfilePolicy | None,
        writers: int = WRITERS,
    ) -> None:
        self.db = db
        self.path = db.name
        self.sealer = sealer
        self.assembly_hold = assembly_hold
        self.profiles = profiles if profiles is not None and profiles.enabled else None
        self._queue: asyncio.Queue[Pending | None] = asyncio.Queue()
        self._window = group_commit_ms / 1000.0
        self._writers = max(1, writers)
        # When another replica's commit was last announced (`_overlap`).
        self._others_at = -math.inf
        # Numbers this replica's group commits (their owner name in `inflight`).
        self._commit_seq = 0
        # Transactions of rows set apart from a commit, still running (`Intake._commit`).
        self._trailing: set[asyncio.Task[None]] = set()
        # Keys of this replica's open group commits, and in how many each.
        self._open_keys: dict[str, int] = {}
        # Measured at most every 5 s: pg_total_relation_size stats every file of the table.
        self._size = SizeGuard(
            db.name,
            max_bytes,
            every=5.0,
            used=self.used_bytes,
            purge=lambda: self.purge_sent_oldest(fraction=0.5),
        )
        self._closing = False
        self._writer: asyncio.Task[None] | None = None
        self.new_work = asyncio.Event()
        self._wake_at = math.inf
        # Other replicas' commits wake this one's sender through LISTEN/NOTIFY.
        self._me = new_sender_id()
        self._next_upkeep = 0.0
        # Claims wait until then (monotonic) while other replicas write (see `claim`).
        self._claim_after = -math.inf
        self.claims_held = 0
        self.listener: DueListener | None = None
        self.commits = 0
        self.committed_rows = 0
        self.merged = 0
        self.late = 0
        # Facts and touchpoints for reports (None: not recorded); set by the app.
        self.insights: InsightPolicy | None = None

    @classmethod
    async def open(
        cls,
        dsn: str,
        sealer: Sealer,
        *,
        group_commit_ms: float = 5.0,
        max_buffer_mb: float = 1024.0,
        assembly_hold: float = 0.0,
        profiles: ProfilePolicy | None = None,
        reconnect_timeout: float = 10.0,
        pool_size: int = 10,
        writers: int = WRITERS,
    ) -> PgOutbox:
        """Connect, migrate (once across replicas), check the key and start the writer.

        `KeyMismatch` when `sealer`'s key does not open the clear fields already stored.
        """
        db = await Database.open(dsn, max_size=pool_size, reconnect_timeout=reconnect_timeout)
        try:
            await migrate(db)
            await check_key(db, sealer)
        except BaseException:
            await db.close()
            raise
        box = cls(
            db,
            sealer,
            group_commit_ms=group_commit_ms,
            max_bytes=int(max_buffer_mb * 1024 * 1024),
            assembly_hold=assembly_hold,
            profiles=profiles,
            writers=writers,
        )
        box._writer = asyncio.create_task(box._write_loop(), name="outbox-writer")
        box.listener = DueListener(
            dsn, box._me, box._heard, connect_timeout=min(5.0, reconnect_timeout)
        )
        box.listener.start()
        await box.reclaim_dead_leases()
        return box

    async def close(self) -> None:
        """Flush what was accepted, stop the writer and close the pool (once)."""
        if self._closing:
            return
        self._closing = True
        if self._writer is not None:
            self._queue.put_nowait(None)
            await self._writer
            self._writer = None
        if self.listener is not None:
            await self.listener.close()
        await self.db.close()

    async def reclaim_dead_leases(self) -> int:
        """Rows leased by processes of this host that no longer exist go back to pending.

        As on SQLite: a replica (or a `--workers` worker) restarted after SIGKILL resends its
        in-flight rows at once instead of after the whole lease. Only owners named after this
        host (`host:pid:nonce`) are judged; other replicas' leases expire as usual.
        """
        host = socket.gethostname()

        async def owners(conn: Conn) -> list[str]:
            rows = await conn.fetch(
                "SELECT DISTINCT lease_owner FROM event_queue WHERE state = 'inflight' "
                "AND starts_with(lease_owner, $1)",
                host + ":",
            )
            return [str(r["lease_owner"]) for r in rows]

        dead = [
            owner
            for owner in await self.db.run(owners, transaction=False)
            if (pid := pid_of(owner, host)) is not None and pid_gone(pid)
        ]
        if not dead:
            return 0

        async def work(conn: Conn) -> int:
            return affected(
                await conn.execute(
                    "UPDATE event_queue SET state = 'pending', lease_owner = NULL, "
                    "lease_expires = NULL WHERE state = 'inflight' "
                    "AND lease_owner = ANY($1::text[])",
                    dead,
                )
            )

        count = await self.db.run(work)
        if count:
            log.info("Took back %d event(s) leased by stopped processes of this host.", count)
            self.wake()
        return count

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
        """Lease up to `limit` due rows of unblocked pixels (none of `skip`) to `owner`
        (any replica's rows).

        While other replicas write (and so send), a claim that drained the queue holds the
        next one back for `SHARED_CLAIM_GAP` seconds. Each sender claims again as soon as
        a send ends: with N replicas draining one queue, each claim took 1/N of the rows,
        and claims per event (each a scan of the due index past the rows the others hold)
        grew with N — 0.33, 1.33 and 2.89 claims of 274, 68 and 31 rows per 100 events at
        1, 2 and 3 replicas.
        """
        wait = self._claim_after - time.monotonic()
        if wait > 0 and self.others_writing():
            self.claims_held += 1
            await asyncio.sleep(wait)
        at = time.time() if now is None else now

        # Taking back expired leases once a second is enough.
        upkeep = at >= self._next_upkeep
        if upkeep:
            self._next_upkeep = at + CLAIM_UPKEEP_EVERY

        async def work(conn: Conn) -> list[dict[str, Any]]:
            return await queue.claim(
                conn, owner, limit=limit, lease=lease, now=at, skip=skip, upkeep=upkeep
            )

        rows = await self.db.run(work)
        if len(rows) < limit and self.others_writing():
            self._claim_after = time.monotonic() + SHARED_CLAIM_GAP
        if not rows and not skip:
            self.empty_claim_at = min(at, time.time())
        claimed = [self._open_row(r) for r in rows]
        if self.profiles is None or not claimed:
            return claimed
        policy = self.profiles
        stored_keys = {int(r["id"]): r["profile_keys"] for r in rows}

        async def lookup(wanted: list[str]) -> dict[str, profiles.Dated]:
            async def read(conn: Conn) -> dict[str, profiles.Dated]:
                return await profilerows.lookup(conn, wanted, now=at)

            return await self.db.run(read, transaction=False)

        done = await completion.completions(
            lookup, {row.id: row.event for row in claimed}, policy, stored_keys
        )
        if not done:
            return claimed

        async def record(conn: Conn) -> None:
            await pg_rows.record_completed(conn, done, owner)

        await self.db.run(record)
        return completion.applied(claimed, done)

    def _open_row(self, r: Mapping[str, Any]) -> Claimed:
        event: dict[str, Any] = jsonfast.loads(r["payload"])
        clear = self.sealer.open(
            r["sealed"], row_key(r["pixel_id"], r["event_name"], r["event_id"])
        )
        if clear:
            event["user_data"] = {**event.get("user_data", {}), **clear}
        return Claimed(
            id=int(r["id"]),
            pixel_id=r["pixel_id"],
            event_name=r["event_name"],
            event_id=r["event_id"],
            event_time=int(r["event_time"]),
            attempts=int(r["attempts"]),
            test_event_code=r["test_event_code"],
            event=event,
        )

    async def forget(
        self, person: Person, key: bytes, *, sites: Collection[str] | None = None
    ) -> dict[str, int]:
        """Erase a person from unsent events, profiles and stitched visits (see
        postgres/forget.py), in one transaction; `sites`: of those sites only."""

        async def work(conn: Conn) -> dict[str, int]:
            if sites is None:
                return await forget_person(conn, self.sealer, key, person)
            return add_counts(
                [await forget_person(conn, self.sealer, key, person, site=s) for s in sites]
            )

        return await self.db.run(work)

    async def stats(self) -> dict[str, Any]:
        """Counts per state and per event name (from the counters), oldest pending age,
        blocked pixels: the SQLite store's shape."""
        return await queue_stats(self.db)


async def check_key(db: Database, sealer: Sealer) -> None:
    """`KeyMismatch` unless `sealer` opens the newest sealed row (when there is one)."""

    async def read(conn: Conn) -> asyncpg.Record | None:
        return await conn.fetchrow(
            "SELECT pixel_id, event_name, event_id, sealed FROM event_data "
            "WHERE sealed IS NOT NULL ORDER BY id DESC LIMIT 1"
        )

    row = await db.run(read, transaction=False)
    if row is None:
        return
    try:
        sealer.open(row["sealed"], row_key(row["pixel_id"], row["event_name"], row["event_id"]))
    except SealError as exc:
        raise KeyMismatch(
            f"the encryption key does not open the events already stored at {db.name}: "
            "every replica must use the same encryption_key (CAPIGW_ENCRYPTION_KEY)"
        ) from exc


async def open_postgres(
    settings: Settings, sealer: Sealer, policy: ProfilePolicy | None
) -> PgOutbox:
    """The outbox on the database `settings.store_url` names; ConfigError when it cannot be
    used (unreachable, refused, a newer schema, another key)."""
    assert settings.store_url is not None
    if not settings.encryption_key and not settings.key_file:
        # A key generated beside each replica would differ from replica to replica.
        raise ConfigError(
            "buffer: a PostgreSQL store needs encryption_key (CAPIGW_ENCRYPTION_KEY) or "
            "key_file, the same on every replica"
        )
    try:
        return await PgOutbox.open(
            settings.store_url,
            sealer,
            group_commit_ms=settings.group_commit_ms,
            max_buffer_mb=settings.max_buffer_mb,
            assembly_hold=settings.assembly_hold,
            profiles=policy,
            reconnect_timeout=settings.store_connect_timeout,
        )
    except (DatabaseUnavailable, SchemaError, KeyMismatch) as exc:
        raise ConfigError(f"buffer: {exc}") from exc
