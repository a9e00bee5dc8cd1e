"""Migration 14: an event's payload stored as `json` text, no longer as `jsonb`.

The store writes a payload once, as orjson's compact text, and reads it back as text (a
claim, a copy's merge): as `jsonb` the database built the binary document on every insert
and rebuilt text from it on every read, ~4.4 µs of its CPU per event (bench/README, issue
15 round 8). Retyping the column would rewrite `event_data` under an exclusive lock,
blocking intake for as long as a large store takes to copy, so the migration changes only
the catalog:

- the `jsonb` column is renamed `payload_jsonb` (NOT NULL dropped) and a new, nullable
  `payload json` takes its name: no rewrite, no scan. A NOT VALID check (no scan either)
  keeps one of the two set on every row written from now on.
- Rows stored before keep their payload in `payload_jsonb`; the store writes `payload`
  and clears `payload_jsonb` whenever it writes a payload. `payload` wins where both are
  set (written later), so `PAYLOAD` below is the one way to read it.
- The `events` view shows the payload whichever column holds it, as `jsonb` as before;
  its trigger's update of `event_data` clears `payload_jsonb` too (a payload written
  through the view, say an erasure by hand, leaves no older copy behind).
"""

from __future__ import annotations

from gateway.delivery.postgres.queue_schema import DATA_COLUMNS, view_write


def _payload_text(alias: str) -> str:
    return f"COALESCE({alias}payload::text, {alias}payload_jsonb::text)"


# An event's payload as text, in a statement over `event_data` (aliased `d`: `PAYLOAD_D`).
PAYLOAD = _payload_text("")
PAYLOAD_D = _payload_text("d.")
# As `jsonb`, for the `->` operators of a read that extracts from it.
PAYLOAD_JSONB = "COALESCE(payload::jsonb, payload_jsonb)"

_DATA_SET = ", ".join(f"{c} = NEW.{c}" for c in DATA_COLUMNS) + ", payload_jsonb = NULL"

V14 = f"""
ALTER TABLE event_data RENAME COLUMN payload TO payload_jsonb;
ALTER TABLE event_data ALTER COLUMN payload_jsonb DROP NOT NULL;
ALTER TABLE event_data ADD COLUMN payload json;
ALTER TABLE event_data ADD CONSTRAINT event_data_payload
    CHECK (payload IS NOT NULL OR payload_jsonb IS NOT NULL) NOT VALID;

CREATE OR REPLACE VIEW events AS
SELECT d.id, d.pixel_id, d.event_name, d.event_id, d.event_time, d.source, d.rule,
    d.test_event_code, COALESCE(d.payload::jsonb, d.payload_jsonb) AS payload, d.sealed,
    q.state, q.lease_owner, q.lease_expires, q.attempts, q.next_attempt_at, q.last_error,
    q.fbtrace_id, d.created_at, q.sent_at, d.match_keys, d.twin, d.sources, d.ranks,
    d.received_keys, d.late, d.site, d.profile_keys, d.profile_seen
FROM event_data AS d JOIN event_queue AS q ON q.id = d.id;

{view_write(_DATA_SET, create="CREATE OR REPLACE")}
"""
