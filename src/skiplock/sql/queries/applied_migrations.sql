-- applied_migrations: the migrations recorded in the ledger, oldest first.
-- Parameters: none. Result: rows (version, name, checksum).
SELECT m.version, m.name, m.checksum
FROM skiplock.migrations m
ORDER BY m.version
