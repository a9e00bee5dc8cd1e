"""Touchpoints and facts in the store, on both backends: visits by time-out, by a new
campaign within one group commit, a site's own hosts, and the report reads over a range.

Events go in through the outbox's `add` (the path every accepted event takes) with the
times the test chooses; reads go through each backend's `InsightReader`.
"""

from __future__ import annotations

import dataclasses
import json
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from gateway.delivery.insightfacts import InsightPolicy
from gateway.delivery.insightreads import Window
from gateway.delivery.insights import SqliteInsights
from gateway.delivery.outbox import Outbox
from gateway.delivery.postgres.insights import PgInsights
from gateway.delivery.postgres.outbox import PgOutbox
from gateway.delivery.profiles import ProfilePolicy
from gateway.delivery.reads import APART
from gateway.delivery.seal import Sealer
from gateway.delivery.store import InsightReader, OutboxStore
from gateway.insights.reports import Query, attribution, funnel, summary
from gateway.insightsettings import InsightSettings
from gateway.models import NewEvent
from tests.delivery.stores import KEY

T0 = 1_780_000_000  # a fixed moment: the store takes event times as given
FBP = "fb.1.1700000000000.42"
HOST = "shop.example"


def view(
    at: int,
    path: str = "/",
    *,
    referrer: str | None = None,
    fbp: str = FBP,
    site: str | None = None,
    host: str = HOST,
) -> NewEvent:
    payload: dict[str, Any] = {
        "event_name": "PageView",
        "event_time": at,
        "event_id": f"pv-{fbp}-{at}-{path}",
        "action_source": "website",
        "event_source_url": f"https://{host}{path}",
        "user_data": {},
    }
    if referrer:
        payload["referrer_url"] = referrer
    return NewEvent(
        pixel_id="111111",
        event_name="PageView",
        event_id=payload["event_id"],
        event_time=at,
        payload=payload,
        clear={"fbp": fbp, "client_user_agent": "UA"},
        source="proxy",
        site=site,
    )


def conversion(
    at: int, name: str = "Purchase", value: float | None = None, fbp: str | None = FBP
) -> NewEvent:
    payload: dict[str, Any] = {
        "event_name": name,
        "event_time": at,
        "event_id": f"{name}-{fbp}-{at}",
        "action_source": "website",
        "user_data": {"em": ["a" * 64]},
    }
    if value is not None:
        payload["custom_data"] = {"value": value, "currency": "eur"}
    return NewEvent(
        pixel_id="111111",
        event_name=name,
        event_id=payload["event_id"],
        event_time=at,
        payload=payload,
        clear={"fbp": fbp} if fbp else {},
        source="api",
    )


@pytest.fixture
async def box(store: OutboxStore) -> OutboxStore:
    store.insights = InsightPolicy.from_key(
        KEY,
        visit_timeout=1800,
        retention=90 * 86400,
        own_hosts={"brand": frozenset({"brand.example", "www.brand.example"})},
    )
    return store


@pytest.fixture
async def reader(box: OutboxStore) -> AsyncIterator[InsightReader]:
    found: InsightReader
    if isinstance(box, PgOutbox):
        found = PgInsights(box.db)
    else:
        assert isinstance(box, Outbox)
        found = await SqliteInsights.open(box.path)
    yield found
    await found.close()


WHOLE = Window(T0 - 86400, T0 + 86400)


async def channels(reader: InsightReader) -> list[tuple[int, str, str | None]]:
    return [(t.at - T0, t.channel, t.campaign) for t in await reader.touches(WHOLE)]


async def test_a_visit_ends_after_the_timeout_and_with_a_new_campaign(
    box: OutboxStore, reader: InsightReader
) -> None:
    await box.add([view(T0, "/?utm_source=fb&utm_medium=paid_social&utm_campaign=a")])
    await box.add([view(T0 + 600, "/p2", referrer=f"https://{HOST}/")])  # inside the visit
    await box.add([view(T0 + 600 + 1799, "/p3")])  # 29:59 after the last view: same visit
    await box.add([view(T0 + 600 + 1799 + 1800, "/back")])  # 30 min idle: a Direct visit
    # One group commit, two views a second apart: the second's new campaign is a new visit.
    await box.add(
        [
            view(T0 + 5000, "/?utm_source=news&utm_medium=email&utm_campaign=b"),
            view(T0 + 5001, "/?utm_source=news&utm_medium=email&utm_campaign=c"),
        ]
    )
    assert await channels(reader) == [
        (0, "Paid Social", "a"),
        (4199, "Direct", "(not set)"),
        (5000, "Email", "b"),
        (5001, "Email", "c"),
    ]


async def test_a_sites_other_hosts_are_not_referrers(
    box: OutboxStore, reader: InsightReader
) -> None:
    await box.add([view(T0, "/", site="brand", host="brand.example", fbp="fb.1.1.1")])
    # From the site's www host after the visit timed out: Direct, not Referral.
    await box.add(
        [
            view(
                T0 + 4000,
                "/x",
                site="brand",
                host="brand.example",
                referrer="https://www.brand.example/",
                fbp="fb.1.1.1",
            )
        ]
    )
    await box.add([view(T0 + 8000, "/y", referrer="https://blog.other.example/", fbp="fb.1.1.2")])
    assert await channels(reader) == [
        (0, "Direct", "(not set)"),
        (4000, "Direct", "(not set)"),
        (8000, "Referral", "(not set)"),
    ]
    site = await reader.touches(Window(T0 - 1, T0 + 86400, "brand"))
    assert len(site) == 2


async def test_reports_over_a_range(box: OutboxStore, reader: InsightReader) -> None:
    cfg = InsightSettings(funnel=["ViewContent", "AddToCart", "Purchase"])
    await box.add([view(T0 - 40 * 86400, "/?utm_source=fb&utm_medium=paid_social")])  # too old
    await box.add([view(T0, "/?gclid=x")])
    await box.add(
        [
            conversion(T0 + 10, "ViewContent"),
            conversion(T0 + 20, "AddToCart"),
            conversion(T0 + 30, "Purchase", 40.0),
            conversion(T0 + 40, "Purchase", 60.0, fbp=None),  # no visitor: Direct
            conversion(T0 + 90_000, "Purchase", 1000.0),  # after the range
        ]
    )
    q = Query(Window(T0 - 3600, T0 + 3600), model="first_click")
    got = await summary(reader, q, cfg)
    assert got["visitors"] == 1
    assert got["events"]["Purchase"] == {"count": 2, "value": {"EUR": 100.0}}
    assert got["average_order_value"] == {"EUR": 50.0}
    assert got["conversion_rate"] == 1.0
    steps = (await funnel(reader, q, cfg))["steps"]
    assert [s["visitors"] for s in steps] == [1, 1, 1]
    body = await attribution(reader, q, cfg)
    rows = {r["key"]: (r["conversions"], r["value"]) for r in body["rows"]}
    # The Paid Social visit 40 days back is outside the 30-day lookback.
    assert rows == {"Paid Search": (1.0, {"EUR": 40.0}), "Direct": (1.0, {"EUR": 60.0})}
    q7 = Query(Window(T0 - 3600, T0 + 3600), model="first_click")
    wide = await attribution(reader, q7, InsightSettings(lookback=50 * 86400))
    assert {r["key"] for r in wide["rows"]} == {"Paid Social", "Direct"}


async def test_a_sites_event_without_fbp_finds_its_visitor_through_stitch_keys(
    box: OutboxStore, reader: InsightReader
) -> None:
    # With [[sites]] profile links are the site's own (`<site>:<hash>`): the facts must look
    # them up the same way, or a backend's Purchase without fbp loses its visitor.
    box.profiles = ProfilePolicy.from_key(KEY, ttl=86400, max_profiles=1000)
    order = (("order_id", "A-1"),)
    await box.add([dataclasses.replace(conversion(T0, "AddToCart"), site="alpha", links=order)])
    backend = dataclasses.replace(conversion(T0 + 60, "Purchase", 10.0, fbp=None), site="alpha")
    await box.add([dataclasses.replace(backend, links=order)])
    window = Window(T0 - 60, T0 + 3600, site="alpha")
    assert await reader.visitors(window, ["AddToCart"]) == 1
    assert await reader.visitors(window, ["Purchase"]) == 1


async def test_two_writers_agree_on_visits(store_location: Path | str) -> None:
    """Two outboxes on one store (workers on a file, replicas on PostgreSQL), each with its
    own visit cache: a visit one starts is seen by the other, which never counts it twice."""
    boxes: list[OutboxStore] = []
    for _ in range(2):
        one: OutboxStore
        if isinstance(store_location, Path):
            one = await Outbox.open(store_location, Sealer(KEY), group_commit_ms=1)
        else:
            one = await PgOutbox.open(store_location, Sealer(KEY), group_commit_ms=1)
        one.insights = InsightPolicy.from_key(KEY, visit_timeout=1800, retention=90 * 86400)
        boxes.append(one)
    a, b = boxes
    try:
        paid = "/?utm_source=fb&utm_medium=paid_social&utm_campaign=a"
        mail = "/?utm_source=news&utm_medium=email&utm_campaign=b"
        await a.add([view(T0, paid)])
        await b.add([view(T0 + 60, mail)])  # B: a new campaign, a new visit
        await a.add([view(T0 + 120, "/next")])  # A's cache: within the visit, no read
        await a.add([view(T0 + 180, mail)])  # A reads the store: B's visit goes on
        await b.add([view(T0 + 240, paid)])  # B reads the store: campaign a again
        # The untagged view was the only one the cache settled without a read.
        assert a.insights is not None and b.insights is not None
        assert (a.insights.cache.hits, b.insights.cache.hits) == (1, 0)
        reader: InsightReader
        if isinstance(a, PgOutbox):
            reader = PgInsights(a.db)
        else:
            assert isinstance(a, Outbox)
            reader = await SqliteInsights.open(a.path)
        try:
            assert await channels(reader) == [
                (0, "Paid Social", "a"),
                (60, "Email", "b"),
                (240, "Paid Social", "a"),
            ]
        finally:
            await reader.close()
    finally:
        for one in boxes:
            await one.close()


async def test_a_later_copy_sets_the_counted_value_and_two_pixels_count_once(
    box: OutboxStore, reader: InsightReader
) -> None:
    """The thank-you page says 19.90; the payment webhook, merged into the same Purchase
    while it is held, says 24.90: the report counts what the outbox will send. The same
    event sent to two pixels is one conversion."""
    page = dataclasses.replace(conversion(T0, "Purchase", 19.9), source="rule", rule="thanks")
    webhook_payload = {**page.payload, "custom_data": {"value": 24.9, "currency": "EUR"}}
    webhook = NewEvent(
        pixel_id=page.pixel_id,
        event_name="Purchase",
        event_id=page.event_id,
        event_time=T0,
        payload=webhook_payload,
        clear={},
        source="webhook",
        rule="stripe",
    )
    other_pixel = NewEvent(
        pixel_id="222222",
        event_name="Purchase",
        event_id="order-2",
        event_time=T0,
        payload={
            **page.payload,
            "event_id": "order-2",
            "custom_data": {"value": 5.0, "currency": "EUR"},
        },
        clear=page.clear,
        source="api",
    )
    same_for_first = NewEvent(
        pixel_id="111111",
        event_name="Purchase",
        event_id="order-2",
        event_time=T0,
        payload=other_pixel.payload,
        clear=page.clear,
        source="api",
    )
    assert await box.add([page]) == ["new"]
    assert await box.add([webhook]) == ["merged"]
    await box.add([other_pixel, same_for_first])
    sent = await stored_value(box, page.event_id)
    assert sent != 19.9  # the webhook's amount won: the fact must follow it
    got = await summary(reader, Query(Window(T0 - 60, T0 + 60)), InsightSettings())
    assert got["events"]["Purchase"] == {"count": 2, "value": {"EUR": round(sent + 5.0, 4)}}


async def stored_value(box: OutboxStore, event_id: str) -> float:
    """The value the outbox row of `event_id` will send."""
    sql = f"SELECT payload FROM events WHERE event_id = '{event_id}' AND pixel_id = '111111'"
    if isinstance(box, PgOutbox):
        text = await box.db.fetchval(sql.replace("SELECT payload", "SELECT payload::text"))
    else:
        assert isinstance(box, Outbox)
        with sqlite3.connect(box.path) as conn:
            (text,) = conn.execute(sql).fetchone()
    value = json.loads(str(text))["custom_data"]["value"]
    return float(value)


async def test_insights_do_not_count_towards_max_buffer_mb(tmp_path: Path) -> None:
    """Reports' rows are bounded by `touchpoint_retention`; `max_buffer_mb` bounds the
    outbox, which must never refuse events because the reports' tables grew."""
    path = tmp_path / "o.db"
    box = await Outbox.open(path, Sealer(KEY), group_commit_ms=1)
    box.insights = InsightPolicy.from_key(KEY, visit_timeout=1800, retention=90 * 86400)
    await box.add([conversion(T0, "Purchase", 1.0, fbp=f"fb.1.1.{i}") for i in range(800)])
    await box.close()
    with sqlite3.connect(path) as conn:
        pages, free, size = (
            conn.execute(f"PRAGMA {name}").fetchone()[0]
            for name in ("page_count", "freelist_count", "page_size")
        )
        (insights,) = conn.execute(
            "SELECT SUM(pgsize) FROM dbstat WHERE name IN (SELECT name FROM sqlite_master "
            f"WHERE tbl_name IN ({','.join('?' * len(APART))}))",
            APART,
        ).fetchone()
    total = (pages - free) * size
    assert insights > 8 * 4096
    # A bound the file is over, but its outbox is not.
    bound = (total - insights / 2) / 1048576
    box = await Outbox.open(path, Sealer(KEY), group_commit_ms=1, max_buffer_mb=bound)
    box.insights = InsightPolicy.from_key(KEY, visit_timeout=1800, retention=90 * 86400)
    try:
        assert await box.used_bytes() == total - insights
        assert await box.add([conversion(T0 + 1, "Lead")]) == ["new"]
    finally:
        await box.close()


async def test_copies_merged_in_one_group_commit_leave_the_last_value_on_the_fact(
    box: OutboxStore, reader: InsightReader
) -> None:
    """Two copies of one Purchase in one batch, each outranking the one before: the fact
    follows the row's final value (PostgreSQL writes a commit's fact changes as one
    statement, where two changes of one fact must not race)."""
    beacon = dataclasses.replace(conversion(T0, "Purchase", 10.0), source="collect")
    rule = dataclasses.replace(
        beacon,
        payload={**beacon.payload, "custom_data": {"value": 20.0, "currency": "EUR"}},
        source="rule",
        rule="thanks",
    )
    webhook = dataclasses.replace(
        beacon,
        payload={**beacon.payload, "custom_data": {"value": 30.0, "currency": "EUR"}},
        source="webhook",
        rule="stripe",
    )
    assert await box.add([beacon]) == ["new"]
    assert await box.add([rule, webhook]) == ["merged", "merged"]
    assert await stored_value(box, beacon.event_id) == 30.0
    got = await summary(reader, Query(Window(T0 - 60, T0 + 60)), InsightSettings())
    assert got["events"]["Purchase"] == {"count": 1, "value": {"EUR": 30.0}}
