-- list_jobs: jobs newest first with filters and keyset pagination.
-- Parameters: $1 tenant or NULL, $2 states text[] or NULL, $3 task or NULL,
--   $4 queue or NULL, $5 created_at >= or NULL, $6 created_at < or NULL,
--   $7 meta containment (JSON text) or NULL, $8/$9 cursor (created_at, id) of
--   the last row of the previous page or NULL, $10 limit.
-- Result: up to $10 rows ordered by (created_at, id) descending, with `stalled`
--   as in get_job.
SELECT j.*, (j.state = 'running' AND j.lease_expires_at < now()) AS stalled
FROM skiplock.jobs j
WHERE ($1::text IS NULL OR j.tenant = $1::text)
  AND ($2::text[] IS NULL OR j.state::text = ANY($2::text[]))
  AND ($3::text IS NULL OR j.task = $3::text)
  AND ($4::text IS NULL OR j.queue = $4::text)
  AND ($5::timestamptz IS NULL OR j.created_at >= $5::timestamptz)
  AND ($6::timestamptz IS NULL OR j.created_at < $6::timestamptz)
  AND ($7::text IS NULL OR j.meta @> $7::jsonb)
  AND ($8::timestamptz IS NULL OR (j.created_at, j.id) < ($8::timestamptz, $9::uuid))
ORDER BY j.created_at DESC, j.id DESC
LIMIT $10
