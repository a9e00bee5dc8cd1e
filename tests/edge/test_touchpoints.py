"""Touchpoints and reports end to end: pages with utm parameters, referrers and click ids
through the real proxy, conversions through the events API, and the reports read back from
`{prefix}/reports/*`, compared with numbers computed by hand. On both store backends.

The journeys (every visit a new campaign, click id or external referrer, so each page view
starts a visit; then the events, in order):

- Ann: Paid Social (utm facebook / paid_social / spring), Organic Search (Referer
  google), Email (utm newsletter / email / dec); ViewContent, AddToCart,
  InitiateCheckout, Purchase 100 EUR.
- Bob: Paid Search (gclid); ViewContent, Purchase 50 EUR (no cart: not through the funnel).
- Cai: Direct; ViewContent, AddToCart.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from gateway.app import reload
from gateway.cli import main
from gateway.delivery.forget import Person
from gateway.delivery.outbox import Outbox
from gateway.delivery.postgres.outbox import PgOutbox
from gateway.delivery.postgres.pool import SCHEMA
from gateway.edge.appkeys import OUTBOX, PAGES, RUNTIME
from gateway.settings import ConfigError
from tests.commands.test_doctor import cli
from tests.conftest import UA, auth
from tests.edge.conftest import StartGateway
from tests.fakes.upstream import Front

KEY = "cd" * 32
HOST = "www.example.co.uk"
PAID_SOCIAL = "/html?utm_source=facebook&utm_medium=paid_social&utm_campaign=spring"
EMAIL = "/html?utm_source=newsletter&utm_medium=email&utm_campaign=dec"


@pytest.fixture(params=["sqlite", "postgresql"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> dict[str, Any]:
    """Settings overrides that put the store on each backend."""
    if request.param == "sqlite":
        return {"buffer": tmp_path / "insights.db"}
    return {"buffer": str(request.getfixturevalue("postgres_store_dsn")), "encryption_key": KEY}


async def page(
    gw: Front, path: str, fbp: str | None = None, cookie: str = "", **headers: str
) -> str | None:
    """One tagged page view; the visitor's `_fbp` afterwards (issued on the first visit)."""
    sent = {"User-Agent": UA, "Accept": "text/html", "Host": HOST, **headers}
    cookies = [c for c in (f"_fbp={fbp}" if fbp else "", cookie) if c]
    if cookies:
        sent["Cookie"] = "; ".join(cookies)
    async with gw.session.get(gw.url + path, headers=sent) as resp:
        assert resp.status == 200
        await resp.read()
        issued = resp.cookies.get("_fbp")
    await gw.app[PAGES].drain()
    return issued.value if issued is not None else fbp


async def events(gw: Front, fbp: str | None, *names: str, value: float | None = None) -> None:
    """Events of the visitor through the events API."""
    # All in this second, after the visits (the API refuses times in the future); the
    # funnel takes events of one second in any order.
    now = int(time.time())
    data = []
    for name in names:
        event: dict[str, Any] = {
            "event_name": name,
            "event_time": now,
            "action_source": "website",
            "event_source_url": f"https://{HOST}/shop",
            "user_data": {"user_agent": UA, "ip": "203.0.113.7", "email": f"{fbp}@example.com"},
        }
        if fbp:
            event["user_data"]["fbp"] = fbp
        if name == "Purchase" and value is not None:
            event["custom_data"] = {"value": value, "currency": "EUR"}
        data.append(event)
    async with gw.session.post(
        gw.url + "/_capi/events", json={"data": data}, headers=auth()
    ) as resp:
        body = await resp.json()
        assert resp.status == 202 and not body.get("errors"), body


async def report(gw: Front, name: str, **params: str) -> dict[str, Any]:
    async with gw.session.get(gw.url + f"/_capi/reports/{name}", params=params) as resp:
        body: dict[str, Any] = await resp.json()
        assert resp.status == 200, body
    return body


async def journeys(gw: Front) -> dict[str, str]:
    ann = await page(gw, PAID_SOCIAL)
    assert ann
    await page(gw, "/html", ann, Referer="https://www.google.com/")
    await page(gw, EMAIL, ann)
    # A page inside the visit: internal referrer, nothing tagged: no new touchpoint.
    await page(gw, "/html?p=2", ann, Referer=f"http://{HOST}/html")
    bob = await page(gw, "/html?gclid=abc123")
    cai = await page(gw, "/html")
    assert bob and cai
    await events(gw, ann, "ViewContent", "AddToCart", "InitiateCheckout", "Purchase", value=100)
    await events(gw, bob, "ViewContent", "Purchase", value=50)
    await events(gw, cai, "ViewContent", "AddToCart")
    return {"ann": ann, "bob": bob, "cai": cai}


async def touchpoints(gw: Front) -> list[tuple[Any, ...]]:
    """The stored touchpoints (channel, source, medium, campaign, click id, landing path)."""
    sql = (
        "SELECT channel, source, medium, campaign, click_id, landing_path FROM touchpoints "
        "ORDER BY id"
    )
    box = gw.app[OUTBOX]
    if isinstance(box, PgOutbox):
        rows = await box.db.run(
            lambda conn: conn.fetch(sql.replace("touchpoints", f"{SCHEMA}.touchpoints")),
            transaction=False,
        )
        return [tuple(r) for r in rows]
    assert isinstance(box, Outbox)
    with sqlite3.connect(box.path) as conn:
        return [tuple(r) for r in conn.execute(sql)]


async def facts(gw: Front) -> int:
    box = gw.app[OUTBOX]
    if isinstance(box, PgOutbox):
        return int(await box.db.fetchval(f"SELECT COUNT(*) FROM {SCHEMA}.insight_events"))
    assert isinstance(box, Outbox)
    with sqlite3.connect(box.path) as conn:
        return int(conn.execute("SELECT COUNT(*) FROM insight_events").fetchone()[0])


Started = Callable[..., Awaitable[Front]]


async def test_visits_are_recorded_with_their_channels(
    start: StartGateway, backend: dict[str, Any]
) -> None:
    gw = await start(**backend)
    await journeys(gw)
    assert await touchpoints(gw) == [
        ("Paid Social", "facebook", "paid_social", "spring", None, "/html"),
        ("Organic Search", "google", "organic", "(not set)", None, "/html"),
        ("Email", "newsletter", "email", "dec", None, "/html"),
        ("Paid Search", "google", "cpc", "(not set)", "gclid", "/html"),
        ("Direct", "(direct)", "(none)", "(not set)", None, "/html"),
    ]


async def test_a_new_visitors_first_page_reads_no_earlier_visit(
    start: StartGateway, backend: dict[str, Any]
) -> None:
    # The proxy minted the `_fbp` for this very page: no store holds an earlier view of the
    # visitor, so the visit start is recorded without reading one (no miss of the cache).
    gw = await start(**backend)
    policy = gw.app[OUTBOX].insights
    assert policy is not None
    ann = await page(gw, PAID_SOCIAL)
    assert ann
    assert (policy.cache.hits, policy.cache.misses) == (0, 0)
    # A cookie the proxy did not mint (the browser pixel's, another replica's) is looked up.
    await page(gw, EMAIL, "fb.1.1700000000000.333")
    assert policy.cache.misses == 1
    # Ann's next page brings a campaign: read from the store, her visit seen there.
    await page(gw, EMAIL, ann)
    assert policy.cache.misses == 2
    assert await touchpoints(gw) == [
        ("Paid Social", "facebook", "paid_social", "spring", None, "/html"),
        ("Email", "newsletter", "email", "dec", None, "/html"),
        ("Email", "newsletter", "email", "dec", None, "/html"),
    ]


async def test_reports_match_the_hand_computed_numbers(
    start: StartGateway, backend: dict[str, Any]
) -> None:
    gw = await start(**backend)
    await journeys(gw)
    summary = await report(gw, "summary")
    assert summary["visitors"] == 3
    assert summary["events"] == {
        "AddToCart": {"count": 2, "value": {}},
        "InitiateCheckout": {"count": 1, "value": {}},
        "PageView": {"count": 6, "value": {}},
        "Purchase": {"count": 2, "value": {"EUR": 150.0}},
        "ViewContent": {"count": 3, "value": {}},
    }
    assert summary["conversion_rate"] == pytest.approx(2 / 3, abs=1e-6)
    assert summary["average_order_value"] == {"EUR": 75.0}
    # Last non-direct visit of each purchase: Ann's Email, Bob's Paid Search.
    assert summary["top_channels"] == [
        {"channel": "Email", "conversions": 1},
        {"channel": "Paid Search", "conversions": 1},
    ]
    assert summary["top_landing_pages"] == [{"path": "/html", "conversions": 2}]

    funnel = await report(gw, "funnel")
    assert [(s["event"], s["visitors"]) for s in funnel["steps"]] == [
        ("ViewContent", 3),
        ("AddToCart", 2),
        ("InitiateCheckout", 1),
        ("Purchase", 1),  # Bob bought without a cart: not through the funnel in order
    ]
    assert funnel["steps"][1]["drop_off"] == pytest.approx(1 / 3, abs=1e-6)

    def rows(body: dict[str, Any]) -> dict[str, tuple[float, dict[str, float]]]:
        assert body["conversions"] == 2
        return {r["key"]: (r["conversions"], r["value"]) for r in body["rows"]}

    first = await report(gw, "attribution", model="first_click")
    assert first["model"] == "first_click" and first["by"] == "channel"
    assert rows(first) == {
        "Paid Social": (1.0, {"EUR": 100.0}),
        "Paid Search": (1.0, {"EUR": 50.0}),
    }
    last = await report(gw, "attribution", model="last_click")
    assert rows(last) == {"Email": (1.0, {"EUR": 100.0}), "Paid Search": (1.0, {"EUR": 50.0})}
    linear = rows(await report(gw, "attribution", model="linear"))
    assert linear["Paid Search"] == (1.0, {"EUR": 50.0})
    for channel in ("Paid Social", "Organic Search", "Email"):
        credit, value = linear[channel]
        assert credit == pytest.approx(1 / 3, abs=1e-5)
        assert value["EUR"] == pytest.approx(100 / 3, abs=1e-3)
    by_campaign = await report(gw, "attribution", model="first_click", by="campaign")
    assert {r["key"] for r in by_campaign["rows"]} == {"spring", "(not set)"}
    # Credits of each conversion sum to one under every model.
    for model in ("time_decay", "position_based", "data_driven"):
        body = await report(gw, "attribution", model=model)
        assert sum(r["conversions"] for r in body["rows"]) == pytest.approx(2, abs=1e-6)
        assert sum(r["value"].get("EUR", 0) for r in body["rows"]) == pytest.approx(150, abs=1e-3)
    # A range before the journeys holds nothing.
    empty = await report(gw, "summary", since="2020-01-01", until="2020-01-31")
    assert empty["visitors"] == 0 and empty["events"] == {}


async def test_bad_report_parameters_answer_400(start: StartGateway) -> None:
    gw = await start()
    for params in ({"model": "best"}, {"by": "colour"}, {"since": "yesterday"}, {"site": "x"}):
        async with gw.session.get(gw.url + "/_capi/reports/attribution", params=params) as resp:
            body = await resp.json()
            assert resp.status == 400, params
            assert body["error"] == "invalid parameter" and body["detail"]
    async with gw.session.get(gw.url + "/_capi/reports/nothing") as resp:
        assert resp.status == 404


async def test_reports_need_the_admin_token(start: StartGateway) -> None:
    gw = await start(admin_token="reports-admin-token-0123456789")
    async with gw.session.get(gw.url + "/_capi/reports/summary") as resp:
        assert resp.status == 401
    headers = {"Authorization": "Bearer reports-admin-token-0123456789"}
    async with gw.session.get(gw.url + "/_capi/reports/summary", headers=headers) as resp:
        assert resp.status == 200
        assert (await resp.json())["visitors"] == 0


async def test_without_consent_no_touchpoint(start: StartGateway, backend: dict[str, Any]) -> None:
    gw = await start(consent="cookie_ok", consent_values=["yes"], **backend)
    await page(gw, PAID_SOCIAL, "fb.1.1700000000000.111")
    assert await touchpoints(gw) == []
    assert await facts(gw) == 0
    await page(gw, PAID_SOCIAL, "fb.1.1700000000000.222", cookie="cookie_ok=yes")
    assert await touchpoints(gw) == [
        ("Paid Social", "facebook", "paid_social", "spring", None, "/html")
    ]


async def test_forget_erases_touchpoints(start: StartGateway, backend: dict[str, Any]) -> None:
    gw = await start(**backend)
    people = await journeys(gw)
    key = _key(gw)
    counts = await gw.app[OUTBOX].forget(Person.of(fbp=[people["ann"]]), key)
    assert counts["touchpoints"] == 3
    assert [t[0] for t in await touchpoints(gw)] == ["Paid Search", "Direct"]
    # Ann's purchase is still counted, no longer attributed to her visits.
    last = await report(gw, "attribution", model="last_click")
    assert {r["key"]: r["conversions"] for r in last["rows"]} == {"Direct": 1, "Paid Search": 1}


async def test_retention_purges_touchpoints_and_facts(
    start: StartGateway, backend: dict[str, Any]
) -> None:
    gw = await start(**backend)
    await journeys(gw)
    assert await facts(gw) > 0
    box = gw.app[OUTBOX]
    await box.expire_and_purge(
        retention=7 * 86400, dead_retention=86400, now=time.time() + 89 * 86400
    )
    assert len(await touchpoints(gw)) == 5
    await box.expire_and_purge(
        retention=7 * 86400, dead_retention=86400, now=time.time() + 91 * 86400
    )
    assert await touchpoints(gw) == []
    assert await facts(gw) == 0


def _key(gw: Front) -> bytes:
    from gateway.delivery.seal import load_key
    from gateway.edge.appkeys import RUNTIME

    return load_key(gw.app[RUNTIME].settings)


async def report_in_process(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    """`capi-gateway report ARGV` in a thread (it runs its own event loop): exit code, stdout.

    In-process: a spawned interpreter costs seconds of imports on a loaded machine, and the
    script itself is run below (the refused date).
    """
    code = await asyncio.to_thread(main, ["report", *argv])
    return code, capsys.readouterr().out


async def test_the_report_command_prints_the_same_json(
    start: StartGateway,
    backend: dict[str, Any],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    gw = await start(**backend)
    await journeys(gw)
    buffer = str(backend["buffer"])
    for name, extra in (
        ("summary", ()),
        ("funnel", ()),
        ("attribution", ("--model", "linear", "--by", "source")),
    ):
        code, out = await report_in_process(capsys, name, "--json", "--buffer", buffer, *extra)
        assert code == 0
        params = dict(zip(extra[::2], extra[1::2], strict=True))
        expected = await report(gw, name, **{k.lstrip("-"): v for k, v in params.items()})
        assert json.loads(out) == expected
    code, out = await report_in_process(capsys, "funnel", "--buffer", buffer)
    assert code == 0 and "AddToCart" in out and "(-33%)" in out
    bad = await cli("report", "summary", "--since", "soon", "--buffer", buffer, cwd=tmp_path)
    assert bad.code == 2 and "'soon' is not a date" in bad.err


async def test_a_reload_applies_new_channel_rules(
    start: StartGateway, backend: dict[str, Any]
) -> None:
    gw = await start(**backend)
    promo = "/html?utm_source=partner&utm_medium=promo&utm_campaign=june"
    await page(gw, promo)
    before = (await touchpoints(gw))[-1][0]
    assert before != "Promo"
    settings = gw.app[RUNTIME].settings
    rules = [{"channel": "Promo", "medium": "promo"}]
    changed = settings.model_copy(
        update={
            "insights": settings.insights.model_copy(update={"channels": rules}),
            "visit_timeout": 600.0,
        }
    )
    await reload(gw.app, changed)
    await page(gw, promo)  # a new visitor: a visit of its own
    assert (await touchpoints(gw))[-1][0] == "Promo"
    policy = gw.app[OUTBOX].insights
    assert policy is not None and policy.visit_timeout == 600.0
    # A bad rule is refused before anything changes: the running rules stay.
    broken = changed.model_copy(
        update={"insights": settings.insights.model_copy(update={"channels": [{"x": 1}]})}
    )
    with pytest.raises(ConfigError, match=r"insights\.channels\[0\]"):
        await reload(gw.app, broken)
    await page(gw, promo)
    assert (await touchpoints(gw))[-1][0] == "Promo"
