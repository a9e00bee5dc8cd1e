"""Migration 11 of the SQLite outbox: an event's delivery state in a narrow row of its own.

Until migration 10 one `events` row held both what an event is (its key, payload, sealed
clear fields, assembly columns: ≈ 700 bytes for a PageView, five rows to a 4 KiB page) and
where it is in delivery (state, lease, attempts, due time). A claim and a sent-mark each
rewrote the whole row, so each dirtied one table page per five events, every one of which
the commit writes to the WAL. As in the PostgreSQL store (postgres/queue_schema.py):

- `event_data`: the event, written once (copies merged into an unsent event, completions
  from profiles, late copies and erasure still update it, rarely); its rowid, the unique
  key (pixel_id, event_name, event_id), `events_created` and `events_site`.
- `event_queue`: per event its id (the same as `event_data.id`), pixel, state, lease,
  attempts, due time, last error, fbtrace id and sent time (≈ 60 bytes, ~50 to a page);
  claims, results, leases, parking and retention write here, through `events_state_due`
  and `events_state_sent` of old.
- `events`: a view joining the two with the columns and column order `events` had, so that
  every read and an operator's ad-hoc SQL keep working; INSTEAD OF triggers make it
  writable (row by row, and SQLite counts no changes on a view: the store's own writes go
  to the tables). Deleting an `event_data` row deletes its queue row (a trigger).

The rows move inside the migration's transaction (see schema.migrate): nothing pending,
leased, sent or dead is lost, ids are kept.
"""

from __future__ import annotations

# The columns of `events` as migrations 1-10 left them, in order, and where each lives now.
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
DATA_COLUMNS = (
    "pixel_id",
    "event_name",
    "event_id",
    "event_time",
    "source",
    "rule",
    "test_event_code",
    "payload",
    "sealed",
    "created_at",
    "match_keys",
    "twin",
    "sources",
    "ranks",
    "received_keys",
    "late",
    "profile_keys",
    "site",
    "profile_seen",
)
EVENTS_COLUMNS = (
    "id",
    *DATA_COLUMNS[:9],
    *QUEUE_COLUMNS[:7],
    "created_at",
    "sent_at",
    *DATA_COLUMNS[10:],
)
# Defaults the tables have and a view does not (an INSERT through the view leaves them NULL).
_DEFAULTS = {"state": "'pending'", "attempts": "0", "twin": "0"}


def _new(column: str) -> str:
    default = _DEFAULTS.get(column)
    return f"COALESCE(NEW.{column}, {default})" if default else f"NEW.{column}"


def _changed(columns: tuple[str, ...]) -> str:
    return " OR ".join(f"NEW.{c} IS NOT OLD.{c}" for c in columns)


_DATA = ", ".join(DATA_COLUMNS)
_QUEUE = ", ".join(QUEUE_COLUMNS)
_VIEW = ", ".join(f"q.{c}" if c in QUEUE_COLUMNS else f"d.{c}" for c in EVENTS_COLUMNS)

V11 = f"""
CREATE TABLE event_data (
    id INTEGER PRIMARY KEY,
    pixel_id TEXT NOT NULL,
    event_name TEXT NOT NULL,
    event_id TEXT NOT NULL,
    event_time INTEGER NOT NULL,
    source TEXT NOT NULL,
    rule TEXT,
    test_event_code TEXT,
    payload TEXT NOT NULL,
    sealed BLOB,
    created_at REAL NOT NULL,
    match_keys TEXT,
    twin INTEGER NOT NULL DEFAULT 0,
    sources TEXT,
    ranks TEXT,
    received_keys TEXT,
    late TEXT,
    profile_keys TEXT,
    site TEXT,
    profile_seen REAL,
    UNIQUE (pixel_id, event_name, event_id)
);
CREATE TABLE event_queue (
    id INTEGER PRIMARY KEY,
    pixel_id TEXT NOT NULL,
    state TEXT NOT NULL DEFAULT 'pending',
    lease_owner TEXT,
    lease_expires REAL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL NOT NULL,
    last_error TEXT,
    fbtrace_id TEXT,
    sent_at REAL
);
INSERT INTO event_data (id, {_DATA}) SELECT id, {_DATA} FROM events ORDER BY id;
INSERT INTO event_queue (id, pixel_id, {_QUEUE}) SELECT id, pixel_id, {_QUEUE} FROM events
    ORDER BY id;
DROP TABLE events;
CREATE INDEX events_state_due ON event_queue (state, next_attempt_at);
CREATE INDEX events_state_sent ON event_queue (state, sent_at);
CREATE INDEX events_created ON event_data (created_at);
CREATE INDEX events_site ON event_data (site, created_at);
CREATE VIEW events AS SELECT {_VIEW} FROM event_data AS d JOIN event_queue AS q ON q.id = d.id;
CREATE TRIGGER event_data_delete AFTER DELETE ON event_data BEGIN
    DELETE FROM event_queue WHERE id = OLD.id;
END;
CREATE TRIGGER events_insert INSTEAD OF INSERT ON events BEGIN
    INSERT INTO event_data (id, {_DATA}) VALUES (NEW.id, {", ".join(map(_new, DATA_COLUMNS))});
    INSERT INTO event_queue (id, pixel_id, {_QUEUE})
    VALUES (last_insert_rowid(), NEW.pixel_id, {", ".join(map(_new, QUEUE_COLUMNS))});
END;
CREATE TRIGGER events_update INSTEAD OF UPDATE ON events BEGIN
    UPDATE event_data SET id = NEW.id, {", ".join(f"{c} = NEW.{c}" for c in DATA_COLUMNS)}
    WHERE id = OLD.id AND (NEW.id IS NOT OLD.id OR {_changed(DATA_COLUMNS)});
    UPDATE event_queue SET id = NEW.id, pixel_id = NEW.pixel_id,
        {", ".join(f"{c} = NEW.{c}" for c in QUEUE_COLUMNS)}
    WHERE id = OLD.id AND (NEW.id IS NOT OLD.id OR NEW.pixel_id IS NOT OLD.pixel_id
        OR {_changed(QUEUE_COLUMNS)});
END;
CREATE TRIGGER events_delete INSTEAD OF DELETE ON events BEGIN
    DELETE FROM event_data WHERE id = OLD.id;
END;
"""
