-- claim_jobs: lease up to $2 due jobs from the given queues, in claim order
-- (priority, run_at, id), skipping rows other workers hold locked.
-- Parameters: $1 queues text[], $2 limit, $3 lease seconds float8, $4 worker id.
-- Result: the claimed rows, now running with a fresh lease token.
WITH picked AS (
    SELECT q.id
    FROM skiplock.jobs q
    WHERE q.state = 'queued' AND q.run_at <= now() AND q.queue = ANY($1::text[])
    ORDER BY q.priority, q.run_at, q.id
    LIMIT $2
    FOR UPDATE SKIP LOCKED
)
UPDATE skiplock.jobs j SET
    state = 'running',
    attempt = j.attempt + 1,
    lease_token = gen_random_uuid(),
    lease_expires_at = now() + make_interval(secs => $3::float8),
    worker_id = $4::text,
    started_at = now(),
    updated_at = now()
FROM picked
WHERE j.id = picked.id
RETURNING j.*
