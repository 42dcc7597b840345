-- list_jobs: jobs newest first with filters and keyset pagination; big results
--   are left out here, in the database, so a listing never carries them.
-- Parameters: $1 tenant or NULL, $2 states text[] or NULL, $3 task or NULL,
--   $4 queue or NULL, $5 created_at >= or NULL, $6 created_at < or NULL,
--   $7 meta containment (JSON text) or NULL, $8/$9 cursor (created_at, id) of
--   the last row of the previous page or NULL, $10 limit, $11 the largest
--   result (bytes of JSON text) to return, or NULL for any.
-- Result: up to $10 rows ordered by (created_at, id) descending: the columns of
--   jobs (keep them in step with the table), result NULL when it is over $11
--   bytes, and result_omitted saying so; `stalled` as in get_job. The stored
--   (maybe compressed) size is checked first, so a big result is never
--   decompressed to be measured.
SELECT j.id, j.queue, j.task, j.args, j.state, j.priority, j.run_at, j.attempt,
       j.max_attempts, j.lease_token, j.lease_expires_at, j.worker_id, j.progress,
       j.progress_message, j.eta,
       CASE WHEN o.result_omitted THEN NULL ELSE j.result END AS result,
       j.errors, j.tenant, j.idempotency_key, j.meta, j.cancel_requested,
       j.created_at, j.updated_at, j.started_at, j.finished_at, j.expires_at,
       j.timeout_seconds, j.request_fingerprint, j.limit_keys, j.fair_key, j.unique_key,
       (j.state = 'running' AND j.lease_expires_at < now()) AS stalled,
       o.result_omitted
FROM skiplock.jobs j
CROSS JOIN LATERAL (
  SELECT CASE
    WHEN $11::integer IS NULL OR j.result IS NULL THEN false
    WHEN pg_column_size(j.result) > $11::integer THEN true
    ELSE octet_length(j.result::text) > $11::integer
  END AS result_omitted
) o
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
