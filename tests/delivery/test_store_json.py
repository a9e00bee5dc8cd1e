"""Stored payloads and sealed fields: written by orjson, read back as the same document."""

from __future__ import annotations

import json
import sqlite3
import time
from typing import Any

from gateway.delivery.outbox import Outbox
from gateway.delivery.postgres.outbox import PgOutbox
from gateway.delivery.postgres.pool import SCHEMA
from gateway.delivery.store import OutboxStore
from gateway.models import NewEvent
from tests.delivery.stores import fetch


def event(event_id: str, payload_extra: dict[str, Any], clear: dict[str, Any]) -> NewEvent:
    payload = {"event_name": "Lead", "event_id": event_id, "user_data": {}, **payload_extra}
    return NewEvent(
        pixel_id="111",
        event_name="Lead",
        event_id=event_id,
        event_time=int(time.time()),
        payload=payload,
        clear=clear,
        source="api",
        hold=0,
    )


CUSTOM = {
    # orjson writes no int past 64 bits and reads one back as a float.
    "order_ref": 2**64,
    "low": -(2**63) - 1,
    "edge": 2**64 - 1,
    "name": "Café ☕ 😀 \u2028",
    "values": [0.1, 1e16, 1e-07, -0.0, 12.5, 3, True, None],
}


def assert_custom(store: OutboxStore, got: dict[str, Any]) -> None:
    assert got == CUSTOM
    for key in ("order_ref", "low", "edge"):
        assert type(got[key]) is int, (key, got[key])
    if isinstance(store, Outbox):
        # jsonb orders keys and writes 1e16 as 10000000000000000; SQLite keeps the text.
        assert repr(got) == repr(CUSTOM)


async def test_payloads_and_sealed_fields_come_back_exactly(store: OutboxStore) -> None:
    clear = {"client_user_agent": "Mozilla/5.0 (Gerät; ü)", "client_ip_address": "203.0.113.7"}
    await store.add([event("json-1", {"custom_data": CUSTOM}, clear)])
    [row] = await store.claim("w", limit=10, lease=30)
    assert_custom(store, row.event["custom_data"])
    assert row.event["user_data"] == clear


async def test_stored_payload_text_is_compact_utf8(store: OutboxStore) -> None:
    await store.add([event("json-2", {"custom_data": {"name": "Café"}}, {})])
    table = "events" if isinstance(store, Outbox) else f"{SCHEMA}.event_data"
    [(text,)] = await fetch(store, f"SELECT payload FROM {table}")
    stored = text if isinstance(text, str) else json.dumps(text)
    assert "Café" in stored
    if isinstance(store, Outbox):
        assert stored.startswith('{"event_name":"Lead","event_id":"json-2"')


async def test_a_row_json_dumps_wrote_reads_as_before(store: OutboxStore) -> None:
    await store.add([event("json-3", {}, {})])
    # What the stdlib wrote before orjson: ASCII escapes, spaces, and big ints.
    old = json.dumps(
        {"event_name": "Lead", "event_id": "json-3", "user_data": {}, "custom_data": CUSTOM}
    )
    assert "\\u00e9" in old
    if isinstance(store, Outbox):
        with sqlite3.connect(store.path) as conn:
            conn.execute("UPDATE events SET payload = ?", (old,))
    else:
        assert isinstance(store, PgOutbox)
        await store.db.fetchval(f"UPDATE {SCHEMA}.event_data SET payload = $1::jsonb", old)
    [row] = await store.claim("w", limit=10, lease=30)
    assert_custom(store, row.event["custom_data"])
