"""Migration 13: fewer B-tree entries written per accepted event.

Counted in the WAL of `bench_events.py --store pg --relations 30` (pg_walinspect, per
accepted event, one in ten a copy): 16.6 B-tree entries, of which three went to indexes whose
readers do not need a B-tree's order on every row:

- `events_open` (`created_at` of pending *and* inflight queue rows) took an entry when a row
  was stored and another when it was claimed (an update that changes `state` is never HOT,
  so the claimed row version is indexed again): 1.8 per event, for one read, the oldest
  undelivered event's age. It now holds pending rows only (`events_open_pending`), one entry
  per event; the inflight rows' oldest `created_at` is read through `events_leases`, which
  holds inflight rows only, and they are few: one claim batch per sender, plus a dead
  replica's until their leases expire.
- `events_created` (`event_data.created_at`) and `insight_events_at` (`insight_events.at`):
  both tables are written once per event, in time order (`created_at` is the commit's clock;
  `at` an event time that is at most days old), and every reader asks for a range (the
  dashboard's last hour and day, retention purges, report windows): a BRIN index (one small
  summary per 128 heap pages, none kept for the pages still being filled) answers such ranges,
  and storing a row adds no entry to it. The catalog's last content ids
  (`ORDER BY created_at DESC LIMIT`) read their window through the BRIN and sort it.
  `autosummarize` asks the autovacuum to summarize each range once it is full; its queue
  holds 256 requests for the whole server, drained per database about once a minute, so
  `event_data` (~8 rows per page) uses ranges of 1,024 pages (~8,000 events: one request
  every ~1.6 s at 5,000 events/s) rather than the default 128 (one every 0.2 s, more than
  the queue holds in a minute, each one over logged and left to VACUUM).

And `event_queue` gets fillfactor 35. A claim and a send result each write a new version of
the narrow queue row; on a full page that version went to another page, which PostgreSQL
logs as a row lock of the old version besides the update (2.7 lock records per event, where
the claim's `FOR UPDATE` needs 0.9). With room left on the page (three versions of each row
fit until pruning reclaims the dead ones) the new version stays: 1.3 lock records per event.
The narrow rows (~100 bytes) make the table about three times as many pages, still small
beside `event_data`.
"""

from __future__ import annotations

V13 = """
CREATE INDEX events_open_pending ON event_queue (created_at) WHERE state = 'pending';
DROP INDEX events_open;
DROP INDEX events_created;
CREATE INDEX events_created ON event_data USING brin (created_at)
    WITH (pages_per_range = 1024, autosummarize = on);
DROP INDEX insight_events_at;
CREATE INDEX insight_events_at ON insight_events USING brin (at) WITH (autosummarize = on);
ALTER TABLE event_queue SET (fillfactor = 35);
"""

# The oldest undelivered event's `created_at` on the narrow queue rows: pending ones in
# `events_open_pending` order, inflight ones (few) through `events_leases`.
OLDEST_OPEN = """
SELECT least(
    (SELECT min(created_at) FROM event_queue WHERE state = 'pending'),
    (SELECT min(created_at) FROM event_queue WHERE state = 'inflight'))
"""
