"""POST /_capi/events end to end: auth, validation, durability, delivery to the fake."""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from typing import Any

import pytest

from gateway.edge import events_api
from gateway.edge.appkeys import OUTBOX
from gateway.pipeline.jsonsafe import non_finite_path
from tests.conftest import PIXEL, UA, GatewayFactory, auth, wait_for, web_event
from tests.fakes.graph import FakeGraph


def sha(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


async def stats(client: Any) -> dict[str, int]:
    result: dict[str, int] = (await client.app[OUTBOX].stats())["states"]
    return result


async def test_accepts_stores_and_delivers(gateway: GatewayFactory, fake_graph: FakeGraph) -> None:
    client = await gateway()
    event = web_event(
        event_id="order-1001",
        user_data={
            "email": "  John.Doe@Example.COM ",
            "phone": "(650)555-1212",
            "country": "United States",
            "first_name": "Mary-Jane",
            "ip": "::ffff:198.51.100.4",
            "user_agent": UA,
            "fbp": "fb.1.1700000000000.123456789",
        },
    )
    resp = await client.post("/_capi/events", json={"data": [event]}, headers=auth())
    assert resp.status == 202
    assert await resp.json() == {
        "accepted": 1,
        "event_ids": ["order-1001"],
        "events": [{"event_id": "order-1001", "outcome": "new"}],
    }

    await wait_for(lambda: len(fake_graph.events) == 1)
    sent = fake_graph.events[0]
    request = fake_graph.requests[-1]
    assert request.pixel_id == PIXEL
    assert request.access_token == "EAAB-test-token-not-real"
    user = sent["user_data"]
    assert user["em"] == sha("john.doe@example.com")
    assert user["ph"] == "e323ec626319ca94ee8bff2e4c87cf613be6ea19919ed1364124e16807ab3176"
    assert user["country"] == sha("us")
    assert user["fn"] == sha("maryjane")
    # Clear fields arrive clear, the IPv4-mapped address unwrapped.
    assert user["client_ip_address"] == "198.51.100.4"
    assert user["client_user_agent"] == UA
    assert user["fbp"] == "fb.1.1700000000000.123456789"
    assert sent["event_id"] == "order-1001"
    assert sent["custom_data"] == {"value": 19.9, "currency": "EUR"}
    assert (await stats(client))["sent"] == 1


async def test_defaults_event_id_time_and_action_source(
    gateway: GatewayFactory, fake_graph: FakeGraph
) -> None:
    client = await gateway()
    event = web_event()
    del event["event_time"]
    before = int(time.time())
    resp = await client.post("/_capi/events", json={"data": [event]}, headers=auth())
    assert resp.status == 202
    (event_id,) = (await resp.json())["event_ids"]
    uuid.UUID(event_id)
    await wait_for(lambda: len(fake_graph.events) == 1)
    sent = fake_graph.events[0]
    assert sent["event_id"] == event_id
    assert sent["action_source"] == "website"
    assert before <= sent["event_time"] <= int(time.time())


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic dGVzdA=="}],
)
async def test_wrong_or_missing_key_is_401_and_stores_nothing(
    gateway: GatewayFactory, headers: dict[str, str]
) -> None:
    client = await gateway()
    resp = await client.post("/_capi/events", json={"data": [web_event()]}, headers=headers)
    assert resp.status == 401
    body = await resp.json()
    assert body["error"] and body["detail"]
    assert sum((await stats(client)).values()) == 0


async def test_second_key_works(gateway: GatewayFactory) -> None:
    client = await gateway(events_api_keys=["first-key", "second-key"])
    resp = await client.post(
        "/_capi/events",
        json={"data": [web_event()]},
        headers={"Authorization": "Bearer second-key"},
    )
    assert resp.status == 202


async def test_invalid_batch_is_all_or_nothing(gateway: GatewayFactory) -> None:
    client = await gateway()
    good = web_event()
    old = web_event(event_time=int(time.time()) - 8 * 86400)
    no_ua = web_event(user_data={"email": "a@b.co"})
    resp = await client.post("/_capi/events", json={"data": [good, old, no_ua]}, headers=auth())
    assert resp.status == 400
    body = await resp.json()
    fields = {(d["index"], d["field"]) for d in body["detail"]}
    assert (1, "event_time") in fields
    assert (2, "user_data.client_user_agent") in fields
    assert all(d["message"] for d in body["detail"])
    assert sum((await stats(client)).values()) == 0


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"event_time": int(time.time()) + 3600}, "event_time"),
        ({"event_time": int(time.time() * 1000)}, "event_time"),
        ({"action_source": "fax"}, "action_source"),
        ({"event_source_url": None}, "event_source_url"),
        ({"event_source_url": "shop.example/x"}, "event_source_url"),
        ({"custom_data": {"value": 3, "currency": "EURO"}}, "custom_data.currency"),
        ({"custom_data": {"value": "ten", "currency": "EUR"}}, "custom_data.value"),
        ({"custom_data": {"value": True, "currency": "EUR"}}, "custom_data.value"),
        ({"custom_data": {"currency": "EUR"}}, "custom_data.value"),
        ({"action_source": "phone_call", "user_data": {"fn": "Mary", "ge": "f"}}, "user_data"),
        ({"user_data": {"city": "Paris", "zip": "75001", "user_agent": UA}}, "user_data"),
        ({"user_data": {"email": "not-an-email", "user_agent": UA}}, "user_data.em"),
        ({"user_data": {"email": "a@b.co", "user_agent": UA, "shoe": 1}}, "user_data.shoe"),
        ({"event_name": "Bad/Name!"}, "event_name"),
        ({"pixel_id": "999999999"}, "pixel_id"),
        ({"colour": "red"}, "colour"),
        (
            {"data_processing_options": ["LDU"], "data_processing_options_country": 1},
            "data_processing_options_state",
        ),
    ],
)
async def test_rejects_what_meta_would_reject(
    gateway: GatewayFactory, change: dict[str, Any], field: str
) -> None:
    client = await gateway()
    resp = await client.post("/_capi/events", json={"data": [web_event(**change)]}, headers=auth())
    assert resp.status == 400
    detail = (await resp.json())["detail"]
    assert field in {d["field"] for d in detail}, detail


async def test_more_than_1000_events_is_400(gateway: GatewayFactory) -> None:
    client = await gateway()
    resp = await client.post("/_capi/events", json={"data": [web_event()] * 1001}, headers=auth())
    assert resp.status == 400
    assert "1000" in (await resp.json())["detail"]


async def test_body_over_limit_is_413(gateway: GatewayFactory) -> None:
    client = await gateway(max_body_bytes=4096)
    big = web_event(custom_data={"value": 1, "currency": "EUR", "note": "x" * 5000})
    resp = await client.post("/_capi/events", json={"data": [big]}, headers=auth())
    assert resp.status == 413
    assert (await resp.json())["error"]


async def test_deeply_nested_json_is_400(gateway: GatewayFactory) -> None:
    client = await gateway()
    resp = await client.post("/_capi/events", data=b"[" * 100_000, headers=auth())
    assert resp.status == 400


async def test_not_json_is_400(gateway: GatewayFactory) -> None:
    client = await gateway()
    resp = await client.post("/_capi/events", data=b"{nope", headers=auth())
    assert resp.status == 400
    assert (await resp.json())["error"] == "invalid JSON"


async def test_duplicate_is_acknowledged_not_stored_twice(
    gateway: GatewayFactory, fake_graph: FakeGraph
) -> None:
    client = await gateway()
    event = web_event(event_id="dup-1")
    for _ in range(3):
        resp = await client.post("/_capi/events", json={"data": [event]}, headers=auth())
        assert resp.status == 202
        assert (await resp.json())["event_ids"] == ["dup-1"]
    # Same id in one batch as well.
    resp = await client.post("/_capi/events", json={"data": [event, event]}, headers=auth())
    assert resp.status == 202
    await wait_for(lambda: len(fake_graph.events) >= 1)
    s = await stats(client)
    assert sum(s.values()) == 1


async def test_event_goes_to_every_pixel_unless_it_names_one(
    gateway: GatewayFactory, fake_graph: FakeGraph
) -> None:
    client = await gateway(pixel_id=[PIXEL, "222222222222"])
    resp = await client.post(
        "/_capi/events",
        json={"data": [web_event(event_id="both"), web_event(event_id="one", pixel_id=PIXEL)]},
        headers=auth(),
    )
    assert resp.status == 202
    await wait_for(lambda: len(fake_graph.events) == 3)
    by_pixel = sorted((r.pixel_id, e["event_id"]) for r in fake_graph.requests for e in r.data)
    assert by_pixel == sorted([("222222222222", "both"), (PIXEL, "both"), (PIXEL, "one")])


async def test_test_event_code_from_request_reaches_meta(
    gateway: GatewayFactory, fake_graph: FakeGraph
) -> None:
    client = await gateway()
    resp = await client.post(
        "/_capi/events",
        json={"data": [web_event()], "test_event_code": "TEST123"},
        headers=auth(),
    )
    assert resp.status == 202
    await wait_for(lambda: len(fake_graph.requests) == 1)
    assert fake_graph.requests[0].body["test_event_code"] == "TEST123"


async def test_clear_fields_are_encrypted_at_rest(
    gateway: GatewayFactory, fake_graph: FakeGraph, tmp_path: Any
) -> None:
    client = await gateway()
    event = web_event(
        user_data={"email": "x@y.co", "user_agent": "UniqueAgent/9.9", "ip": "192.0.2.55"}
    )
    resp = await client.post("/_capi/events", json={"data": [event]}, headers=auth())
    assert resp.status == 202
    await wait_for(lambda: len(fake_graph.events) == 1)
    raw = b"".join(p.read_bytes() for p in tmp_path.glob("outbox.db*") if p.suffix != ".key")
    assert b"UniqueAgent" not in raw
    assert b"192.0.2.55" not in raw
    assert b"x@y.co" not in raw
    assert sha("x@y.co").encode() in raw


async def test_health(gateway: GatewayFactory) -> None:
    client = await gateway()
    resp = await client.get("/_capi/health")
    assert resp.status == 200
    body = await resp.json()
    assert body["status"] == "ok"


async def test_full_buffer_answers_503_with_retry_after(gateway: GatewayFactory) -> None:
    client = await gateway(max_buffer_mb=0.01)
    resp = await client.post("/_capi/events", json={"data": [web_event()]}, headers=auth())
    assert resp.status == 503
    assert resp.headers["Retry-After"]
    assert json.loads(await resp.text())["error"] == "buffer full"


async def test_a_finite_body_is_not_walked_for_nan(
    gateway: GatewayFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The parser itself reports NaN and Infinity (and floats past the range): the walk that
    names the field runs for such a body only, not for every request."""
    walked: list[object] = []

    def counting(document: object, prefix: str = "") -> str | None:
        walked.append(document)
        return non_finite_path(document, prefix)

    monkeypatch.setattr(events_api, "non_finite_path", counting)
    client = await gateway()
    events = [
        web_event(event_id=f"finite-{i}", custom_data={"value": 1.5, "currency": "EUR"})
        for i in range(3)
    ]
    resp = await client.post("/_capi/events", json={"data": events}, headers=auth())
    assert resp.status == 202, await resp.text()
    assert walked == []
    raw = json.dumps(
        {"data": [web_event(custom_data={"value": 1.5, "currency": "EUR", "score": 2})]}
    )
    resp = await client.post(
        "/_capi/events",
        data=raw.replace('"score": 2', '"score": 1e400').encode(),
        headers={**auth(), "Content-Type": "application/json"},
    )
    assert resp.status == 400
    assert "data.0.custom_data.score" in (await resp.json())["detail"]
    assert len(walked) == 1


# -- the body parse: orjson where it reads like json.loads, json.loads otherwise --------------


async def test_integers_past_64_bits_are_stored_and_sent_with_all_their_digits(
    gateway: GatewayFactory, fake_graph: FakeGraph
) -> None:
    client = await gateway()
    event = web_event(
        event_id="big-int",
        custom_data={"value": 5, "currency": "EUR", "order_ref": 2**64, "low": -(2**63) - 1},
    )
    # orjson alone would read these as floats and send 1.8446744073709552e+19.
    resp = await client.post("/_capi/events", data=json.dumps({"data": [event]}), headers=auth())
    assert resp.status == 202, await resp.text()
    await wait_for(lambda: len(fake_graph.events) == 1)
    custom = fake_graph.events[0]["custom_data"]
    assert (custom["order_ref"], custom["low"]) == (2**64, -(2**63) - 1)
    assert isinstance(custom["order_ref"], int)


async def test_a_utf8_bom_before_the_body_is_read_as_before(
    gateway: GatewayFactory, fake_graph: FakeGraph
) -> None:
    client = await gateway()
    body = b"\xef\xbb\xbf" + json.dumps({"data": [web_event(event_id="bom")]}).encode()
    resp = await client.post("/_capi/events", data=body, headers=auth())
    assert resp.status == 202, await resp.text()
    await wait_for(lambda: fake_graph.event_ids() == ["bom"])


@pytest.mark.parametrize(
    "body", [b"{nope", b'{"data": [', b'{"data": []}x', b"\xff\xfe{}", b"", b'{"a": .5}']
)
async def test_invalid_json_keeps_the_stdlib_message(gateway: GatewayFactory, body: bytes) -> None:
    client = await gateway()
    resp = await client.post("/_capi/events", data=body, headers=auth())
    assert resp.status == 400
    try:
        json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        expected = f"the body is not JSON: {exc}"
    answer = await resp.json()
    assert (answer["error"], answer["detail"]) == ("invalid JSON", expected)


async def test_a_lone_surrogate_escape_is_stored_and_sent_as_before(
    gateway: GatewayFactory, fake_graph: FakeGraph
) -> None:
    client = await gateway()
    raw = json.dumps(
        {
            "data": [
                web_event(
                    event_id="lone", custom_data={"value": 5, "currency": "EUR", "note": "\ud800x"}
                )
            ]
        }
    )
    assert "\\ud800x" in raw
    resp = await client.post("/_capi/events", data=raw, headers=auth())
    assert resp.status == 202, await resp.text()
    await wait_for(lambda: len(fake_graph.events) == 1)
    assert fake_graph.events[0]["custom_data"]["note"] == "\ud800x"
