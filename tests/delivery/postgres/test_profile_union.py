"""PostgreSQL's `capigw_profile_union` unites profiles exactly as SQLite's `union_ids`."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.delivery.postgres.outbox import PgOutbox
from gateway.delivery.profiles import union_ids
from gateway.delivery.seal import Sealer

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
