"""`capi-gateway audiences list|sync|export` on the outbox file or PostgreSQL store.

- `list`: per audience its Meta id, members now, rows Meta holds, matched-key coverage, last
  sync and error;
- `sync`: bring every audience (of `--site`) in step with Meta now, sending only changes
  (`--dry-run`: compute and record, call nothing); `--json` prints per audience its id,
  how many rows were added and removed, and those rows as Meta got them (hashes only, at
  most `--max-rows` each, `truncated` when more);
- `export`: the members' hashed rows in Meta's schema, as CSV (a customer list for a manual
  upload) or JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import sys
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp

from gateway.delivery.audiences import SqliteAudiences
from gateway.delivery.audiences_sync import AudienceSync, Target, current_rows, targets
from gateway.delivery.graph import GraphClient
from gateway.delivery.postgres.audiences import PgAudiences
from gateway.delivery.postgres.migrations import migrate
from gateway.delivery.postgres.pool import Database, DatabaseUnavailable
from gateway.delivery.retry import RetryPolicy
from gateway.delivery.schema import SchemaError
from gateway.delivery.store import AudienceStore
from gateway.pipeline.audiences import SCHEMA, coverage
from gateway.settings import PARTNER_AGENT, ConfigError, Settings


def add_parser(sub: Any, buffer_arg: Callable[[str], Path | str]) -> None:
    """The `audiences` subcommand and its three actions."""
    parser = sub.add_parser("audiences", help="Custom Audiences built from stored events")
    actions = parser.add_subparsers(dest="audiences_command", required=True)
    for name, text in (
        ("list", "each audience's id, size, matched-key coverage and last sync"),
        ("sync", "send the changes of every audience to Meta now"),
        ("export", "the members' hashed rows (CSV, or JSON with --json) for a manual upload"),
    ):
        p = actions.add_parser(name, help=text)
        p.add_argument(
            "--buffer", type=buffer_arg, help="the store: a SQLite file or a postgresql:// URL"
        )
        p.add_argument("--config", type=Path, help="TOML config file")
        p.add_argument("--key-file", type=Path, help="file holding the outbox encryption key")
        p.add_argument("--site", help="only the audiences of this [[sites]] site")
        p.add_argument("--name", help="only the audience of this name")
        p.add_argument("--json", action="store_true", help="machine-readable output")
        if name == "sync":
            p.add_argument(
                "--dry-run", action="store_true", help="compute and record, never call Meta"
            )
            p.add_argument(
                "--max-rows",
                type=_rows_cap,
                default=1000,
                help="--json lists at most this many added and removed rows each (default 1000)",
            )


def _rows_cap(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        number = -1
    if number < 0:
        raise argparse.ArgumentTypeError(f"{value!r} is not a number of rows (0 or more)")
    return number


def run_audiences_command(args: argparse.Namespace) -> int:
    """Run one audiences action; the exit code is 0 on success, 1 when a sync failed."""
    from gateway.commands.queue import store_settings

    settings = store_settings(args)
    chosen = [t for t in targets(settings, args.site) if args.name in (None, t.audience.name)]
    if not chosen:
        raise ConfigError(
            "audiences: no audience is configured"
            + (f" named {args.name!r}" if args.name else "")
            + (f" for site {args.site!r}" if args.site else "")
            + "; add [[audiences]] tables to the config file (see README.md, Audiences)"
        )
    if settings.store_url is None and not settings.buffer.is_file():
        raise ConfigError(f"buffer: no outbox at {settings.buffer}; pass --buffer PATH")
    return asyncio.run(_run(args, settings, chosen))


async def _open(settings: Settings) -> AudienceStore:
    if settings.store_url is not None:
        try:
            db = await Database.open(settings.store_url, health_interval=0)
        except DatabaseUnavailable as exc:
            raise ConfigError(f"buffer: {exc}") from exc
        await migrate(db)
        return PgAudiences(db, owns=True)
    try:
        return await SqliteAudiences.open(settings.buffer, create=False)
    except SchemaError as exc:
        raise ConfigError(f"buffer: {exc}") from exc


async def _run(args: argparse.Namespace, settings: Settings, chosen: Sequence[Target]) -> int:
    store = await _open(settings)
    try:
        if args.audiences_command == "list":
            return await _list(store, chosen, as_json=args.json)
        if args.audiences_command == "export":
            return await _export(store, chosen, as_json=args.json)
        return await _sync(store, settings, chosen, args)
    finally:
        await store.close()


async def _list(store: AudienceStore, chosen: Sequence[Target], *, as_json: bool) -> int:
    now = time.time()
    out: list[dict[str, Any]] = []
    for target in chosen:
        state = await store.state(target.site, target.audience.name)
        rows = await current_rows(store, target, now=now)
        out.append(
            {
                "site": target.site,
                "name": target.audience.name,
                "id": state.audience_id,
                "size": len(rows),
                "held_by_meta": state.size,
                "coverage": coverage(rows.values()),
                "last_sync": state.synced_at,
                "last_result": state.last_result,
                "last_error": state.last_error,
                "parked": state.blocked_token is not None,
            }
        )
    if as_json:
        print(json.dumps(out, indent=2))
        return 0
    for item in out:
        synced = (
            datetime.fromtimestamp(item["last_sync"], UTC).strftime("%Y-%m-%d %H:%M:%SZ")
            if item["last_sync"]
            else "never"
        )
        keys = ", ".join(f"{k} {v:.0%}" for k, v in item["coverage"].items() if v)
        where = f"[{item['site']}] " if item["site"] else ""
        print(
            f"{where}{item['name']}: id {item['id'] or '-'}, {item['size']} member(s) now, "
            f"{item['held_by_meta']} sent; last sync {synced}"
            + (f"; error: {item['last_error']}" if item["last_error"] else "")
            + (" (parked until the token changes)" if item["parked"] else "")
        )
        print(f"    matched keys: {keys or 'none'}")
    return 0


async def _export(store: AudienceStore, chosen: Sequence[Target], *, as_json: bool) -> int:
    now = time.time()
    if as_json:
        out = []
        for target in chosen:
            rows = await current_rows(store, target, now=now)
            out.append(
                {
                    "site": target.site,
                    "name": target.audience.name,
                    "schema": list(SCHEMA),
                    "data": [list(r) for r in rows.values()],
                }
            )
        print(json.dumps(out, indent=2))
        return 0
    if len(chosen) > 1:
        raise ConfigError(
            "--name: CSV holds one audience; name it with --name (or use --json for all)"
        )
    rows = await current_rows(store, chosen[0], now=now)
    writer = csv.writer(sys.stdout, lineterminator="\n")
    writer.writerow([key.lower() for key in SCHEMA])
    writer.writerows(rows.values())
    return 0


async def _sync(
    store: AudienceStore, settings: Settings, chosen: Sequence[Target], args: argparse.Namespace
) -> int:
    dry = bool(args.dry_run or settings.dry_run)
    policy = RetryPolicy(base=settings.retry_base, cap=settings.retry_cap)
    async with aiohttp.ClientSession(trust_env=False) as session:
        graph = GraphClient(
            session,
            graph_url=settings.graph_url,
            graph_version=settings.graph_version,
            # Uploads of 10,000 rows take longer than an event batch.
            timeout=max(settings.send_timeout, 60.0),
            partner_agent=PARTNER_AGENT,
        )
        reports = await AudienceSync(store, None if dry else graph, policy).sync_all(chosen)
    if args.json:
        print(json.dumps([r.to_json(args.max_rows) for r in reports], indent=2))
    else:
        for r in reports:
            where = f"[{r.site}] " if r.site else ""
            what = "would add" if r.dry_run else "added"
            gone = "would remove" if r.dry_run else "removed"
            print(
                f"{where}{r.name}: id {r.audience_id or '-'}, {what} {len(r.added)}, "
                f"{gone} {len(r.removed)}, {r.size} member(s)"
                + (f"; error: {r.error}" if r.error else "")
                + (" (parked until the token changes)" if r.parked else "")
            )
    return 1 if any(r.error for r in reports) else 0
