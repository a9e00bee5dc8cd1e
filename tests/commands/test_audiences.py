"""Audiences end to end: visitors of the demo shop through the real proxy become members,
`capi-gateway audiences list|sync|export` reads and syncs them to the fake Custom Audience
API, and `serve` syncs on its own."""

from __future__ import annotations

import asyncio
import contextlib
import csv
import io
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from gateway.cli import main
from gateway.demo_shop import shop_app
from tests.browser.site import serve
from tests.conftest import PIXEL, TOKEN, auth, make_settings, wait_for
from tests.delivery.test_audiences import meta_row
from tests.edge.test_stitching import Visitor
from tests.fakes.audiences import FakeAudiences, start_fake_audiences
from tests.fakes.graph import FakeGraph
from tests.fakes.upstream import run_gateway

ACCOUNT = "5550001112"

# The demo shop's cart form (server side: POST /cart/add answers 303), checkout (the email,
# hashed) and thank-you page, as rules.
RULES = """
[[rule]]
name = "add-to-cart"
event = "AddToCart"
method = "POST"
path = "/cart/add"
status = "3xx"

[rule.extract]
content_ids = { source = "form", key = "sku" }
currency = "EUR"

[[rule]]
name = "payment-submitted"
event = "AddPaymentInfo"
method = "POST"
path = "/checkout"
status = "3xx"
form = { email = true }

[rule.extract]
email = { source = "form", key = "email" }

[[rule]]
name = "purchase"
event = "Purchase"
method = "GET"
path = "/thank-you"
query = { order = true }
status = 200
event_id = "purchase-{order_id}"

[rule.extract]
order_id = { source = "query", key = "order" }
value = { source = "query", key = "total", type = "number" }
currency = "EUR"
"""

AUDIENCE = {
    "name": "Cart abandoners",
    "events": ["AddToCart"],
    "exclude_events": ["Purchase"],
    "window": "14d",
}


def config_file(tmp_path: Path, graph_url: str, buffer: Path) -> Path:
    """A config for the audiences command: the store, the account, the fake's URL."""
    path = tmp_path / "gateway.toml"
    path.write_text(
        f'pixel_id = ["{PIXEL}"]\naccess_token = "{TOKEN}"\nad_account_id = "act_{ACCOUNT}"\n'
        f'graph_url = "{graph_url}"\nbuffer = "{buffer}"\nkey_file = "{buffer}.key"\n'
        "retry_base = 0.01\nretry_cap = 0.05\n\n"
        '[[audiences]]\nname = "Cart abandoners"\nevents = ["AddToCart"]\n'
        'exclude_events = ["Purchase"]\nwindow = "14d"\n',
        encoding="utf-8",
    )
    return path


async def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    """Run `capi-gateway` in a thread (it runs its own event loop); exit code and stdout."""
    code = await asyncio.to_thread(main, list(argv))
    return code, capsys.readouterr().out


@pytest.fixture
async def fake() -> AsyncIterator[FakeAudiences]:
    async with start_fake_audiences(token=TOKEN) as f:
        yield f


async def test_a_visitor_who_gave_an_email_at_checkout_and_left_is_a_member(
    tmp_path: Path,
    fake_graph: FakeGraph,
    fake: FakeAudiences,
    capsys: pytest.CaptureFixture[str],
) -> None:
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "shop.toml").write_text(RULES, encoding="utf-8")
    buffer = tmp_path / "outbox.db"
    async with contextlib.AsyncExitStack() as stack:
        upstream = await stack.enter_async_context(serve(shop_app()))
        settings = make_settings(
            tmp_path,
            fake_graph.url,
            upstream=upstream,
            rules=rules,
            buffer=buffer,
            consent="cookie_consent",
        )
        front = await stack.enter_async_context(run_gateway(settings))
        consent = {"cookie_consent": "granted"}

        async def shop(visitor: Visitor, email: str, *, pay: bool) -> None:
            assert (await visitor.go("GET", "/?fbclid=IwAR2xAudienceClick")).status == 200
            assert (await visitor.go("POST", "/cart/add", data={"sku": "tee-01"})).status == 303
            paid = await visitor.go("POST", "/checkout", data={"email": email, "phone": ""})
            assert paid.status == 302
            if pay:
                assert (await visitor.go("GET", paid.headers["Location"])).status == 200

        # Ann adds to cart and gives her email at checkout, then leaves without paying.
        await shop(
            Visitor(front, ip="203.0.113.61", cookies=dict(consent)), "Ann@Example.com", pay=False
        )
        # Bob does the same and pays: out.
        await shop(
            Visitor(front, ip="203.0.113.62", cookies=dict(consent)), "bob@example.com", pay=True
        )
        # Carl never consented: nothing of him is stored.
        await shop(Visitor(front, ip="203.0.113.63"), "carl@example.com", pay=False)
        await wait_for(
            lambda: len([e for e in fake_graph.events if e["event_name"] == "Purchase"]) == 1
        )

    config = config_file(tmp_path, fake.url, buffer)
    ann = meta_row(em="ann@example.com")

    code, out = await cli(capsys, "audiences", "export", "--config", str(config))
    assert code == 0
    exported = list(csv.reader(io.StringIO(out)))
    assert exported[0][0] == "email" and exported[1:] == [list(ann)]

    code, out = await cli(capsys, "audiences", "sync", "--config", str(config), "--json")
    assert code == 0, out
    (report,) = json.loads(out)
    assert report == {
        "site": None,
        "name": "Cart abandoners",
        "id": "1001",
        "size": 1,
        "added": 1,
        "removed": 0,
        "schema": ["EMAIL", "PHONE", "FN", "LN", "CT", "ST", "ZIP", "COUNTRY", "GEN", "EXTERN_ID"],
        "added_rows": [list(ann)],
        "removed_rows": [],
        "truncated": False,
        "dry_run": False,
        "parked": False,
        "error": None,
    }
    assert fake.creates[0]["account"] == ACCOUNT
    assert fake.members("1001") == {ann}
    # Nothing left to send; --max-rows must be a count.
    code, out = await cli(
        capsys, "audiences", "sync", "--config", str(config), "--json", "--max-rows", "0"
    )
    assert code == 0
    assert json.loads(out)[0]["added_rows"] == [] and json.loads(out)[0]["added"] == 0
    with pytest.raises(SystemExit) as exited:
        main(["audiences", "sync", "--config", str(config), "--max-rows", "x"])
    assert exited.value.code == 2
    assert "not a number of rows" in capsys.readouterr().err

    code, out = await cli(capsys, "audiences", "list", "--config", str(config), "--json")
    assert code == 0
    (listed,) = json.loads(out)
    assert listed["id"] == "1001" and listed["size"] == 1 and listed["held_by_meta"] == 1
    assert listed["coverage"]["EMAIL"] == 1.0 and listed["coverage"]["PHONE"] == 0.0
    assert listed["last_sync"] is not None and listed["last_error"] is None
    code, out = await cli(capsys, "audiences", "list", "--config", str(config))
    assert code == 0
    assert out.startswith("Cart abandoners: id 1001, 1 member(s) now, 1 sent; last sync 20")
    assert "matched keys: EMAIL 100%" in out
    code, out = await cli(capsys, "audiences", "export", "--config", str(config), "--json")
    assert json.loads(out)[0]["data"] == [list(ann)]
    # Unknown names and sites are errors that say what is configured.
    assert main(["audiences", "sync", "--config", str(config), "--name", "Nope"]) == 2
    assert "no audience is configured named 'Nope'" in capsys.readouterr().err


async def test_serve_syncs_periodically(tmp_path: Path, fake: FakeAudiences) -> None:
    settings = make_settings(
        tmp_path,
        fake.url,
        ad_account_id=ACCOUNT,
        audiences=[AUDIENCE],
        audiences_sync_interval=0.2,
    )
    async with run_gateway(settings) as front:
        event = {
            "event_name": "AddToCart",
            "event_source_url": "https://shop.example/p/1",
            "user_data": {
                "email": "dana@example.com",
                "fbp": "fb.1.1700000000000.99",
                "user_agent": "UA",
            },
        }
        async with front.session.post(
            f"{front.url}/_capi/events", json={"data": [event]}, headers=auth()
        ) as resp:
            assert resp.status in (200, 202), await resp.text()
        await wait_for(lambda: bool(fake.members("1001")), timeout=10)
        # The dashboard's panel: size, the keys the members carry, the last sync.
        async with front.session.get(
            f"{front.url}/_capi/admin", headers={"Accept": "text/html"}
        ) as resp:
            assert resp.status == 200
            page = await resp.text()
    assert fake.members("1001") == {meta_row(em="dana@example.com")}
    panel = page[page.index('<section id="audiences">') :]
    panel = panel[: panel.index("</section>")]
    assert 'data-audience="Cart abandoners"' in panel and "<code>1001</code>" in panel
    assert "<td>1</td>" in panel
    assert 'data-key="EMAIL">EMAIL 100%' in panel and 'data-key="PHONE"' not in panel
    assert "<time datetime=" in panel and "never" not in panel


async def test_audiences_without_an_ad_account_are_a_start_up_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "gateway.toml"
    config.write_text(
        f'pixel_id = ["{PIXEL}"]\naccess_token = "{TOKEN}"\n\n'
        '[[audiences]]\nname = "Carts"\nevents = ["AddToCart"]\n',
        encoding="utf-8",
    )
    code = main(["check", "--config", str(config)])
    err = capsys.readouterr().err
    assert code == 2
    assert "gateway.toml" in err and "audiences" in err and "ad_account_id" in err


def test_audience_config_errors_name_the_key(tmp_path: Path) -> None:
    from gateway.settings import Settings

    bad: list[dict[str, Any]] = [
        {**AUDIENCE, "window": "soon"},
        {**AUDIENCE, "exclude_events": ["AddToCart"]},
        {**AUDIENCE, "events": []},
    ]
    for spec in bad:
        with pytest.raises(ValueError, match="audiences"):
            Settings.model_validate({"dry_run": True, "audiences": [spec]})
    with pytest.raises(ValueError, match="profile_ttl"):
        Settings.model_validate({"dry_run": True, "profile_ttl": 0, "audiences": [AUDIENCE]})
    with pytest.raises(ValueError, match="defined twice"):
        Settings.model_validate({"dry_run": True, "audiences": [AUDIENCE, AUDIENCE]})


async def test_serve_parks_on_a_refused_token_and_resumes_after_a_reload(
    tmp_path: Path, fake: FakeAudiences
) -> None:
    from gateway.app import reload

    base: dict[str, Any] = {
        "ad_account_id": ACCOUNT,
        "audiences": [AUDIENCE],
        "audiences_sync_interval": 0.1,
    }
    stale = make_settings(tmp_path, fake.url, audiences_access_token="EAAB-expired", **base)
    async with run_gateway(stale) as front:
        event = {
            "event_name": "AddToCart",
            "event_source_url": "https://shop.example/p/1",
            "user_data": {
                "email": "eve@example.com",
                "fbp": "fb.1.1700000000000.7",
                "user_agent": "UA",
            },
        }
        async with front.session.post(
            f"{front.url}/_capi/events", json={"data": [event]}, headers=auth()
        ) as resp:
            assert resp.status in (200, 202)
        await wait_for(lambda: fake.requests >= 1)
        await asyncio.sleep(0.5)  # several intervals: parked, so no further call
        assert fake.requests == 1 and fake.creates == []
        await reload(front.app, make_settings(tmp_path, fake.url, **base))
        await wait_for(lambda: bool(fake.members("1001")), timeout=10)
    assert fake.members("1001") == {meta_row(em="eve@example.com")}


async def test_audiences_added_by_a_reload_start_the_sync_and_removing_them_stops_it(
    tmp_path: Path, fake: FakeAudiences
) -> None:
    from gateway.app import reload
    from gateway.edge.appkeys import AUDIENCES

    base: dict[str, Any] = {"ad_account_id": ACCOUNT, "audiences_sync_interval": 0.1}
    async with run_gateway(make_settings(tmp_path, fake.url, **base)) as front:
        service = front.app[AUDIENCES]
        assert service.syncer is None and service.store is None
        event = {
            "event_name": "AddToCart",
            "event_source_url": "https://shop.example/p/1",
            "user_data": {
                "email": "finn@example.com",
                "fbp": "fb.1.1700000000000.8",
                "user_agent": "UA",
            },
        }
        async with front.session.post(
            f"{front.url}/_capi/events", json={"data": [event]}, headers=auth()
        ) as resp:
            assert resp.status in (200, 202)
        await asyncio.sleep(0.3)
        assert fake.requests == 0  # no audiences: nothing syncs
        await reload(front.app, make_settings(tmp_path, fake.url, audiences=[AUDIENCE], **base))
        await wait_for(lambda: bool(fake.members("1001")), timeout=10)
        assert fake.members("1001") == {meta_row(em="finn@example.com")}
        syncer = service.syncer
        assert syncer is not None
        # A second reload with the same audiences keeps the one loop running.
        await reload(front.app, make_settings(tmp_path, fake.url, audiences=[AUDIENCE], **base))
        assert service.syncer is syncer
        # dry_run switched on: a dry loop replaces the live one and Meta hears nothing more.
        await reload(
            front.app,
            make_settings(tmp_path, fake.url, audiences=[AUDIENCE], dry_run=True, **base),
        )
        dry = service.syncer
        assert dry is not None and dry is not syncer and dry.sync.dry_run
        calls = fake.requests
        await wait_for(lambda: dry.runs >= 2)
        assert fake.requests == calls
        syncer = dry
        await reload(front.app, make_settings(tmp_path, fake.url, **base))
        assert service.syncer is None
        runs = syncer.runs
        await asyncio.sleep(0.4)  # several intervals: no further run
        assert syncer.runs == runs
        # The dashboard still opens (the store stays for the state it holds).
        async with front.session.get(
            f"{front.url}/_capi/admin", headers={"Accept": "text/html"}
        ) as resp:
            assert resp.status == 200
