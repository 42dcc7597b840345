-- get_jobs: several jobs by id, scoped to a tenant unless $2 is NULL.
-- Parameters: $1 ids uuid[], $2 tenant or NULL.
-- Result: the rows found, with `stalled` as in get_job.
SELECT j.*, (j.state = 'running' AND j.lease_expires_at < now()) AS stalled
FROM skiplock.jobs j
WHERE j.id = ANY($1::uuid[]) AND ($2::text IS NULL OR j.tenant = $2::text)
