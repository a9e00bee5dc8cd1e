"""`capi-gateway doctor`: is this installation able to deliver, and if not, what to do.

Checks the configuration, the rule files, the outbox file (schema, integrity, size, dead
letters, backlog, blocked pixels, key), that each pixel's token reaches the Graph API and
the clock against Meta's (gateway.commands.graphcheck), then prints the dashboard's match-key
hints. It only reads: the outbox is opened without migrating it, and the only request to
Meta is a token check. Exit codes: see gateway.commands.findings.
"""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import stat
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import aiosqlite

from gateway.commands.audiencecheck import check_audiences
from gateway.commands.catalogcheck import check_catalog
from gateway.commands.findings import Finding, Level, exit_code, mask, render
from gateway.commands.graphcheck import GRAPH_TIMEOUT, check_graph
from gateway.commands.upstreamcheck import check_upstream
from gateway.delivery import reads
from gateway.delivery.postgres.migrations import current_version
from gateway.delivery.postgres.outbox import check_key
from gateway.delivery.postgres.pool import Database, DatabaseUnavailable
from gateway.delivery.postgres.reads import PgReader
from gateway.delivery.postgres.reads import queue_stats as pg_queue_stats
from gateway.delivery.postgres.schema import SCHEMA_VERSION as PG_SCHEMA_VERSION
from gateway.delivery.schema import SCHEMA_VERSION
from gateway.delivery.seal import Sealer, load_key
from gateway.delivery.store import KeyMismatch
from gateway.settings import ConfigError, Settings

# Backlog: a pending event this old means delivery is stuck (Meta drops them at 7 days).
BACKLOG_WARN = 3600.0
BACKLOG_FAIL = 86400.0
BUFFER_WARN_SHARE = 0.8


def run_doctor(settings: Settings, *, as_json: bool = False, site: str | None = None) -> int:
    """Diagnose, print the findings (text or JSON) and return the exit code.

    With `site`, `settings` are that site's and the queue numbers are its events'.
    """
    findings = asyncio.run(diagnose(settings, site=site))
    code = exit_code(findings)
    if as_json:
        print(json.dumps({"exit_code": code, "findings": [f.as_json() for f in findings]}))
    else:
        print(render(findings))
    return code


async def diagnose(
    settings: Settings, *, graph_timeout: float = GRAPH_TIMEOUT, site: str | None = None
) -> list[Finding]:
    """Every check, in the order they are printed."""
    findings = check_config(settings)
    rules, found = check_rules(settings)
    findings += found
    findings += await check_buffer(settings, rules, site=site)
    findings += await check_audiences(settings, site=site)
    findings += await check_upstream(settings)
    findings += await check_graph(settings, graph_timeout=graph_timeout)
    findings += await check_catalog(settings, site=site)
    return findings


# -- configuration and rules --------------------------------------------------------------


def check_config(settings: Settings) -> list[Finding]:
    """Credentials for every pixel, and settings that are legal but probably a mistake."""
    out: list[Finding] = []
    try:
        settings.check_ready_to_send()
    except ConfigError as exc:
        return [Finding("config", Level.FAIL, str(exc))]
    pixels = [p for p in settings.effective_pixels() if p.access_token or not settings.dry_run]
    mode = "dry run" if settings.dry_run else f"sending to {settings.graph_url}"
    front = (
        f"proxying {settings.upstream}" if settings.upstream else "no upstream (events API only)"
    )
    masked = ", ".join(mask(p.id) for p in pixels)
    which = f"{len(pixels)} pixel(s) [{masked}]" if pixels else "no pixel"
    out.append(Finding("config", Level.OK, f"{which}, {mode}, {front}, listen {settings.listen}"))
    testing = [p for p in pixels if p.test_event_code]
    if testing and not settings.dry_run:
        out.append(
            Finding(
                "config",
                Level.WARN,
                f"test_event_code is set for {', '.join(mask(p.id) for p in testing)}: "
                "events go to Test events only and do not count for ads",
                "remove test_event_code (META_TEST_EVENT_CODE) once testing is done",
            )
        )
    if not settings.events_api_keys:
        out.append(
            Finding(
                "config",
                Level.NOTE,
                f"no events_api_keys: POST {settings.prefix}/events answers 401 to everyone",
            )
        )
    return out


def check_rules(settings: Settings) -> tuple[Sequence[Any], list[Finding]]:
    """Load the rule files as `serve` would; the loaded rules feed the coverage hints."""
    from gateway.pipeline.rulefile import RuleError
    from gateway.pipeline.ruleload import load_rules

    if settings.rules is None:
        return [], [Finding("rules", Level.NOTE, "no rule files configured (rules is unset)")]
    try:
        ruleset = load_rules(settings.rules)
    except RuleError as exc:
        return [], [Finding("rules", Level.FAIL, str(exc))]
    message = (
        f"{len(ruleset.rules)} rule(s) and {len(ruleset.webhooks)} webhook(s) from "
        f"{len(ruleset.files)} file(s) in {settings.rules}"
    )
    return list(ruleset.rules), [Finding("rules", Level.OK, message)]


# -- the outbox ---------------------------------------------------------------------------


async def check_buffer(
    settings: Settings, rules: Sequence[Any], *, site: str | None = None
) -> list[Finding]:
    """Schema, integrity, size, dead letters, backlog, blocked pixels, key, coverage hints."""
    if settings.store_url is not None:
        return await _check_postgres(settings, site)
    path = settings.buffer
    if not path.exists():
        return [_missing_buffer(path)]
    if not path.is_file():
        return [Finding("buffer", Level.FAIL, f"{path} is not a file", "point --buffer at one")]
    try:
        # Never create a file, never migrate, never write to it.
        conn = await reads.open_reader(path, must_exist=True)
    except sqlite3.Error as exc:
        return [Finding("buffer", Level.FAIL, f"cannot open {path} ({exc})", _OWNER_FIX)]
    try:
        return await _inspect(conn, settings, rules, site)
    except sqlite3.OperationalError as exc:
        # Locked past the busy timeout, or unreadable: not a sign of damage.
        return [Finding("buffer", Level.FAIL, f"cannot read {path} ({exc})", _OWNER_FIX)]
    except sqlite3.DatabaseError as exc:
        return [_corrupt(path, str(exc))]
    finally:
        await conn.close()


_OWNER_FIX = "run doctor as the user the gateway runs as, and check the file's owner and mode"


def _missing_buffer(path: Path) -> Finding:
    parent = path.resolve().parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        return Finding(
            "buffer", Level.FAIL, f"no outbox at {path}: {parent} is not a directory", None
        )
    if not os.access(parent, os.W_OK | os.X_OK):
        return Finding(
            "buffer",
            Level.FAIL,
            f"no outbox at {path}, and {parent} is not writable by this user",
            "create the directory for the gateway's user, or point --buffer elsewhere",
        )
    return Finding("buffer", Level.NOTE, f"no outbox at {path} yet; `serve` creates it")


def _corrupt(path: Path, detail: str) -> Finding:
    return Finding(
        "buffer",
        Level.FAIL,
        f"{path} is damaged or not an outbox: {detail}",
        f"stop the gateway and keep a copy of the file; `sqlite3 {path} .recover | sqlite3 "
        "recovered.db` saves what can be read (then point --buffer at it), or move the file "
        "aside to start a new outbox (its unsent events are lost)",
    )


async def _inspect(
    conn: aiosqlite.Connection, settings: Settings, rules: Sequence[Any], site: str | None = None
) -> list[Finding]:
    path = settings.buffer
    version = await reads.schema_version(conn)
    if version == 0:
        if await reads.table_count(conn):
            return [_corrupt(path, "it holds another application's tables")]
        return [Finding("buffer", Level.NOTE, f"{path} is empty; `serve` sets it up")]
    if version > SCHEMA_VERSION:
        return [
            Finding(
                "buffer",
                Level.FAIL,
                f"{path} has schema version {version}, newer than this release knows "
                f"({SCHEMA_VERSION})",
                "upgrade capi-gateway to the release that wrote it",
            )
        ]
    problems = await reads.integrity_problems(conn, 5)
    if problems != ["ok"]:
        return [_corrupt(path, "integrity check failed: " + "; ".join(problems))]
    out: list[Finding] = []
    if version < SCHEMA_VERSION:
        out.append(
            Finding(
                "buffer",
                Level.NOTE,
                f"schema version {version}: the next `serve` migrates it to {SCHEMA_VERSION}",
            )
        )
        return out
    used = await reads.used_bytes(conn)
    stats = await reads.queue_stats(conn, site=site)
    out += _buffer_findings(settings, used, stats)
    out += await _key_findings(conn, settings)
    out += await _hint_findings(conn, settings, rules)
    return out


async def _check_postgres(settings: Settings, site: str | None = None) -> list[Finding]:
    """Reach the PostgreSQL store, its schema, numbers and key (read-only: never migrates)."""
    assert settings.store_url is not None
    name = settings.store_name
    try:
        db = await Database.open(settings.store_url, health_interval=0, reconnect_timeout=3)
    except DatabaseUnavailable as exc:
        return [Finding("buffer", Level.FAIL, str(exc), "check the postgresql:// URL")]
    try:
        version = await current_version(db)
        if version == 0:
            return [Finding("buffer", Level.NOTE, f"no store at {name} yet; `serve` creates it")]
        if version > PG_SCHEMA_VERSION:
            return [
                Finding(
                    "buffer",
                    Level.FAIL,
                    f"{name}: store schema v{version} is newer than this release knows "
                    f"({PG_SCHEMA_VERSION})",
                    "upgrade capi-gateway",
                )
            ]
        out = _buffer_findings(
            settings,
            await PgReader(db, limit_bytes=0).used_bytes(),
            await pg_queue_stats(db, site=site),
        )
        if settings.encryption_key or settings.key_file:
            try:
                await check_key(db, Sealer(load_key(settings, create=False)))
            except KeyMismatch as exc:
                out.append(Finding("key", Level.FAIL, str(exc), "use the replicas' key"))
        return out
    except DatabaseUnavailable as exc:
        return [Finding("buffer", Level.FAIL, str(exc), "check the database")]
    finally:
        await db.close()


def _buffer_findings(settings: Settings, used: int, stats: dict[str, Any]) -> list[Finding]:
    out: list[Finding] = []
    states: dict[str, int] = stats["states"]
    limit = settings.max_buffer_mb * 1048576
    share = used / limit
    oldest: float | None = stats["oldest_pending_age"]
    waiting = states.get("pending", 0) + states.get("inflight", 0)
    summary = (
        f"{settings.store_name}: schema v"
        + (f"{PG_SCHEMA_VERSION}, " if settings.store_url else f"{SCHEMA_VERSION}, integrity ok, ")
        + f"{used / 1048576:.1f} of {settings.max_buffer_mb:g} MiB, {waiting} pending"
        + (f" (oldest {_age(oldest)})" if oldest is not None else "")
        + f", {states.get('blocked', 0)} blocked, {states.get('dead', 0)} dead"
    )
    out.append(Finding("buffer", Level.OK, summary))
    if share >= 1:
        out.append(
            Finding(
                "buffer",
                Level.FAIL,
                f"the outbox holds {used / 1048576:.1f} MiB, over max_buffer_mb: the events "
                "API answers 503",
                "find out why events are not delivered (below), or raise max_buffer_mb",
            )
        )
    elif share >= BUFFER_WARN_SHARE:
        out.append(
            Finding(
                "buffer",
                Level.WARN,
                f"the outbox is at {share:.0%} of max_buffer_mb; at 100% new events get 503",
            )
        )
    if oldest is not None and oldest >= BACKLOG_WARN:
        out.append(
            Finding(
                "buffer",
                Level.FAIL if oldest >= BACKLOG_FAIL else Level.WARN,
                f"the oldest undelivered event has waited {_age(oldest)}; Meta refuses events "
                "older than 7 days",
                "is the gateway running and able to reach Meta? `capi-gateway queue list "
                "--state pending` shows each event's last error",
            )
        )
    for blocked in stats["blocked_pixels"]:
        trace = f", fbtrace_id {blocked['fbtrace_id']}" if blocked["fbtrace_id"] else ""
        out.append(
            Finding(
                "buffer",
                Level.FAIL,
                f"pixel {mask(blocked['pixel_id'])} is blocked since "
                f"{_age(time.time() - blocked['since'])} ago: {blocked['reason']}{trace}; "
                "its events are parked, not lost",
                "fix the token (see the graph check), then reload the gateway (kill -HUP) or "
                "run `capi-gateway queue retry --state blocked`",
            )
        )
    dead = states.get("dead", 0)
    if dead:
        out.append(
            Finding(
                "buffer",
                Level.WARN,
                f"{dead} dead letter(s): events Meta refused or that ran out of attempts",
                "`capi-gateway queue list --state dead` shows Meta's reason; `capi-gateway "
                "queue retry --state dead` sends them again once the cause is fixed",
            )
        )
    return out


async def _key_findings(conn: aiosqlite.Connection, settings: Settings) -> list[Finding]:
    if settings.encryption_key:
        return []
    path = settings.key_path()
    if path.exists():
        mode = stat.S_IMODE(path.stat().st_mode)
        if mode & 0o077:
            return [
                Finding(
                    "buffer",
                    Level.WARN,
                    f"the key file {path} is readable by other users (mode {mode:04o})",
                    f"chmod 600 {path}",
                )
            ]
        return []
    sealed = await reads.sealed_undelivered(conn)
    if not sealed:
        return []
    return [
        Finding(
            "buffer",
            Level.FAIL,
            f"no encryption key at {path}, but {sealed} undelivered event(s) were sealed "
            "with one: their IP, user agent, fbp and fbc cannot be opened",
            "restore the key file from the backup of this buffer (or set encryption_key)",
        )
    ]


async def _hint_findings(
    conn: aiosqlite.Connection, settings: Settings, rules: Sequence[Any]
) -> list[Finding]:
    from gateway.admin.data import coverage_hints

    hints = await coverage_hints(conn, rules, rules_dir=settings.rules, prefix=settings.prefix)
    return [Finding("coverage", Level.HINT, str(hint)) for hint in hints]


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f} {unit}"
    return f"{seconds:.0f} s"
