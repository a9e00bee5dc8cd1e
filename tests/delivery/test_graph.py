"""GraphClient and classify, against the FakeGraph on loopback (no mocks)."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import socket
import sys
import time
from collections.abc import AsyncIterator
from email.utils import formatdate
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from gateway.delivery.graph import (
    GraphClient,
    Outcome,
    SendResult,
    appsecret_proof,
    classify,
)
from tests.fakes.graph import FakeGraph, start_fake_graph

TOKEN = "EAAGtestTOKENsecret0123456789abcdef"
APP_SECRET = "app-secret-for-tests"
PIXEL = "1234567890"
VERSION = "v26.0"
AGENT = "capi-gateway/0.1.0"
REPO = Path(__file__).resolve().parents[2]


def make_event(i: int, **overrides: Any) -> dict[str, Any]:
    event: dict[str, Any] = {
        "event_name": "Purchase",
        "event_time": int(time.time()) - 60,
        "event_id": f"ev-{i}",
        "action_source": "website",
        "event_source_url": "https://shop.example/thanks",
        "user_data": {"client_user_agent": "Mozilla/5.0", "em": ["a" * 64]},
        "custom_data": {"value": 12.5, "currency": "EUR"},
    }
    event.update(overrides)
    return event


def assert_no_secret(result: SendResult) -> None:
    assert TOKEN not in result.message
    assert APP_SECRET not in result.message
    assert TOKEN not in repr(result)


@pytest.fixture
async def fake() -> AsyncIterator[FakeGraph]:
    async with start_fake_graph(token=TOKEN) as server:
        yield server


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as client_session:
        yield client_session


def make_client(session: aiohttp.ClientSession, url: str, timeout: float = 1.5) -> GraphClient:
    return GraphClient(
        session, graph_url=url, graph_version=VERSION, timeout=timeout, partner_agent=AGENT
    )


@pytest.fixture
def client(fake: FakeGraph, session: aiohttp.ClientSession) -> GraphClient:
    return make_client(session, fake.url)


# -- success -------------------------------------------------------------------------------


async def test_send_success_carries_body_query_and_proof(
    fake: FakeGraph, client: GraphClient
) -> None:
    events = [make_event(i) for i in range(3)]
    result = await client.send(
        PIXEL, events, access_token=TOKEN, test_event_code="TEST123", app_secret=APP_SECRET
    )

    assert result.outcome is Outcome.SENT
    assert result.status == 200
    assert result.events_received == 3
    assert result.fbtrace_id and result.body is not None
    assert result.fbtrace_id == result.body["fbtrace_id"]
    assert result.message == ""
    assert result.code is None and result.retry_after is None
    assert_no_secret(result)

    [request] = fake.requests
    assert (request.method, request.version, request.pixel_id) == ("POST", VERSION, PIXEL)
    assert request.form is False
    assert request.access_token == TOKEN
    expected = hmac.new(APP_SECRET.encode(), TOKEN.encode(), hashlib.sha256).hexdigest()
    assert request.appsecret_proof == expected
    assert request.body is not None
    assert request.body["partner_agent"] == AGENT
    assert request.body["test_event_code"] == "TEST123"
    assert request.data == events
    assert fake.event_ids() == ["ev-0", "ev-1", "ev-2"]


async def test_send_without_optional_fields(fake: FakeGraph, client: GraphClient) -> None:
    result = await client.send(PIXEL, [make_event(0)], access_token=TOKEN)

    assert result.outcome is Outcome.SENT
    [request] = fake.requests
    assert "appsecret_proof" not in request.query
    assert request.body is not None
    assert "test_event_code" not in request.body
    assert request.body["partner_agent"] == AGENT


def test_appsecret_proof_is_lowercase_hex_hmac_sha256() -> None:
    proof = appsecret_proof("secret", "token")
    assert proof == hmac.new(b"secret", b"token", hashlib.sha256).hexdigest()
    # Cross-checked with `printf token | openssl dgst -sha256 -hmac secret`.
    assert proof == "e941110e3d2bfe82621f0e3e1434730d7305d106c5f68c87165d0b27a4611a4a"


async def test_check_token(fake: FakeGraph, client: GraphClient) -> None:
    ok = await client.check_token(PIXEL, access_token=TOKEN, app_secret=APP_SECRET)
    assert ok.outcome is Outcome.SENT
    assert ok.body == {"id": PIXEL}
    assert fake.requests[0].method == "GET"
    assert fake.requests[0].query["fields"] == "id"
    assert fake.requests[0].appsecret_proof == appsecret_proof(APP_SECRET, TOKEN)

    bad = await client.check_token(PIXEL, access_token="EAAwrong")
    assert bad.outcome is Outcome.BLOCKED
    assert bad.code == 190


# -- Meta's error classes ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fail", "outcome"),
    [
        ({"status": 500, "code": 1}, Outcome.RETRY),
        ({"status": 503, "code": 2, "is_transient": True}, Outcome.RETRY),
        ({"status": 400, "code": 4}, Outcome.THROTTLED),
        ({"status": 400, "code": 17, "subcode": 2446079}, Outcome.THROTTLED),
        ({"status": 400, "code": 32}, Outcome.THROTTLED),
        ({"status": 400, "code": 613}, Outcome.THROTTLED),
        ({"status": 400, "code": 80004, "subcode": 2446079}, Outcome.THROTTLED),
        ({"status": 400, "code": 100, "subcode": 2804001}, Outcome.INVALID),
        ({"status": 400, "code": 190, "subcode": 463}, Outcome.BLOCKED),
        ({"status": 403, "code": 10}, Outcome.BLOCKED),
        ({"status": 403, "code": 200}, Outcome.BLOCKED),
        ({"status": 403, "code": 294}, Outcome.BLOCKED),
        ({"status": 400, "code": 368, "subcode": 1404078}, Outcome.REJECTED),
        ({"status": 400, "code": 12345, "is_transient": True}, Outcome.RETRY),
        ({"status": 400, "code": 12345}, Outcome.INVALID),
        ({"status": 500, "code": 12345}, Outcome.RETRY),
    ],
)
async def test_graph_errors_classify(
    fake: FakeGraph, client: GraphClient, fail: dict[str, Any], outcome: Outcome
) -> None:
    fake.fail_next(1, **fail)
    result = await client.send(PIXEL, [make_event(0)], access_token=TOKEN, app_secret=APP_SECRET)

    assert result.outcome is outcome
    assert result.status == fail["status"]
    assert result.code == fail["code"]
    assert result.subcode == fail.get("subcode")
    assert result.events_received is None
    assert result.message
    assert result.fbtrace_id and result.body is not None
    assert result.fbtrace_id == result.body["error"]["fbtrace_id"]
    assert_no_secret(result)
    assert fake.events == []


async def test_html_500_is_retry_with_trace_from_header(
    fake: FakeGraph, client: GraphClient
) -> None:
    fake.fail_next(1, status=500)
    result = await client.send(PIXEL, [make_event(0)], access_token=TOKEN)

    assert result.outcome is Outcome.RETRY
    assert result.status == 500
    assert result.body is None and result.code is None
    assert "HTTP 500" in result.message and "text/html" in result.message
    assert result.fbtrace_id  # only the x-fb-trace-id header carries it
    assert_no_secret(result)


async def test_html_4xx_is_invalid_with_status_in_message(
    fake: FakeGraph, client: GraphClient
) -> None:
    fake.fail_next(1, status=404, body="<html>Not here</html>")
    result = await client.send(PIXEL, [make_event(0)], access_token=TOKEN)

    assert result.outcome is Outcome.INVALID
    assert "404" in result.message
    assert "Not here" in result.message


async def test_429_without_code_is_throttled(fake: FakeGraph, client: GraphClient) -> None:
    fake.fail_next(1, status=429, retry_after=3)
    result = await client.send(PIXEL, [make_event(0)], access_token=TOKEN)

    assert result.outcome is Outcome.THROTTLED
    assert result.retry_after == 3.0


async def test_503_with_retry_after_seconds(fake: FakeGraph, client: GraphClient) -> None:
    fake.fail_next(2, status=503, retry_after=7)
    result = await client.send(PIXEL, [make_event(0)], access_token=TOKEN)
    assert result.outcome is Outcome.RETRY
    assert result.status == 503
    assert result.retry_after == 7.0

    again = await client.send(PIXEL, [make_event(0)], access_token=TOKEN)
    assert again.outcome is Outcome.RETRY
    third = await client.send(PIXEL, [make_event(0)], access_token=TOKEN)
    assert third.outcome is Outcome.SENT
    assert [r.status for r in fake.requests] == [503, 503, 200]


async def test_503_with_retry_after_http_date(fake: FakeGraph, client: GraphClient) -> None:
    fake.fail_next(1, status=503, code=2, retry_after=formatdate(time.time() + 30, usegmt=True))
    result = await client.send(PIXEL, [make_event(0)], access_token=TOKEN)

    assert result.outcome is Outcome.RETRY
    assert result.retry_after is not None
    assert 25.0 <= result.retry_after <= 31.0


async def test_expired_token_is_blocked(fake: FakeGraph, client: GraphClient) -> None:
    other = "EAAGotherTOKEN987654321"
    result = await client.send(PIXEL, [make_event(0)], access_token=other)

    assert result.outcome is Outcome.BLOCKED
    assert (result.status, result.code, result.subcode) == (400, 190, 463)
    assert "Session has expired" in result.message
    assert other not in result.message
    assert fake.events == []


async def test_user_message_is_part_of_the_message(fake: FakeGraph, client: GraphClient) -> None:
    events = [make_event(0), make_event(1, event_time=int(time.time()) - 8 * 86_400)]
    result = await client.send(PIXEL, events, access_token=TOKEN)

    assert result.outcome is Outcome.INVALID
    assert result.code == 100
    assert "data[1].event_time" in result.message
    assert fake.events == []


async def test_meta_user_title_and_message_are_appended(
    fake: FakeGraph, client: GraphClient
) -> None:
    error = {
        "message": "Invalid parameter",
        "type": "OAuthException",
        "code": 100,
        "error_subcode": 2804003,
        "is_transient": False,
        "error_user_title": "Event Timestamp Too Old",
        "error_user_msg": "The timestamp for this event is too far in the past.",
        "fbtrace_id": "AtraceFromBody",
    }
    fake.fail_next(1, status=400, body=json.dumps({"error": error}))
    result = await client.send(PIXEL, [make_event(0)], access_token=TOKEN)

    assert result.outcome is Outcome.INVALID
    assert result.message == (
        "Invalid parameter - Event Timestamp Too Old: "
        "The timestamp for this event is too far in the past."
    )
    assert result.fbtrace_id == "AtraceFromBody"
    assert result.subcode == 2804003


# -- transport failures --------------------------------------------------------------------


async def test_timeout_is_retry_without_token(
    fake: FakeGraph, session: aiohttp.ClientSession
) -> None:
    fake.hang_next(1, 5.0)
    client = make_client(session, fake.url, timeout=0.2)
    started = time.monotonic()
    result = await client.send(PIXEL, [make_event(0)], access_token=TOKEN, app_secret=APP_SECRET)

    assert time.monotonic() - started < 2.0
    assert result.outcome is Outcome.RETRY
    assert result.status is None and result.body is None
    assert result.message == "timeout after 0.2 s"
    assert_no_secret(result)


async def test_connection_refused_is_retry(session: aiohttp.ClientSession) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    client = make_client(session, f"http://127.0.0.1:{port}")
    result = await client.send(PIXEL, [make_event(0)], access_token=TOKEN, app_secret=APP_SECRET)

    assert result.outcome is Outcome.RETRY
    assert result.status is None
    assert result.message.startswith("connection refused")
    assert str(port) in result.message
    assert_no_secret(result)


async def _raw_server(answer: bytes) -> asyncio.Server:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(answer)
        await writer.drain()
        writer.close()

    return await asyncio.start_server(handle, "127.0.0.1", 0)


@pytest.mark.parametrize(
    "answer",
    [b"HTTP/1.1 abc nonsense\r\n\r\n", b"", b"HTTP/1.1 200 OK\r\nContent-Length: 50\r\n\r\n{"],
    ids=["bad-status-line", "disconnect", "truncated-body"],
)
async def test_broken_server_is_retry_and_scrubbed(
    session: aiohttp.ClientSession, answer: bytes
) -> None:
    server = await _raw_server(answer)
    async with server:
        port = server.sockets[0].getsockname()[1]
        client = make_client(session, f"http://127.0.0.1:{port}")
        result = await client.send(
            PIXEL, [make_event(0)], access_token=TOKEN, app_secret=APP_SECRET
        )

    assert result.outcome is Outcome.RETRY
    assert result.status is None
    assert result.message
    assert_no_secret(result)
    assert appsecret_proof(APP_SECRET, TOKEN) not in result.message


# -- the fake itself -----------------------------------------------------------------------


async def test_form_encoded_request_is_accepted(
    fake: FakeGraph, session: aiohttp.ClientSession
) -> None:
    events = [make_event(i) for i in range(2)]
    form = {"data": json.dumps(events), "access_token": TOKEN, "test_event_code": "T1"}
    async with session.post(f"{fake.url}/{VERSION}/{PIXEL}/events", data=form) as resp:
        answer = await resp.json()

    assert resp.status == 200
    assert answer["events_received"] == 2
    [request] = fake.requests
    assert request.form is True
    assert request.access_token == TOKEN
    assert request.data == events
    assert fake.event_ids() == ["ev-0", "ev-1"]


async def test_fake_rejects_batches_naming_the_event(fake: FakeGraph, client: GraphClient) -> None:
    fake.reject_event_ids(["ev-2"])
    fake.reject_event(lambda event: event.get("event_name") == "Lead")
    batch = [make_event(i) for i in range(4)]

    result = await client.send(PIXEL, batch, access_token=TOKEN)
    assert result.outcome is Outcome.INVALID
    assert (result.code, result.subcode) == (100, 2804001)
    assert "data[2]" in result.message

    lead = await client.send(
        PIXEL, [make_event(9), make_event(10, event_name="Lead")], access_token=TOKEN
    )
    assert "data[1]" in lead.message

    ok = await client.send(PIXEL, batch[:2], access_token=TOKEN)
    assert ok.outcome is Outcome.SENT
    assert fake.event_ids() == ["ev-0", "ev-1"]


@pytest.mark.parametrize(
    ("events", "path"),
    [
        ([], "data must be"),
        ([make_event(i) for i in range(1001)], "at most 1000"),
        ([make_event(0), {"event_time": 1, "action_source": "website"}], "data[1].event_name"),
        ([make_event(0, event_time="now")], "data[0].event_time"),
        ([make_event(0, event_time=True)], "data[0].event_time"),
        ([make_event(0), make_event(1), make_event(2, action_source=None)], "data[2].action"),
    ],
)
async def test_fake_validates_like_meta(
    fake: FakeGraph, client: GraphClient, events: list[dict[str, Any]], path: str
) -> None:
    result = await client.send(PIXEL, events, access_token=TOKEN)

    assert result.outcome is Outcome.INVALID
    assert result.code == 100
    assert path in result.message


async def test_fake_control_over_http(fake: FakeGraph, client: GraphClient) -> None:
    async with aiohttp.ClientSession() as control:
        async with control.post(
            f"{fake.url}/_fake/fail",
            json={"fail_next": {"n": 1, "status": 400, "code": 17}, "reject_event_ids": ["x"]},
        ) as resp:
            assert resp.status == 200
        throttled = await client.send(PIXEL, [make_event(0)], access_token=TOKEN)
        rejected = await client.send(PIXEL, [make_event(0, event_id="x")], access_token=TOKEN)
        sent = await client.send(PIXEL, [make_event(1)], access_token=TOKEN)
        async with control.get(f"{fake.url}/_fake/requests") as resp:
            records = await resp.json()
        async with control.get(f"{fake.url}/_fake/stats") as resp:
            stats = await resp.json()
        async with control.post(f"{fake.url}/_fake/reset") as resp:
            assert resp.status == 200

    assert throttled.outcome is Outcome.THROTTLED
    assert rejected.outcome is Outcome.INVALID
    assert sent.outcome is Outcome.SENT
    assert [r["status"] for r in records] == [400, 400, 200]
    assert records[2]["query"]["access_token"] == TOKEN
    assert stats == {
        "requests": 3,
        "accepted_requests": 1,
        "failed_requests": 2,
        "events_received": 1,
    }
    assert fake.requests == [] and fake.events == [] and fake.token == TOKEN


async def test_fake_count_only_keeps_counters(session: aiohttp.ClientSession) -> None:
    async with start_fake_graph(count_only=True) as fake:
        client = make_client(session, fake.url)
        result = await client.send(PIXEL, [make_event(i) for i in range(5)], access_token=TOKEN)

        assert result.events_received == 5
        assert fake.requests == [] and fake.events == []
        assert fake.stats()["events_received"] == 5


async def test_fake_runs_as_a_subprocess(session: aiohttp.ClientSession) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.fakes.graph",
        "--port",
        "0",
        "--count-only",
        cwd=REPO,
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        line = (await asyncio.wait_for(proc.stdout.readline(), 10)).decode().strip()
        assert line.startswith("listening on http://127.0.0.1:")
        url = line.removeprefix("listening on ")
        client = make_client(session, url)
        result = await client.send(PIXEL, [make_event(0)], access_token=TOKEN)
        assert result.outcome is Outcome.SENT
        async with session.get(f"{url}/_fake/stats") as resp:
            assert (await resp.json())["events_received"] == 1
    finally:
        proc.terminate()
        assert await asyncio.wait_for(proc.wait(), 10) == 0


# -- classify without a network ------------------------------------------------------------


def _err(code: int | str | None = None, **extra: Any) -> dict[str, Any]:
    error: dict[str, Any] = {"message": "m", **extra}
    if code is not None:
        error["code"] = code
    return {"error": error}


@pytest.mark.parametrize(
    ("status", "body", "outcome"),
    [
        (None, None, Outcome.RETRY),
        (200, {"events_received": 1}, Outcome.SENT),
        (204, None, Outcome.SENT),
        (400, _err(341), Outcome.THROTTLED),
        (400, _err(80000), Outcome.THROTTLED),
        (400, _err(80014), Outcome.THROTTLED),
        (400, _err(80015), Outcome.INVALID),
        (400, _err(102), Outcome.BLOCKED),
        (400, _err(299), Outcome.BLOCKED),
        (400, _err(300), Outcome.INVALID),
        (400, _err(100, error_subcode=33), Outcome.BLOCKED),
        (400, _err(100, is_transient=True), Outcome.RETRY),
        (400, _err(is_transient=True), Outcome.RETRY),
        (400, _err("190"), Outcome.BLOCKED),
        (400, {"unexpected": True}, Outcome.INVALID),
        (502, None, Outcome.RETRY),
        (429, None, Outcome.THROTTLED),
        (301, None, Outcome.BLOCKED),
    ],
)
def test_classify_table(status: int | None, body: dict[str, Any] | None, outcome: Outcome) -> None:
    assert classify(status, body) is outcome


def test_error_label_names_what_metrics_count_a_failure_by() -> None:
    def result(outcome: Outcome, status: int | None, code: int | None) -> SendResult:
        return SendResult(outcome, status, None, None, code, None, "", None, None)

    assert result(Outcome.SENT, 200, None).error_label() is None
    assert result(Outcome.INVALID, 400, 100).error_label() == "100"
    assert result(Outcome.RETRY, 503, None).error_label() == "http_503"
    assert result(Outcome.RETRY, None, None).error_label() == "network"


async def test_the_events_body_is_compact_utf8_json(session: aiohttp.ClientSession) -> None:
    bodies: list[bytes] = []

    async def events(request: web.Request) -> web.Response:
        bodies.append(await request.read())
        return web.json_response({"events_received": 1, "fbtrace_id": "trace"})

    app = web.Application()
    app.router.add_post(f"/{VERSION}/{PIXEL}/events", events)
    async with TestServer(app, host="127.0.0.1") as server:
        client = make_client(session, str(server.make_url("")))
        event = make_event(0, custom_data={"content_name": "Café ☕", "value": 12.5})
        result = await client.send(PIXEL, [event], access_token=TOKEN)
        assert result.outcome is Outcome.SENT
        # orjson writes no int past 64 bits: that body is the stdlib's, digits and all.
        big = make_event(1, custom_data={"content_name": "Café", "big": 2**64})
        assert (await client.send(PIXEL, [big], access_token=TOKEN)).outcome is Outcome.SENT
    first, second = bodies
    # UTF-8 as it is (no \\u escapes), no spaces.
    assert '"custom_data":{"content_name":"Café ☕","value":12.5}'.encode() in first
    assert json.loads(first)["data"] == [event]
    assert b'"big":18446744073709551616' in second
    assert json.loads(second)["data"] == [big]
