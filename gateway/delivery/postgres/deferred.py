"""A group commit's new rows inserted last, just before COMMIT, so copies elsewhere wait less.

A copy of an event whose row another transaction has inserted but not committed waits, in
its `INSERT ... ON CONFLICT`, until that transaction ends (the unique index cannot tell yet
whether the row will exist). With the insert first, a group commit held its new keys for
the whole transaction: the merges, profile upserts and insights after it, each a round trip
through a gateway whose event loop is busy with requests. With replicas taking copies of
each other's events, nearly every commit waited on another, in chains (measured: 0.75
backends of 3 replicas waiting so, on average).

`DeferredSql` answers which rows are new from the committed rows (a plain read, which waits
for no one), lets the assembler go on, and inserts at `flush`, the transaction's last
statement but the notice. Rows a copy of the same batch merges into go in at once (the merge
locks them). Should a row appear meanwhile (another transaction committed it, or was about
to), the insert does not return it, and `flush` raises `CopyRaced`: the caller runs the
commit again, inserting first (`PgSql`), and that run merges the copy.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from gateway.delivery.postgres.rows import Key, PgSql, insert
from gateway.models import NewEvent, row_key
from gateway.pipeline import assembly

if TYPE_CHECKING:
    from gateway.delivery.postgres.pool import Conn

_STORED = """
SELECT pixel_id, event_name, event_id FROM events
WHERE (pixel_id, event_name, event_id) IN (
    SELECT * FROM unnest($1::text[], $2::text[], $3::text[]))
"""


class CopyRaced(Exception):
    """A row taken for new was stored by another transaction before `flush`: run again."""


class DeferredSql(PgSql):
    """`PgSql` whose inserts wait for `flush` (see the module's docstring)."""

    def __init__(self, conn: Conn, record: Any = None) -> None:
        super().__init__(conn, record=record)
        # Per deferred row: (event, sealed, hold, profile key, profile seen).
        self._pending: dict[Key, tuple[NewEvent, bytes | None, float, str | None, float | None]]
        self._pending = {}
        self._now = 0.0

    async def insert(
        self,
        rows: Sequence[NewEvent],
        sealed: Sequence[bytes | None],
        holds: Sequence[float],
        now: float,
        profile_keys: Sequence[str | None] | None,
        profile_seen: Sequence[float | None] | None,
    ) -> set[Key]:
        if not rows:
            return set()
        keys = [(ev.pixel_id, ev.event_name, ev.event_id) for ev in rows]
        stored = {
            (r["pixel_id"], r["event_name"], r["event_id"])
            for r in await self.conn.fetch(
                _STORED, [k[0] for k in keys], [k[1] for k in keys], [k[2] for k in keys]
            )
        }
        self._now = now
        for i, (key, ev) in enumerate(zip(keys, rows, strict=True)):
            if key not in stored:
                self._pending[key] = (
                    ev,
                    sealed[i],
                    holds[i],
                    profile_keys[i] if profile_keys is not None else None,
                    profile_seen[i] if profile_seen is not None else None,
                )
        return set(self._pending)

    async def assemble(
        self,
        copies: Sequence[NewEvent],
        holds: Sequence[float],
        open_sealed: Callable[[bytes | None, str], dict[str, Any]],
        seal: Callable[[dict[str, Any], str], bytes | None],
        now: float,
        profile_keys: Sequence[Sequence[str]] | None,
    ) -> list[tuple[assembly.Outcome, assembly.State | None, list[str]]]:
        # A copy of a row of this same batch merges into it: that row goes in now.
        wanted = {(ev.pixel_id, ev.event_name, ev.event_id) for ev in copies}
        await self._insert([k for k in self._pending if k in wanted])
        return await super().assemble(copies, holds, open_sealed, seal, now, profile_keys)

    async def flush(self) -> None:
        """Insert the deferred rows; `CopyRaced` if any was stored meanwhile."""
        await self._insert(list(self._pending))

    async def _insert(self, keys: list[Key]) -> None:
        if not keys:
            return
        # Key order, as `assembler.store` inserts: replicas wait on each other in one order.
        keys.sort(key=lambda k: row_key(*k))
        rows = [self._pending.pop(k) for k in keys]
        inserted = await insert(
            self.conn,
            [r[0] for r in rows],
            [r[1] for r in rows],
            [r[2] for r in rows],
            self._now,
            [r[3] for r in rows],
            [r[4] for r in rows],
        )
        if len(inserted) != len(keys):
            raise CopyRaced(f"{len(keys) - len(inserted)} row(s) stored by another transaction")
