-- list_api_keys: every key, optionally of one tenant, newest first.
-- Parameters: $1 tenant or NULL. Result: rows without hashes.
SELECT k.id, k.name, k.tenant, k.scopes, k.created_at, k.expires_at, k.revoked_at
FROM skiplock.api_keys k
WHERE $1::text IS NULL OR k.tenant = $1::text
ORDER BY k.created_at DESC, k.id
