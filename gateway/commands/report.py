"""`capi-gateway report summary|funnel|attribution` on the outbox file or PostgreSQL store.

The same reports, in the same JSON (`--json`), as `{prefix}/reports/*`; without `--json` a
table for people. Safe to run while the gateway serves the same store (reads only).
"""

from __future__ import annotations

import argparse
import asyncio
import json
from pathlib import Path
from typing import Any

from gateway.commands.queue import store_settings
from gateway.delivery.insights import SqliteInsights
from gateway.delivery.postgres.insights import PgInsights
from gateway.delivery.postgres.migrations import migrate
from gateway.delivery.postgres.pool import Database, DatabaseUnavailable
from gateway.delivery.schema import SchemaError, connect
from gateway.delivery.store import InsightReader
from gateway.insights.reports import ReportError, run
from gateway.insights.routes import query_of, settings_for
from gateway.insights.timerange import RangeError
from gateway.pipeline.attribution import BY, MODELS
from gateway.settings import ConfigError, buffer_arg


def add_parser(sub: Any) -> None:
    """The `report` command and its three reports."""
    report = sub.add_parser("report", help="revenue, funnel and attribution from the store")
    rsub = report.add_subparsers(dest="report_command", required=True)
    for name, text in (
        ("summary", "visitors, events and value, conversion rate, average order value"),
        ("funnel", "visitors at each funnel step, in order"),
        ("attribution", "conversions credited to the visits before them"),
    ):
        r = rsub.add_parser(name, help=text)
        r.add_argument(
            "--buffer", type=buffer_arg, help="the store: a SQLite file or a postgresql:// URL"
        )
        r.add_argument("--config", type=Path, help="TOML config file")
        r.add_argument("--key-file", type=Path, help="file holding the outbox encryption key")
        r.add_argument("--site", help="only this [[sites]] site")
        r.add_argument("--since", help="start: 2026-12-01, 2026-12-01T08:00Z or 7d (default 30d)")
        r.add_argument("--until", help="end (exclusive; a bare date includes that day): now")
        r.add_argument("--json", action="store_true", help="the JSON of /reports/<name>")
        if name == "attribution":
            r.add_argument("--model", default="last_click", choices=MODELS)
            r.add_argument("--by", default="channel", choices=BY)


def run_report_command(args: argparse.Namespace) -> int:
    """Run one report; the exit code is 0 on success."""
    settings = store_settings(args)
    params = {
        "site": args.site,
        "since": args.since,
        "until": args.until,
        "model": getattr(args, "model", None),
        "by": getattr(args, "by", None),
    }
    try:
        q = query_of(params, settings, None)
    except (ReportError, RangeError) as exc:
        raise ConfigError(f"report: {exc}") from exc
    cfg = settings_for(settings, q.window.site)
    if settings.store_url is None and not settings.buffer.is_file():
        raise ConfigError(f"buffer: no outbox at {settings.buffer}; pass --buffer PATH")

    async def go() -> dict[str, Any]:
        reader = await _open(settings.store_url, settings.buffer)
        try:
            return await run(args.report_command, reader, q, cfg)
        finally:
            await reader.close()

    try:
        body = asyncio.run(go())
    except DatabaseUnavailable as exc:
        raise ConfigError(f"buffer: {exc}") from exc
    if args.json:
        print(json.dumps(body, ensure_ascii=False))
    else:
        print(render(args.report_command, body))
    return 0


async def _open(url: str | None, path: Path) -> InsightReader:
    if url is not None:
        db = await Database.open(url, health_interval=0)
        try:
            await migrate(db)
        except BaseException:
            await db.close()
            raise
        return PgInsights(db, owned=True)
    try:
        # Brings an older file's schema up to date (the insights tables), as serve would.
        conn = await connect(path, create=False)
    except SchemaError as exc:
        raise ConfigError(f"buffer: {exc}") from exc
    return SqliteInsights(conn)


def _money(value: dict[str, float]) -> str:
    return ", ".join(f"{v:,.2f} {c}" for c, v in value.items()) or "-"


def render(name: str, body: dict[str, Any]) -> str:
    """A report as a small text table."""
    lines: list[str] = []
    if name == "summary":
        lines.append(f"visitors          {body['visitors']}")
        lines.append(f"conversion rate   {body['conversion_rate']:.2%}")
        lines.append(f"avg order value   {_money(body['average_order_value'])}")
        lines.append("event              count  value")
        for event, entry in body["events"].items():
            lines.append(f"{event:<18} {entry['count']:>5}  {_money(entry['value'])}")
        for row in body.get("top_channels", []):
            lines.append(f"top channel: {row['channel']} ({row['conversions']})")
        for row in body.get("top_landing_pages", []):
            lines.append(f"top landing page: {row['path']} ({row['conversions']})")
    elif name == "funnel":
        for step in body["steps"]:
            drop = f"  (-{step['drop_off']:.0%})" if "drop_off" in step else ""
            lines.append(f"{step['event']:<18} {step['visitors']:>7}{drop}")
    else:
        lines.append(f"{body['model']} by {body['by']}: {body['conversions']} conversion(s)")
        for row in body["rows"]:
            lines.append(f"{row['key']:<24} {row['conversions']:>9.2f}  {_money(row['value'])}")
    return "\n".join(lines)
