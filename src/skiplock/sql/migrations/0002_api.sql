-- 0002_api: API keys for the status API, and an index for recent-window stats.
--
-- A key's secret is never stored: only its SHA-256 (keys are 256-bit random
-- strings, so a fast hash is enough). A key maps to one tenant and scopes.

CREATE TABLE skiplock.api_keys (
    id          uuid PRIMARY KEY,
    name        text NOT NULL,
    tenant      text NOT NULL,
    scopes      text[] NOT NULL,
    key_hash    bytea NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    expires_at  timestamptz,
    revoked_at  timestamptz,
    CONSTRAINT api_keys_name_check CHECK (length(name) BETWEEN 1 AND 200),
    CONSTRAINT api_keys_tenant_check CHECK (tenant <> '' AND length(tenant) <= 256),
    CONSTRAINT api_keys_scopes_check CHECK (
        cardinality(scopes) >= 1 AND scopes <@ ARRAY['read', 'write', 'admin']::text[]
    ),
    CONSTRAINT api_keys_hash_check CHECK (length(key_hash) = 32)
);

CREATE UNIQUE INDEX api_keys_hash_idx ON skiplock.api_keys (key_hash);

-- Finished jobs by tenant and time: stats over recent windows, retention.
CREATE INDEX jobs_tenant_finished_idx ON skiplock.jobs (tenant, finished_at)
    WHERE finished_at IS NOT NULL;
