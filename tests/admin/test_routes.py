"""`{prefix}/admin` over HTTP: who gets in, the session cookie, CSRF, the dead-letter actions."""

from __future__ import annotations

import asyncio
import json
import re
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import DummyCookieJar
from aiohttp.test_utils import TestClient, TestServer

from gateway import __version__
from gateway.admin import session as admin_session
from gateway.app import build_app, reload
from gateway.delivery.postgres.outbox import PgOutbox
from gateway.edge.appkeys import OUTBOX, RUNTIME
from tests.conftest import GatewayFactory, auth, make_settings, wait_for, web_event
from tests.delivery.stores import fetch
from tests.fakes.graph import FakeGraph

ADMIN = "/_capi/admin"
ADMIN_TOKEN = "admin-token-for-the-tests-0123"
HTML = {"Accept": "text/html"}
JSON = {"Accept": "application/json"}

Client = TestClient[Any, Any]


@pytest.fixture
async def gateway(tmp_path: Path, fake_graph: FakeGraph) -> AsyncIterator[GatewayFactory]:
    """tests.conftest's gateway, with a client that keeps no cookies: each test sends its own."""
    clients: list[Client] = []

    async def start(**overrides: Any) -> Client:
        settings = make_settings(tmp_path, fake_graph.url, **overrides)
        client: Client = TestClient(TestServer(build_app(settings)), cookie_jar=DummyCookieJar())
        await client.start_server()
        clients.append(client)
        return client

    yield start
    for client in clients:
        await client.close()


def set_cookie(resp: Any) -> dict[str, str] | None:
    """The session cookie the response sets: its value under "value", then its attributes."""
    for line in resp.headers.getall("Set-Cookie", []):
        name, _, rest = line.partition("=")
        if name == admin_session.COOKIE:
            value, *attrs = [part.strip() for part in rest.split(";")]
            out = {"value": value}
            for attr in attrs:
                key, _, val = attr.partition("=")
                out[key.lower()] = val
            return out
    return None


def cookie(value: str) -> dict[str, str]:
    return {"Cookie": f"{admin_session.COOKIE}={value}"}


async def sign_in(client: Client) -> str:
    resp = await client.post(
        f"{ADMIN}/login", data={"token": ADMIN_TOKEN}, headers=HTML, allow_redirects=False
    )
    assert resp.status == 303, await resp.text()
    assert resp.headers["Location"] == ADMIN
    found = set_cookie(resp)
    assert found is not None
    return found["value"]


async def page(client: Client, session: str) -> str:
    resp = await client.get(ADMIN, headers={**HTML, **cookie(session)}, allow_redirects=False)
    assert resp.status == 200, await resp.text()
    return await resp.text()


def csrf_in(html: str) -> str:
    match = re.search(r'<header data-csrf="([^"]+)">', html)
    assert match, "no CSRF field on the page"
    return match.group(1)


def db_rows(client: Client) -> dict[str, str]:
    """event_id -> state, read from the buffer file."""
    path = client.app[RUNTIME].settings.buffer
    with sqlite3.connect(path) as conn:
        return dict(conn.execute("SELECT event_id, state FROM events").fetchall())


def dead_id(client: Client, event_id: str) -> int:
    path = client.app[RUNTIME].settings.buffer
    with sqlite3.connect(path) as conn:
        row = conn.execute("SELECT id FROM events WHERE event_id=?", (event_id,)).fetchone()
    return int(row[0])


async def make_dead(client: Client, fake: FakeGraph, *event_ids: str) -> None:
    """Events Meta refuses for good: dead letters with Meta's error and fbtrace_id."""
    fake.reject_event_ids(event_ids)
    resp = await client.post(
        "/_capi/events", json={"data": [web_event(event_id=e) for e in event_ids]}, headers=auth()
    )
    assert resp.status == 202, await resp.text()
    await wait_for(lambda: all(db_rows(client).get(e) == "dead" for e in event_ids))


# -- who gets in ---------------------------------------------------------------------------------


async def test_a_local_peer_without_a_token_gets_the_page_and_a_session(
    gateway: GatewayFactory,
) -> None:
    client = await gateway()
    resp = await client.get(ADMIN, headers=HTML)
    assert resp.status == 200
    csp = resp.headers["Content-Security-Policy"]
    assert "script-src 'self'" in csp and "default-src 'none'" in csp and "unsafe" not in csp
    assert resp.headers["Cache-Control"] == "no-store"
    assert resp.headers["X-Frame-Options"] == "DENY"
    session = set_cookie(resp)
    assert session is not None
    assert session["path"] == ADMIN and session["samesite"] == "Strict"
    assert "httponly" in session and "secure" not in session
    html = await resp.text()
    for section in ("traffic", "delivery", "coverage", "dedup", "rules"):
        assert f'<section id="{section}">' in html
    # No sign-out without a sign-in, but the actions carry a CSRF token all the same.
    assert "Sign out" not in html and csrf_in(html)
    # Every script is a file of ours: nothing inline for the CSP to refuse.
    assert re.findall(r"<script[^>]*>", html) == [
        f'<script src="{ADMIN}/assets/admin.js?v={__version__}" defer>'
    ]
    again = await client.get(ADMIN, headers={**HTML, **cookie(session["value"])})
    assert again.status == 200 and set_cookie(again) is None


async def test_other_peers_without_a_token_are_told_how_to_set_one(
    gateway: GatewayFactory,
) -> None:
    client = await gateway(admin_networks=["10.0.0.0/8"])  # the test's loopback peer is out
    for method, path in (("GET", ADMIN), ("POST", f"{ADMIN}/retry"), ("POST", f"{ADMIN}/logout")):
        resp = await client.request(method, path, headers=HTML, allow_redirects=False)
        assert resp.status == 403, (method, path)
        body = await resp.json()
        assert body["error"] == "forbidden" and "admin_token" in body["detail"]
        assert set_cookie(resp) is None


async def test_with_a_token_the_browser_signs_in_through_the_form(
    gateway: GatewayFactory,
) -> None:
    client = await gateway(admin_token=ADMIN_TOKEN)
    resp = await client.get(ADMIN, headers=HTML, allow_redirects=False)
    assert resp.status == 303 and resp.headers["Location"] == f"{ADMIN}/login"
    assert set_cookie(resp) is None
    # A script gets JSON, and a Bearer token is enough for it.
    resp = await client.get(ADMIN, headers=JSON, allow_redirects=False)
    assert resp.status == 401 and (await resp.json())["error"] == "unauthorized"
    bearer = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    assert (await client.get(ADMIN, headers={**HTML, **bearer})).status == 200
    form = await client.get(f"{ADMIN}/login")
    assert form.status == 200
    assert 'name="token" type="password"' in await form.text()
    wrong = await client.post(
        f"{ADMIN}/login", data={"token": "guess"}, headers=HTML, allow_redirects=False
    )
    assert wrong.status == 403 and set_cookie(wrong) is None
    assert "not the admin token" in await wrong.text()
    session = await sign_in(client)
    assert "Sign out" in await page(client, session)
    # Signed in, the form sends the browser on to the dashboard.
    login = await client.get(f"{ADMIN}/login", headers=cookie(session), allow_redirects=False)
    assert login.status == 303
    # A cookie that was tampered with is no session.
    forged = session[:-2] + ("AA" if not session.endswith("AA") else "BB")
    resp = await client.get(ADMIN, headers={**HTML, **cookie(forged)}, allow_redirects=False)
    assert resp.status == 303


async def test_a_new_admin_token_ends_every_session(gateway: GatewayFactory) -> None:
    client = await gateway(admin_token=ADMIN_TOKEN)
    session = await sign_in(client)
    await page(client, session)
    settings = client.app[RUNTIME].settings.model_copy(update={"admin_token": "rotated-token-1"})
    await reload(client.app, settings)
    resp = await client.get(ADMIN, headers={**HTML, **cookie(session)}, allow_redirects=False)
    assert resp.status == 303


async def test_guessing_the_token_is_slowed_down(gateway: GatewayFactory) -> None:
    client = await gateway(admin_token=ADMIN_TOKEN)
    for _ in range(10):
        resp = await client.post(f"{ADMIN}/login", data={"token": "guess"}, headers=HTML)
        assert resp.status == 403
    resp = await client.post(
        f"{ADMIN}/login", data={"token": ADMIN_TOKEN}, headers=HTML, allow_redirects=False
    )
    assert resp.status == 429 and int(resp.headers["Retry-After"]) >= 1
    assert set_cookie(resp) is None


async def test_the_cookie_is_secure_behind_an_https_proxy(gateway: GatewayFactory) -> None:
    # The loopback peer is a trusted proxy by default: its X-Forwarded-Proto counts.
    client = await gateway(upstream="http://127.0.0.1:9")
    plain = set_cookie(await client.get(ADMIN, headers=HTML))
    assert plain is not None and "secure" not in plain
    https = set_cookie(await client.get(ADMIN, headers={**HTML, "X-Forwarded-Proto": "https"}))
    assert https is not None and "secure" in https


# -- actions -------------------------------------------------------------------------------------


async def test_retry_needs_the_sessions_csrf_token_and_sends_again(
    gateway: GatewayFactory, fake_graph: FakeGraph
) -> None:
    client = await gateway(admin_token=ADMIN_TOKEN)
    await make_dead(client, fake_graph, "order-17")
    session = await sign_in(client)
    html = await page(client, session)
    row = re.search(r'<tr data-id="(\d+)">(.*?)</tr>', html)
    assert row is not None and "order-17" in row.group(2)
    assert "2804001" in row.group(2)  # Meta's error, and its fbtrace_id beside it
    trace = next(r["fbtrace_id"] for r in _dead(client))
    assert trace and trace in row.group(2)
    row_id = row.group(1)
    token = csrf_in(html)
    fake_graph.reset()  # Meta takes it now
    retry = f"{ADMIN}/retry"
    headers = {**HTML, **cookie(session)}
    refused = [
        await client.post(retry, data={"id": row_id}, headers=headers, allow_redirects=False),
        await client.post(
            retry, data={"id": row_id, "csrf": "forged"}, headers=headers, allow_redirects=False
        ),
        await client.post(
            retry,
            data={"id": row_id, "csrf": token},
            headers={**headers, "Origin": "https://evil.example"},
            allow_redirects=False,
        ),
        await client.post(
            retry,
            data={"id": row_id, "csrf": token},
            headers={**headers, "Sec-Fetch-Site": "cross-site"},
            allow_redirects=False,
        ),
        # The token without the session cookie it is bound to.
        await client.post(
            retry, data={"id": row_id, "csrf": token}, headers=HTML, allow_redirects=False
        ),
    ]
    assert [r.status for r in refused] == [403, 403, 403, 403, 303]
    assert refused[-1].headers["Location"] == f"{ADMIN}/login"
    assert db_rows(client)["order-17"] == "dead"
    resp = await client.post(
        retry,
        data={"id": row_id, "csrf": token},
        headers={**headers, "Origin": str(client.make_url("")).rstrip("/")},
        allow_redirects=False,
    )
    assert resp.status == 303
    assert resp.headers["Location"] == f"{ADMIN}?done=retried&n=1#delivery"
    await wait_for(lambda: db_rows(client)["order-17"] == "sent")
    assert "order-17" in fake_graph.event_ids()
    done = await client.get(resp.headers["Location"], headers={**HTML, **cookie(session)})
    text = await done.text()
    assert "1 dead letter(s) queued for sending again." in text
    assert "No dead letters." in text


async def test_discard_one_and_retry_all(gateway: GatewayFactory, fake_graph: FakeGraph) -> None:
    client = await gateway()
    await make_dead(client, fake_graph, "<b>bold</b>", "d-2", "d-3")
    first = await client.get(ADMIN, headers=HTML)
    session = set_cookie(first)
    assert session is not None
    html = await first.text()
    # What a row holds is shown, never interpreted.
    assert "<b>bold</b>" not in html and "&lt;b&gt;bold&lt;/b&gt;" in html
    token = csrf_in(html)
    headers = {**HTML, **cookie(session["value"])}
    resp = await client.post(
        f"{ADMIN}/discard",
        data={"id": str(dead_id(client, "<b>bold</b>")), "csrf": token},
        headers=headers,
        allow_redirects=False,
    )
    assert resp.status == 303 and "done=discarded&n=1" in resp.headers["Location"]
    assert "<b>bold</b>" not in db_rows(client)
    fake_graph.reset()
    resp = await client.post(
        f"{ADMIN}/retry", data={"all": "1", "csrf": token}, headers=headers, allow_redirects=False
    )
    assert resp.status == 303 and "done=retried&n=2" in resp.headers["Location"]
    await wait_for(lambda: set(db_rows(client).values()) == {"sent"})


async def test_scripts_with_the_bearer_token_need_no_csrf(
    gateway: GatewayFactory, fake_graph: FakeGraph
) -> None:
    client = await gateway(admin_token=ADMIN_TOKEN)
    await make_dead(client, fake_graph, "api-1")
    fake_graph.reset()
    bearer = {**JSON, "Authorization": f"Bearer {ADMIN_TOKEN}"}
    row = str(dead_id(client, "api-1"))
    resp = await client.post(f"{ADMIN}/retry", data={"id": row}, headers=bearer)
    assert resp.status == 200 and await resp.json() == {"retried": 1}
    # Nothing to retry any more: the row is no dead letter now.
    again = await client.post(f"{ADMIN}/retry", data={"id": row}, headers=bearer)
    assert await again.json() == {"retried": 0}
    wrong = await client.post(
        f"{ADMIN}/retry", data={"id": row}, headers={**JSON, "Authorization": "Bearer nope"}
    )
    assert wrong.status == 401


async def test_bad_action_forms_are_refused_as_json(gateway: GatewayFactory) -> None:
    client = await gateway(admin_token=ADMIN_TOKEN)
    bearer = {**JSON, "Authorization": f"Bearer {ADMIN_TOKEN}"}
    cases = [
        ({"id": "abc"}, None, 400),
        ({}, None, 400),
        ({"all": "1"}, "discard", 400),  # discarding everything is the queue command's job
        ("id=" + "1" * 70_000, None, 413),
    ]
    for data, action, status in cases:
        resp = await client.post(f"{ADMIN}/{action or 'retry'}", data=data, headers=bearer)
        assert resp.status == status, (data, await resp.text())
        assert (await resp.json())["error"]
    resp = await client.post(
        f"{ADMIN}/retry", json={"id": [1]}, headers={**bearer, "Content-Type": "application/json"}
    )
    assert resp.status == 415


async def test_sign_out_clears_the_cookie(gateway: GatewayFactory) -> None:
    client = await gateway(admin_token=ADMIN_TOKEN)
    session = await sign_in(client)
    token = csrf_in(await page(client, session))
    resp = await client.post(
        f"{ADMIN}/logout",
        data={"csrf": token},
        headers={**HTML, **cookie(session)},
        allow_redirects=False,
    )
    assert resp.status == 303 and resp.headers["Location"] == f"{ADMIN}/login"
    cleared = set_cookie(resp)
    assert cleared is not None and cleared["value"] in ("", '""') and cleared["max-age"] == "0"


async def test_assets_are_served_by_the_gateway(gateway: GatewayFactory) -> None:
    client = await gateway(admin_token=ADMIN_TOKEN)
    js = await client.get(f"{ADMIN}/assets/admin.js")
    assert js.status == 200 and js.content_type == "application/javascript"
    assert "data-confirm" in await js.text()
    css = await client.get(f"{ADMIN}/assets/admin.css")
    assert css.status == 200 and css.content_type == "text/css"
    missing = await client.get(f"{ADMIN}/assets/../../settings.py")
    assert missing.status == 404
    assert (await client.get(f"{ADMIN}/assets/px.js")).status == 404


async def test_the_page_shows_hints_and_rule_counts(
    gateway: GatewayFactory, tmp_path: Path
) -> None:
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "site.toml").write_text(
        '[[rule]]\nname = "thanks-page"\nevent = "Purchase"\npath = "/thanks"\n\n'
        '[[rule]]\nname = "quiet-rule"\nevent = "Lead"\npath = "/never"\n'
    )
    client = await gateway(rules=rules)
    events = [
        web_event(
            event_id=f"e{i}",
            user_data={"ip": "203.0.113.7", "user_agent": "UA/1", "external_id": "c1"},
        )
        for i in range(3)
    ]
    resp = await client.post("/_capi/events", json={"data": events}, headers=auth())
    assert resp.status == 202, await resp.text()
    await wait_for(lambda: len(db_rows(client)) == 3)
    html = await (await client.get(ADMIN, headers=HTML)).text()
    assert (
        "Purchase events carry email in 0% of cases: send user_data.em with each Purchase from "
        "your backend (/_capi/events)"
    ) in html
    assert '<tr class="never" data-rule="quiet-rule">' in html
    assert "Never fired in the last 24 h: thanks-page, quiet-rule." in html
    assert re.search(r"<svg class=\"chart\"[^>]*>.*<rect class=\"s0\"", html, re.DOTALL)
    assert "<title>Purchase at " in html and ": 3</title>" in html


def _dead(client: Client) -> list[Any]:
    path = client.app[RUNTIME].settings.buffer
    with sqlite3.connect(path) as conn:
        conn.row_factory = sqlite3.Row
        return list(conn.execute("SELECT * FROM events WHERE state='dead'").fetchall())


async def test_forget_endpoint_erases_a_person_for_scripts_with_the_token(
    gateway: GatewayFactory,
) -> None:
    client = await gateway(admin_token=ADMIN_TOKEN, assembly_hold=600)
    # Held for assembly: still unsent when the erasure comes.
    resp = await client.post(
        "/_capi/events", json={"data": [web_event(event_id="f-1")]}, headers=auth()
    )
    assert resp.status == 202
    bearer = {**JSON, "Authorization": f"Bearer {ADMIN_TOKEN}"}
    forgot = await client.post(
        f"{ADMIN}/forget", data={"email": " JANE@example.com"}, headers=bearer
    )
    assert forgot.status == 200
    assert (await forgot.json())["forgotten"]["events"] == 1
    path = client.app[RUNTIME].settings.buffer
    with sqlite3.connect(path) as conn:
        (payload,) = conn.execute("SELECT payload FROM events WHERE event_id='f-1'").fetchone()
    assert "em" not in json.loads(payload)["user_data"]
    empty = await client.post(f"{ADMIN}/forget", data={}, headers=bearer)
    assert empty.status == 400 and "name the person" in (await empty.json())["detail"]
    denied = await client.post(f"{ADMIN}/forget", data={"email": "a@b.c"}, headers=JSON)
    assert denied.status == 401


# -- on a PostgreSQL store -----------------------------------------------------------------------


async def pg_states(client: Client) -> dict[str, str]:
    """event_id -> state, read from the PostgreSQL store the gateway writes."""
    outbox = client.app[OUTBOX]
    assert isinstance(outbox, PgOutbox)
    return {str(e): str(s) for e, s in await fetch(outbox, "SELECT event_id, state FROM events")}


async def test_the_page_and_its_actions_on_a_postgresql_store(
    postgres_dsn: str, gateway: GatewayFactory, fake_graph: FakeGraph
) -> None:
    # postgres_dsn first: its database is dropped after the gateway has closed its pool.
    client = await gateway(buffer=postgres_dsn, encryption_key="ab" * 32)
    fake_graph.reject_event_ids(["pg-dead-1", "pg-dead-2"])
    resp = await client.post(
        "/_capi/events",
        json={
            "data": [
                web_event(event_id="pg-ok"),
                web_event(event_id="pg-dead-1", event_name="Lead"),
                web_event(event_id="pg-dead-2", event_name="Lead"),
            ]
        },
        headers=auth(),
    )
    assert resp.status == 202, await resp.text()
    want = {"pg-ok": "sent", "pg-dead-1": "dead", "pg-dead-2": "dead"}
    for _ in range(250):
        if await pg_states(client) == want:
            break
        await asyncio.sleep(0.02)
    assert await pg_states(client) == want
    first = await client.get(ADMIN, headers=HTML)
    assert first.status == 200, await first.text()
    session = set_cookie(first)
    assert session is not None
    html = await first.text()
    # The store's events are on the page: the timeline's names, the dead letters with Meta's
    # error, the numbers.
    assert "pg-dead-1" in html and "pg-dead-2" in html and "Purchase" in html
    assert "No dead letters." not in html
    token = csrf_in(html)
    headers = {**HTML, **cookie(session["value"])}
    rows = await fetch(client.app[OUTBOX], "SELECT id FROM events WHERE event_id = 'pg-dead-1'")
    resp = await client.post(
        f"{ADMIN}/discard",
        data={"id": str(rows[0][0]), "csrf": token},
        headers=headers,
        allow_redirects=False,
    )
    assert resp.status == 303 and "done=discarded&n=1" in resp.headers["Location"]
    assert "pg-dead-1" not in await pg_states(client)
    fake_graph.reset()
    resp = await client.post(
        f"{ADMIN}/retry", data={"all": "1", "csrf": token}, headers=headers, allow_redirects=False
    )
    assert resp.status == 303 and "done=retried&n=1" in resp.headers["Location"]
    for _ in range(250):
        if await pg_states(client) == {"pg-ok": "sent", "pg-dead-2": "sent"}:
            break
        await asyncio.sleep(0.02)
    assert await pg_states(client) == {"pg-ok": "sent", "pg-dead-2": "sent"}
    assert "No dead letters." in await page(client, session["value"])
