"""The dashboard's numbers from a real outbox file: match keys, twins, windows, hints, rules."""

from __future__ import annotations

import contextlib
import sqlite3
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import aiosqlite
import pytest

from gateway.admin.data import DayCache, coverage_hints, load_dashboard
from gateway.admin.hints import coverage_hint
from gateway.admin.page import render_dashboard
from gateway.delivery.dashboard import DashboardReads, SqliteDashboard
from gateway.delivery.outbox import Outbox
from gateway.delivery.postgres.dashboard import PgDashboard
from gateway.delivery.postgres.outbox import PgOutbox
from gateway.delivery.reads import reading as reader
from gateway.delivery.schema import MIGRATIONS, SCHEMA_VERSION
from gateway.delivery.seal import Sealer
from gateway.delivery.store import OutboxStore
from gateway.models import NewEvent
from gateway.pipeline.extract import Extractor

KEY = bytes(range(32))
HASH = "ab" * 32


@dataclass(frozen=True)
class FakeRule:
    """A loaded rule as the dashboard sees one (the tests build the list themselves)."""

    name: str
    event_name: str
    trigger: str = "request"
    file: str = "rules/shop.toml"
    extractors: tuple[Extractor, ...] = ()


def event(
    event_id: str,
    *,
    name: str = "Purchase",
    source: str = "api",
    pixel: str = "111111",
    hashed: dict[str, Any] | None = None,
    clear: dict[str, Any] | None = None,
    rule: str | None = None,
    hold: float = 0.0,
) -> NewEvent:
    user = {"em": [HASH]} if hashed is None else hashed
    return NewEvent(
        pixel_id=pixel,
        event_name=name,
        event_id=event_id,
        event_time=int(time.time()),
        payload={"event_name": name, "event_id": event_id, "user_data": user},
        clear={"client_ip_address": "192.0.2.1", "client_user_agent": "UA/1"}
        if clear is None
        else clear,
        source=source,
        rule=rule,
        hold=hold,
    )


@pytest.fixture
async def box(tmp_path: Path) -> AsyncIterator[Outbox]:
    outbox = await Outbox.open(tmp_path / "o.db", Sealer(KEY), group_commit_ms=1)
    yield outbox
    await outbox.close()


@contextlib.asynccontextmanager
async def dashboard_of(box: OutboxStore) -> AsyncIterator[DashboardReads]:
    """The dashboard's reads of either store, as the admin page opens them."""
    if isinstance(box, Outbox):
        async with reader(box.path) as conn:
            yield SqliteDashboard(conn)
    else:
        assert isinstance(box, PgOutbox)
        yield PgDashboard(box.db)


def column(path: Path, sql: str) -> list[tuple[Any, ...]]:
    with sqlite3.connect(path) as conn:
        return list(conn.execute(sql).fetchall())


# -- what the outbox records at insert ---------------------------------------------------------


async def test_insert_records_the_user_data_keys_present(box: Outbox) -> None:
    await box.add(
        [
            event("a", hashed={"em": [HASH], "external_id": [HASH]}, clear={"fbp": "fb.1.1.1"}),
            event("b", hashed={}, clear={"client_user_agent": "UA/1"}),
        ]
    )
    keys = dict(column(box.path, "SELECT event_id, match_keys FROM events"))
    assert keys == {"a": "em,external_id,fbp", "b": "client_user_agent"}


async def test_a_duplicate_from_the_other_side_marks_the_kept_row_as_twin(box: Outbox) -> None:
    # Server first, then the browser's copy; browser first, then the server's.
    assert await box.add([event("s1", source="api"), event("b1", source="collect")]) == [
        "new",
        "new",
    ]
    assert await box.add([event("s1", source="collect"), event("b1", source="rule")]) == [
        "merged",
        "merged",
    ]
    # Same side again: a copy merged in, not a twin.
    assert await box.add([event("s2", source="api")]) == ["new"]
    assert await box.add([event("s2", source="webhook"), event("s2", source="api")]) == [
        "merged",
        "merged",
    ]
    twins = dict(column(box.path, "SELECT event_id, twin FROM events"))
    assert twins == {"s1": 1, "b1": 1, "s2": 0}
    # A twin seen twice stays one twin, and still counts as a duplicate.
    assert await box.add([event("s1", source="collect")]) == ["merged"]
    assert dict(column(box.path, "SELECT event_id, twin FROM events"))["s1"] == 1


async def test_twins_within_one_group_commit_keep_the_first_as_new(box: Outbox) -> None:
    flags = await box.add([event("g", source="proxy"), event("g", source="collect")])
    assert flags == ["new", "merged"]
    assert column(box.path, "SELECT source, twin FROM events") == [("proxy", 1)]


async def test_a_beacon_enriching_a_pageview_marks_it_and_adds_its_keys(box: Outbox) -> None:
    view = event(
        "pv", name="PageView", source="proxy", hashed={}, hold=60, clear={"client_user_agent": "U"}
    )
    await box.add([view])
    beacon = replace(view, source="collect", clear={"client_user_agent": "U", "fbp": "fb.1.2.3"})
    assert await box.add([beacon]) == ["merged"]
    assert column(box.path, "SELECT match_keys, twin FROM events") == [("client_user_agent,fbp", 1)]
    # Another beacon from the same page adds nothing and changes nothing.
    assert await box.add([beacon]) == ["merged"]
    assert column(box.path, "SELECT match_keys, twin FROM events") == [("client_user_agent,fbp", 1)]


async def test_a_late_beacon_still_marks_a_sent_pageview_as_twin(box: Outbox) -> None:
    view = event("late", name="PageView", source="proxy", hashed={})
    await box.add([view])
    claimed = await box.claim("w", limit=10, lease=30)
    await box.mark_sent([c.id for c in claimed], "w", fbtrace_id="T")
    assert await box.add([replace(view, source="collect")]) == ["late"]
    assert column(box.path, "SELECT state, twin FROM events") == [("sent", 1)]


async def test_an_outbox_of_the_previous_schema_is_migrated(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    with sqlite3.connect(path) as conn:
        conn.executescript(MIGRATIONS[0] + "; PRAGMA user_version = 1;")
        conn.execute(
            "INSERT INTO events (pixel_id, event_name, event_id, event_time, source, payload, "
            "next_attempt_at, created_at) VALUES ('1','Lead','old',1,'api','{}',0,?)",
            (time.time(),),
        )
    # Read without migrating (as `doctor` does), an old file has no hints yet.
    async with aiosqlite.connect(path) as conn:
        assert await coverage_hints(conn, [], rules_dir=None) == []
    box = await Outbox.open(path, Sealer(KEY))
    try:
        await box.add([event("new", name="Lead")])
    finally:
        await box.close()
    assert column(path, "PRAGMA user_version") == [(SCHEMA_VERSION,)]
    rows = column(path, "SELECT event_id, match_keys, twin FROM events ORDER BY id")
    assert rows == [("old", None, 0), ("new", "em,client_ip_address,client_user_agent", 0)]
    # The old row's keys are unknown: it is left out of the coverage, not counted as empty.
    async with reader(path) as conn:
        data = await load_dashboard(conn, [], rules_dir=None)
    (lead,) = data.coverage
    assert lead.events == 1 and lead.shares["em"] == 1.0


# -- the dashboard's numbers ---------------------------------------------------------------------


async def seed(store: OutboxStore) -> None:
    """Four Purchases from /events (email in one), PageViews with and without browser twins,
    a rule firing for two pixels, one dead letter and one retrying row."""
    rows = [
        event("p1", hashed={"em": [HASH], "ph": [HASH]}),
        *(event(f"p{i}", hashed={"ph": [HASH]}) for i in (2, 3, 4)),
        *(event(f"v{i}", name="PageView", source="proxy", hashed={}) for i in range(3)),
        event("b0", name="PageView", source="collect", hashed={}),
        event("r1", name="Lead", source="rule", rule="lead-form", pixel="111111"),
        event("r1", name="Lead", source="rule", rule="lead-form", pixel="222222"),
        event("w1", name="Lead", source="webhook", rule="crm-hook"),
    ]
    await store.add(rows)
    # Browser copies: of v0 and v1 (dropped as duplicates, marking the twins).
    await store.add([event(f"v{i}", name="PageView", source="collect", hashed={}) for i in (0, 1)])
    claimed = [(c.event_id, c.id) for c in await store.claim("w", limit=100, lease=30)]
    assert len(claimed) == 11
    ids = dict(claimed)
    await store.mark_dead([ids["p4"]], "w", error="Invalid parameter", fbtrace_id="TRACE-1")
    await store.mark_retry([ids["p3"]], "w", at=time.time() + 600, error="500", fbtrace_id=None)
    rest = [i for k, i in claimed if k not in ("p3", "p4")]
    await store.mark_sent(rest, "w", fbtrace_id="OK")


async def test_dashboard_numbers(store: OutboxStore, tmp_path: Path) -> None:
    await seed(store)
    rules = [FakeRule("lead-form", "Lead", "submit"), FakeRule("never", "Purchase")]
    async with dashboard_of(store) as reads:
        data = await load_dashboard(reads, rules, rules_dir=tmp_path / "rules")
    # Events per minute: every stored row, in the current minute (the last bar).
    totals = {s.event_name: s.total for s in data.timeline.series}
    assert totals == {"PageView": 4, "Purchase": 4, "Lead": 3}
    assert all(sum(s.counts[:-2]) == 0 for s in data.timeline.series)
    # Delivery.
    d = data.delivery
    assert (d.sent, d.pending, d.retrying, d.dead, d.blocked) == (9, 0, 1, 1, 0)
    (dead,) = data.dead_letters
    assert (dead.event_id, dead.error, dead.fbtrace_id) == ("p4", "Invalid parameter", "TRACE-1")
    # Coverage: email in 1 of 4 Purchases.
    purchase = next(c for c in data.coverage if c.event_name == "Purchase")
    assert purchase.events == 4
    assert purchase.shares["em"] == 0.25 and purchase.shares["ph"] == 1.0
    assert purchase.shares["client_user_agent"] == 1.0 and purchase.shares["fbp"] == 0.0
    hints = {h.event_name: h for h in data.hints}
    # Purchases come from the events API: the fix is in the backend.
    assert hints["Purchase"].key == "external_id"
    assert hints["Purchase"].text == (
        "Purchase events carry external_id in 0% of cases: send user_data.external_id with "
        "each Purchase from your backend (/_capi/events)"
    )
    # Dedup: v0, v1 have both sides; v2 server only; b0, a beacon the gateway sent on, both.
    pv = next(x for x in data.dedup if x.event_name == "PageView")
    assert (pv.browser, pv.server, pv.both) == (3, 4, 3)
    assert pv.browser_share == 1.0 and pv.server_share == pytest.approx(3 / 4)
    purchase_dedup = next(x for x in data.dedup if x.event_name == "Purchase")
    assert purchase_dedup.browser_share is None and purchase_dedup.server_share == 0.0
    assert (data.dedup_total.browser, data.dedup_total.server, data.dedup_total.both) == (3, 11, 3)
    # Rules: lead-form fired once (two pixels, one event id); never did not; the webhook is
    # not among the rules passed.
    assert [(r.name, r.fired) for r in data.rules] == [("lead-form", 1), ("never", 0)]
    assert data.other_rules == (("crm-hook", 1),)


async def test_browser_events_mirrored_through_collect_are_pairs(store: OutboxStore) -> None:
    # Hooked fbq calls, capi.track and click rules reach the outbox as /collect rows: the
    # pixel sent each one and the gateway sends it too, under the pixel's event id.
    await store.add(
        [
            event("m1", name="AddToCart", source="collect", hashed={}),
            event("m2", name="Lead", source="collect", rule="lead-click"),
            event("m3", name="Lead", source="collect"),
        ]
    )
    # A server copy of m2 (a rule on the form's POST) merges into the beacon's row.
    assert await store.add([event("m2", name="Lead", source="rule", rule="lead-form")]) == [
        "merged"
    ]
    async with dashboard_of(store) as reads:
        data = await load_dashboard(reads, [], rules_dir=None)
    sides = {x.event_name: (x.browser, x.server, x.both) for x in data.dedup}
    assert sides == {"AddToCart": (1, 1, 1), "Lead": (2, 2, 2)}
    cart = next(x for x in data.dedup if x.event_name == "AddToCart")
    assert cart.browser_share == 1.0 and cart.server_share == 1.0


async def test_windows_leave_older_rows_out(store: OutboxStore) -> None:
    await store.add([event("x1"), event("x2", rule="r")])
    async with dashboard_of(store) as reads:
        later = await load_dashboard(
            reads, [FakeRule("r", "Purchase")], rules_dir=None, now=time.time() + 2 * 86400
        )
        hour_later = await load_dashboard(reads, [], rules_dir=None, now=time.time() + 3700)
    assert later.timeline.series == () and later.coverage == () and later.dedup == ()
    assert later.rules[0].fired == 0
    assert hour_later.timeline.series == ()
    assert sum(c.events for c in hour_later.coverage) == 2


async def test_settled_hours_are_read_once(store: OutboxStore) -> None:
    await store.add([event("c1")])
    cache = DayCache()
    later = time.time() + 2 * 3600  # the rows' hour has settled by then
    async with dashboard_of(store) as reads:
        # The current hour is read again on every load.
        now_first = await load_dashboard(reads, [], rules_dir=None, cache=cache)
        await store.add([event("c2")])
        now_again = await load_dashboard(reads, [], rules_dir=None, cache=cache)
        # Once settled, it is read once.
        settled = await load_dashboard(reads, [], rules_dir=None, now=later, cache=cache)
        await store.add([event("c3")])
        cached = await load_dashboard(reads, [], rules_dir=None, now=later, cache=cache)
        fresh = await load_dashboard(reads, [], rules_dir=None, now=later)
    assert now_first.coverage[0].events == 1 and now_again.coverage[0].events == 2
    assert settled.coverage[0].events == cached.coverage[0].events == 2
    assert fresh.coverage[0].events == 3


async def test_coverage_hints_for_doctor(box: Outbox) -> None:
    await box.add([event("h1", source="rule", rule="checkout", hashed={})])
    async with aiosqlite.connect(box.path) as conn:
        hints = await coverage_hints(conn, [FakeRule("checkout", "Purchase")], rules_dir=None)
    assert [str(h) for h in hints] == [
        "Purchase events carry email in 0% of cases: map the checkout form's email field in "
        "rules/shop.toml"
    ]


# -- the hints' wording ------------------------------------------------------------------------


FULL = {
    "em": 1.0,
    "ph": 1.0,
    "external_id": 1.0,
    "fbp": 1.0,
    "fbc": 0.0,
    "client_ip_address": 1.0,
    "client_user_agent": 1.0,
}


def test_hint_names_the_rule_file_for_the_weakest_key() -> None:
    hint = coverage_hint(
        "Purchase",
        {**FULL, "em": 0.12, "ph": 0.4},
        {"rule": 10},
        [FakeRule("checkout", "Purchase", "submit", "rules/shop.toml")],
        rules_dir=Path("rules"),
    )
    assert hint is not None
    assert hint.text == (
        "Purchase events carry email in 12% of cases: map the checkout form's email field in "
        "rules/shop.toml"
    )


def test_hint_without_rules_says_add_a_rule_file() -> None:
    hint = coverage_hint("Lead", {**FULL, "ph": 0.3}, {"collect": 5}, [], rules_dir=None)
    assert hint is not None and hint.key == "ph"
    assert "add a rule file" in hint.text and "lead form's phone field" in hint.text
    with_dir = coverage_hint(
        "Lead", {**FULL, "ph": 0.3}, {"collect": 5}, [], rules_dir=Path("/etc/capi/rules")
    )
    assert with_dir is not None and "/etc/capi/rules/" in with_dir.text


def test_hint_for_browser_keys_and_pageviews() -> None:
    # A PageView is not asked for an email; fbc (ad clicks only) is never hinted.
    assert coverage_hint("PageView", {**FULL, "em": 0.0}, {"proxy": 9}, [], rules_dir=None) is None
    assert (
        coverage_hint("AddToCart", {**FULL, "ph": 0.0}, {"collect": 9}, [], rules_dir=None) is None
    )
    assert coverage_hint("Purchase", FULL, {"api": 9}, [], rules_dir=None) is None
    ip = coverage_hint(
        "PageView", {**FULL, "client_ip_address": 0.5}, {"proxy": 9}, [], rules_dir=None
    )
    assert ip is not None and "trusted_proxies" in ip.text
    fbp = coverage_hint("Purchase", {**FULL, "fbp": 0.004}, {"api": 9}, [], rules_dir=None)
    assert fbp is not None
    assert fbp.text.startswith("Purchase events carry fbp in under 1% of cases: forward")


async def test_coverage_as_received_and_as_sent_and_hints_on_what_is_sent(
    store: OutboxStore, tmp_path: Path
) -> None:
    ua = {"client_ip_address": "192.0.2.1", "client_user_agent": "UA/1", "fbp": "fb.1.1.1"}
    full = {"ph": [HASH], "external_id": [HASH]}
    # Two Purchases stored by the thank-you page without the email; a webhook's copy of
    # each brings it (assembly); a third Purchase never gets one.
    pages = [
        event(f"o{i}", source="rule", rule="purchase", hashed=full, clear=ua, hold=60)
        for i in range(3)
    ]
    await store.add(pages)
    await store.add(
        [
            event(f"o{i}", source="webhook", rule="stripe", hashed={"em": [HASH]}, clear={})
            for i in range(2)
        ]
    )
    async with dashboard_of(store) as reads:
        data = await load_dashboard(reads, [FakeRule("purchase", "Purchase")], rules_dir=None)
    (purchase,) = data.coverage
    assert purchase.received_share("em") == 0.0
    assert purchase.shares["em"] == pytest.approx(2 / 3)
    assert purchase.lift("em") == pytest.approx(2 / 3)
    assert purchase.received_share("ph") == purchase.shares["ph"] == 1.0
    # The hint is about what is still missing as sent, and says what assembly added.
    (hint,) = data.hints
    assert hint.key == "em" and hint.share == pytest.approx(2 / 3)
    assert hint.text.startswith(
        "Purchase events carry email in 67% of cases as sent (0% as received; event assembly "
        "and visitor profiles add the rest)"
    )
    html = render_dashboard(
        data, prefix="/_capi", csrf="x", notice="", signed_in=True, dry_run=True, version="t"
    )
    assert "0% received → 67% sent" in html
    # A key the copies supply for every event needs no hint at all.
    await store.add([event("o2", source="webhook", rule="stripe", hashed={"em": [HASH]}, clear={})])
    async with dashboard_of(store) as reads:
        data = await load_dashboard(reads, [FakeRule("purchase", "Purchase")], rules_dir=None)
    assert data.coverage[0].shares["em"] == 1.0 and data.coverage[0].received_share("em") == 0.0
    assert data.hints == ()
    html = render_dashboard(
        data, prefix="/_capi", csrf="x", notice="", signed_in=True, dry_run=True, version="t"
    )
    assert "0% received → 100% sent" in html


async def test_a_site_selection_shows_those_sites_events_only(store: OutboxStore) -> None:
    await store.add(
        [
            replace(event("s-a1"), site="a"),
            replace(event("s-a2", name="Lead", rule="lead-form"), site="a"),
            replace(event("s-b1"), site="b"),
            event("s-none"),  # the implicit default site belongs to no named site
        ]
    )
    claimed = {c.event_id: c.id for c in await store.claim("w", limit=10, lease=30)}
    await store.mark_dead([claimed["s-a1"], claimed["s-b1"]], "w", error="bad", fbtrace_id=None)
    async with dashboard_of(store) as reads:
        only_a = await load_dashboard(
            reads, [FakeRule("lead-form", "Lead")], rules_dir=None, sites=("a",)
        )
        every = await load_dashboard(reads, [FakeRule("lead-form", "Lead")], rules_dir=None)
        none = await load_dashboard(reads, [], rules_dir=None, sites=())
    assert {s.event_name: s.total for s in only_a.timeline.series} == {"Purchase": 1, "Lead": 1}
    assert [d.event_id for d in only_a.dead_letters] == ["s-a1"]
    assert (only_a.delivery.dead, only_a.delivery.pending) == (1, 1)
    assert {c.event_name: c.events for c in only_a.coverage} == {"Purchase": 1, "Lead": 1}
    assert [(r.name, r.fired) for r in only_a.rules] == [("lead-form", 1)]
    assert {s.event_name: s.total for s in every.timeline.series} == {"Purchase": 3, "Lead": 1}
    assert sorted(d.event_id for d in every.dead_letters) == ["s-a1", "s-b1"]
    assert (every.delivery.dead, every.delivery.pending) == (2, 2)
    assert none.timeline.series == () and none.dead_letters == () and none.coverage == ()
