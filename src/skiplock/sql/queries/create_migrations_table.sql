-- create_migrations_table: the ledger of applied migrations, with checksums.
-- Parameters: none. Result: none.
CREATE TABLE IF NOT EXISTS skiplock.migrations (
    version    integer PRIMARY KEY,
    name       text NOT NULL,
    checksum   text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
)
