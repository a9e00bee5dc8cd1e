"""Erasure on a real buffer (and on PostgreSQL): unsent events, visitor profiles and stitched
visits."""

from __future__ import annotations

import asyncio
import hashlib
import json
import sqlite3
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from gateway.cli import main
from gateway.delivery.forget import Person, PersonError
from gateway.delivery.outbox import Outbox
from gateway.delivery.postgres.outbox import PgOutbox
from gateway.delivery.postgres.stitches import PgStitches
from gateway.delivery.profiles import ProfilePolicy
from gateway.delivery.seal import Sealer
from gateway.delivery.stitch import Stitches, VisitorContext
from gateway.delivery.store import OutboxStore, StitchStore
from gateway.edge.stitching import keep
from gateway.models import NewEvent
from tests.delivery.stores import Opener, fetch

KEY = bytes(range(32))
FBP = "fb.1.1700000000000.777"
JANE = hashlib.sha256(b"jane@example.com").hexdigest()
OTHER = hashlib.sha256(b"other@example.com").hexdigest()


def event(event_id: str, hashed: dict[str, Any], fbp: str, name: str = "Lead") -> NewEvent:
    return NewEvent(
        pixel_id="111",
        event_name=name,
        event_id=event_id,
        event_time=int(time.time()),
        payload={"event_name": name, "event_id": event_id, "user_data": hashed},
        clear={"client_user_agent": "UA/1", "fbp": fbp, "fbc": "fb.1.1.click"},
        source="rule",
        hold=0,
    )


async def fill(path: Path) -> None:
    box = await Outbox.open(
        path, Sealer(KEY), profiles=ProfilePolicy.from_key(KEY, ttl=3600, max_profiles=100)
    )
    stitches = await Stitches.open(path, Sealer(KEY), key=KEY, purge_every=0)
    try:
        await box.add(
            [
                event("jane-1", {"em": JANE, "ph": "1" * 64}, FBP),
                event("other-1", {"em": OTHER}, "fb.1.1.other"),
            ]
        )
        visit = VisitorContext({"fbp": FBP}, "https://shop.example/", {}, None, None, time.time())
        await stitches.put({"em": JANE}, visit, ttl=3600)
        await stitches.put({"order_id": "A1"}, visit, ttl=3600)
        other = VisitorContext({"fbp": "fb.1.1.other"}, None, {}, None, None, time.time())
        await stitches.put({"order_id": "B2"}, other, ttl=3600)
    finally:
        await stitches.close()
        await box.close()


def table(path: Path, sql: str) -> list[Any]:
    with sqlite3.connect(path) as conn:
        return list(conn.execute(sql))


def test_a_person_is_normalized_like_event_fields() -> None:
    person = Person.of(email=["  Jane@Example.com "])
    assert person.hashed == {"em": frozenset({JANE})}
    with pytest.raises(PersonError, match="name the person"):
        Person.of()


async def test_forget_by_email_removes_everything_of_that_person(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "o.db"
    (path.parent / "o.db.key").write_text(KEY.hex())
    await fill(path)
    assert len(table(path, "SELECT * FROM profiles")) == 2
    code = await asyncio.to_thread(
        main, ["forget", "--email", "Jane@Example.com", "--buffer", str(path), "--json"]
    )
    assert code == 0
    # Her event, her profile (found by the email), her two stitched visits (under the email,
    # and under an order id, found by the fbp her event carried).
    assert json.loads(capsys.readouterr().out) == {
        "events": 1,
        "profiles": 1,
        "stitches": 2,
        "touchpoints": 0,
    }
    payloads = dict(table(path, "SELECT event_id, payload FROM events"))
    assert json.loads(payloads["jane-1"])["user_data"] == {}
    assert json.loads(payloads["other-1"])["user_data"] == {"em": OTHER}
    keys = dict(table(path, "SELECT event_id, match_keys FROM events"))
    assert keys["jane-1"] == "client_user_agent"
    assert len(table(path, "SELECT * FROM profiles")) == 1
    assert len(table(path, "SELECT * FROM stitches")) == 1
    # Her later events get nothing from a profile.
    box = await Outbox.open(
        path, Sealer(KEY), profiles=ProfilePolicy.from_key(KEY, ttl=3600, max_profiles=100)
    )
    try:
        await box.add([event("jane-2", {}, FBP, name="PageView")])
        claimed = {c.event_id: c for c in await box.claim("w", limit=10, lease=30)}
        assert "em" not in claimed["jane-2"].event["user_data"]
        assert "fbp" not in claimed["jane-1"].event["user_data"]
    finally:
        await box.close()


async def test_forget_by_fbp_and_plain_output(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "o.db"
    (path.parent / "o.db.key").write_text(KEY.hex())
    await fill(path)
    assert await asyncio.to_thread(main, ["forget", "--fbp", FBP, "--buffer", str(path)]) == 0
    out = capsys.readouterr().out
    assert "1 unsent event(s), 1 visitor profile(s), 2 stitched visit(s)" in out
    assert await asyncio.to_thread(main, ["forget", "--buffer", str(path)]) != 0


async def test_forget_with_site_scrubs_that_sites_events_only(
    store_location: Path | str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CAPIGW_ENCRYPTION_KEY", KEY.hex())
    box: OutboxStore
    if isinstance(store_location, Path):
        box = await Outbox.open(store_location, Sealer(KEY))
    else:
        box = await PgOutbox.open(store_location, Sealer(KEY))
    try:
        await box.add(
            [
                replace(event("jane-a", {"em": JANE}, FBP), site="alpha"),
                replace(event("jane-b", {"em": JANE}, FBP), site="beta"),
            ]
        )
    finally:
        await box.close()
    config = tmp_path / "sites.toml"
    config.write_text(
        "".join(
            f'[[sites]]\nname = "{name}"\nhosts = ["{name}.example"]\n'
            'upstream = "http://127.0.0.1:9"\npixel_id = [111111]\n'
            for name in ("alpha", "beta")
        )
    )
    argv = ["forget", "--email", "jane@example.com", "--buffer", str(store_location), "--json"]
    code = await asyncio.to_thread(main, [*argv, "--config", str(config), "--site", "beta"])
    assert code == 0
    assert json.loads(capsys.readouterr().out)["events"] == 1
    box = await (
        Outbox.open(store_location, Sealer(KEY))
        if isinstance(store_location, Path)
        else PgOutbox.open(store_location, Sealer(KEY))
    )
    try:
        rows = await fetch(box, "SELECT event_id, site, payload FROM events ORDER BY event_id")
    finally:
        await box.close()
    assert [(r[0], r[1]) for r in rows] == [("jane-a", "alpha"), ("jane-b", "beta")]
    payloads = {str(r[0]): json.loads(str(r[2])) for r in rows}
    assert payloads["jane-a"]["user_data"] == {"em": JANE}
    assert payloads["jane-b"]["user_data"] == {}
    code = await asyncio.to_thread(main, [*argv, "--config", str(config), "--site", "gamma"])
    assert code != 0
    assert "--site: no site is named 'gamma'" in capsys.readouterr().err


async def test_forget_erases_the_person_on_either_store(open_store: Opener) -> None:
    box = await open_store(profiles=ProfilePolicy.from_key(KEY, ttl=3600, max_profiles=100))
    stitches: StitchStore
    if isinstance(box, PgOutbox):
        stitches = PgStitches(box.db, Sealer(KEY), key=KEY, purge_every=0)
    else:
        assert isinstance(box, Outbox)
        stitches = await Stitches.open(box.path, Sealer(KEY), key=KEY, purge_every=0)
    try:
        await box.add(
            [
                event("jane-1", {"em": JANE, "ph": "1" * 64}, FBP),
                event("other-1", {"em": OTHER}, "fb.1.1.other"),
            ]
        )
        visit = VisitorContext({"fbp": FBP}, "https://shop.example/", {}, None, None, time.time())
        await stitches.put({"em": JANE}, visit, ttl=3600)
        await stitches.put({"order_id": "A1"}, visit, ttl=3600)
        other = VisitorContext({"fbp": "fb.1.1.other"}, None, {}, None, None, time.time())
        await stitches.put({"order_id": "B2"}, other, ttl=3600)
        counts = await box.forget(Person.of(email=["Jane@Example.com"]), KEY)
        assert counts == {"events": 1, "profiles": 1, "stitches": 2, "touchpoints": 0}
        assert await stitches.get("order_id", "A1") is None
        assert await stitches.get("order_id", "B2") is not None
        await box.add([event("jane-2", {}, FBP, name="PageView")])
        claimed = {c.event_id: c for c in await box.claim("w", limit=10, lease=30)}
        assert "em" not in claimed["jane-2"].event["user_data"]
        assert "fbp" not in claimed["jane-1"].event["user_data"]
        assert claimed["jane-1"].event["user_data"] == {"client_user_agent": "UA/1"}
        assert claimed["other-1"].event["user_data"]["em"] == OTHER
    finally:
        await stitches.close()


async def test_profiles_and_stitches_are_per_site_and_forget_site_erases_that_sites_only(
    open_store: Opener,
) -> None:
    box = await open_store(profiles=ProfilePolicy.from_key(KEY, ttl=3600, max_profiles=100))
    stitches: StitchStore
    if isinstance(box, PgOutbox):
        stitches = PgStitches(box.db, Sealer(KEY), key=KEY, purge_every=0)
    else:
        assert isinstance(box, Outbox)
        stitches = await Stitches.open(box.path, Sealer(KEY), key=KEY, purge_every=0)
    try:
        # One visitor (one fbp, one email) on two sites of one gateway, and a stranger.
        await box.add(
            [
                replace(event("s-a1", {"em": JANE}, FBP), site="alpha"),
                replace(event("s-b1", {"em": JANE}, FBP), site="beta"),
                replace(event("s-o1", {"em": OTHER}, "fb.1.1.other"), site="beta"),
            ]
        )
        visit = VisitorContext({"fbp": FBP}, "https://shop.example/", {}, None, None, time.time())
        for site in ("alpha", "beta"):
            await keep(stitches, {"em": JANE, "order_id": "A1"}, visit, 3600, site)
        # Site beta's webhook finds its own visit only: alpha's under the same order id
        # is not beta's to read.
        await keep(stitches, {"order_id": "ONLY-A"}, visit, 3600, "alpha")
        assert await stitches.get("order_id@beta", "ONLY-A") is None
        assert await stitches.get("order_id@alpha", "ONLY-A") is not None
        keys = sorted(
            str(r[0]).split(":")[0] for r in await fetch(box, "SELECT key_hash FROM profiles")
        )
        assert keys == ["alpha", "beta", "beta"]

        counts = await box.forget(Person.of(email=["jane@example.com"]), KEY, sites={"beta"})
        assert counts == {"events": 1, "profiles": 1, "stitches": 2, "touchpoints": 0}, counts
        assert await stitches.get("order_id@beta", "A1") is None
        assert await stitches.get("em@beta", JANE) is None
        assert await stitches.get("order_id@alpha", "A1") is not None
        assert await stitches.get("em@alpha", JANE) is not None
        # alpha's profile still completes alpha's next event of the visitor; beta's is gone.
        await box.add(
            [
                replace(event("s-a2", {}, FBP, name="PageView"), site="alpha"),
                replace(event("s-b2", {}, FBP, name="PageView"), site="beta"),
            ]
        )
        claimed = {c.event_id: c for c in await box.claim("w", limit=10, lease=30)}
        assert claimed["s-a2"].event["user_data"].get("em") == JANE
        assert "em" not in claimed["s-b2"].event["user_data"]
        assert claimed["s-o1"].event["user_data"]["em"] == OTHER

        counts = await box.forget(Person.of(email=["jane@example.com"]), KEY)
        assert counts["profiles"] == 1 and counts["stitches"] == 3, counts
        assert await stitches.get("em@alpha", JANE) is None
        left = [str(r[0]).split(":")[0] for r in await fetch(box, "SELECT key_hash FROM profiles")]
        assert left == ["beta"]  # the stranger's
    finally:
        await stitches.close()
