"""The store's share of the app: the outbox and intake, stitches, the buffer reader, the
sender and the audiences, opened with the app on SQLite or PostgreSQL and closed with it.
"""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator

import aiohttp
from aiohttp import web

from gateway.delivery.audiences import SqliteAudiences
from gateway.delivery.audiences_task import AudienceService
from gateway.delivery.graph import GraphClient
from gateway.delivery.outbox import Outbox
from gateway.delivery.postgres.audiences import PgAudiences
from gateway.delivery.postgres.outbox import PgOutbox, open_postgres
from gateway.delivery.postgres.reads import PgReader
from gateway.delivery.postgres.stitches import PgStitches
from gateway.delivery.profiles import ProfilePolicy
from gateway.delivery.reads import BufferReader
from gateway.delivery.retry import RetryPolicy
from gateway.delivery.seal import Sealer, load_key
from gateway.delivery.sender import Sender, SenderOptions
from gateway.delivery.stitch import Stitches
from gateway.delivery.store import (
    AudienceStore,
    KeyMismatch,
    OutboxStore,
    StitchStore,
    StoreReader,
)
from gateway.edge.appkeys import (
    AUDIENCES,
    BUFFER_READER,
    INTAKE,
    METRICS,
    OUTBOX,
    RUNTIME,
    SENDER,
    STITCHES,
)
from gateway.edge.intake import Intake
from gateway.insights.policy import insight_policy
from gateway.settings import PARTNER_AGENT, ConfigError, Settings
from gateway.siteapp import pixel_sites


def install_store(app: web.Application) -> None:
    """Open the store's parts with `app` and close them with it, the outbox first in and
    last out (everything else reads or sends what it holds)."""
    for ctx in (_outbox_ctx, _stitches_ctx, _reader_ctx, _sender_ctx, _audiences_ctx):
        app.cleanup_ctx.append(ctx)


async def _open_outbox(settings: Settings, sealer: Sealer, policy: ProfilePolicy) -> OutboxStore:
    if settings.store_url is not None:
        return await open_postgres(settings, sealer, policy)
    try:
        outbox = await Outbox.open(
            settings.buffer,
            sealer,
            group_commit_ms=settings.group_commit_ms,
            max_buffer_mb=settings.max_buffer_mb,
            assembly_hold=settings.assembly_hold,
            profiles=policy,
        )
    except (OSError, sqlite3.Error) as exc:
        raise ConfigError(
            f"buffer: cannot open {settings.buffer} ({exc}); point --buffer at a writable file"
        ) from exc
    try:
        await outbox.check_key()
    except KeyMismatch as exc:
        await outbox.close()
        raise ConfigError(f"buffer: {exc}") from exc
    return outbox


async def _outbox_ctx(app: web.Application) -> AsyncIterator[None]:
    settings = app[RUNTIME].settings
    key = load_key(settings)
    policy = ProfilePolicy.from_key(
        key, ttl=settings.profile_ttl, max_profiles=settings.profile_max
    )
    outbox = await _open_outbox(settings, Sealer(key), policy)
    outbox.insights = insight_policy(settings, key)
    app[OUTBOX] = outbox
    # Every accepted event is stored through this one object (see gateway.edge.intake).
    app[INTAKE] = Intake(outbox, app[METRICS])
    yield
    await app[INTAKE].drain()
    await outbox.close()


async def _stitches_ctx(app: web.Application) -> AsyncIterator[None]:
    # Visitor contexts kept by page rules for later webhooks, in the same store.
    settings = app[RUNTIME].settings
    key = load_key(settings)
    stitches: StitchStore
    outbox = app[OUTBOX]
    if isinstance(outbox, PgOutbox):
        stitches = PgStitches(outbox.db, Sealer(key), key=key)
    else:
        stitches = await Stitches.open(settings.buffer, Sealer(key), key=key)
    app[STITCHES] = stitches
    yield
    await stitches.close()


async def _reader_ctx(app: web.Application) -> AsyncIterator[None]:
    # Health, status and metrics read the buffer on their own connection (see BufferReader).
    settings = app[RUNTIME].settings
    limit = int(settings.max_buffer_mb * 1024 * 1024)
    reader: StoreReader
    outbox = app[OUTBOX]
    if isinstance(outbox, PgOutbox):
        reader = PgReader(outbox.db, limit_bytes=limit)
    else:
        reader = await BufferReader.open(settings.buffer, limit_bytes=limit)
    app[BUFFER_READER] = reader
    yield
    await reader.close()


async def _sender_ctx(app: web.Application) -> AsyncIterator[None]:
    settings = app[RUNTIME].settings
    session = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=max(8, settings.send_concurrency * 2)),
        trust_env=False,
    )
    graph = GraphClient(
        session,
        graph_url=settings.graph_url,
        graph_version=settings.graph_version,
        timeout=settings.send_timeout,
        partner_agent=PARTNER_AGENT,
    )
    sender = Sender(
        app[OUTBOX],
        graph,
        settings.all_pixels(),
        SenderOptions.from_settings(settings),
        RetryPolicy.from_settings(settings),
        metrics=app[METRICS],
    )
    sender.pixel_sites = pixel_sites(settings)
    app[SENDER] = sender
    sender.start()
    yield
    await sender.stop(settings.shutdown_grace)
    await session.close()


async def _audiences_ctx(app: web.Application) -> AsyncIterator[None]:
    # Custom Audiences: the store the dashboard reads, and the periodic sync (one process
    # at a time holds its lease); opened once audiences are configured, at start or reload.
    service = AudienceService(
        lambda: _audience_store(app), lambda: app[RUNTIME].settings, metrics=app[METRICS]
    )
    app[AUDIENCES] = service
    await service.apply()
    yield
    await service.close()


async def _audience_store(app: web.Application) -> AudienceStore:
    outbox = app[OUTBOX]
    if isinstance(outbox, PgOutbox):
        return PgAudiences(outbox.db)
    return await SqliteAudiences.open(app[RUNTIME].settings.buffer)
