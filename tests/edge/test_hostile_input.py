"""What an outside probe sent, byte for byte: split bodies, bad header bytes, odd values.

Every answer is a 4xx naming the problem (or a success), never a 500; raw sockets send what
an HTTP client library would refuse to send.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from tests.conftest import API_KEY, web_event
from tests.edge.conftest import StartGateway
from tests.edge.test_collect import Page, beacon, event, visit
from tests.fakes.upstream import Front, Upstream


async def exchange(gw: Front, parts: list[bytes], *, gap: float = 0.0) -> tuple[int, bytes]:
    """Send `parts` on one raw connection, `gap` seconds apart; the status and body back."""
    reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
    try:
        for index, part in enumerate(parts):
            if index and gap:
                await asyncio.sleep(gap)
            writer.write(part)
            await writer.drain()
        head = await reader.readuntil(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        length = 0
        for line in head.split(b"\r\n"):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":", 1)[1])
        body = await reader.readexactly(length) if length else b""
        return status, body
    finally:
        writer.close()


def beacon_request(gw: Front, page: Page, body: bytes) -> bytes:
    return (
        f"POST /_capi/collect HTTP/1.1\r\nHost: 127.0.0.1:{gw.port}\r\n"
        f"Origin: {gw.url}\r\nUser-Agent: {page.ua}\r\nX-Forwarded-For: {page.ip}\r\n"
        f"Cookie: {page.cookie_header()}\r\nContent-Type: text/plain;charset=UTF-8\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    ).encode() + body


async def test_a_beacon_split_across_segments_is_accepted(gw: Front) -> None:
    page = await visit(gw)
    body = json.dumps(
        {
            "token": page.token,
            "url": gw.url + "/html",
            "events": [event(event_id=page.event_id + ".1")],
        }
    ).encode()
    request = beacon_request(gw, page, body)
    cut = request.index(b"\r\n\r\n") + 4 + len(body) // 2
    status, answer = await exchange(gw, [request[:cut], request[cut:]], gap=0.05)
    assert status == 204, answer


async def test_a_dashboard_form_split_across_segments_is_read_whole(start: StartGateway) -> None:
    gw = await start(admin_token="T" * 32)
    form = b"token=" + b"T" * 32
    request = (
        f"POST /_capi/admin/login HTTP/1.1\r\nHost: 127.0.0.1:{gw.port}\r\n"
        "Content-Type: application/x-www-form-urlencoded\r\n"
        f"Content-Length: {len(form)}\r\nConnection: close\r\n\r\n"
    ).encode() + form
    cut = len(request) - 10
    status, _ = await exchange(gw, [request[:cut], request[cut:]], gap=0.05)
    assert status == 303  # signed in: the whole token arrived


async def test_a_non_utf8_authorization_header_is_a_401_not_a_500(start: StartGateway) -> None:
    gw = await start(admin_token="T" * 32)
    for path, method in (
        ("/_capi/events", "POST"),
        ("/_capi/status", "GET"),
        ("/_capi/metrics", "GET"),
        ("/_capi/admin", "GET"),
    ):
        request = (
            f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{gw.port}\r\n".encode()
            + b"Authorization: Bearer \xff\xfe\xe9t\xc3\r\nAccept: application/json\r\n"
            + b"Content-Length: 2\r\nConnection: close\r\n\r\n{}"
        )
        status, body = await exchange(gw, [request])
        assert status in (401, 403), (path, status, body)


async def events_api(gw: Front, body: Any) -> tuple[int, Any]:
    headers = {"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"}
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    async with gw.session.post(gw.url + "/_capi/events", data=data, headers=headers) as resp:
        return resp.status, await resp.json()


async def test_delivery_category_of_the_wrong_type_is_a_400(gw: Front) -> None:
    for value in (["home_delivery"], {"a": 1}):
        ev = web_event(custom_data={"delivery_category": value})
        status, body = await events_api(gw, {"data": [ev]})
        assert status == 400, body
        assert "delivery_category" in json.dumps(body)


async def test_nan_and_infinity_in_events_are_refused_by_name(gw: Front) -> None:
    for constant in ("NaN", "Infinity", "-Infinity", "1e400"):
        raw = json.dumps({"data": [web_event(custom_data={"score": 1})]})
        raw = raw.replace('"score": 1', f'"score": {constant}')
        status, body = await events_api(gw, raw.encode())
        assert status == 400, body
        assert "data.0.custom_data.score" in body["detail"], body


async def test_a_beacon_with_an_unparsable_url_or_referer_is_not_a_500(gw: Front) -> None:
    page = await visit(gw)
    ev = [event(event_id=page.event_id + ".1")]
    body = {"token": page.token, "url": "http://[", "referrer": "http://[", "events": ev}
    answer = await beacon(gw, page, body=body, Referer="http://[")
    assert answer.status < 500, answer.body
    answer = await beacon(gw, page, body={**body, "url": gw.url + "/html"}, Referer="http://[")
    assert answer.status < 500, answer.body


async def test_a_beacon_event_time_with_hundreds_of_digits_is_not_a_500(gw: Front) -> None:
    page = await visit(gw)
    ev = event(event_id=page.event_id + ".1", event_time=123)
    raw = json.dumps({"token": page.token, "url": gw.url + "/html", "events": [ev]})
    for digits in ("9" * 400, "-" + "9" * 400, "1e400"):
        body = raw.replace('"event_time": 123', f'"event_time": {digits}')
        answer = await beacon(gw, page, raw=body.encode())
        assert answer.status < 500, (digits, answer.body)


async def test_headers_past_the_total_bound_are_refused_before_the_site(
    gw: Front, site: Upstream
) -> None:
    before = len(site.requests)
    many = b"".join(b"X-Filler-%d: %s\r\n" % (i, b"a" * 1000) for i in range(100))
    request = b"GET /echo HTTP/1.1\r\nHost: shop\r\n" + many + b"Connection: close\r\n\r\n"
    status, body = await exchange(gw, [request])
    assert status == 431, body
    assert "max_request_headers_kb" in json.loads(body)["detail"]
    assert len(site.requests) == before  # the site saw nothing
    some = b"".join(b"X-Filler-%d: %s\r\n" % (i, b"a" * 1000) for i in range(40))
    request = b"GET /echo HTTP/1.1\r\nHost: shop\r\n" + some + b"Connection: close\r\n\r\n"
    status, _ = await exchange(gw, [request])
    assert status == 200
