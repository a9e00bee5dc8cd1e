"""`capi-gateway catalog crawl|status|list|sync|export` as a user runs them: a crawl of a
loopback shop fills an empty catalog, sync sends it to a fake Catalog API, status shows
Meta's per-item errors; on a SQLite file and on PostgreSQL."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tests.fakes.catalog import FakeCatalog, start_fake_catalog
from tests.fakes.processes import CliResult, clean_env, cli_in_thread, gateway_cmd
from tests.fakes.shop import Shop, start_shop

CATALOG_ID = "444000111222333"
TOKEN = "EAAB-catalog-cli-token"
PUBLIC = "https://shop.example"


Result = CliResult


async def cli(*args: str, cwd: Path, config: Path) -> Result:
    """`capi-gateway catalog ARGS --config CONFIG` in a thread (it runs its own event loop).

    In-process: each spawned interpreter costs seconds of imports on a loaded machine, and
    a file here runs the command some twenty times; `script` runs the real one.
    """
    del cwd  # every path the commands use is in the config, absolute
    return await cli_in_thread(["catalog", *args, "--config", str(config)], clean_env())


async def script(*args: str, cwd: Path, config: Path) -> Result:
    """The `capi-gateway` script itself, in a process of its own."""
    proc = await asyncio.create_subprocess_exec(
        *gateway_cmd(),
        "catalog",
        *args,
        "--config",
        str(config),
        cwd=cwd,
        env=clean_env(),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return Result(proc.returncode, out.decode(), err.decode())


@pytest.fixture
async def shop() -> AsyncIterator[Shop]:
    async with start_shop(products=12) as shop:
        yield shop


@pytest.fixture
async def meta() -> AsyncIterator[FakeCatalog]:
    async with start_fake_catalog(token=TOKEN) as fake:
        yield fake


def write_config(
    tmp_path: Path, location: Path | str, shop: Shop, meta: FakeCatalog, **more: Any
) -> Path:
    buffer = str(location)
    lines = [
        f'buffer = "{buffer}"',
        'pixel_id = "123456789012"',
        f'access_token = "{TOKEN}"',
        f'upstream = "{shop.url}"',
        f'graph_url = "{meta.url}"',
        'encryption_key = "' + "ab" * 32 + '"',
        *(f"{k} = {json.dumps(v)}" for k, v in more.items()),
        "[catalog]",
        f'catalog_id = "{CATALOG_ID}"',
    ]
    path = tmp_path / "gateway.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


async def test_crawl_fills_an_empty_catalog_and_sync_sends_it(
    tmp_path: Path, store_location: Path | str, shop: Shop, meta: FakeCatalog
) -> None:
    config = write_config(tmp_path, store_location, shop, meta)
    shop.status["/p/12"] = 410
    meta.reject["SKU-5"] = "The image_link could not be downloaded"
    crawled = await cli(
        "crawl", "--public-origin", PUBLIC, "--rate", "500", "--json", cwd=tmp_path, config=config
    )
    assert crawled.code == 0, crawled.err
    counts = json.loads(crawled.out)
    assert counts["pages"] == 12 and counts["items"] == 11 and counts["new"] == 11
    assert counts["missing"] == 1
    assert set(shop.hits) >= {f"/p/{n}" for n in range(1, 13)}

    status = await cli("status", "--json", cwd=tmp_path, config=config)
    body = json.loads(status.out)
    assert body["configured"] is True
    assert body["items"] == {"pending": 11, "synced": 0, "error": 0, "deleted": 0}

    synced = await cli("sync", "--json", cwd=tmp_path, config=config)
    assert synced.code == 0, synced.err
    report = json.loads(synced.out)
    assert (report["sent"], report["synced"], report["errors"]) == (11, 10, 1)
    assert len(meta.batch_calls()) == 1 and len(meta.items) == 10
    assert meta.items["SKU-3"]["link"] == f"{PUBLIC}/p/3"

    status = await cli("status", "--json", cwd=tmp_path, config=config)
    body = json.loads(status.out)
    assert body["items"]["synced"] == 10 and body["last_sync"] is not None
    assert body["errors"] == [
        {
            "id": "SKU-5",
            "url": f"{PUBLIC}/p/5",
            "message": "The image_link could not be downloaded",
            "at": body["errors"][0]["at"],
        }
    ]
    text = await cli("status", cwd=tmp_path, config=config)
    assert "SKU-5" in text.out and "The image_link could not be downloaded" in text.out

    listed = await cli("list", "--state", "error", "--json", cwd=tmp_path, config=config)
    [row] = [json.loads(line) for line in listed.out.splitlines()]
    assert row["id"] == "SKU-5" and row["error"] == "The image_link could not be downloaded"

    export = await cli("export", "--format", "csv", cwd=tmp_path, config=config)
    lines = export.out.splitlines()
    assert lines[0].startswith("id,title,description,availability")
    assert len(lines) == 12  # header + 11 items (an erroring item is still the shop's)

    # A second sync has nothing to send.
    again = await cli("sync", "--json", cwd=tmp_path, config=config)
    assert json.loads(again.out)["sent"] == 0 and len(meta.batch_calls()) == 1


async def test_sync_with_an_expired_token_parks_and_says_so(
    tmp_path: Path, shop: Shop, meta: FakeCatalog
) -> None:
    config = write_config(tmp_path, tmp_path / "o.db", shop, meta)
    await cli("crawl", "--public-origin", PUBLIC, "--rate", "500", cwd=tmp_path, config=config)
    meta.token = "EAAB-some-other-token"  # ours expired
    synced = await cli("sync", cwd=tmp_path, config=config)
    assert synced.code == 1
    assert "blocked" in synced.out and "access token" in synced.out
    status = json.loads((await cli("status", "--json", cwd=tmp_path, config=config)).out)
    assert status["items"]["pending"] == 12 and "access token" in status["blocked"]


async def test_dry_run_sync_records_without_calling_meta(
    tmp_path: Path, shop: Shop, meta: FakeCatalog
) -> None:
    config = write_config(tmp_path, tmp_path / "o.db", shop, meta, dry_run=True)
    await cli("crawl", "--public-origin", PUBLIC, "--rate", "500", cwd=tmp_path, config=config)
    synced = await cli("sync", "--json", cwd=tmp_path, config=config)
    assert json.loads(synced.out)["outcome"] == "dry-run"
    assert meta.calls == []


async def test_dry_run_flag_and_status_say_how_the_catalog_was_synced(
    tmp_path: Path, shop: Shop, meta: FakeCatalog
) -> None:
    config = write_config(tmp_path, tmp_path / "o.db", shop, meta)
    await cli("crawl", "--public-origin", PUBLIC, "--rate", "500", cwd=tmp_path, config=config)
    before = json.loads((await cli("status", "--json", cwd=tmp_path, config=config)).out)
    assert before["dry_run"] is False
    synced = await cli("sync", "--dry-run", "--json", cwd=tmp_path, config=config)
    assert json.loads(synced.out)["outcome"] == "dry-run"
    assert meta.calls == []
    # Without the flag, status reads the mode off the store: a gateway serving with
    # --dry-run (as the demo does) is reported as such, as `{prefix}/catalog` reports it.
    after = json.loads((await cli("status", "--json", cwd=tmp_path, config=config)).out)
    assert after["dry_run"] is True and after["last_result"] == "dry-run"


async def test_commands_explain_a_missing_catalog(tmp_path: Path) -> None:
    config = tmp_path / "gateway.toml"
    config.write_text(f'buffer = "{tmp_path / "o.db"}"\ndry_run = true\n')
    result = await script("sync", cwd=tmp_path, config=config)
    assert result.code != 0 and "no [catalog] is configured" in result.err
    status = await script("status", "--json", cwd=tmp_path, config=config)
    assert json.loads(status.out)["configured"] is False
