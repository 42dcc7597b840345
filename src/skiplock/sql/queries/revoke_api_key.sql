-- revoke_api_key: revoke a key now (idempotent: keeps the first revocation time).
-- Parameters: $1 id. Result: the row, or none when there is no such key.
UPDATE skiplock.api_keys k SET revoked_at = coalesce(k.revoked_at, now())
WHERE k.id = $1::uuid
RETURNING k.id, k.name, k.tenant, k.scopes, k.created_at, k.expires_at, k.revoked_at
