-- get_by_idempotency_keys: the jobs already holding some (tenant, key) pairs.
-- Parameters: $1 tenant text[], $2 idempotency_key text[] (pairs by position).
-- Result: the matching rows, with `stalled` as in get_job.
SELECT j.*, (j.state = 'running' AND j.lease_expires_at < now()) AS stalled
FROM skiplock.jobs j
JOIN unnest($1::text[], $2::text[]) AS k (tenant, idempotency_key)
  ON j.tenant = k.tenant AND j.idempotency_key = k.idempotency_key
