"""Custom Audiences on both store backends: membership from stored events and profiles, and
the sync against a fake Custom Audience API on loopback (tests/fakes/audiences.py)."""

from __future__ import annotations

import hashlib
import itertools
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from gateway.delivery.audiences import SqliteAudiences
from gateway.delivery.audiences_sync import AudienceSync, Target, targets
from gateway.delivery.audiences_task import AudienceSyncer
from gateway.delivery.forget import Person
from gateway.delivery.graph import GraphClient
from gateway.delivery.outbox import Outbox
from gateway.delivery.postgres.audiences import PgAudiences
from gateway.delivery.postgres.outbox import PgOutbox
from gateway.delivery.profiles import ProfilePolicy
from gateway.delivery.retry import RetryPolicy
from gateway.delivery.store import AudienceStore, OutboxStore
from gateway.models import NewEvent
from gateway.pipeline.audiences import SCHEMA
from gateway.settings import Settings
from tests.delivery.stores import KEY, Opener
from tests.fakes.audiences import FakeAudiences, start_fake_audiences

PIXEL = "123456789012345"
TOKEN = "EAAB-audience-token"
ACCOUNT = "4242424242"
DAY = 86400
_ids = itertools.count(1)


def sha(normalized: str) -> str:
    """SHA-256 of a value already normalized by Meta's rules (the test's own oracle)."""
    return hashlib.sha256(normalized.encode()).hexdigest()


def meta_row(**values: str) -> tuple[str, ...]:
    """A row in Meta's schema order: EMAIL, PHONE, FN, LN, ... from normalized values."""
    keys = {
        "EMAIL": "em",
        "PHONE": "ph",
        "FN": "fn",
        "LN": "ln",
        "CT": "ct",
        "ST": "st",
        "ZIP": "zp",
        "COUNTRY": "country",
        "GEN": "ge",
        "EXTERN_ID": "external_id",
    }
    return tuple(sha(values[keys[k]]) if keys[k] in values else "" for k in SCHEMA)


def event(
    name: str,
    fbp: str,
    *,
    at: float,
    value: float | None = None,
    currency: str = "EUR",
    opt_out: bool = False,
    site: str | None = None,
    **ids: str,
) -> NewEvent:
    """An accepted event of the visitor `fbp`, with hashed identifiers from normalized `ids`."""
    payload: dict[str, Any] = {
        "event_name": name,
        "event_time": int(at),
        "action_source": "website",
        "event_source_url": "https://shop.example/",
        "user_data": {k: [sha(v)] for k, v in ids.items()},
    }
    if value is not None:
        payload["custom_data"] = {"value": value, "currency": currency}
    if opt_out:
        payload["opt_out"] = True
    return NewEvent(
        pixel_id=PIXEL,
        event_name=name,
        event_id=f"ev-{next(_ids)}",
        event_time=int(at),
        payload=payload,
        clear={"fbp": fbp, "client_user_agent": "UA"},
        source="events_api",
        site=site,
    )


def settings(*audiences: dict[str, Any], **more: Any) -> Settings:
    """Settings with these `[[audiences]]`."""
    values: dict[str, Any] = {
        "pixel_id": [PIXEL],
        "access_token": TOKEN,
        "ad_account_id": ACCOUNT,
        "audiences": list(audiences),
    }
    values.update(more)
    return Settings.model_validate(values)


CART = {
    "name": "Cart abandoners",
    "events": ["AddToCart"],
    "exclude_events": ["Purchase"],
    "window": "14d",
}


@pytest.fixture
async def stores(
    open_store: Opener, store_location: Path | str
) -> AsyncIterator[tuple[OutboxStore, AudienceStore]]:
    """An outbox with profiles on, and the audience store on the same location."""
    box = await open_store(
        group_commit_ms=2, profiles=ProfilePolicy.from_key(KEY, ttl=30 * DAY, max_profiles=100_000)
    )
    audiences: AudienceStore
    if isinstance(box, PgOutbox):
        audiences = PgAudiences(box.db)
    else:
        assert isinstance(box, Outbox)
        audiences = await SqliteAudiences.open(box.path)
    yield box, audiences
    await audiences.close()


@pytest.fixture
async def fake() -> AsyncIterator[FakeAudiences]:
    async with start_fake_audiences(token=TOKEN) as f:
        yield f


@pytest.fixture
async def graph(fake: FakeAudiences) -> AsyncIterator[GraphClient]:
    async with aiohttp.ClientSession() as session:
        yield GraphClient(
            session, graph_url=fake.url, graph_version="v26.0", timeout=5, partner_agent="t"
        )


POLICY = RetryPolicy(base=0.01, cap=0.05)


async def members(audiences: AudienceStore, target: Target, now: float) -> set[tuple[str, ...]]:
    report = await AudienceSync(audiences, None, POLICY).sync(target, now=now)
    return set(report.added)


async def test_add_to_cart_puts_in_and_purchase_takes_out(stores: Any) -> None:
    box, audiences = stores
    now = time.time()
    await box.add(
        [
            event("AddToCart", "fb.1.1.a", at=now - 3 * DAY, em="a@example.com"),
            event("AddToCart", "fb.1.1.b", at=now - 3 * DAY, em="b@example.com"),
            event("Purchase", "fb.1.1.b", at=now - 2 * DAY, value=30, em="b@example.com"),
            # Bought, then put something in the cart again: back in.
            event("Purchase", "fb.1.1.c", at=now - 5 * DAY, value=30, em="c@example.com"),
            event("AddToCart", "fb.1.1.c", at=now - 1 * DAY, em="c@example.com"),
            event("PageView", "fb.1.1.d", at=now - DAY, em="d@example.com"),
        ]
    )
    (target,) = targets(settings(CART))
    assert await members(audiences, target, now) == {
        meta_row(em="a@example.com"),
        meta_row(em="c@example.com"),
    }


async def test_window_edges(stores: Any) -> None:
    box, audiences = stores
    now = time.time()
    await box.add(
        [
            event("AddToCart", "fb.1.1.in", at=now - 14 * DAY + 60, em="in@example.com"),
            event("AddToCart", "fb.1.1.out", at=now - 14 * DAY - 60, em="out@example.com"),
            # A purchase before the window does not take out a cart inside it.
            event("AddToCart", "fb.1.1.again", at=now - DAY, em="again@example.com"),
            event("Purchase", "fb.1.1.again", at=now - 15 * DAY, value=1, em="again@example.com"),
        ]
    )
    (target,) = targets(settings(CART))
    assert await members(audiences, target, now) == {
        meta_row(em="in@example.com"),
        meta_row(em="again@example.com"),
    }


async def test_min_count_and_min_value(stores: Any) -> None:
    box, audiences = stores
    now = time.time()
    await box.add(
        [
            event("Purchase", "fb.1.1.big", at=now - DAY, value=80, em="big@example.com"),
            event("Purchase", "fb.1.1.big", at=now - 2 * DAY, value=30, em="big@example.com"),
            event("Purchase", "fb.1.1.once", at=now - DAY, value=500, em="once@example.com"),
            event("Purchase", "fb.1.1.small", at=now - DAY, value=10, em="small@example.com"),
            event("Purchase", "fb.1.1.small", at=now - 2 * DAY, value=10, em="small@example.com"),
        ]
    )
    spec = {
        "name": "Repeat buyers",
        "events": ["Purchase"],
        "window": "30d",
        "min_count": 2,
        "min_value": 100,
    }
    (target,) = targets(settings(spec))
    assert await members(audiences, target, now) == {meta_row(em="big@example.com")}


async def test_min_value_counts_per_currency(stores: Any) -> None:
    box, audiences = stores
    now = time.time()
    await box.add(
        [
            # 60 EUR and 60 USD: neither currency reaches 100.
            event("Purchase", "fb.1.1.mix", at=now - DAY, value=60, em="mix@example.com"),
            event(
                "Purchase",
                "fb.1.1.mix",
                at=now - DAY,
                value=60,
                currency="USD",
                em="mix@example.com",
            ),
            # A lower-case code is the same currency.
            event(
                "Purchase",
                "fb.1.1.usd",
                at=now - DAY,
                value=120,
                currency="usd",
                em="usd@example.com",
            ),
            event("Purchase", "fb.1.1.eur", at=now - DAY, value=101, em="eur@example.com"),
        ]
    )
    spec: dict[str, Any] = {"name": "Big", "events": ["Purchase"], "min_value": 100}
    (anyone,) = targets(settings(spec))
    assert await members(audiences, anyone, now) == {
        meta_row(em="usd@example.com"),
        meta_row(em="eur@example.com"),
    }
    (in_usd,) = targets(settings({**spec, "name": "Big USD", "currency": "usd"}))
    assert in_usd.audience.currency == "USD"
    assert await members(audiences, in_usd, now) == {meta_row(em="usd@example.com")}
    with pytest.raises(ValueError, match="currency"):
        settings({**spec, "currency": "euro"})
    with pytest.raises(ValueError, match="min_value"):
        settings({"name": "X", "events": ["Purchase"], "currency": "EUR"})


async def test_consent_and_matchable_keys(stores: Any) -> None:
    box, audiences = stores
    now = time.time()
    await box.add(
        [
            # Known from a consenting Lead, then opted out (GPC) on the cart: not a member.
            event("Lead", "fb.1.1.gpc", at=now - 3 * DAY, em="gpc@example.com"),
            event("AddToCart", "fb.1.1.gpc", at=now - DAY, opt_out=True, em="gpc@example.com"),
            # Only a city and a zip: nothing Meta could match a person on.
            event("AddToCart", "fb.1.1.city", at=now - DAY, ct="paris", zp="75001"),
            # Names together match; a phone alone does too.
            event("AddToCart", "fb.1.1.names", at=now - DAY, fn="mary", ln="oneil", ct="paris"),
            event("AddToCart", "fb.1.1.phone", at=now - DAY, ph="16505551212"),
            # No identifier on the cart event, but the profile learned an email before.
            event("Lead", "fb.1.1.known", at=now - 3 * DAY, em="known@example.com"),
            event("AddToCart", "fb.1.1.known", at=now - DAY),
        ]
    )
    (target,) = targets(settings(CART))
    assert await members(audiences, target, now) == {
        meta_row(fn="mary", ln="oneil", ct="paris"),
        meta_row(ph="16505551212"),
        meta_row(em="known@example.com"),
    }


async def test_sync_creates_sends_hashed_rows_then_only_changes(
    stores: Any, fake: FakeAudiences, graph: GraphClient
) -> None:
    box, audiences = stores
    now = time.time()
    await box.add(
        [
            event("AddToCart", "fb.1.1.a", at=now - DAY, em="a@example.com", ph="33612345678"),
            event("AddToCart", "fb.1.1.b", at=now - DAY, em="b@example.com"),
        ]
    )
    (target,) = targets(settings({**CART, "description": "carts, no purchase"}))
    sync = AudienceSync(audiences, graph, POLICY)
    first = await sync.sync(target, now=now)
    assert first.error is None and first.audience_id == "1001"
    assert fake.creates == [
        {
            "name": "Cart abandoners",
            "subtype": "CUSTOM",
            "customer_file_source": "USER_PROVIDED_ONLY",
            "description": "carts, no purchase",
            "account": ACCOUNT,
        }
    ]
    (post,) = fake.users_calls()
    assert post.method == "POST" and post.access_token == TOKEN
    assert post.schema == list(SCHEMA)
    rows = {meta_row(em="a@example.com", ph="33612345678"), meta_row(em="b@example.com")}
    assert {tuple(r) for r in post.data} == rows
    assert post.session["batch_seq"] == 1 and post.session["last_batch_flag"] is True
    assert post.session["estimated_num_total"] == 2
    assert fake.members("1001") == rows

    # b buys (out), c adds to cart (in): one removal and one addition, nothing else.
    await box.add(
        [
            event("Purchase", "fb.1.1.b", at=now - 60, value=20, em="b@example.com"),
            event("AddToCart", "fb.1.1.c", at=now - 60, em="c@example.com"),
        ]
    )
    second = await sync.sync(target, now=now)
    assert second.audience_id == "1001" and len(fake.creates) == 1
    calls = fake.users_calls()[1:]
    assert [c.method for c in calls] == ["DELETE", "POST"]
    assert calls[0].data == [list(meta_row(em="b@example.com"))]
    assert calls[1].data == [list(meta_row(em="c@example.com"))]
    # `sync --json`: the counts, and the rows themselves as Meta got them (hashes only).
    shown = second.to_json()
    assert (shown["added"], shown["removed"], shown["truncated"]) == (1, 1, False)
    assert shown["added_rows"] == [list(meta_row(em="c@example.com"))]
    assert shown["removed_rows"] == [list(meta_row(em="b@example.com"))]
    assert "b@example.com" not in str(shown) and "c@example.com" not in str(shown)
    assert shown["schema"] == list(SCHEMA)
    capped = first.to_json(max_rows=1)
    assert capped["added"] == 2 and len(capped["added_rows"]) == 1 and capped["truncated"]
    assert tuple(capped["added_rows"][0]) in rows
    assert fake.members("1001") == {
        meta_row(em="a@example.com", ph="33612345678"),
        meta_row(em="c@example.com"),
    }
    # Nothing changed: nothing sent.
    third = await sync.sync(target, now=now)
    assert (third.added, third.removed) == ([], []) and len(fake.calls) == 3
    state = await audiences.state(None, "Cart abandoners")
    assert state.audience_id == "1001" and state.size == 2 and state.synced_at == now
    assert state.coverage["EMAIL"] == 1.0 and state.coverage["PHONE"] == 0.5


async def test_more_than_10000_rows_go_in_one_session(
    stores: Any, fake: FakeAudiences, graph: GraphClient
) -> None:
    box, audiences = stores
    now = time.time()
    n = 10_001
    for start in range(0, n, 2000):
        await box.add(
            [
                event("AddToCart", f"fb.1.1.v{i}", at=now - DAY, em=f"v{i}@example.com")
                for i in range(start, min(n, start + 2000))
            ]
        )
    (target,) = targets(settings(CART))
    report = await AudienceSync(audiences, graph, POLICY).sync(target, now=now)
    assert report.error is None and len(report.added) == n
    calls = fake.users_calls("POST")
    assert [len(c.data) for c in calls] == [10_000, 1]
    assert [c.session["batch_seq"] for c in calls] == [1, 2]
    assert [c.session["last_batch_flag"] for c in calls] == [False, True]
    assert {c.session["session_id"] for c in calls} == {calls[0].session["session_id"]}
    assert all(c.session["estimated_num_total"] == n for c in calls)
    assert len(fake.members(report.audience_id or "")) == n
    assert (await audiences.state(None, CART["name"])).size == n


async def test_retries_then_succeeds(stores: Any, fake: FakeAudiences, graph: GraphClient) -> None:
    box, audiences = stores
    now = time.time()
    await box.add([event("AddToCart", "fb.1.1.a", at=now - DAY, em="a@example.com")])
    fake.fail_next(1, status=500, code=2, is_transient=True)
    fake.fail_next(1, status=400, code=80003)  # throttled (custom audience use case)
    (target,) = targets(settings(CART))
    report = await AudienceSync(audiences, graph, POLICY).sync(target, now=now)
    assert report.error is None
    assert fake.requests == 4  # create failed twice, then create and one POST
    assert fake.members("1001") == {meta_row(em="a@example.com")}


async def test_expired_token_parks_until_the_token_changes(
    stores: Any, fake: FakeAudiences, graph: GraphClient
) -> None:
    box, audiences = stores
    now = time.time()
    await box.add([event("AddToCart", "fb.1.1.a", at=now - DAY, em="a@example.com")])
    (stale,) = targets(settings(CART, audiences_access_token="EAAB-expired"))
    sync = AudienceSync(audiences, graph, POLICY)
    report = await sync.sync(stale, now=now)
    assert report.parked and report.audience_id is None
    assert fake.requests == 1
    state = await audiences.state(None, CART["name"])
    assert state.blocked_token is not None and "access token" in (state.last_error or "")
    # Same token: no call at all.
    again = await sync.sync(stale, now=now)
    assert again.parked and fake.requests == 1
    # A new token: the audience syncs.
    (fresh,) = targets(settings(CART))
    done = await sync.sync(fresh, now=now)
    assert not done.parked and done.error is None
    assert fake.members("1001") == {meta_row(em="a@example.com")}
    assert (await audiences.state(None, CART["name"])).blocked_token is None


async def test_dry_run_calls_nothing_and_records(
    stores: Any, fake: FakeAudiences, graph: GraphClient
) -> None:
    box, audiences = stores
    now = time.time()
    await box.add([event("AddToCart", "fb.1.1.a", at=now - DAY, em="a@example.com")])
    (target,) = targets(settings(CART))
    report = await AudienceSync(audiences, graph, POLICY, dry_run=True).sync(target, now=now)
    assert report.dry_run and report.added == [meta_row(em="a@example.com")]
    assert fake.requests == 0
    state = await audiences.state(None, CART["name"])
    assert state.last_result == {"dry_run": True, "added": 1, "removed": 0}
    assert await audiences.sent_rows(None, CART["name"]) == {}


async def test_sites_keep_their_audiences_apart(stores: Any) -> None:
    box, audiences = stores
    now = time.time()
    await box.add(
        [
            event("AddToCart", "fb.1.1.a", at=now - DAY, site="shop", em="a@example.com"),
            event("AddToCart", "fb.1.1.b", at=now - DAY, site="blog", em="b@example.com"),
        ]
    )
    config = settings(
        CART,
        sites=[
            {"name": "shop", "hosts": ["shop.example"], "upstream": "http://127.0.0.1:1"},
            {"name": "blog", "hosts": ["blog.example"], "upstream": "http://127.0.0.1:1"},
        ],
    )
    shop = targets(config, site="shop")
    assert [t.site for t in shop] == ["shop"]
    assert await members(audiences, shop[0], now) == {meta_row(em="a@example.com")}


async def test_one_process_holds_the_sync_lease(stores: Any) -> None:
    _, audiences = stores
    now = time.time()
    assert await audiences.claim("a", lease=60, now=now)
    assert not await audiences.claim("b", lease=60, now=now + 1)
    assert await audiences.claim("a", lease=60, now=now + 2)  # renewal
    assert await audiences.claim("b", lease=60, now=now + 120)  # a's ran out
    (target,) = targets(settings(CART))
    syncer = AudienceSyncer(AudienceSync(audiences, None, POLICY), [target], interval=60)
    assert not await syncer.run_once()  # b holds it
    await audiences.release("b")
    assert await syncer.run_once() and syncer.runs == 1


async def test_forget_takes_a_person_out_at_the_next_sync(
    stores: Any, fake: FakeAudiences, graph: GraphClient
) -> None:
    box, audiences = stores
    now = time.time()
    await box.add(
        [
            event("AddToCart", "fb.1.1.a", at=now - DAY, em="a@example.com"),
            event("AddToCart", "fb.1.1.b", at=now - DAY, em="b@example.com"),
        ]
    )
    (target,) = targets(settings(CART))
    sync = AudienceSync(audiences, graph, POLICY)
    await sync.sync(target, now=now)
    assert len(fake.members("1001")) == 2
    # Her events stay (delivered rows are kept for `retention`), her profile goes.
    await box.forget(Person.of(email=["A@example.com"]), KEY)
    report = await sync.sync(target, now=now)
    assert report.removed == [meta_row(em="a@example.com")] and report.added == []
    assert fake.users_calls()[-1].method == "DELETE"
    assert fake.members("1001") == {meta_row(em="b@example.com")}


async def test_a_refused_upload_keeps_the_audience_and_is_sent_again(
    stores: Any, fake: FakeAudiences, graph: GraphClient
) -> None:
    box, audiences = stores
    now = time.time()
    await box.add([event("AddToCart", "fb.1.1.a", at=now - DAY, em="a@example.com")])
    (target,) = targets(settings(CART))
    sync = AudienceSync(audiences, graph, POLICY)
    # The audience is created, then its upload refused (invalid parameter: not retried).
    fake.fail_next(1, status=400, code=100, users_only=True)
    failed = await sync.sync(target, now=now)
    assert failed.error == "fake failure" and not failed.parked
    assert failed.audience_id == "1001" and fake.members("1001") == set()
    assert failed.added == [] and failed.removed == []  # nothing Meta confirmed
    state = await audiences.state(None, CART["name"])
    assert state.audience_id == "1001" and state.last_error == "fake failure"
    assert state.size == 0 and state.synced_at is None
    done = await sync.sync(target, now=now)
    assert done.error is None and len(fake.creates) == 1
    assert fake.members("1001") == {meta_row(em="a@example.com")}
    assert (await audiences.state(None, CART["name"])).last_error is None
