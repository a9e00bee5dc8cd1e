"""Event assembly and visitor profiles in the outbox, on both backends (SQLite, PostgreSQL)."""

from __future__ import annotations

import json
import sqlite3
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from gateway.delivery.forget import Person
from gateway.delivery.outbox import Outbox
from gateway.delivery.profiles import ProfilePolicy
from gateway.delivery.seal import Sealer
from gateway.delivery.store import OutboxStore
from gateway.models import NewEvent
from tests.delivery.stores import Opener, event_rows, fetch

KEY = bytes(range(32))
EM, PH = "e" * 64, "f" * 64
FBP = "fb.1.1700000000000.42"


def copy(
    source: str,
    *,
    event_id: str = "purchase-1",
    name: str = "Purchase",
    hashed: dict[str, Any] | None = None,
    custom: dict[str, Any] | None = None,
    clear: dict[str, Any] | None = None,
    rule: str | None = None,
    hold: float | None = None,
    **payload: Any,
) -> NewEvent:
    body: dict[str, Any] = {
        "event_name": name,
        "event_id": event_id,
        "event_time": int(time.time()),
        "action_source": "website",
        "user_data": hashed or {},
        **payload,
    }
    if custom:
        body["custom_data"] = custom
    return NewEvent(
        pixel_id="111",
        event_name=name,
        event_id=event_id,
        event_time=body["event_time"],
        payload=body,
        clear=clear if clear is not None else {"client_user_agent": "UA/1"},
        source=source,
        rule=rule,
        hold=hold,
    )


def rows(path: Path) -> list[sqlite3.Row]:
    with sqlite3.connect(path) as conn:
        conn.row_factory = sqlite3.Row
        return list(conn.execute("SELECT * FROM events ORDER BY id"))


async def profile_count(box: OutboxStore) -> int:
    return int(str((await fetch(box, "SELECT COUNT(*) FROM profiles"))[0][0]))


async def link_count(box: OutboxStore) -> int:
    return int(str((await fetch(box, "SELECT COUNT(*) FROM profile_links"))[0][0]))


@pytest.fixture
async def box(open_store: Opener) -> OutboxStore:
    policy = ProfilePolicy.from_key(KEY, ttl=3600, max_profiles=100)
    return await open_store(group_commit_ms=2, assembly_hold=60, profiles=policy)


async def test_a_webhook_copy_merges_into_the_pending_page_event(box: OutboxStore) -> None:
    page = copy(
        "rule",
        rule="purchase",
        custom={"value": 10, "currency": "EUR"},
        clear={"client_ip_address": "203.0.113.7", "client_user_agent": "UA/1", "fbp": FBP},
    )
    hook = copy(
        "webhook",
        rule="stripe-purchase",
        hashed={"em": EM, "ph": PH},
        custom={"value": 12.5, "currency": "EUR"},
        clear={"client_ip_address": "198.51.100.9"},
        hold=0,
    )
    assert await box.add([page]) == ["new"]
    assert await box.add([hook]) == ["merged"]
    assert (box.merged, box.late) == (1, 0)
    (row,) = await event_rows(box)
    assert json.loads(row["sources"]) == ["page:purchase", "webhook:stripe-purchase"]
    assert row["received_keys"] == "client_ip_address,client_user_agent,fbp"
    assert set(row["match_keys"].split(",")) == {
        "em",
        "ph",
        "client_ip_address",
        "client_user_agent",
        "fbp",
    }
    # The webhook asked for no hold: once it is in, the event is due.
    (claimed,) = await box.claim("w", limit=10, lease=30)
    assert claimed.event["user_data"] == {
        "em": EM,
        "ph": PH,
        "client_ip_address": "203.0.113.7",
        "client_user_agent": "UA/1",
        "fbp": FBP,
    }
    assert claimed.event["custom_data"] == {"value": 12.5, "currency": "EUR"}


async def test_events_are_held_for_assembly_and_the_sender_claims_what_is_due(
    box: OutboxStore,
) -> None:
    await box.add([copy("api"), copy("proxy", event_id="pv", name="PageView")])
    now = time.time()
    # The PageView (no hold of its own) is due; the Purchase waits assembly_hold.
    (view,) = await box.claim("w", limit=10, lease=30, now=now)
    assert view.event_name == "PageView"
    await box.mark_sent([view.id], "w", fbtrace_id="T")
    due = await box.next_due()
    assert due is not None and 59 < due - now <= 61
    assert await box.claim("w", limit=10, lease=30, now=now + 30) == []
    assert [c.event_id for c in await box.claim("w", limit=10, lease=30, now=now + 61)] == [
        "purchase-1"
    ]


async def test_a_copy_after_the_send_is_late_recorded_and_not_sent_again(box: OutboxStore) -> None:
    await box.add([copy("rule", rule="purchase", hold=0)])
    (claimed,) = await box.claim("w", limit=10, lease=30)
    # Being sent counts as sent: the copy cannot join it any more.
    hook = copy("webhook", rule="stripe", hashed={"em": EM}, custom={"value": 3, "currency": "EUR"})
    assert await box.add([hook]) == ["late"]
    await box.mark_sent([claimed.id], "w", fbtrace_id="T")
    assert await box.add([hook]) == ["late"]
    (row,) = await event_rows(box)
    assert row["state"] == "sent"
    late = json.loads(row["late"])
    assert late["copies"] == 2
    assert {"user_data.em", "custom_data.value", "custom_data.currency"} <= set(late["fields"])
    assert late["sources"] == ["webhook:stripe"]
    assert json.loads(row["payload"])["user_data"] == {}
    assert await box.claim("w", limit=10, lease=30) == []
    assert box.late == 2


async def test_copies_in_one_group_commit_merge_in_order(box: OutboxStore) -> None:
    outcomes = await box.add(
        [copy("rule", rule="p"), copy("webhook", rule="h", hashed={"em": EM}), copy("collect")]
    )
    assert outcomes == ["new", "merged", "merged"]
    (row,) = await event_rows(box)
    assert json.loads(row["sources"]) == ["page:p", "webhook:h", "browser"]
    assert row["twin"] == 1


async def test_profiles_learn_from_consenting_events_and_complete_later_ones(
    box: OutboxStore,
) -> None:
    visitor = {"client_user_agent": "UA/1", "fbp": FBP}
    checkout = copy(
        "rule", event_id="c1", name="InitiateCheckout", hashed={"em": EM, "ph": PH}, clear=visitor
    )
    await box.add([checkout])
    later = [
        copy("proxy", event_id="pv2", name="PageView", clear=visitor),
        copy("rule", event_id="p2", hashed={"em": "0" * 64}, clear=visitor, hold=0),
        copy("proxy", event_id="pv3", name="PageView", clear={"fbp": "fb.1.1.other"}),
        copy("proxy", event_id="pv4", name="PageView", clear=visitor, opt_out=True),
    ]
    await box.add(later)
    claimed = {c.event_id: c for c in await box.claim("w", limit=10, lease=30)}
    # Both emails this visitor gave (checkout, then the second purchase) are in the profile.
    assert claimed["pv2"].event["user_data"]["em"] == [EM, "0" * 64]
    assert claimed["pv2"].event["user_data"]["ph"] == PH
    assert claimed["pv2"].profile_added == ("em", "ph")
    # Its own email stays; only what it lacks is added.
    assert claimed["p2"].event["user_data"]["em"] == "0" * 64
    assert claimed["p2"].profile_added == ("ph",)
    assert "em" not in claimed["pv3"].event["user_data"]
    assert "em" not in claimed["pv4"].event["user_data"]  # opted out: nothing added
    # What is sent is what the row records; it was received without it.
    by_id = {r["event_id"]: r for r in await event_rows(box)}
    assert "em" in by_id["pv2"]["match_keys"].split(",")
    assert "em" not in by_id["pv2"]["received_keys"].split(",")
    coverage = await box.match_key_coverage(since=0)
    assert coverage["PageView"]["keys"]["em"] == {"received": 0, "sent": 1}
    assert coverage["PageView"]["events"] == 3


async def test_nothing_is_learned_from_a_restricted_event(box: OutboxStore) -> None:
    visitor = {"client_user_agent": "UA/1", "fbp": FBP}
    await box.add(
        [
            copy("api", event_id="l1", hashed={"em": EM}, clear=visitor, opt_out=True),
            copy(
                "api",
                event_id="l2",
                hashed={"ph": PH},
                clear=visitor,
                data_processing_options=["LDU"],
            ),
        ]
    )
    await box.add([copy("proxy", event_id="pv", name="PageView", clear=visitor)])
    (pv,) = [c for c in await box.claim("w", limit=10, lease=30) if c.event_id == "pv"]
    assert pv.profile_added == ()
    assert await profile_count(box) == 0


async def test_profiles_off_with_ttl_zero_and_bounded_in_size(open_store: Opener) -> None:
    off = await open_store("off.db", profiles=ProfilePolicy.from_key(KEY, ttl=0, max_profiles=5))
    await off.add([copy("api", hashed={"em": EM}, clear={"fbp": FBP})])
    assert await profile_count(off) == 0
    small = await open_store(
        "small.db", profiles=ProfilePolicy.from_key(KEY, ttl=3600, max_profiles=5)
    )
    for i in range(12):
        await small.add([copy("api", event_id=f"e{i}", hashed={"em": EM}, clear={"fbp": f"v{i}"})])
    await small.expire_and_purge(retention=3600, dead_retention=3600)
    assert await profile_count(small) == 5
    # Only keyed hashes: no fbp value in the table.
    assert "v1" not in str(await fetch(small, "SELECT * FROM profiles"))


async def test_an_outbox_of_schema_3_is_migrated_with_its_rows(tmp_path: Path) -> None:
    from gateway.delivery import schema

    path = tmp_path / "old.db"
    with sqlite3.connect(path) as conn:
        for migration in schema.MIGRATIONS[:3]:
            conn.executescript(migration)
        conn.execute("PRAGMA user_version = 3")
        conn.execute(
            "INSERT INTO events (pixel_id, event_name, event_id, event_time, source, rule, "
            "payload, next_attempt_at, created_at, match_keys) VALUES "
            "('111','Purchase','purchase-1',?,'rule','purchase',?,0,?, 'fbp')",
            (int(time.time()), json.dumps(copy("rule").payload), time.time()),
        )
    box = await Outbox.open(path, Sealer(KEY))
    try:
        assert await box.add([copy("webhook", rule="h", hashed={"em": EM})]) == ["merged"]
        (row,) = rows(path)
        assert json.loads(row["sources"]) == ["page:purchase", "webhook:h"]
        assert row["received_keys"] == "fbp"
    finally:
        await box.close()


ORDER = (("order_id", "A-1001"),)


async def test_stitch_keys_lead_a_webhook_without_fbp_to_the_visitors_profile(
    box: OutboxStore,
) -> None:
    # The checkout page: the visitor's fbp, their email, and the order id as stitch key.
    visitor = {"client_user_agent": "UA/1", "fbp": FBP}
    checkout = copy("rule", event_id="c1", name="AddPaymentInfo", hashed={"em": EM}, clear=visitor)
    await box.add([replace(checkout, links=ORDER)])
    # A backend call for the same order whose visit was not found: no fbp, a phone number.
    backend = copy("api", event_id="b1", name="Lead", hashed={"ph": PH}, clear={})
    await box.add([replace(backend, links=ORDER)])
    # A later page view of the visitor: fbp only.
    await box.add([copy("proxy", event_id="pv", name="PageView", hold=0, clear=visitor)])
    # One profile (the visitor's, under their fbp); the order id leads to it.
    assert await profile_count(box) == 1
    assert await link_count(box) == 1
    claimed = {
        c.event_id: c for c in await box.claim("w", limit=10, lease=30, now=time.time() + 120)
    }
    # The backend's event found the profile by the order id: the email typed at checkout.
    assert claimed["b1"].event["user_data"]["em"] == EM
    assert claimed["b1"].profile_added == ("em",)
    # ... and fed it: the page view carries the phone the backend knew.
    assert claimed["pv"].event["user_data"]["ph"] == PH
    assert claimed["pv"].event["user_data"]["em"] == EM


async def test_a_stitch_key_without_a_linked_profile_learns_and_adds_nothing(
    box: OutboxStore,
) -> None:
    backend = copy("api", event_id="b2", name="Lead", hashed={"ph": PH}, clear={})
    other = copy("api", event_id="b3", name="Lead", hashed={}, clear={})
    await box.add([replace(backend, links=ORDER), replace(other, links=ORDER)])
    assert await profile_count(box) == 0
    claimed = {
        c.event_id: c for c in await box.claim("w", limit=10, lease=30, now=time.time() + 120)
    }
    assert "ph" not in claimed["b3"].event["user_data"]
    assert claimed["b3"].profile_added == ()


async def test_forget_by_email_cuts_the_stitch_links_of_the_profile(box: OutboxStore) -> None:
    visitor = {"client_user_agent": "UA/1", "fbp": FBP}
    checkout = copy("rule", event_id="c1", name="AddPaymentInfo", hashed={"em": EM}, clear=visitor)
    await box.add([replace(checkout, links=ORDER)])
    await box.forget(Person(hashed={"em": frozenset({EM})}), KEY)
    assert await profile_count(box) == 0
    assert await link_count(box) == 0
    backend = copy("api", event_id="b4", name="Lead", hashed={}, clear={})
    await box.add([replace(backend, links=ORDER)])
    claimed = {
        c.event_id: c for c in await box.claim("w", limit=10, lease=30, now=time.time() + 120)
    }
    assert "em" not in claimed["b4"].event["user_data"]


async def test_expired_stitch_links_are_purged_with_their_profiles(box: OutboxStore) -> None:
    visitor = {"client_user_agent": "UA/1", "fbp": FBP}
    checkout = copy("rule", event_id="c1", name="AddPaymentInfo", hashed={"em": EM}, clear=visitor)
    await box.add([replace(checkout, links=ORDER)])
    assert (await profile_count(box), await link_count(box)) == (1, 1)
    await box.expire_and_purge(retention=86400, dead_retention=86400, now=time.time() + 60)
    assert (await profile_count(box), await link_count(box)) == (1, 1)
    await box.expire_and_purge(retention=86400, dead_retention=86400, now=time.time() + 7200)
    assert (await profile_count(box), await link_count(box)) == (0, 0)


async def test_a_row_that_carried_its_whole_profile_still_gets_what_is_learned_later(
    box: OutboxStore,
) -> None:
    """Rows stored carrying all of their profile are compared at claim only if the profile
    changed since (SQLite's `profile_seen`): whatever changed, they must get it."""
    visitor = {"client_user_agent": "UA/1", "fbp": FBP}
    # The first event of a new visitor: it is its whole profile.
    await box.add([copy("api", event_id="a1", hashed={"em": EM}, clear=visitor)])
    # Same batch: two events of another visitor, each with one identifier; each lacks the
    # other's, which the profile learns in that same commit.
    other = {"client_user_agent": "UA/1", "fbp": "fb.1.1700000000000.7"}
    await box.add(
        [
            copy("api", event_id="b1", hashed={"em": EM}, clear=other),
            copy("api", event_id="b2", hashed={"ph": PH}, clear=other),
        ]
    )
    # A later commit adds a phone to the first visitor's profile.
    await box.add([copy("api", event_id="a2", hashed={"ph": PH}, clear=visitor)])
    # A PageView of a third visitor whose profile was learned earlier, and one of the first.
    await box.add([copy("proxy", event_id="pv", name="PageView", clear=visitor)])
    claimed = {
        c.event_id: c for c in await box.claim("w", limit=10, lease=30, now=time.time() + 120)
    }
    assert claimed["a1"].profile_added == ("ph",)
    assert claimed["a2"].profile_added == ("em",)
    assert claimed["b1"].profile_added == ("ph",)
    assert claimed["b2"].profile_added == ("em",)
    assert claimed["pv"].profile_added == ("em", "ph")


async def test_a_row_of_a_known_visitor_is_completed_with_what_the_profile_held(
    box: OutboxStore,
) -> None:
    visitor = {"client_user_agent": "UA/1", "fbp": FBP}
    await box.add([copy("api", event_id="c1", hashed={"em": EM, "ph": PH}, clear=visitor)])
    # Stored after the profile knew em and ph, carrying only em: ph comes from the profile
    # although the profile does not change after this row is stored.
    await box.add([copy("api", event_id="c2", hashed={"em": EM}, clear=visitor)])
    claimed = {
        c.event_id: c for c in await box.claim("w", limit=10, lease=30, now=time.time() + 120)
    }
    assert claimed["c1"].profile_added == ()
    assert claimed["c2"].profile_added == ("ph",)


async def test_a_late_copy_of_a_visitors_event_is_recorded_with_profiles_on(
    box: OutboxStore,
) -> None:
    visitor = {"client_user_agent": "UA/1", "fbp": FBP}
    await box.add([copy("api", event_id="s1", hashed={"em": EM}, clear=visitor, hold=0)])
    (row,) = await box.claim("w", limit=10, lease=30)
    await box.mark_sent([row.id], "w", fbtrace_id=None)
    # One batch: a copy of the sent event (late) beside a new event of the same visitor.
    outcomes = await box.add(
        [
            copy("api", event_id="s1", hashed={"em": EM, "ph": PH}, clear=visitor),
            copy("api", event_id="s2", hashed={"em": EM}, clear=visitor, hold=0),
        ]
    )
    assert outcomes == ["late", "new"]
    (s2,) = await box.claim("w", limit=10, lease=30)
    assert s2.event_id == "s2" and s2.profile_added == ()
