"""Migration 11: an event's delivery state in a narrow row of its own (`event_queue`).

Until migration 10 one `events` row held both what an event is (its key, payload, sealed
clear fields, assembly columns: ≈ 1.1 KB) and where it is in delivery (state, lease,
attempts, due time). Each event's row was written three times (stored, claimed, sent), and
as `state` is in the predicates of five partial indexes no update was HOT: every state
change copied the whole row into the WAL and added an entry to the unique key, the primary
key and `events_created` besides its partial index. Now:

- `event_data`: the event, written once (copies merged into an unsent event, completions
  from profiles, late copies and erasure still update it, rarely); primary key, unique key
  (pixel_id, event_name, event_id) and `events_created`.
- `event_queue`: per event its id (the same as `event_data.id`), pixel, event name, state,
  lease, attempts, due time, last error and sent time (≈ 100 bytes); the claims, results,
  leases, parking and retention work here, through the partial indexes of old. The queue
  counters' triggers moved here with `state` and `event_name`.
- `events`: a view joining the two with the columns `events` had, so that every read and
  an operator's ad-hoc SQL keep working; INSTEAD OF triggers make it writable too (row by
  row: the store's hot writes go to the tables themselves).

The rows are moved inside the migration's transaction under the migration lock: no event,
lease or dead letter is lost, and the counters are not touched (the rows' states do not
change).
"""

from __future__ import annotations

from collections.abc import Sequence

# Columns that moved to `event_queue` (besides id, pixel_id, event_name and created_at, which
# both tables hold: immutable, and each table's indexes need them).
QUEUE_COLUMNS = (
    "state",
    "lease_owner",
    "lease_expires",
    "attempts",
    "next_attempt_at",
    "last_error",
    "fbtrace_id",
    "sent_at",
)
# The columns that stay on `event_data` only, in `events`' order.
DATA_COLUMNS = (
    "event_id",
    "event_time",
    "source",
    "rule",
    "test_event_code",
    "payload",
    "sealed",
    "match_keys",
    "twin",
    "sources",
    "ranks",
    "received_keys",
    "late",
    "site",
    "profile_keys",
    "profile_seen",
)

# The bytes the events take, indexes and TOAST included: both tables (the view has none).
EVENTS_BYTES = "SELECT pg_total_relation_size('event_data') + pg_total_relation_size('event_queue')"
_DATA_SET = ", ".join(f"{c} = NEW.{c}" for c in DATA_COLUMNS)
_QUEUE_SET = ", ".join(f"{c} = NEW.{c}" for c in QUEUE_COLUMNS)


def count_triggers(table: str) -> str:
    """The statement triggers that keep the queue counters (`queue_counts_apply`) on `table`:
    `events` from migration 1, `event_queue` from migration 11."""
    return f"""CREATE TRIGGER events_count_insert AFTER INSERT ON {table}
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION queue_counts_apply();
CREATE TRIGGER events_count_update AFTER UPDATE ON {table}
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION queue_counts_apply();
CREATE TRIGGER events_count_delete AFTER DELETE ON {table}
    REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION queue_counts_apply();"""


def v11(states: Sequence[str]) -> str:
    """The SQL of migration 11, `states` being every state a row can be in."""
    allowed = ", ".join(f"'{s}'" for s in states)
    return f"""
DROP TRIGGER events_count_insert ON events;
DROP TRIGGER events_count_update ON events;
DROP TRIGGER events_count_delete ON events;
ALTER TABLE events RENAME TO event_data;
ALTER TABLE event_data RENAME CONSTRAINT events_key TO event_data_key;

CREATE TABLE event_queue (
    id bigint PRIMARY KEY,
    pixel_id text NOT NULL,
    event_name text NOT NULL,
    state text NOT NULL DEFAULT 'pending' CHECK (state IN ({allowed})),
    lease_owner text,
    lease_expires double precision,
    attempts integer NOT NULL DEFAULT 0,
    next_attempt_at double precision NOT NULL,
    last_error text,
    fbtrace_id text,
    sent_at double precision,
    created_at double precision NOT NULL
) WITH (autovacuum_vacuum_scale_factor = 0.02, autovacuum_analyze_scale_factor = 0.02);
INSERT INTO event_queue (id, pixel_id, event_name, {", ".join(QUEUE_COLUMNS)}, created_at)
SELECT id, pixel_id, event_name, {", ".join(QUEUE_COLUMNS)}, created_at FROM event_data;

-- The partial indexes of migration 1, now on the narrow rows (same names, same reads).
DROP INDEX events_due, events_leases, events_done, events_open, events_blocked;
CREATE INDEX events_due ON event_queue (next_attempt_at, id) WHERE state = 'pending';
CREATE INDEX events_leases ON event_queue (lease_expires) WHERE state = 'inflight';
CREATE INDEX events_done ON event_queue (sent_at) WHERE state IN ('sent', 'sent-dry', 'dead');
CREATE INDEX events_open ON event_queue (created_at) WHERE state IN ('pending', 'inflight');
CREATE INDEX events_blocked ON event_queue (pixel_id) WHERE state = 'blocked';
ALTER TABLE event_data {", ".join(f"DROP COLUMN {c}" for c in QUEUE_COLUMNS)};

{count_triggers("event_queue")}

CREATE VIEW events AS
SELECT d.id, d.pixel_id, d.event_name, d.event_id, d.event_time, d.source, d.rule,
    d.test_event_code, d.payload, d.sealed, q.state, q.lease_owner, q.lease_expires,
    q.attempts, q.next_attempt_at, q.last_error, q.fbtrace_id, d.created_at, q.sent_at,
    d.match_keys, d.twin, d.sources, d.ranks, d.received_keys, d.late, d.site,
    d.profile_keys, d.profile_seen
FROM event_data AS d JOIN event_queue AS q ON q.id = d.id;
ALTER VIEW events ALTER COLUMN state SET DEFAULT 'pending';
ALTER VIEW events ALTER COLUMN attempts SET DEFAULT 0;
ALTER VIEW events ALTER COLUMN twin SET DEFAULT false;

{view_write(_DATA_SET).rstrip()}
CREATE TRIGGER events_view_write INSTEAD OF INSERT OR UPDATE OR DELETE ON events
    FOR EACH ROW EXECUTE FUNCTION events_view_write();
"""


def view_write(data_set: str, create: str = "CREATE") -> str:
    """The `events` view's INSTEAD OF trigger function (migration 11; migration 14 makes its
    update of `event_data` also clear `payload_jsonb`): `data_set` is that update's SET list."""
    return f"""{create} FUNCTION events_view_write() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        INSERT INTO event_data (pixel_id, event_name, created_at, {", ".join(DATA_COLUMNS)})
        VALUES (NEW.pixel_id, NEW.event_name, NEW.created_at,
            {", ".join(f"NEW.{c}" for c in DATA_COLUMNS)})
        RETURNING id INTO NEW.id;
        INSERT INTO event_queue (id, pixel_id, event_name, created_at, {", ".join(QUEUE_COLUMNS)})
        VALUES (NEW.id, NEW.pixel_id, NEW.event_name, NEW.created_at,
            {", ".join(f"NEW.{c}" for c in QUEUE_COLUMNS)});
        RETURN NEW;
    ELSIF TG_OP = 'UPDATE' THEN
        IF (NEW.pixel_id, NEW.event_name, NEW.created_at) IS DISTINCT FROM
                (OLD.pixel_id, OLD.event_name, OLD.created_at) THEN
            UPDATE event_data SET pixel_id = NEW.pixel_id, event_name = NEW.event_name,
                created_at = NEW.created_at WHERE id = OLD.id;
            UPDATE event_queue SET pixel_id = NEW.pixel_id, event_name = NEW.event_name,
                created_at = NEW.created_at WHERE id = OLD.id;
        END IF;
        IF ({", ".join(f"NEW.{c}" for c in DATA_COLUMNS)}) IS DISTINCT FROM
                ({", ".join(f"OLD.{c}" for c in DATA_COLUMNS)}) THEN
            UPDATE event_data SET {data_set} WHERE id = OLD.id;
        END IF;
        IF ({", ".join(f"NEW.{c}" for c in QUEUE_COLUMNS)}) IS DISTINCT FROM
                ({", ".join(f"OLD.{c}" for c in QUEUE_COLUMNS)}) THEN
            UPDATE event_queue SET {_QUEUE_SET} WHERE id = OLD.id;
        END IF;
        RETURN NEW;
    ELSE
        DELETE FROM event_queue WHERE id = OLD.id;
        DELETE FROM event_data WHERE id = OLD.id;
        RETURN OLD;
    END IF;
END
$$;
"""
