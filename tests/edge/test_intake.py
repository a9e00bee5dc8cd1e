"""The intake's one policy for a store that is full, closing or failing, through real HTTP.

The store is made to fail for real: a buffer over a tiny `max_buffer_mb`, an outbox that
has been closed, or an outbox table another process renamed away (every write then fails
in SQLite, as a broken disk would). A request is answered 503 with Retry-After — never
500 — and the refusal is counted in `/metrics` and logged; a page whose background
PageView cannot be stored is served all the same.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from gateway.edge.appkeys import INTAKE, OUTBOX, PAGES, PROXIED_RULES, RUNTIME
from gateway.edge.intake import Stored
from gateway.models import NewEvent
from tests.conftest import GatewayFactory, auth, web_event
from tests.edge.conftest import StartGateway
from tests.edge.rules_env import RuleSite, StartRules
from tests.edge.test_collect import beacon, event, visit
from tests.edge.test_webhooks import RULES, body_of, stripe_event, stripe_headers
from tests.fakes.upstream import Front
from tests.ops.test_prometheus import Samples, scrape, scrape_client

EVENTS = "capi_gateway_events_total"


@contextlib.asynccontextmanager
async def broken_store(buffer: Path, table: str = "event_data") -> AsyncIterator[None]:
    """Every outbox write (or stitch lookup, with `table="stitches"`) fails while inside:
    the table is renamed away and back (`event_data`: `events` is a view over it, which
    SQLite does not rename; the view and its triggers follow the table there and back).

    Run in a thread: the gateway's own transactions need the event loop to finish."""

    def rename(old: str, new: str) -> None:
        with contextlib.closing(sqlite3.connect(buffer, timeout=10)) as conn:
            conn.execute(f"ALTER TABLE {old} RENAME TO {new}")

    await asyncio.to_thread(rename, table, f"{table}_away")
    try:
        yield
    finally:
        await asyncio.to_thread(rename, f"{table}_away", table)


def refused(samples: Samples, source: str, name: str) -> float:
    return samples.get(EVENTS, source=source, event_name=name, outcome="rejected")


# -- /collect ---------------------------------------------------------------------------------


async def test_collect_answers_503_not_500_when_the_store_fails(
    gw: Front, caplog: pytest.LogCaptureFixture
) -> None:
    page = await visit(gw)
    await gw.app[PAGES].drain()  # the page's own PageView is stored before the fault
    caplog.set_level(logging.ERROR)
    async with broken_store(gw.app[RUNTIME].settings.buffer):
        answer = await beacon(gw, page)
    assert answer.status == 503, answer.body
    assert answer.body["error"] == "outbox unavailable"
    assert int(answer.headers["Retry-After"]) > 0
    assert "Storing 1 collect event(s) failed" in caplog.text
    assert gw.app[INTAKE].refusals == 1
    assert refused(await scrape(gw.session, gw.url), "collect", "AddToCart") == 1
    # The store is back: the same beacon is taken.
    assert (await beacon(gw, page)).status == 204


async def test_collect_answers_503_when_the_buffer_is_full(start: StartGateway) -> None:
    gw = await start(max_buffer_mb=0.01)
    page = await visit(gw)
    await gw.app[PAGES].drain()
    answer = await beacon(gw, page, [event(event_id=page.event_id + ".1")])
    assert answer.status == 503
    assert answer.body["error"] == "buffer full"
    assert int(answer.headers["Retry-After"]) > 0


async def test_collect_answers_503_when_the_outbox_is_closed(gw: Front) -> None:
    page = await visit(gw)
    await gw.app[PAGES].drain()
    await gw.app[OUTBOX].close()
    answer = await beacon(gw, page)
    assert answer.status == 503
    assert answer.body["error"] == "shutting down"
    assert int(answer.headers["Retry-After"]) > 0


# -- webhooks and the events API --------------------------------------------------------------


@pytest.fixture
def secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.edge.test_webhooks import ENV

    for name, value in ENV.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("STRIPE_WEBHOOK_SECRET_NEXT", raising=False)


async def test_a_webhook_answers_503_when_the_store_fails(
    gateway: GatewayFactory, secrets: None
) -> None:
    client = await gateway(rules=RULES)
    body = body_of(stripe_event("BROKEN1"))
    async with broken_store(client.server.app[RUNTIME].settings.buffer):
        resp = await client.post("/_capi/hooks/stripe", data=body, headers=stripe_headers(body))
    assert resp.status == 503
    assert (await resp.json())["error"] == "outbox unavailable"
    assert int(resp.headers["Retry-After"]) > 0
    samples = await scrape_client(client)
    assert samples.get("capi_gateway_webhook_deliveries_total", hook="stripe", outcome="busy") == 1
    # The provider's retry, once the store is back, is stored.
    resp = await client.post("/_capi/hooks/stripe", data=body, headers=stripe_headers(body))
    assert resp.status == 200


async def test_a_webhook_answers_503_when_the_outbox_is_closed(
    gateway: GatewayFactory, secrets: None
) -> None:
    client = await gateway(rules=RULES)
    await client.server.app[OUTBOX].close()
    body = body_of(stripe_event("CLOSED1"))
    resp = await client.post("/_capi/hooks/stripe", data=body, headers=stripe_headers(body))
    assert resp.status == 503
    assert (await resp.json())["error"] == "shutting down"


async def test_a_failing_stitch_lookup_is_503_not_a_guess(
    gateway: GatewayFactory, secrets: None
) -> None:
    client = await gateway(rules=RULES)
    body = body_of(stripe_event("STITCHFAIL1"))
    async with broken_store(client.server.app[RUNTIME].settings.buffer, "stitches"):
        hook = await client.post("/_capi/hooks/stripe", data=body, headers=stripe_headers(body))
        api = await client.post(
            "/_capi/events",
            json={"data": [web_event(stitch_key={"order_id": "A1"})]},
            headers=auth(),
        )
    for resp in (hook, api):
        assert resp.status == 503
        assert (await resp.json())["error"] == "outbox unavailable"
        assert int(resp.headers["Retry-After"]) > 0
    assert client.server.app[INTAKE].refusals == 2


async def test_the_events_api_answers_503_when_the_store_fails(gateway: GatewayFactory) -> None:
    client = await gateway()
    async with broken_store(client.server.app[RUNTIME].settings.buffer):
        resp = await client.post("/_capi/events", json={"data": [web_event()]}, headers=auth())
    assert resp.status == 503
    assert (await resp.json())["error"] == "outbox unavailable"
    assert refused(await scrape_client(client), "api", "Purchase") == 1


# -- background stores: the page is served whatever happens to its events --------------------


async def test_a_pageview_the_store_refuses_never_breaks_the_page(
    gw: Front, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR)
    async with broken_store(gw.app[RUNTIME].settings.buffer):
        page = await visit(gw)  # asserts a 200 with the tag
        await gw.app[PAGES].drain()
    assert page.event_id
    counters = gw.app[PAGES].counters
    assert (counters.stored, counters.store_failed) == (0, 1)
    assert "Storing 1 proxy event(s) failed" in caplog.text
    assert refused(await scrape(gw.session, gw.url), "proxy", "PageView") == 1


async def test_rule_events_the_store_refuses_are_counted_per_rule(
    start_rules: StartRules,
) -> None:
    rules = """
[[rule]]
name = "subscribe"
event = "Subscribe"
path = "/a/subscribe"
"""
    gw = await start_rules(RuleSite().app(), rules)
    async with broken_store(gw.buffer):
        answer = await gw.get("/a/subscribe")
        await gw.settle()
    assert answer.status == 200
    counters = gw.front.app[PROXIED_RULES].counters
    assert counters.rejected == {"subscribe": 1} and counters.stored == {}


def test_the_outcomes_per_event_are_those_of_outcome_of() -> None:
    """One pass over a request's rows gives each event id the outcome `outcome_of` gives it:
    an event sent to two pixels is "new" if stored anew for either, else "merged" if merged
    for either, else "late"."""

    def row(pixel: str, event_id: str) -> NewEvent:
        return NewEvent(pixel, "Purchase", event_id, 0, {}, {}, "api")

    rows = [row("1", "a"), row("2", "a"), row("1", "b"), row("2", "b"), row("1", "c")]
    stored = Stored(rows, ["late", "new", "late", "merged", "late"])
    by_event = stored.outcomes_by_event()
    assert by_event == {"a": "new", "b": "merged", "c": "late"}
    assert by_event == {i: stored.outcome_of(i) for i in ("a", "b", "c")}
