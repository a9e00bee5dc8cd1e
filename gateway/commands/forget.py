"""`capi-gateway forget --email X | --phone X | --fbp X | --external-id X`: erase a person.

Runs on the outbox file, also while the gateway serves it (one short write transaction);
values are normalized like event fields. Prints what was removed (`--json`: the counts).
"""

from __future__ import annotations

import argparse
import asyncio
import json
from pathlib import Path
from typing import TYPE_CHECKING

from gateway.commands.queue import store_settings
from gateway.delivery.forget import Person, PersonError, forget
from gateway.delivery.postgres.forget import forget as forget_postgres
from gateway.delivery.postgres.migrations import current_version
from gateway.delivery.postgres.pool import Database, DatabaseUnavailable
from gateway.delivery.schema import SchemaError, connect, write_transaction
from gateway.delivery.seal import Sealer, load_key
from gateway.settings import ConfigError, Settings, buffer_arg

if TYPE_CHECKING:
    from gateway.delivery.postgres.pool import Conn


def add_forget_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """The `forget` subcommand and its flags."""
    parser = sub.add_parser(
        "forget",
        help="erase a person: profile, stitched visits, identifiers of unsent events",
    )
    for flag, text in (
        ("--email", "an email address"),
        ("--phone", "a phone number (with country code, or default_country applies)"),
        ("--external-id", "an external id as the backend sends it"),
        ("--fbp", "a _fbp cookie value"),
    ):
        parser.add_argument(flag, action="append", default=[], help=text + " (repeatable)")
    parser.add_argument(
        "--buffer", type=buffer_arg, help="the store: a SQLite file or a postgresql:// URL"
    )
    parser.add_argument("--config", type=Path, help="TOML config file")
    parser.add_argument("--key-file", type=Path, help="file holding the outbox encryption key")
    parser.add_argument("--json", action="store_true", help="print the counts as JSON")
    parser.add_argument(
        "--site", help="only this [[sites]] site's events, profiles and stitched visits"
    )


def run_forget_command(args: argparse.Namespace) -> int:
    """Erase the person named by the flags; 0 on success."""
    settings = store_settings(args)
    if settings.store_url is None and not settings.buffer.is_file():
        raise ConfigError(f"buffer: no outbox at {settings.buffer}; pass --buffer PATH")
    try:
        person = Person.of(
            email=args.email,
            phone=args.phone,
            external_id=args.external_id,
            fbp=args.fbp,
            default_country=settings.default_country,
        )
    except PersonError as exc:
        raise ConfigError(f"forget: {exc}") from exc
    counts = asyncio.run(_forget(settings, person, args.site))
    if args.json:
        print(json.dumps(counts))
    else:
        print(
            f"removed: identifiers from {counts['events']} unsent event(s), "
            f"{counts['profiles']} visitor profile(s), {counts['stitches']} stitched visit(s), "
            f"{counts['touchpoints']} touchpoint(s)"
        )
    return 0


async def _forget(settings: Settings, person: Person, site: str | None) -> dict[str, int]:
    key = load_key(settings, create=False)
    if settings.store_url is not None:
        return await _forget_postgres(settings.store_url, Sealer(key), key, person, site)
    try:
        conn = await connect(settings.buffer, create=False)
    except SchemaError as exc:
        raise ConfigError(f"buffer: {exc}") from exc
    try:
        async with write_transaction(conn, asyncio.Lock()) as tx:
            return await forget(tx, Sealer(key), key, person, site=site)
    finally:
        await conn.close()


async def _forget_postgres(
    url: str, sealer: Sealer, key: bytes, person: Person, site: str | None
) -> dict[str, int]:
    """The same erasure on a PostgreSQL store, in one transaction (never migrates)."""
    try:
        db = await Database.open(url, health_interval=0)
    except DatabaseUnavailable as exc:
        raise ConfigError(f"buffer: {exc}") from exc
    try:
        if await current_version(db) == 0:
            raise ConfigError(f"buffer: no capi-gateway store at {db.name}")

        async def work(conn: Conn) -> dict[str, int]:
            return await forget_postgres(conn, sealer, key, person, site=site)

        try:
            return await db.run(work)
        except DatabaseUnavailable as exc:
            raise ConfigError(f"buffer: {exc}; nothing was removed") from exc
    finally:
        await db.close()
