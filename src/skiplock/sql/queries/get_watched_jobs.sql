-- get_watched_jobs: the jobs the status API's event hub watches, each read only
--   for the tenant of its watcher (the hub never sees another tenant's row).
-- Parameters: $1 ids uuid[], $2 tenants text[], pairwise: job $1[i] of tenant $2[i].
-- Result: the rows found, with `stalled` as in get_job; a deleted job, or one of
--   another tenant, is absent.
SELECT j.*, (j.state = 'running' AND j.lease_expires_at < now()) AS stalled
FROM skiplock.jobs j
JOIN unnest($1::uuid[], $2::text[]) AS w (id, tenant)
  ON j.id = w.id AND j.tenant = w.tenant
