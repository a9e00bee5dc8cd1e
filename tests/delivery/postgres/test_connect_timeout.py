"""`store_connect_timeout`: validated like every duration, and how long the PostgreSQL store
keeps reconnecting before it gives up (at start-up and under a running gateway)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from gateway.config import Sources, load_settings
from gateway.delivery.postgres.outbox import open_postgres
from gateway.delivery.postgres.pool import DatabaseUnavailable
from gateway.delivery.seal import Sealer
from gateway.settings import ConfigError, Settings
from tests.delivery.postgres.test_pool import server_back_after
from tests.delivery.test_assembly_store import copy
from tests.fakes.pgcluster import Cluster, free_port

KEY = bytes(range(32))


def settings(env: dict[str, str]) -> Settings:
    return load_settings(Sources(config_file=None, environ=env, flags={}))


def test_the_setting_is_a_positive_duration_with_a_default() -> None:
    assert settings({}).store_connect_timeout == 10.0
    assert settings({"CAPIGW_STORE_CONNECT_TIMEOUT": "2s"}).store_connect_timeout == 2.0
    assert settings({"CAPIGW_STORE_CONNECT_TIMEOUT": "1m"}).store_connect_timeout == 60.0
    for bad in ("0", "-1", "soon", "2h"):
        with pytest.raises(ConfigError) as info:
            settings({"CAPIGW_STORE_CONNECT_TIMEOUT": bad})
        assert "store_connect_timeout" in str(info.value)


def _closed_port_store(timeout: str) -> Settings:
    # Nothing listens on this port: every connect is refused at once, so only the setting
    # decides how long the store keeps trying.
    url = f"postgresql://gw@127.0.0.1:{free_port()}/gw"
    return settings(
        {
            "CAPIGW_BUFFER": url,
            "CAPIGW_ENCRYPTION_KEY": KEY.hex(),
            "CAPIGW_STORE_CONNECT_TIMEOUT": timeout,
        }
    )


async def _seconds_to_give_up(s: Settings) -> float:
    started = time.monotonic()
    with pytest.raises(ConfigError) as info:
        await open_postgres(s, Sealer(KEY), None)
    assert "unreachable" in str(info.value)
    return time.monotonic() - started


async def test_start_up_gives_up_after_the_setting() -> None:
    short = await _seconds_to_give_up(_closed_port_store("0.3s"))
    long = await _seconds_to_give_up(_closed_port_store("2s"))
    assert short < 1.5
    assert 2.0 <= long < 5.0


async def test_a_write_during_an_outage_fails_after_the_setting(
    postgres_store_dsn: str, postgres_cluster: Cluster, tmp_path: Path
) -> None:
    s = settings(
        {
            "CAPIGW_BUFFER": postgres_store_dsn,
            "CAPIGW_ENCRYPTION_KEY": KEY.hex(),
            "CAPIGW_STORE_CONNECT_TIMEOUT": "1s",
        }
    )
    box = await open_postgres(s, Sealer(KEY), None)
    try:
        assert await box.add([copy("api", event_id="before")]) == ["new"]
        with server_back_after(postgres_cluster):
            await asyncio.to_thread(postgres_cluster.stop)
            started = time.monotonic()
            with pytest.raises(DatabaseUnavailable):
                await box.add([copy("api", event_id="during")])
            took = time.monotonic() - started
        assert 1.0 <= took < 4.0
    finally:
        await box.close()
