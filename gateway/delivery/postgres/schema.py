"""The PostgreSQL store's schema, as numbered forward migrations (applied by `migrations`).

The tables are those of the SQLite store (gateway/delivery/schema.py) at its newest, event
assembly's columns and visitor profiles included, so one store interface fits both:
the same columns, names and states; times stay epoch seconds in `double precision` (the
store code passes `time.time()` floats both ways); JSON columns are `jsonb`, sealed clear
fields `bytea`. They live in the schema `capigw` (the pool's search_path), apart from any
application tables in the same database.

What PostgreSQL adds:
- partial indexes for the hot paths: claims (`FOR UPDATE SKIP LOCKED` over due pending
  rows in `next_attempt_at, id` order), expired leases, retention purges in batches;
- the merge key (pixel_id, event_name, event_id) is a unique constraint, the target of
  `INSERT ... ON CONFLICT (pixel_id, event_name, event_id) DO UPDATE`;
- `queue_counts`: rows per (event_name, state), kept by statement-level triggers in the
  writing transaction, so queue depth is a read of a few dozen rows rather than COUNT(*)
  over millions. Each backend adds to its own shard (`pg_backend_pid() % 64`, inserts,
  updates and deletes in ranges of their own since migration 10), so replicas writing at
  once do not queue behind one counter row; readers sum the shards.
"""

from __future__ import annotations

from dataclasses import dataclass

from gateway.delivery.postgres.inflight import V12
from gateway.delivery.postgres.leanindexes import V13
from gateway.delivery.postgres.payloadjson import V14
from gateway.delivery.postgres.queue_schema import count_triggers, v11

# Every state a row can be in; the same as the SQLite store's.
STATES = ("pending", "inflight", "sent", "sent-dry", "blocked", "dead")
COUNTER_SHARDS = 16
# Since migration 10: per kind of statement (see `_V10`).
COUNTER_SHARDS_V10 = 64


@dataclass(frozen=True, slots=True)
class Migration:
    """One forward step: its number, what it does, and its SQL (run in one transaction)."""

    version: int
    description: str
    sql: str


_V1 = f"""
CREATE TABLE events (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    pixel_id text NOT NULL,
    event_name text NOT NULL,
    event_id text NOT NULL,
    event_time bigint NOT NULL,
    source text NOT NULL,
    rule text,
    test_event_code text,
    payload jsonb NOT NULL,
    sealed bytea,
    state text NOT NULL DEFAULT 'pending'
        CHECK (state IN ({", ".join(f"'{s}'" for s in STATES)})),
    lease_owner text,
    lease_expires double precision,
    attempts integer NOT NULL DEFAULT 0,
    next_attempt_at double precision NOT NULL,
    last_error text,
    fbtrace_id text,
    created_at double precision NOT NULL,
    sent_at double precision,
    match_keys text,
    twin boolean NOT NULL DEFAULT false,
    -- event assembly: the copies' source labels, where each contested field came from,
    -- the match keys of the first copy, and copies that arrived after the send
    sources jsonb,
    ranks jsonb,
    received_keys text,
    late jsonb,
    CONSTRAINT events_key UNIQUE (pixel_id, event_name, event_id)
) WITH (
    -- A queue turns its rows over fast: vacuum after 2% of them changed, not the default 20%
    -- (which over millions of delivered rows lets dead tuples pile up for hours).
    autovacuum_vacuum_scale_factor = 0.02,
    autovacuum_analyze_scale_factor = 0.02
);
-- Claims: due pending rows, oldest due first (the hold before the first send is
-- next_attempt_at, so holding costs no poll per event).
CREATE INDEX events_due ON events (next_attempt_at, id) WHERE state = 'pending';
-- Leases of dead replicas come back when they expire.
CREATE INDEX events_leases ON events (lease_expires) WHERE state = 'inflight';
-- Retention: delivered and dead rows leave in batches, oldest first.
CREATE INDEX events_done ON events (sent_at) WHERE state IN ('sent', 'sent-dry', 'dead');
-- The dashboard's last-hour / last-24-hours windows.
CREATE INDEX events_created ON events (created_at);
-- The oldest undelivered event's age, without walking delivered rows.
CREATE INDEX events_open ON events (created_at) WHERE state IN ('pending', 'inflight');
-- A blocked pixel's parked rows (release, requeue).
CREATE INDEX events_blocked ON events (pixel_id) WHERE state = 'blocked';

CREATE TABLE blocked_pixels (
    pixel_id text PRIMARY KEY,
    token_fingerprint text NOT NULL,
    reason text NOT NULL,
    fbtrace_id text,
    since double precision NOT NULL
);

-- Visitor context under a keyed hash of an order id, lead id, ... (gateway/delivery/stitch.py)
CREATE TABLE stitches (
    key_hash text PRIMARY KEY,
    kind text NOT NULL,
    sealed bytea NOT NULL,
    event_id text,
    event_name text,
    seen_at double precision NOT NULL,
    expires_at double precision NOT NULL
);
CREATE INDEX stitches_expires ON stitches (expires_at);

-- Visitor profiles: hashed identifiers under a keyed hash of the visitor's first-party id
CREATE TABLE profiles (
    key_hash text PRIMARY KEY,
    ids jsonb NOT NULL,
    updated_at double precision NOT NULL,
    expires_at double precision NOT NULL
);
CREATE INDEX profiles_expires ON profiles (expires_at);
CREATE INDEX profiles_updated ON profiles (updated_at);

CREATE TABLE queue_counts (
    event_name text NOT NULL,
    state text NOT NULL,
    shard smallint NOT NULL,
    n bigint NOT NULL,
    PRIMARY KEY (event_name, state, shard)
);

CREATE FUNCTION queue_counts_apply() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    -- Rows are upserted in key order so two writers sharing a shard lock them in the
    -- same order (a deadlock would cost a retry, not a count).
    IF TG_OP = 'INSERT' THEN
        INSERT INTO queue_counts AS q (event_name, state, shard, n)
        SELECT event_name, state, pg_backend_pid() % {COUNTER_SHARDS}, count(*)
        FROM new_rows GROUP BY event_name, state ORDER BY event_name, state
        ON CONFLICT (event_name, state, shard) DO UPDATE SET n = q.n + excluded.n;
    ELSIF TG_OP = 'DELETE' THEN
        INSERT INTO queue_counts AS q (event_name, state, shard, n)
        SELECT event_name, state, pg_backend_pid() % {COUNTER_SHARDS}, -count(*)
        FROM old_rows GROUP BY event_name, state ORDER BY event_name, state
        ON CONFLICT (event_name, state, shard) DO UPDATE SET n = q.n + excluded.n;
    ELSE
        INSERT INTO queue_counts AS q (event_name, state, shard, n)
        SELECT event_name, state, pg_backend_pid() % {COUNTER_SHARDS}, sum(d)
        FROM (
            SELECT event_name, state, 1 AS d FROM new_rows
            UNION ALL
            SELECT event_name, state, -1 AS d FROM old_rows
        ) AS moves
        GROUP BY event_name, state HAVING sum(d) <> 0 ORDER BY event_name, state
        ON CONFLICT (event_name, state, shard) DO UPDATE SET n = q.n + excluded.n;
    END IF;
    RETURN NULL;
END
$$;
{count_triggers("events")}
"""

# The site an event belongs to (issue 16's `[[sites]]`; NULL: the default site).
_V2 = "ALTER TABLE events ADD COLUMN site text;"

# Visitor profiles found by stitch keys too (SQLite's migration 5): `events.profile_keys`
# holds a row's profile key hashes (fbp first, then `~`-marked stitch keys), and
# `profile_links` leads a stitch key's hash to the fbp key hash of its visitor's profile.
_V3 = """
ALTER TABLE events ADD COLUMN profile_keys text;
CREATE TABLE profile_links (
    key_hash text PRIMARY KEY,
    profile text NOT NULL,
    expires_at double precision NOT NULL
);
CREATE INDEX profile_links_profile ON profile_links (profile);
CREATE INDEX profile_links_expires ON profile_links (expires_at);
"""

# When a row was found to carry all of its visitor's profile (SQLite's migration 7).
_V4 = "ALTER TABLE events ADD COLUMN profile_seen double precision;"

# The union of two profiles in SQL (`profiles.union_ids`, which SQLite calls as a Python
# function): values already known first, new ones after, at most 5 per identifier
# (`assembly.MAX_VALUES`). Learning is then one upsert per group commit, with no read and
# no lock taken before it.
_V5 = """
CREATE FUNCTION capigw_profile_union(stored jsonb, added jsonb) RETURNS jsonb
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
SELECT coalesce(jsonb_object_agg(name, vals), '{}'::jsonb) FROM (
    SELECT name, (
        SELECT coalesce(jsonb_agg(v ORDER BY first), '[]'::jsonb) FROM (
            SELECT v, min(o) AS first FROM (
                SELECT v, o FROM jsonb_array_elements_text(
                    coalesce(stored -> name, '[]'::jsonb)) WITH ORDINALITY AS s(v, o)
                UNION ALL
                SELECT v, 1000000 + o FROM jsonb_array_elements_text(
                    coalesce(added -> name, '[]'::jsonb)) WITH ORDINALITY AS a(v, o)
            ) AS both_sides
            GROUP BY v ORDER BY min(o) LIMIT 5
        ) AS kept
    ) AS vals
    FROM (SELECT jsonb_object_keys(stored) UNION SELECT jsonb_object_keys(added)) AS n(name)
) AS per_name
$$;
"""

# `profiles_updated` duplicated `profiles_expires` (expires_at = updated_at + ttl): one index
# write less per learned profile; the `profile_max` cut orders by expires_at, as on SQLite.
_V6 = "DROP INDEX IF EXISTS profiles_updated;"

# Custom Audiences (SQLite's migration 8, gateway/delivery/postgres/audiences.py): per
# (site, audience) its Meta id and last sync, the rows last sent, and the sync lease.
_V_AUDIENCES = """
CREATE TABLE audiences (
    site text NOT NULL,
    name text NOT NULL,
    audience_id text,
    synced_at double precision,
    size integer NOT NULL DEFAULT 0,
    coverage jsonb,
    last_result jsonb,
    last_error text,
    blocked_token text,
    PRIMARY KEY (site, name)
);
CREATE TABLE audience_members (
    site text NOT NULL,
    name text NOT NULL,
    row_hash text NOT NULL,
    "row" jsonb NOT NULL,
    PRIMARY KEY (site, name, row_hash)
);
CREATE TABLE audience_lease (
    id integer PRIMARY KEY CHECK (id = 1),
    owner text NOT NULL,
    expires double precision NOT NULL
);
"""

# Insights (SQLite's migration 9): one compact fact per accepted event and one touchpoint per
# visit, read by reports; `site` is '' without sites, `visitor` the profile key of the `_fbp`.
_V_INSIGHTS = """
CREATE TABLE insight_events (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    site text NOT NULL DEFAULT '',
    visitor text,
    event_name text NOT NULL,
    at bigint NOT NULL,
    value double precision,
    currency text,
    content_ids text,
    match_keys text,
    event_id text
);
CREATE INDEX insight_events_event ON insight_events (event_id) WHERE event_id IS NOT NULL;
CREATE INDEX insight_events_name ON insight_events
    (event_name, at, visitor, currency, value, site);
CREATE INDEX insight_events_visitor ON insight_events (visitor, event_name, at, site);
CREATE INDEX insight_events_at ON insight_events (at);
CREATE TABLE touchpoints (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    site text NOT NULL DEFAULT '',
    visitor text NOT NULL,
    at bigint NOT NULL,
    channel text NOT NULL,
    source text,
    medium text,
    campaign text,
    click_id text,
    referrer_host text,
    landing_path text
);
CREATE INDEX touchpoints_visitor ON touchpoints
    (visitor, at, site, channel, source, campaign, landing_path);
CREATE INDEX touchpoints_at ON touchpoints (at);
"""

# Catalog sync (SQLite's migration 10; rules in gateway/delivery/catalogstate.py): one row per
# (site, item id) seen on a product page ('' without sites), what Meta holds and what is
# still to send; claims take due pending rows `FOR UPDATE SKIP LOCKED` through
# `catalog_items_due`. `catalog_syncs`: each site's last sync and a parked token.
_V_CATALOG = """
CREATE TABLE catalog_items (
    site text NOT NULL,
    item_id text NOT NULL,
    url text NOT NULL,
    content_hash text NOT NULL,
    data text NOT NULL,
    state text NOT NULL,
    action text NOT NULL,
    synced_hash text,
    first_seen double precision NOT NULL,
    last_seen double precision NOT NULL,
    due_at double precision NOT NULL,
    last_sent_at double precision,
    error text,
    error_at double precision,
    misses integer NOT NULL DEFAULT 0,
    handle text,
    lease_owner text,
    lease_expires double precision,
    attempts integer NOT NULL DEFAULT 0,
    PRIMARY KEY (site, item_id)
);
CREATE INDEX catalog_items_url ON catalog_items (site, url);
CREATE INDEX catalog_items_due ON catalog_items (site, due_at) WHERE state = 'pending';
CREATE TABLE catalog_syncs (
    site text PRIMARY KEY,
    at double precision,
    result text,
    message text,
    blocked_token text,
    blocked_reason text,
    blocked_at double precision
);
"""

# The counters' shards again: 64 per kind of statement, inserts, updates and deletes each in
# a range of their own. A group commit holds its counter row (its insert's shard) until it
# commits; with 16 shards for everything, a claim or a recorded result whose backend
# shared that shard waited for the whole group commit, and if the group commit then went
# for a row the claim had just locked (a copy to merge), the two deadlocked until
# PostgreSQL's one-second `deadlock_timeout` broke it (sampled at 2 replicas: claims and
# merges each waiting on the other, 0.29 backends each). Now a claim's or a result's
# counter rows are never an insert's, and two writers of one kind share a row a quarter
# as often. Rows of the old shards stay and are summed with the rest.
_V10 = f"""
CREATE OR REPLACE FUNCTION queue_counts_apply() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    my_shard smallint := pg_backend_pid() % {COUNTER_SHARDS_V10}
        + CASE TG_OP WHEN 'INSERT' THEN 0 WHEN 'UPDATE' THEN {COUNTER_SHARDS_V10}
          ELSE {2 * COUNTER_SHARDS_V10} END;
BEGIN
    -- Rows are upserted in key order so two writers sharing a shard lock them in the
    -- same order (a deadlock would cost a retry, not a count).
    IF TG_OP = 'INSERT' THEN
        INSERT INTO queue_counts AS q (event_name, state, shard, n)
        SELECT event_name, state, my_shard, count(*)
        FROM new_rows GROUP BY event_name, state ORDER BY event_name, state
        ON CONFLICT (event_name, state, shard) DO UPDATE SET n = q.n + excluded.n;
    ELSIF TG_OP = 'DELETE' THEN
        INSERT INTO queue_counts AS q (event_name, state, shard, n)
        SELECT event_name, state, my_shard, -count(*)
        FROM old_rows GROUP BY event_name, state ORDER BY event_name, state
        ON CONFLICT (event_name, state, shard) DO UPDATE SET n = q.n + excluded.n;
    ELSE
        INSERT INTO queue_counts AS q (event_name, state, shard, n)
        SELECT event_name, state, my_shard, sum(d)
        FROM (
            SELECT event_name, state, 1 AS d FROM new_rows
            UNION ALL
            SELECT event_name, state, -1 AS d FROM old_rows
        ) AS moves
        GROUP BY event_name, state HAVING sum(d) <> 0 ORDER BY event_name, state
        ON CONFLICT (event_name, state, shard) DO UPDATE SET n = q.n + excluded.n;
    END IF;
    RETURN NULL;
END
$$;
"""

MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        1,
        "outbox events (with event assembly's columns), blocked pixels, stitches, "
        "profiles, queue counters",
        _V1,
    ),
    Migration(2, "events.site", _V2),
    Migration(3, "events.profile_keys, profile_links", _V3),
    Migration(4, "events.profile_seen", _V4),
    Migration(5, "capigw_profile_union()", _V5),
    Migration(6, "drop profiles_updated", _V6),
    Migration(7, "audiences, audience_members, audience_lease", _V_AUDIENCES),
    Migration(8, "insight_events, touchpoints", _V_INSIGHTS),
    Migration(9, "catalog_items, catalog_syncs", _V_CATALOG),
    Migration(10, "queue counter shards apart for inserts, updates and deletes", _V10),
    Migration(
        11,
        "delivery state in event_queue beside write-once event_data; events is a view",
        v11(STATES),
    ),
    Migration(12, "event_inflight: keys of open group commits (unlogged)", V12),
    Migration(
        13, "events_open for pending rows only; BRIN for events_created, insight_events_at", V13
    ),
    Migration(14, "event_data.payload as json text (the jsonb one kept as payload_jsonb)", V14),
)

SCHEMA_VERSION = len(MIGRATIONS)
