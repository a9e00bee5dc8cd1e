"""PostgreSQL's `capigw_profile_union` unites profiles exactly as SQLite's `union_ids`."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.delivery.postgres import rows
from gateway.delivery.postgres.outbox import PgOutbox
from gateway.delivery.profiles import union_ids
from gateway.delivery.seal import Sealer

if TYPE_CHECKING:
    from gateway.delivery.postgres.pool import Conn

KEY = bytes(range(32))

NAMES = st.sampled_from(["em", "ph", "external_id", "fn", "zp"])
VALUES = st.lists(
    st.sampled_from([c * 64 for c in "abcdefgh"]), min_size=1, max_size=6, unique=True
)
PROFILES = st.dictionaries(NAMES, VALUES, max_size=4).map(
    # A stored profile never holds more than 5 values per identifier.
    lambda p: {k: v[:5] for k, v in p.items()}
)


@pytest.fixture
async def box(postgres_store_dsn: str) -> AsyncIterator[PgOutbox]:
    box = await PgOutbox.open(postgres_store_dsn, Sealer(KEY))
    yield box
    await box.close()


async def sql_union(
    box: PgOutbox, stored: dict[str, list[str]], added: dict[str, list[str]]
) -> object:
    text = await box.db.fetchval(
        "SELECT capigw_profile_union($1::jsonb, $2::jsonb)::text",
        json.dumps(stored),
        json.dumps(added),
    )
    return json.loads(str(text))


async def test_known_values_first_then_new_ones_at_most_five(box: PgOutbox) -> None:
    stored = {"em": ["a", "b"], "ph": ["p"]}
    added = {"em": ["c", "a", "d", "e", "f"], "zp": ["z"]}
    assert await sql_union(box, stored, added) == {
        "em": ["a", "b", "c", "d", "e"],
        "ph": ["p"],
        "zp": ["z"],
    }
    assert await sql_union(box, {}, {"em": ["x"]}) == {"em": ["x"]}


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(stored=PROFILES, added=PROFILES)
async def test_it_agrees_with_the_python_union(
    box: PgOutbox, stored: dict[str, list[str]], added: dict[str, list[str]]
) -> None:
    expected = json.loads(union_ids(json.dumps(stored), json.dumps(added)))
    assert await sql_union(box, stored, added) == expected


@settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    batch=st.lists(
        st.tuples(st.sampled_from(["k1", "k2"]), PROFILES.filter(bool)), min_size=1, max_size=5
    )
)
async def test_a_batch_learns_what_united_items_one_by_one_would(
    box: PgOutbox, batch: list[tuple[str, dict[str, list[str]]]]
) -> None:
    """`rows.learn` unites a commit's items for one profile before its upsert: the stored
    profile is the `union_ids` of the items in order, JSON text included."""
    expected: dict[str, str] = {}
    for key_hash, ids in batch:
        expected[key_hash] = union_ids(expected.get(key_hash, "{}"), json.dumps(ids))

    async def work(conn: Conn) -> dict[str, str]:
        await conn.execute("DELETE FROM profiles")
        await rows.learn(conn, batch, ttl=60, now=time.time())
        found = await conn.fetch("SELECT key_hash, ids::text AS ids FROM profiles")
        return {r["key_hash"]: r["ids"] for r in found}

    stored = await box.db.run(work)
    assert {k: json.loads(v) for k, v in stored.items()} == {
        k: json.loads(v) for k, v in expected.items()
    }
