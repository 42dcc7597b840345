-- record_migration: note one applied migration in the ledger.
-- Parameters: $1 version, $2 name, $3 checksum. Result: none.
INSERT INTO skiplock.migrations (version, name, checksum) VALUES ($1, $2, $3)
