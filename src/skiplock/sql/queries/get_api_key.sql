-- get_api_key: the live key with this hash (not revoked, not expired).
-- Parameters: $1 key hash bytea. Result: zero or one row.
SELECT k.id, k.name, k.tenant, k.scopes, k.created_at, k.expires_at, k.revoked_at
FROM skiplock.api_keys k
WHERE k.key_hash = $1::bytea
  AND k.revoked_at IS NULL
  AND (k.expires_at IS NULL OR k.expires_at > now())
