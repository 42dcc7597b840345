-- create_api_key: store a new API key (its hash only).
-- Parameters: $1 id, $2 name, $3 tenant, $4 scopes text[], $5 key hash bytea,
--   $6 expires_at or NULL.
-- Result: the stored row (without the hash).
INSERT INTO skiplock.api_keys (id, name, tenant, scopes, key_hash, expires_at)
VALUES ($1::uuid, $2::text, $3::text, $4::text[], $5::bytea, $6::timestamptz)
RETURNING id, name, tenant, scopes, created_at, expires_at, revoked_at
