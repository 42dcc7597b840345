-- lock_migrations: serialize migrators of one schema (session advisory lock).
-- Parameters: $1 the schema name. Result: none.
SELECT pg_advisory_lock(hashtextextended('skiplock.migrate:' || $1::text, 0))
