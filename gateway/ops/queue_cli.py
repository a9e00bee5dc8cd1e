"""`capi-gateway queue stats|list|retry|purge|export` on the outbox file.

Safe to run while the gateway serves the same file (WAL readers do not block it).
Clear fields (IP, user agent, fbp, fbc) stay sealed in the output unless `--reveal`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Sequence
from typing import Any

import aiosqlite

from gateway.config import Sources, load_settings
from gateway.delivery.housekeeping import delete_rows, queue_stats, requeue
from gateway.delivery.schema import STATES, SchemaError, connect
from gateway.delivery.seal import Sealer, SealError, load_key
from gateway.models import identity
from gateway.pipeline.assembly import label
from gateway.settings import ConfigError, Settings

_SEALED = "<sealed: use --reveal>"
_DELIVERED = ("sent", "sent-dry", "dead")


def run_queue_command(args: argparse.Namespace) -> int:
    """Run one queue subcommand; the exit code is 0 on success."""
    flags: dict[str, Any] = {}
    if args.buffer is not None:
        flags["buffer"] = args.buffer
    if args.key_file is not None:
        flags["key_file"] = args.key_file
    settings = load_settings(Sources(config_file=args.config, flags=flags))
    if not settings.buffer.exists():
        raise ConfigError(f"buffer: no outbox at {settings.buffer}; pass --buffer PATH")
    if not settings.buffer.is_file():
        raise ConfigError(f"buffer: {settings.buffer} is not a file; pass the outbox file")
    state = getattr(args, "state", None)
    if state is not None and state not in STATES:
        raise ConfigError(f"--state: {state!r} is not one of {', '.join(STATES)}")
    return asyncio.run(_run(args, settings))


async def _run(args: argparse.Namespace, settings: Settings) -> int:
    try:
        conn = await connect(settings.buffer, create=False)
    except SchemaError as exc:
        raise ConfigError(f"buffer: {exc}") from exc
    try:
        command = args.queue_command
        if command == "stats":
            return _print_stats(await queue_stats(conn), as_json=args.json)
        if command in ("list", "export"):
            sealer = Sealer(load_key(settings, create=False)) if args.reveal else None
            rows = await _select(conn, args, limit=args.limit)
            try:
                return _print_rows(rows, sealer, as_json=args.json or command == "export")
            except SealError as exc:
                raise ConfigError(
                    f"key_file: the key at {settings.key_path()} does not open the sealed "
                    f"fields of {settings.buffer}; pass the key this outbox was written with"
                ) from exc
        if command == "retry":
            return await _retry(conn, args)
        return await _purge(conn, args)
    finally:
        await conn.close()


def _filters(args: argparse.Namespace) -> tuple[str, list[Any]]:
    clauses: list[str] = []
    values: list[Any] = []
    for column, value in (
        ("state", args.state),
        ("event_name", args.event_name),
        ("pixel_id", args.pixel_id),
    ):
        if value is not None:
            clauses.append(f"{column} = ?")
            values.append(value)
    if args.id:
        clauses.append(f"id IN ({','.join('?' * len(args.id))})")
        values += args.id
    return (" WHERE " + " AND ".join(clauses)) if clauses else "", values


def _and(where: str, clause: str) -> str:
    return f"{where} AND {clause}" if where else f" WHERE {clause}"


async def _select(
    conn: aiosqlite.Connection, args: argparse.Namespace, *, limit: int | None
) -> list[aiosqlite.Row]:
    where, values = _filters(args)
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


def _as_sent(row: aiosqlite.Row, sealer: Sealer | None) -> dict[str, Any]:
    payload: dict[str, Any] = json.loads(row["payload"])
    if row["sealed"]:
        user_data = dict(payload.get("user_data", {}))
        if sealer is None:
            user_data["_sealed"] = _SEALED
        else:
            ident = identity(row["pixel_id"], row["event_name"], row["event_id"])
            user_data.update(sealer.open(row["sealed"], ident))
        payload["user_data"] = user_data
    return payload


def _print_rows(rows: Sequence[aiosqlite.Row], sealer: Sealer | None, *, as_json: bool) -> int:
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


async def _retry(conn: aiosqlite.Connection, args: argparse.Namespace) -> int:
    if args.state not in (None, "dead", "blocked"):
        print("capi-gateway: retry takes --state dead or blocked", file=sys.stderr)
        return 2
    where, values = _filters(args)
    if args.state is None:
        where = _and(where, "state IN ('dead','blocked')")
    await conn.execute("BEGIN IMMEDIATE")
    count = await requeue(conn, where, values)
    await conn.execute("COMMIT")
    print(f"{count} event(s) queued for sending again")
    return 0


async def _purge(conn: aiosqlite.Connection, args: argparse.Namespace) -> int:
    where, values = _filters(args)
    if args.state is None:
        where = _and(where, "state IN ('sent','sent-dry','dead')")
    elif args.state not in _DELIVERED and not args.yes:
        print(
            f"capi-gateway: purging {args.state} events loses them for good; add --yes",
            file=sys.stderr,
        )
        return 2
    print(f"{await delete_rows(conn, where, values)} event(s) purged")
    return 0
