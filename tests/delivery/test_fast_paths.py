"""Issue 14's fast paths on the SQLite store give what the general paths give."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.delivery import completion, profiles
from gateway.delivery.insightfacts import InsightPolicy, visitor_of
from gateway.delivery.profiles import ProfilePolicy
from gateway.delivery.schema import connect
from gateway.delivery.visitcache import Seen

KEY = bytes(range(32))
OTHER = bytes(range(1, 33))


def _general(items: list[tuple[str, dict[str, list[str]]]]) -> dict[str, dict[str, list[str]]]:
    """The union `learn` writes, computed the general way (every item merged in turn)."""
    merged: dict[str, dict[str, list[str]]] = {}
    for key_hash, ids in items:
        profile = merged.setdefault(key_hash, {})
        for name, values in ids.items():
            have = profile.setdefault(name, [])
            have += [v for v in values if v not in have][: profiles.MAX_VALUES - len(have)]
    return merged


async def test_learn_writes_the_same_profiles_as_the_general_union(tmp_path: Path) -> None:
    long = [f"{i:064x}" for i in range(8)]  # over the bound
    shared = {"em": ["a" * 64], "ph": ["b" * 64]}  # one event's ids under two profile keys
    items = [
        ("k1", {"em": long, "fn": []}),
        ("k2", shared),
        ("k3", shared),
        ("k2", {"em": ["c" * 64, "a" * 64], "ct": ["d" * 64]}),  # extends k2 only
        ("k4", {"em": ["e" * 64, "e" * 64]}),
    ]
    expected = _general([(k, {n: list(v) for n, v in ids.items()}) for k, ids in items])
    conn = await connect(tmp_path / "o.db")
    await profiles.register(conn)
    try:
        assert await profiles.learn(conn, items, ttl=60, now=1000.0) == 4
        async with conn.execute("SELECT key_hash, ids FROM profiles ORDER BY key_hash") as cur:
            stored = {k: json.loads(ids) for k, ids in await cur.fetchall()}
    finally:
        await conn.close()
    assert stored == expected
    assert stored["k3"] == {"em": ["a" * 64], "ph": ["b" * 64]}  # k2's growth is not k3's
    assert len(stored["k1"]["em"]) == profiles.MAX_VALUES
    assert shared == {"em": ["a" * 64], "ph": ["b" * 64]}  # the caller's lists untouched


def test_primed_visitors_are_the_hashed_ones() -> None:
    policy = ProfilePolicy.from_key(KEY, ttl=60, max_profiles=10)
    fbps = ["fb.1.1.1", None, "fb.1.1.2", ""]
    keys = [
        profiles.visitor_keys(policy, {"fbp": "fb.1.1.1"}, (), "alpha"),
        [],
        profiles.visitor_keys(policy, {"fbp": "fb.1.1.2"}, (("order", "o-1"),)),
        [],
    ]
    primed = InsightPolicy.from_key(KEY, visit_timeout=1800, retention=86400)
    primed.prime(policy, fbps, keys)
    assert set(primed.memo) == {"fb.1.1.1", "fb.1.1.2"}
    hashed = InsightPolicy.from_key(KEY, visit_timeout=1800, retention=86400)
    for fbp in ("fb.1.1.1", "fb.1.1.2"):
        assert primed.visitor(fbp) == hashed.visitor(fbp)
        assert primed.visitor(fbp) == visitor_of(policy.key_hash("fbp", fbp))


def test_no_priming_under_another_key() -> None:
    policy = ProfilePolicy.from_key(OTHER, ttl=60, max_profiles=10)
    insight = InsightPolicy.from_key(KEY, visit_timeout=1800, retention=86400)
    insight.prime(policy, ["fb.1.1.1"], [profiles.visitor_keys(policy, {"fbp": "fb.1.1.1"})])
    assert insight.memo == {}


async def test_lookup_newer_skips_only_profiles_not_updated_since(tmp_path: Path) -> None:
    conn = await connect(tmp_path / "o.db")
    await profiles.register(conn)
    try:
        await profiles.learn(conn, [("old", {"em": ["a" * 64]})], ttl=60, now=1000.0)
        await profiles.learn(conn, [("new", {"em": ["b" * 64]})], ttl=60, now=1010.0)
        everything = await profiles.lookup(conn, ["old", "new"], now=1020.0)
        assert set(everything) == {"old", "new"}
        newer = {"old": 1000.0, "new": 1005.0}
        assert await profiles.lookup(conn, ["old", "new"], now=1020.0, newer=newer) == {
            "new": everything["new"]
        }
        # A key without a time is read as before.
        assert set(await profiles.lookup(conn, ["old"], now=1020.0, newer={"x": 0.0})) == {"old"}
    finally:
        await conn.close()


def test_unchanged_since_keeps_keys_a_row_must_compare() -> None:
    rows: list[tuple[str | None, float | None]] = [
        ("k1", 10.0),
        ("k1", 5.0),
        ("k2", 7.0),
        ("k2", None),
        ("k3,~l", 3.0),
    ]
    assert profiles.unchanged_since(rows) == {"k1": 5.0, "k3": 3.0, "~l": 3.0}
    # A row stored with profiles off is found by its fbp later: nothing is filtered.
    assert profiles.unchanged_since([*rows, (None, None)]) is None


async def test_a_claim_without_blocked_pixels_does_not_walk_the_pending_rows(
    tmp_path: Path,
) -> None:
    from gateway.delivery import rows as rows_sql

    conn = await connect(tmp_path / "o.db")
    statements: list[str] = []
    try:
        await conn.set_trace_callback(statements.append)
        await rows_sql.claim(conn, "me", limit=10, lease=60, now=1000.0)
        assert not [s for s in statements if "SET state='blocked'" in s]
        await conn.execute("INSERT INTO blocked_pixels VALUES ('p', 'f', 'r', NULL, 0)")
        await rows_sql.claim(conn, "me", limit=10, lease=60, now=1000.0)
        assert [s for s in statements if "SET state='blocked'" in s]
    finally:
        await conn.close()


async def test_reads_of_each_group_commit_take_one_trip_to_the_connections_thread(
    tmp_path: Path,
) -> None:
    # Each trip is a queue hand-over, a thread wake-up and a loop wake-up (~40 us of CPU on
    # a small machine): `async with execute() as cur: await cur.fetchall()` took three.
    from gateway.delivery import insights
    from gateway.delivery import rows as rows_sql
    from gateway.delivery.outbox import Outbox
    from gateway.delivery.seal import Sealer

    outbox = await Outbox.open(tmp_path / "o.db", Sealer(KEY))
    conn = outbox._conn
    real = conn._execute
    trips = 0

    async def counted(fn: Any, *args: Any, **kwargs: Any) -> Any:
        nonlocal trips
        trips += 1
        return await real(fn, *args, **kwargs)

    conn._execute = counted  # type: ignore[method-assign]
    try:
        await rows_sql.claim(conn, "me", limit=10, lease=60, now=1000.0)
        assert trips == 3  # leases back, blocked pixels, the claim itself
        trips = 0
        assert await insights._seen(conn, [("", "v1")]) == {("", "v1"): Seen(None, None)}
        assert trips == 1
        trips = 0
        assert await profiles.lookup(conn, ["k1"], now=1000.0) == {}
        assert trips == 1
        trips = 0
        assert await outbox.next_due() is None
        assert trips == 1
    finally:
        conn._execute = real  # type: ignore[method-assign]
        await outbox.close()


def test_a_repeated_landing_page_is_classified_once_per_set_of_rules() -> None:
    from gateway.delivery.insightvisits import PageSeen
    from gateway.pipeline.channelgroups import ChannelRules
    from gateway.pipeline.channels import visit_source

    url, referrer, own = (
        "https://shop.example/p/1?utm_source=news",
        None,
        frozenset({"shop.example"}),
    )
    rules = ChannelRules()

    def seen(rules: ChannelRules | None) -> PageSeen:
        return PageSeen("", "v", 1.0, url, referrer, own, rules)

    first, again, other = seen(rules).source, seen(rules).source, seen(ChannelRules()).source
    assert first is again  # the same page, the same rules: worked out once
    assert other is not first  # a reload's rules never meet an old answer
    assert first == other == visit_source(url=url, referrer=referrer, own_hosts=own, rules=rules)
    assert (first.source, first.landing_path) == ("news", "/p/1")


# -- the claim's completion of rows under one fbp key, in SQL -------------------------------

_NOW = 100.0
_IDS = st.dictionaries(
    st.sampled_from(["em", "ph", "external_id", "ct"]),
    st.lists(st.sampled_from(["a" * 64, "b" * 64, "c" * 64]), min_size=1, max_size=2),
    max_size=3,
)
_PROFILES = st.dictionaries(
    st.sampled_from(["k0", "k1", "k2"]),
    st.tuples(_IDS, st.sampled_from([10.0, 20.0, 30.0]), st.sampled_from([50.0, 200.0])),
)
_ROWS = st.lists(
    st.tuples(
        st.sampled_from(["k0", "k1", "k2", "k3"]),  # k3: no profile at all
        st.sampled_from([None, 10.0, 20.0, 30.0]),  # profile_seen
        _IDS,  # the identifiers the event carries
        st.booleans(),  # opt_out
    ),
    min_size=1,
    max_size=8,
)


@settings(max_examples=60, deadline=None)
@given(stored=_PROFILES, rows=_ROWS)
async def test_changed_completes_as_the_general_lookup_does(
    stored: dict[str, tuple[dict[str, list[str]], float, float]],
    rows: list[tuple[str, float | None, dict[str, list[str]], bool]],
) -> None:
    policy = ProfilePolicy.from_key(KEY, ttl=60, max_profiles=10)
    events: dict[int, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        conn = await connect(Path(tmp) / "o.db")
        try:
            await conn.executemany(
                "INSERT INTO profiles (key_hash, ids, updated_at, expires_at) VALUES (?,?,?,?)",
                [(k, json.dumps(ids), at, until) for k, (ids, at, until) in stored.items()],
            )
            for n, (key, seen, ids, opt_out) in enumerate(rows, start=1):
                user_data: dict[str, Any] = {k: v[0] if len(v) == 1 else v for k, v in ids.items()}
                events[n] = {"event_name": "Purchase", "user_data": user_data}
                if opt_out:
                    events[n]["opt_out"] = True
                await conn.execute(
                    "INSERT INTO events (id, pixel_id, event_name, event_id, event_time, source, "
                    "payload, next_attempt_at, created_at, profile_keys, profile_seen) "
                    "VALUES (?, 'p', 'Purchase', ?, 1, 'events', ?, 0, 0, ?, ?)",
                    (n, f"e{n}", json.dumps(events[n]), key, seen),
                )
            newer = profiles.unchanged_since([(key, seen) for key, seen, _, _ in rows])

            async def lookup(wanted: list[str]) -> dict[str, profiles.Dated]:
                return await profiles.lookup(conn, wanted, now=_NOW, newer=newer)

            general = await completion.completions(
                lookup,
                {n: dict(e) for n, e in events.items()},
                policy,
                {n: row[0] for n, row in enumerate(rows, start=1)},
                {n: row[1] for n, row in enumerate(rows, start=1)},
            )
            assert all(profiles.plain_key(row[0]) for row in rows)
            hits = await profiles.changed(conn, list(events), now=_NOW)
        finally:
            await conn.close()
    assert completion.completed({n: dict(e) for n, e in events.items()}, hits) == general


@settings(max_examples=30, deadline=None)
@given(
    expires=st.lists(st.integers(0, 1000), unique=True, max_size=30),
    max_profiles=st.integers(1, 40),
)
async def test_purge_keeps_what_the_offset_walk_kept(expires: list[int], max_profiles: int) -> None:
    now = 100.0  # profiles expiring at or before it go first
    with tempfile.TemporaryDirectory() as tmp:
        conn = await connect(Path(tmp) / "o.db")
        statements: list[str] = []
        try:
            await conn.executemany(
                "INSERT INTO profiles (key_hash, ids, updated_at, expires_at) VALUES (?,'{}',0,?)",
                [(f"k{at}", float(at)) for at in expires],
            )
            await conn.set_trace_callback(statements.append)
            deleted = await profiles.purge(conn, max_profiles=max_profiles, now=now)
            async with conn.execute("SELECT key_hash FROM profiles") as cur:
                kept = {str(r[0]) for r in await cur.fetchall()}
        finally:
            await conn.close()
    live = sorted((at for at in expires if at > now), reverse=True)
    assert kept == {f"k{at}" for at in live[:max_profiles]}  # the newest, as the walk kept
    assert deleted == len(expires) - len(kept)
    assert not [s for s in statements if "OFFSET" in s]
