"""The PostgreSQL store backend (asyncpg): replicas share one database.

Groundwork, not wired into `serve`, the CLI or `--buffer` yet: the connection pool that
survives server restarts (`pool`), the schema and its forward migrations taken under an
advisory lock (`schema`, `migrations`), and the queue's claim and depth queries (`queue`).
"""
