"""Several sites behind one gateway: routing by host, each site's pixels, cookies and keys.

Two real upstreams (tests.fakes.upstream) behind one in-process gateway, delivering to the
fake Graph API; the host a browser asks for picks the site.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import os
import re
import sqlite3
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from gateway.app import _reload_from, reload
from gateway.cli import main
from gateway.config import Sources, load_settings
from gateway.edge.appkeys import RUNTIME
from gateway.settings import ConfigError
from tests.conftest import TOKEN, UA, make_settings, wait_for
from tests.fakes.graph import FakeGraph
from tests.fakes.processes import free_port
from tests.fakes.upstream import Front, Upstream, run_gateway, start_upstream

PIXEL_A = "111111111111"
PIXEL_B = "222222222222"
KEY_A = "key-of-site-a-0123456789"
KEY_B = "key-of-site-b-0123456789"
HOST_A = "www.alpha.example"
HOST_B = "shop.beta.example"
TAG = re.compile(r'<script src="/_capi/px\.js[^>]*></script>')


@dataclass
class Two:
    """The gateway in front of two sites, and each site's upstream."""

    gw: Front
    a: Upstream
    b: Upstream


def site_tables(
    a: Upstream, b: Upstream, token_b: str = TOKEN, **extra_b: Any
) -> list[dict[str, Any]]:
    return [
        {
            "name": "alpha",
            "hosts": [HOST_A, "*.alpha.example"],
            "upstream": a.url,
            "pixels": [{"id": PIXEL_A, "access_token": TOKEN}],
            "events_api_keys": [KEY_A],
        },
        {
            "name": "beta",
            "hosts": [HOST_B],
            "upstream": b.url,
            "pixels": [{"id": PIXEL_B, "access_token": token_b}],
            "events_api_keys": [KEY_B],
            **extra_b,
        },
    ]


@contextlib.asynccontextmanager
async def two_sites(tmp_path: Path, graph: FakeGraph, **overrides: Any) -> AsyncIterator[Two]:
    async with start_upstream() as a, start_upstream() as b:
        values: dict[str, Any] = {
            "pixel_id": [],
            "events_api_keys": [],
            "access_token": None,
            "sites": site_tables(a, b),
        }
        values.update(overrides)
        settings = make_settings(tmp_path, graph.url, **values)
        async with run_gateway(settings) as gw:
            yield Two(gw, a, b)


@pytest.fixture
async def two(tmp_path: Path, fake_graph: FakeGraph) -> AsyncIterator[Two]:
    async with two_sites(tmp_path, fake_graph) as found:
        yield found


async def page(gw: Front, host: str, path: str = "/html") -> tuple[int, str, list[str]]:
    headers = {"User-Agent": UA, "Accept": "text/html", "Host": host, "X-Forwarded-For": "9.9.9.9"}
    async with gw.session.get(gw.url + path, headers=headers) as resp:
        return resp.status, (await resp.read()).decode(), resp.headers.getall("Set-Cookie", [])


# -- config ----------------------------------------------------------------------------------


def load(tmp_path: Path, text: str) -> Any:
    path = tmp_path / "gateway.toml"
    path.write_text(text)
    return load_settings(Sources(config_file=path, environ={}))


SITE_A = """
[[sites]]
name = "alpha"
hosts = ["a.example"]
upstream = "http://127.0.0.1:9"
pixel_id = [111111111111]
"""


def test_sites_inherit_top_level_settings_and_override_their_own(tmp_path: Path) -> None:
    settings = load(
        tmp_path,
        'access_token = "top"\nconsent = "cc"\ncookie_lifetime = "30d"\n'
        + SITE_A
        + '[[sites]]\nname = "beta"\nhosts = ["b.example"]\nupstream = "http://127.0.0.1:9"\n'
        + 'pixel_id = [222222222222]\nconsent = "none"\naccess_token = "own"\n',
    )
    alpha, beta = settings.site_list()
    assert (alpha.settings.consent, alpha.settings.access_token) == ("cc", "top")
    assert (beta.settings.consent, beta.settings.access_token) == ("none", "own")
    assert alpha.settings.cookie_lifetime == beta.settings.cookie_lifetime == 30 * 86400
    assert [p.id for p in settings.all_pixels()] == ["111111111111", "222222222222"]


def test_without_sites_there_is_one_implicit_site(tmp_path: Path) -> None:
    settings = load(tmp_path, 'upstream = "http://127.0.0.1:9"\npixel_id = [111111111111]\n')
    assert settings.site_list() == ()
    assert [p.id for p in settings.all_pixels()] == ["111111111111"]


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        (SITE_A, "sites.alpha.name: two sites are named 'alpha'"),
        (
            SITE_A.replace('"alpha"', '"beta"'),
            "sites.beta.hosts: 'a.example' is already claimed by site 'alpha'",
        ),
        ('[[sites]]\nname = "beta"\nhosts = ["b.example"]\npixel_id = [2222222]\n', "upstream"),
        (
            '[[sites]]\nname = "beta"\nhosts = ["b.example"]\nupstream = "http://x"\n',
            "sites.beta.pixels: the site has no pixel",
        ),
        (
            SITE_A.replace('"alpha"', '"beta"').replace("a.example", "b.example")
            + 'listen = ":1"\n',
            "sites.beta.listen: not a per-site setting (a process-wide setting)",
        ),
        (
            SITE_A.replace('"alpha"', '"beta"').replace("a.example", "b.example")
            + 'cookie_domain = "x"\n',
            "sites.beta.cookie_domain: 'x' is not a domain",
        ),
    ],
)
def test_a_bad_site_names_file_site_and_key(tmp_path: Path, extra: str, expected: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, SITE_A + extra)
    message = str(caught.value)
    assert message.startswith(str(tmp_path / "gateway.toml") + ": "), message
    assert expected in message


def test_two_default_sites_and_a_shared_key_are_refused(tmp_path: Path) -> None:
    both_default = (
        SITE_A
        + "default = true\n"
        + SITE_A.replace('"alpha"', '"beta"').replace("a.example", "b.example")
        + "default = true\n"
    )
    with pytest.raises(ConfigError, match=r"sites\.beta\.default: site 'alpha' is already"):
        load(tmp_path, both_default)
    shared = (
        SITE_A
        + 'events_api_keys = ["k1"]\n'
        + SITE_A.replace('"alpha"', '"beta"').replace("a.example", "b.example")
        + 'events_api_keys = ["k1"]\n'
    )
    with pytest.raises(ConfigError, match=r"sites\.beta\.events_api_keys: a key is also"):
        load(tmp_path, shared)


# -- routing ---------------------------------------------------------------------------------


async def test_each_host_reaches_its_own_upstream_and_pixel(
    two: Two, fake_graph: FakeGraph
) -> None:
    status_a, text_a, cookies_a = await page(two.gw, HOST_A)
    status_b, text_b, cookies_b = await page(two.gw, HOST_B)
    assert status_a == status_b == 200
    assert TAG.search(text_a) and TAG.search(text_b)
    assert [r.path for r in two.a.requests] == ["/html"]
    assert [r.path for r in two.b.requests] == ["/html"]
    # Cookies on each site's own registrable domain.
    assert any("Domain=alpha.example" in c for c in cookies_a), cookies_a
    assert any("Domain=beta.example" in c for c in cookies_b), cookies_b
    await wait_for(lambda: len(fake_graph.requests) >= 2)
    by_pixel = {r.pixel_id: r for r in fake_graph.requests}
    assert set(by_pixel) == {PIXEL_A, PIXEL_B}
    urls = {r.pixel_id: r.data[0]["event_source_url"] for r in fake_graph.requests}
    assert urls[PIXEL_A].startswith(f"http://{HOST_A}/")
    assert urls[PIXEL_B].startswith(f"http://{HOST_B}/")


async def test_a_wildcard_host_and_a_port_find_their_site(two: Two) -> None:
    assert (await page(two.gw, "blog.alpha.example:8443"))[0] == 200
    assert len(two.a.requests) == 1 and not two.b.requests


async def test_an_unclaimed_host_is_misdirected_but_own_endpoints_answer(two: Two) -> None:
    async with two.gw.session.get(
        two.gw.url + "/html", headers={"Host": "elsewhere.example"}
    ) as resp:
        assert resp.status == 421
        body = json.loads(await resp.read())
    assert body["error"] == "misdirected request"
    assert "elsewhere.example" in body["detail"]
    assert not two.a.requests and not two.b.requests
    async with two.gw.session.get(
        two.gw.url + "/_capi/health", headers={"Host": "elsewhere.example"}
    ) as resp:
        assert resp.status == 200


async def test_the_default_site_takes_unclaimed_hosts(
    tmp_path: Path, fake_graph: FakeGraph
) -> None:
    async with start_upstream() as a, start_upstream() as b:
        tables = site_tables(a, b, default=True)
        settings = make_settings(
            tmp_path, fake_graph.url, pixel_id=[], events_api_keys=[], sites=tables
        )
        async with run_gateway(settings) as gw:
            assert (await page(gw, "elsewhere.example"))[0] == 200
            assert len(b.requests) == 1 and not a.requests


async def test_a_site_without_consent_tracks_while_the_other_asks(
    tmp_path: Path, fake_graph: FakeGraph
) -> None:
    async with start_upstream() as a, start_upstream() as b:
        tables = site_tables(a, b, consent="cookie_ok")
        settings = make_settings(
            tmp_path, fake_graph.url, pixel_id=[], events_api_keys=[], sites=tables
        )
        async with run_gateway(settings) as gw:
            _, _, cookies_a = await page(gw, HOST_A)
            _, _, cookies_b = await page(gw, HOST_B)
    assert any(c.startswith("_fbp=") for c in cookies_a)
    assert not any(c.startswith("_fbp=") for c in cookies_b)


# -- isolation -------------------------------------------------------------------------------


def api_event(**fields: Any) -> dict[str, Any]:
    return {
        "event_name": "Purchase",
        "event_time": int(time.time()),
        "action_source": "system_generated",
        "user_data": {"external_id": "cust-1"},
        "custom_data": {"value": 10, "currency": "EUR"},
        **fields,
    }


async def post_events(gw: Front, key: str, host: str, *events: dict[str, Any]) -> Any:
    headers = {"Authorization": f"Bearer {key}", "Host": host}
    async with gw.session.post(
        gw.url + "/_capi/events", json={"data": list(events)}, headers=headers
    ) as resp:
        return resp.status, json.loads(await resp.read())


async def test_an_events_key_posts_for_its_own_site_only(two: Two, fake_graph: FakeGraph) -> None:
    status, body = await post_events(two.gw, KEY_A, HOST_A, api_event(event_id="a1"))
    assert status == 202, body
    # Any host no site claims is fine: the key says whose events these are.
    status, body = await post_events(two.gw, KEY_B, "api.example", api_event(event_id="b1"))
    assert status == 202, body
    await wait_for(lambda: len(fake_graph.events) == 2)
    sent = {(r.pixel_id, e["event_id"]) for r in fake_graph.requests for e in r.data}
    assert sent == {(PIXEL_A, "a1"), (PIXEL_B, "b1")}


async def test_a_key_on_another_sites_host_is_refused(two: Two) -> None:
    status, body = await post_events(two.gw, KEY_A, HOST_B, api_event(event_id="x"))
    assert status == 403
    assert "alpha" in body["detail"] and "beta" in body["detail"]


async def test_a_key_posting_to_another_sites_pixel_is_refused(two: Two) -> None:
    status, body = await post_events(
        two.gw, KEY_A, HOST_A, api_event(event_id="x", pixel_id=PIXEL_B)
    )
    assert status == 403
    assert PIXEL_B in body["detail"][0]["message"]


async def test_an_unknown_key_is_unauthorized(two: Two) -> None:
    status, _ = await post_events(two.gw, "nobody's key", HOST_A, api_event(event_id="x"))
    assert status == 401


async def test_a_beacon_from_one_sites_page_is_refused_on_the_other(two: Two) -> None:
    _, text, _ = await page(two.gw, HOST_A)
    tag = TAG.search(text)
    assert tag
    attrs = dict(re.findall(r'(data-[a-z-]+)="([^"]*)"', tag.group(0)))

    async def beacon(host: str) -> int:
        body = {
            "token": attrs["data-token"],
            "url": f"http://{host}/html",
            "events": [
                {
                    "event_name": "AddToCart",
                    "event_id": attrs["data-event-id"] + ".1",
                    "event_time": int(time.time()),
                }
            ],
        }
        headers = {
            "User-Agent": UA,
            "Host": host,
            "Origin": f"http://{host}",
            "Sec-Fetch-Site": "same-origin",
            "X-Forwarded-For": "9.9.9.9",
            "Content-Type": "text/plain;charset=UTF-8",
        }
        async with two.gw.session.post(
            two.gw.url + "/_capi/collect", data=json.dumps(body), headers=headers
        ) as resp:
            return resp.status

    assert await beacon(HOST_B) == 403
    assert await beacon("elsewhere.example") == 421
    assert await beacon(HOST_A) == 204


async def test_an_expired_token_parks_only_its_own_sites_pixel(
    tmp_path: Path, fake_graph: FakeGraph
) -> None:
    async with start_upstream() as a, start_upstream() as b:
        tables = site_tables(a, b, token_b="EAAB-expired-token")
        settings = make_settings(
            tmp_path, fake_graph.url, pixel_id=[], events_api_keys=[], sites=tables
        )
        async with run_gateway(settings) as gw:
            for n in range(3):
                status, _ = await post_events(gw, KEY_B, HOST_B, api_event(event_id=f"b{n}"))
                assert status == 202
            # B's pixel is blocked by now (its first send was refused); A keeps sending.
            await wait_for(lambda: any(r.pixel_id == PIXEL_B for r in fake_graph.requests))
            for n in range(3):
                status, _ = await post_events(gw, KEY_A, HOST_A, api_event(event_id=f"a{n}"))
                assert status == 202
            await wait_for(lambda: len(fake_graph.events) == 3)
    assert sorted(e["event_id"] for e in fake_graph.events) == ["a0", "a1", "a2"]


async def test_each_stored_event_carries_its_site(two: Two, fake_graph: FakeGraph) -> None:
    await page(two.gw, HOST_A)
    await page(two.gw, HOST_B)
    assert (await post_events(two.gw, KEY_B, HOST_B, api_event(event_id="b1")))[0] == 202
    await wait_for(lambda: len(fake_graph.events) == 3)
    buffer = two.gw.app[RUNTIME].settings.buffer
    with contextlib.closing(sqlite3.connect(buffer)) as conn:
        rows = set(conn.execute("SELECT site, pixel_id, source FROM events"))
    assert rows == {
        ("alpha", PIXEL_A, "proxy"),
        ("beta", PIXEL_B, "proxy"),
        ("beta", PIXEL_B, "api"),
    }


# -- reload ----------------------------------------------------------------------------------


async def test_reload_adds_changes_and_removes_sites_under_load(
    tmp_path: Path, fake_graph: FakeGraph
) -> None:
    async with start_upstream() as a, start_upstream() as b, start_upstream() as c:
        tables = site_tables(a, b)
        base: dict[str, Any] = {"pixel_id": [], "events_api_keys": []}
        settings = make_settings(tmp_path, fake_graph.url, sites=tables, **base)
        async with run_gateway(settings) as gw:
            statuses: list[int] = []
            stop = asyncio.Event()

            async def load(host: str) -> None:
                # Bounded: at most 400 requests, stopped as soon as the reload is checked.
                for _ in range(400):
                    if stop.is_set():
                        return
                    statuses.append((await page(gw, host))[0])

            loaders = [asyncio.create_task(load(h)) for h in (HOST_A, HOST_B, HOST_A)]
            await wait_for(lambda: len(statuses) >= 20)
            gamma = {
                "name": "gamma",
                "hosts": ["gamma.example"],
                "upstream": c.url,
                "pixels": [{"id": "333333333333", "access_token": TOKEN}],
            }
            changed = [tables[0], {**tables[1], "consent": "cookie_ok"}, gamma]
            await reload(gw.app, make_settings(tmp_path, fake_graph.url, sites=changed, **base))
            assert (await page(gw, "gamma.example"))[0] == 200
            assert len(c.requests) == 1
            # beta's consent changed in place: no cookie without the consent cookie now.
            assert not any(x.startswith("_fbp=") for x in (await page(gw, HOST_B))[2])
            removed = [tables[0], gamma]
            await reload(gw.app, make_settings(tmp_path, fake_graph.url, sites=removed, **base))
            assert (await page(gw, HOST_B))[0] == 421
            stop.set()
            await asyncio.gather(*loaders)
    # Every request during the reloads answered: 200, or 421 once beta was removed.
    assert statuses and set(statuses) <= {200, 421}, statuses
    assert statuses.count(200) >= 20


async def test_a_broken_site_on_reload_is_refused_and_the_running_sites_stay(
    tmp_path: Path, fake_graph: FakeGraph, caplog: pytest.LogCaptureFixture
) -> None:
    async with start_upstream() as a, start_upstream() as b:
        tables = site_tables(a, b)
        config = tmp_path / "gateway.toml"
        settings = make_settings(
            tmp_path, fake_graph.url, pixel_id=[], events_api_keys=[], sites=tables
        )
        async with run_gateway(settings) as gw:
            config.write_text(SITE_A + SITE_A.replace('"alpha"', '"beta"'))
            on_sighup = _reload_from(
                gw.app, lambda: load_settings(Sources(config_file=config, environ={})), set()
            )
            on_sighup()
            assert "sites.beta.hosts: 'a.example' is already claimed by site 'alpha'" in caplog.text
            assert str(config) in caplog.text
            assert (await page(gw, HOST_B))[0] == 200


# -- tenants ---------------------------------------------------------------------------------

GLOBAL_TOKEN = "global-admin-token-0123456789"
TENANT_A = "tenant-a-admin-token-0123456789"


@pytest.fixture
async def tenants(tmp_path: Path, fake_graph: FakeGraph) -> AsyncIterator[Two]:
    async with start_upstream() as a, start_upstream() as b:
        tables = site_tables(a, b)
        tables[0]["admin_token"] = TENANT_A
        settings = make_settings(
            tmp_path,
            fake_graph.url,
            pixel_id=[],
            events_api_keys=[],
            sites=tables,
            admin_token=GLOBAL_TOKEN,
        )
        async with run_gateway(settings) as gw:
            yield Two(gw, a, b)


async def operator_get(gw: Front, path: str, token: str) -> tuple[int, str]:
    headers = {"Authorization": f"Bearer {token}"}
    async with gw.session.get(gw.url + "/_capi/" + path, headers=headers) as resp:
        return resp.status, (await resp.read()).decode()


async def test_a_tenant_sees_its_own_sites_status_and_metrics_only(
    tenants: Two, fake_graph: FakeGraph
) -> None:
    gw = tenants.gw
    for n in range(2):
        assert (await post_events(gw, KEY_A, HOST_A, api_event(event_id=f"a{n}")))[0] == 202
    for n in range(3):
        assert (await post_events(gw, KEY_B, HOST_B, api_event(event_id=f"b{n}")))[0] == 202
    await wait_for(lambda: len(fake_graph.events) == 5)
    await page(gw, HOST_A)
    await page(gw, HOST_B)
    # Meta's answer is recorded, and the PageViews stored, just after: wait for the store
    # to say so rather than race it.
    deadline = time.monotonic() + 15
    while True:
        states = json.loads((await operator_get(gw, "status", GLOBAL_TOKEN))[1])["queue"]
        if sum(states["states"].values()) == 7 and states["states"]["sent"] >= 5:
            break
        assert time.monotonic() < deadline, states
        await asyncio.sleep(0.05)

    status, text = await operator_get(gw, "status", TENANT_A)
    assert status == 200, text
    body = json.loads(text)
    assert list(body["sites"]) == ["alpha"]
    assert body["queue"]["states"]["sent"] >= 2
    assert "beta" not in text and PIXEL_B[:4] not in text and TENANT_A not in text

    status, text = await operator_get(gw, "metrics", TENANT_A)
    assert status == 200
    assert 'capi_gateway_site_queue_events{site="alpha",state="sent"}' in text
    assert 'capi_gateway_site_events_total{outcome="new",site="alpha",source="api"} 2.0' in text
    assert 'capi_gateway_site_proxy_requests_total{site="alpha",status_class="2xx"} 1.0' in text
    # Every per-event series carries `site`: the tenant gets its own site's samples of
    # them, from intake to Meta's answer, and no sample without a site.
    assert (
        'capi_gateway_events_total{event_name="Purchase",outcome="accepted",site="alpha",'
        'source="api"} 2.0' in text
    )
    assert 'capi_gateway_delivered_events_total{mode="live",site="alpha"}' in text
    assert 'capi_gateway_send_requests_total{outcome="sent",site="alpha"}' in text
    assert 'capi_gateway_pages_tagged_total{site="alpha"} 1.0' in text
    assert 'capi_gateway_upstream_latency_seconds_count{site="alpha"} 1.0' in text
    assert "beta" not in text
    for line in text.splitlines():
        if line.startswith("capi_gateway_"):
            assert 'site="alpha"' in line, line

    status, text = await operator_get(gw, "metrics", GLOBAL_TOKEN)
    assert status == 200
    assert 'capi_gateway_site_events_total{outcome="new",site="alpha",source="api"} 2.0' in text
    assert 'capi_gateway_site_events_total{outcome="new",site="beta",source="api"} 3.0' in text
    assert 'capi_gateway_site_queue_events{site="beta",state="pending"}' in text
    assert (
        'capi_gateway_events_total{event_name="Purchase",outcome="accepted",site="beta",'
        'source="api"} 3.0' in text
    )
    assert 'capi_gateway_delivered_events_total{mode="live",site="beta"}' in text
    status, text = await operator_get(gw, "status", GLOBAL_TOKEN)
    assert status == 200
    assert sorted(json.loads(text)["sites"]) == ["alpha", "beta"]
    assert json.loads(text)["sites"]["beta"]["upstream_health"]["ok"] is True
    assert sum(json.loads(text)["queue"]["states"].values()) == 7


async def test_a_wrong_token_opens_nothing(tenants: Two) -> None:
    for path in ("status", "metrics"):
        assert (await operator_get(tenants.gw, path, "not-a-token"))[0] == 401


HOOK = """
[[webhook]]
name = "{name}-orders"
hook = "orders"
event = "Purchase"
action_source = "system_generated"
delivery_id = "order"
[webhook.signature]
type = "hmac"
header = "X-Signature"
encoding = "hex"
secrets = ["{secret}"]
[webhook.extract]
external_id = {{ source = "json", key = "customer" }}
value = {{ source = "json", key = "total", type = "number" }}
currency = {{ source = "json", key = "currency" }}
"""


async def test_webhooks_are_per_site(tmp_path: Path, fake_graph: FakeGraph) -> None:
    secrets = {"alpha": "alpha-webhook-secret", "beta": "beta-webhook-secret"}
    async with start_upstream() as a, start_upstream() as b:
        tables = site_tables(a, b)
        for table in tables:
            rules = tmp_path / f"rules-{table['name']}"
            rules.mkdir()
            name = str(table["name"])
            (rules / "hooks.toml").write_text(HOOK.format(name=name, secret=secrets[name]))
            table["rules"] = str(rules)
        settings = make_settings(
            tmp_path, fake_graph.url, pixel_id=[], events_api_keys=[], sites=tables
        )
        async with run_gateway(settings) as gw:

            async def hook(host: str, secret: str, order: str) -> int:
                body = json.dumps(
                    {"order": order, "customer": "c1", "total": 12.5, "currency": "EUR"}
                ).encode()
                sig = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
                headers = {"Host": host, "X-Signature": sig, "Content-Type": "application/json"}
                async with gw.session.post(
                    gw.url + "/_capi/hooks/orders", data=body, headers=headers
                ) as resp:
                    return resp.status

            # Alpha's delivery signed with alpha's secret, sent to beta's host: refused.
            assert await hook(HOST_B, secrets["alpha"], "o1") == 401
            assert await hook("elsewhere.example", secrets["alpha"], "o1") == 421
            assert await hook(HOST_A, secrets["alpha"], "o2") < 300
            assert await hook(HOST_B, secrets["beta"], "o3") < 300
            await wait_for(lambda: len(fake_graph.events) == 2)
    sent = sorted((r.pixel_id, r.data[0]["custom_data"]["value"]) for r in fake_graph.requests)
    assert [pixel for pixel, _ in sent] == [PIXEL_A, PIXEL_B]


def test_check_reads_each_sites_rule_files(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in list(os.environ):
        if name.startswith(("META_", "CAPIGW_")):
            monkeypatch.delenv(name)
    rules = tmp_path / "rules-beta"
    rules.mkdir()
    (rules / "broken.toml").write_text('[[rule]]\nname = "x"\nevent = 12\n')
    config = tmp_path / "gateway.toml"
    config.write_text(
        "dry_run = true\n"
        + SITE_A
        + SITE_A.replace('"alpha"', '"beta"').replace("a.example", "b.example")
        + f'rules = "{rules}"\n'
    )
    assert main(["check", "--config", str(config)]) == 2
    assert "sites.beta.rules: rule error:" in capsys.readouterr().err


def test_doctor_checks_one_site_with_its_own_settings(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in list(os.environ):
        if name.startswith(("META_", "CAPIGW_")):
            monkeypatch.delenv(name)
    config = tmp_path / "gateway.toml"
    config.write_text(
        f'dry_run = true\ngraph_url = "http://127.0.0.1:9"\nbuffer = "{tmp_path / "o.db"}"\n'
        + SITE_A
        + 'access_token = "EAAB-alpha"\n'
        + SITE_A.replace('"alpha"', '"beta"')
        .replace("a.example", "b.example")
        .replace("111111111111", "222222222222")
        + 'access_token = "EAAB-beta"\n'
    )
    main(["doctor", "--json", "--config", str(config), "--site", "beta"])
    findings = json.loads(capsys.readouterr().out)["findings"]
    config_line = next(f for f in findings if f["check"] == "config")
    assert "2222****" in config_line["message"] and "1111****" not in config_line["message"]
    assert main(["doctor", "--config", str(config), "--site", "gamma"]) == 2
    assert "--site: no site is named 'gamma'" in capsys.readouterr().err


async def test_health_reports_each_sites_upstream_and_stays_ready_while_one_answers(
    tmp_path: Path, fake_graph: FakeGraph
) -> None:

    closed = [f"http://127.0.0.1:{free_port()}" for _ in range(2)]
    base: dict[str, Any] = {"pixel_id": [], "events_api_keys": [], "access_token": None}
    async with start_upstream() as a, start_upstream() as b:
        tables = site_tables(a, b)
        tables[1]["upstream"] = closed[1]
        settings = make_settings(tmp_path / "one", fake_graph.url, **base, sites=tables)
        async with run_gateway(settings) as gw:
            async with gw.session.get(gw.url + "/_capi/health") as resp:
                body = await resp.json()
                assert resp.status == 200, body
            upstream = body["checks"]["upstream"]
            assert upstream["ok"] is True
            assert upstream["sites"]["alpha"]["ok"] is True
            assert upstream["sites"]["beta"]["ok"] is False
            assert "'beta'" in upstream["detail"] and "'alpha'" not in upstream["detail"]
        tables[0]["upstream"] = closed[0]
        settings = make_settings(tmp_path / "two", fake_graph.url, **base, sites=tables)
        async with run_gateway(settings) as gw:
            async with gw.session.get(gw.url + "/_capi/health") as resp:
                body = await resp.json()
                assert resp.status == 503, body
            assert body["checks"]["upstream"]["ok"] is False
            assert "every site is down" in body["checks"]["upstream"]["detail"]


async def test_a_tenant_acts_on_its_own_sites_rows_only(
    tenants: Two, fake_graph: FakeGraph
) -> None:
    gw = tenants.gw
    fake_graph.reject_event_ids(["a-dead", "b-dead"])
    assert (await post_events(gw, KEY_A, HOST_A, api_event(event_id="a-dead")))[0] == 202
    assert (await post_events(gw, KEY_B, HOST_B, api_event(event_id="b-dead")))[0] == 202
    buffer = gw.app[RUNTIME].settings.buffer

    def dead() -> dict[str, int]:
        with sqlite3.connect(buffer) as conn:
            rows = conn.execute("SELECT event_id, id FROM events WHERE state='dead'")
            return dict(rows.fetchall())

    await wait_for(lambda: sorted(dead()) == ["a-dead", "b-dead"], timeout=15)

    async def act(token: str, path: str, form: dict[str, str]) -> tuple[int, Any]:
        headers = {"Authorization": f"Bearer {token}", "Accept": "application/json"}
        url = f"{gw.url}/_capi/admin/{path}"
        async with gw.session.post(url, data=form, headers=headers) as resp:
            return resp.status, json.loads(await resp.read())

    b_id = str(dead()["b-dead"])
    assert await act(TENANT_A, "discard", {"id": b_id}) == (200, {"discarded": 0})
    assert await act(TENANT_A, "retry", {"id": b_id}) == (200, {"retried": 0})
    # Both events carry external_id cust-1: the tenant erases it from its own site's only.
    status, body = await act(TENANT_A, "forget", {"external_id": "cust-1"})
    assert status == 200 and body["forgotten"]["events"] == 1, body
    with sqlite3.connect(buffer) as conn:
        payloads = dict(conn.execute("SELECT event_id, payload FROM events").fetchall())
    assert "external_id" not in json.loads(payloads["a-dead"])["user_data"]
    assert "external_id" in json.loads(payloads["b-dead"])["user_data"]
    assert "b-dead" in dead()
    status, body = await act(GLOBAL_TOKEN, "forget", {"external_id": "cust-1"})
    assert status == 200 and body["forgotten"]["events"] == 1, body
    assert await act(GLOBAL_TOKEN, "discard", {"id": b_id}) == (200, {"discarded": 1})
