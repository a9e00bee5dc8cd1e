"""`POST /_capi/collect` through the real gateway: a page from a real upstream, then beacons.

Each test gets a page through the proxy (its injected event id and token, its `_fbp`), posts
beacons the way px.js does (sendBeacon's `text/plain`, or JSON) and reads what reached the
fake Graph API and what is in the outbox file.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import sqlite3
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest

from gateway.edge import pagetoken
from gateway.edge.appkeys import PAGES
from tests.conftest import PIXEL, UA, wait_for
from tests.edge.conftest import StartGateway
from tests.fakes.graph import FakeGraph
from tests.fakes.upstream import Front

IP = "203.0.113.7"  # the visitor, as told by the trusted loopback proxy in front
TAG = re.compile(r'<script src="/_capi/px\.js[^>]*></script>')
BOT = "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)"


@dataclass
class Page:
    """What a browser got: the tag's event id and token, and our cookies."""

    event_id: str
    token: str
    cookies: dict[str, str]
    ip: str
    ua: str

    def cookie_header(self) -> str:
        return "; ".join(f"{k}={v}" for k, v in self.cookies.items())


async def visit(
    gw: Front, path: str = "/html", *, ip: str = IP, ua: str = UA, cookie: str = ""
) -> Page:
    headers = {"User-Agent": ua, "Accept": "text/html", "X-Forwarded-For": ip}
    if cookie:
        headers["Cookie"] = cookie
    async with gw.session.get(gw.url + path, headers=headers) as resp:
        assert resp.status == 200
        text = (await resp.read()).decode()
        cookies = {}
        for line in resp.headers.getall("Set-Cookie", []):
            name, _, rest = line.partition("=")
            cookies[name] = rest.split(";", 1)[0]
    tag = TAG.search(text)
    assert tag, text[:300]
    attrs = dict(re.findall(r'(data-[a-z-]+)="([^"]*)"', tag.group(0)))
    for pair in filter(None, (p.strip() for p in cookie.split(";"))):
        name, _, value = pair.partition("=")
        cookies.setdefault(name, value)
    return Page(attrs["data-event-id"], attrs["data-token"], cookies, ip, ua)


def event(name: str = "AddToCart", event_id: str = "", **fields: Any) -> dict[str, Any]:
    out: dict[str, Any] = {
        "event_name": name,
        "event_id": event_id,
        "event_time": int(time.time()),
        "custom_data": {"value": 9.5, "currency": "EUR"},
    }
    out.update(fields)
    return out


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: Any


async def beacon(
    gw: Front,
    page: Page,
    events: list[dict[str, Any]] | None = None,
    *,
    body: Any = None,
    raw: bytes | None = None,
    content_type: str = "text/plain;charset=UTF-8",
    **header_overrides: str | None,
) -> Answer:
    """POST a beacon as px.js does from `page`; header_overrides=None drops a header."""
    if body is None:
        body = {
            "token": page.token,
            "url": gw.url + "/product?q=shoes",
            "referrer": "",
            "title": "Product",
            "events": events if events is not None else [event(event_id=page.event_id + ".1")],
        }
    headers: dict[str, str | None] = {
        "User-Agent": page.ua,
        "Origin": gw.url,
        "Referer": gw.url + "/product?q=shoes",
        "Sec-Fetch-Site": "same-origin",
        "X-Forwarded-For": page.ip,
        "Cookie": page.cookie_header(),
        "Content-Type": content_type,
    }
    headers.update({k.replace("_", "-"): v for k, v in header_overrides.items()})
    sent = {k: v for k, v in headers.items() if v}
    data = raw if raw is not None else json.dumps(body).encode()
    async with gw.session.post(gw.url + "/_capi/collect", data=data, headers=sent) as resp:
        text = await resp.read()
        parsed = json.loads(text) if text else None
        return Answer(resp.status, dict(resp.headers), parsed)


def outbox_rows(gw: Front) -> list[tuple[str, str, str]]:
    """(event_name, event_id, source) of every row in the outbox file, as committed."""
    path = gw.app[PAGES].settings.buffer
    with contextlib.closing(sqlite3.connect(path)) as conn:
        return [
            (str(n), str(i), str(s))
            for n, i, s in conn.execute("SELECT event_name, event_id, source FROM events")
        ]


async def settle(gw: Front) -> None:
    """The PageViews of pages served so far are committed."""
    await gw.app[PAGES].drain()


async def nothing_more(fake: FakeGraph, count: int) -> None:
    """Give the sender (polling every 50 ms) time to deliver anything else, then check."""
    await asyncio.sleep(0.3)
    assert len(fake.events) == count, fake.events


def delivered(fake: FakeGraph, name: str) -> list[dict[str, Any]]:
    return [e for e in fake.events if e["event_name"] == name]


# -- accepted beacons ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "content_type", ["text/plain;charset=UTF-8", "application/json"], ids=["beacon", "json"]
)
async def test_beacon_reaches_meta_with_identity_from_the_request(
    gw: Front, fake_graph: FakeGraph, content_type: str
) -> None:
    page = await visit(gw, "/html?fbclid=Click7")
    assert page.cookies["_fbp"] and page.cookies["_fbc"]
    answer = await beacon(
        gw,
        page,
        [event(event_id=page.event_id + ".1")],
        content_type=content_type,
        body={
            "token": page.token,
            "url": gw.url + "/product?email=jane@example.com&q=shoes#reviews",
            "referrer": "https://www.google.com/search?q=tee",
            "events": [event(event_id=page.event_id + ".1")],
        },
    )
    assert answer.status == 204, answer.body
    assert not any(k.lower().startswith("access-control-") for k in answer.headers)
    await wait_for(lambda: len(delivered(fake_graph, "AddToCart")) == 1)
    sent = delivered(fake_graph, "AddToCart")[0]
    assert sent["event_id"] == page.event_id + ".1"
    assert sent["action_source"] == "website"
    assert sent["custom_data"] == {"value": 9.5, "currency": "EUR"}
    # The PII parameter and the fragment are gone; the rest of the page URL stays.
    assert sent["event_source_url"] == gw.url + "/product?q=shoes"
    assert sent["referrer_url"] == "https://www.google.com/search?q=tee"
    user = sent["user_data"]
    assert user["client_ip_address"] == IP
    assert user["client_user_agent"] == UA
    assert user["fbp"] == page.cookies["_fbp"]
    assert user["fbc"] == page.cookies["_fbc"]
    assert fake_graph.requests[-1].pixel_id == PIXEL


async def test_customer_fields_a_page_may_add_are_hashed(gw: Front, fake_graph: FakeGraph) -> None:
    page = await visit(gw)
    ev = event("Lead", page.event_id + ".1", user_data={"email": " Jane@Example.com "})
    assert (await beacon(gw, page, [ev])).status == 204
    await wait_for(lambda: len(delivered(fake_graph, "Lead")) == 1)
    em = delivered(fake_graph, "Lead")[0]["user_data"]["em"]
    em = em[0] if isinstance(em, list) else em
    assert re.fullmatch(r"[0-9a-f]{64}", em)


@pytest.mark.parametrize(
    "field", ["client_ip_address", "client_user_agent", "fbp", "fbc", "ip", "user_agent"]
)
async def test_beacon_cannot_speak_for_another_browser(
    gw: Front, fake_graph: FakeGraph, field: str
) -> None:
    page = await visit(gw)
    await settle(gw)
    ev = event(event_id=page.event_id + ".1", user_data={field: "198.51.100.1"})
    answer = await beacon(gw, page, [ev])
    assert answer.status == 400
    assert answer.body["detail"][0]["field"] == "user_data"
    assert [r[0] for r in outbox_rows(gw)] == ["PageView"]


async def test_event_source_url_comes_from_the_referer_when_the_beacons_url_is_foreign(
    gw: Front, fake_graph: FakeGraph
) -> None:
    page = await visit(gw)
    body = {
        "token": page.token,
        "url": "https://evil.example/checkout?q=1",
        "events": [event(event_id=page.event_id + ".1")],
    }
    referer = gw.url + "/from-referer?phone=%2B15551234567&size=m"
    assert (await beacon(gw, page, body=body, Referer=referer)).status == 204
    await wait_for(lambda: len(delivered(fake_graph, "AddToCart")) == 1)
    assert delivered(fake_graph, "AddToCart")[0]["event_source_url"] == (
        gw.url + "/from-referer?size=m"
    )


async def test_204_only_after_the_events_are_committed(gw: Front) -> None:
    page = await visit(gw)
    ids = [f"{page.event_id}.{n}" for n in range(1, 4)]
    answer = await beacon(gw, page, [event(event_id=i) for i in ids])
    assert answer.status == 204
    # Read the file right after the answer, with another connection: the rows are there.
    assert {r[1] for r in outbox_rows(gw) if r[0] == "AddToCart"} == set(ids)
    assert {r[2] for r in outbox_rows(gw) if r[0] == "AddToCart"} == {"collect"}


async def test_event_time_in_the_future_is_clamped_to_now(gw: Front, fake_graph: FakeGraph) -> None:
    page = await visit(gw)
    future = event(event_id=page.event_id + ".1", event_time=int(time.time()) + 3600)
    past = event(event_id=page.event_id + ".2", event_time=int(time.time()) - 86400)
    before = int(time.time())
    assert (await beacon(gw, page, [future, past])).status == 204
    after = int(time.time())
    await wait_for(lambda: len(delivered(fake_graph, "AddToCart")) == 2)
    times = {e["event_id"]: e["event_time"] for e in delivered(fake_graph, "AddToCart")}
    assert before - 1 <= times[page.event_id + ".1"] <= after
    # Not before the page was served either: the token's issue time bounds it.
    assert before - 5 <= times[page.event_id + ".2"] <= after


async def test_non_json_numbers_and_deep_nesting_are_400_not_500(gw: Front) -> None:
    page = await visit(gw)
    await settle(gw)

    def with_time(text: str) -> bytes:
        ev = json.dumps(event(event_id=page.event_id + ".1", event_time="TIME"))
        body = json.dumps({"token": page.token, "events": ["EVENT"]})
        return body.replace('"EVENT"', ev).replace('"TIME"', text).encode()

    for raw in (with_time("NaN"), with_time("-Infinity"), b"[" * 20000 + b"]" * 20000):
        answer = await beacon(gw, page, raw=raw)
        assert answer.status == 400, (raw[:80], answer.body)
    assert [r[0] for r in outbox_rows(gw)] == ["PageView"]


async def test_an_infinite_event_time_is_taken_as_now(gw: Front, fake_graph: FakeGraph) -> None:
    page = await visit(gw)
    body = json.dumps(
        {"token": page.token, "events": [event(event_id=page.event_id + ".1", event_time=0)]}
    )
    raw = body.replace('"event_time": 0', '"event_time": 1e400').encode()  # JSON, parsed as inf
    assert (await beacon(gw, page, raw=raw)).status == 204
    await wait_for(lambda: len(delivered(fake_graph, "AddToCart")) == 1)
    assert abs(delivered(fake_graph, "AddToCart")[0]["event_time"] - time.time()) < 5


# -- the page's PageView ---------------------------------------------------------------------


async def test_pageview_beacon_never_makes_a_second_pageview(
    gw: Front, fake_graph: FakeGraph
) -> None:
    page = await visit(gw)
    await settle(gw)  # the browser has the page only once its PageView is handed over
    answer = await beacon(gw, page, [event("PageView", page.event_id, custom_data=None)])
    assert answer.status == 204
    rows = [r for r in outbox_rows(gw) if r[0] == "PageView"]
    assert rows == [("PageView", page.event_id, "proxy")]
    await wait_for(lambda: len(fake_graph.events) == 1)
    await nothing_more(fake_graph, 1)
    assert fake_graph.events[0]["event_id"] == page.event_id


async def test_pageview_beacon_completes_the_held_server_pageview(
    start: StartGateway, fake_graph: FakeGraph
) -> None:
    # The page view waits pageview_hold for its beacon; an _fbc the browser pixel wrote
    # after the page arrived (the server had none) joins the one PageView Meta gets.
    gw = await start(pageview_hold=1.0)
    page = await visit(gw)
    await settle(gw)
    page.cookies["_fbc"] = "fb.1.1700000000000.IwAR-from-the-pixel"
    page.cookies["_fbp"] = "fb.1.1700000000000.999"  # the server's own value stays
    answer = await beacon(gw, page, [event("PageView", page.event_id, custom_data=None)])
    assert answer.status == 204
    assert outbox_rows(gw) == [("PageView", page.event_id, "proxy")]
    await wait_for(lambda: len(fake_graph.events) == 1, timeout=5)
    await nothing_more(fake_graph, 1)
    user = fake_graph.events[0]["user_data"]
    assert user["fbc"] == "fb.1.1700000000000.IwAR-from-the-pixel"
    assert user["fbp"] != "fb.1.1700000000000.999"


async def test_pageview_beacon_is_the_view_when_the_server_had_no_consent(
    start: StartGateway, fake_graph: FakeGraph
) -> None:
    # Consent given on the page itself: the server stored nothing at page time, the
    # browser pixel's PageView (same id) is then the only one.
    gw = await start(consent="cookie_consent")
    page = await visit(gw)
    await settle(gw)
    assert outbox_rows(gw) == []
    page.cookies["cookie_consent"] = "yes"
    answer = await beacon(gw, page, [event("PageView", page.event_id, custom_data=None)])
    assert answer.status == 204
    assert outbox_rows(gw) == [("PageView", page.event_id, "collect")]
    await wait_for(lambda: len(fake_graph.events) == 1)
    assert fake_graph.events[0]["event_id"] == page.event_id


async def test_pageview_beacon_with_another_id_is_refused(gw: Front) -> None:
    page = await visit(gw)
    await settle(gw)
    answer = await beacon(gw, page, [event("PageView", page.event_id + ".9", custom_data=None)])
    assert answer.status == 400
    assert answer.body["detail"][0]["field"] == "event_id"
    assert outbox_rows(gw) == [("PageView", page.event_id, "proxy")]


@pytest.mark.parametrize("name", ["Bad/Name", "x" * 51, "", "<script>"])
async def test_unknown_event_names_are_refused(gw: Front, name: str) -> None:
    page = await visit(gw)
    await settle(gw)
    answer = await beacon(gw, page, [event(name, page.event_id + ".1")])
    assert answer.status == 400
    assert [r[0] for r in outbox_rows(gw)] == ["PageView"]


async def test_custom_names_are_accepted(gw: Front, fake_graph: FakeGraph) -> None:
    page = await visit(gw)
    ev = event("Newsletter signup-2", page.event_id + ".1", custom_data=None)
    assert (await beacon(gw, page, [ev])).status == 204
    await wait_for(lambda: len(delivered(fake_graph, "Newsletter signup-2")) == 1)


# -- who may send ----------------------------------------------------------------------------


async def test_forged_token_is_403_and_stores_nothing(gw: Front) -> None:
    page = await visit(gw)
    await settle(gw)
    payload, mac = page.token.split(".")
    flipped = mac[:-2] + ("A" if mac[-2] != "A" else "B") + mac[-1]
    for token in ("", "forged", f"{payload}.{flipped}", page.token + "x"):
        body = {"token": token, "events": [event(event_id=page.event_id + ".1")]}
        answer = await beacon(gw, page, body=body)
        assert answer.status == 403, token
    assert [r[0] for r in outbox_rows(gw)] == ["PageView"]


async def test_token_of_another_client_is_403(gw: Front) -> None:
    page = await visit(gw)
    await settle(gw)
    other_ua = UA.replace("Chrome/156", "Chrome/155")
    assert (await beacon(gw, page, User_Agent=other_ua)).status == 403
    assert (await beacon(gw, page, X_Forwarded_For="198.51.100.99")).status == 403
    assert [r[0] for r in outbox_rows(gw)] == ["PageView"]
    # Control: the same beacon from the same client is accepted.
    assert (await beacon(gw, page)).status == 204


async def test_expired_token_is_403(start: StartGateway) -> None:
    gw = await start(page_token_ttl=60)
    page = await visit(gw)
    await settle(gw)
    secret = gw.app[PAGES].secret
    client = f"{IP}|{UA}"
    now = int(time.time())
    page.token = pagetoken.sign(secret, page.event_id, issued=now - 120, client=client)
    assert (await beacon(gw, page)).status == 403
    assert [r[0] for r in outbox_rows(gw)] == ["PageView"]
    # Control: the same signing, fresh, is accepted.
    page.token = pagetoken.sign(secret, page.event_id, issued=now - 30, client=client)
    assert (await beacon(gw, page)).status == 204


@pytest.mark.parametrize(
    "headers",
    [
        {"Origin": "http://evil.example"},
        {"Origin": "null"},
        {"Origin": "https://127.0.0.1"},  # same host, another scheme and port
        {"Origin": None, "Sec_Fetch_Site": "cross-site"},
        {"Origin": None, "Sec_Fetch_Site": "same-site"},
        {"Origin": None, "Sec_Fetch_Site": None},
    ],
    ids=["foreign", "null", "other-scheme", "cross-site", "same-site", "no-headers"],
)
async def test_foreign_origins_are_403_without_cors(
    gw: Front, headers: dict[str, str | None]
) -> None:
    page = await visit(gw)
    await settle(gw)
    answer = await beacon(gw, page, **headers)
    assert answer.status == 403
    assert not any(k.lower().startswith("access-control-") for k in answer.headers)
    assert [r[0] for r in outbox_rows(gw)] == ["PageView"]


async def test_same_origin_by_fetch_metadata_alone_is_accepted(gw: Front) -> None:
    page = await visit(gw)
    assert (await beacon(gw, page, Origin=None, Sec_Fetch_Site="same-origin")).status == 204


async def test_cors_preflight_gets_no_permission(gw: Front) -> None:
    headers = {
        "Origin": "http://evil.example",
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "content-type",
    }
    async with gw.session.options(gw.url + "/_capi/collect", headers=headers) as resp:
        assert resp.status >= 400
        assert not any(k.lower().startswith("access-control-") for k in resp.headers)


# -- limits ----------------------------------------------------------------------------------


async def test_body_over_the_limit_is_413(start: StartGateway) -> None:
    gw = await start(collect_max_bytes=2048)
    page = await visit(gw)
    await settle(gw)
    big = event(event_id=page.event_id + ".1", custom_data={"content_name": "x" * 4000})
    assert (await beacon(gw, page, [big])).status == 413
    # Without a Content-Length (chunked) the limit holds just the same.
    body = json.dumps({"token": page.token, "events": [big]}).encode()

    async def chunks() -> AsyncIterator[bytes]:
        for i in range(0, len(body), 500):
            yield body[i : i + 500]

    headers = {"User-Agent": UA, "Origin": gw.url, "X-Forwarded-For": IP}
    async with gw.session.post(gw.url + "/_capi/collect", data=chunks(), headers=headers) as resp:
        assert resp.status == 413
    assert [r[0] for r in outbox_rows(gw)] == ["PageView"]


async def test_too_many_or_no_events_is_400(start: StartGateway) -> None:
    gw = await start(collect_max_events=3)
    page = await visit(gw)
    await settle(gw)
    four = [event(event_id=f"{page.event_id}.{n}") for n in range(4)]
    assert (await beacon(gw, page, four)).status == 400
    assert (await beacon(gw, page, [])).status == 400
    assert (await beacon(gw, page, body={"token": page.token})).status == 400
    assert [r[0] for r in outbox_rows(gw)] == ["PageView"]
    assert (await beacon(gw, page, four[:3])).status == 204


async def test_rate_limit_per_ip_is_429_with_retry_after(start: StartGateway) -> None:
    gw = await start(collect_rate=0.1, collect_burst=2)
    page = await visit(gw)
    assert (await beacon(gw, page, [event(event_id=page.event_id + ".1")])).status == 204
    assert (await beacon(gw, page, [event(event_id=page.event_id + ".2")])).status == 204
    limited = await beacon(gw, page, [event(event_id=page.event_id + ".3")])
    assert limited.status == 429
    assert 1 <= int(limited.headers["Retry-After"]) <= 11
    assert page.event_id + ".3" not in {r[1] for r in outbox_rows(gw)}
    # Another visitor has a bucket of its own.
    other = await visit(gw, ip="198.51.100.8")
    assert (await beacon(gw, other, [event(event_id=other.event_id + ".1")])).status == 204


# -- who is not tracked ----------------------------------------------------------------------


async def test_bot_beacon_is_204_and_stores_nothing(gw: Front, fake_graph: FakeGraph) -> None:
    # Bots get no tag; a bot replaying a page's beacon with a token made for it is dropped.
    page = await visit(gw)
    await settle(gw)
    secret = gw.app[PAGES].secret
    bot = Page(
        page.event_id,
        pagetoken.sign(secret, page.event_id, issued=int(time.time()), client=f"{IP}|{BOT}"),
        page.cookies,
        IP,
        BOT,
    )
    assert (await beacon(gw, bot)).status == 204
    assert [r[0] for r in outbox_rows(gw)] == ["PageView"]


async def test_without_consent_204_and_nothing_stored(
    start: StartGateway, fake_graph: FakeGraph
) -> None:
    gw = await start(consent="cookie_consent")
    page = await visit(gw)
    assert "_fbp" not in page.cookies
    assert (await beacon(gw, page)).status == 204
    for value in ("no", "YES"):
        page.cookies["cookie_consent"] = value
        assert (await beacon(gw, page, [event(event_id=page.event_id + ".2")])).status == 204
    await settle(gw)
    assert outbox_rows(gw) == []
    await nothing_more(fake_graph, 0)
    # With consent the same beacon is stored.
    page.cookies["cookie_consent"] = "yes"
    assert (await beacon(gw, page)).status == 204
    assert outbox_rows(gw) == [("AddToCart", page.event_id + ".1", "collect")]
