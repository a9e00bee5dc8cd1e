"""`capi-gateway doctor`'s audience checks on both store backends: account and token, audiences
not synced yet, parked on a refused token, failing, and below Meta's minimum size."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from gateway.commands.audiencecheck import META_MIN_AUDIENCE, check_audiences
from gateway.commands.doctor import diagnose
from gateway.commands.findings import Finding, Level
from gateway.delivery.audiences import AudienceState
from gateway.delivery.audiences_sync import AudienceSync, targets
from gateway.delivery.graph import GraphClient
from gateway.delivery.outbox import Outbox
from gateway.delivery.postgres.outbox import PgOutbox
from gateway.settings import Settings
from tests.delivery import test_audiences
from tests.delivery.test_audiences import (
    ACCOUNT,
    CART,
    DAY,
    PIXEL,
    POLICY,
    TOKEN,
    event,
    settings,
)
from tests.fakes.audiences import start_fake_audiences

# The outbox and audience store of each backend (tests/delivery/test_audiences.py).
stores = test_audiences.stores


def audience_findings(found: list[Finding]) -> list[Finding]:
    return [f for f in found if f.check == "audiences"]


async def test_doctor_follows_an_audience_from_new_to_usable(
    stores: Any, store_location: Path | str
) -> None:
    box, audiences = stores
    where = {"buffer": str(box.path)} if isinstance(box, Outbox) else {"buffer": store_location}
    config = settings(CART, **where)
    assert isinstance(box, Outbox | PgOutbox)

    found = await check_audiences(config)
    assert [f.level for f in found] == [Level.OK, Level.NOTE]
    assert "1 audience(s) for act_" in found[0].message and "every 1.0 h" in found[0].message
    assert "has not been synced yet" in found[1].message

    now = time.time()
    await box.add(
        [
            event("AddToCart", f"fb.1.1.{n}", at=now - DAY, em=f"p{n}@example.com")
            for n in range(META_MIN_AUDIENCE - 1)
        ]
    )
    (target,) = targets(config)
    async with start_fake_audiences(token=TOKEN) as fake, aiohttp.ClientSession() as session:
        graph = GraphClient(
            session, graph_url=fake.url, graph_version="v26.0", timeout=5, partner_agent="t"
        )
        sync = AudienceSync(audiences, graph, POLICY)
        assert (await sync.sync(target, now=now)).error is None
        found = await check_audiences(config)
        (small,) = [f for f in found if f.level is Level.WARN]
        assert f"holds {META_MIN_AUDIENCE - 1} row(s)" in small.message
        assert f"at least {META_MIN_AUDIENCE} people" in small.message

        # One more member: big enough, no warning.
        await box.add([event("AddToCart", "fb.1.1.last", at=now - DAY, em="last@example.com")])
        assert (await sync.sync(target, now=now)).error is None
        found = await check_audiences(config)
        assert [f.level for f in found] == [Level.OK, Level.OK]
        assert f"{META_MIN_AUDIENCE} row(s), last sync" in found[1].message

        # A refusal Meta will not take back on retry: a WARN with the command to retry.
        await box.add([event("AddToCart", "fb.1.1.new", at=now - DAY, em="new@example.com")])
        fake.fail_next(status=400, code=100, is_transient=False, users_only=True)
        assert (await sync.sync(target, now=now)).error is not None
        found = await check_audiences(config)
        (failed,) = [f for f in found if f.level is Level.WARN]
        assert "the last sync failed" in failed.message and "audiences sync" in (failed.fix or "")

        # A refused token parks the audience: a FAIL naming the fix.
        (stale,) = targets(settings(CART, audiences_access_token="EAAB-expired", **where))
        assert (await sync.sync(stale, now=now)).parked
        found = audience_findings(await diagnose(config, graph_timeout=0.5))
        (parked,) = [f for f in found if f.level is Level.FAIL]
        assert "is parked" in parked.message and "audiences_access_token" in (parked.fix or "")


async def test_doctor_fails_without_a_token_or_an_account(tmp_path: Path) -> None:
    no_token = Settings.model_validate(
        {
            "pixel_id": [PIXEL],
            "ad_account_id": ACCOUNT,
            "audiences": [CART],
            "buffer": str(tmp_path / "o.db"),
        }
    )
    found = await check_audiences(no_token)
    (missing,) = [f for f in found if f.level is Level.FAIL]
    assert "no access token" in missing.message and "audiences_access_token" in (missing.fix or "")

    # In a dry run nothing is sent, so neither is needed; without audiences nothing is said.
    dry = Settings.model_validate(
        {
            "pixel_id": [PIXEL],
            "dry_run": True,
            "audiences": [CART],
            "buffer": str(tmp_path / "o.db"),
        }
    )
    found = await check_audiences(dry)
    assert [f.level for f in found] == [Level.OK] and "dry run" in found[0].message
    assert await check_audiences(settings()) == []
    with pytest.raises(ValueError, match="ad_account_id"):
        Settings.model_validate({"pixel_id": [PIXEL], "access_token": TOKEN, "audiences": [CART]})


async def test_doctor_site_reads_that_sites_audiences(
    stores: Any, store_location: Path | str
) -> None:
    _, audiences = stores
    where = {"buffer": str(store_location)}
    config = Settings.model_validate(
        {
            "access_token": TOKEN,
            "ad_account_id": ACCOUNT,
            "audiences": [CART],
            "sites": [
                {
                    "name": name,
                    "hosts": [f"{name}.example"],
                    "upstream": "http://127.0.0.1:9",
                    "pixel_id": [pixel],
                }
                for name, pixel in (("a", "1234567890"), ("b", "1234567891"))
            ],
            **where,
        }
    )
    await audiences.save(
        AudienceState(
            "b", CART["name"], "9", size=500, last_error="token expired", blocked_token="f00d"
        )
    )
    (site_b,) = (s for s in config.site_list() if s.name == "b")
    # A site's settings name the process's store, a PostgreSQL one too.
    assert (site_b.settings.store_url, site_b.settings.buffer) == (config.store_url, config.buffer)
    found = await check_audiences(site_b.settings, site="b")
    (parked,) = [f for f in found if f.level is Level.FAIL]
    assert f"'b/{CART['name']}' is parked" in parked.message
    (site_a,) = (s for s in config.site_list() if s.name == "a")
    found = await check_audiences(site_a.settings, site="a")
    assert [f.level for f in found] == [Level.OK, Level.NOTE]  # a's own: never synced
