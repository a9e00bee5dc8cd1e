"""`capi-gateway queue stats|list|retry|purge|export` on the outbox file or PostgreSQL store.

Safe to run while the gateway serves the same store (WAL readers do not block it; on
PostgreSQL, purges delete in short batches).
Clear fields (IP, user agent, fbp, fbc) stay sealed in the output unless `--reveal`.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import sys
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import aiosqlite

from gateway.config import Sources, load_settings
from gateway.delivery.housekeeping import count_rows, delete_rows, requeue
from gateway.delivery.postgres import listing
from gateway.delivery.postgres.migrations import current_version
from gateway.delivery.postgres.pool import Database, DatabaseUnavailable
from gateway.delivery.postgres.reads import queue_stats as pg_queue_stats
from gateway.delivery.reads import EventFilter, list_events, queue_stats
from gateway.delivery.schema import STATES, SchemaError, connect, write_transaction
from gateway.delivery.seal import Sealer, SealError, load_key
from gateway.models import row_key
from gateway.pipeline.assembly import label
from gateway.settings import ConfigError, Settings

_SEALED = "<sealed: use --reveal>"
# A row of `queue list`: SQLite's rows, or PostgreSQL's as dicts of the same columns.
_Row = aiosqlite.Row | Mapping[str, Any]
_DELIVERED = ("sent", "sent-dry", "dead")


def check_site(settings: Settings, site: str | None) -> None:
    """ConfigError unless `site` (from `--site`) is None or names a configured site."""
    if site is None:
        return
    names = [s.name for s in settings.site_list()]
    if site not in names:
        known = ", ".join(names) if names else "none: the config has no [[sites]]"
        raise ConfigError(f"--site: no site is named {site!r} (configured: {known})")


def store_settings(args: argparse.Namespace) -> Settings:
    """The settings of a command that reads the store: `--config`, `--buffer`, `--key-file`
    and a `--site` that must name a configured site."""
    flags: dict[str, Any] = {}
    if args.buffer is not None:
        flags["buffer"] = args.buffer
    if args.key_file is not None:
        flags["key_file"] = args.key_file
    settings = load_settings(Sources(config_file=args.config, flags=flags))
    check_site(settings, args.site)
    return settings


def run_queue_command(args: argparse.Namespace) -> int:
    """Run one queue subcommand; the exit code is 0 on success."""
    settings = store_settings(args)
    state = getattr(args, "state", None)
    if state is not None and state not in STATES:
        raise ConfigError(f"--state: {state!r} is not one of {', '.join(STATES)}")
    if settings.store_url is not None:
        return asyncio.run(_run_postgres(args, settings))
    if not settings.buffer.exists():
        raise ConfigError(f"buffer: no outbox at {settings.buffer}; pass --buffer PATH")
    if not settings.buffer.is_file():
        raise ConfigError(f"buffer: {settings.buffer} is not a file; pass the outbox file")
    return asyncio.run(_run(args, settings))


async def _run(args: argparse.Namespace, settings: Settings) -> int:
    try:
        conn = await connect(settings.buffer, create=False)
    except SchemaError as exc:
        raise ConfigError(f"buffer: {exc}") from exc
    try:
        command = args.queue_command
        if command == "stats":
            return _print_stats(await queue_stats(conn, site=args.site), as_json=args.json)
        if command in ("list", "export"):
            rows = await list_events(conn, _which(args), limit=args.limit)
            return _show(rows, args, settings)
        if command == "retry":
            return await _retry(_SqliteRows(conn), args)
        return await _purge(_SqliteRows(conn), args)
    finally:
        await conn.close()


def _show(rows: Sequence[_Row], args: argparse.Namespace, settings: Settings) -> int:
    sealer = Sealer(load_key(settings, create=False)) if args.reveal else None
    try:
        return _print_rows(rows, sealer, as_json=args.json or args.queue_command == "export")
    except SealError as exc:
        raise ConfigError(
            f"key_file: the key at {settings.key_path()} does not open the sealed "
            f"fields of {settings.store_name}; pass the key this store was written with"
        ) from exc


class _Rows(Protocol):
    """The writes `retry` and `purge` make, on either backend."""

    async def requeue(self, which: EventFilter) -> int: ...
    async def delete(self, which: EventFilter) -> int: ...
    async def count(self, which: EventFilter) -> int: ...


class _SqliteRows:
    def __init__(self, conn: aiosqlite.Connection) -> None:
        self.conn = conn

    async def requeue(self, which: EventFilter) -> int:
        async with write_transaction(self.conn, asyncio.Lock()):
            return await requeue(self.conn, *which.where())

    async def delete(self, which: EventFilter) -> int:
        return await delete_rows(self.conn, *which.where())

    async def count(self, which: EventFilter) -> int:
        return await count_rows(self.conn, *which.where())


class _PostgresRows:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def requeue(self, which: EventFilter) -> int:
        return await listing.requeue(self.db, which)

    async def delete(self, which: EventFilter) -> int:
        return await listing.delete_rows(self.db, which)

    async def count(self, which: EventFilter) -> int:
        return await listing.count_rows(self.db, which)


async def _run_postgres(args: argparse.Namespace, settings: Settings) -> int:
    """The queue subcommands on a PostgreSQL store (every replica's events)."""
    assert settings.store_url is not None
    try:
        db = await Database.open(
            settings.store_url,
            health_interval=0,
            reconnect_timeout=settings.store_connect_timeout,
        )
    except DatabaseUnavailable as exc:
        raise ConfigError(f"buffer: {exc}") from exc
    try:
        if await current_version(db) == 0:
            raise ConfigError(
                f"buffer: no capi-gateway store at {settings.store_name}; start serve on it first"
            )
        command = args.queue_command
        if command == "stats":
            return _print_stats(await pg_queue_stats(db, site=args.site), as_json=args.json)
        if command in ("list", "export"):
            rows = await listing.list_events(db, _which(args), limit=args.limit)
            return _show(rows, args, settings)
        if command == "retry":
            return await _retry(_PostgresRows(db), args)
        return await _purge(_PostgresRows(db), args)
    except DatabaseUnavailable as exc:
        # Gone past the pool's reconnect window: a message, not a traceback (a retry or a
        # purge batch either committed whole or not at all).
        raise ConfigError(f"buffer: {exc}") from exc
    finally:
        await db.close()


def _which(args: argparse.Namespace, *, otherwise: tuple[str, ...] = ()) -> EventFilter:
    """The rows the arguments select; `otherwise`: the states meant when --state is absent."""
    return EventFilter(
        state=args.state,
        event_name=args.event_name,
        pixel_id=args.pixel_id,
        ids=tuple(args.id or ()),
        states=otherwise,
        site=args.site,
    )


def _as_sent(row: _Row, sealer: Sealer | None) -> dict[str, Any]:
    payload: dict[str, Any] = json.loads(row["payload"])
    if row["sealed"]:
        user_data = dict(payload.get("user_data", {}))
        if sealer is None:
            user_data["_sealed"] = _SEALED
        else:
            ident = row_key(row["pixel_id"], row["event_name"], row["event_id"])
            user_data.update(sealer.open(row["sealed"], ident))
        payload["user_data"] = user_data
    return payload


def _print_rows(rows: Sequence[_Row], sealer: Sealer | None, *, as_json: bool) -> int:
    for row in rows:
        record = {
            "id": row["id"],
            "state": row["state"],
            "pixel_id": row["pixel_id"],
            "event_name": row["event_name"],
            "event_id": row["event_id"],
            "source": row["source"],
            "rule": row["rule"],
            "attempts": row["attempts"],
            "test_event_code": row["test_event_code"],
            "last_error": row["last_error"],
            "fbtrace_id": row["fbtrace_id"],
            "created_at": row["created_at"],
            "sent_at": row["sent_at"],
            # The copies assembled into this event (rows of older releases: the first only).
            "sources": json.loads(row["sources"])
            if row["sources"]
            else [label(row["source"], row["rule"])],
            "payload": _as_sent(row, sealer),
        }
        if row["late"]:
            record["late"] = json.loads(row["late"])
        if as_json:
            print(json.dumps(record, ensure_ascii=False))
        else:
            print(
                f"#{row['id']} {row['state']:<8} pixel {row['pixel_id']} {row['event_name']} "
                f"{row['event_id']} attempts={row['attempts']}"
                + f" sources={','.join(record['sources'])}"
                + (f" error={row['last_error']!r}" if row["last_error"] else "")
                + (f" fbtrace_id={row['fbtrace_id']}" if row["fbtrace_id"] else "")
            )
            print("    " + json.dumps(record["payload"], ensure_ascii=False))
    if not rows and not as_json:
        print("no events match")
    return 0


def _print_stats(stats: dict[str, Any], *, as_json: bool) -> int:
    if as_json:
        print(json.dumps(stats))
        return 0
    states = stats["states"]
    print("state      count")
    for state, count in states.items():
        print(f"{state:<10} {count}")
    oldest = stats["oldest_pending_age"]
    print(f"oldest pending: {'none' if oldest is None else f'{oldest:.0f} s'}")
    if stats["by_event_name"]:
        print("by event name:")
        for name, counts in stats["by_event_name"].items():
            parts = ", ".join(f"{s} {n}" for s, n in sorted(counts.items()))
            print(f"  {name}: {parts}")
    for block in stats["blocked_pixels"]:
        print(
            f"BLOCKED pixel {block['pixel_id']}: {block['reason']} "
            f"(fbtrace_id {block['fbtrace_id']}); replace the token to release its events"
        )
    return 0


async def _retry(store: _Rows, args: argparse.Namespace) -> int:
    if args.state not in (None, "dead", "blocked"):
        print("capi-gateway: retry takes --state dead or blocked", file=sys.stderr)
        return 2
    count = await store.requeue(_which(args, otherwise=("dead", "blocked")))
    print(f"{count} event(s) queued for sending again")
    return 0


async def _purge(store: _Rows, args: argparse.Namespace) -> int:
    if args.state is not None and args.state not in _DELIVERED and not args.yes:
        print(
            f"capi-gateway: purging {args.state} events loses them for good; add --yes",
            file=sys.stderr,
        )
        return 2
    which = _which(args, otherwise=_DELIVERED)
    kept = 0
    if args.state in (None, "dead") and not args.yes:
        # Dead letters are events Meta never received: deleting them is asked for too.
        dead = await store.count(dataclasses.replace(which, state="dead"))
        if dead and not _confirm(f"Delete {dead} dead letter(s), events Meta never received?"):
            if args.state == "dead":
                print(
                    "capi-gateway: purging dead events loses them for good; add --yes",
                    file=sys.stderr,
                )
                return 2
            which, kept = dataclasses.replace(which, states=("sent", "sent-dry")), dead
    print(f"{await store.delete(which)} event(s) purged")
    if kept:
        print(
            f"kept {kept} dead letter(s): `capi-gateway queue list --state dead` shows Meta's "
            "reason; add --yes to purge them too"
        )
    return 0


def _confirm(question: str) -> bool:
    """Ask on a terminal; anywhere else (scripts, pipes) the answer is no."""
    if not sys.stdin.isatty():
        return False
    try:
        return input(f"{question} [y/N] ").strip().lower() in ("y", "yes")
    except EOFError:
        return False
