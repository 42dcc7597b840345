-- migrations_table_exists: whether the schema has a migration ledger at all.
-- Parameters: $1 the schema name. Result: one boolean.
SELECT to_regclass(quote_ident($1::text) || '.migrations') IS NOT NULL
