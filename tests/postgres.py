"""PostgreSQL for the tests: one server per session, one fresh database per test.

The server is the one `CAPIGW_TEST_POSTGRES` names (a libpq URL of a role that may create
databases), else a throwaway cluster of our own (tests/fakes/pgcluster.py) in a temp dir on a
free loopback port — never whatever may already listen on 5432. Each test that asks for
`postgres_dsn` gets a database of its own, created from an empty session template and
dropped after the test; `postgres_store_dsn` likewise, cloned from a template that holds
the store's schema already migrated (quicker than migrating in every test).

Without PostgreSQL on the machine the tests that need it are skipped with a message naming
scripts/install-postgres.sh; under CI (`CI=true`) they fail instead: CI must run them.
Registered as a plugin from tests/conftest.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import subprocess
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest

from gateway.delivery.postgres.migrations import migrate
from gateway.delivery.postgres.pool import Database, DatabaseUnavailable
from tests.fakes.pgcluster import Cluster, PostgresMissing, throwaway_cluster

ENV = "CAPIGW_TEST_POSTGRES"


@dataclass(frozen=True)
class PostgresServer:
    """The session's server: a DSN with the right to create databases, and our cluster if ours."""

    admin_dsn: str
    template: str
    cluster: Cluster | None

    @property
    def store_template(self) -> str:
        """The template database that holds the migrated store schema."""
        return f"{self.template}_store"

    def dsn(self, database: str) -> str:
        """The admin DSN pointed at `database`."""
        parts = urlsplit(self.admin_dsn)
        return urlunsplit(parts._replace(path=f"/{database}"))


def _unavailable(reason: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason} (CI=true: the PostgreSQL tests must run here)", pytrace=False)
    pytest.skip(reason)


async def _prepare_templates(server: PostgresServer) -> None:
    await _execute(
        server.admin_dsn,
        f"CREATE DATABASE {server.template}",
        f"CREATE DATABASE {server.store_template}",
    )
    db = await Database.open(server.dsn(server.store_template), health_interval=0)
    try:
        await migrate(db)
    finally:
        await db.close()


async def _execute(dsn: str, *statements: str) -> None:
    conn = await asyncpg.connect(dsn, timeout=10)
    try:
        for statement in statements:
            await conn.execute(statement)
    finally:
        await conn.close()


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """The session's PostgreSQL server (CAPIGW_TEST_POSTGRES, or a throwaway cluster)."""
    # A session template of our own: several sessions may share an external server.
    template = f"capigw_tpl_{secrets.token_hex(4)}"
    external = os.environ.get(ENV)
    if external:
        server = PostgresServer(external, template, None)
        try:
            asyncio.run(_prepare_templates(server))
        except (OSError, asyncpg.PostgresError, DatabaseUnavailable) as exc:
            pytest.fail(f"{ENV} does not name a usable PostgreSQL server: {exc}", pytrace=False)
        try:
            yield server
        finally:
            asyncio.run(
                _execute(
                    external,
                    *(
                        f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"
                        for name in (server.template, server.store_template)
                    ),
                )
            )
        return
    with contextlib.ExitStack() as stack:
        try:
            cluster = stack.enter_context(throwaway_cluster())
        except PostgresMissing as exc:
            _unavailable(str(exc))
            return
        except subprocess.CalledProcessError as exc:
            pytest.fail(
                f"starting a throwaway PostgreSQL cluster failed: {exc}\n{exc.stderr.decode()}",
                pytrace=False,
            )
        server = PostgresServer(cluster.dsn(), template, cluster)
        asyncio.run(_prepare_templates(server))
        yield server


@pytest.fixture
def postgres_cluster(postgres_server: PostgresServer) -> Cluster:
    """Our own throwaway cluster, for tests that stop or restart the server."""
    if postgres_server.cluster is None:
        pytest.skip(f"{ENV} names an external server: this test restarts its own cluster")
    return postgres_server.cluster


@pytest.fixture
async def postgres_dsn(postgres_server: PostgresServer) -> AsyncIterator[str]:
    """A fresh, empty database for this test; its libpq URL."""
    async with _database(postgres_server, postgres_server.template) as dsn:
        yield dsn


@pytest.fixture
async def postgres_store_dsn(postgres_server: PostgresServer) -> AsyncIterator[str]:
    """A fresh database holding the store's migrated schema (no rows) for this test."""
    async with _database(postgres_server, postgres_server.store_template) as dsn:
        yield dsn


@contextlib.asynccontextmanager
async def _database(server: PostgresServer, template: str) -> AsyncIterator[str]:
    name = f"capigw_test_{secrets.token_hex(6)}"
    # Our cluster runs with fsync off: copying the template's files (and the checkpoint that
    # takes) is about 3x quicker than PostgreSQL's default of writing every page to the WAL.
    # An external server keeps the default (on a durable server the checkpoint costs more).
    strategy = " STRATEGY FILE_COPY" if server.cluster is not None else ""
    await _execute(server.admin_dsn, f"CREATE DATABASE {name} TEMPLATE {template}{strategy}")
    try:
        yield server.dsn(name)
    finally:
        await _execute(server.admin_dsn, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
