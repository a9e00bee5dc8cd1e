"""The PostgreSQL store backend (asyncpg): replicas share one database (`--buffer postgresql://`).

- `pool`: `Database`, the connection pool: transactions retried across lost connections,
  server restarts and deadlocks for up to `reconnect_timeout` (`store_connect_timeout`),
  then `DatabaseUnavailable`
  (a 503 with Retry-After for callers); a background health check.
- `schema` / `migrations`: numbered forward migrations under a `pg_advisory_lock`, so
  replicas starting together migrate once.
- `outbox`: `PgOutbox`, the store interface (`gateway.delivery.store.OutboxStore`): group
  commit, the merge of event assembly under row locks (`rows`), claims (`queue`), results
  (`results`), upkeep in batches (`upkeep`), erasure (`forget`); the assembly itself is
  `gateway.delivery.assembler`'s, over `rows.PgSql`.
- `inflight`: the keys of open group commits (an UNLOGGED table), so that a copy of an
  event another commit has just inserted waits in a transaction of its own, not with its
  whole batch.
- `notify`: LISTEN/NOTIFY between replicas: one notice per group commit wakes the idle
  senders of the others.
- `stitches`: `PgStitches`, visitor contexts for webhooks, on the outbox's pool.
- `reads`: health, /status, /metrics and `queue stats` numbers from the counters.
"""
