"""A catalog per `[[sites]]` site, and the `[catalog]` configuration: each site's pages go to
its own catalog and are kept apart; CAPIGW_CATALOG_ID and clear start-up errors."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest

from gateway.config import Sources, load_settings
from gateway.settings import ConfigError
from tests.conftest import TOKEN, make_settings
from tests.fakes.catalog import start_fake_catalog
from tests.fakes.shop import start_shop
from tests.fakes.upstream import run_gateway

CATALOG_A = "111111111111111"
CATALOG_B = "222222222222222"


async def test_each_site_syncs_its_own_catalog(tmp_path: Path) -> None:
    async with (
        start_shop(products=2) as shop_a,
        start_shop(products=2) as shop_b,
        start_fake_catalog(token=TOKEN) as meta,
    ):
        shop_b.products["/p/1"].name = "Beta thing"  # type: ignore[union-attr]
        settings = make_settings(
            tmp_path,
            meta.url,
            pixel_id=[],
            events_api_keys=[],
            catalog={"catalog_id": CATALOG_A, "min_interval": 0},  # inherited by alpha
            sites=[
                {
                    "name": "alpha",
                    "hosts": ["a.example"],
                    "upstream": shop_a.url,
                    "pixel_id": ["100000000001"],
                },
                {
                    "name": "beta",
                    "hosts": ["b.example"],
                    "upstream": shop_b.url,
                    "pixel_id": ["100000000002"],
                    "catalog": {"catalog_id": CATALOG_B, "min_interval": 0},
                },
            ],
        )
        async with run_gateway(settings) as gw:
            for host in ("a.example", "b.example"):
                async with gw.session.get(gw.url + "/p/1", headers={"Host": host}) as resp:
                    assert resp.status == 200
            deadline = time.monotonic() + 15
            while True:
                async with gw.session.get(gw.url + "/_capi/catalog") as resp:
                    body: dict[str, Any] = await resp.json()
                if body["items"]["synced"] == 2:
                    break
                assert time.monotonic() < deadline, body
                await asyncio.sleep(0.05)
            paths = sorted(c.path for c in meta.batch_calls())
            assert paths == [f"/v26.0/{CATALOG_A}/items_batch", f"/v26.0/{CATALOG_B}/items_batch"]
            by_catalog = {c.path.split("/")[2]: c.requests[0]["data"] for c in meta.batch_calls()}
            assert by_catalog[CATALOG_A]["link"] == "http://a.example/p/1"
            assert by_catalog[CATALOG_B]["title"] == "Beta thing"
            assert body["sites"]["alpha"]["catalog_id"] == CATALOG_A
            assert body["sites"]["beta"]["items"]["synced"] == 1
            async with gw.session.get(gw.url + "/_capi/catalog.csv") as resp:
                assert resp.status == 400  # two catalogs: which one?
            async with gw.session.get(gw.url + "/_capi/catalog.csv?site=beta") as resp:
                assert resp.status == 200 and "Beta thing" in await resp.text()


def load(tmp_path: Path, text: str, **environ: str) -> Any:
    path = tmp_path / "gateway.toml"
    path.write_text(text)
    return load_settings(Sources(config_file=path, environ=environ))


def test_catalog_id_from_the_environment_fills_the_table(tmp_path: Path) -> None:
    settings = load(
        tmp_path,
        'pixel_id = [123456789012]\naccess_token = "t"\n[catalog]\nmin_interval = "1h"\n',
        CAPIGW_CATALOG_ID="987654321",
    )
    assert settings.catalog.catalog_id == "987654321"
    assert settings.catalog.min_interval == 3600.0
    only_env = load(tmp_path, "pixel_id = [123456789012]\n", CAPIGW_CATALOG_ID="987654321")
    assert only_env.catalog.catalog_id == "987654321" and only_env.catalog.delete_after == 3


@pytest.mark.parametrize(
    ("table", "expected"),
    [
        ('catalog_id = "abc"', r"catalog\.catalog_id: 'abc' is not a catalog id"),
        ('catalog_id = "12345678"\nmin_interval = "soon"', r"catalog\.min_interval: 'soon'"),
        ('catalog_id = "12345678"\npages = ["products/*"]', r"catalog\.pages: 'products/\*'"),
        ('catalog_id = "12345678"\nid_source = "ean"', r"catalog\.id_source: 'ean' is not"),
        ('catalog_id = "12345678"\ndelete_afer = 2', r"catalog\.delete_afer: unknown setting"),
        ("min_interval = 5", r"catalog\.catalog_id: Field required"),
    ],
)
def test_a_bad_catalog_table_names_the_key(tmp_path: Path, table: str, expected: str) -> None:
    with pytest.raises(ConfigError, match=expected):
        load(tmp_path, f"[catalog]\n{table}\n")


def test_a_catalog_without_any_token_is_refused_at_start(tmp_path: Path) -> None:
    settings = load(tmp_path, 'pixel_id = [123456789012]\n[catalog]\ncatalog_id = "12345678"\n')
    with pytest.raises(ConfigError, match=r"catalog\.access_token: catalog 12345678 has no"):
        settings.check_ready_to_send()
    with_pixel_token = load(
        tmp_path,
        'pixel_id = [123456789012]\naccess_token = "EAAB"\n[catalog]\ncatalog_id = "12345678"\n',
    )
    with_pixel_token.check_ready_to_send()


async def test_a_tenant_sees_its_own_catalog_only(tmp_path: Path) -> None:
    async with (
        start_shop(products=1) as shop_a,
        start_shop(products=1) as shop_b,
        start_fake_catalog(token=TOKEN) as meta,
    ):
        settings = make_settings(
            tmp_path,
            meta.url,
            pixel_id=[],
            events_api_keys=[],
            admin_token="global-admin-token",
            catalog={"catalog_id": CATALOG_A, "min_interval": 0},
            sites=[
                {
                    "name": "alpha",
                    "hosts": ["a.example"],
                    "upstream": shop_a.url,
                    "pixel_id": ["100000000001"],
                    "admin_token": "tenant-alpha-token",
                },
                {
                    "name": "beta",
                    "hosts": ["b.example"],
                    "upstream": shop_b.url,
                    "pixel_id": ["100000000002"],
                    "catalog": {"catalog_id": CATALOG_B, "min_interval": 0},
                },
            ],
        )
        async with run_gateway(settings) as gw:
            for host in ("a.example", "b.example"):
                async with gw.session.get(gw.url + "/p/1", headers={"Host": host}) as resp:
                    assert resp.status == 200
            tenant = {"Authorization": "Bearer tenant-alpha-token"}
            deadline = time.monotonic() + 15
            while True:
                async with gw.session.get(gw.url + "/_capi/catalog", headers=tenant) as resp:
                    assert resp.status == 200
                    body: dict[str, Any] = await resp.json()
                if body["items"]["synced"] == 1:
                    break
                assert time.monotonic() < deadline, body
                await asyncio.sleep(0.05)
            assert set(body["sites"]) == {"alpha"} and body["catalog_id"] == CATALOG_A
            async with gw.session.get(gw.url + "/_capi/catalog.csv", headers=tenant) as resp:
                assert resp.status == 200 and "SKU-1" in await resp.text()
            async with gw.session.get(
                gw.url + "/_capi/catalog.csv?site=beta", headers=tenant
            ) as resp:
                assert resp.status == 404  # not the tenant's catalog
            async with gw.session.get(gw.url + "/_capi/catalog") as resp:
                assert resp.status == 401
