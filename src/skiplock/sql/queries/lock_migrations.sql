-- lock_migrations: serialize migrators of one schema until this transaction ends
-- (a transaction-level advisory lock: it holds through PgBouncer in transaction
-- mode, where a session lock would be left on whichever server connection
-- took it; same key as the session lock of skiplock versions before it).
-- Parameters: $1 the schema name. Result: none.
SELECT pg_advisory_xact_lock(hashtextextended('skiplock.migrate:' || $1::text, 0))
