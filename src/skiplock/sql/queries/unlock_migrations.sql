-- unlock_migrations: release the lock taken by lock_migrations.
-- Parameters: $1 the schema name. Result: whether it was held.
SELECT pg_advisory_unlock(hashtextextended('skiplock.migrate:' || $1::text, 0))
