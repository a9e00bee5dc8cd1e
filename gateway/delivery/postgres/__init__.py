"""The PostgreSQL store backend (asyncpg): replicas share one database.

Groundwork for issue 15, not wired into `serve`, the CLI or `--buffer` yet:

- `pool`: `Database`, the connection pool: transactions retried across lost connections,
  server restarts and deadlocks for up to `reconnect_timeout`, then `DatabaseUnavailable`
  (a 503 with Retry-After for callers); a background health check.
- `schema`: the tables of the SQLite store at its newest (event assembly's columns and
  visitor profiles included) as numbered migrations, with the indexes for merges
  (`ON CONFLICT` on the event key) and `SKIP LOCKED` claims, and trigger-kept queue counts.
- `migrations`: forward migrations under a `pg_advisory_lock`, so replicas starting
  together migrate once.
- `queue`: the leased claim (`FOR UPDATE SKIP LOCKED`) and the queue depth from counters.

Still to come, once the store interface exists: the group-committed merging insert of
event assembly, results (sent/retry/dead/release), blocked pixels, stitches, profiles,
housekeeping in batches, the dashboard's and CLI's reads, and waking other replicas'
senders (LISTEN/NOTIFY).
"""
