-- get_job: one job by id, scoped to a tenant unless $2 is NULL (operators).
-- Parameters: $1 id uuid, $2 tenant text or NULL.
-- Result: zero or one row, with `stalled`: running past its lease expiry.
SELECT j.*, (j.state = 'running' AND j.lease_expires_at < now()) AS stalled
FROM skiplock.jobs j
WHERE j.id = $1::uuid AND ($2::text IS NULL OR j.tenant = $2::text)
